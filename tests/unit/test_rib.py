"""Adj-RIB-In, graceful-restart stale handling and best-path selection."""

from __future__ import annotations

import itertools
from ipaddress import IPv4Address, ip_address

from nvfabric.bgp.rib import AdjRibIn, BestPathReason, LocRib, Rib, RibChange, select_best
from nvfabric.bgp.routes import AsSegment, Family, Origin, Path, PathAttributes, PeerRef, UnicastRoute
from tests.fixtures.bgp_samples import mac_route, prefix_route

LOCAL_AS = 65000


def peer(n: int, asn: int = LOCAL_AS, router_id: str | None = None) -> PeerRef:
    return PeerRef(ip_address(f"192.0.2.{n}"), IPv4Address(router_id or f"10.0.0.{n}"), asn)


def path(source=None, route=None, **attrs) -> Path:
    return Path(route or mac_route(), PathAttributes(**attrs), source)


def best(*paths: Path):
    return select_best(list(paths), LOCAL_AS)


def test_only_path():
    p = path(peer(1))
    assert best(p) == (p, BestPathReason.ONLY_PATH)
    assert best() == (None, None)


def test_higher_mac_mobility_sequence_wins_before_local_pref():
    # RFC 7432 section 15.1.
    moved = path(peer(2), mac_route(mobility_seq=2))
    old = path(peer(1), mac_route(mobility_seq=1), local_pref=500)
    assert best(old, moved) == (moved, BestPathReason.MAC_MOBILITY_SEQUENCE)


def test_no_mobility_community_counts_as_zero():
    moved = path(peer(2), mac_route(mobility_seq=1))
    assert best(path(peer(1)), moved)[0] is moved


def test_sticky_wins_over_a_higher_sequence():
    # RFC 7432 section 15.2: a static MAC is not displaced.
    sticky = path(peer(1), mac_route(sticky=True))
    assert best(sticky, path(peer(2), mac_route(mobility_seq=9))) == (sticky, BestPathReason.STICKY_MAC)


def test_equal_sequence_falls_through_to_the_normal_rules():
    a = path(peer(1), mac_route(mobility_seq=3), local_pref=200)
    b = path(peer(2), mac_route(mobility_seq=3))
    assert best(a, b) == (a, BestPathReason.LOCAL_PREF)


def test_mobility_does_not_apply_to_type5():
    a = path(peer(1), prefix_route(), local_pref=50)
    b = path(peer(2), prefix_route())
    assert best(a, b) == (b, BestPathReason.LOCAL_PREF)


def test_missing_local_pref_is_100():
    assert best(path(peer(1), local_pref=99), path(peer(2)))[0].source == peer(2)


def test_locally_originated_wins_at_equal_preference():
    local = path(None)
    assert best(path(peer(1)), local) == (local, BestPathReason.LOCALLY_ORIGINATED)


def test_as_path_length_then_origin():
    short = path(peer(2), as_path=(AsSegment(2, (1,)),))
    long = path(peer(1), as_path=(AsSegment(2, (1, 2)),))
    assert best(long, short) == (short, BestPathReason.AS_PATH_LENGTH)
    igp = path(peer(2), origin=Origin.IGP)
    assert best(path(peer(1), origin=Origin.INCOMPLETE), igp) == (igp, BestPathReason.ORIGIN)


def test_med_only_between_routes_from_the_same_neighbor_as():
    a = path(peer(1), as_path=(AsSegment(2, (65010,)),), med=10)
    b = path(peer(2), as_path=(AsSegment(2, (65010,)),), med=5)
    assert best(a, b) == (b, BestPathReason.MED)
    # Different neighbor AS: MED is not compared, the next steps decide (router id: peer 1).
    c = path(peer(2), as_path=(AsSegment(2, (65020,)),), med=5)
    assert best(a, c) == (a, BestPathReason.ROUTER_ID)


def test_ebgp_over_ibgp():
    external = path(peer(9, asn=65001))
    assert best(path(peer(1)), external) == (external, BestPathReason.EBGP_OVER_IBGP)


def test_originator_id_stands_for_the_router_id():
    # RFC 4456 section 9: peer 1 has the lower router id but reflects a route from 10.9.9.9.
    reflected = path(peer(1), originator_id=IPv4Address("10.9.9.9"))
    direct = path(peer(2))
    assert best(reflected, direct) == (direct, BestPathReason.ROUTER_ID)


def test_shorter_cluster_list_then_lower_peer_address():
    a = path(peer(1, router_id="10.0.0.5"), originator_id=IPv4Address("10.0.0.5"),
             cluster_list=(IPv4Address("1.1.1.1"), IPv4Address("2.2.2.2")))
    b = path(peer(2, router_id="10.0.0.5"), originator_id=IPv4Address("10.0.0.5"),
             cluster_list=(IPv4Address("3.3.3.3"),))
    assert best(a, b) == (b, BestPathReason.CLUSTER_LIST_LENGTH)
    c = path(peer(3, router_id="10.0.0.5"), originator_id=IPv4Address("10.0.0.5"),
             cluster_list=(IPv4Address("4.4.4.4"),))
    assert best(c, b) == (b, BestPathReason.PEER_ADDRESS)


def test_selection_does_not_depend_on_input_order():
    paths = [path(peer(n, router_id="10.0.0.1")) for n in (5, 3, 4)] + [path(peer(6), med=1)]
    results = {best(*order) for order in itertools.permutations(paths)}
    assert len(results) == 1 and results.pop()[0].source == peer(3, router_id="10.0.0.1")


# ---------------------------------------------------------------- LocRib changes


def test_locrib_reports_changes_only_when_the_best_changes():
    loc = LocRib(LOCAL_AS)
    a, b = path(peer(1)), path(peer(2))
    first = loc.add(a)
    assert first == RibChange(a.key, None, a, BestPathReason.ONLY_PATH)
    assert loc.add(b) is None  # b loses on router id: nothing to tell
    better_b = path(peer(2), local_pref=300)
    assert loc.add(better_b) == RibChange(a.key, a, better_b, BestPathReason.LOCAL_PREF)
    assert loc.remove(a.key, peer(1)) is None
    assert loc.remove(a.key, peer(2)) == RibChange(a.key, better_b, None, None)
    assert len(loc) == 0 and loc.candidates(a.key) == []


def test_replacing_with_an_equal_path_is_silent():
    loc = LocRib(LOCAL_AS)
    loc.add(path(peer(1)))
    assert loc.add(path(peer(1))) is None


# ---------------------------------------------------------------- Adj-RIB-In and graceful restart


def test_adj_rib_in_add_withdraw():
    adj = AdjRibIn(peer(1))
    p = path(peer(1))
    assert adj.add(p) is None and adj.get(p.key) == p
    newer = path(peer(1), mac_route(vsid=9))
    assert adj.add(newer) == p and len(adj) == 1
    assert adj.withdraw(p.key) == newer and adj.withdraw(p.key) is None


def test_stale_marking_and_sweep_per_family():
    adj = AdjRibIn(peer(1))
    evpn_a, evpn_b = path(peer(1)), path(peer(1), mac_route(mac="02:00:00:00:00:02"))
    v4 = path(peer(1), UnicastRoute("203.0.113.0/24", "198.51.100.1"))
    for p in (evpn_a, evpn_b, v4):
        adj.add(p)
    assert adj.mark_stale() == 3
    adj.add(evpn_a)  # re-announced after the restart: no longer stale (RFC 4724 section 4.2)
    assert adj.sweep_stale(Family.L2VPN_EVPN) == [evpn_b]
    assert adj.stale_keys() == [v4.key]
    assert adj.sweep_stale() == [v4] and len(adj) == 1


def test_rib_receive_peer_down_and_sweep():
    rib = Rib(LOCAL_AS)
    one, two = peer(1), peer(2)
    a1, a2 = path(one), path(two, local_pref=200)
    assert rib.receive(one, [a1], []) == [RibChange(a1.key, None, a1, BestPathReason.ONLY_PATH)]
    assert rib.receive(two, [a2], []) == [RibChange(a1.key, a1, a2, BestPathReason.LOCAL_PREF)]
    rib.mark_stale(two)
    assert rib.loc.best(a1.key) == a2  # stale routes keep forwarding
    assert rib.sweep_stale(two, Family.L2VPN_EVPN) == [RibChange(a1.key, a2, a1, BestPathReason.ONLY_PATH)]
    assert rib.peer_down(one) == [RibChange(a1.key, a1, None, None)]
    assert rib.receive(one, [], [a1.key]) == []  # unknown withdrawal is silent


def test_rib_withdraw_is_applied_before_announce_and_source_is_checked():
    rib = Rib(LOCAL_AS)
    p = path(peer(1))
    changes = rib.receive(peer(1), [p], [p.key])
    assert [c.new_best for c in changes] == [p]
    try:
        rib.receive(peer(1), [path(peer(2))], [])
    except ValueError as error:
        assert "source" in str(error)
    else:
        raise AssertionError("a path from another peer was accepted")


def test_originate_and_withdraw_local():
    rib = Rib(LOCAL_AS)
    mine = path(None)
    assert rib.originate([mine])[0].new_best == mine
    learned = path(peer(1), local_pref=100)
    assert rib.receive(peer(1), [learned], []) == []
    assert rib.withdraw_local([mine.key]) == [RibChange(mine.key, mine, learned, BestPathReason.ONLY_PATH)]


# ---------------------------------------------------------------- MAC ownership across hosts


def host_route(host: int, **changes):
    return mac_route(rd=f"198.51.100.{host}:5001", next_hop=f"198.51.100.{host}", **changes)


def test_moved_mac_is_owned_by_the_higher_sequence():
    # RFC 7432 15.1: the VM moved from host 11 to host 12, whose route carries sequence 1; host 11's
    # route lingers until withdrawn.
    loc = LocRib(LOCAL_AS)
    old = path(peer(1), host_route(11))
    new = path(peer(1), host_route(12, mobility_seq=1))
    loc.add(old)
    assert loc.mac_owner(5001, "02:00:00:00:00:01") == (old, BestPathReason.ONLY_PATH)
    loc.add(new)
    assert loc.mac_owner(5001, "02:00:00:00:00:01") == (new, BestPathReason.MAC_MOBILITY_SEQUENCE)
    loc.remove(new.key, peer(1))
    assert loc.mac_owner(5001, "02:00:00:00:00:01") == (old, BestPathReason.ONLY_PATH)
    loc.remove(old.key, peer(1))
    assert loc.mac_owner(5001, "02:00:00:00:00:01") is None


def test_mac_owner_equal_sequence_lowest_pe_and_sticky():
    loc = LocRib(LOCAL_AS)
    high, low = path(peer(1), host_route(20, mobility_seq=2)), path(peer(1), host_route(13, mobility_seq=2))
    loc.add(high)
    loc.add(low)
    assert loc.mac_owner(5001, "02:00:00:00:00:01") == (low, BestPathReason.LOWEST_NEXT_HOP)
    pinned = path(peer(1), host_route(30, sticky=True))
    loc.add(pinned)
    assert loc.mac_owner(5001, "02:00:00:00:00:01") == (pinned, BestPathReason.STICKY_MAC)
    assert loc.mac_owner(5002, "02:00:00:00:00:01") is None  # another virtual subnet


def test_the_two_candidate_fast_path_agrees_with_the_general_elimination():
    import random

    from nvfabric.bgp.rib import _eliminate, _select_pair, _source_order

    rng = random.Random(5)

    def random_path():
        source = rng.choice([None, peer(rng.randint(1, 4), asn=rng.choice([LOCAL_AS, 65010]),
                                         router_id=f"10.0.0.{rng.randint(1, 3)}")])
        attrs = dict(local_pref=rng.choice([None, 100, 200]), med=rng.choice([None, 0, 5]),
                     origin=rng.choice(list(Origin)),
                     as_path=rng.choice([(), (AsSegment(2, (65010,)),), (AsSegment(2, (65020, 1)),)]),
                     originator_id=rng.choice([None, IPv4Address("10.0.0.2")]),
                     cluster_list=rng.choice([(), (IPv4Address("1.1.1.1"),)]))
        route = mac_route(mobility_seq=rng.choice([0, 0, 1]), sticky=rng.random() < 0.1)
        return path(source, route, **attrs)

    for _ in range(3000):
        a, b = sorted([random_path(), random_path()], key=_source_order)
        assert _select_pair(a, b, LOCAL_AS) == _eliminate([a, b], LOCAL_AS)
