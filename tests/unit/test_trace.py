"""hostagent/trace.py: what the VRF table of a routing domain does with a packet from src to dst."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from nvfabric.hostagent.trace import Verdict, trace
from nvfabric.vnet.catalog import Catalog, NotFound
from nvfabric.vnet.desired import HostIdentity, desired_state
from nvfabric.vnet.kernel.objects import EncapRoute, LocalPortRoute
from nvfabric.vnet.model import LookupRecord, Port, RemotePrefix, RoutingDomain

BLUE = RoutingDomain.from_dict({
    "name": "blue", "route_targets": ["65000:1"],
    "subnets": [{"vsid": 5001, "prefixes": ["10.1.0.0/24", "fd00:b::/64"]},
                {"vsid": 5002, "prefixes": ["10.2.0.0/24"]}],
})
# red reuses blue's address space: the same CA in two routing domains must never meet
RED = RoutingDomain.from_dict({"name": "red", "route_targets": ["65000:2"],
                               "subnets": [{"vsid": 6001, "prefixes": ["10.1.0.0/24"]}]})
VM1 = Port.from_dict({"name": "vm1", "interface": "tap1", "mac": "02:00:00:00:01:01", "vsid": 5001,
                      "addresses": ["10.1.0.10", "fd00:b::10"]})
VM2 = Port.from_dict({"name": "vm2", "interface": "tap2", "mac": "02:00:00:00:01:02", "vsid": 5002,
                      "addresses": ["10.2.0.10"]})
VM3 = Port.from_dict({"name": "vm3", "interface": "tap3", "mac": "02:00:00:00:02:01", "vsid": 6001,
                      "addresses": ["10.1.0.10", "10.1.0.99"]})
CATALOG = Catalog.build({"blue": BLUE, "red": RED}, {"vm1": VM1, "vm2": VM2, "vm3": VM3})


def record(rd: str, vsid: int, ca: str, mac: str, pa: str) -> LookupRecord:
    return LookupRecord(rd, vsid, ip_address(ca), mac, ip_address(pa))


def local(rd: str, port: Port) -> list[LookupRecord]:
    return [LookupRecord(rd, port.vsid, a, port.mac, None, local=True, port=port.name) for a in port.addresses]


RECORDS = [
    record("blue", 5001, "10.1.0.20", "02:00:00:00:03:01", "198.51.100.12"),
    record("blue", 5001, "fd00:b::20", "02:00:00:00:03:01", "198.51.100.12"),
    record("blue", 5002, "10.2.0.30", "02:00:00:00:03:02", "2001:db8::13"),
    *local("blue", VM1), *local("blue", VM2), *local("red", VM3),
]


def prefix(rd: str, text: str, vsid: int, pa: str) -> RemotePrefix:
    return RemotePrefix(rd, ip_network(text), vsid, ip_address(pa))


def run(rd: str, src: str, dst: str, records=RECORDS, prefixes=(), pa_families=(4, 6)):
    return trace(CATALOG, records, prefixes, rd, ip_address(src), ip_address(dst), pa_families)


def test_remote_ca_in_the_same_subnet_is_encapsulated_to_its_pa():
    t = run("blue", "10.1.0.10", "10.1.0.20")
    assert t.verdict is Verdict.FORWARDED
    assert (t.vsid, str(t.pa), t.mac, t.device) == (5001, "198.51.100.12", "02:00:00:00:03:01", "nvf-gre4")
    assert t.route == ("10.1.0.20/32 encap ip id 1280256 dst 198.51.100.12 key via 169.254.0.1 dev nvf-gre4 "
                       "onlink vrf nvf-blue")
    assert (t.src_vsid, t.ingress) == (5001, "tap1")


def test_remote_ca_of_another_subnet_over_an_ipv6_pa():
    t = run("blue", "10.1.0.10", "10.2.0.30")
    assert t.verdict is Verdict.FORWARDED
    assert (t.vsid, str(t.pa), t.device) == (5002, "2001:db8::13", "nvf-gre6")  # the destination's VSID
    assert "encap ip6 id 1280512 dst 2001:db8::13" in t.route


def test_ipv6_ca_over_an_ipv4_pa():
    t = run("blue", "fd00:b::10", "fd00:b::20")
    assert (t.verdict, t.device) == (Verdict.FORWARDED, "nvf-gre4")
    assert t.route.startswith("fd00:b::20/128 encap ip id 1280256 dst 198.51.100.12 key via fe80::1 ")


def test_local_ca_is_delivered_to_its_port():
    t = run("blue", "10.1.0.10", "10.2.0.10")
    assert t.verdict is Verdict.DELIVERED_LOCALLY
    assert (t.vsid, t.pa, t.mac, t.device) == (5002, None, VM2.mac, "tap2")
    assert t.route == "10.2.0.10/32 dev tap2 vrf nvf-blue"


def test_unknown_destination_hits_the_unreachable_route():
    t = run("blue", "10.1.0.10", "10.1.0.77")
    assert t.verdict is Verdict.DROPPED
    assert t.reason == "unknown destination CA (no lookup record): the unreachable route of routing domain blue"
    assert t.route == "unreachable 0.0.0.0/0 vrf nvf-blue"
    assert (t.vsid, t.pa, t.device) == (None, None, None)


def test_source_that_is_no_ca_of_the_routing_domain_is_dropped():
    t = run("blue", "10.1.0.55", "10.1.0.20")
    assert t.verdict is Verdict.DROPPED
    assert t.reason.startswith("source not a CA of routing domain blue")


def test_routing_domains_are_isolated_even_with_the_same_addresses():
    # red's 10.1.0.10 sends to 10.1.0.20: blue knows that CA, red does not
    t = run("red", "10.1.0.10", "10.1.0.20")
    assert t.verdict is Verdict.DROPPED and "routing domain red" in t.reason
    assert t.ingress == "tap3"
    # the same source address in blue is a different VM
    assert run("blue", "10.1.0.10", "10.1.0.20").ingress == "tap1"


def test_destination_in_another_routing_domain_is_named():
    t = run("red", "10.1.0.10", "10.2.0.10")
    assert t.verdict is Verdict.DROPPED
    assert "10.2.0.10 is a CA of routing domain blue: crossing routing domains needs a gateway" in t.reason


def test_a_remote_ca_of_another_routing_domain_is_named_too():
    t = run("red", "10.1.0.10", "10.2.0.30")
    assert t.verdict is Verdict.DROPPED and "10.2.0.30 is a CA of routing domain blue" in t.reason


def test_families_must_match():
    t = run("blue", "10.1.0.10", "fd00:b::20")
    assert t.verdict is Verdict.DROPPED and t.reason == "source is IPv4 and destination IPv6"


def test_the_subnet_gateway_answers_arp_but_takes_no_packets():
    t = run("blue", "10.1.0.10", "10.1.0.1")
    assert t.verdict is Verdict.DROPPED and t.reason.startswith("10.1.0.1 is the gateway of VSID 5001")
    assert t.route == "10.1.0.1/32 dev nvf-gre4 vrf nvf-blue"  # vnet/desired.py's route for proxy ARP


def test_packet_from_a_remote_ca_enters_by_the_nvgre_device():
    t = run("blue", "10.2.0.30", "10.1.0.10")
    assert (t.verdict, t.device, t.ingress, t.src_vsid) == (Verdict.DELIVERED_LOCALLY, "tap1", "nvf-gre6", 5002)


def test_remote_to_remote_is_relayed_and_says_so():
    t = run("blue", "10.2.0.30", "10.1.0.20")
    assert t.verdict is Verdict.FORWARDED and t.reason.endswith("(relayed: 10.2.0.30 is not on this host)")


def test_a_port_without_an_active_local_record_is_not_routed_here():
    # vm2 moved to another host (MAC mobility): the catalog still has it, the records do not
    moved = [r for r in RECORDS if r.port != "vm2"]
    t = run("blue", "10.1.0.10", "10.2.0.10", moved)
    assert t.verdict is Verdict.DROPPED
    assert "port vm2 has it but is not active on this host" in t.reason
    t = run("blue", "10.2.0.10", "10.1.0.10", moved)
    assert t.verdict is Verdict.DROPPED and t.reason.startswith("source port vm2 is configured but not active")


def test_a_local_record_of_an_unknown_port_is_not_a_route():
    stale = [*RECORDS, LookupRecord("blue", 5001, ip_address("10.1.0.44"), "02:00:00:00:09:09", None,
                                    local=True, port="gone")]
    assert run("blue", "10.1.0.10", "10.1.0.44", stale).verdict is Verdict.DROPPED


def test_a_record_behind_a_pa_family_this_host_lacks_is_not_installed():
    t = run("blue", "10.1.0.10", "10.2.0.30", pa_families=(4,))
    assert t.verdict is Verdict.DROPPED and "no IPv6 provider address" in t.reason
    # the packet falls through to what the table does have, e.g. a default route
    t = run("blue", "10.1.0.10", "10.2.0.30", prefixes=[prefix("blue", "0.0.0.0/0", 5001, "198.51.100.21")],
            pa_families=(4,))
    assert t.verdict is Verdict.FORWARDED and str(t.pa) == "198.51.100.21" and "not installed" in t.reason


def test_an_ipv6_gateway_has_no_route_and_follows_the_table():
    t = run("blue", "fd00:b::10", "fd00:b::1")
    assert t.verdict is Verdict.DROPPED and t.route == "unreachable ::/0 vrf nvf-blue"
    assert "gateway of VSID 5001: answered for neighbour discovery only" in t.reason


def test_remote_prefixes_longest_match_wins_and_host_routes_win_over_prefixes():
    prefixes = [prefix("blue", "0.0.0.0/0", 5001, "198.51.100.21"), prefix("blue", "192.0.2.0/24", 5002,
                                                                            "198.51.100.22"),
                prefix("red", "192.0.2.0/25", 6001, "198.51.100.23")]
    t = run("blue", "10.1.0.10", "192.0.2.7", prefixes=prefixes)
    assert t.verdict is Verdict.FORWARDED
    assert (t.vsid, str(t.pa), t.mac) == (5002, "198.51.100.22", None)  # red's /25 is not blue's
    assert t.route.startswith("192.0.2.0/24 encap ip id 1280512 dst 198.51.100.22 ")
    assert str(run("blue", "10.1.0.10", "8.8.8.8", prefixes=prefixes).pa) == "198.51.100.21"
    assert str(run("blue", "10.1.0.10", "10.1.0.20", prefixes=prefixes).pa) == "198.51.100.12"
    assert run("blue", "10.1.0.10", "10.2.0.10", prefixes=prefixes).verdict is Verdict.DELIVERED_LOCALLY


def test_equal_remote_prefixes_pick_the_same_one_in_any_order():
    a, b = prefix("blue", "0.0.0.0/0", 5001, "198.51.100.22"), prefix("blue", "0.0.0.0/0", 5001, "198.51.100.21")
    assert run("blue", "10.1.0.10", "8.8.8.8", prefixes=[a, b]) == run("blue", "10.1.0.10", "8.8.8.8", prefixes=[b, a])


def test_unknown_routing_domain_raises_not_found():
    with pytest.raises(NotFound):
        run("green", "10.1.0.10", "10.1.0.20")


# ---------------------------------------------------------------- trace agrees with vnet/desired.py

def _table_lookup(objects, table: int, dst):
    """Longest-prefix match over the routes vnet.desired puts in one table (the kernel's choice)."""
    best = None
    for obj in objects:
        if isinstance(obj, LocalPortRoute | EncapRoute) and obj.table == table:
            prefix = ip_network(obj.prefix)
            if prefix.version == dst.version and dst in prefix and (best is None or prefix.prefixlen >
                                                                    ip_network(best.prefix).prefixlen):
                best = obj
    return best


@pytest.mark.parametrize("pa_families", [(4, 6), (4,)])
def test_every_trace_matches_the_route_desired_state_installs(pa_families):
    prefixes = [prefix("blue", "0.0.0.0/0", 5001, "198.51.100.21"), prefix("blue", "192.0.2.0/24", 5002,
                                                                            "2001:db8::22")]
    pas = tuple(ip_address(a) for a in ("198.51.100.11", "2001:db8::11")[: len(pa_families)])
    tables = {"blue": 1000, "red": 1001}
    objects = desired_state(CATALOG, RECORDS, prefixes, {}, HostIdentity("02:00:5e:10:00:01", pas), tables).objects
    destinations = ["10.1.0.10", "10.1.0.20", "10.2.0.10", "10.2.0.30", "10.1.0.1", "10.1.0.77", "192.0.2.9",
                    "8.8.8.8", "fd00:b::20", "fd00:b::99", "fd00:b::1", "10.1.0.99"]
    checked = 0
    for rd, src in (("blue", "10.1.0.10"), ("blue", "fd00:b::10"), ("red", "10.1.0.99")):
        for dst in destinations:
            if ip_address(dst).version != ip_address(src).version:
                continue
            t = run(rd, src, dst, prefixes=prefixes, pa_families=pa_families)
            route = _table_lookup(objects, tables[rd], t.dst)
            if t.verdict is Verdict.DELIVERED_LOCALLY:
                assert isinstance(route, LocalPortRoute) and route.dev == t.device, (dst, t, route)
            elif t.verdict is Verdict.FORWARDED:
                assert isinstance(route, EncapRoute), (dst, t, route)
                assert (route.prefix, route.vsid, route.pa, route.dev) == (
                    str(ip_network(t.route.split()[0])), t.vsid, str(t.pa), t.device), (dst, t, route)
            elif route is not None:  # dropped by a route: the gateway's /32 to the NVGRE device
                assert isinstance(route, LocalPortRoute) and t.route == f"{route.prefix} dev {route.dev} vrf nvf-{rd}"
            checked += 1
    assert checked >= 20


def test_customer_routes_via_a_local_appliance_and_via_a_remote_ca():
    appliance = RoutingDomain.from_dict({**_blue_body(), "customer_routes": [
        {"prefix": "192.168.50.0/24", "next_hop": "10.1.0.10"},  # vm1, on this host
        {"prefix": "192.168.60.0/24", "next_hop": "10.1.0.20", "metric": 10},  # a VM on 198.51.100.12
    ]})
    catalog = Catalog.build({"blue": appliance, "red": RED}, {"vm1": VM1, "vm2": VM2, "vm3": VM3})
    here = trace(catalog, RECORDS, (), "blue", ip_address("10.2.0.10"), ip_address("192.168.50.7"))
    assert (here.verdict, here.device, here.mac) == (Verdict.DELIVERED_LOCALLY, "tap1", VM1.mac)
    assert here.route == "192.168.50.0/24 via 10.1.0.10 dev tap1 vrf nvf-blue"
    there = trace(catalog, RECORDS, (), "blue", ip_address("10.1.0.10"), ip_address("192.168.60.7"))
    assert (there.verdict, str(there.pa), there.vsid) == (Verdict.FORWARDED, "198.51.100.12", 5001)
    # a learned default does not win over the longer configured route; red knows nothing of it
    learned = [prefix("blue", "0.0.0.0/0", 5001, "198.51.100.21")]
    assert trace(catalog, RECORDS, learned, "blue", ip_address("10.1.0.10"),
                 ip_address("192.168.60.7")).pa == ip_address("198.51.100.12")
    assert run("red", "10.1.0.10", "192.168.50.7").verdict is Verdict.DROPPED


def _blue_body() -> dict:
    return {"name": "blue", "route_targets": ["65000:1"],
            "subnets": [{"vsid": 5001, "prefixes": ["10.1.0.0/24", "fd00:b::/64"]},
                        {"vsid": 5002, "prefixes": ["10.2.0.0/24"]}]}
