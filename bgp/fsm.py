"""Sans-IO BGP finite state machine for one TCP connection (RFC 4271 section 8).

No sockets, no asyncio, no clock: the adapter (`bgp/session.py`) feeds received bytes and the current time
in, takes bytes to send and events out, and arms one timer at `next_timer()`. This is the aioquic shape
(`receive_datagram(data, now)`, `handle_timer(now)`), so two machines can be wired together in memory in tests.

One `Fsm` lives for one TCP connection, from the moment it is connected (it sends its OPEN at once and is in
OpenSent) until it reaches Idle. Idle, Connect and Active (retrying the TCP connection, section 8.2.2) are
the adapter's business: it owns the sockets and the connect-retry backoff, for which `retry_delay` below is
the pure policy.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from nvfabric.bgp import wire
from nvfabric.bgp.errors import MessageHeaderError, OpenError
from nvfabric.bgp.routes import Address, PeerRef
from nvfabric.bgp.wire import MessageType

# RFC 4271 section 4.5 error codes, and the subcodes we send.
ERR_HEADER = 1
ERR_OPEN = 2
ERR_UPDATE = 3
ERR_HOLD_TIMER = 4
ERR_FSM = 5
ERR_CEASE = 6
# RFC 6608: FSM error subcodes say in which state the unexpected message arrived.
FSM_UNEXPECTED_IN_OPENSENT = 1
FSM_UNEXPECTED_IN_OPENCONFIRM = 2
FSM_UNEXPECTED_IN_ESTABLISHED = 3
# RFC 4271 section 6.3: with these UPDATE Message Error subcodes (unrecognized well-known attribute,
# optional attribute error) the NOTIFICATION's Data is the offending attribute.
UPDATE_SUBCODES_WITH_ATTRIBUTE = frozenset({2, 9})
# RFC 4486 Cease subcodes.
CEASE_MAX_PREFIX = 1
CEASE_ADMIN_SHUTDOWN = 2
CEASE_PEER_DECONFIGURED = 3
CEASE_ADMIN_RESET = 4
CEASE_CONNECTION_REJECTED = 5
CEASE_COLLISION = 7
CEASE_OUT_OF_RESOURCES = 8
CEASE_BFD_DOWN = 10  # RFC 9384

# RFC 4271 section 8.2.2: "large value" for the hold timer while waiting for the OPEN; 4 minutes suggested.
# Both sides send their OPEN as soon as TCP is up, so we wait less: a connection that sends nothing must
# not hold a slot (the speaker bounds the connections in OpenSent/OpenConfirm) for four minutes.
OPEN_HOLD_TIME = 30.0


class State(enum.Enum):
    IDLE = "Idle"
    CONNECT = "Connect"
    ACTIVE = "Active"
    OPEN_SENT = "OpenSent"
    OPEN_CONFIRM = "OpenConfirm"
    ESTABLISHED = "Established"


class CloseKind(enum.Enum):
    NOTIFICATION_SENT = "notification-sent"
    NOTIFICATION_RECEIVED = "notification-received"
    CONNECTION_LOST = "connection-lost"


@dataclass(frozen=True)
class CloseReason:
    kind: CloseKind
    code: int = 0
    subcode: int = 0
    data: bytes = b""
    text: str = ""

    def __str__(self) -> str:
        if self.kind is CloseKind.CONNECTION_LOST:
            return f"connection lost: {self.text}" if self.text else "connection lost"
        extra = f" ({self.text})" if self.text else ""
        return f"{self.kind.value} {self.code}/{self.subcode} data={self.data.hex() or '-'}{extra}"


# Events: small values the adapter hands to the owner task (`bgp/speaker.py`).
@dataclass(frozen=True)
class OpenReceived:
    """The peer's OPEN passed validation: the adapter checks for a connection collision (RFC 4271 6.8)."""

    capabilities: wire.Capabilities


@dataclass(frozen=True)
class Established:
    negotiated: wire.Negotiated
    remote: wire.Capabilities


@dataclass(frozen=True)
class UpdateReceived:
    result: Any  # what FsmConfig.decoder returns: wire.UpdateResult unless the owner chose otherwise
    body: bytes  # kept so RFC 7606 errors can be logged with the bytes


@dataclass(frozen=True)
class RouteRefreshReceived:
    body: bytes


@dataclass(frozen=True)
class Closed:
    reason: CloseReason
    was_established: bool


Event = OpenReceived | Established | UpdateReceived | RouteRefreshReceived | Closed


def typed_decoder(negotiated: wire.Negotiated, body: bytes, source: PeerRef | None) -> wire.UpdateResult:
    return wire.decode_update(negotiated, body, source)


# How UPDATE bodies become what the owner receives: typed paths by default; the route reflector can pass
# a decoder that keeps NLRI raw (`wire.decode_raw_update`). Its result needs `.errors` (RFC 7606 actions).
UpdateDecoder = Callable[[wire.Negotiated, bytes, PeerRef | None], Any]


@dataclass(frozen=True)
class FsmConfig:
    local: wire.Capabilities
    # The AS the peer must announce; None accepts any (only for tests and tools).
    peer_asn: int | None
    # The peer's transport address, recorded as the source of every path it sends.
    peer_address: Address | None = None
    decoder: UpdateDecoder = typed_decoder
    # How long to wait for the peer's OPEN (and, in OpenConfirm, for its KEEPALIVE when hold time is 0).
    open_hold_time: float = OPEN_HOLD_TIME


@dataclass
class Counters:
    messages_in: int = 0
    messages_out: int = 0
    updates_in: int = 0
    bytes_in: int = 0


class Fsm:
    """One connection's RFC 4271 state machine, from OpenSent to Idle."""

    def __init__(self, config: FsmConfig, now: float) -> None:
        self.config = config
        self.state = State.OPEN_SENT
        self.remote: wire.Capabilities | None = None
        self.negotiated: wire.Negotiated | None = None
        self.counters = Counters()
        self._inbuf = b""
        self._out: list[bytes] = [wire.encode_open(config.local)]
        self.counters.messages_out += 1
        self._hold_deadline: float | None = now + config.open_hold_time
        self._keepalive_at: float | None = None
        self._hold_time = 0.0
        self.close_reason: CloseReason | None = None
        self._was_established = False
        self._source: PeerRef | None = None

    # -- inputs -------------------------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> list[Event]:
        if self.state is State.IDLE:
            return []
        self.counters.bytes_in += len(data)
        try:
            messages, self._inbuf = wire.split_messages(self._inbuf + data if self._inbuf else data)
        except MessageHeaderError as err:
            return self._fail(ERR_HEADER, err.subcode, err.data, err.reason)
        events: list[Event] = []
        for msg_type, body in messages:
            events.extend(self._dispatch(msg_type, body, now))
            if self.state is State.IDLE:
                break
        return events

    def handle_timer(self, now: float) -> list[Event]:
        if self.state is State.IDLE:
            return []
        if self._hold_deadline is not None and now >= self._hold_deadline:
            # RFC 4271 6.5: hold timer expired.
            return self._fail(ERR_HOLD_TIMER, 0, b"", "hold timer expired")
        if self._keepalive_at is not None and now >= self._keepalive_at:
            self._send(wire.encode_keepalive())
            self._keepalive_at = now + self._hold_time / 3
        return []

    def unread_input(self, now: float) -> None:
        """The transport holds bytes from the peer that we have not read yet, because we stopped reading (our
        owner is behind): the peer is not silent, so its hold timer starts again, as on a message received.
        It expires a hold time after we read again if the peer really went silent."""
        if self.state is not State.IDLE and self._hold_deadline is not None:
            self._restart_hold(now)

    def connection_lost(self, text: str = "") -> list[Event]:
        if self.state is State.IDLE:
            return []
        return self._to_idle(CloseReason(CloseKind.CONNECTION_LOST, text=text))

    def stop(self, code: int, subcode: int, data: bytes = b"", text: str = "") -> list[Event]:
        """Close with a NOTIFICATION (administrative stop, collision, rejected peer)."""
        if self.state is State.IDLE:
            return []
        return self._fail(code, subcode, data, text)

    # -- outputs ------------------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_timer(self) -> float | None:
        times = [t for t in (self._hold_deadline, self._keepalive_at) if t is not None]
        return min(times) if times else None

    # -- internals ----------------------------------------------------------------------------------------

    def _send(self, message: bytes) -> None:
        self._out.append(message)
        self.counters.messages_out += 1

    def _fail(self, code: int, subcode: int, data: bytes, text: str) -> list[Event]:
        self._send(wire.encode_notification(code, subcode, data))
        return self._to_idle(CloseReason(CloseKind.NOTIFICATION_SENT, code, subcode, data, text))

    def _to_idle(self, reason: CloseReason) -> list[Event]:
        self.state = State.IDLE
        self.close_reason = reason
        self._hold_deadline = self._keepalive_at = None
        return [Closed(reason, self._was_established)]

    def _restart_hold(self, now: float) -> None:
        if self._hold_time:
            self._hold_deadline = now + self._hold_time

    def _dispatch(self, msg_type: int, body: bytes, now: float) -> list[Event]:
        self.counters.messages_in += 1
        if msg_type == MessageType.NOTIFICATION:
            code, subcode, data = wire.decode_notification(body) if len(body) >= 2 else (0, 0, body)
            return self._to_idle(CloseReason(CloseKind.NOTIFICATION_RECEIVED, code, subcode, data))
        if self.state is State.OPEN_SENT:
            if msg_type != MessageType.OPEN:
                return self._fail(ERR_FSM, FSM_UNEXPECTED_IN_OPENSENT, b"", f"message type {msg_type} in OpenSent")
            return self._on_open(body, now)
        if self.state is State.OPEN_CONFIRM:
            if msg_type == MessageType.KEEPALIVE:
                self._restart_hold(now)
                self.state = State.ESTABLISHED
                self._was_established = True
                assert self.negotiated is not None and self.remote is not None
                return [Established(self.negotiated, self.remote)]
            return self._fail(ERR_FSM, FSM_UNEXPECTED_IN_OPENCONFIRM, b"", f"message type {msg_type} in OpenConfirm")
        # Established.
        if msg_type == MessageType.KEEPALIVE:
            self._restart_hold(now)
            return []
        if msg_type == MessageType.UPDATE:
            self._restart_hold(now)
            self.counters.updates_in += 1
            assert self.negotiated is not None
            result = self.config.decoder(self.negotiated, body, self._source)
            fatal = next((e for e in result.errors if e.action == wire.SESSION_RESET), None)
            if fatal is not None:
                # RFC 7606 keeps the session for everything else; these few errors still reset it.
                data = bytes.fromhex(fatal.raw) if fatal.subcode in UPDATE_SUBCODES_WITH_ATTRIBUTE else b""
                return self._fail(ERR_UPDATE, fatal.subcode, data, f"{fatal.reason} (bytes {fatal.raw})")
            return [UpdateReceived(result, body)]
        if msg_type == MessageType.ROUTE_REFRESH:
            self._restart_hold(now)
            return [RouteRefreshReceived(body)]
        return self._fail(ERR_FSM, FSM_UNEXPECTED_IN_ESTABLISHED, b"", f"message type {msg_type} in Established")

    def _on_open(self, body: bytes, now: float) -> list[Event]:
        # RFC 4271 6.2: version, peer AS, BGP identifier and hold time are checked by the codec, which
        # raises with the subcode to send (and negotiate() adds identifier collision and no common family).
        local = self.config.local
        try:
            remote = wire.decode_open(body, self.config.peer_asn)
            negotiated = wire.negotiate(local, remote)
        except OpenError as err:
            return self._fail(ERR_OPEN, err.subcode, err.data, f"bad OPEN: {err.reason}")
        self.remote = remote
        self.negotiated = negotiated
        if self.config.peer_address is not None:
            self._source = PeerRef(self.config.peer_address, remote.router_id, remote.asn)
        # RFC 4271 4.2: the smaller of the two proposals; zero means no keepalives and no hold timer.
        self._hold_time = float(min(local.hold_time, remote.hold_time))
        self._send(wire.encode_keepalive())
        if self._hold_time:
            self._hold_deadline = now + self._hold_time
            self._keepalive_at = now + self._hold_time / 3
        else:
            self._hold_deadline = self._keepalive_at = None
        self.state = State.OPEN_CONFIRM
        return [OpenReceived(remote)]


# -- policies the adapter applies, kept pure so they are tested here ----------------------------------------


class Side(enum.Enum):
    OUTGOING = "outgoing"  # we connected
    INCOMING = "incoming"  # the peer connected


def collision_loser(local_router_id: IPv4Address, remote_router_id: IPv4Address) -> Side:
    """RFC 4271 6.8: keep the connection initiated by the speaker with the higher BGP Identifier.

    The identifiers are compared as 4-octet unsigned integers. Returns the side whose connection to close.
    """
    if int(local_router_id) < int(remote_router_id):
        return Side.OUTGOING
    return Side.INCOMING


@dataclass
class Backoff:
    """Connect-retry delays: exponential with jitter (RFC 4271 leaves the policy open; 8.2.1.3 suggests 120 s
    for ConnectRetryTime; we start small so a lab converges fast, and jitter so reconnects do not burst)."""

    initial: float = 1.0
    maximum: float = 60.0
    jitter: float = 0.5  # up to this fraction of the delay is taken off at random
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * (2**self._attempt))
        self._attempt += 1
        return base * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self._attempt = 0
