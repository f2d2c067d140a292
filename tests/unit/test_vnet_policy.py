"""Conflicting routes resolved by precedence (vnet.desired), the import policy (vnet.policy) and route targets
the wire can carry (vnet.model): one bad route costs at most its own key, never a routing domain."""

from __future__ import annotations

import random

import pytest

from nvfabric.bgp.config import ConfigError
from nvfabric.bgp.routes import MacIpRoute, PrefixRoute
from nvfabric.hostagent.config import AgentConfig
from nvfabric.vnet.desired import desired_state
from nvfabric.vnet.errors import ModelError
from nvfabric.vnet.kernel.diff import by_key
from nvfabric.vnet.kernel.objects import EncapRoute, LocalPortRoute, ViaRoute, VrfAddress
from nvfabric.vnet.model import CustomerRoute, RemotePrefix, RoutingDomain
from nvfabric.vnet.policy import Judge, judge, pa_prefixes, screen
from tests.unit.agent_fixtures import PA1, PA2, VM_B1, VM_R1, catalog, ip, net
from tests.unit.test_api import AUTH, BLUE, agent, client, expect  # noqa: F401  (the API's fixtures)
from tests.unit.test_desired import HOST, REMOTE, TABLES, local

GW_PA = ip("198.51.100.21")
FABRIC = [net("198.51.100.0/24"), net("2001:db8::/64")]


def build(prefixes=(), routes=None, records=None):
    records = local(VM_B1, "blue") + local(VM_R1, "red") + REMOTE if records is None else records
    return desired_state(catalog(VM_B1, VM_R1), records, prefixes, routes or {}, HOST, TABLES)


def kinds(desired, domain="blue"):
    return [(c.prefix, c.winner, c.loser) for c in desired.conflicts_in.get(domain, ())]


def test_a_type5_host_route_equal_to_a_local_ca_loses_to_the_local_port():
    d = build(prefixes=[RemotePrefix("blue", net("10.0.0.10/32"), 5001, PA2)])
    assert LocalPortRoute(1000, "10.0.0.10/32", "tap-b1", src="10.0.0.1") in d.objects
    assert EncapRoute(1000, "10.0.0.10/32", 5001, str(PA2), "nvf-gre4") not in d.objects
    assert kinds(d) == [("10.0.0.10/32", "local", "remote_prefix")]
    assert d.conflicts_in["blue"][0].pa == str(PA2)
    by_key(d.partitions["blue"], "blue")  # one value per key: the reconciler takes it
    assert not d.conflicts_in.get("red")


def test_a_remote_ca_or_a_route_at_the_subnet_gateway_loses_to_the_gateways_own_address():
    claim = REMOTE + [REMOTE[0].__class__("blue", 5001, ip("10.0.0.1"), "02:00:00:00:66:66", PA2)]
    d = build(records=local(VM_B1, "blue") + claim, routes={"blue": [CustomerRoute(net("10.0.1.1/32"),
                                                                                   ip("10.0.0.10"), 10)]})
    assert VrfAddress("nvf-blue", "10.0.0.1") in d.objects
    assert not [o for o in d.objects if getattr(o, "prefix", None) in ("10.0.0.1/32", "10.0.1.1/32")]
    assert kinds(d) == [("10.0.0.1/32", "local", "remote_ca"), ("10.0.1.1/32", "local", "customer_route")]


def test_a_customer_default_via_an_appliance_beats_the_gateways_type5_default():
    gw = RemotePrefix("blue", net("0.0.0.0/0"), 5001, GW_PA)
    d = build(prefixes=[gw], routes={"blue": [CustomerRoute(net("0.0.0.0/0"), ip("10.0.0.10"))]})
    assert ViaRoute(1000, "0.0.0.0/0", "10.0.0.10", "tap-b1") in d.objects
    assert kinds(d) == [("0.0.0.0/0", "customer_route", "remote_prefix")]


def test_a_customer_route_beats_a_learned_prefix_and_a_remote_ca_beats_a_prefix():
    d = build(prefixes=[RemotePrefix("blue", net("192.168.0.0/16"), 5001, GW_PA),
                        RemotePrefix("blue", net("10.0.0.20/32"), 5001, GW_PA)],
              routes={"blue": [CustomerRoute(net("192.168.0.0/16"), ip("10.0.0.20"))]})
    assert EncapRoute(1000, "192.168.0.0/16", 5001, str(PA2), "nvf-gre4") in d.objects
    assert EncapRoute(1000, "10.0.0.20/32", 5001, str(PA2), "nvf-gre4") in d.objects
    assert sorted(kinds(d)) == [("10.0.0.20/32", "remote_ca", "remote_prefix"),
                                ("192.168.0.0/16", "customer_route", "remote_prefix")]


def test_without_a_collision_there_is_no_conflict_and_the_result_is_the_same_every_time():
    gw = RemotePrefix("blue", net("0.0.0.0/0"), 5001, GW_PA)
    first, second = build(prefixes=[gw]), build(prefixes=[gw])
    assert first.objects == second.objects and not first.conflicts_in


# ------------------------------------------------------------------------------------------- import policy

def t2(address, vsid=5001, pa=PA2, rt="65001:1", mac="02:00:00:00:b2:01"):
    return MacIpRoute(rd=f"{pa}:{vsid}", mac=mac, ip=ip(address), vsid=vsid, next_hop=pa, route_targets=(rt,))


def t5(prefix, vsid=5001, pa=GW_PA, rt="65001:1"):
    return PrefixRoute(rd=f"{pa}:{vsid}", prefix=net(prefix), vsid=vsid, next_hop=pa, route_targets=(rt,))


def test_import_policy_accepts_matching_routes_and_counts_each_refusal_by_reason():
    good = [t2("10.0.0.20"), t5("0.0.0.0/0"), t2("10.0.0.20", vsid=6001, rt="65001:2")]
    bad = {
        "route_target": [t2("10.0.0.21", rt="65001:2"), t5("10.9.0.0/16", vsid=5001, rt="65001:2"),
                         t5("::/0", vsid=9999, rt="65001:2")],
        "next_hop": [t2("10.0.0.22", pa=ip("192.0.2.66")), t5("0.0.0.0/0", pa=ip("192.0.2.66"))],
        "reserved_address": [t2("10.0.0.1"), t2("10.0.0.0"), t2("10.0.0.255")],
        "outside_subnet": [t2("10.0.1.5")],
    }
    others = [t2("10.0.0.30", vsid=7777, rt="65009:9"), t2("10.0.0.40", pa=PA1)]  # not ours, our own
    got = screen(catalog(), good + [r for rs in bad.values() for r in rs] + others, [PA1], FABRIC)
    assert list(got.accepted) == good
    assert got.counts == {reason: len(routes) for reason, routes in bad.items()}
    assert {e.reason for e in got.examples} == set(bad)
    assert got.as_dict()["refused"]["next_hop"] == 2


def test_without_provider_prefixes_next_hops_are_not_checked():
    assert screen(catalog(), [t2("10.0.0.22", pa=ip("192.0.2.66"))], [PA1], None).accepted


# --------------------------------------------------------------------------------- route target ranges

@pytest.mark.parametrize("target", ["70000:70000", "4294967296:1", "1.2.3.4:70000", "65001", "a:1", "1.2.3:4"])
def test_route_targets_the_wire_cannot_carry_are_refused_naming_the_field(target):
    with pytest.raises(ModelError) as err:
        RoutingDomain.from_dict({"name": "b", "route_targets": ["65001:1", target]}, where="routing_domains[0]")
    assert err.value.field == "routing_domains[0].route_targets[1]"


@pytest.mark.parametrize("target,canonical", [("65001:4294967295", "65001:4294967295"),
                                              ("4200000000:65535", "4200000000:65535"),
                                              ("192.0.2.1:65535", "192.0.2.1:65535"), ("065001:01", "65001:1")])
def test_route_targets_in_range_are_kept_in_canonical_form(target, canonical):
    assert RoutingDomain("b", (target,)).route_targets == (canonical,)


# ---------------------------------------------- route targets and provider prefixes at the API and in config

AGENT = {"asn": 65001, "router_id": "198.51.100.11", "provider_addresses": ["198.51.100.11"],
         "route_reflectors": [{"address": "198.51.100.100"}], "state_dir": "/tmp/x"}


@pytest.mark.parametrize("target", ["70000:70000", "4294967296:1", "1.2.3.4:70000"])
async def test_a_route_target_the_wire_cannot_carry_is_400_and_changes_nothing(client, agent, target):  # noqa: F811
    before = dict(agent.catalog.routing_domains)
    body = await expect(await client.put("/v1/routing-domains/blue", headers=AUTH,
                                         json={**BLUE, "route_targets": [target]}), 400, "invalid")
    assert body["field"] == "route_targets[0]"
    assert dict(agent.catalog.routing_domains) == before


def test_a_route_target_the_wire_cannot_carry_is_a_config_error_naming_the_field():
    domain = {"name": "blue", "route_targets": ["65001:1", "70000:70000"], "subnets": [{"vsid": 5001,
                                                                                      "prefixes": ["10.0.0.0/24"]}]}
    with pytest.raises(ConfigError) as err:
        AgentConfig.from_dict({**AGENT, "routing_domains": [domain]})
    assert err.value.field == "routing_domains[0].route_targets[1]"


def test_provider_prefixes_are_read_checked_and_default_to_the_pas_interface_prefixes():
    assert AgentConfig.from_dict(AGENT).provider_prefixes is None
    given = AgentConfig.from_dict({**AGENT, "provider_prefixes": ["198.51.100.0/24", "2001:db8::/64"]})
    assert given.provider_prefixes == (net("198.51.100.0/24"), net("2001:db8::/64"))
    for bad, field in ((["198.51.100.1/24"], "provider_prefixes[0]"), ([], "provider_prefixes"),
                       ("198.51.100.0/24", "provider_prefixes")):
        with pytest.raises(ConfigError) as err:
            AgentConfig.from_dict({**AGENT, "provider_prefixes": bad})
        assert err.value.field == field
    interfaces = {"127.0.0.1": 8, "198.51.100.11": 24, "2001:db8::11": 64}
    assert pa_prefixes([ip("198.51.100.11"), ip("2001:db8::11"), ip("192.0.2.9")], interfaces) == (
        net("198.51.100.0/24"), net("2001:db8::/64"))


def test_two_routes_of_one_kind_on_one_key_keep_the_same_one_whatever_the_order():
    from nvfabric.vnet.desired import resolve
    a = EncapRoute(1000, "10.9.0.0/16", 5001, "198.51.100.21", "nvf-gre4")
    b = EncapRoute(1000, "10.9.0.0/16", 5001, "198.51.100.22", "nvf-gre4")
    for order in ([a, b], [b, a]):
        kept, lost = resolve("blue", {"remote_prefix": order})
        assert kept == {a} and [(c.loser, c.pa) for c in lost] == [("remote_prefix", "198.51.100.22")]


def test_the_judge_of_a_table_gives_the_verdicts_judge_gives(monkeypatch):
    """vnet/policy.py `Judge` remembers per VSID and targets, and per next hop: every verdict must be the one
    `judge` gives, whatever the routes (accepted, each refusal, another tenant's), and when its memories start
    again."""
    rng = random.Random(7)
    cat = catalog(VM_B1, VM_R1)
    vsids, targets = (5001, 5002, 6001, 9999), (("65001:1",), ("65001:2",), ("65001:9",), (), ("65001:1", "65001:2"))
    hops = [ip("198.51.100.12"), ip("198.51.100.13"), ip("203.0.113.7"), ip("2001:db8::12")]
    addresses = [None, ip("10.0.0.20"), ip("10.0.0.1"), ip("10.0.0.0"), ip("10.0.0.255"), ip("10.9.0.1"),
                 ip("10.1.0.20"), ip("fd00:b::20")]
    routes = []
    for i in range(3000):
        vsid, rt, hop = rng.choice(vsids), rng.choice(targets), rng.choice(hops)
        if rng.random() < 0.2:
            routes.append(PrefixRoute(rd=f"65001:{vsid}", prefix=rng.choice(["10.5.0.0/16", "0.0.0.0/0"]), vsid=vsid,
                                      next_hop=hop, route_targets=rt))
        else:
            routes.append(MacIpRoute(rd=f"65001:{vsid}", mac=f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}",
                                     ip=rng.choice(addresses), vsid=vsid, next_hop=hop, route_targets=rt))
    for prefixes in (FABRIC, None):
        monkeypatch.setattr(Judge, "LIMIT", 3)  # (its memories start again many times)
        one = Judge(cat, prefixes)
        verdicts = [one(r) for r in routes]
        assert verdicts == [judge(cat, r, prefixes) for r in routes]
        assert set(verdicts) >= {(None, None), ("blue", None), ("blue", "route_target"),
                                         ("blue", "outside_subnet"), ("blue", "reserved_address")}
        if prefixes is not None:
            assert ("blue", "next_hop") in verdicts
