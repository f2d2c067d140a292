"""Sans-IO BFD session (RFC 5880 asynchronous mode): the state machine of sections 6.2 and 6.8.6, the timers
of 6.8.2-6.8.4 and 6.8.7, Poll/Final parameter changes (6.5) and authentication state (6.7).

No sockets, no asyncio, no clock, no randomness of its own: the adapter (`endpoint.py`) feeds decoded
packets and the current time in, takes datagrams to send and `StateChanged` events out, and arms one timer
at `next_timer()` (the shape of bgp/fsm.py). The jitter source is injected, so two sessions can be wired
together in memory under a simulated clock.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass

from nvfabric.bgp.bfd import BfdConfig, BfdState, Diagnostic
from nvfabric.bgp.bfd import packet as pkt
from nvfabric.bgp.bfd.packet import ControlPacket

# 6.8.3: while the session is not Up, the Desired Min TX Interval advertised is at least one second.
SLOW_TX = 1_000_000  # microseconds
# 6.8.1: bfd.RemoteMinRxInterval starts at 1 (microsecond): we may send before hearing from the peer.
INITIAL_REMOTE_MIN_RX = 1
US = 1e-6


@dataclass(frozen=True)
class StateChanged:
    old: BfdState
    new: BfdState
    diag: Diagnostic  # bfd.LocalDiag after the change: why we went down; NONE once Up


Event = StateChanged


def transmit_interval(desired_min_tx: int, remote_min_rx: int) -> int:
    """6.8.7: the interval between our packets, in microseconds, before jitter."""
    return max(desired_min_tx, remote_min_rx)


def jittered(interval: float, detect_mult: int, draw: float) -> float:
    """6.8.7: 75-100% of the interval, 75-90% when our Detect Mult is 1; `draw` is uniform in [0, 1)."""
    top = 0.9 if detect_mult == 1 else 1.0
    return interval * (0.75 + (top - 0.75) * draw)


def detection_time(remote_detect_mult: int, required_min_rx: int, remote_desired_min_tx: int) -> int:
    """6.8.4, asynchronous mode: how long a silent peer takes to be declared down, in microseconds."""
    return remote_detect_mult * max(required_min_rx, remote_desired_min_tx)


def next_state(local: BfdState, remote: BfdState) -> tuple[BfdState, Diagnostic | None]:
    """6.2 / 6.8.6: our new state on a packet with the peer's `remote` state, and the diagnostic to set
    (None: unchanged). AdminDown locally is handled by the caller (packets are then ignored)."""
    if remote is BfdState.ADMIN_DOWN:
        if local is not BfdState.DOWN:
            return BfdState.DOWN, Diagnostic.NEIGHBOR_SIGNALED_SESSION_DOWN
        return local, None
    if local is BfdState.DOWN:
        if remote is BfdState.DOWN:
            return BfdState.INIT, None
        if remote is BfdState.INIT:
            return BfdState.UP, None
    elif local is BfdState.INIT:
        if remote in (BfdState.INIT, BfdState.UP):
            return BfdState.UP, None
    elif local is BfdState.UP and remote is BfdState.DOWN:
        return BfdState.DOWN, Diagnostic.NEIGHBOR_SIGNALED_SESSION_DOWN
    return local, None


@dataclass
class Counters:
    packets_in: int = 0
    packets_out: int = 0
    dropped: int = 0  # refused by the session (authentication, sequence, local discriminator)
    transitions: int = 0
    downs: int = 0


class Session:
    """One BFD session, from creation (Down) on; `admin_down()` and `enable()` move it out of and back into
    service."""

    def __init__(self, config: BfdConfig, local_discriminator: int, now: float,
                 random: Callable[[], float] = _random.random) -> None:
        if not 1 <= local_discriminator <= 0xFFFFFFFF:
            raise ValueError("local_discriminator: must be 1..2^32-1")
        _check_config(config)
        self.config = config
        self.local_discriminator = local_discriminator
        self._random = random
        self.state = BfdState.DOWN
        self.diag = Diagnostic.NONE  # bfd.LocalDiag, as sent: cleared when the session comes Up
        self.down_reason = Diagnostic.NONE  # why it last went down, kept while Up (for status)
        self.remote_state = BfdState.DOWN
        self.remote_discriminator = 0
        self.remote_diag = Diagnostic.NONE
        self.remote_min_rx = INITIAL_REMOTE_MIN_RX
        self.remote_desired_tx = 0
        self.remote_detect_mult = 0
        self.counters = Counters()
        # What we advertise (bfd.DesiredMinTxInterval, bfd.RequiredMinRxInterval), and what the timers use
        # while a Poll Sequence for a change is outstanding (6.8.3: an increase of our transmit interval and
        # a decrease of our receive interval take effect only when the peer has acknowledged them).
        self.desired_tx = self._wanted_tx()
        self.required_rx = config.receive_interval * 1000
        self._tx_in_use = self.desired_tx
        self._rx_in_use = self.required_rx
        self.polling = False
        self._poll_again = False
        self._next_tx: float | None = now  # the first packet goes at once (unless passive, see _may_send)
        self._detect_deadline: float | None = None
        self._last_rx: float | None = None
        self._xmit_seq = int(self._random() * 0xFFFFFFFF) & 0xFFFFFFFF  # 6.8.1: random initial value
        self._rcv_seq = 0
        self._seq_known = False
        self._out: list[ControlPacket] = []

    # -- inputs -------------------------------------------------------------------------------------------

    def receive(self, packet: ControlPacket, now: float) -> list[Event]:
        """A packet `pkt.decode` accepted and the adapter routed to this session (6.8.6 from the
        discriminator checks on)."""
        if packet.your_discriminator and packet.your_discriminator != self.local_discriminator:
            self.counters.dropped += 1
            return []
        if not self._authentic(packet, now):
            self.counters.dropped += 1
            return []
        self.counters.packets_in += 1
        self._last_rx = now
        self.remote_discriminator = packet.my_discriminator
        self.remote_state = packet.state
        self.remote_diag = packet.diag
        self.remote_detect_mult = packet.detect_mult
        self.remote_desired_tx = packet.desired_min_tx
        previous_min_rx = self.remote_min_rx
        self.remote_min_rx = packet.required_min_rx
        if packet.final and self.polling:
            self._poll_done(now)
        if self.remote_min_rx != previous_min_rx:
            self._reschedule_tx(now)
        self._detect_deadline = now + self.detect_time * US
        events: list[Event] = []
        if self.state is not BfdState.ADMIN_DOWN:
            new, diag = next_state(self.state, packet.state)
            if new is not self.state:
                events = self._move(new, diag, now)
        if packet.poll and self._may_send():
            # 6.5: the Final goes as soon as practicable, outside the transmit schedule.
            self._queue(now, final=True)
        return events

    def handle_timer(self, now: float) -> list[Event]:
        events: list[Event] = []
        if self._detect_deadline is not None and now >= self._detect_deadline:
            # 6.8.1: the peer's variables are forgotten; 6.8.4: Init or Up goes Down.
            self._detect_deadline = None
            self.remote_discriminator = 0
            self.remote_state = BfdState.DOWN
            self.remote_min_rx = INITIAL_REMOTE_MIN_RX
            if self.state in (BfdState.INIT, BfdState.UP):
                events = self._move(BfdState.DOWN, Diagnostic.CONTROL_DETECTION_TIME_EXPIRED, now)
        if self._next_tx is not None and now >= self._next_tx:
            if self._may_send():
                self._queue(now)
            self._schedule_tx(now)
        return events

    def admin_down(self, now: float) -> list[Event]:
        """6.8.16: to AdminDown with diag 7, told to the peer at once (and at every interval after)."""
        if self.state is BfdState.ADMIN_DOWN:
            return []
        events = self._move(BfdState.ADMIN_DOWN, Diagnostic.ADMINISTRATIVELY_DOWN, now)
        if self._may_send(admin=True):
            self._queue(now)
        return events

    def enable(self, now: float) -> list[Event]:
        """Back into service from AdminDown (to Down)."""
        if self.state is not BfdState.ADMIN_DOWN:
            return []
        return self._move(BfdState.DOWN, Diagnostic.NONE, now)

    def set_config(self, config: BfdConfig, now: float) -> list[Event]:
        """New parameters (6.8.3): an Up session announces new intervals with a Poll Sequence."""
        _check_config(config)
        if config == self.config:
            return []
        if config.auth != self.config.auth:
            self._seq_known = False
        self.config = config
        self._set_intervals(now)
        return []

    # -- outputs ------------------------------------------------------------------------------------------

    def packets_to_send(self) -> list[ControlPacket]:
        out, self._out = self._out, []
        return out

    def datagrams_to_send(self) -> list[bytes]:
        auth = self.config.auth
        out: list[bytes] = []
        for packet in self.packets_to_send():
            if auth is None:
                out.append(pkt.encode(packet))
            else:
                self._xmit_seq = (self._xmit_seq + 1) & 0xFFFFFFFF
                out.append(pkt.sign(packet, auth, self._xmit_seq))
        return out

    def next_timer(self) -> float | None:
        times = [t for t in (self._next_tx, self._detect_deadline) if t is not None]
        return min(times) if times else None

    @property
    def detect_time(self) -> int:
        """Microseconds; 0 before the peer has been heard from."""
        if not self.remote_detect_mult:
            return 0
        return detection_time(self.remote_detect_mult, self._rx_in_use, self.remote_desired_tx)

    @property
    def transmit_interval(self) -> int:
        """Microseconds, before jitter."""
        return transmit_interval(self._tx_in_use, self.remote_min_rx)

    # -- internals ----------------------------------------------------------------------------------------

    def _wanted_tx(self) -> int:
        configured = self.config.transmit_interval * 1000
        return configured if self.state is BfdState.UP else max(configured, SLOW_TX)

    def _set_intervals(self, now: float) -> None:
        """Advertise what the configuration and state ask for; 6.8.3 says when the timers may use it."""
        tx, rx = self._wanted_tx(), self.config.receive_interval * 1000
        if (tx, rx) == (self.desired_tx, self.required_rx):
            return
        if self.state is BfdState.UP and self.polling:
            # 6.5: one Poll Sequence at a time, so a Final always acknowledges the values it was polled for.
            self._poll_again = True
            return
        self.desired_tx, self.required_rx = tx, rx
        if self.state is not BfdState.UP:
            self._tx_in_use, self._rx_in_use = tx, rx
            self._reschedule_tx(now)
            return
        # Up: a faster transmit or a slower receive is safe at once; the rest waits for the Final.
        self._tx_in_use = min(self._tx_in_use, tx)
        self._rx_in_use = max(self._rx_in_use, rx)
        self._reschedule_tx(now)
        self.polling = True

    def _poll_done(self, now: float) -> None:
        self.polling = False
        self._tx_in_use, self._rx_in_use = self.desired_tx, self.required_rx
        if self._poll_again:
            self._poll_again = False
            self._set_intervals(now)

    def _move(self, new: BfdState, diag: Diagnostic | None, now: float) -> list[Event]:
        old = self.state
        self.state = new
        if new is BfdState.UP:
            self.diag = Diagnostic.NONE
        elif diag is not None:
            self.diag = self.down_reason = diag
        self.counters.transitions += 1
        if old is BfdState.UP:
            self.counters.downs += 1
        if new is not BfdState.UP:
            # A Poll Sequence is about the Up intervals; the slow rate applies at once outside Up.
            self.polling = self._poll_again = False
        self._set_intervals(now)
        return [StateChanged(old, new, self.diag)]

    def _may_send(self, admin: bool = False) -> bool:
        """6.8.7: nothing while the peer asks for no packets (Required Min RX 0); a passive session waits
        until it knows the peer's discriminator."""
        if self.remote_min_rx == 0 and not admin:
            return False
        if self.config.passive and self.remote_discriminator == 0:
            return False
        return True

    def _queue(self, now: float, final: bool = False) -> None:
        self._out.append(ControlPacket(
            state=self.state, my_discriminator=self.local_discriminator,
            your_discriminator=self.remote_discriminator, desired_min_tx=self.desired_tx,
            required_min_rx=self.required_rx, detect_mult=self.config.multiplier, diag=self.diag,
            poll=self.polling and not final, final=final))
        self.counters.packets_out += 1

    def _schedule_tx(self, now: float) -> None:
        self._next_tx = now + jittered(self.transmit_interval * US, self.config.multiplier, self._random())

    def _reschedule_tx(self, now: float) -> None:
        """A new interval: a shorter one is used from now on; a longer one from the packet after next
        (the one already scheduled goes as planned)."""
        candidate = now + jittered(self.transmit_interval * US, self.config.multiplier, self._random())
        if self._next_tx is None or candidate < self._next_tx:
            self._next_tx = candidate

    def _authentic(self, packet: ControlPacket, now: float) -> bool:
        """6.8.6 / 6.7: the A bit must match our configuration, and the section must verify."""
        auth = self.config.auth
        if auth is None:
            return packet.auth is None
        if packet.auth is None or not pkt.verify(packet, auth):
            return False
        if packet.auth.type is pkt.AuthType.SIMPLE_PASSWORD:
            return True
        # 6.8.1: the receive sequence is forgotten after two detection times of silence.
        if self._last_rx is not None and now - self._last_rx > 2 * max(self.detect_time * US, 1.0):
            self._seq_known = False
        sequence = packet.auth.sequence
        if self._seq_known and not pkt.sequence_acceptable(sequence, self._rcv_seq, packet.detect_mult,
                                                           packet.auth.type.meticulous):
            return False
        self._rcv_seq, self._seq_known = sequence, True
        return True


def _check_config(config: BfdConfig) -> None:
    if config.transmit_interval < 1:
        raise ValueError("bfd.transmit_interval: must be at least 1 ms")
    if config.receive_interval < 0:
        raise ValueError("bfd.receive_interval: must not be negative")
    if not 1 <= config.multiplier <= 255:
        raise ValueError("bfd.multiplier: must be 1..255")
    if config.auth is not None:
        pkt.check_auth_config(config.auth)
