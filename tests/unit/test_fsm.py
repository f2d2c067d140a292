"""The sans-IO FSM: two machines wired together in memory, time passed in by the test."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, ip_address

from nvfabric.bgp import fsm, wire
from nvfabric.bgp.routes import Family, MacIpRoute, PeerRef

FAMILIES = frozenset({Family.L2VPN_EVPN, Family.IPV4_UNICAST})


def caps(router_id: str, asn: int = 65000, hold: int = 9, families=FAMILIES) -> wire.Capabilities:
    return wire.Capabilities(asn=asn, router_id=IPv4Address(router_id), hold_time=hold, families=families)


def pair(a_caps=None, b_caps=None, now: float = 0.0) -> tuple[fsm.Fsm, fsm.Fsm]:
    a = fsm.Fsm(fsm.FsmConfig(a_caps or caps("198.51.100.1"), 65000, ip_address("198.51.100.2")), now)
    b = fsm.Fsm(fsm.FsmConfig(b_caps or caps("198.51.100.2"), 65000, ip_address("198.51.100.1")), now)
    return a, b


def shuttle(a: fsm.Fsm, b: fsm.Fsm, now: float) -> tuple[list[fsm.Event], list[fsm.Event]]:
    """Move bytes both ways until both are quiet; return the events each side produced."""
    ea: list[fsm.Event] = []
    eb: list[fsm.Event] = []
    while True:
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_a and not to_b:
            return ea, eb
        if to_b:
            eb += b.receive(to_b, now)
        if to_a:
            ea += a.receive(to_a, now)


def established_pair(hold_a: int = 9, hold_b: int = 9) -> tuple[fsm.Fsm, fsm.Fsm]:
    a, b = pair(caps("198.51.100.1", hold=hold_a), caps("198.51.100.2", hold=hold_b))
    shuttle(a, b, 0.0)
    return a, b


def test_two_machines_reach_established_and_negotiate():
    a, b = pair(caps("198.51.100.1", hold=30), caps("198.51.100.2", hold=9, families=frozenset({Family.L2VPN_EVPN})))
    ea, eb = shuttle(a, b, 0.0)
    assert a.state is b.state is fsm.State.ESTABLISHED
    assert [type(e) for e in ea] == [fsm.OpenReceived, fsm.Established]
    est = ea[-1]
    assert isinstance(est, fsm.Established)
    assert est.negotiated.hold_time == 9  # RFC 4271 4.2: the smaller proposal
    assert est.negotiated.families == frozenset({Family.L2VPN_EVPN})
    assert a.next_timer() == 3.0  # keepalive at hold/3


def test_keepalives_keep_the_session_and_silence_expires_the_hold_timer():
    a, b = established_pair()
    now = 0.0
    for _ in range(10):  # 30 s of keepalives, well past the 9 s hold time
        now = min(a.next_timer(), b.next_timer())
        assert a.handle_timer(now) == [] and b.handle_timer(now) == []
        shuttle(a, b, now)
    assert a.state is b.state is fsm.State.ESTABLISHED
    # b goes silent: a's hold timer expires and a sends NOTIFICATION 4/0.
    events = []
    while a.state is fsm.State.ESTABLISHED:
        now = a.next_timer()
        events += a.handle_timer(now)
        a.data_to_send()  # keepalives to nowhere
    closed = events[-1]
    assert isinstance(closed, fsm.Closed) and closed.was_established
    assert (closed.reason.kind, closed.reason.code) == (fsm.CloseKind.NOTIFICATION_SENT, fsm.ERR_HOLD_TIMER)


def test_update_is_decoded_with_the_peer_as_source():
    a, b = established_pair()
    route = MacIpRoute(rd="198.51.100.2:1", mac="00:15:5d:01:02:03", ip="10.1.0.5", vsid=5001,
                       next_hop="198.51.100.2", route_targets=("65000:5001",))
    assert b.negotiated is not None
    events = a.receive(b"".join(wire.encode_update(b.negotiated, [route])), 1.0)
    assert len(events) == 1 and isinstance(events[0], fsm.UpdateReceived)
    (path,) = events[0].result.announced
    assert path.route == route
    assert path.source == PeerRef(ip_address("198.51.100.2"), IPv4Address("198.51.100.2"), 65000)


def test_bad_peer_as_gets_open_error_2_2():
    a = fsm.Fsm(fsm.FsmConfig(caps("198.51.100.1"), 65001), 0.0)
    b = fsm.Fsm(fsm.FsmConfig(caps("198.51.100.2"), 65000), 0.0)
    ea, eb = shuttle(a, b, 0.0)
    assert a.state is b.state is fsm.State.IDLE
    assert a.close_reason is not None and (a.close_reason.code, a.close_reason.subcode) == (2, 2)
    assert b.close_reason is not None and b.close_reason.kind is fsm.CloseKind.NOTIFICATION_RECEIVED
    assert (b.close_reason.code, b.close_reason.subcode) == (2, 2)


def test_same_router_id_in_ibgp_gets_bad_bgp_identifier():
    a, b = pair(caps("198.51.100.1"), caps("198.51.100.1"))
    shuttle(a, b, 0.0)
    assert a.close_reason is not None and (a.close_reason.code, a.close_reason.subcode) == (2, 3)


def test_update_before_established_is_an_fsm_error():
    a, _ = pair()
    a.data_to_send()
    events = a.receive(wire.encode_keepalive(), 0.0)
    assert a.state is fsm.State.IDLE
    (closed,) = events
    assert isinstance(closed, fsm.Closed) and not closed.was_established
    assert (closed.reason.code, closed.reason.subcode) == (fsm.ERR_FSM, fsm.FSM_UNEXPECTED_IN_OPENSENT)
    assert a.data_to_send()[18] == wire.MessageType.NOTIFICATION


def test_garbage_header_gets_notification_1_1():
    a, _ = established_pair()
    a.receive(b"\x00" * 19, 1.0)
    assert a.close_reason is not None and (a.close_reason.code, a.close_reason.subcode) == (1, 1)


def test_messages_split_across_reads_are_reassembled():
    a, b = pair()
    data = b.data_to_send()
    events = []
    for i in range(len(data)):
        events += a.receive(data[i : i + 1], 0.0)
    assert [type(e) for e in events] == [fsm.OpenReceived]


def test_collision_keeps_the_connection_from_the_higher_identifier():
    high, low = IPv4Address("198.51.100.9"), IPv4Address("198.51.100.1")
    assert fsm.collision_loser(local_router_id=low, remote_router_id=high) is fsm.Side.OUTGOING
    assert fsm.collision_loser(local_router_id=high, remote_router_id=low) is fsm.Side.INCOMING


def test_backoff_grows_exponentially_with_jitter_and_resets():
    backoff = fsm.Backoff(initial=1.0, maximum=8.0, jitter=0.5, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, base in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert base * 0.5 <= delay <= base
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_hold_time_zero_means_no_keepalives_and_no_hold_timer():
    a, b = established_pair(hold_a=0, hold_b=9)
    assert a.negotiated is not None and a.negotiated.hold_time == 0
    assert a.next_timer() is None and b.next_timer() is None
    assert a.handle_timer(10_000.0) == [] and a.state is fsm.State.ESTABLISHED


def test_route_refresh_and_administrative_stop():
    a, b = established_pair()
    (event,) = a.receive(wire.encode_route_refresh(Family.L2VPN_EVPN), 1.0)
    assert isinstance(event, fsm.RouteRefreshReceived)
    assert wire.decode_route_refresh(event.body) is Family.L2VPN_EVPN
    (closed,) = a.stop(fsm.ERR_CEASE, fsm.CEASE_ADMIN_SHUTDOWN)
    assert isinstance(closed, fsm.Closed) and closed.was_established
    (peer_closed,) = b.receive(a.data_to_send(), 1.0)
    assert isinstance(peer_closed, fsm.Closed)
    assert (peer_closed.reason.kind, peer_closed.reason.code, peer_closed.reason.subcode) == (
        fsm.CloseKind.NOTIFICATION_RECEIVED, 6, 2)


def test_connection_lost_is_not_a_notification():
    a, _ = established_pair()
    (closed,) = a.connection_lost("reset")
    assert closed.reason.kind is fsm.CloseKind.CONNECTION_LOST and a.data_to_send() == b""
