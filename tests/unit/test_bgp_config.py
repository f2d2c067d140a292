"""bgp/config.py: typed config from YAML; every error names the field."""

from __future__ import annotations

import ipaddress

import pytest

from nvfabric.bgp import config
from nvfabric.bgp.routes import Family, MacIpRoute, PrefixRoute

GOOD = """
asn: 65000
router_id: 198.51.100.1
hold_time: 30
families: [l2vpn-evpn, ipv6-unicast]
listen: {address: 198.51.100.1}
neighbors:
  - {address: 198.51.100.254, asn: 65000, md5_password: s3cret}
  - {address: "2001:db8::254", asn: 65000, passive: true}
dynamic_neighbors:
  - {prefix: 198.51.100.0/25, asn: 65000}
graceful_restart: {restart_time: 60, forwarding_preserved: false}
import_route_targets: ["65000:5001"]
routes:
  - {type: mac-ip, rd: "198.51.100.1:1", mac: "00:15:5D:01:02:03", ip: 10.1.0.5, vsid: 5001,
     next_hop: 198.51.100.1, route_targets: ["65000:5001"], router_mac: "02:00:5e:10:00:01", mobility_seq: 2}
  - {type: prefix, rd: "198.51.100.1:1", prefix: "fd00:c::/64", vsid: 5001, next_hop: "2001:db8::1"}
"""


def test_full_example_parses_into_typed_values(tmp_path):
    path = tmp_path / "speaker.yaml"
    path.write_text(GOOD)
    cfg = config.load(path)
    assert cfg.asn == 65000 and cfg.router_id == "198.51.100.1" and cfg.hold_time == 30
    assert cfg.families == (Family.L2VPN_EVPN, Family.IPV6_UNICAST)
    assert cfg.listen == config.Listen("198.51.100.1", 179)
    assert cfg.neighbors[0].md5_password == "s3cret" and cfg.neighbors[1].passive
    assert cfg.dynamic_neighbors[0].prefix == ipaddress.ip_network("198.51.100.0/25")
    assert cfg.graceful_restart == config.GracefulRestartConfig(True, 60, False, 360)
    assert cfg.import_route_targets == frozenset({"65000:5001"})
    mac_ip, prefix = cfg.routes
    assert isinstance(mac_ip, MacIpRoute) and mac_ip.mac == "00:15:5d:01:02:03" and mac_ip.mobility_seq == 2
    assert isinstance(prefix, PrefixRoute) and str(prefix.next_hop) == "2001:db8::1"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"asn": "x"}, "asn"),
        ({"router_id": "2001:db8::1"}, "router_id"),
        ({"hold_time": 2}, "hold_time"),
        ({"families": ["l2vpn-evpn", "vpnv4"]}, "families[1]"),
        ({"neighbours": [{"address": "198.51.100.2"}]}, "neighbours[0].asn"),
        ({"neighbours": [{"address": "198.51.100.2", "asn": 1, "md5_password": "x" * 81}]},
         "neighbours[0].md5_password"),
        ({"neighbours": [{"address": "198.51.100.2", "asn": 1, "colour": "red"}]}, "neighbours[0].colour"),
        ({"dynamic_neighbours": [{"prefix": "198.51.100.1/24", "asn": 1}], "listen": {"address": "198.51.100.1"}},
         "dynamic_neighbours[0].prefix"),
        ({"dynamic_neighbours": [{"prefix": "198.51.100.0/24", "asn": 1}]}, "dynamic_neighbours"),
        ({"neighbors": [{"address": "198.51.100.2"}]}, "neighbors[0].asn"),
        ({"dynamic_neighbors": [{"prefix": "198.51.100.0/24", "asn": 1}]}, "dynamic_neighbors"),
        ({"neighbors": [], "neighbours": []}, "neighbours"),
        ({"graceful_restart": {"restart_time": 5000}}, "graceful_restart.restart_time"),
        ({"import_route_targets": ["5001"]}, "import_route_targets[0]"),
        ({"routes": [{"type": "mac-ip", "rd": "1:1", "mac": "zz", "vsid": 1, "next_hop": "198.51.100.1"}]},
         "routes[0].mac"),
        ({"routes": [{"type": "mac-ip", "rd": "1:1", "mac": "00:00:00:00:00:01", "vsid": 1 << 24,
                      "next_hop": "198.51.100.1"}]}, "routes[0].vsid"),
        ({"routes": [{"type": "evpn-3"}]}, "routes[0].type"),
    ],
)
def test_errors_name_the_field(change, field):
    data = {"asn": 65000, "router_id": "198.51.100.1", **change}
    with pytest.raises(config.ConfigError) as err:
        config.parse(data)
    assert err.value.field == field, err.value
    assert str(err.value).startswith(f"{field}: ")


def test_neighbors_is_an_alias_of_neighbors():
    """`neighbors` is the spelling (as the API's /v1/neighbors); the British one reads the same."""
    peers = [{"address": "198.51.100.2", "asn": 1}]
    dynamic = [{"prefix": "198.51.100.0/25", "asn": 1}]
    base = {"asn": 65000, "router_id": "198.51.100.1", "listen": {"address": "198.51.100.1"}}
    assert (config.parse({**base, "neighbors": peers, "dynamic_neighbors": dynamic})
            == config.parse({**base, "neighbours": peers, "dynamic_neighbours": dynamic}))


def test_unreadable_and_invalid_files_say_so(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("asn: [")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(bad)


def test_bfd_true_false_or_a_mapping_on_every_kind_of_peer():
    from nvfabric.bgp.bfd import BfdAuth, BfdConfig

    cfg = config.parse({"asn": 65000, "router_id": "198.51.100.1", "listen": {"address": "198.51.100.1"},
                        "neighbors": [{"address": "198.51.100.2", "asn": 65000, "bfd": True},
                                      {"address": "198.51.100.3", "asn": 65000, "bfd": False},
                                      {"address": "198.51.100.4", "asn": 65000},
                                      {"address": "198.51.100.5", "asn": 65000, "bfd": {
                                          "transmit_interval": 100, "receive_interval": 200, "multiplier": 5,
                                          "passive": True, "auth": {"type": "keyed-sha1", "key_id": 7,
                                                                    "password": "s3cret"}}}],
                        "dynamic_neighbors": [{"prefix": "198.51.100.128/25", "asn": 65000, "bfd": True}]})
    assert [n.bfd for n in cfg.neighbors] == [BfdConfig(), None, None, BfdConfig(
        100, 200, 5, True, BfdAuth("keyed-sha1", 7, "s3cret"))]
    assert BfdConfig() == BfdConfig(300, 300, 3, False, None)
    assert cfg.dynamic_neighbors[0].bfd == BfdConfig()
    top = config.Reader({"route_reflectors": [{"address": "198.51.100.9", "bfd": {"multiplier": 4}}]}, "")
    (peer,) = config.read_peers(top, "route_reflectors", 65000)
    assert peer.bfd == BfdConfig(multiplier=4) and peer.neighbor().bfd == peer.bfd


@pytest.mark.parametrize(
    "bfd, field",
    [
        ("yes", "route_reflectors[0].bfd"),
        (1, "route_reflectors[0].bfd"),
        ({"multiplier": 0}, "route_reflectors[0].bfd.multiplier"),
        ({"multiplier": 256}, "route_reflectors[0].bfd.multiplier"),
        ({"transmit_interval": 9}, "route_reflectors[0].bfd.transmit_interval"),
        ({"receive_interval": 60001}, "route_reflectors[0].bfd.receive_interval"),
        ({"receive_interval": True}, "route_reflectors[0].bfd.receive_interval"),
        ({"passive": "no"}, "route_reflectors[0].bfd.passive"),
        ({"echo": True}, "route_reflectors[0].bfd.echo"),
        ({"auth": "s3cret"}, "route_reflectors[0].bfd.auth"),
        ({"auth": {"type": "md5", "key_id": 1, "password": "x"}}, "route_reflectors[0].bfd.auth.type"),
        ({"auth": {"type": "simple", "password": "x"}}, "route_reflectors[0].bfd.auth.key_id"),
        ({"auth": {"type": "simple", "key_id": 256, "password": "x"}}, "route_reflectors[0].bfd.auth.key_id"),
        ({"auth": {"type": "simple", "key_id": 1}}, "route_reflectors[0].bfd.auth.password"),
        ({"auth": {"type": "simple", "key_id": 1, "password": "x" * 17}}, "route_reflectors[0].bfd.auth.password"),
        ({"auth": {"type": "keyed-sha1", "key_id": 1, "password": ""}}, "route_reflectors[0].bfd.auth.password"),
        ({"auth": {"type": "meticulous-keyed-sha1", "key_id": 1, "password": "x" * 21}},
         "route_reflectors[0].bfd.auth.password"),
        ({"auth": {"type": "simple", "key_id": 1, "password": "x", "salt": 1}}, "route_reflectors[0].bfd.auth.salt"),
    ],
)
def test_bfd_errors_name_the_field(bfd, field):
    top = config.Reader({"route_reflectors": [{"address": "198.51.100.9", "bfd": bfd}]}, "")
    with pytest.raises(config.ConfigError) as err:
        config.read_peers(top, "route_reflectors", 65000)
    assert err.value.field == field, err.value


def test_bfd_on_a_dynamic_range_and_its_errors():
    base = {"asn": 65000, "router_id": "198.51.100.1", "listen": {"address": "198.51.100.1"}}
    with pytest.raises(config.ConfigError) as err:
        config.parse({**base, "dynamic_neighbors": [{"prefix": "198.51.100.0/24", "asn": 65000,
                                                     "bfd": {"multiplier": 300}}]})
    assert err.value.field == "dynamic_neighbors[0].bfd.multiplier"
