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

Falling behind shows in `backlog()`: the changes waiting in the queue (at most one per key: bounded by the
table, however fast the fabric churns) and how long the oldest has waited, and, when the consumer applies
what it was delivered in passes (`mark()` before reading, `applied(mark)` once it is in effect), the
changes delivered but not in effect yet and the age of the oldest of them.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from nvfabric.bgp import rib
from nvfabric.bgp.config import SpeakerConfig
from nvfabric.bgp.routes import MacIpRoute, PrefixRoute, Route, RouteKey
from nvfabric.bgp.speaker import Notice, PeerStatus, Speaker


@dataclass(frozen=True, slots=True)
class RouteUpdate:
    """`route` is the route now known for `key`; None means it is gone."""

    key: RouteKey
    route: Route | None


ClientEvent = RouteUpdate | PeerStatus


@dataclass(frozen=True)
class Backlog:
    """How far the consumer is behind the reflectors, now. Ages are seconds (0.0: nothing waits); a change
    to a key that was pending already waits from its latest change (the older value will never be used)."""

    pending: int  # changes queued, not yet delivered: at most one per key (and one per session event)
    oldest_pending_s: float
    delivered: int  # route changes handed to the consumer since the start
    applied: int  # of those, the ones in effect (`applied`)
    oldest_unapplied_s: float  # the oldest change not in effect yet: delivered or still queued

    def as_dict(self) -> dict[str, float | int]:
        return {"pending": self.pending, "oldest_pending_s": round(self.oldest_pending_s, 3),
                "delivered": self.delivered, "applied": self.applied,
                "oldest_unapplied_s": round(self.oldest_unapplied_s, 3)}


class Client:
    def __init__(self, config: SpeakerConfig, *, speaker: Speaker | None = None) -> None:
        self.config = config
        self.speaker = speaker or Speaker(config)
        self.import_targets = config.import_route_targets
        self._delivered: dict[RouteKey, Route] = {}
        # Insertion-ordered: key (or a status slot) -> latest pending value. OrderedDicts: the stream takes
        # from the front, which a dict makes O(the entries taken before) per take (its iteration walks over
        # the removed ones): draining 60,000 routes took 1.8 s on the host, quadratic, and stood the loop
        # still for tens of seconds under TCG.
        self._pending: OrderedDict[object, ClientEvent] = OrderedDict()
        self._queued_at: OrderedDict[object, float] = OrderedDict()  # slot -> when its value was queued (same order)
        self._delivered_count = 0
        self._applied_count = 0
        # when the oldest change delivered since the last mark() was queued; and of those before it that
        # are not in effect yet (the consumer's pass in progress, or one that failed)
        self._unmarked_since: float | None = None
        self._inflight_since: float | None = None
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
            slot, event = self._pending.popitem(last=False)
            queued_at = self._queued_at.pop(slot)
            if isinstance(event, RouteUpdate):
                self._delivered_count += 1
                if self._unmarked_since is None:
                    self._unmarked_since = queued_at
                if event.route is None:
                    self._delivered.pop(event.key, None)
                else:
                    self._delivered[event.key] = event.route
            yield event

    def mark(self) -> int:
        """Before the consumer reads what it was delivered (`routes()`) to apply it: what it will have
        applied when it passes the mark to `applied`."""
        if self._unmarked_since is not None:
            since = self._inflight_since
            self._inflight_since = self._unmarked_since if since is None else min(since, self._unmarked_since)
            self._unmarked_since = None
        return self._delivered_count

    def applied(self, mark: int) -> None:
        """What was delivered up to `mark` is in effect (a pass that fails does not call this: its changes
        stay unapplied, and age, until a later pass succeeds)."""
        if mark >= self._applied_count:
            self._applied_count = mark
            self._inflight_since = None

    def backlog(self, now: float | None = None) -> Backlog:
        """O(1)."""
        now = time.monotonic() if now is None else now
        oldest_pending = self._queued_at[next(iter(self._queued_at))] if self._queued_at else None
        starts = [t for t in (self._inflight_since, self._unmarked_since, oldest_pending) if t is not None]
        return Backlog(len(self._pending), 0.0 if oldest_pending is None else now - oldest_pending,
                       self._delivered_count, self._applied_count, now - min(starts) if starts else 0.0)

    # -- from the speaker's owner task: must not block ----------------------------------------------------

    def _on_notices(self, notices: Iterable[Notice]) -> None:
        for notice in notices:
            if isinstance(notice, rib.RibChange):
                self._on_change(notice)
            else:
                self._status_seq += 1
                self._pending[("status", self._status_seq)] = notice
                self._queued_at[("status", self._status_seq)] = time.monotonic()
        if self._pending:
            self._wakeup.set()

    def _on_change(self, change: rib.RibChange) -> None:
        best = change.new_best
        route = best.route if best is not None and self._imported(best.route) else None
        key = change.key
        self._pending.pop(key, None)
        self._queued_at.pop(key, None)
        if route == self._delivered.get(key):
            return  # back to (or still) what the consumer has: nothing to tell, a pending intermediate dropped
        # (re-queued at the end: the order of last change)
        self._pending[key] = RouteUpdate(key, route)
        self._queued_at[key] = time.monotonic()

    def _imported(self, route: Route) -> bool:
        if not self.import_targets or not isinstance(route, (MacIpRoute, PrefixRoute)):
            return True
        return any(rt in self.import_targets for rt in route.route_targets)
