"""The agent's pure parts: the decapsulation table's and VRF marks' contents, the announced-routes diff."""

from __future__ import annotations

import asyncio
import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from nvfabric.bgp.announced import Announced, diff
from nvfabric.hostagent.filters import changed_records, gre_sources, served_vsids, sorted_difference, vrf_marks
from tests.unit.agent_fixtures import catalog

PA1, PA2, PA3 = (ipaddress.ip_address(f"198.51.100.{n}") for n in (11, 12, 13))


class Hop:
    def __init__(self, next_hop) -> None:
        self.next_hop = next_hop


def test_gre_is_accepted_from_learned_next_hops_but_ours_counted_by_route() -> None:
    assert gre_sources([Hop(PA1), Hop(PA2), Hop(PA2), Hop(PA3), object()], [PA1]) == {PA2: 2, PA3: 1}


def test_the_records_that_changed_in_one_walk_of_two_sorted_tuples() -> None:
    from nvfabric.vnet.model import LookupRecord

    def r(domain: str, ca: str, pa=PA2) -> LookupRecord:
        return LookupRecord(domain, 5001, ipaddress.ip_address(ca), "02:00:00:00:00:01", pa)

    old = (r("blue", "10.0.0.1"), r("blue", "10.0.0.2"), r("blue", "fd00::1"), r("red", "10.0.0.1"))
    new = (r("blue", "10.0.0.0"), r("blue", "10.0.0.2", PA3), r("blue", "fd00::1"), r("red", "10.0.0.1"),
           r("red", "10.0.0.9"))
    assert changed_records(old, new) == ([old[0], old[1]], [new[0], new[1], new[4]])
    assert changed_records(old, old) == ([], [])
    # out of order: every record of one side only is there; one on both sides, if any, is gone and come
    gone, come = changed_records(old[::-1], new[::-1])
    assert {old[0], old[1]} <= set(gone) and {new[0], new[1], new[4]} <= set(come)
    assert set(gone) - {old[0], old[1]} == set(come) - {new[0], new[1], new[4]}


def test_served_vsids_are_every_configured_subnet_with_its_routing_domains_table() -> None:
    served = served_vsids(catalog(), {"blue": 1001, "red": 1002})
    assert served and set(served.values()) <= {1001, 1002}
    assert served_vsids(catalog(), {}) == {}


def test_vrf_marks_only_for_configured_routing_domains() -> None:
    assert vrf_marks({"blue": 1001, "gone": 1002}, {"blue"}) == {"nvf-blue": 1001}


class Route:
    def __init__(self, key: str, value: int) -> None:
        self.key, self.value = key, value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Route) and (self.key, self.value) == (other.key, other.value)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list]] = []

    async def announce(self, routes) -> None:
        self.calls.append(("announce", [r.key for r in routes]))

    async def withdraw(self, keys) -> None:
        self.calls.append(("withdraw", list(keys)))


def test_diff_withdraws_what_is_gone_and_announces_what_is_new_or_changed() -> None:
    a, b, b2, c = Route("a", 1), Route("b", 1), Route("b", 2), Route("c", 1)
    assert diff({"a": a, "b": b}, {"b": b2, "c": c}) == (["a"], [b2, c])
    assert diff({"a": a}, {"a": a}) == ([], [])


def test_announced_by_group_touches_only_the_named_groups() -> None:
    announced, client = Announced(), Recorder()
    asyncio.run(announced.update(client, {"blue": {"a": Route("a", 1)}, "red": {"b": Route("b", 1)}}))
    client.calls.clear()
    asyncio.run(announced.update(client, {"blue": {}}))
    assert client.calls == [("withdraw", ["a"])]
    assert announced.groups == ["red"] and list(announced.routes) == ["b"]


@given(old=st.dictionaries(st.integers(0, 20), st.integers(0, 2)),
       new=st.dictionaries(st.integers(0, 20), st.integers(0, 2)), shuffle=st.randoms())
def test_the_walk_reports_every_change_in_any_order_and_only_cancelling_extras(old, new, shuffle) -> None:
    a, b = sorted(old.items()), sorted(new.items())
    gone, come = sorted_difference(a, b, lambda kv: kv[0])
    assert set(gone) == set(a) - set(b) and set(come) == set(b) - set(a)
    shuffle.shuffle(a)
    shuffle.shuffle(b)
    gone, come = sorted_difference(a, b, lambda kv: kv[0])
    assert len(gone) == len(set(gone)) and len(come) == len(set(come))
    assert set(gone) - (set(a) - set(b)) == set(come) - (set(b) - set(a)) <= set(a) & set(b)
    assert set(a) - set(b) <= set(gone) and set(b) - set(a) <= set(come)
