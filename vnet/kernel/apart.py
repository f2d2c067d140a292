"""A namespace's routes read in a child process: the one step of a full kernel read that grows with the fabric.

A host agent's kernel holds a route per remote CA (100,000 of them at fabric scale). Dumping and parsing them
is Python on the daemon's event loop, the loop that also decodes the fabric's table and learns it: at a
restart the two compete for one CPU. Here a forked child (no asyncio, no threads: it only dumps, parses and
writes) does the netlink part on another CPU and hands the parsed fields over, in batches of plain tuples
(marshal) in an anonymous file; the parent waits for the child's exit without a thread (a pidfd) and only
builds its objects from them. Anything that goes wrong in the child (a failed fork, a dump error, a short or
garbled output, a non-zero exit) is an `ApartError`: the caller reads in its own loop instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import os
import signal
import socket
import struct
import traceback
from collections.abc import AsyncIterator

from nvfabric.vnet.kernel import messages as m
from nvfabric.vnet.kernel import objects as k
from nvfabric.vnet.kernel.netns import RtnlSocket

_FRAME = struct.Struct("=I")
_NLMSG = struct.Struct("=IHHII")
_BATCH = 4096  # routes per frame: a frame is ~0.5 MB and one loop step to build its objects
# (a child that hangs, say in a dump that never ends, is killed: the routes are then read in the loop; 100,000
# routes take under a minute under emulation)
CHILD_TIMEOUT = 600.0


class ApartError(RuntimeError):
    """The child's read failed; nothing of it is used."""


def _route_request(family: int) -> bytes:
    return m.message(m.RTM_GETROUTE, m.NLM_F_DUMP, 1, m.route_dump_body(family, k.PROTO))


def _dump(sock: socket.socket, request: bytes) -> list[tuple]:
    """One dump on a blocking socket: the fields of each route of ours, as plain tuples."""
    out: list[tuple] = []
    sock.sendall(request)
    while True:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + 16 <= len(data):
            length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
            if length < 16:
                raise ApartError("a netlink message shorter than its header")
            if kind == m.NLMSG_DONE:
                return out
            if kind == m.NLMSG_ERROR:
                err = -struct.unpack_from("=i", data, offset + 16)[0]
                if err:
                    raise ApartError(f"route dump: {os.strerror(err)}")
            else:
                fields = m.parse_route(data[offset : offset + length])
                if fields.proto == k.PROTO:
                    out.append(tuple(fields))
            offset += (length + 3) & ~3


def _child(netns: str | None, fd: int) -> None:
    with RtnlSocket(netns) as rtnl:
        rtnl.sock.setblocking(True)
        for family in (4, 6):
            found = _dump(rtnl.sock, _route_request(family))
            for i in range(0, len(found), _BATCH):
                frame = marshal.dumps(found[i : i + _BATCH])
                view = memoryview(_FRAME.pack(len(frame)) + frame)
                while view:
                    view = view[os.write(fd, view) :]


def _fork(netns: str | None, fd: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    # the child: it must never return into the parent's code (its event loop, its threads' state)
    status = 1
    try:
        # the parent's descriptors (its sessions, its event loop's) are not the child's to hold open
        os.closerange(3, fd)
        os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)  # (the parent's loop listens on it)
        _child(netns, fd)
        status = 0
    except BaseException:  # noqa: BLE001  (the status says it; the parent reads in its own loop)
        # straight to the descriptor: sys.stderr's lock may have been held by another thread at the fork
        with contextlib.suppress(Exception):
            os.write(2, f"nvfabric: reading routes in a child process:\n{traceback.format_exc()}".encode())
    finally:
        os._exit(status)


async def _exit_status(pid: int) -> int:
    """The child's exit code, awaited without a thread: its pidfd is readable once it has exited (a kernel
    without pidfds: waited for on an executor thread)."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return os.waitstatus_to_exitcode((await loop.run_in_executor(None, os.waitpid, pid, 0))[1])
    try:
        exited = loop.create_future()
        loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
    finally:
        os.close(pidfd)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _frames(data: bytes) -> list[bytes]:
    out, offset = [], 0
    while offset < len(data):
        if offset + _FRAME.size > len(data):
            raise ApartError("the child's output ends in a frame's length")
        (length,) = _FRAME.unpack_from(data, offset)
        offset += _FRAME.size
        if offset + length > len(data):
            raise ApartError("the child's output ends in a batch")
        out.append(data[offset : offset + length])
        offset += length
    return out


async def route_fields(netns: str | None) -> AsyncIterator[list[m.RouteFields]]:
    """Our routes in `netns` (both families), a batch at a time, read by a child process. The child writes
    into an anonymous file, not a pipe: a pipe would hold it back to the pace at which a busy loop reads.
    Raises ApartError (before any batch: the child's whole output is checked first)."""
    fd = os.memfd_create("nvfabric-routes", os.MFD_CLOEXEC)
    try:
        try:
            pid = _fork(netns, fd)
        except OSError as exc:
            raise ApartError(f"fork: {exc}") from exc
        reaped = False
        try:
            code = await asyncio.wait_for(_exit_status(pid), CHILD_TIMEOUT)
            reaped = True
        except TimeoutError as exc:
            raise ApartError(f"the child did not finish within {CHILD_TIMEOUT:.0f} s") from exc
        finally:
            if not reaped:  # (cancelled: the child is not left running, nor unreaped)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
        if code != 0:
            raise ApartError(f"the child's read failed (exit {code})")
        size = os.fstat(fd).st_size
        chunks, offset = [], 0
        while offset < size:
            chunk = os.pread(fd, size - offset, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        frames = _frames(b"".join(chunks))
    finally:
        os.close(fd)
    for frame in frames:
        try:
            batch = [m.RouteFields._make(t) for t in marshal.loads(frame)]
        except (ValueError, TypeError, EOFError) as exc:
            raise ApartError(f"a garbled batch from the child: {exc}") from exc
        yield batch
