"""The injector's churn (lab/inject.py), pure: the routes it makes pass a host's import policy, a seed gives
the same changes, and each change is what it says (a move: the same CA at another PA, a higher sequence)."""

from __future__ import annotations

import ipaddress

import pytest

from nvfabric.lab import inject
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.model import RoutingDomain, VirtualSubnet
from nvfabric.vnet.policy import screen

SUBNETS = inject.parse_subnets(["5001,65001:1,10.64.0.0/22", "5002,65001:1,10.65.0.0/22"])
PROVIDER = ipaddress.ip_network("100.64.0.0/16")


def spec(pas: int = 50) -> inject.Spec:
    return inject.Spec(SUBNETS, PROVIDER, pas)


def test_the_table_passes_the_import_policy_of_a_host_with_those_subnets() -> None:
    domain = RoutingDomain("blue", ("65001:1",), tuple(
        VirtualSubnet(s.vsid, (s.prefix,), (s.prefix[1],)) for s in SUBNETS))
    catalog = Catalog.build({"blue": domain}, {})
    routes = inject.Churn.initial(spec(), 2000).routes()
    screened = screen(catalog, routes, [ipaddress.ip_address("198.51.100.11")], [PROVIDER])
    assert len(screened.accepted) == 2000 and screened.counts == {}
    assert len({r.key for r in routes}) == 2000 and len({r.next_hop for r in routes}) == 50


def test_a_seed_gives_the_same_changes_and_each_is_what_it_says() -> None:
    first = [t.changes for t in inject.Churn.initial(spec(), 500, seed=3).schedule(1000, 0.5)]
    churn = inject.Churn.initial(spec(), 500, seed=3)
    before = dict(churn.table)
    ticks = list(churn.schedule(1000, 0.5))
    assert [t.changes for t in ticks] == first
    assert sum(len(t.changes) for t in ticks) == 500  # 1000/s for 0.5 s
    seen: dict[str, tuple[str | None, int]] = {}
    for tick in ticks:
        assert len({c.ip for c in tick.changes}) == len(tick.changes)  # one change per CA per tick
        assert len(tick.announce) + len(tick.withdraw) == len(tick.changes)
        for c in tick.changes:
            i = next(n for n in range(churn.next_ca) if str(spec().ca(n)[1]) == c.ip)
            was = seen.get(c.ip) or ((str(spec().pa(before[i][0])), before[i][1]) if i in before else None)
            if c.kind == "move":
                assert was is not None and was[0] is not None and c.pa != was[0] and c.seq == was[1] + 1
            elif c.kind == "add":
                assert was is None and c.seq == 0
            else:
                assert was is not None and c.pa is None
            seen[c.ip] = (c.pa, c.seq)
    assert {c.kind for t in ticks for c in t.changes} == {"move", "add", "withdraw"}


def test_values_it_cannot_use_name_their_field() -> None:
    with pytest.raises(inject.InjectError) as found:
        inject.Churn.initial(spec(), 10_000)
    assert found.value.field == "count"
    with pytest.raises(inject.InjectError) as found:
        inject.Spec(SUBNETS, ipaddress.ip_network("100.64.0.0/24"), 10)
    assert found.value.field == "pas"
    with pytest.raises(inject.InjectError) as found:
        inject.parse_subnets(["5001,65001:1"])
    assert found.value.field == "subnet"
