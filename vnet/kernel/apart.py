"""A namespace's routes read in a child process: the one step of a full kernel read that grows with the fabric.

A host agent's kernel holds a route per remote CA (100,000 of them at fabric scale). Dumping and parsing them
is Python on the daemon's event loop, the loop that also decodes the fabric's table and learns it: at a
restart the two compete for one CPU. Here a forked child (no asyncio, no threads: it only dumps, parses and
writes) does the netlink part on another CPU and hands the parsed fields over a pipe, in batches, as plain
tuples (marshal); the parent only builds its objects from them. Anything that goes wrong in the child (a
failed fork, a dump error, a short or garbled stream, a non-zero exit) is an `ApartError`: the caller reads in
its own loop instead, as before.
"""

from __future__ import annotations

import asyncio
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


class ApartError(RuntimeError):
    """The child's read failed; nothing of it is used."""


def _route_request(family: int) -> bytes:
    # strict dump checking lets the kernel filter by protocol: others' routes never reach us
    return m.message(m.RTM_GETROUTE, m.NLM_F_DUMP, 1,
                     struct.pack("=BBBBBBBBI", m.FAMILY[family], 0, 0, 0, 0, k.PROTO, 0, 0, 0))


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
                os.write(fd, _FRAME.pack(len(frame)))
                view = memoryview(frame)
                while view:
                    view = view[os.write(fd, view) :]


def _fork(netns: str | None, fd_read: int, fd_write: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    # the child: it must never return into the parent's code (its event loop, its threads' state)
    status = 1
    try:
        # the parent's descriptors (its sessions, its event loop's) are not the child's to hold open
        os.closerange(3, fd_write)
        os.closerange(fd_write + 1, os.sysconf("SC_OPEN_MAX"))
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)  # (the parent's loop listens on it)
        _child(netns, fd_write)
        status = 0
    except BaseException:  # noqa: BLE001  (the status says it; the parent reads in its own loop)
        traceback.print_exc()
    finally:
        os._exit(status)


async def route_fields(netns: str | None) -> AsyncIterator[list[m.RouteFields]]:
    """Our routes in `netns` (both families), a batch at a time, read by a child process. Raises ApartError
    (before or after some batches: the caller drops what it took)."""
    loop = asyncio.get_running_loop()
    fd_read, fd_write = os.pipe()
    try:
        pid = _fork(netns, fd_read, fd_write)
    except OSError as exc:
        os.close(fd_read)
        os.close(fd_write)
        raise ApartError(f"fork: {exc}") from exc
    os.close(fd_write)
    reader = asyncio.StreamReader(limit=1 << 24)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                os.fdopen(fd_read, "rb", buffering=0))
    reaped = False
    try:
        while True:
            head = await reader.read(_FRAME.size)
            if not head:
                break
            if len(head) < _FRAME.size:
                head += await reader.readexactly(_FRAME.size - len(head))
            frame = await reader.readexactly(_FRAME.unpack(head)[0])
            try:
                batch = [m.RouteFields._make(t) for t in marshal.loads(frame)]
            except (ValueError, TypeError, EOFError) as exc:
                raise ApartError(f"a garbled batch from the child: {exc}") from exc
            yield batch
        status = await loop.run_in_executor(None, os.waitpid, pid, 0)
        reaped = True
        if os.waitstatus_to_exitcode(status[1]) != 0:
            raise ApartError(f"the child's read failed (exit {os.waitstatus_to_exitcode(status[1])})")
    except asyncio.IncompleteReadError as exc:
        raise ApartError("the child's stream ended in a batch") from exc
    finally:
        transport.close()
        if not reaped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await loop.run_in_executor(None, os.waitpid, pid, 0)
