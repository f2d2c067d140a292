"""vnet.desired: catalog + records + prefixes -> the kernel objects of a host."""

from __future__ import annotations

from nvfabric.vnet.desired import GLOBAL, NVGRE_DEVICES, HostIdentity, allocate_tables, desired_state, vrf_name
from nvfabric.vnet.kernel.diff import diff
from nvfabric.vnet.kernel.objects import (
    EncapRoute,
    LocalPortRoute,
    NvgreDevice,
    PermanentNeighbour,
    ProxyNeighbour,
    Sysctl,
    TunIdRule,
    UnreachableRoute,
    ViaRoute,
    Vrf,
    VrfAddress,
    VrfPort,
)
from nvfabric.vnet.model import CustomerRoute, LookupRecord, RemotePrefix
from tests.unit.agent_fixtures import PA1, PA2, VM_B1, VM_R1, catalog, ip, net

RMAC = "02:00:5e:10:00:01"
HOST = HostIdentity(RMAC, (PA1, ip("2001:db8::11")))
TABLES = {"blue": 1000, "red": 1001}


def local(port, rd):
    return [LookupRecord(rd, port.vsid, ca, port.mac, None, True, port.name) for ca in port.addresses]


REMOTE = [
    LookupRecord("blue", 5001, ip("10.0.0.20"), "02:00:00:00:b2:01", PA2),
    LookupRecord("blue", 5001, ip("fd00:b::20"), "02:00:00:00:b2:01", ip("2001:db8::12")),
    LookupRecord("blue", 5002, ip("10.0.1.30"), "02:00:00:00:b3:01", PA2),
    LookupRecord("red", 6001, ip("10.0.0.20"), "02:00:00:00:a2:01", PA2),
]


def build(records=None, prefixes=(), routes=None, host=HOST):
    cat = catalog(VM_B1, VM_R1)
    if records is None:
        records = local(VM_B1, "blue") + local(VM_R1, "red") + REMOTE
    return desired_state(cat, records, prefixes, routes or {}, host, TABLES)


def test_per_routing_domain_vrf_unreachable_defaults_and_tun_id_rules():
    objs = build().objects
    assert {o for o in objs if isinstance(o, Vrf)} == {Vrf("nvf-blue", 1000), Vrf("nvf-red", 1001)}
    assert UnreachableRoute(1000, 4) in objs and UnreachableRoute(1001, 6) in objs
    rules = {(o.family, o.iif, o.tun_id >> 8, o.table) for o in objs if isinstance(o, TunIdRule)}
    assert (4, "nvf-gre4", 5002, 1000) in rules and (6, "nvf-gre6", 6001, 1001) in rules
    assert len(rules) == 3 * 2 * 2  # 3 VSIDs x 2 devices x 2 CA families
    assert NvgreDevice("nvf-gre4", 4, RMAC) in objs and NvgreDevice("nvf-gre6", 6, RMAC) in objs
    assert PermanentNeighbour("nvf-gre6", "169.254.0.1", RMAC) in objs


def test_ports_are_routed_ports_with_proxy_arp_and_their_cas_routed_locally():
    objs = build().objects
    assert VrfPort("tap-b1", "nvf-blue", 1500) in objs and VrfPort("tap-r1", "nvf-red", 1500) in objs
    assert Sysctl("net/ipv4/conf/tap-b1/proxy_arp", "1") in objs
    assert Sysctl("net/ipv6/conf/tap-b1/proxy_ndp", "1") in objs
    # with the port's subnet gateway as the source of what the host sends the VM (its ICMP errors)
    assert LocalPortRoute(1000, "10.0.0.10/32", "tap-b1", src="10.0.0.1") in objs
    assert LocalPortRoute(1001, "10.0.0.10/32", "tap-r1", src="10.0.0.1") in objs  # the same CA, the other table
    assert LocalPortRoute(1000, "fd00:b::10/128", "tap-b1", src="fd00:b::1") in objs


def test_remote_cas_are_encap_routes_via_the_device_of_the_pa_family():
    objs = build().objects
    assert EncapRoute(1000, "10.0.0.20/32", 5001, "198.51.100.12", "nvf-gre4") in objs
    assert EncapRoute(1000, "fd00:b::20/128", 5001, "2001:db8::12", "nvf-gre6") in objs
    assert EncapRoute(1001, "10.0.0.20/32", 6001, "198.51.100.12", "nvf-gre4") in objs
    # proxy NDP for remote IPv6 CAs on the ports of their subnet only
    assert ProxyNeighbour("tap-b1", "fd00:b::20") in objs
    assert not [o for o in objs if isinstance(o, ProxyNeighbour) and o.dev == "tap-r1"]


def test_the_subnet_gateways_are_addresses_of_the_vrf_and_need_no_route():
    d = build()
    addresses = {o for o in d.objects if isinstance(o, VrfAddress)}
    assert addresses == {VrfAddress("nvf-blue", "10.0.0.1"), VrfAddress("nvf-blue", "10.0.1.1"),
                         VrfAddress("nvf-blue", "fd00:b::1"), VrfAddress("nvf-red", "10.0.0.1")}
    assert VrfAddress("nvf-blue", "fd00:b::1").prefixlen == 128 and VrfAddress("nvf-red", "10.0.0.1").prefixlen == 32
    assert addresses <= d.partitions["blue"] | d.partitions["red"]  # each in its routing domain's partition
    gateways = {"10.0.0.1/32", "10.0.1.1/32", "fd00:b::1/128"}
    assert not [o for o in d.objects if isinstance(o, LocalPortRoute | EncapRoute) and o.prefix in gateways]
    # the port joins the IPv6 gateway's solicited-node group through a proxy entry; the VRF forwards (router flag)
    assert {o.dev for o in d.objects if isinstance(o, ProxyNeighbour) and o.address == "fd00:b::1"} == {"tap-b1"}
    assert Sysctl("net/ipv6/conf/nvf-blue/forwarding", "1") in d.partitions["blue"]
    # a routing domain without a local port still answers (a VM may arrive any moment): the VRF has them
    assert VrfAddress("nvf-red", "10.0.0.1") in build(records=local(VM_B1, "blue")).objects


def test_a_pa_family_without_device_is_skipped_and_reported():
    v4_only = HostIdentity(RMAC, (PA1,))
    d = build(host=v4_only)
    assert "nvf-gre6" not in {o.name for o in d.objects if isinstance(o, NvgreDevice)}
    assert any("fd00:b::20" in s for s in d.skipped)


def test_remote_prefixes_and_customer_routes():
    gw = RemotePrefix("blue", net("0.0.0.0/0"), 5001, ip("198.51.100.21"))
    routes = {"blue": [CustomerRoute(net("192.168.0.0/16"), ip("10.0.0.20")),
                       CustomerRoute(net("172.16.0.0/12"), ip("10.0.0.10"))]}
    d = build(prefixes=[gw], routes=routes)
    assert EncapRoute(1000, "0.0.0.0/0", 5001, "198.51.100.21", "nvf-gre4") in d.objects
    assert EncapRoute(1000, "192.168.0.0/16", 5001, "198.51.100.12", "nvf-gre4") in d.objects
    # via a VM on this host (10.0.0.10 is b1's CA, on tap-b1): via its CA on its port
    assert ViaRoute(1000, "172.16.0.0/12", "10.0.0.10", "tap-b1") in d.objects
    assert not d.skipped


def test_customer_route_metrics_next_hops_nobody_has_and_on_link_prefixes():
    routes = {"blue": [CustomerRoute(net("192.168.0.0/16"), ip("10.0.0.10"), metric=50),
                       CustomerRoute(net("192.168.1.0/24"), ip("10.0.0.99")),  # no lookup record
                       CustomerRoute(net("10.0.0.128/25")),  # on-link, inside the 10.0.0.0/24 subnet
                       CustomerRoute(net("10.5.0.0/16"))]}  # on-link, outside every subnet
    d = build(routes=routes)
    assert ViaRoute(1000, "192.168.0.0/16", "10.0.0.10", "tap-b1", 50) in d.objects
    added = d.objects - build().objects
    assert added == {ViaRoute(1000, "192.168.0.0/16", "10.0.0.10", "tap-b1", 50)}  # on-link adds nothing
    assert sorted(s.split(":")[0] for s in d.skipped) == ["blue 10.5.0.0/16", "blue 192.168.1.0/24"]
    # the red tenant's 10.0.0.10 is another VM: a blue route never resolves through it
    d = build(routes={"red": [CustomerRoute(net("192.168.0.0/16"), ip("10.0.0.10"))]})
    assert ViaRoute(1001, "192.168.0.0/16", "10.0.0.10", "tap-r1") in d.objects


def test_inactive_port_is_not_routed_here():
    records = local(VM_R1, "red") + REMOTE
    objs = build(records=records).objects
    assert not [o for o in objs if isinstance(o, VrfPort) and o.name == "tap-b1"]


def test_desired_state_has_one_value_per_key_and_is_deterministic():
    a, b = build(), build()
    assert a == b
    assert len(diff(a.objects, a.objects)) == 0


def test_table_allocation_keeps_known_numbers():
    assert allocate_tables(["red", "blue"], {}) == {"blue": 1000, "red": 1001}
    assert allocate_tables(["red", "blue", "green"], {"red": 1000, "old": 1001}) == \
        {"red": 1000, "blue": 1002, "green": 1003}
    assert vrf_name("blue") == "nvf-blue" and NVGRE_DEVICES[6] == "nvf-gre6"


def test_partitions_are_the_global_part_and_one_per_routing_domain_and_add_up_to_the_whole():
    d = build()
    assert set(d.partitions) == {GLOBAL, "blue", "red"}
    assert frozenset().union(*d.partitions.values()) == d.objects
    assert NvgreDevice("nvf-gre4", 4, RMAC) in d.partitions[GLOBAL]
    assert all(getattr(o, "table", 1000) == 1000 for o in d.partitions["blue"])
    assert VrfPort("tap-r1", "nvf-red", 1500) in d.partitions["red"]


def test_building_one_domain_gives_the_same_partition_as_building_all():
    whole, blue = build(), desired_state(catalog(VM_B1, VM_R1), local(VM_B1, "blue") + local(VM_R1, "red") + REMOTE,
                                         (), {}, HOST, TABLES, domains={"blue"})
    assert set(blue.partitions) == {GLOBAL, "blue"} and blue.partitions["blue"] == whole.partitions["blue"]
    gone = desired_state(catalog(VM_B1, VM_R1), [], (), {}, HOST, TABLES, domains={"green"})
    assert gone.partitions["green"] == frozenset()  # not in the catalog: its objects are to be removed


def test_nvgre_device_mtu_leaves_room_for_the_encapsulation_of_its_underlay_family():
    objs = build(host=HostIdentity(RMAC, (PA1, ip("2001:db8::11")), underlay_mtu=9000)).objects
    mtus = {o.family: o.mtu for o in objs if isinstance(o, NvgreDevice)}
    assert mtus == {4: 9000 - 42, 6: 9000 - 62}
    assert NvgreDevice("nvf-gre4", 4, RMAC).mtu == 1458 and NvgreDevice("nvf-gre6", 6, RMAC).mtu == 1438
