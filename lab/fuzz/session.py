"""A raw BGP session for the fuzzer and the RFC 7606 reflection tests: bytes in, messages out, no FSM.

It speaks just enough BGP to reach Established (our OPEN, the target's OPEN, KEEPALIVEs both ways) with a
hold time of 0, so no timer runs on either side and a session only ends because somebody closed it.
Everything it receives is kept in order, so a test can wait for a message and tell a NOTIFICATION (with
its code) from a connection dropped without one. It dials out (`RawSession.connect`) or accepts a
connection the target made (`RawSession.accepted`, for an agent or a gateway, which dial their route
reflectors).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from nvfabric.bgp import wire
from nvfabric.bgp.routes import Family
from nvfabric.bgp.wire import MessageType

HANDSHAKE_TIMEOUT = 10.0
CEASE = 6


def capabilities(router_id: str, asn: int = 65000, families: frozenset[Family] | None = None) -> wire.Capabilities:
    """Our OPEN: hold time 0 (RFC 4271 section 4.2: no KEEPALIVEs, no hold timer), every family we fuzz."""
    return wire.Capabilities(
        asn=asn, router_id=ipaddress.IPv4Address(router_id), hold_time=0,
        families=families or frozenset({Family.L2VPN_EVPN, Family.IPV4_UNICAST, Family.IPV6_UNICAST}),
    )


class SessionClosed(Exception):
    """The target closed the connection; `notification` is what it said first, None if nothing."""

    def __init__(self, notification: wire.Notification | None) -> None:
        super().__init__(f"closed by the target ({notification or 'no NOTIFICATION'})")
        self.notification = notification


@dataclass
class RawSession:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    caps: wire.Capabilities
    negotiated: wire.Negotiated | None = None
    received: list[tuple[int, bytes]] = field(default_factory=list)
    notification: wire.Notification | None = None
    closed: bool = False
    garbage: str = ""  # set when the target sent bytes that are not BGP (a finding)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, host: str, port: int, local: str, caps: wire.Capabilities,
                      open_message: bytes | None = None) -> RawSession:
        """Dial the target from `local`; with `open_message` send those bytes instead of our OPEN and do
        not wait for Established (the caller is fuzzing the OPEN)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(local, 0)), HANDSHAKE_TIMEOUT)
        session = cls(reader, writer, caps)
        session._start()
        if open_message is not None:
            session.send(open_message)
        else:
            await session.handshake()
        return session

    @classmethod
    def accepted(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 caps: wire.Capabilities) -> RawSession:
        """A connection the target made to us; call handshake() or send a fuzzed OPEN."""
        session = cls(reader, writer, caps)
        session._start()
        return session

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def handshake(self) -> wire.Negotiated:
        self.send(wire.encode_open(self.caps))
        _, body = await self.wait_for(lambda kind, _: kind == MessageType.OPEN, HANDSHAKE_TIMEOUT)
        self.negotiated = wire.negotiate(self.caps, wire.decode_open(body))
        self.send(wire.encode_keepalive())
        await self.wait_for(lambda kind, _: kind == MessageType.KEEPALIVE, HANDSHAKE_TIMEOUT)
        return self.negotiated

    async def _read(self) -> None:
        buffer = b""
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                try:
                    messages, buffer = wire.split_messages(buffer + data)
                except wire.MessageHeaderError as err:
                    self.garbage = f"{err} in {(buffer + data)[:64].hex()}"
                    break
                for kind, body in messages:
                    self.received.append((kind, body))
                    if kind == MessageType.NOTIFICATION and self.notification is None:
                        self.notification = wire.decode_notification(body) if len(body) >= 2 else \
                            wire.Notification(0, 0, body)
                self._changed.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed = True
            self._changed.set()

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except (ConnectionError, OSError):
            pass

    async def wait_for(self, match: Callable[[int, bytes], bool], timeout: float,
                       start: int = 0) -> tuple[int, bytes]:
        """The first message from index `start` on that matches; SessionClosed if the target closed first,
        TimeoutError if neither happened in time."""
        async with asyncio.timeout(timeout):
            while True:
                for kind, body in self.received[start:]:
                    if match(kind, body):
                        return kind, body
                start = len(self.received)
                if self.closed:
                    raise SessionClosed(self.notification)
                self._changed.clear()
                await self._changed.wait()

    async def wait_closed(self, timeout: float) -> wire.Notification | None:
        async with asyncio.timeout(timeout):
            while not self.closed:
                self._changed.clear()
                await self._changed.wait()
        return self.notification

    async def close(self) -> None:
        """Leave politely (Cease) and wait until the reader has finished."""
        if not self.closed:
            self.send(wire.encode_notification(CEASE, 2))
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (ConnectionError, OSError, TimeoutError):
            pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


def updates(session: RawSession, start: int = 0) -> list[bytes]:
    """Bodies of the UPDATEs received from index `start` on."""
    return [body for kind, body in session.received[start:] if kind == MessageType.UPDATE]


def attributes_of(body: bytes) -> list[tuple[int, int, bytes]]:
    """(flags, type code, value) of each path attribute of an UPDATE body, as received."""
    withdrawn_end = 2 + int.from_bytes(body[:2], "big")
    end = withdrawn_end + 2 + int.from_bytes(body[withdrawn_end : withdrawn_end + 2], "big")
    pos, out = withdrawn_end + 2, []
    while pos < end:
        flags, code = body[pos], body[pos + 1]
        head = 4 if flags & 0x10 else 3
        length = int.from_bytes(body[pos + 2 : pos + head], "big")
        out.append((flags, code, body[pos + head : pos + head + length]))
        pos += head + length
    return out
