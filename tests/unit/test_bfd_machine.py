"""The sans-IO BFD session: two machines wired in memory under a simulated clock."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import pytest

from nvfabric.bgp.bfd import BfdAuth, BfdConfig, BfdState, Diagnostic
from nvfabric.bgp.bfd import machine
from nvfabric.bgp.bfd import packet as pkt
from nvfabric.bgp.bfd.machine import Session, StateChanged

DOWN, INIT, UP, ADMIN = BfdState.DOWN, BfdState.INIT, BfdState.UP, BfdState.ADMIN_DOWN


@dataclass
class Wire:
    """Two sessions joined by a lossless, zero-delay link that can be cut per direction; every datagram is
    encoded and decoded, as on a socket."""

    a: Session
    b: Session
    now: float = 0.0
    cut: set[str] = field(default_factory=set)  # "ab": a's packets lost; "ba": b's
    events: dict[str, list[StateChanged]] = field(default_factory=lambda: {"a": [], "b": []})
    sent: dict[str, list[tuple[float, pkt.ControlPacket]]] = field(default_factory=lambda: {"a": [], "b": []})
    changed_at: dict[str, float] = field(default_factory=dict)  # when each side last changed state

    def _flush(self) -> None:
        moved = True
        while moved:
            moved = False
            for name, src, dst, direction in (("a", self.a, self.b, "ab"), ("b", self.b, self.a, "ba")):
                for datagram in src.datagrams_to_send():
                    moved = True
                    decoded = pkt.decode(datagram)
                    self.sent[name].append((self.now, decoded))
                    if direction not in self.cut:
                        self._record("b" if name == "a" else "a", dst.receive(decoded, self.now))

    def _record(self, name: str, events: list[StateChanged]) -> None:
        if events:
            self.events[name].extend(events)
            self.changed_at[name] = self.now

    def run(self, until: float) -> None:
        self._flush()
        while True:
            due = [t for t in (self.a.next_timer(), self.b.next_timer()) if t is not None]
            if not due or min(due) > until:
                self.now = until
                return
            self.now = min(due)
            for name, s in (("a", self.a), ("b", self.b)):
                when = s.next_timer()
                if when is not None and when <= self.now:
                    self._record(name, s.handle_timer(self.now))
            self._flush()

    def run_until(self, condition, limit: float = 60.0) -> None:  # type: ignore[no-untyped-def]
        while not condition():
            assert self.now < limit, "condition never met"
            self.run(self.now + 0.01)


DEFAULT = BfdConfig()


def pair(config_a: BfdConfig = DEFAULT, config_b: BfdConfig = DEFAULT, seed: int = 7) -> Wire:
    rng = random.Random(seed)
    return Wire(Session(config_a, 0xA, 0.0, rng.random), Session(config_b, 0xB, 0.0, rng.random))


def up_pair(**kw) -> Wire:  # type: ignore[no-untyped-def]
    w = pair(**kw)
    w.run_until(lambda: w.a.state is UP and w.b.state is UP and not w.a.polling and not w.b.polling)
    return w


# -- pure rules ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("local, remote, new, diag", [
    (DOWN, DOWN, INIT, None), (DOWN, INIT, UP, None), (DOWN, UP, DOWN, None), (DOWN, ADMIN, DOWN, None),
    (INIT, DOWN, INIT, None), (INIT, INIT, UP, None), (INIT, UP, UP, None),
    (INIT, ADMIN, DOWN, Diagnostic.NEIGHBOR_SIGNALED_SESSION_DOWN),
    (UP, DOWN, DOWN, Diagnostic.NEIGHBOR_SIGNALED_SESSION_DOWN), (UP, INIT, UP, None), (UP, UP, UP, None),
    (UP, ADMIN, DOWN, Diagnostic.NEIGHBOR_SIGNALED_SESSION_DOWN),
])
def test_state_table(local: BfdState, remote: BfdState, new: BfdState, diag: Diagnostic | None) -> None:
    assert machine.next_state(local, remote) == (new, diag)


def test_interval_rules() -> None:
    assert machine.transmit_interval(300_000, 1_000_000) == 1_000_000
    assert machine.detection_time(3, 300_000, 100_000) == 900_000
    assert machine.detection_time(5, 300_000, 1_000_000) == 5_000_000
    assert machine.jittered(1.0, 3, 0.0) == 0.75 and machine.jittered(1.0, 3, 0.999999) == pytest.approx(1.0)
    assert machine.jittered(1.0, 1, 0.999999) == pytest.approx(0.9)


@pytest.mark.parametrize("config, field", [
    (BfdConfig(transmit_interval=0), "bfd.transmit_interval"),
    (BfdConfig(receive_interval=-1), "bfd.receive_interval"),
    (BfdConfig(multiplier=0), "bfd.multiplier"),
    (BfdConfig(multiplier=256), "bfd.multiplier"),
    (BfdConfig(auth=BfdAuth("keyed-md5", 1, "x")), "bfd.auth.type"),
])
def test_bad_config_names_the_field(config: BfdConfig, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        Session(config, 1, 0.0)


# -- coming up -------------------------------------------------------------------------------------------

def test_two_sessions_come_up_and_settle_on_the_configured_rate() -> None:
    w = up_pair()
    # Either one side goes Down -> Init -> Up and the other Down -> Up, or (packets crossing) both via Init.
    for side, other in (("a", "b"), ("b", "a")):
        path = [(e.old, e.new) for e in w.events[side]]
        assert path in ([(DOWN, INIT), (INIT, UP)], [(DOWN, UP)])
        assert path == [(DOWN, INIT), (INIT, UP)] or len(w.events[other]) == 2
    count = len(w.events["a"]) + len(w.events["b"])
    # Slow (1 s) until Up, then a Poll Sequence takes both to 300 ms; detection 3 x 300 ms.
    for s in (w.a, w.b):
        assert (s.desired_tx, s.required_rx, s.transmit_interval, s.detect_time) == (
            300_000, 300_000, 300_000, 900_000)
    start = w.now
    w.run(start + 30)
    times = [t for t, _ in w.sent["a"] if t > start]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.225 - 1e-9 and max(gaps) <= 0.3 + 1e-9
    assert w.a.state is UP and w.b.state is UP and len(w.events["a"]) + len(w.events["b"]) == count


def test_not_up_advertises_and_uses_one_second() -> None:
    lonely = pair()
    lonely.cut = {"ab", "ba"}
    lonely.run(20)
    sent = lonely.sent["a"]
    assert all(p.desired_min_tx == 1_000_000 and p.state is DOWN and p.your_discriminator == 0 for _, p in sent)
    gaps = [b[0] - a[0] for a, b in zip(sent, sent[1:], strict=False)]
    assert gaps and min(gaps) >= 0.75 - 1e-9 and max(gaps) <= 1.0 + 1e-9


def test_detect_mult_one_jitters_at_most_ninety_percent() -> None:
    w = pair(BfdConfig(multiplier=1), BfdConfig(multiplier=1))
    w.cut = {"ab", "ba"}
    w.run(30)
    gaps = [b[0] - a[0] for a, b in zip(w.sent["a"], w.sent["a"][1:], strict=False)]
    assert max(gaps) <= 0.9 + 1e-9 and min(gaps) >= 0.75 - 1e-9


def test_discriminators_are_learned_and_echoed() -> None:
    w = up_pair()
    assert (w.a.remote_discriminator, w.b.remote_discriminator) == (0xB, 0xA)
    assert w.sent["a"][0][1].your_discriminator == 0  # before hearing from b
    assert w.sent["a"][-1][1].your_discriminator == 0xB


def test_packet_for_another_discriminator_is_dropped() -> None:
    w = up_pair()
    stray = replace(w.sent["b"][-1][1], your_discriminator=0xC, state=DOWN)
    assert w.a.receive(stray, w.now) == [] and w.a.state is UP
    assert w.a.counters.dropped == 1


# -- going down ------------------------------------------------------------------------------------------

def test_silence_brings_the_session_down_after_the_detection_time() -> None:
    w = up_pair()
    w.run(w.now + 5)
    w.cut = {"ba"}
    last_heard = max(t for t, _ in w.sent["b"])
    w.run_until(lambda: w.a.state is DOWN)
    assert w.events["a"][-1] == StateChanged(UP, DOWN, Diagnostic.CONTROL_DETECTION_TIME_EXPIRED)
    assert w.changed_at["a"] - last_heard == pytest.approx(0.9)
    assert w.a.remote_discriminator == 0 and w.a.counters.downs == 1
    # a now tells b it is down (diag 1), so b goes down too, with diag 3.
    w.run_until(lambda: w.b.state is not UP)
    assert w.events["b"][-1] == StateChanged(UP, DOWN, Diagnostic.NEIGHBOR_SIGNALED_SESSION_DOWN)
    assert w.sent["a"][-1][1].diag is Diagnostic.CONTROL_DETECTION_TIME_EXPIRED
    assert w.sent["a"][-1][1].desired_min_tx == 1_000_000  # back to the slow rate
    w.cut = set()
    w.run_until(lambda: w.a.state is UP and w.b.state is UP)
    # Up again: the packets say nothing is wrong; the status still says why it last went down.
    assert (w.events["a"][-1].new, w.events["a"][-1].diag) == (UP, Diagnostic.NONE)
    w.run(w.now + 1)
    assert w.sent["a"][-1][1].diag is Diagnostic.NONE
    assert w.a.down_reason is Diagnostic.CONTROL_DETECTION_TIME_EXPIRED


def test_admin_down_tells_the_peer_at_once_and_ignores_it_after() -> None:
    w = up_pair()
    before = len(w.sent["a"])
    events = w.a.admin_down(w.now)
    assert events == [StateChanged(UP, ADMIN, Diagnostic.ADMINISTRATIVELY_DOWN)]
    w.run(w.now)  # zero time: the AdminDown packet goes immediately, not at the next interval
    assert w.sent["a"][before][1].state is ADMIN and w.sent["a"][before][0] == w.now
    assert w.events["b"][-1] == StateChanged(UP, DOWN, Diagnostic.NEIGHBOR_SIGNALED_SESSION_DOWN)
    assert w.b.remote_state is ADMIN
    w.run(w.now + 10)
    assert w.a.state is ADMIN and w.b.state is DOWN  # b's Down packets do not move a
    assert all(p.state is ADMIN for _, p in w.sent["a"][before:])
    w.a.enable(w.now)
    w.run_until(lambda: w.a.state is UP and w.b.state is UP)


# -- Poll Sequence ---------------------------------------------------------------------------------------

def test_faster_transmit_is_polled_and_used_at_once() -> None:
    w = up_pair()
    start = len(w.sent["a"])
    w.a.set_config(BfdConfig(transmit_interval=100), w.now)
    assert w.a.polling
    w.b.set_config(BfdConfig(receive_interval=100), w.now)
    w.run_until(lambda: not w.a.polling and not w.b.polling)
    polls = [p for _, p in w.sent["a"][start:] if p.poll]
    assert polls and all(p.desired_min_tx == 100_000 for p in polls)
    assert any(p.final for _, p in w.sent["b"])
    assert w.a.transmit_interval == 100_000
    assert w.b.detect_time == 300_000  # 3 x max(100 ms, 100 ms)


def test_slower_transmit_waits_for_the_final() -> None:
    w = up_pair()
    w.cut = {"ba"}  # no Final can arrive
    w.a.set_config(BfdConfig(transmit_interval=1000), w.now)
    assert w.a.desired_tx == 1_000_000 and w.a.transmit_interval == 300_000
    w.run(w.now + 0.5)
    assert w.a.polling and w.a.transmit_interval == 300_000
    w.cut = set()
    w.run_until(lambda: not w.a.polling)
    assert w.a.transmit_interval == 1_000_000
    assert w.b.detect_time == 3_000_000 and w.b.state is UP


def test_change_during_a_poll_waits_for_its_final_then_polls_again() -> None:
    w = up_pair()
    w.cut = {"ba"}
    w.a.set_config(BfdConfig(transmit_interval=100), w.now)
    w.run(w.now + 0.3)
    w.a.set_config(BfdConfig(transmit_interval=50), w.now)
    start = len(w.sent["a"])
    w.run(w.now + 0.3)  # within the 900 ms detection time: only the Final is missing
    assert {p.desired_min_tx for _, p in w.sent["a"][start:]} == {100_000}  # still the first poll's values
    w.cut = set()
    w.run_until(lambda: not w.a.polling)
    assert w.a.desired_tx == 50_000 and w.a._tx_in_use == 50_000
    assert [p.desired_min_tx for _, p in w.sent["a"][start:] if p.poll][-1] == 50_000
    assert w.a.state is UP and w.b.state is UP


def test_poll_is_answered_with_final_immediately() -> None:
    w = up_pair()
    poll = replace(w.sent["b"][-1][1], poll=True)
    w.a.receive(poll, w.now)
    [answer] = w.a.packets_to_send()
    assert answer.final and not answer.poll and answer.state is UP


def test_peer_asking_for_no_packets_gets_none() -> None:
    w = up_pair()
    w.b.set_config(BfdConfig(receive_interval=0), w.now)
    w.run_until(lambda: w.a.remote_min_rx == 0)
    count = len(w.sent["a"])
    w.run(w.now + 3)
    assert len(w.sent["a"]) == count


# -- passive ---------------------------------------------------------------------------------------------

def test_passive_waits_for_the_peer() -> None:
    w = pair(BfdConfig(passive=True), BfdConfig(passive=True))
    w.run(10)
    assert w.sent == {"a": [], "b": []}
    w2 = pair(BfdConfig(passive=True), BfdConfig())
    w2.run_until(lambda: w2.a.state is UP and w2.b.state is UP)
    assert w2.sent["b"][0][0] < w2.sent["a"][0][0]


# -- authentication --------------------------------------------------------------------------------------

SHA1 = BfdAuth(type="keyed-sha1", key_id=3, password="s3cret")


@pytest.mark.parametrize("auth", [SHA1, BfdAuth("meticulous-keyed-sha1", 1, "k"), BfdAuth("simple", 2, "pw")])
def test_authenticated_sessions_come_up(auth: BfdAuth) -> None:
    w = up_pair(config_a=BfdConfig(auth=auth), config_b=BfdConfig(auth=auth))
    assert w.a.counters.dropped == 0 and w.b.counters.dropped == 0


@pytest.mark.parametrize("auth_a, auth_b", [
    (SHA1, replace(SHA1, password="other")), (SHA1, replace(SHA1, key_id=4)), (SHA1, None),
    (SHA1, replace(SHA1, type="meticulous-keyed-sha1")), (BfdAuth("simple", 1, "a"), BfdAuth("simple", 1, "b")),
])
def test_auth_mismatch_is_dropped_and_never_comes_up(auth_a: BfdAuth, auth_b: BfdAuth | None) -> None:
    w = pair(BfdConfig(auth=auth_a), BfdConfig(auth=auth_b))
    w.run(20)
    assert (w.a.state, w.b.state) == (DOWN, DOWN)
    assert w.a.counters.dropped > 0 and w.b.counters.dropped > 0
    assert w.a.counters.packets_in == 0 and w.b.counters.packets_in == 0


def test_meticulous_replay_is_dropped() -> None:
    auth = BfdAuth("meticulous-keyed-sha1", 1, "k")
    a = Session(BfdConfig(auth=auth), 0xA, 0.0, random.Random(1).random)
    b = Session(BfdConfig(auth=auth), 0xB, 0.0, random.Random(2).random)
    b.handle_timer(0.0)
    [datagram] = b.datagrams_to_send()
    a.receive(pkt.decode(datagram), 0.0)
    assert a.state is INIT
    a.receive(pkt.decode(datagram), 0.1)
    assert a.counters.dropped == 1 and a.counters.packets_in == 1


def test_keyed_sequence_far_behind_is_dropped() -> None:
    a = Session(BfdConfig(auth=SHA1), 0xA, 0.0, random.Random(1).random)
    template = pkt.ControlPacket(state=DOWN, my_discriminator=0xB, your_discriminator=0,
                                 desired_min_tx=1_000_000, required_min_rx=300_000, detect_mult=3)
    assert a.receive(pkt.decode(pkt.sign(template, SHA1, 100)), 0.0)
    a.receive(pkt.decode(pkt.sign(template, SHA1, 90)), 0.1)
    assert a.counters.dropped == 1
    a.receive(pkt.decode(pkt.sign(template, SHA1, 100)), 0.2)  # keyed: the same number again is fine
    assert a.counters.dropped == 1
    # After two detection times of silence the sequence is learned again.
    a.receive(pkt.decode(pkt.sign(template, SHA1, 5)), 10.0)
    assert a.counters.dropped == 1
