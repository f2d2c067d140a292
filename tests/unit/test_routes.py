"""Route values: validation names the field, normal forms, keys, families."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_network

import pytest

from nvfabric.bgp.errors import RouteValueError
from nvfabric.bgp.routes import (
    AsSegment, Family, MacIpKey, MacIpRoute, PathAttributes, PrefixRoute, UnicastRoute, format_admin_pair,
    parse_admin_pair,
)

GOOD = dict(rd="198.51.100.11:5001", mac="02:00:00:00:00:01", ip="10.1.0.5", vsid=5001, next_hop="198.51.100.11")


def test_family_numbers():
    assert (Family.L2VPN_EVPN.afi, Family.L2VPN_EVPN.safi) == (25, 70)
    assert (Family.IPV4_UNICAST.afi, Family.IPV6_UNICAST.afi) == (1, 2)
    assert Family.from_afi_safi(25, 70) is Family.L2VPN_EVPN and Family.from_afi_safi(1, 128) is None


def test_normal_forms():
    route = MacIpRoute(**{**GOOD, "mac": "02-AA-BB-CC-DD-EE", "router_mac": "02:AA:00:00:00:01"})
    assert route.mac == "02:aa:bb:cc:dd:ee" and route.router_mac == "02:aa:00:00:00:01"
    cisco = MacIpRoute(**{**GOOD, "mac": "02aa.bbcc.ddee", "router_mac": "02aa00000001"})
    assert cisco == route and cisco.key == route.key
    assert route.ip == IPv4Address("10.1.0.5") and route.next_hop == IPv4Address("198.51.100.11")
    assert route.family is Family.L2VPN_EVPN
    assert route.key == MacIpKey("198.51.100.11:5001", 0, "02:aa:bb:cc:dd:ee", IPv4Address("10.1.0.5"))


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"vsid": 1 << 24}, "vsid"),
        ({"vsid": -1}, "vsid"),
        ({"vsid": True}, "vsid"),
        ({"mac": "02:00:00:00:00"}, "mac"),
        ({"mac": "zz:00:00:00:00:01"}, "mac"),
        ({"mac": None}, "mac"),
        ({"ip": "10.1.0.300"}, "ip"),
        ({"next_hop": None}, "next_hop"),
        ({"rd": "198.51.100.11"}, "rd"),
        ({"rd": "198.51.100.11:70000"}, "rd"),  # IPv4 administrator leaves 2 octets for the number
        ({"rd": "4200000000:70000"}, "rd"),  # 4-octet AS leaves 2 octets
        ({"route_targets": "65000:1"}, "route_targets"),  # a string, not a sequence
        ({"route_targets": ("65000:x",)}, "route_targets"),
        ({"router_mac": "nope"}, "router_mac"),
        ({"mobility_seq": 1 << 32}, "mobility_seq"),
        ({"sticky": 1}, "sticky"),
        ({"ethernet_tag": 1 << 32}, "ethernet_tag"),
        ({"esi": b"\x00"}, "esi"),
    ],
)
def test_mac_ip_validation_names_the_field(changes, field):
    with pytest.raises(RouteValueError) as info:
        MacIpRoute(**{**GOOD, **changes})
    assert info.value.field == field


def test_prefix_route():
    route = PrefixRoute(rd="65000:1", prefix="2001:db8::/32", vsid=7, next_hop="198.51.100.1")
    assert route.gateway_ip == IPv6Address("::")  # default follows the prefix family
    assert route.key.prefix == ip_network("2001:db8::/32")
    with pytest.raises(RouteValueError) as info:
        PrefixRoute(rd="65000:1", prefix="10.0.0.1/24", vsid=7, next_hop="198.51.100.1")
    assert info.value.field == "prefix"
    with pytest.raises(RouteValueError) as info:
        PrefixRoute(rd="65000:1", prefix="10.0.0.0/24", vsid=7, next_hop="198.51.100.1", gateway_ip="::1")
    assert info.value.field == "gateway_ip"


def test_unicast_route():
    route = UnicastRoute("203.0.113.0/24", "198.51.100.1")
    assert route.family is Family.IPV4_UNICAST and route.key.family is Family.IPV4_UNICAST
    with pytest.raises(RouteValueError) as info:
        UnicastRoute("203.0.113.0/24", "2001:db8::1")
    assert info.value.field == "next_hop"


def test_routes_are_immutable_and_hashable():
    route = MacIpRoute(**GOOD)
    with pytest.raises(AttributeError):
        route.vsid = 1  # type: ignore[misc]
    assert {route: 1}[MacIpRoute(**GOOD)] == 1


@pytest.mark.parametrize(
    "text, kind", [("65000:4000000000", 0), ("198.51.100.1:65535", 1), ("4200000000:65535", 2)]
)
def test_admin_pair_forms(text, kind):
    pair = parse_admin_pair(text, "rd")
    assert pair.kind == kind and format_admin_pair(*pair) == text


def test_path_attributes():
    attrs = PathAttributes(as_path=(AsSegment(2, (1, 2, 3)), AsSegment(1, (4, 5))))
    assert attrs.as_path_length == 4  # RFC 4271 9.1.2.2 a: a set counts as one
    assert attrs.neighbor_as == 1
    with pytest.raises(RouteValueError) as info:
        PathAttributes(med=-1)
    assert info.value.field == "med"
    with pytest.raises(RouteValueError) as info:
        PathAttributes(as_path=((2, (1,)),))
    assert info.value.field == "as_path"


def test_route_targets_are_a_set():
    a = MacIpRoute(**GOOD, route_targets=("65000:2", "198.51.100.1:7", "65000:1", "65000:2"))
    b = MacIpRoute(**GOOD, route_targets=("65000:1", "198.51.100.1:7", "65000:2"))
    assert a == b and a.route_targets == ("65000:1", "65000:2", "198.51.100.1:7")  # by RT type, then value
