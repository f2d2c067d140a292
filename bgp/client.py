"""The client side of the EVPN control plane, for the host agent and the gateway.

Connects to every configured route reflector (the neighbours of the config), announces and withdraws the
local routes, and delivers ONE stream of route changes:
- deduplicated: the same route learned from two reflectors is one route; it goes away only when the last
  reflector withdraws it (the Loc-RIB holds one best path per key, and a change of best path to an equal
  route is not a change for the consumer);
- ordered and level-based: pending changes are coalesced per key, so a slow consumer sees the latest
  state of each key in the order keys last changed, and memory is bounded by the table, not the churn;
- filtered by route target: an EVPN route whose route targets miss the import set is not delivered (and
  a route that leaves the set is delivered as withdrawn).
Session events (`PeerStatus`: established, down, end-of-rib) travel in the same stream, in order, so a
consumer can wait for End-of-RIB before deleting what it did not relearn.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from nvfabric.bgp import rib
from nvfabric.bgp.config import SpeakerConfig
from nvfabric.bgp.routes import MacIpRoute, PrefixRoute, Route, RouteKey
from nvfabric.bgp.speaker import Notice, PeerStatus, Speaker


@dataclass(frozen=True)
class RouteUpdate:
    """`route` is the route now known for `key`; None means it is gone."""

    key: RouteKey
    route: Route | None


ClientEvent = RouteUpdate | PeerStatus


class Client:
    def __init__(self, config: SpeakerConfig, *, speaker: Speaker | None = None) -> None:
        self.config = config
        self.speaker = speaker or Speaker(config)
        self.import_targets = config.import_route_targets
        self._delivered: dict[RouteKey, Route] = {}
        # Insertion-ordered: key (or a status slot) -> latest pending value.
        self._pending: dict[object, ClientEvent] = {}
        self._wakeup = asyncio.Event()
        self._status_seq = 0
        self.speaker.subscribe(self._on_notices)

    async def start(self) -> None:
        await self.speaker.start()

    async def stop(self, notify: bool = True) -> None:
        await self.speaker.stop(notify)

    async def announce(self, routes: Iterable[Route]) -> None:
        await self.speaker.announce(routes)

    async def withdraw(self, routes: Iterable[Route | RouteKey]) -> None:
        await self.speaker.withdraw(routes)

    def routes(self) -> dict[RouteKey, Route]:
        """What the consumer has been told so far (delivered state)."""
        return dict(self._delivered)

    async def events(self) -> AsyncIterator[ClientEvent]:
        """The change stream; one consumer."""
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            slot = next(iter(self._pending))
            event = self._pending.pop(slot)
            if isinstance(event, RouteUpdate):
                if event.route is None:
                    self._delivered.pop(event.key, None)
                else:
                    self._delivered[event.key] = event.route
            yield event

    # -- from the speaker's owner task: must not block ----------------------------------------------------

    def _on_notices(self, notices: Iterable[Notice]) -> None:
        for notice in notices:
            if isinstance(notice, rib.RibChange):
                self._on_change(notice)
            else:
                self._status_seq += 1
                self._pending[("status", self._status_seq)] = notice
        if self._pending:
            self._wakeup.set()

    def _on_change(self, change: rib.RibChange) -> None:
        best = change.new_best
        route = best.route if best is not None and self._imported(best.route) else None
        key = change.key
        if route == self._delivered.get(key):
            # Back to (or still) what the consumer has: nothing to tell, drop a pending intermediate.
            self._pending.pop(key, None)
            return
        self._pending.pop(key, None)  # re-queue at the end: order of last change
        self._pending[key] = RouteUpdate(key, route)

    def _imported(self, route: Route) -> bool:
        if not self.import_targets or not isinstance(route, (MacIpRoute, PrefixRoute)):
            return True
        return any(rt in self.import_targets for rt in route.route_targets)
