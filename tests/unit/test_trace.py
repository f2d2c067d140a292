"""hostagent/trace.py: what the VRF table of a routing domain, as vnet/desired.py builds it, does with a packet
from src to dst."""

from __future__ import annotations

import random
from ipaddress import ip_address, ip_network

import pytest

from nvfabric.hostagent.trace import Verdict, trace
from nvfabric.vnet.catalog import Catalog, NotFound
from nvfabric.vnet.desired import NVGRE_DEVICES, HostIdentity, desired_state
from nvfabric.vnet.kernel.objects import EncapRoute, LocalPortRoute, UnreachableRoute, ViaRoute, VrfAddress
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


PAS = {4: ip_address("198.51.100.11"), 6: ip_address("2001:db8::11")}
TABLES = {"blue": 1000, "red": 1001}


def desired(catalog=CATALOG, records=RECORDS, prefixes=(), pa_families=(4, 6)):
    """What the agent hands trace: the objects vnet.desired builds from the same values."""
    identity = HostIdentity("02:00:5e:10:00:01", tuple(PAS[f] for f in pa_families))
    routes = {name: rd.customer_routes for name, rd in catalog.routing_domains.items()}
    return desired_state(catalog, records, prefixes, routes, identity, TABLES)


def run(rd: str, src: str, dst: str, records=RECORDS, prefixes=(), pa_families=(4, 6), catalog=CATALOG):
    return trace(catalog, records, desired(catalog, records, prefixes, pa_families).partitions, rd,
                 ip_address(src), ip_address(dst))


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


def test_the_subnet_gateway_is_answered_by_this_host():
    t = run("blue", "10.1.0.10", "10.1.0.1")
    assert t.verdict is Verdict.ANSWERED and t.reason.startswith("answered by this host (subnet gateway of VSID 5001)")
    assert (t.route, t.device, t.vsid) == ("local 10.1.0.1 dev nvf-blue table 1000", "nvf-blue", 5001)
    # another subnet's gateway in the same routing domain is the same VRF's address
    assert run("blue", "10.1.0.10", "10.2.0.1").verdict is Verdict.ANSWERED


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


def test_an_ipv6_gateway_is_answered_by_this_host_too():
    t = run("blue", "fd00:b::10", "fd00:b::1")
    assert t.verdict is Verdict.ANSWERED and t.route == "local fd00:b::1 dev nvf-blue table 1000"


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


def test_customer_routes_via_a_local_appliance_and_via_a_remote_ca():
    appliance = RoutingDomain.from_dict({**_blue_body(), "customer_routes": [
        {"prefix": "192.168.50.0/24", "next_hop": "10.1.0.10"},  # vm1, on this host
        {"prefix": "192.168.60.0/24", "next_hop": "10.1.0.20", "metric": 10},  # a VM on 198.51.100.12
    ]})
    catalog = Catalog.build({"blue": appliance, "red": RED}, {"vm1": VM1, "vm2": VM2, "vm3": VM3})
    here = run("blue", "10.2.0.10", "192.168.50.7", catalog=catalog)
    assert (here.verdict, here.device, here.mac) == (Verdict.DELIVERED_LOCALLY, "tap1", VM1.mac)
    assert here.route == "192.168.50.0/24 via 10.1.0.10 dev tap1 vrf nvf-blue"
    there = run("blue", "10.1.0.10", "192.168.60.7", catalog=catalog)
    assert (there.verdict, str(there.pa), there.vsid) == (Verdict.FORWARDED, "198.51.100.12", 5001)
    # a learned default does not win over the longer configured route; red knows nothing of it
    learned = [prefix("blue", "0.0.0.0/0", 5001, "198.51.100.21")]
    assert run("blue", "10.1.0.10", "192.168.60.7", prefixes=learned, catalog=catalog).pa == ip_address("198.51.100.12")
    assert run("red", "10.1.0.10", "192.168.50.7").verdict is Verdict.DROPPED


def _blue_body() -> dict:
    return {"name": "blue", "route_targets": ["65000:1"],
            "subnets": [{"vsid": 5001, "prefixes": ["10.1.0.0/24", "fd00:b::/64"]},
                        {"vsid": 5002, "prefixes": ["10.2.0.0/24"]}]}


# ---------------------------------------------------------------- generated catalogs: trace is the table's choice

SUBNETS = {"blue": [(5001, "10.1.0.0/24", "fd00:1::/64"), (5002, "10.2.0.0/24", "fd00:2::/64")],
           "red": [(6001, "10.1.0.0/24", "fd00:1::/64")]}  # red reuses blue's address space
OTHER_PAS = [ip_address(a) for a in ("198.51.100.12", "198.51.100.13", "2001:db8::12")]
# learned and configured prefixes are drawn from two pools: one prefix is learned or configured, not both
# (learn.py keeps one learned route per prefix; the same key twice is refused by the reconciler)
LEARNED = ["0.0.0.0/0", "192.0.2.0/24", "192.0.2.0/25", "10.1.0.0/25", "::/0", "2001:db8:f::/48"]
CONFIGURED = ["192.0.2.0/26", "192.0.2.128/25", "198.18.0.0/15", "198.18.0.0/24", "10.2.0.0/28", "fd00:99::/64",
              "fd00:2::/120"]


def _generated(rnd: random.Random) -> tuple[Catalog, list[LookupRecord], list[RemotePrefix]]:
    """A random host: per routing domain, CAs on local ports (some moved away), remote CAs behind PAs of
    both families, learned prefixes and customer routes via any CA (known or not) or on-link."""
    domains, ports, records, prefixes = {}, {}, [], []
    for name, subnets in SUBNETS.items():
        cas = []
        for vsid, v4, v6 in subnets:
            for n in rnd.sample(range(2, 12), 6):
                ca = ip_address(rnd.choice((v4, v6)).split("/")[0]) + n
                cas.append(ca)
                role = rnd.choice(("local", "local", "remote", "remote", "unknown"))
                if role == "remote":
                    records.append(LookupRecord(name, vsid, ca, f"02:00:00:{vsid % 256:02x}:{n:02x}:{ca.version:02x}",
                                                rnd.choice(OTHER_PAS)))
                elif role == "local":
                    port = f"{name}{vsid}-{rnd.randrange(3)}"
                    old = ports.get(port, {"name": port, "interface": f"tap-{len(ports)}", "vsid": vsid,
                                           "mac": f"02:00:01:{vsid % 256:02x}:{len(ports):02x}:00", "addresses": []})
                    ports[port] = {**old, "addresses": [*old["addresses"], str(ca)]}
        routes = []
        for text in rnd.sample(CONFIGURED, rnd.randrange(len(CONFIGURED))):
            network = ip_network(text)
            hops = [str(ca) for ca in cas if ca.version == network.version]
            hop = rnd.choice([*hops, "on-link"])
            routes.append({"prefix": text, "next_hop": hop, "metric": rnd.choice((0, 0, 10))})
        domains[name] = RoutingDomain.from_dict({
            "name": name, "route_targets": ["65000:1"], "customer_routes": routes,
            "subnets": [{"vsid": vsid, "prefixes": [v4, v6]} for vsid, v4, v6 in subnets]})
        for text in rnd.sample(LEARNED, rnd.randrange(len(LEARNED))):
            prefixes.append(RemotePrefix(name, ip_network(text), subnets[0][0], rnd.choice(OTHER_PAS)))
    catalog = Catalog.build(domains, {k: Port.from_dict(v) for k, v in ports.items()})
    for port in catalog.ports.values():
        if rnd.random() < 0.85:  # else its MAC moved to another host: no local records
            found = catalog.subnet(port.vsid)
            assert found is not None
            records += local(found[0].name, port)
    return catalog, records, prefixes


def _kernel_choice(objects, table: int, dst):
    """The route the kernel takes in one table: the longest prefix, then the lowest metric."""
    routes = [o for o in objects if isinstance(o, LocalPortRoute | EncapRoute | ViaRoute | UnreachableRoute)
              and o.table == table and ip_network(o.prefix).version == dst.version and dst in ip_network(o.prefix)]
    return min(routes, key=lambda o: (-ip_network(o.prefix).prefixlen, o.metric), default=None)


@pytest.mark.parametrize("seed", range(100))
def test_on_generated_hosts_every_trace_takes_the_route_the_table_takes(seed):
    rnd = random.Random(seed)
    catalog, records, prefixes = _generated(rnd)
    pa_families = rnd.choice(((4, 6), (4,), (6,)))
    built = desired(catalog, records, prefixes, pa_families)
    devices = set(NVGRE_DEVICES[f] for f in pa_families)
    for name, subnets in SUBNETS.items():
        sources = [r.ca for r in records if r.routing_domain == name]
        # every CA, every subnet gateway, and an address in every prefix
        destinations = {*sources, *(ip_address(p.split("/")[0]) + 1 for _, *ps in subnets for p in ps),
                        *(ip_network(p)[3] for p in [*LEARNED, *CONFIGURED]), ip_address("8.8.8.8")}
        for dst in destinations:
            src = next((s for s in sources if s.version == dst.version), None)
            if src is None:
                continue
            t = trace(catalog, records, built.partitions, name, src, dst)
            route = _kernel_choice(built.objects, TABLES[name], dst)
            if t.verdict is Verdict.FORWARDED:
                assert isinstance(route, EncapRoute), (t, route)
                assert (t.vsid, str(t.pa), t.device) == (route.vsid, route.pa, route.dev)
                assert t.route.startswith(f"{route.prefix} encap ")
            elif t.verdict is Verdict.DELIVERED_LOCALLY:
                assert isinstance(route, LocalPortRoute | ViaRoute) and route.dev not in devices, (t, route)
                assert t.device == route.dev and t.route.startswith(f"{route.prefix} ")
            elif t.verdict is Verdict.ANSWERED:  # the VRF's own address: the kernel's local route wins
                assert t.route == f"local {dst} dev nvf-{name} table {TABLES[name]}"
                assert VrfAddress(f"nvf-{name}", str(dst)) in built.objects
            elif t.route is not None and t.route.startswith("unreachable "):
                assert isinstance(route, UnreachableRoute), (t, route)
            else:  # dropped before the table: the source, or the families
                assert t.reason.startswith(("source ", "source is IPv")), t
    # and the table itself does what the model says: an active local CA goes to its port, a remote CA whose
    # PA family this host has goes to that PA in its VSID
    for r in records:
        t = trace(catalog, records, built.partitions, r.routing_domain, r.ca, r.ca)
        if r.local and r.port in catalog.ports:
            assert (t.verdict, t.device) == (Verdict.DELIVERED_LOCALLY, catalog.ports[r.port].interface)
        elif not r.local and r.pa.version in pa_families:
            assert (t.verdict, t.pa, t.vsid, t.mac) == (Verdict.FORWARDED, r.pa, r.vsid, r.mac)


def test_a_customer_route_that_is_not_installed_leaves_the_packet_to_the_shorter_one():
    # the /24's next hop is no known CA, so vnet.desired installs only the /15: the kernel takes the /15
    # (the reason still names the /24 and why it is missing)
    nested = RoutingDomain.from_dict({**_blue_body(), "customer_routes": [
        {"prefix": "198.18.0.0/15", "next_hop": "10.1.0.20"}, {"prefix": "198.18.0.0/24", "next_hop": "10.1.0.66"}]})
    catalog = Catalog.build({"blue": nested, "red": RED}, {"vm1": VM1, "vm2": VM2, "vm3": VM3})
    t = run("blue", "10.1.0.10", "198.18.0.7", catalog=catalog)
    assert (t.verdict, str(t.pa), t.mac) == (Verdict.FORWARDED, "198.51.100.12", "02:00:00:00:03:01")
    assert t.route.startswith("198.18.0.0/15 encap ip id 1280256 dst 198.51.100.12 ")
    assert t.reason.endswith("(customer route 198.18.0.0/24: its next hop 10.1.0.66 is not a known CA)")


def test_a_gateway_is_answered_for_a_packet_that_arrived_over_nvgre_too():
    # (every host has the address: a packet for it never needs to leave its sender's host)
    moved = [r for r in RECORDS if r.port != "vm1"]
    t = run("blue", "fd00:b::20", "fd00:b::1", moved)
    assert (t.verdict, t.ingress) == (Verdict.ANSWERED, "nvf-gre4")


def _sent_by(port: str, src: str, dst: str, catalog=CATALOG, drops=None):
    return trace(catalog, RECORDS, desired(catalog).partitions, "blue", ip_address(src), ip_address(dst),
                 port=port, drops=drops)


def test_a_port_sending_from_an_address_not_its_own_is_dropped_by_port_security_with_its_counter():
    drops = {"vm1": {"spoofed_source": 4, "dhcp_guard": 0}}
    for spoofed in ("10.1.0.99", "10.2.0.10", "fd00:b::99"):  # nobody's, another local VM's, IPv6
        t = _sent_by("vm1", spoofed, "10.1.0.20" if "." in spoofed else "fd00:b::20", drops=drops)
        assert t.verdict is Verdict.DROPPED and t.reason.startswith("port security, spoofed source"), t
        assert (t.ingress, t.drops) == ("tap1", 4)
    # its own CA, its link-local: on as usual
    assert _sent_by("vm1", "10.1.0.10", "10.1.0.20").verdict is Verdict.FORWARDED
    assert _sent_by("vm1", "fe80::1234", "fd00:b::20").verdict is Verdict.FORWARDED
    # an allowed address (an appliance's prefix), and any source when port security is off
    appliance = Port.from_dict({**VM1.to_dict(), "allowed_addresses": ["192.168.50.0/24"]})
    open_port = Port.from_dict({**VM1.to_dict(), "port_security": False})
    for port, src in ((appliance, "192.168.50.7"), (open_port, "10.1.0.99")):
        catalog = Catalog.build({"blue": BLUE, "red": RED}, {"vm1": port, "vm2": VM2, "vm3": VM3})
        t = _sent_by("vm1", src, "10.1.0.20", catalog)
        assert (t.verdict, t.ingress, t.src_vsid) == (Verdict.FORWARDED, "tap1", 5001), t
    with pytest.raises(NotFound):
        _sent_by("nope", "10.1.0.10", "10.1.0.20")
    assert "not in routing domain blue" in _sent_by("vm3", "10.1.0.10", "10.1.0.20").reason


def test_an_arriving_nvgre_packet_is_judged_by_the_decapsulation_table_then_routed() -> None:
    from nvfabric.hostagent.filters import served_vsids
    from nvfabric.hostagent.trace import arriving
    from nvfabric.vnet.decap import decap_filter, vouched

    parts = desired().partitions
    decap = decap_filter({ip_address("198.51.100.12"), ip_address("2001:db8::13")}, served_vsids(CATALOG, TABLES),
                         vouched(RECORDS, (), {}, TABLES), False, None)
    hv2 = ip_address("198.51.100.12")

    def arrive(pa, key, src, dst):
        return arriving(decap, CATALOG, RECORDS, parts, pa, key, ip_address(src), ip_address(dst))

    # from hv2, FlowID 7, to VM2 in the other subnet of the routing domain (the key is VM2's VSID)
    ok = arrive(hv2, 5002 << 8 | 7, "10.1.0.20", "10.2.0.10")
    assert (ok.verdict, ok.counter, ok.routing_domain, ok.inner.device) == ("delivered", "vouched", "blue", "tap2")
    assert arrive(hv2, 9999 << 8, "10.1.0.20", "10.2.0.10").counter == "unknown_vsid"
    assert arrive(hv2, 0, "10.1.0.20", "10.2.0.10").counter == "unknown_vsid"
    assert arrive(ip_address("198.51.100.99"), 5001 << 8, "10.1.0.20", "10.1.0.10").counter == "unknown_pa"
    # hv2 claiming hv3's CA, or a CA of a tenant hv2 does not host (red's VSID)
    spoof = arrive(hv2, 5001 << 8, "10.2.0.30", "10.1.0.10")
    assert (spoof.verdict, spoof.counter) == ("dropped", "not_vouched") and "10.2.0.30" in spoof.reason
    assert arrive(hv2, 6001 << 8, "10.1.0.20", "10.1.0.10").counter == "not_vouched"
    # vouched, but the inner packet is for this host's own PA: routed in the VRF, where it is unreachable
    own = arrive(hv2, 5001 << 8, "10.1.0.20", "198.51.100.11")
    assert own.verdict == "dropped" and own.counter == "vouched"
