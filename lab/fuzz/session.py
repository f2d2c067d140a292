"""A raw BGP session for the fuzzer and the RFC 7606 reflection tests: bytes in, messages out, no FSM.

It speaks just enough BGP to reach Established (our OPEN, the target's OPEN, KEEPALIVEs both ways) with a
hold time of 0, so no timer runs on either side and a session only ends because somebody closed it.
Everything it receives is kept in order, so a test can wait for a message and tell a NOTIFICATION (with
its code) from a connection dropped without one. It dials out (`RawSession.connect`) or accepts a
connection the target made (a listener hands over a fresh `RawSession(caps)`, then `start()`; an agent and
the gateway dial their route
reflectors).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable

from nvfabric.bgp import wire
from nvfabric.bgp.routes import Family, RouteKey
from nvfabric.bgp.wire import MessageType

HANDSHAKE_TIMEOUT = 10.0
CEASE = 6


def capabilities(router_id: str, asn: int = 65000, families: frozenset[Family] | None = None,
                 four_octet: bool = True) -> wire.Capabilities:
    """Our OPEN: hold time 0 (RFC 4271 section 4.2: no KEEPALIVEs, no hold timer), every family we fuzz;
    without `four_octet` a 2-octet AS speaker (RFC 6793: AS_PATH with 2-octet numbers, AS4_PATH)."""
    return wire.Capabilities(
        asn=asn, router_id=ipaddress.IPv4Address(router_id), hold_time=0,
        families=families or frozenset({Family.L2VPN_EVPN, Family.IPV4_UNICAST, Family.IPV6_UNICAST}),
        four_octet=four_octet,
    )


class SessionClosed(Exception):
    """The target closed the connection; `notification` is what it said first, None if nothing."""

    def __init__(self, notification: wire.Notification | None) -> None:
        super().__init__(f"closed by the target ({notification or 'no NOTIFICATION'})")
        self.notification = notification


class RawSession(asyncio.Protocol):
    """One connection as an asyncio Protocol: every byte received is parsed before the close is seen
    (a StreamReader drops what it buffered when the peer resets the connection, and a target closing on
    an error with our next message unread does reset it)."""

    def __init__(self, caps: wire.Capabilities) -> None:
        self.caps = caps
        self.negotiated: wire.Negotiated | None = None
        self.table: dict[Family, frozenset[RouteKey]] = {}  # the routes of the target's initial table, by family
        self.matched = 0  # index in `received` of what wait_for returned last
        self.received: list[tuple[int, bytes]] = []
        self.notification: wire.Notification | None = None
        self.closed = False
        self.garbage = ""  # set when the target sent bytes that are not BGP (a finding)
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        self._changed = asyncio.Event()
        self._made = asyncio.Event()

    @classmethod
    async def connect(cls, host: str, port: int, local: str, caps: wire.Capabilities,
                      open_message: bytes | None = None) -> RawSession:
        """Dial the target from `local`; with `open_message` send those bytes instead of our OPEN and do
        not wait for Established (the caller is fuzzing the OPEN)."""
        loop = asyncio.get_running_loop()
        session = cls(caps)
        await asyncio.wait_for(loop.create_connection(lambda: session, host, port, local_addr=(local, 0)),
                               HANDSHAKE_TIMEOUT)
        await session.start(open_message)
        return session

    async def peer(self) -> str:
        """The target's address, once connected."""
        await self._made.wait()
        assert self.transport is not None
        return self.transport.get_extra_info("peername")[0]

    async def start(self, open_message: bytes | None = None) -> None:
        """Handshake, or with `open_message` just send it."""
        await self._made.wait()
        if open_message is not None:
            self.send(open_message)
        else:
            await self.handshake()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._made.set()

    def data_received(self, data: bytes) -> None:
        if self.garbage:
            return
        try:
            messages, self._buffer = wire.split_messages(self._buffer + data)
        except wire.MessageHeaderError as err:
            self.garbage = f"{err} in {(self._buffer + data)[:64].hex()}"
            assert self.transport is not None
            self.transport.abort()
            return
        for kind, body in messages:
            self.received.append((kind, body))
            if kind == MessageType.NOTIFICATION and self.notification is None:
                self.notification = wire.decode_notification(body) if len(body) >= 2 else \
                    wire.Notification(0, 0, body)
        self._changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._made.set()
        self._changed.set()

    async def handshake(self) -> wire.Negotiated:
        """OPEN and KEEPALIVE both ways, then the target's initial table up to its End-of-RIB for every
        family (RFC 4724 section 2); `table` holds the keys of the routes of each family in it, which is
        also what a ROUTE-REFRESH is answered with (RFC 2918 section 4), however they are packed."""
        self.send(wire.encode_open(self.caps))
        _, body = await self.wait_for(lambda kind, _: kind == MessageType.OPEN, HANDSHAKE_TIMEOUT)
        negotiated = self.negotiated = wire.negotiate(self.caps, wire.decode_open(body))
        self.send(wire.encode_keepalive())
        await self.wait_for(lambda kind, _: kind == MessageType.KEEPALIVE, HANDSHAKE_TIMEOUT)
        after_keepalive = self.matched + 1
        table: dict[Family, set[RouteKey]] = {}
        ended: set[Family] = set()

        def table_done(kind: int, body: bytes) -> bool:
            if kind == MessageType.UPDATE:
                family = update_family(negotiated, body)
                if family is not None:
                    table.setdefault(family, set()).update(announced(negotiated, body))
                else:
                    ended.add(wire.decode_raw_update(negotiated, body).eor)  # type: ignore[arg-type]
            return ended >= negotiated.families

        await self.wait_for(table_done, HANDSHAKE_TIMEOUT, start=after_keepalive)
        self.table = {family: frozenset(keys) for family, keys in table.items()}
        return negotiated

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def wait_for(self, match: Callable[[int, bytes], bool], timeout: float,
                       start: int = 0) -> tuple[int, bytes]:
        """The first message from index `start` on that matches; SessionClosed if the target closed first,
        TimeoutError if neither happened in time."""
        async with asyncio.timeout(timeout):
            while True:
                for i in range(start, len(self.received)):
                    kind, body = self.received[i]
                    if match(kind, body):
                        self.matched = i
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
        """Leave politely (Cease, administrative shutdown) and wait until the connection is gone."""
        if self.transport is None:
            return
        if not self.closed:
            self.send(wire.encode_notification(CEASE, 2))
            self.transport.close()
        try:
            await self.wait_closed(5)
        except TimeoutError:
            self.transport.abort()


def update_family(negotiated: wire.Negotiated, body: bytes) -> Family | None:
    """The family an UPDATE from the target announces or withdraws in; None for an End-of-RIB."""
    result = wire.decode_raw_update(negotiated, body)
    if result.eor is not None:
        return None
    if result.family is not None:
        return result.family
    runs = result.withdrawn_runs
    return next((f for f, count in runs if count), Family.IPV4_UNICAST)


def announced(negotiated: wire.Negotiated, body: bytes) -> list[RouteKey]:
    """The keys of the routes an UPDATE from the target announces."""
    return [route.key for route in wire.decode_update(negotiated, body).announced]


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
