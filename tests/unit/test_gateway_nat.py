"""Pure parts of the gateway: tenant and config validation (errors name the field), the per-tenant nftables
documents, and the NAT decision trace."""

from __future__ import annotations

import ipaddress
import json

import pytest

from nvfabric.bgp.config import ConfigError
from nvfabric.gateway import nat
from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.tenants import Tenant, check_tenants
from nvfabric.vnet.errors import ConflictError, ModelError


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


def _targets(cmds: list[dict]) -> set[str]:
    """Every chain, counter or map element target a list of commands touches."""
    out = set()
    for c in cmds:
        for objs in c.values():
            for kind, obj in objs.items():
                if kind in ("chain", "counter"):
                    out.add(obj["name"])
                elif kind == "rule":
                    out.add(obj["chain"])
                elif kind == "element":
                    for e in obj["elem"]:
                        if isinstance(e, list):
                            out.add(e[1]["jump"]["target"])
    return out


def test_a_tenant_change_touches_only_its_own_chains_and_elements() -> None:
    old = nat.TenantNat(Tenant.from_dict(body()), 1000)
    new = nat.TenantNat(Tenant.from_dict(body(floating_ips=[{"public": "203.0.113.22", "private": "10.0.0.5"}])),
                        1000)
    cmds = nat.transaction({"blue": (new, old)})["nftables"][1:]
    assert all(t.startswith("blue_") for t in _targets(cmds))
    assert not any("table" in c.get("add", {}) or "table" in c.get("delete", {}) for c in cmds)
    # the old floating IP's elements are deleted, the new one's added; the SNAT address's element is kept
    deleted = [e for c in cmds if "delete" in c for e in c["delete"]["element"]["elem"]]
    added = [e[0] for c in cmds if "add" in c and "element" in c["add"] for e in c["add"]["element"]["elem"]]
    assert sorted(deleted) == ["203.0.113.21", "203.0.113.21"]  # a4_zone and a4_dnat
    assert "203.0.113.22" in added and "203.0.113.11" not in added
    text = json.dumps(cmds)
    assert '"port": {"range": [2000, 3000]}' in text
    assert '"dnat": {"family": "ip", "addr": "10.0.0.5"}' in text


def test_snat_and_dnat_only_on_the_external_side() -> None:
    doc = nat.full_document([nat.TenantNat(Tenant.from_dict(body()), 1000)], ["eth2"])
    base = {c["add"]["rule"]["chain"]: c["add"]["rule"]["expr"] for c in doc["nftables"]
            if "add" in c and "rule" in c["add"] and c["add"]["rule"]["chain"] in ("snat", "dnat")}
    assert {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@ext"}} in base["snat"]
    assert {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@ext"}} in base["dnat"]
    ext = {"add": {"element": {"family": "inet", "table": "nvfgw", "name": "ext", "elem": ["eth2"]}}}
    assert ext in doc["nftables"]


def test_delete_removes_elements_before_chains() -> None:
    old = nat.TenantNat(Tenant.from_dict(body()), 1000)
    cmds = nat.transaction({"blue": (None, old)})["nftables"][1:]
    kinds = [next(iter(c["delete"])) for c in cmds]
    assert kinds.index("chain") > max(i for i, k in enumerate(kinds) if k == "element")
    assert {c["delete"]["chain"]["name"] for c in cmds if "chain" in c["delete"]} == {
        f"blue_{k}" for k in nat.CHAINS}


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
    doc = {"nftables": [{"counter": {"family": "inet", "table": "nvfgw", "name": "blue_out", "packets": 3,
                                     "bytes": 300}},
                        {"counter": {"family": "inet", "table": "nvfgw", "name": "blue_drops", "packets": 1,
                                     "bytes": 60}},
                        {"counter": {"family": "inet", "table": "other", "name": "out", "packets": 9, "bytes": 9}}]}
    assert nat.parse_counters(doc) == {"blue": nat.TenantCounters(packets_out=3, bytes_out=300, drops=1)}


def test_public_routes_announced_upstream() -> None:
    from nvfabric.gateway.upstream import public_routes

    t = Tenant.from_dict(body(snat=["203.0.113.11", "2001:db8:113::11"]))
    routes = public_routes([t], ipaddress.ip_address("203.0.113.2"), None)
    assert sorted(str(r.prefix) for r in routes.values()) == ["203.0.113.11/32", "203.0.113.21/32"]
    assert {str(r.next_hop) for r in routes.values()} == {"203.0.113.2"}
    routes = public_routes([t], ipaddress.ip_address("203.0.113.2"), ipaddress.ip_address("2001:db8:113::2"))
    assert "2001:db8:113::11/128" in {str(r.prefix) for r in routes.values()}


def test_an_upstream_needs_our_external_address() -> None:
    with pytest.raises(ConfigError, match=r"^external\.address4: required with an IPv4 upstream \(upstream\[0\]\)"):
        GatewayConfig.from_dict({**config(), "upstream": [{"address": "203.0.113.1", "asn": 64496}]})


def test_each_vsid_is_marked_and_only_outside_arrivals_are_routed_by_mark() -> None:
    from nvfabric.gateway.config import External
    from nvfabric.gateway.dataplane import TC_BLOCK, gateway_globals, tenant_extras
    from nvfabric.vnet.kernel.objects import Clsact, FlowerMark, FwmarkRule, ViaRoute

    t = Tenant.from_dict(body(subnets=[{"vsid": 5001, "prefixes": ["10.0.0.0/24"]},
                                       {"vsid": 5002, "prefixes": ["10.0.1.0/24"]}]))
    ext = External(("eth2",), ipaddress.ip_address("203.0.113.1"), None)
    extras = tenant_extras(t, 1000, ext)
    assert FwmarkRule(4, 1000, 1000, 899, iif="eth2") in extras and FwmarkRule(6, 1000, 1000, 899, iif="eth2") in extras
    assert [o for o in extras if isinstance(o, ViaRoute)] == [ViaRoute(1000, "0.0.0.0/0", "203.0.113.1", "eth2", 1)]
    # one filter per VSID on the NVGRE devices' shared block, matching the whole key (FlowID 0)
    marks = sorted((o for o in extras if isinstance(o, FlowerMark)), key=lambda o: o.vsid)
    assert marks == [FlowerMark(TC_BLOCK, 5001, 1000), FlowerMark(TC_BLOCK, 5002, 1000)]
    assert [o.key_id for o in marks] == [5001 << 8, 5002 << 8]
    assert gateway_globals(["nvf-gre4", "nvf-gre6"]) == {Clsact("nvf-gre4", TC_BLOCK), Clsact("nvf-gre6", TC_BLOCK)}


def test_default_routes_into_each_tenant() -> None:
    from nvfabric.gateway.evpn import default_routes

    cfg = GatewayConfig.from_dict({**config(body()), "provider_addresses": ["198.51.100.21"],
                                   "route_reflectors": [{"address": "198.51.100.100"}]})
    routes = list(default_routes(cfg.tenants, cfg).values())
    # IPv4 only: the tenant has an IPv6 subnet but no way out for it (no NAT66, no public prefix)
    assert [(str(r.prefix), r.vsid, str(r.next_hop), r.route_targets, r.router_mac) for r in routes] == [
        ("0.0.0.0/0", 5001, "198.51.100.21", ("65001:1",), "02:00:5e:10:00:01")]
    cfg6 = GatewayConfig.from_dict({**config(body(snat=["203.0.113.11", "2001:db8:113::11"])),
                                    "provider_addresses": ["198.51.100.21"]})
    assert sorted(str(r.prefix) for r in default_routes(cfg6.tenants, cfg6).values()) == ["0.0.0.0/0", "::/0"]


def test_the_other_gateways_are_those_with_a_default_route() -> None:
    from nvfabric.bgp.routes import PrefixRoute
    from nvfabric.gateway.evpn import other_gateways

    ours, other = ipaddress.ip_address("198.51.100.22"), ipaddress.ip_address("198.51.100.21")
    default = PrefixRoute(rd="198.51.100.21:5001", prefix=ipaddress.ip_network("0.0.0.0/0"), vsid=5001,
                          next_hop=other)
    own = PrefixRoute(rd="198.51.100.22:5001", prefix=ipaddress.ip_network("0.0.0.0/0"), vsid=5001, next_hop=ours)
    specific = PrefixRoute(rd="198.51.100.21:5001", prefix=ipaddress.ip_network("10.9.0.0/16"), vsid=5001,
                           next_hop=other)
    assert other_gateways([own, default], [ours]) == {other}
    assert other_gateways([own, specific], [ours]) == frozenset()
    with pytest.raises(ConfigError, match="^standby"):
        GatewayConfig.from_dict({**config(), "standby": True})


def test_the_gateway_decapsulates_only_what_its_tenants_lookup_records_vouch_for() -> None:
    from nvfabric.gateway.dataplane import decap_filter
    from nvfabric.vnet.decap import Element
    from nvfabric.vnet.model import LookupRecord

    t = Tenant.from_dict(body(subnets=[{"vsid": 5001, "prefixes": ["10.0.0.0/24"]},
                                       {"vsid": 5002, "prefixes": ["10.0.1.0/24"]}]))
    hv2, hv3 = ipaddress.ip_address("198.51.100.12"), ipaddress.ip_address("198.51.100.13")
    records = {"blue": [LookupRecord("blue", 5001, ipaddress.ip_address("10.0.0.12"), "02:00:00:00:00:01", hv2)],
               "gone": [LookupRecord("gone", 7001, ipaddress.ip_address("10.7.0.1"), "02:00:00:00:00:02", hv3)]}
    f = decap_filter({"blue": t}, {"blue": 1000}, records, False, None)
    assert f.pas == {hv2} and f.vsids == {5001: 1000, 5002: 1000}
    assert f.vouched == {Element.host(hv2, 1000, ipaddress.ip_address("10.0.0.12"))}
    # the internet (or any unknown PA) never enters a tenant; a restart keeps what it had until it learns
    assert f.judge(ipaddress.ip_address("203.0.113.9"), 5001 << 8, 0x0800, ipaddress.ip_address("10.0.0.12")) \
        == "unknown_pa"
    assert decap_filter({"blue": t}, {"blue": 1000}, {}, True, f).vouched == f.vouched
