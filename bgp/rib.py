"""Adj-RIB-In per peer and Loc-RIB best-path selection. Pure: no I/O, no clock, no hash() ordering.

Every mutation returns the resulting best-path changes as data (RibChange), in a deterministic order,
with the reason the new best path won (as GoBGP's BestPathReason). The speaker feeds decoded UPDATEs
in and publishes the changes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from collections.abc import Callable, Iterable, Sequence

from bgp.routes import Family, MacIpKey, MacIpRoute, Path, PeerRef, RouteKey

DEFAULT_LOCAL_PREF = 100  # RFC 4271 section 5.1.5 leaves the default to configuration; 100 is customary


class BestPathReason(enum.Enum):
    """The decision step that eliminated the last competitor (RFC 4271 section 9.1.2.2 order)."""

    ONLY_PATH = "only path"
    STICKY_MAC = "sticky MAC (RFC 7432 section 15.2)"
    MAC_MOBILITY_SEQUENCE = "higher MAC mobility sequence (RFC 7432 section 15.1)"
    LOCAL_PREF = "higher LOCAL_PREF"
    LOCALLY_ORIGINATED = "locally originated"
    AS_PATH_LENGTH = "shorter AS_PATH"
    ORIGIN = "lower ORIGIN"
    MED = "lower MED"
    EBGP_OVER_IBGP = "eBGP over iBGP"
    ROUTER_ID = "lower ORIGINATOR_ID or BGP identifier"
    CLUSTER_LIST_LENGTH = "shorter CLUSTER_LIST (RFC 4456 section 9)"
    PEER_ADDRESS = "lower peer address"
    LOWEST_NEXT_HOP = "same sequence: lowest PE address (RFC 7432 section 15.1)"


@dataclass(frozen=True, slots=True)
class RibChange:
    """The best path for key went from old_best to new_best (either may be None)."""

    key: RouteKey
    old_best: Path | None
    new_best: Path | None
    reason: BestPathReason | None


def _address_order(address: IPv4Address | IPv6Address | None) -> tuple[int, int]:
    # IPv4 sorts before IPv6; locally originated (None) first.
    if address is None:
        return (0, 0)
    return (address.version, int(address))


def _source_order(path: Path) -> tuple[int, int]:
    return _address_order(path.source.address if path.source else None)


# ---------------------------------------------------------------- the decision steps
# Each step keeps the subset of candidates that are best by one criterion. They run in order and stop
# when one candidate is left; the step that got there is the reason.


def _keep_max(paths: list[Path], score: Callable[[Path], object]) -> list[Path]:
    best = max(score(p) for p in paths)
    return [p for p in paths if score(p) == best]


def _keep_min(paths: list[Path], score: Callable[[Path], object]) -> list[Path]:
    best = min(score(p) for p in paths)
    return [p for p in paths if score(p) == best]


def _is_mac_ip(paths: list[Path]) -> bool:
    return isinstance(paths[0].route, MacIpRoute)


def _sticky(paths: list[Path]) -> list[Path]:
    # RFC 7432 section 15.2: a static (sticky) MAC must not be displaced by a moving one.
    return _keep_max(paths, lambda p: p.route.sticky) if _is_mac_ip(paths) else paths


def _mobility(paths: list[Path]) -> list[Path]:
    # RFC 7432 section 15.1: "the route with the highest sequence number wins" (no community = 0).
    return _keep_max(paths, lambda p: p.route.mobility_seq) if _is_mac_ip(paths) else paths


def _local_pref(paths: list[Path]) -> list[Path]:
    # RFC 4271 section 9.1.2.2 (preference, 9.1.1): highest LOCAL_PREF.
    return _keep_max(paths, lambda p: DEFAULT_LOCAL_PREF if p.attrs.local_pref is None else p.attrs.local_pref)


def _locally_originated(paths: list[Path]) -> list[Path]:
    # Our own routes beat learned copies of equal preference (as FRR and GoBGP do).
    return _keep_max(paths, lambda p: p.source is None)


def _as_path_length(paths: list[Path]) -> list[Path]:
    # RFC 4271 section 9.1.2.2 a.
    return _keep_min(paths, lambda p: p.attrs.as_path_length)


def _origin(paths: list[Path]) -> list[Path]:
    # RFC 4271 section 9.1.2.2 b: IGP < EGP < INCOMPLETE.
    return _keep_min(paths, lambda p: int(p.attrs.origin))


def _med(paths: list[Path]) -> list[Path]:
    # RFC 4271 section 9.1.2.2 c: MED is compared only among routes from the same neighbouring AS;
    # a route is removed if another from its neighbour AS has a lower MED. Missing MED counts as 0.
    lowest: dict[int | None, int] = {}
    for p in paths:
        med = p.attrs.med or 0
        neighbor = p.attrs.neighbor_as
        lowest[neighbor] = min(med, lowest.get(neighbor, med))
    return [p for p in paths if (p.attrs.med or 0) == lowest[p.attrs.neighbor_as]]


def _ebgp(paths: list[Path], local_asn: int) -> list[Path]:
    # RFC 4271 section 9.1.2.2 d: routes learned by eBGP beat those learned by iBGP.
    return _keep_max(paths, lambda p: p.source is not None and p.source.asn != local_asn)


def _router_id(paths: list[Path]) -> list[Path]:
    # RFC 4271 section 9.1.2.2 f, with RFC 4456 section 9: ORIGINATOR_ID stands for the BGP identifier.
    def identifier(p: Path) -> int:
        if p.attrs.originator_id is not None:
            return int(p.attrs.originator_id)
        return int(p.source.router_id) if p.source else 0

    return _keep_min(paths, identifier)


def _cluster_list(paths: list[Path]) -> list[Path]:
    # RFC 4456 section 9: between steps f and g, prefer the shorter CLUSTER_LIST.
    return _keep_min(paths, lambda p: len(p.attrs.cluster_list))


def _peer_address(paths: list[Path]) -> list[Path]:
    # RFC 4271 section 9.1.2.2 g: lowest peer address.
    return _keep_min(paths, _source_order)


def select_best(paths: Sequence[Path], local_asn: int) -> tuple[Path | None, BestPathReason | None]:
    """The best of the candidate paths for one key, and why. Deterministic for any input order."""
    if not paths:
        return None, None
    candidates = sorted(paths, key=_source_order)
    if len(candidates) == 1:
        return candidates[0], BestPathReason.ONLY_PATH
    steps: list[tuple[BestPathReason, Callable[[list[Path]], list[Path]]]] = [
        (BestPathReason.STICKY_MAC, _sticky),
        (BestPathReason.MAC_MOBILITY_SEQUENCE, _mobility),
        (BestPathReason.LOCAL_PREF, _local_pref),
        (BestPathReason.LOCALLY_ORIGINATED, _locally_originated),
        (BestPathReason.AS_PATH_LENGTH, _as_path_length),
        (BestPathReason.ORIGIN, _origin),
        (BestPathReason.MED, _med),
        (BestPathReason.EBGP_OVER_IBGP, lambda ps: _ebgp(ps, local_asn)),
        (BestPathReason.ROUTER_ID, _router_id),
        (BestPathReason.CLUSTER_LIST_LENGTH, _cluster_list),
        (BestPathReason.PEER_ADDRESS, _peer_address),
    ]
    for reason, step in steps:
        candidates = step(candidates)
        if len(candidates) == 1:
            return candidates[0], reason
    # Only equal sources are left (e.g. one peer address twice): the first in address order.
    return candidates[0], BestPathReason.PEER_ADDRESS


def select_mac_owner(paths: Sequence[Path]) -> tuple[Path | None, BestPathReason | None]:
    """Which of the best type-2 paths of one MAC under different RDs (hosts) owns it.

    RFC 7432 section 15: a MAC that moved is advertised by the new host with a higher sequence
    number while the old host's route may linger; the highest sequence wins, a sticky (static) MAC
    is never displaced, and at equal sequence "the PE with the lowest IP address" wins. Ties after
    that (one host, several RDs) go to the lowest RD text, so the answer never depends on order.
    """
    if not paths:
        return None, None
    candidates = sorted(paths, key=lambda p: (_address_order(p.route.next_hop), p.route.rd))
    if len(candidates) == 1:
        return candidates[0], BestPathReason.ONLY_PATH
    for reason, step in (
        (BestPathReason.STICKY_MAC, _sticky),
        (BestPathReason.MAC_MOBILITY_SEQUENCE, _mobility),
        (BestPathReason.LOWEST_NEXT_HOP, lambda ps: _keep_min(ps, lambda p: _address_order(p.route.next_hop))),
    ):
        candidates = step(candidates)
        if len(candidates) == 1:
            return candidates[0], reason
    return candidates[0], BestPathReason.LOWEST_NEXT_HOP


# ---------------------------------------------------------------- Adj-RIB-In


class AdjRibIn:
    """Routes received from one peer, by key (RFC 4271 section 3.2), with graceful-restart stale marks."""

    def __init__(self, peer: PeerRef) -> None:
        self.peer = peer
        self._paths: dict[RouteKey, Path] = {}
        self._stale: set[RouteKey] = set()

    def __len__(self) -> int:
        return len(self._paths)

    def get(self, key: RouteKey) -> Path | None:
        return self._paths.get(key)

    def paths(self) -> list[Path]:
        return list(self._paths.values())

    def add(self, path: Path) -> Path | None:
        """Store path (replacing and un-staling its key); return the path it replaced."""
        key = path.route.key
        self._stale.discard(key)
        old = self._paths.get(key)
        self._paths[key] = path
        return old

    def withdraw(self, key: RouteKey) -> Path | None:
        """Remove key; return the removed path (None if unknown, which RFC 4271 allows silently)."""
        self._stale.discard(key)
        return self._paths.pop(key, None)

    def mark_stale(self, families: Iterable[Family] | None = None) -> int:
        """RFC 4724 section 4.2: on session loss keep the routes, marked stale. Returns how many."""
        wanted = None if families is None else frozenset(families)
        marked = [k for k in self._paths if wanted is None or k.family in wanted]
        self._stale.update(marked)
        return len(marked)

    def stale_keys(self, family: Family | None = None) -> list[RouteKey]:
        return [k for k in self._paths if k in self._stale and (family is None or k.family is family)]

    def sweep_stale(self, family: Family | None = None) -> list[Path]:
        """RFC 4724 section 4.2: on End-of-RIB (or the stale timer) drop what was not refreshed."""
        removed = []
        for key in self.stale_keys(family):
            self._stale.discard(key)
            removed.append(self._paths.pop(key))
        return removed


# ---------------------------------------------------------------- Loc-RIB


class LocRib:
    """Candidate paths per key from every source, and the best of them (RFC 4271 section 9.1.2)."""

    def __init__(self, local_asn: int) -> None:
        self.local_asn = local_asn
        self._candidates: dict[RouteKey, dict[PeerRef | None, Path]] = {}
        self._best: dict[RouteKey, tuple[Path, BestPathReason]] = {}
        # (vsid, ethernet tag, MAC) -> type-2 keys whose best path carries them, for mac_owner().
        self._macs: dict[tuple[int, int, str], set[MacIpKey]] = {}

    def __len__(self) -> int:
        return len(self._best)

    def mac_owner(self, vsid: int, mac: str, ethernet_tag: int = 0) -> tuple[Path, BestPathReason] | None:
        """The type-2 path that owns MAC in VSID across all hosts (RDs), per select_mac_owner."""
        keys = self._macs.get((vsid, ethernet_tag, mac.lower()))
        if not keys:
            return None
        owner, reason = select_mac_owner([self._best[k][0] for k in keys])
        return (owner, reason) if owner is not None else None

    def best(self, key: RouteKey) -> Path | None:
        entry = self._best.get(key)
        return entry[0] if entry else None

    def best_with_reason(self, key: RouteKey) -> tuple[Path, BestPathReason] | None:
        return self._best.get(key)

    def best_paths(self) -> list[Path]:
        return [path for path, _ in self._best.values()]

    def candidates(self, key: RouteKey) -> list[Path]:
        return sorted(self._candidates.get(key, {}).values(), key=_source_order)

    def add(self, path: Path) -> RibChange | None:
        """Add or replace the path from path.source for its key; the change of best path, if any."""
        key = path.route.key
        self._candidates.setdefault(key, {})[path.source] = path
        return self._reselect(key)

    def remove(self, key: RouteKey, source: PeerRef | None) -> RibChange | None:
        """Remove the path from source for key; the change of best path, if any."""
        paths = self._candidates.get(key)
        if not paths or paths.pop(source, None) is None:
            return None
        if not paths:
            del self._candidates[key]
        return self._reselect(key)

    def _reselect(self, key: RouteKey) -> RibChange | None:
        old = self._best.get(key)
        new_best, reason = select_best(list(self._candidates.get(key, {}).values()), self.local_asn)
        if new_best is None:
            self._best.pop(key, None)
        else:
            self._best[key] = (new_best, reason)
        old_best = old[0] if old else None
        if old_best == new_best:
            return None
        if isinstance(key, MacIpKey):
            self._index_mac(key, old_best, new_best)
        return RibChange(key, old_best, new_best, reason)

    def _index_mac(self, key: MacIpKey, old: Path | None, new: Path | None) -> None:
        if old is not None:
            slot = (old.route.vsid, key.ethernet_tag, key.mac)
            keys = self._macs.get(slot)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._macs[slot]
        if new is not None:
            self._macs.setdefault((new.route.vsid, key.ethernet_tag, key.mac), set()).add(key)


# ---------------------------------------------------------------- the whole RIB


class Rib:
    """Adj-RIBs-In of all peers plus the Loc-RIB; every operation returns the best-path changes."""

    def __init__(self, local_asn: int) -> None:
        self.loc = LocRib(local_asn)
        self._peers: dict[PeerRef, AdjRibIn] = {}

    def adj_in(self, peer: PeerRef) -> AdjRibIn:
        rib = self._peers.get(peer)
        if rib is None:
            rib = self._peers[peer] = AdjRibIn(peer)
        return rib

    def receive(self, peer: PeerRef, announced: Iterable[Path], withdrawn: Iterable[RouteKey]) -> list[RibChange]:
        """Apply one decoded UPDATE from peer (withdrawals first, as they precede NLRI on the wire)."""
        adj = self.adj_in(peer)
        changes = []
        for key in withdrawn:
            if adj.withdraw(key) is not None:
                changes.append(self.loc.remove(key, peer))
        for path in announced:
            if path.source != peer:
                raise ValueError(f"path source {path.source} is not the receiving peer {peer}")
            adj.add(path)
            changes.append(self.loc.add(path))
        return [c for c in changes if c is not None]

    def originate(self, paths: Iterable[Path]) -> list[RibChange]:
        """Add locally originated paths (source None)."""
        changes = [self.loc.add(p) for p in paths if p.source is None]
        return [c for c in changes if c is not None]

    def withdraw_local(self, keys: Iterable[RouteKey]) -> list[RibChange]:
        changes = [self.loc.remove(k, None) for k in keys]
        return [c for c in changes if c is not None]

    def peer_down(self, peer: PeerRef) -> list[RibChange]:
        """Session lost without graceful restart: all the peer's routes go (RFC 4271 section 8)."""
        adj = self._peers.pop(peer, None)
        if adj is None:
            return []
        changes = [self.loc.remove(p.route.key, peer) for p in adj.paths()]
        return [c for c in changes if c is not None]

    def mark_stale(self, peer: PeerRef, families: Iterable[Family] | None = None) -> int:
        """Session lost with graceful restart (RFC 4724 section 4.2): keep routes, marked stale.
        Families the peer did not preserve forwarding for should be swept by the caller at once."""
        return self.adj_in(peer).mark_stale(families)

    def sweep_stale(self, peer: PeerRef, family: Family | None = None) -> list[RibChange]:
        """End-of-RIB from peer for family, or the restart/stale timer fired: drop unrefreshed routes."""
        adj = self._peers.get(peer)
        if adj is None:
            return []
        changes = [self.loc.remove(p.route.key, peer) for p in adj.sweep_stale(family)]
        return [c for c in changes if c is not None]
