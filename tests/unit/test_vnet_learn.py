"""vnet.learn: learned routes -> lookup records and remote prefixes."""

from __future__ import annotations

from nvfabric.bgp.routes import MacIpRoute, PrefixRoute
from nvfabric.vnet.learn import lookup_records, remote_macs, remote_prefixes
from tests.unit.agent_fixtures import PA1, PA2, PA3, VM_B1, catalog, ip, net

MAC2 = "02:00:00:00:b2:01"


def t2(ip_text, vsid, pa, mac=MAC2, seq=0, rt="65001:1"):
    return MacIpRoute(rd=f"{pa}:{vsid}", mac=mac, ip=ip(ip_text), vsid=vsid, next_hop=pa, route_targets=(rt,),
                      router_mac="02:00:5e:10:00:01", mobility_seq=seq)


def test_remote_and_local_records_sorted():
    routes = [t2("10.0.0.20", 5001, PA2), t2("fd00:b::20", 5001, PA2),
              t2("10.0.1.30", 5002, PA3, mac="02:00:00:00:b3:01")]
    records = lookup_records(catalog(VM_B1), routes, [PA1])
    got = [(r.routing_domain, r.vsid, str(r.ca), str(r.pa) if r.pa else None, r.local) for r in records]
    assert got == [
        ("blue", 5001, "10.0.0.10", None, True),
        ("blue", 5001, "10.0.0.20", "198.51.100.12", False),
        ("blue", 5002, "10.0.1.30", "198.51.100.13", False),
        ("blue", 5001, "fd00:b::10", None, True),
        ("blue", 5001, "fd00:b::20", "198.51.100.12", False),
    ]


def test_same_ca_in_two_tenants_stays_apart_and_unknown_vsids_and_own_routes_are_ignored():
    routes = [t2("10.0.0.20", 5001, PA2), t2("10.0.0.20", 6001, PA3, mac="02:00:00:00:a3:01", rt="65001:2"),
              t2("10.0.0.99", 7777, PA2), t2("10.0.0.11", 5001, PA1), t2("10.9.0.1", 5001, PA2)]
    records = {(r.routing_domain, str(r.ca)): r for r in lookup_records(catalog(), routes, [PA1])}
    assert set(records) == {("blue", "10.0.0.20"), ("red", "10.0.0.20")}
    assert records[("red", "10.0.0.20")].pa == PA3 and records[("blue", "10.0.0.20")].pa == PA2


def test_highest_mobility_sequence_wins_then_lowest_pa():
    old, new = t2("10.0.0.20", 5001, PA2, seq=0), t2("10.0.0.20", 5001, PA3, seq=1)
    (rec,) = lookup_records(catalog(), [old, new], [PA1])
    assert rec.pa == PA3
    (rec,) = lookup_records(catalog(), [t2("10.0.0.20", 5001, PA3), t2("10.0.0.20", 5001, PA2)], [PA1])
    assert rec.pa == PA2
    assert remote_macs([old, new], [PA1])[(5001, MAC2)].next_hop == PA3


def test_a_local_active_port_wins_over_a_remote_claim_unless_inactive():
    claim = t2("10.0.0.10", 5001, PA2, mac=VM_B1.mac, seq=5)
    (rec, _v6) = lookup_records(catalog(VM_B1), [claim], [PA1])
    assert rec.local
    records = lookup_records(catalog(VM_B1), [claim], [PA1], inactive={(5001, VM_B1.mac)})
    assert [(str(r.ca), r.local, r.pa) for r in records] == [("10.0.0.10", False, PA2)]


def test_type5_routes_become_remote_prefixes_only_when_vsid_and_route_target_name_one_domain():
    gw = PrefixRoute(rd="198.51.100.21:1", prefix=net("0.0.0.0/0"), vsid=5001, next_hop=ip("198.51.100.21"),
                     route_targets=("65001:1",), router_mac="02:00:5e:10:00:01")
    # red's route target with a VSID nobody here serves, or with blue's VSID: neither is red's nor blue's
    unknown_vsid = PrefixRoute(rd="198.51.100.21:2", prefix=net("::/0"), vsid=9999, next_hop=ip("198.51.100.21"),
                               route_targets=("65001:2",))
    crossed = PrefixRoute(rd="198.51.100.21:4", prefix=net("10.7.0.0/16"), vsid=5001, next_hop=ip("198.51.100.21"),
                          route_targets=("65001:2",))
    other = PrefixRoute(rd="198.51.100.21:3", prefix=net("0.0.0.0/0"), vsid=8888, next_hop=ip("198.51.100.21"),
                        route_targets=("65009:9",))
    got = remote_prefixes(catalog(), [gw, unknown_vsid, crossed, other], [PA1])
    assert [(p.routing_domain, str(p.prefix), p.vsid, str(p.pa), p.gateway_ip) for p in got] == [
        ("blue", "0.0.0.0/0", 5001, "198.51.100.21", None)]


def test_type2_routes_need_the_route_target_of_their_vsids_domain():
    routes = [t2("10.0.0.20", 5001, PA2), t2("10.0.0.21", 5001, PA2, rt="65001:2"),
              t2("10.0.0.22", 5001, PA2, rt="65009:9"), t2("10.0.0.1", 5001, PA2)]
    assert [str(r.ca) for r in lookup_records(catalog(), routes, [PA1])] == ["10.0.0.20"]
