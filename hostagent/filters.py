"""The agent's nftables side, kept in line with what it learned and configured: the decapsulation table
(vnet/decap.py: GRE accepted only from the provider addresses of the fabric, for the VSIDs this host serves,
from inner sources the control plane vouches for) and the VRF marks (vnet/vrfmark.py: each routing domain's
VRF marks its packets with its table number, so the ICMPv6 Packet Too Big the host sends is routed back into
the right tenant). A refusal is logged and reported (False): the owner retries."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping

from nvfabric.vnet import decap
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import vrf_name
from nvfabric.vnet.model import Address
from nvfabric.vnet.nftables import Nft, NftError
from nvfabric.vnet.vrfmark import VrfMarks

log = logging.getLogger(__name__)


def gre_allowed(next_hops: Iterable[Address], ours: Collection[Address]) -> frozenset[Address]:
    """Pure: the PAs GRE is accepted from: every learned next hop but ours (what a hold keeps is
    vnet.decap.decap_filter's)."""
    return frozenset(set(next_hops) - set(ours))


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

    @property
    def decap(self) -> decap.DecapFilter | None:
        """What the decapsulation table holds (None before the first write: the table is absent or foreign)."""
        return self._decap.applied

    async def start(self) -> None:
        # what a previous run left is enforced meanwhile and kept until End-of-RIB; changed by difference
        await self._decap.read()

    async def decapsulation(self, pas: Iterable[Address], vsids: Mapping[int, int],
                            elements: Iterable[decap.Element], holding: bool) -> bool:
        want = decap.decap_filter(frozenset(pas), vsids, elements, holding, self._decap.applied)
        if want == self._decap.applied:
            return True
        try:
            await self._decap.apply(want)
        except NftError as exc:
            log.warning("%s", exc)
            return False
        return True

    async def decap_counters(self) -> dict[str, int]:
        return await self._decap.counters()

    async def marks(self, tables: Mapping[str, int], domains: Collection[str]) -> bool:
        try:
            await self._vrf_marks.apply(vrf_marks(tables, domains))
        except NftError as exc:
            log.warning("%s", exc)
            return False
        return True
