"""What a port is offered (hostagent/guest/offer.py) and the per-subnet DHCP options of the model
(vnet/model.py DhcpOptions): derived from the catalog alone, validated field by field, round-tripped."""

from __future__ import annotations

import ipaddress

import pytest

from nvfabric.hostagent import state
from nvfabric.hostagent.guest import offer
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import HostIdentity
from nvfabric.vnet.errors import ModelError
from nvfabric.vnet.model import DhcpOptions, Port, RoutingDomain, VirtualSubnet

ip = ipaddress.ip_address
net = ipaddress.ip_network
DHCP = {"dns_servers": ["10.0.0.53", "fd00:b::53"], "search_domains": ["Tenant.Example."], "lease_time": 600,
        "routes": [{"prefix": "198.51.100.0/24", "next_hop": "10.0.0.254"}]}
BLUE = {"route_targets": ["65000:100"],
        "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24", "fd00:b::/64"], "dhcp": DHCP},
                    {"vsid": 5002, "prefixes": ["10.0.1.0/24"], "dhcp": {"enabled": False}},
                    {"vsid": 5003, "prefixes": ["fd00:c::/64"]}],
        "customer_routes": [{"prefix": "172.16.0.0/12", "next_hop": "10.0.0.7"}, {"prefix": "fd00:99::/64"},
                            {"prefix": "198.51.100.0/24", "next_hop": "10.0.0.8"}]}
HOST4 = HostIdentity("02:aa:00:00:00:01", (ip("192.0.2.1"),), 1500)
HOST46 = HostIdentity("02:aa:00:00:00:01", (ip("192.0.2.1"), ip("2001:db8::1")), 1500)


def catalog(*ports: Port) -> Catalog:
    return Catalog.build({"blue": RoutingDomain.from_dict(BLUE, "blue")}, {p.name: p for p in ports})


def port(name: str, vsid: int, *addresses: str, mtu: int | None = None, mac: str = "02:00:00:00:00:01") -> Port:
    return Port(name, f"tap-{name}", mac, vsid, tuple(ip(a) for a in addresses), mtu=mtu)


def test_a_port_is_offered_its_cas_the_gateways_dns_and_routes_of_its_subnet():
    services = offer.port_services(catalog(port("vm1", 5001, "fd00:b::5", "10.0.0.5")), HOST4)
    s = services["tap-vm1"]
    assert (s.port, s.routing_domain, s.vsid, s.mac) == ("vm1", "blue", 5001, "02:00:00:00:00:01")
    assert s.ipv4 == ipaddress.ip_interface("10.0.0.5/24") and s.ipv6 == ipaddress.ip_interface("fd00:b::5/64")
    assert (s.gateway4, s.gateway6) == (ip("10.0.0.1"), ip("fd00:b::1"))
    assert s.dns4 == (ip("10.0.0.53"),) and s.dns6 == (ip("fd00:b::53"),) and s.search == ("tenant.example",)
    assert s.lease_time == 600 and s.mtu == 1500 - 42
    # the default, the IPv4 customer routes via the gateway (the host routes them), then the configured ones
    # (a configured prefix already routed as a customer route keeps the gateway)
    assert s.routes4 == ((net("0.0.0.0/0"), ip("10.0.0.1")), (net("172.16.0.0/12"), ip("10.0.0.1")),
                         (net("198.51.100.0/24"), ip("10.0.0.1")))


def test_the_mtu_fits_the_worst_encapsulation_and_never_exceeds_the_ports():
    ports = (port("a", 5001, "10.0.0.5"), port("b", 5001, "10.0.0.6", mtu=1400, mac="02:00:00:00:00:02"),
             port("c", 5001, "10.0.0.7", mtu=9000, mac="02:00:00:00:00:03"))
    assert {k: s.mtu for k, s in offer.port_services(catalog(*ports), HOST46).items()} == {
        "tap-a": 1500 - 62, "tap-b": 1400, "tap-c": 1500 - 62}


def test_disabled_subnets_and_ports_that_moved_away_are_not_served_ipv6_only_ones_are():
    ports = (port("a", 5001, "10.0.0.5"), port("off", 5002, "10.0.1.5", mac="02:00:00:00:00:02"),
             port("v6", 5003, "fd00:c::5", mac="02:00:00:00:00:03"),
             port("gone", 5001, "10.0.0.9", mac="02:00:00:00:00:04"))
    services = offer.port_services(catalog(*ports), HOST4, inactive={(5001, "02:00:00:00:00:04")})
    assert set(services) == {"tap-a", "tap-v6"}
    v6 = services["tap-v6"]
    assert v6.ipv4 is None and v6.gateway4 is None and v6.routes4 == () and v6.ipv6 is not None
    assert v6.lease_time == 86400 and v6.dns4 == v6.dns6 == ()


def test_dhcp_options_round_trip_through_the_state_file_and_defaults_stay_implicit():
    domain = RoutingDomain.from_dict(BLUE, "blue")
    body = state.routing_domain_to_dict(domain)
    assert "dhcp" not in body["subnets"][2]
    assert body["subnets"][0]["dhcp"] == {"enabled": True, "dns_servers": ["10.0.0.53", "fd00:b::53"],
                                          "search_domains": ["tenant.example"], "lease_time": 600,
                                          "routes": [{"prefix": "198.51.100.0/24", "next_hop": "10.0.0.254"}]}
    assert RoutingDomain.from_dict(body, "blue") == domain


@pytest.mark.parametrize("dhcp, field, words", [
    ({"lease_time": 59}, "dhcp.lease_time", "60..2147483647"),
    ({"lease_time": 2**31}, "dhcp.lease_time", "60..2147483647"),
    ({"lease_time": "1h"}, "dhcp.lease_time", "integer"),
    ({"enabled": "yes"}, "dhcp.enabled", "true or false"),
    ({"dns_servers": ["10.0.0.300"]}, "dhcp.dns_servers[0]", "not an IPv4 or IPv6"),
    ({"dns_servers": ["10.0.0.53", "10.0.0.53"]}, "dhcp.dns_servers[1]", "duplicate"),
    ({"search_domains": ["ex_ample.com"]}, "dhcp.search_domains[0]", "RFC 1035"),
    ({"search_domains": ["-bad.example"]}, "dhcp.search_domains[0]", "RFC 1035"),
    ({"search_domains": ["a" * 64 + ".example"]}, "dhcp.search_domains[0]", "RFC 1035"),
    ({"search_domains": [("a" * 60 + ".") * 5]}, "dhcp.search_domains[0]", "253"),
    ({"search_domains": ["."]}, "dhcp.search_domains[0]", "DNS domain name"),
    ({"routes": [{"prefix": "198.51.100.0/24", "next_hop": "10.9.0.1"}]}, "dhcp.routes[0].next_hop",
     "inside the subnet"),
    ({"routes": [{"prefix": "fd00:1::/64", "next_hop": "10.0.0.9"}]}, "dhcp.routes[0]", "IPv4"),
    ({"routes": [{"prefix": "198.51.100.0/24"}]}, "dhcp.routes[0].next_hop", "not an IPv4 or IPv6"),
    ({"lease": 600}, "dhcp.lease", "unknown field"),
])
def test_bad_dhcp_options_are_refused_naming_the_field(dhcp, field, words):
    with pytest.raises(ModelError) as caught:
        VirtualSubnet.from_dict({"vsid": 5001, "prefixes": ["10.0.0.0/24"], "dhcp": dhcp}, "subnets[0]")
    assert caught.value.field == f"subnets[0].{field}"
    assert words in caught.value.problem


def test_the_defaults():
    assert DhcpOptions() == DhcpOptions.from_dict({})
    assert DhcpOptions().lease_time == 86400 and DhcpOptions().enabled


def test_a_gateway_tenant_keeps_the_subnets_dhcp_options_it_was_given():
    from nvfabric.gateway.tenants import Tenant

    body = {"route_targets": ["65000:100"], "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"], "dhcp": DHCP}]}
    tenant = Tenant.from_dict(body, "blue")
    assert tenant.as_dict()["subnets"][0]["dhcp"]["lease_time"] == 600
    assert Tenant.from_dict(tenant.as_dict(), "blue") == tenant
