"""What one BGP client announces, kept by group, so that a change is announced in the time of that group's
routes (not the number of groups). The one announced-routes diff of the tree: the host agent keeps one
group per local port (its type-2 routes and those of the virtual addresses it holds); the gateway keeps one
group per tenant for the upstream's public addresses (gateway/upstream.py) and for the fabric's type-5
default routes (gateway/evpn.py)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Protocol


class Announcer(Protocol):
    """What `update` needs of a bgp.client.Client."""

    async def withdraw(self, keys: list[Any]) -> None: ...

    async def announce(self, routes: list[Any]) -> None: ...


def diff(had: Mapping[Hashable, Any], want: Mapping[Hashable, Any]) -> tuple[list[Hashable], list[Any]]:
    """Pure: (keys to withdraw, routes to announce) to go from `had` to `want` (a changed route is announced
    again, an unchanged one is not)."""
    return [k for k in had if k not in want], [r for k, r in want.items() if had.get(k) != r]


class Announced:
    def __init__(self) -> None:
        self.routes: dict[Hashable, Any] = {}  # key -> route, everything announced
        self._by_group: dict[str, dict[Hashable, Any]] = {}

    @property
    def groups(self) -> list[str]:
        return list(self._by_group)

    async def update(self, client: Announcer, wanted: Mapping[str, Mapping[Hashable, Any]]) -> None:
        """Make each named group's announced routes `wanted[name]` (empty: withdraw them all) with one
        withdraw and one announce on `client`. A key belongs to one group (a tenant's routes carry the
        tenant's own public addresses or VSID: gateway/tenants.py Claims)."""
        gone: list[Hashable] = []
        new: list[Any] = []
        for name, want in wanted.items():
            had = self._by_group.pop(name, {})
            withdraw, announce = diff(had, want)
            gone += withdraw
            new += announce
            if want:
                self._by_group[name] = dict(want)
        if gone:
            await client.withdraw(gone)
        if new:
            await client.announce(new)
        for k in gone:
            self.routes.pop(k, None)
        self.routes.update((r.key, r) for r in new)
