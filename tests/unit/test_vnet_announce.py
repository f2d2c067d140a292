"""vnet.announce: local ports -> the type-2 routes this host announces."""

from __future__ import annotations

from nvfabric.vnet.announce import Identity, local_routes, route_distinguisher
from tests.unit.agent_fixtures import PA1, VM_B1, VM_R1, catalog, ip

ME = Identity("198.51.100.11", (PA1,), "02:00:5e:10:00:01")


def test_one_route_per_ca_with_vsid_label_rts_router_mac_and_next_hop():
    routes = local_routes(catalog(VM_B1, VM_R1), ME, {})
    by_ip = {(r.vsid, str(r.ip)): r for r in routes.values()}
    assert set(by_ip) == {(5001, "10.0.0.10"), (5001, "fd00:b::10"), (6001, "10.0.0.10")}
    blue = by_ip[(5001, "10.0.0.10")]
    assert blue.rd == "198.51.100.11:5001" and blue.mac == VM_B1.mac and blue.next_hop == PA1
    assert blue.route_targets == ("65001:1",) and blue.router_mac == "02:00:5e:10:00:01" and blue.mobility_seq == 0
    red = by_ip[(6001, "10.0.0.10")]
    assert red.route_targets == ("65001:2",) and red.rd == "198.51.100.11:6001"
    # the same CA in two tenants: two distinct routes (different RD and MAC)
    assert red.key != blue.key


def test_rd_uses_the_low_16_bits_of_the_vsid():
    assert route_distinguisher("198.51.100.11", 70537) == "198.51.100.11:5001"


def test_mobility_sequence_and_inactive_ports():
    key = (5001, VM_B1.mac)
    routes = local_routes(catalog(VM_B1), ME, {key: 3})
    assert {r.mobility_seq for r in routes.values()} == {3}
    assert local_routes(catalog(VM_B1, VM_R1), ME, {}, inactive={key}).keys() == \
        local_routes(catalog(VM_R1), ME, {}).keys()
    assert ip("10.0.0.10") in {r.ip for r in routes.values()}
