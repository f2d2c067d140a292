import ipaddress

import pytest

from nvfabric.vnet.catalog import Catalog, NotFound
from nvfabric.vnet.errors import ConflictError, ModelError
from nvfabric.vnet.model import CustomerRoute, Port, RoutingDomain, VirtualSubnet

BLUE = {
    "route_targets": ["65000:100"],
    "subnets": [
        {"vsid": 5001, "prefixes": ["10.0.0.0/24", "fd00:b::/64"]},
        {"vsid": 5002, "prefixes": ["10.0.1.0/24"], "gateways": ["10.0.1.254"]},
    ],
}
RED = {"route_targets": ["65000:200"], "subnets": [{"vsid": 6001, "prefixes": ["10.0.0.0/24"]}]}


def port(**over):
    body = {"interface": "tap1", "mac": "02:00:00:00:00:01", "vsid": 5001, "addresses": ["10.0.0.5", "fd00:b::5"]}
    body.update(over)
    return Port.from_dict(body, name=over.pop("name", "vm1"))


def catalog():
    return Catalog().with_routing_domain(RoutingDomain.from_dict(BLUE, "blue")).with_routing_domain(
        RoutingDomain.from_dict(RED, "red")
    )


def test_subnet_gateway_defaults_to_the_first_host_address():
    rd = RoutingDomain.from_dict(BLUE, "blue")
    assert rd.subnet(5001).gateways == (ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("fd00:b::1"))
    assert rd.subnet(5002).gateways == (ipaddress.ip_address("10.0.1.254"),)


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"vsid": 4095, "prefixes": ["10.0.0.0/24"]}, "subnets[0].vsid", "4096..16777214"),
        ({"vsid": 16_777_215, "prefixes": ["10.0.0.0/24"]}, "subnets[0].vsid", "reserved"),
        ({"vsid": "5001", "prefixes": ["10.0.0.0/24"]}, "subnets[0].vsid", "integer"),
        ({"vsid": 5001, "prefixes": ["10.0.0.1/24"]}, "subnets[0].prefixes[0]", "host bits"),
        ({"vsid": 5001, "prefixes": []}, "subnets[0].prefixes", "needs an IPv4"),
        ({"vsid": 5001, "prefixes": ["10.0.0.0/24", "10.1.0.0/24"]}, "subnets[0].prefixes", "at most one"),
        ({"vsid": 5001, "prefixes": ["10.0.0.0/24"], "gateways": ["10.9.0.1"]}, "subnets[0].gateways[0]",
         "not a host address"),
        ({"vsid": 5001, "prefixes": ["10.0.0.0/24"], "vlan": 3}, "subnets[0].vlan", "unknown field"),
    ],
)
def test_bad_subnets_name_the_field(body, field, words):
    with pytest.raises(ModelError) as info:
        RoutingDomain.from_dict({"route_targets": ["65000:1"], "subnets": [body]}, "blue")
    assert info.value.field == field
    assert words in str(info.value)


def test_routing_domain_checks():
    with pytest.raises(ModelError, match="route_targets: a routing domain needs"):
        RoutingDomain.from_dict({"route_targets": []}, "blue")
    with pytest.raises(ModelError, match=r"route_targets\[0\]"):
        RoutingDomain.from_dict({"route_targets": ["nope"]}, "blue")
    with pytest.raises(ModelError, match="name"):
        RoutingDomain.from_dict({"route_targets": ["65000:1"]}, "Blue Team")
    with pytest.raises(ModelError, match="does not match the name in the path"):
        RoutingDomain.from_dict({"name": "red", "route_targets": ["65000:1"]}, "blue")
    two = {"route_targets": ["65000:1"], "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/16"]},
                                                     {"vsid": 5002, "prefixes": ["10.0.1.0/24"]}]}
    with pytest.raises(ModelError, match=r"subnets\[1\]\.prefixes: overlaps subnets\[0\]"):
        RoutingDomain.from_dict(two, "blue")


@pytest.mark.parametrize(
    "over, field, words",
    [
        ({"mac": "01:00:5e:00:00:01"}, "mac", "multicast"),
        ({"mac": "ff:ff:ff:ff:ff:ff"}, "mac", "multicast"),
        ({"mac": "02:00:00:00:00"}, "mac", "not a MAC"),
        ({"mac": "00:00:00:00:00:00"}, "mac", "all-zero"),
        ({"mac": 17}, "mac", "string"),
        ({"vsid": 12}, "vsid", "4096"),
        ({"addresses": ["10.0.0.300"]}, "addresses[0]", "not an IPv4 or IPv6"),
        ({"addresses": []}, "addresses", "at least one"),
        ({"interface": "a-very-long-interface-name"}, "interface", "must match"),
        ({"mtu": 100}, "mtu", "1280"),
        ({"vlan": 7}, "vlan", "unknown field"),
        ({"port_security": "no"}, "port_security", "true or false"),
        ({"allowed_addresses": "10.9.0.0/24"}, "allowed_addresses", "must be a list"),
        ({"allowed_addresses": ["10.9.0.1/24"]}, "allowed_addresses[0]", "host bits set"),
        ({"allowed_addresses": ["10.9.0.0/24", "fd00::/64", "10.9.0.0/24"]}, "allowed_addresses[2]",
         "duplicates allowed_addresses[0]"),
        ({"allowed_addresses": ["nowhere"]}, "allowed_addresses[0]", "not a network prefix"),
    ],
)
def test_bad_ports_name_the_field(over, field, words):
    with pytest.raises(ModelError) as info:
        port(**over)
    assert info.value.field == field
    assert words in str(info.value)


@pytest.mark.parametrize("mac", ["00-15-5D-01-02-03", "0015.5d01.0203", "00:15:5D:01:02:03", "00155d010203"])
def test_a_port_mac_in_any_common_notation_is_held_canonical(mac):
    assert port(mac=mac).mac == "00:15:5d:01:02:03"
    built = Port("vm1", "tap1", mac, 5001, (ipaddress.ip_address("10.0.0.5"),))  # not from JSON: the same
    assert built.mac == "00:15:5d:01:02:03" and built == port(mac="00:15:5d:01:02:03", addresses=["10.0.0.5"])


def test_catalog_accepts_overlapping_tenants_and_finds_ports():
    cat = catalog().with_port(port()).with_port(port(name="red1", interface="tap2", vsid=6001, addresses=["10.0.0.5"]))
    assert cat.port_with("blue", ipaddress.ip_address("10.0.0.5")).name == "vm1"
    assert cat.port_with("red", ipaddress.ip_address("10.0.0.5")).name == "red1"
    assert cat.subnet(6001)[0].name == "red"


def test_catalog_refuses_what_does_not_fit_and_keeps_the_old_one():
    cat = catalog().with_port(port())
    with pytest.raises(ModelError, match=r"addresses\[0\].*outside virtual subnet 5002"):
        cat.with_port(port(name="vm2", interface="tap2", vsid=5002))
    with pytest.raises(ConflictError, match="CA already used by port vm1 in routing domain blue"):
        cat.with_port(port(name="vm2", interface="tap2", addresses=["10.0.0.5"]))
    with pytest.raises(ConflictError, match="already used by port vm1"):
        cat.with_port(port(name="vm2", addresses=["10.0.0.6"]))
    with pytest.raises(ModelError, match="gateway"):
        cat.with_port(port(name="vm2", interface="tap2", addresses=["10.0.0.1"]))
    with pytest.raises(ConflictError, match="no routing domain has this VSID"):
        cat.with_port(port(name="vm2", interface="tap2", vsid=7777))
    with pytest.raises(ModelError, match="no such interface"):
        cat.with_port(port(name="vm2", interface="tap9", addresses=["10.0.0.9"]), interface_exists=lambda n: False)
    with pytest.raises(ConflictError, match="still has ports: vm1"):
        cat.without_routing_domain("blue")
    shrunk = RoutingDomain.from_dict({"route_targets": ["65000:100"],
                                      "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}]}, "blue")
    with pytest.raises(ModelError, match=r"addresses\[1\].*outside virtual subnet 5001"):
        cat.with_routing_domain(shrunk)  # vm1's IPv6 CA would lose its prefix
    stolen = RoutingDomain.from_dict({"route_targets": ["65000:3"],
                                      "subnets": [{"vsid": 5001, "prefixes": ["10.9.0.0/24"]}]}, "green")
    with pytest.raises(ConflictError, match="VSID already in routing domain blue"):
        cat.with_routing_domain(stolen)
    assert list(cat.ports) == ["vm1"]  # every refusal left the catalog as it was
    with pytest.raises(NotFound, match="no port named 'vm9'"):
        cat.without_port("vm9")
    assert cat.without_port("vm1").ports == {}


def test_customer_route_families_must_match():
    with pytest.raises(ModelError, match="next_hop"):
        CustomerRoute(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("fd00::1"))
    assert CustomerRoute(ipaddress.ip_network("::/0")).next_hop is None


def test_subnet_direct_construction_validates():
    with pytest.raises(ModelError, match="gateways"):
        VirtualSubnet(5001, (ipaddress.ip_network("10.0.0.0/24"),), (ipaddress.ip_address("10.0.0.0"),))


@pytest.mark.parametrize("routes, field, words", [
    ([{"prefix": "192.168.5.0/24", "next_hop": "10.9.9.9"}], "customer_routes[0].next_hop",
     "not in any virtual subnet"),
    ([{"prefix": "192.168.5.0/24", "next_hop": "fd00::5"}], "customer_routes[0].next_hop", "same family"),
    ([{"prefix": "192.168.5.0/33"}], "customer_routes[0].prefix", ""),
    ([{"prefix": "192.168.5.0/24", "metric": "low"}], "customer_routes[0].metric", "integer"),
    ([{"prefix": "192.168.5.0/24", "via": "10.0.0.5"}], "customer_routes[0].via", ""),
    ([{"prefix": "192.168.5.0/24", "next_hop": "10.0.0.5"}, {"prefix": "192.168.5.0/24"}],
     "customer_routes[1].prefix", "already routed by customer_routes[0]"),
])
def test_bad_customer_routes_name_the_field(routes, field, words):
    body = {"name": "blue", "route_targets": ["65000:1"], "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}],
            "customer_routes": routes}
    with pytest.raises(ModelError) as exc:
        RoutingDomain.from_dict(body)
    assert exc.value.field == field and words in str(exc.value)


def test_customer_routes_round_trip_through_the_saved_form():
    from nvfabric.hostagent.state import routing_domain_to_dict

    rd = RoutingDomain.from_dict({"name": "blue", "route_targets": ["65000:1"],
                                  "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}],
                                  "customer_routes": [{"prefix": "0.0.0.0/0", "next_hop": "10.0.0.5", "metric": 5},
                                                      {"prefix": "10.0.0.128/25"}]})
    assert rd.customer_routes[1] == CustomerRoute(ipaddress.ip_network("10.0.0.128/25"))
    assert RoutingDomain.from_dict(routing_domain_to_dict(rd)) == rd


def test_port_security_is_on_by_default_and_round_trips_with_allowed_addresses():
    plain = port()
    assert plain.port_security is True and plain.allowed_addresses == ()
    body = port(port_security=False, allowed_addresses=["192.168.50.0/24", "fd00:50::/64"]).to_dict()
    assert body["port_security"] is False and body["allowed_addresses"] == ["192.168.50.0/24", "fd00:50::/64"]
    again = Port.from_dict(body)
    assert again.allowed_addresses == (ipaddress.ip_network("192.168.50.0/24"), ipaddress.ip_network("fd00:50::/64"))
    assert again == Port.from_dict(again.to_dict())
    # a body (or a state file) written before port security: the defaults
    old = {k: v for k, v in plain.to_dict().items() if k not in ("port_security", "allowed_addresses")}
    assert Port.from_dict(old) == plain
