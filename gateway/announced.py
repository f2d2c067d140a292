"""What one of the gateway's BGP clients announces, kept by tenant, so that a change is announced in the
time of that tenant's routes (not the number of tenants): the upstream's public addresses
(gateway/upstream.py) and the fabric's type-5 default routes (gateway/evpn.py) both keep one."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any


class Announced:
    def __init__(self) -> None:
        self.routes: dict[Hashable, Any] = {}  # key -> route, everything announced
        self._by_tenant: dict[str, dict[Hashable, Any]] = {}

    @property
    def tenants(self) -> list[str]:
        return list(self._by_tenant)

    async def update(self, client: Any, wanted: Mapping[str, Mapping[Hashable, Any]]) -> None:
        """Make each named tenant's announced routes `wanted[name]` (empty: withdraw them all) with one
        withdraw and one announce on `client` (a bgp.client.Client). A key belongs to one tenant: the
        routes carry the tenant's own public addresses or VSID (tenants.Claims)."""
        gone: list[Hashable] = []
        new: list[Any] = []
        for name, want in wanted.items():
            had = self._by_tenant.pop(name, {})
            gone += [k for k in had if k not in want]
            new += [r for k, r in want.items() if had.get(k) != r]
            if want:
                self._by_tenant[name] = dict(want)
        if gone:
            await client.withdraw(gone)
        if new:
            await client.announce(new)
        for k in gone:
            self.routes.pop(k, None)
        self.routes.update((r.key, r) for r in new)
