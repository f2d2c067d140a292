"""The raw table and the pure reflection rules: best path among copies, changes as ordered segments,
graceful-restart sweep, and the codec's per-family withdrawal runs the table relies on."""

from __future__ import annotations

from ipaddress import IPv4Address

from nvfabric.bgp import wire
from nvfabric.bgp.reflector import policy, rtc
from nvfabric.bgp.reflector.table import AttrSet, Changes, Kind, RawTable
from nvfabric.bgp.routes import Family, Path, PathAttributes, PeerRef, UnicastRoute
from tests.fixtures.bgp_samples import IBGP, body, mac_route

A = PeerRef(IPv4Address("192.0.2.11"), IPv4Address("192.0.2.11"), 65000)
B = PeerRef(IPv4Address("192.0.2.12"), IPv4Address("192.0.2.12"), 65000)


PLAIN = PathAttributes()


def attrset(ref: PeerRef, attrs: PathAttributes = PLAIN, ext: bytes = b"", generation: int = 0) -> AttrSet:
    raw_attrs = bytes([0xC0, 16, len(ext)]) + ext if ext else b""
    return AttrSet(object(), ref, True, Family.L2VPN_EVPN, b"\xc6\x33\x64\x0b", attrs,
                   raw_attrs, rtc.route_targets(raw_attrs), rtc.mobility(raw_attrs), generation)


def nlri(n: int) -> tuple[bytes, bytes]:
    return (b"key%d" % n, b"raw%d" % n)


def test_one_copy_is_announced_and_withdrawn_in_one_segment_each():
    table, changes = RawTable(65000), Changes()
    a = attrset(A)
    table.receive(a, [nlri(i) for i in range(3)], changes)
    table.withdraw(str(A.address), Family.L2VPN_EVPN, [nlri(0), nlri(9)], changes)
    assert [(s.kind, s.raws) for s in changes.segments] == [
        (Kind.ANNOUNCE, [b"raw0", b"raw1", b"raw2"]), (Kind.WITHDRAW, [b"raw0"])]
    assert table.counts[str(A.address)] == 2 and len(table) == 2


def test_two_copies_best_path_and_fallback():
    table = RawTable(65000)
    # Via A with a longer CLUSTER_LIST (as through another reflector): B's direct copy wins (RFC 4456 9).
    via_a = attrset(A, PathAttributes(originator_id=IPv4Address("192.0.2.50"),
                                      cluster_list=(IPv4Address("192.0.2.1"),)))
    direct = attrset(B, PathAttributes(originator_id=IPv4Address("192.0.2.50")))
    first = Changes()
    table.receive(via_a, [nlri(1)], first)
    table.receive(direct, [nlri(1)], first)
    assert table.best[Family.L2VPN_EVPN][b"key1"][0] is direct
    last = [s for s in first.segments if s.raws][-1]
    assert last.kind is Kind.REPLACE and last.old is via_a
    # The direct copy goes: the other takes over (announced, not withdrawn).
    after = Changes()
    table.withdraw(str(B.address), Family.L2VPN_EVPN, [nlri(1)], after)
    assert [(s.kind, s.attrs) for s in after.segments if s.raws] == [(Kind.REPLACE, via_a)]
    assert table.best[Family.L2VPN_EVPN][b"key1"][0] is via_a


def test_higher_mac_mobility_sequence_wins_before_everything_else():
    table, changes = RawTable(65000), Changes()
    moved = attrset(B, PathAttributes(local_pref=50), ext=bytes.fromhex("0600000000000005"))
    table.receive(attrset(A, PathAttributes(local_pref=200)), [nlri(1)], changes)
    table.receive(moved, [nlri(1)], changes)
    assert table.best[Family.L2VPN_EVPN][b"key1"][0] is moved  # RFC 7432 section 15.1


def test_identical_reannouncement_after_graceful_restart_sends_nothing_and_sweep_removes_the_rest():
    table = RawTable(65000)
    table.receive(attrset(A), [nlri(1), nlri(2)], Changes())
    table.mark_stale(A, [Family.L2VPN_EVPN])
    again = Changes()
    table.receive(attrset(A, generation=table.generation(str(A.address), Family.L2VPN_EVPN)), [nlri(1)], again)
    assert again.routes == 0
    [swept] = table.sweep_stale(A, Family.L2VPN_EVPN)
    assert [(s.kind, s.raws) for s in swept.segments] == [(Kind.WITHDRAW, [b"raw2"])]
    assert list(table.best[Family.L2VPN_EVPN]) == [b"key1"]


def test_peer_down_withdraws_only_that_peer():
    table = RawTable(65000)
    table.receive(attrset(A), [nlri(1)], Changes())
    table.receive(attrset(B), [nlri(2)], Changes())
    [gone] = table.peer_down(A)
    assert [s.raws for s in gone.segments] == [[b"raw1"]]
    assert list(table.best[Family.L2VPN_EVPN]) == [b"key2"]


def test_reflection_rules_and_loop_checks():
    assert policy.reflects_to(True, False) and policy.reflects_to(False, True) and not policy.reflects_to(False, False)
    rid, cid = IPv4Address("192.0.2.100"), IPv4Address("192.0.2.1")
    assert policy.loop_reason(PathAttributes(originator_id=rid), rid, cid)
    assert policy.loop_reason(PathAttributes(cluster_list=(IPv4Address("192.0.2.9"), cid)), rid, cid)
    assert policy.loop_reason(PathAttributes(cluster_list=(IPv4Address("192.0.2.9"),)), rid, cid) is None


def test_route_targets_read_from_raw_attributes():
    message = wire.encode_update(IBGP, [Path(mac_route(route_targets=("65000:5001", "198.51.100.1:7")))], [])[0]
    raw = wire.decode_raw_update(IBGP, body(message))
    want = {bytes.fromhex("0002fde800001389"), bytes.fromhex("0102c6336401" "0007")}
    assert rtc.route_targets(raw.attributes) == want
    assert rtc.admits(None, frozenset()) and not rtc.admits(frozenset({b"x" * 8}), frozenset())


def test_withdrawn_routes_carry_their_family():
    v4 = wire.encode_update(IBGP, [], [UnicastRoute(prefix="203.0.113.0/24", next_hop="198.51.100.1").key])[0]
    evpn = wire.encode_update(IBGP, [], [mac_route().key])[0]
    # One UPDATE with both: IPv4 in Withdrawn Routes, EVPN in MP_UNREACH_NLRI (RFC 4760 section 4).
    v4_body, evpn_body = body(v4), body(evpn)
    withdrawn_len = int.from_bytes(v4_body[:2], "big")
    combined = v4_body[: 2 + withdrawn_len] + evpn_body[2 + 0 :]
    raw = wire.decode_raw_update(IBGP, combined)
    runs = [(f, len(n)) for f, n in raw.withdrawn_by_family()]
    assert runs == [(Family.IPV4_UNICAST, 1), (Family.L2VPN_EVPN, 1)]


def test_changes_keep_each_keys_order_across_withdrawal_runs():
    """Withdrawals of several UPDATEs share one run, but never across an announcement: announce k,
    withdraw k, announce k again must reach the peers in that order (the last state wins)."""
    table, changes = RawTable(65000), Changes()
    a, b = attrset(A), attrset(A, ext=bytes.fromhex("0002fde800001389"))
    table.receive(a, [nlri(1)], changes)
    table.receive(b, [nlri(2)], changes)
    table.withdraw(str(A.address), Family.L2VPN_EVPN, [nlri(1)], changes)
    table.withdraw(str(A.address), Family.L2VPN_EVPN, [nlri(2)], changes)  # other route targets: own run
    table.receive(a, [nlri(1)], changes)
    table.withdraw(str(A.address), Family.L2VPN_EVPN, [nlri(1)], changes)
    assert [(s.kind, s.raws) for s in changes.segments if s.raws] == [
        (Kind.ANNOUNCE, [b"raw1"]), (Kind.ANNOUNCE, [b"raw2"]), (Kind.WITHDRAW, [b"raw1"]),
        (Kind.WITHDRAW, [b"raw2"]), (Kind.ANNOUNCE, [b"raw1"]), (Kind.WITHDRAW, [b"raw1"])]
    more = Changes()
    c = attrset(A)
    table.receive(c, [nlri(3), nlri(4)], more)
    table.withdraw(str(A.address), Family.L2VPN_EVPN, [nlri(3)], more)
    table.withdraw(str(A.address), Family.L2VPN_EVPN, [nlri(4)], more)  # same run: merged
    assert [(s.kind, s.raws) for s in more.segments if s.raws] == [
        (Kind.ANNOUNCE, [b"raw3", b"raw4"]), (Kind.WITHDRAW, [b"raw3", b"raw4"])]
