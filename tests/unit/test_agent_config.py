"""hostagent.config: a good file parses into typed values; every bad one names its field."""

from __future__ import annotations

import ipaddress

import pytest

from nvfabric.hostagent.config import DEFAULT_LISTEN, AgentConfig, ConfigError, load

GOOD = {
    "asn": 65001, "router_id": "198.51.100.11", "provider_addresses": ["198.51.100.11", "2001:db8::11"],
    "route_reflectors": [{"address": "198.51.100.100", "md5_password": "x"},
                         {"address": "2001:db8::101", "asn": 65002}],
    "state_dir": "/tmp/x",
    "routing_domains": [{"name": "blue", "route_targets": ["65001:1"],
                         "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}]}],
}


def test_good_config_is_typed_with_defaults():
    c = AgentConfig.from_dict(GOOD)
    assert c.next_hop == ipaddress.ip_address("198.51.100.11")
    assert c.route_reflectors[0].asn == 65001 and c.route_reflectors[0].md5_password == "x"
    assert c.route_reflectors[1].asn == 65002
    assert c.api.listen == DEFAULT_LISTEN == "127.0.0.1:8500" and c.api.token is None
    assert c.underlay_mtu == 1500 and c.netns is None and c.router_mac == "02:00:5e:10:00:01"
    assert c.routing_domains[0].subnets[0].gateways == (ipaddress.ip_address("10.0.0.1"),)


def test_load_reads_yaml(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text("asn: 65001\nrouter_id: 198.51.100.12\nprovider_addresses: [198.51.100.12]\n"
                    "route_reflectors: [{address: 198.51.100.100}]\nstate_dir: /tmp/s\nnetns: hv2\n"
                    "api: {listen: '[::1]:9000', token: t}\n")
    c = load(path)
    assert c.netns == "hv2" and c.api.host_port == ("::1", 9000) and c.api.token == "t"


@pytest.mark.parametrize("change, field", [
    ({"asn": "x"}, "asn"),
    ({"asn": 0}, "asn"),
    ({"router_id": "2001:db8::1"}, "router_id"),
    ({"provider_addresses": []}, "provider_addresses"),
    ({"provider_addresses": ["nope"]}, "provider_addresses[0]"),
    ({"provider_addresses": ["198.51.100.1", "198.51.100.2"]}, "provider_addresses"),
    ({"route_reflectors": []}, "route_reflectors"),
    ({"route_reflectors": [{"address": "x"}]}, "route_reflectors[0].address"),
    ({"route_reflectors": [{"address": "198.51.100.100", "pasword": "x"}]}, "route_reflectors[0].pasword"),
    ({"router_mac": "01:00:00:00:00:01"}, "router_mac"),
    ({"api": {"listen": "localhost"}}, "api.listen"),
    ({"api": {"tokn": "x"}}, "api.tokn"),
    ({"underlay_mtu": 100}, "underlay_mtu"),
    ({"routing_domains": [{"name": "blue", "route_targets": ["65001:1"], "subnets": [{"vsid": 12}]}]},
     "routing_domains[0].subnets[0].vsid"),
    ({"routing_domains": [GOOD["routing_domains"][0], GOOD["routing_domains"][0]]}, "routing_domains[1].name"),
    ({"state_dirr": "/x"}, "state_dirr"),
    ({"resync_interval": 0}, "resync_interval"),
    ({"resync_interval": -60}, "resync_interval"),
    ({"resync_interval": float("nan")}, "resync_interval"),
    ({"resync_interval": True}, "resync_interval"),
    ({"verify_interval": "1h"}, "verify_interval"),
    ({"verify_interval": 1e9}, "verify_interval"),
    ({"eor_timeout": 0}, "eor_timeout"),
])
def test_errors_name_the_field(change, field):
    with pytest.raises(ConfigError) as err:
        AgentConfig.from_dict({**GOOD, **change})
    assert err.value.field == field, str(err.value)


def test_missing_state_dir_and_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        AgentConfig.from_dict({k: v for k, v in GOOD.items() if k != "state_dir"})
    assert err.value.field == "state_dir"
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("asn: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(tmp_path / "bad.yaml")


def test_the_safety_nets_default_to_a_cheap_frequent_one_and_a_rare_full_one():
    c = AgentConfig.from_dict(GOOD)
    assert (c.resync_interval, c.verify_interval) == (60.0, 1800.0)
    c = AgentConfig.from_dict({**GOOD, "resync_interval": 30, "verify_interval": 600.5})
    assert (c.resync_interval, c.verify_interval) == (30.0, 600.5)
