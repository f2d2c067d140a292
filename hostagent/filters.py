"""The agent's nftables side, kept in line with what it learned and configured: the decapsulation table
(vnet/decap.py: GRE accepted only from the provider addresses of the fabric, for the VSIDs this host serves,
from inner sources the control plane vouches for) and the VRF marks (vnet/vrfmark.py: each routing domain's
VRF marks its packets with its table number, so the ICMPv6 Packet Too Big the host sends is routed back into
the right tenant). A refusal is logged and reported (False): the owner retries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Mapping

from nvfabric.vnet import decap
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import vrf_name
from nvfabric.vnet.nftables import Nft, NftError
from nvfabric.vnet.vrfmark import VrfMarks

log = logging.getLogger(__name__)


def served_vsids(catalog: Catalog, tables: Mapping[str, int]) -> dict[int, int]:
    """Pure: VSID -> its routing domain's table number, for every configured routing domain (each has its
    `tun_id` rules)."""
    return {s.vsid: tables[name] for name, d in catalog.routing_domains.items() if name in tables
            for s in d.subnets}


def vrf_marks(tables: Mapping[str, int], domains: Collection[str]) -> dict[str, int]:
    """Pure: the mark of each configured routing domain's VRF (its table number)."""
    return {vrf_name(n): t for n, t in tables.items() if n in domains}


class Filters:
    def __init__(self, nft: Nft) -> None:
        self._nft = nft
        self._vrf_marks = VrfMarks(nft)
        self._decap = decap.DecapTable(nft)
        self._index: decap.DecapIndex | None = None  # the table by difference, in step with `_fed`
        self._fed: decap.DecapInputs | None = None
        self._reading: asyncio.Future[None] | None = None  # the read back at start (`begin`), until awaited

    @property
    def decap(self) -> decap.DecapFilter | None:
        """What the decapsulation table holds (None before the first write: the table is absent or foreign)."""
        return self._decap.applied

    def begin(self, done: Callable[[], None] | None = None) -> None:
        """Read back what a previous run left: the decapsulation table (enforced meanwhile, kept until
        End-of-RIB, changed by difference) and the VRF marks (written only where they differ). nft lists
        them on libnftables' thread: the caller goes on (the kernel's routes, the BGP sessions) meanwhile;
        the first write waits for the read. `done`: called when the read is over."""
        if self._reading is None:
            self._reading = asyncio.ensure_future(self.start())
            if done is not None:
                self._reading.add_done_callback(lambda _: done())

    @property
    def reading(self) -> bool:
        """The read back of `begin` is still under way."""
        return self._reading is not None and not self._reading.done()

    async def start(self) -> None:
        await self._decap.read()
        await self._vrf_marks.adopt()

    async def _read(self) -> None:
        if self._reading is not None:
            reading, self._reading = self._reading, None
            await reading

    async def close(self) -> None:
        """A read still under way is waited for (libnftables' call cannot be stopped)."""
        if self._reading is not None:
            with contextlib.suppress(Exception):
                await self._reading
            self._reading = None

    @property
    def decap_fed(self) -> decap.DecapInputs | None:
        """What the decapsulation table was last derived from (None: nothing yet, or a refusal since: the next
        `decapsulation` builds it from scratch)."""
        return self._fed

    async def decapsulation(self, now: decap.DecapInputs, what: decap.DecapChange | None, holding: bool,
                            full: bool = False) -> bool:
        """The decapsulation table for the inputs `now`, which `what` says how they differ from `decap_fed`:
        only the elements that change are written (O(the change)). `what` None (the start, after a refusal):
        from scratch, the reference (`DecapInputs.filter`), and the index built. `full` (the periodic resync):
        the index is checked against the reference too, rebuilt if they differ (logged: a change was missed),
        and what differs from the reference written (O(table))."""
        await self._read()
        if what is None or not self._decap.known:
            self._index = None  # (not in step with the table: built again below)
        try:
            if what is not None and self._index is not None:
                try:
                    delta = self._index.apply(what, holding)
                except ValueError as exc:  # a change that does not fit what the index holds: from scratch
                    log.error("decapsulation table: %s: rebuilt from scratch", exc)
                    self._index = None
                else:
                    self._fed = now
                    if not full:
                        if delta:
                            await self._decap.apply_delta(delta)
                        return True
            await self._from_scratch(now, holding)
        except NftError as exc:
            log.warning("%s", exc)
            self._index, self._fed = None, None
            return False
        return True

    async def _from_scratch(self, now: decap.DecapInputs, holding: bool) -> None:
        before = self._decap.applied
        want = now.filter(holding, before)
        if self._index is not None and self._index.filter() != want:
            log.error("decapsulation table: the index differs from the table computed from scratch: rebuilt")
            self._index = None
        if self._index is None:
            try:
                self._index = decap.DecapIndex.build(now, holding, before)
            except ValueError as exc:  # (two records of one CA): the reference alone, every change from scratch
                log.error("decapsulation table: %s: no index", exc)
        self._fed = now
        if want != before:
            await self._decap.apply(want)

    async def decap_counters(self) -> dict[str, int]:
        return await self._decap.counters()

    async def marks(self, tables: Mapping[str, int], domains: Collection[str]) -> bool:
        await self._read()
        try:
            await self._vrf_marks.apply(vrf_marks(tables, domains))
        except NftError as exc:
            log.warning("%s", exc)
            return False
        return True
