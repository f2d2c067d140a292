"""The agent's pure parts: the served VSIDs, the VRF marks, the announced-routes diff."""

from __future__ import annotations

import asyncio

from nvfabric.bgp.announced import Announced, diff
from nvfabric.hostagent.filters import served_vsids, vrf_marks
from tests.unit.agent_fixtures import catalog


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
