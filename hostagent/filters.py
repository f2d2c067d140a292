"""The agent's nftables side, kept in line with what it learned and configured: the GRE filter (GRE
accepted only from the provider addresses of the fabric) and the VRF marks (vnet/vrfmark.py: each routing
domain's VRF marks its packets with its table number, so the ICMPv6 Packet Too Big the host sends is
routed back into the right tenant). A refusal is logged and reported (False): the owner retries."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping

from nvfabric.vnet.desired import vrf_name
from nvfabric.vnet.model import Address
from nvfabric.vnet.nftables import GreFilter, Nft, NftError
from nvfabric.vnet.vrfmark import VrfMarks

log = logging.getLogger(__name__)


def gre_allowed(next_hops: Iterable[Address], ours: Collection[Address], holding: bool,
                before: frozenset[Address] | None) -> frozenset[Address]:
    """Pure: the PAs GRE is accepted from: every learned next hop but ours; while learned state is held,
    like deletes, no PA is forgotten (before End-of-RIB, or headless)."""
    pas = set(next_hops) - set(ours)
    if holding and before:
        pas |= before
    return frozenset(pas)


def vrf_marks(tables: Mapping[str, int], domains: Collection[str]) -> dict[str, int]:
    """Pure: the mark of each configured routing domain's VRF (its table number)."""
    return {vrf_name(n): t for n, t in tables.items() if n in domains}


class Filters:
    def __init__(self, nft: Nft) -> None:
        self._nft = nft
        self._vrf_marks = VrfMarks(nft)
        self._gre: frozenset[Address] | None = None

    async def start(self) -> None:
        self._gre = await self._nft.allowed()  # what a previous run allowed: kept until End-of-RIB

    async def gre(self, next_hops: Iterable[Address], ours: Collection[Address], holding: bool) -> bool:
        allowed = gre_allowed(next_hops, ours, holding, self._gre)
        if allowed == self._gre:
            return True
        try:
            await self._nft.apply(GreFilter(allowed))
        except NftError as exc:
            log.warning("%s", exc)
            return False
        self._gre = allowed
        return True

    async def marks(self, tables: Mapping[str, int], domains: Collection[str]) -> bool:
        try:
            await self._vrf_marks.apply(vrf_marks(tables, domains))
        except NftError as exc:
            log.warning("%s", exc)
            return False
        return True
