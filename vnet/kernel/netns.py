"""Netlink sockets and /proc/sys access bound to a named network namespace.

A socket keeps the namespace it was created in, so we enter the namespace only for the `socket()` call
(and for opening a sysctl file), on the calling thread, and return at once. `RtnlSocket` is the raw
rtnetlink transport used by `observe` (dumps) and `apply` (pipelined requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno as errno_mod
import os
import socket
import struct
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

from nvfabric.vnet.kernel import messages as m

CLONE_NEWNET = 0x40000000
SOL_NETLINK = 270
_libc = ctypes.CDLL(None, use_errno=True)
_HDR = struct.Struct("=IHHII")


def _setns(fd: int, what: str) -> None:
    """The one setns(2) of the tree."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns into {what}: {os.strerror(err)}")


def enter_namespace(netns: str) -> None:
    """Move the calling thread into /run/netns/<netns> for good: a daemon (before it makes any socket or
    thread, so all are created inside) or a lab thread running one."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(fd, netns)
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(netns: str | None) -> Iterator[None]:
    """Run the body with this thread in `netns` (a name under /run/netns); None = stay where we are."""
    if netns is None:
        yield
        return
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(target, netns)
        try:
            yield
        finally:
            _setns(back, "the thread's own namespace")
    finally:
        os.close(target)
        os.close(back)


def link_exists(netns: str | None, name: str) -> bool:
    """One device by name (an ioctl), instead of dumping every link of the host."""
    with inside(netns):
        try:
            socket.if_nametoindex(name)
            return True
        except OSError:
            return False


def read_sysctl(netns: str | None, path: str) -> str | None:
    return read_sysctls(netns, [path])[path]


def read_sysctls(netns: str | None, paths: Iterable[str]) -> dict[str, str | None]:
    """Current values (None: no such sysctl), read with ONE pair of namespace switches for all of them."""
    out: dict[str, str | None] = {}
    with inside(netns):
        for path in paths:
            try:
                with open(f"/proc/sys/{path}") as f:
                    out[path] = f.read().strip()
            except FileNotFoundError:
                out[path] = None
    return out


def write_sysctl(netns: str | None, path: str, value: str) -> None:
    error = write_sysctls(netns, [(path, value)])[0]
    if error is not None:
        raise error


def write_sysctls(netns: str | None, items: Iterable[tuple[str, str]]) -> list[OSError | None]:
    """Write each (path, value), in one namespace visit (a new port has four; a switch each cost more than
    the writes under TCG); each item's error, or None, in order."""
    out: list[OSError | None] = []
    with inside(netns):
        for path, value in items:
            try:
                with open(f"/proc/sys/{path}", "w") as f:
                    f.write(value)
                out.append(None)
            except OSError as e:
                out.append(e)
    return out


@dataclass(frozen=True)
class Ack:
    seq: int
    errno: int  # 0 = success
    message: str  # the kernel's extended-ack text, if any


class NetlinkError(OSError):
    """A dump failed as a whole (not a per-object error: those are `apply.ApplyError`)."""


class RtnlSocket:
    """A NETLINK_ROUTE socket in one namespace, with extended acks, capped acks and strict dump checks."""

    def __init__(self, netns: str | None = None, cooperative: bool = False) -> None:
        """`cooperative`: a dump lets the event loop run between datagrams (a long read beside other work)."""
        self.netns = netns
        self.cooperative = cooperative
        with inside(netns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            for opt in (m.NETLINK_EXT_ACK, m.NETLINK_CAP_ACK, m.NETLINK_GET_STRICT_CHK):
                self.sock.setsockopt(SOL_NETLINK, opt, 1)
            # acks for a whole window must fit the receive queue, or the kernel drops them (ENOBUFS)
            for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # *BUFFORCE: root ignores rmem_max
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, force, 16 << 20)
                except OSError:
                    self.sock.setsockopt(socket.SOL_SOCKET, opt, 16 << 20)
            self.sock.bind((0, 0))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RtnlSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    async def _messages(self) -> AsyncIterator[tuple[int, int, int, bytes]]:
        """(type, flags, seq, whole message) for every message of the next datagrams, forever."""
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 1 << 20)  # (returns at once when data is waiting)
            if self.cooperative:
                await asyncio.sleep(0)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, flags, seq, _pid = _HDR.unpack_from(data, offset)
                if length < 16:
                    break
                yield kind, flags, seq, data[offset : offset + length]
                offset += (length + 3) & ~3

    async def dump(self, request_kind: int, body: bytes) -> AsyncIterator[bytes]:
        """Yield each message of one dump (pyroute2-style async generator; nothing buffered whole)."""
        seq = self.next_seq()
        await asyncio.get_running_loop().sock_sendall(self.sock, m.message(request_kind, m.NLM_F_DUMP, seq, body))
        async for kind, _flags, mseq, msg in self._messages():
            if mseq != seq:
                continue  # a stale reply of an earlier request
            if kind == m.NLMSG_DONE:
                return
            if kind == m.NLMSG_ERROR:
                err = -struct.unpack_from("=i", msg, 16)[0]
                if err:
                    raise NetlinkError(err, f"dump {request_kind}: {os.strerror(err)}")
                continue
            yield msg

    async def transact(self, requests: list[tuple[int, bytes]], window_bytes: int = 256 << 10) -> dict[int, Ack]:
        """Send many (seq, message) requests, each with NLM_F_ACK, packed into few sendmsg calls, and
        collect one ack per sequence number (FRR's kernel_update_multi idea). rtnetlink handles a buffer
        synchronously inside sendmsg, so after each send we drain exactly that window's acks."""
        loop = asyncio.get_running_loop()
        acks: dict[int, Ack] = {}
        i = 0
        while i < len(requests):
            buf = bytearray()
            pending: set[int] = set()
            while i < len(requests) and (not buf or len(buf) + len(requests[i][1]) <= window_bytes):
                seq, msg = requests[i]
                buf += msg
                pending.add(seq)
                i += 1
            await loop.sock_sendall(self.sock, bytes(buf))
            async for kind, flags, seq, msg in self._messages():
                if kind != m.NLMSG_ERROR or seq not in pending:
                    continue
                acks[seq] = _parse_ack(seq, flags, msg)
                pending.discard(seq)
                if not pending:
                    break
        return acks


def _parse_ack(seq: int, flags: int, msg: bytes) -> Ack:
    err = -struct.unpack_from("=i", msg, 16)[0]
    text = ""
    if err and flags & 0x200:  # NLM_F_ACK_TLVS: attributes follow the (capped) original header
        offset = 16 + 4 + 16
        while offset + 4 <= len(msg):
            length, kind = struct.unpack_from("=HH", msg, offset)
            if length < 4:
                break
            if kind == m.NLMSGERR_ATTR_MSG:
                text = msg[offset + 4 : offset + length].rstrip(b"\0").decode(errors="replace")
            offset += (length + 3) & ~3
    return Ack(seq, err, text or (os.strerror(err) if err else ""))


GONE = {errno_mod.ENOENT, errno_mod.ESRCH, errno_mod.ENODEV, errno_mod.EADDRNOTAVAIL}
