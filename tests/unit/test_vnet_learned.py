"""vnet.learned: the incremental table of learned routes equals vnet/learn.py and vnet/policy.py's from-scratch
functions after any sequence of changes, and says what changed."""

from __future__ import annotations

import random

import pytest

from nvfabric.bgp.routes import MacIpRoute, PrefixRoute
from nvfabric.vnet import learn
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.learned import Change, LearnedTable
from nvfabric.vnet.model import LookupRecord, RoutingDomain, VirtualSubnet
from nvfabric.vnet.policy import screen
from tests.unit.agent_fixtures import BLUE, PA1, PA2, PA3, RED, ip, net

ROGUE = ip("203.0.113.9")  # outside the provider prefixes
PROVIDER = (net("198.51.100.0/24"),)
OURS = (PA1,)
GREEN = RoutingDomain("green", ("65001:3",), (VirtualSubnet(7001, (net("10.0.0.0/24"),), (ip("10.0.0.1"),)),))
BLUE2 = RoutingDomain("blue", ("65001:1", "65001:9"), (*BLUE.subnets, VirtualSubnet(
    5003, (net("10.0.3.0/24"),), (ip("10.0.3.1"),))))
CATALOGS = (
    Catalog.build({"blue": BLUE, "red": RED}, {}),
    Catalog.build({"blue": BLUE2, "red": RED, "green": GREEN}, {}),  # a subnet and a route target more
    Catalog.build({"red": RED, "green": GREEN}, {}),  # blue gone
)
VSIDS = (5001, 5002, 5003, 6001, 7001, 7777)
TARGETS = ("65001:1", "65001:2", "65001:3", "65001:9", "65009:9")
MACS = tuple(f"02:00:00:00:0{i}:01" for i in range(4))
PAS = (PA1, PA2, PA3, ip("198.51.100.2"), ROGUE)


def cas(vsid: int) -> list[str]:
    base = {5001: "10.0.0", 5002: "10.0.1", 5003: "10.0.3", 6001: "10.0.0", 7001: "10.0.0", 7777: "10.0.0"}[vsid]
    out = [f"{base}.{i}" for i in (1, 5, 6, 7, 255)]  # the gateway and the broadcast: refused
    return out + (["fd00:b::5", "fd00:b::6"] if vsid == 5001 else []) + ["10.9.9.9"]  # outside the subnet


def t2(rng: random.Random) -> MacIpRoute:
    vsid, pa = rng.choice(VSIDS), rng.choice(PAS)
    address = None if rng.random() < 0.1 else ip(rng.choice(cas(vsid)))
    targets = tuple(rng.sample(TARGETS, rng.choice((1, 1, 1, 2))))
    return MacIpRoute(rd=f"{pa}:{vsid}", mac=rng.choice(MACS), ip=address, vsid=vsid, next_hop=pa,
                      route_targets=targets, router_mac="02:00:5e:10:00:01", mobility_seq=rng.choice((0, 0, 1, 2)))


def t5(rng: random.Random) -> PrefixRoute:
    vsid, pa = rng.choice(VSIDS), rng.choice(PAS)
    prefix = net(rng.choice(("0.0.0.0/0", "10.0.0.7/32", "192.0.2.0/24", "::/0")))
    return PrefixRoute(rd=f"{pa}:{vsid}", prefix=prefix, vsid=vsid, next_hop=pa,
                       route_targets=(rng.choice(TARGETS),), router_mac="02:00:5e:10:00:02")


def reference(catalog: Catalog, routes: dict, provider) -> dict[str, object]:
    screened = screen(catalog, routes.values(), OURS, provider)
    accepted = list(screened.accepted)
    return {
        "cas": learn.remote_cas(catalog, accepted, OURS),
        "records": learn.lookup_records(catalog, accepted, OURS),
        "macs": learn.remote_macs(accepted, OURS),
        "prefixes": learn.remote_prefixes(catalog, accepted, OURS),
        "announced": set(learn.announced_prefixes(catalog, accepted, OURS)),
        "counts": screened.counts,
        "hops": {r.next_hop for r in accepted},
        "cas6": {(d, a) for d, a in learn.remote_cas(catalog, accepted, OURS) if a.version == 6},
    }


def incremental(table: LearnedTable) -> dict[str, object]:
    winners = dict(table.cas().items())
    return {
        "cas": winners,
        "records": sorted((LookupRecord(d, r.vsid, ca, r.mac, r.next_hop) for (d, ca), r in winners.items()),
                          key=lambda r: (r.routing_domain, r.ca.version, r.ca)),
        "macs": dict(table.macs()),
        "prefixes": sorted(table.prefixes(), key=lambda p: (p.routing_domain, p.prefix.version, p.prefix)),
        "announced": set(table.announced()),
        "counts": table.screened().counts,
        "hops": set(table.next_hops()),
        "cas6": {(d, a) for d in ("blue", "red", "green") for a in table.cas6_in(d)},
    }


@pytest.mark.parametrize("seed", range(40))
def test_random_changes_keep_the_table_equal_to_the_from_scratch_functions(seed: int) -> None:
    rng = random.Random(seed)
    catalog, provider = CATALOGS[0], PROVIDER
    table = LearnedTable(catalog, OURS, provider)
    routes: dict = {}
    before = reference(catalog, routes, provider)
    for _ in range(150):
        step = rng.random()
        batch: list = []
        rebuilt = False
        if step < 0.03:  # the catalog or the provider prefixes change between batches: the table is rebuilt
            catalog = rng.choice(CATALOGS)
            provider = rng.choice((PROVIDER, None))
            assert not table.matches(catalog, OURS, provider) or (catalog, provider) == (table._catalog, provider)
            table, change = table.rebuilt(catalog, OURS, provider)
            rebuilt = True
        else:
            for _ in range(rng.choice((1, 1, 1, 3, 10))):
                kind = rng.random()
                if kind < 0.45 or not routes:
                    route = t2(rng) if rng.random() < 0.85 else t5(rng)
                    batch.append((route.key, route))  # announce, or replace what the key had
                elif kind < 0.65:  # a move: the same CA and MAC elsewhere with a higher sequence
                    old = rng.choice([r for r in routes.values()])
                    if isinstance(old, MacIpRoute):
                        pa = rng.choice(PAS)
                        moved = MacIpRoute(rd=f"{pa}:{old.vsid}", mac=old.mac, ip=old.ip, vsid=old.vsid, next_hop=pa,
                                           route_targets=old.route_targets, router_mac=old.router_mac,
                                           mobility_seq=old.mobility_seq + rng.choice((0, 1)))
                        batch.append((moved.key, moved))
                elif kind < 0.9:  # a withdrawal
                    batch.append((rng.choice(list(routes)), None))
                else:  # withdrawn and announced again in one batch
                    key = rng.choice(list(routes))
                    batch += [(key, None), (key, routes[key])]
            for key, route in batch:
                if route is None:
                    routes.pop(key, None)
                else:
                    routes[key] = route
            change = table.apply(batch)
        after = reference(catalog, routes, provider)
        got = incremental(table)
        assert got == after
        assert incremental(LearnedTable(catalog, OURS, provider).load(routes.items())) == after  # (taken whole)
        assert change.rebuilt == rebuilt
        # the change says exactly which winners changed, old and new
        assert dict(change.cas) == _changed(before["cas"], after["cas"])
        assert dict(change.macs) == _changed(before["macs"], after["macs"])
        old_p = {(p.routing_domain, p.prefix): p for p in before["prefixes"]}
        new_p = {(p.routing_domain, p.prefix): p for p in after["prefixes"]}
        assert dict(change.prefixes) == _changed(old_p, new_p)
        assert change.next_hops_added == after["hops"] - before["hops"]
        assert change.next_hops_removed == before["hops"] - after["hops"]
        announced_keys = {(p.routing_domain, p.prefix) for p in before["announced"] ^ after["announced"]}
        assert set(change.announced) == announced_keys
        examples = table.screened().examples
        assert all(sum(1 for e in examples if e.reason == r) == min(n, 5) for r, n in after["counts"].items())
        before = after


def _changed(old: dict, new: dict) -> dict:
    return {k: (old.get(k), new.get(k)) for k in old.keys() | new.keys() if old.get(k) != new.get(k)}


def test_changes_chain_into_one() -> None:
    catalog = CATALOGS[0]
    table = LearnedTable(catalog, OURS, PROVIDER)
    route = MacIpRoute(rd="198.51.100.12:1", mac=MACS[0], ip=ip("10.0.0.5"), vsid=5001, next_hop=PA2,
                       route_targets=("65001:1",))
    moved = MacIpRoute(rd="198.51.100.13:1", mac=MACS[0], ip=ip("10.0.0.5"), vsid=5001, next_hop=PA3,
                       route_targets=("65001:1",), mobility_seq=1)
    first = table.apply([(route.key, route)])
    second = table.apply([(moved.key, moved)])
    both = first.then(second)
    assert both.cas == {("blue", ip("10.0.0.5")): (None, moved)}
    assert both.next_hops_added == {PA2, PA3}  # (the first route stays: another key)
    gone = both.then(table.apply([(route.key, None), (moved.key, None)]))
    assert gone.cas == {} and gone.next_hops_added == frozenset() and gone.next_hops_removed == frozenset()
    assert not Change() and Change().then(first) is first


def test_a_port_change_never_rebuilds() -> None:
    from tests.unit.agent_fixtures import VM_B1, catalog as with_ports
    table = LearnedTable(with_ports(), OURS, PROVIDER)
    assert table.matches(with_ports(VM_B1), OURS, PROVIDER)
    assert not table.matches(with_ports(VM_B1), OURS, None)
