"""Pure parts of the gateway: tenant and config validation (errors name the field), the per-tenant nftables
documents, and the NAT decision trace."""

from __future__ import annotations

import ipaddress
import json

import pytest

from bgp.config import ConfigError
from gateway import nat
from gateway.config import GatewayConfig
from gateway.tenants import Tenant, check_tenants
from vnet.errors import ConflictError, ModelError


def body(name: str = "blue", vsid: int = 5001, **extra: object) -> dict:
    return {"name": name, "route_targets": ["65001:1"],
            "subnets": [{"vsid": vsid, "prefixes": ["10.0.0.0/24", "fd00:1::/64"]}],
            "snat": [{"address": "203.0.113.11", "ports": "2000-3000"}],
            "floating_ips": [{"public": "203.0.113.21", "private": "10.0.0.5"}], **extra}


def config(*tenants: dict) -> dict:
    return {"asn": 65001, "router_id": "198.51.100.21", "external": {"interfaces": ["eth2"]}, "tenants": list(tenants)}


@pytest.mark.parametrize("change, field", [
    ({"snat": [{"address": "203.0.113.11", "ports": "80-90"}]}, "snat[0].ports"),
    ({"snat": [{"address": "nope"}]}, "snat[0].address"),
    ({"snat": ["203.0.113.11", "203.0.113.12"]}, "snat"),
    ({"floating_ips": [{"public": "203.0.113.21", "private": "10.9.0.5"}]}, "floating_ips[0].private"),
    ({"floating_ips": [{"public": "203.0.113.21", "private": "fd00:1::5"}]}, "floating_ips[0].private"),
    ({"floating_ips": [{"public": "203.0.113.21", "private": "10.0.0.5"},
                       {"public": "203.0.113.21", "private": "10.0.0.6"}]}, "floating_ips[1].public"),
    ({"floating_ips": [{"public": "203.0.113.21", "private": "10.0.0.5"},
                       {"public": "203.0.113.22", "private": "10.0.0.5"}]}, "floating_ips[1].private"),
    ({"floating_ips": [{"public": "203.0.113.11", "private": "10.0.0.5"}]}, "snat[0].address"),
    ({"public_prefixes": ["2001:db8:5::/48"]}, "public_prefixes[0]"),
    ({"public_prefixes": ["10.0.0.0/24"]}, "public_prefixes[0]"),
    ({"flaoting_ips": []}, "flaoting_ips"),
    ({"subnets": [{"vsid": 12, "prefixes": ["10.0.0.0/24"]}]}, "subnets[0].vsid"),
])
def test_a_bad_tenant_is_refused_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(ModelError) as refused:
        Tenant.from_dict({**body(), **change})
    assert refused.value.field == field


def test_config_errors_carry_the_tenant_path() -> None:
    bad = body("red", 6001, snat=["203.0.113.11"], floating_ips=[])
    with pytest.raises(ConfigError, match=r"^tenants\[1\]\.snat\[0\]\.address: .*already used by tenant 'blue'"):
        GatewayConfig.from_dict(config(body(), bad))
    with pytest.raises(ConfigError, match=r"^tenants\[0\]\.floating_ips\[0\]\.private"):
        GatewayConfig.from_dict(config(body(floating_ips=[{"public": "203.0.113.21", "private": "x"}])))
    with pytest.raises(ConfigError, match=r"^external\.interfaces"):
        GatewayConfig.from_dict({**config(), "external": {"interfaces": []}})
    with pytest.raises(ConfigError, match=r"^tenants\[1\]\.name"):
        GatewayConfig.from_dict(config(body(), body(vsid=7001)))


def test_check_tenants_refuses_a_shared_vsid_or_public_address() -> None:
    blue = Tenant.from_dict(body())
    red = Tenant.from_dict(body("red", 5001, snat=["203.0.113.12"], floating_ips=[]))
    with pytest.raises(ConflictError) as refused:
        check_tenants({"blue": blue, "red": red})
    assert refused.value.field == "subnets[0].vsid"


def test_get_body_is_put_body() -> None:
    t = Tenant.from_dict(body(public_prefixes=[], snat=[{"address": "203.0.113.11", "ports": "2000-3000"}]))
    assert Tenant.from_dict(t.as_dict()) == t


def _rules(doc: dict) -> list[dict]:
    return [c["add"]["rule"] for c in doc["nftables"] if "add" in c and "rule" in c["add"]]


def test_a_tenant_change_touches_only_its_own_table() -> None:
    blue = nat.TenantNat(Tenant.from_dict(body()), 1000)
    doc = nat.transaction({"blue": blue}, ["eth2"])
    tables = {c[verb][kind]["table" if kind != "table" else "name"]
              for c in doc["nftables"] for verb in ("add", "delete") if verb in c for kind in c[verb]}
    assert tables == {"nvfgw-blue"}
    text = json.dumps(doc)
    # SNAT by the external interface only, with the port range; ICMP SNAT without ports
    snat = [r for r in _rules(doc) if r["chain"] == "snat"]
    assert all({"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth2"}} in r["expr"]
               for r in snat)
    assert '"port": {"range": [2000, 3000]}' in text
    assert '"dnat": {"family": "ip", "addr": "10.0.0.5"}' in text
    # the zone is set from the mark, in both directions (not only `ct original zone`)
    assert {"mangle": {"key": {"ct": {"key": "zone"}}, "value": 1000}} in _rules(doc)[0]["expr"]


def test_delete_is_one_table_and_safe_when_absent() -> None:
    doc = nat.transaction({"gone": None}, ["eth2"])
    assert doc["nftables"][1:] == [{"add": {"table": {"family": "inet", "name": "nvfgw-gone"}}},
                                   {"delete": {"table": {"family": "inet", "name": "nvfgw-gone"}}}]


def test_a_tenant_id_must_fit_a_conntrack_zone() -> None:
    with pytest.raises(ValueError, match="conntrack zone"):
        nat.TenantNat(Tenant.from_dict(body()), 70000)


def _flow(src: str, sport: int, dst: str, dport: int, proto: str = "tcp") -> nat.FiveTuple:
    return nat.FiveTuple(proto, ipaddress.ip_address(src), sport, ipaddress.ip_address(dst), dport)


def test_trace_explains_each_decision() -> None:
    tenants = [nat.TenantNat(Tenant.from_dict(body()), 1000),
               nat.TenantNat(Tenant.from_dict(body("red", 6001, snat=["203.0.113.12"],
                                                   floating_ips=[{"public": "203.0.113.22",
                                                                  "private": "10.0.0.5"}])), 1001)]
    out = nat.trace(tenants, _flow("10.0.0.6", 40000, "203.0.113.1", 80), "red")
    assert (out.action, str(out.translated.src), out.zone) == ("snat", "203.0.113.12", 1001)
    out = nat.trace(tenants, _flow("10.0.0.5", 40000, "203.0.113.1", 80), "blue")
    assert (out.action, str(out.translated.src)) == ("snat", "203.0.113.21")
    out = nat.trace(tenants, _flow("203.0.113.1", 5555, "203.0.113.22", 22), None)
    assert (out.tenant, out.action, str(out.translated.dst)) == ("red", "dnat", "10.0.0.5")
    assert nat.trace(tenants, _flow("10.9.9.9", 1, "203.0.113.1", 80), "blue").action == "drop"
    assert nat.trace(tenants, _flow("203.0.113.1", 1, "203.0.113.99", 80), None).tenant is None
    assert nat.trace(tenants, _flow("10.0.0.6", 0, "203.0.113.1", 0, "icmp"), "blue").translated.sport == 0


def test_counters_are_read_per_tenant_table() -> None:
    doc = {"nftables": [{"counter": {"family": "inet", "table": "nvfgw-blue", "name": "out", "packets": 3,
                                     "bytes": 300}},
                        {"counter": {"family": "inet", "table": "nvfgw-blue", "name": "drops", "packets": 1,
                                     "bytes": 60}},
                        {"counter": {"family": "inet", "table": "other", "name": "out", "packets": 9, "bytes": 9}}]}
    assert nat.parse_counters(doc) == {"blue": nat.TenantCounters(packets_out=3, bytes_out=300, drops=1)}
