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

from nvfabric.bgp.mac import Mac
from nvfabric.bgp.routes import Family, MacIpKey, MacIpRoute, Path, PeerRef, RouteKey

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
# Each step is a preference: a value where higher is better. Selection keeps, step by step, the
# candidates with the best value until one is left; the step that got there is the reason. MED is the
# exception (compared only between routes from the same neighbor AS), handled by _med_survivors.


def _sticky(p: Path, local_asn: int) -> object:
    # RFC 7432 section 15.2: a static (sticky) MAC must not be displaced by a moving one.
    return p.route.sticky if isinstance(p.route, MacIpRoute) else False


def _mobility(p: Path, local_asn: int) -> object:
    # RFC 7432 section 15.1: "the route with the highest sequence number wins" (no community = 0).
    return p.route.mobility_seq if isinstance(p.route, MacIpRoute) else 0


def _local_pref(p: Path, local_asn: int) -> object:
    # RFC 4271 section 9.1.1 / 9.1.2.2: highest LOCAL_PREF.
    return DEFAULT_LOCAL_PREF if p.attrs.local_pref is None else p.attrs.local_pref


def _locally_originated(p: Path, local_asn: int) -> object:
    # Our own routes beat learned copies of equal preference (as FRR and GoBGP do).
    return p.source is None


def _as_path_length(p: Path, local_asn: int) -> object:
    # RFC 4271 section 9.1.2.2 a: shortest AS_PATH.
    return -p.attrs.as_path_length


def _origin(p: Path, local_asn: int) -> object:
    # RFC 4271 section 9.1.2.2 b: IGP < EGP < INCOMPLETE.
    return -int(p.attrs.origin)


def _ebgp(p: Path, local_asn: int) -> object:
    # RFC 4271 section 9.1.2.2 d: routes learned by eBGP beat those learned by iBGP.
    return p.source is not None and p.source.asn != local_asn


def _router_id(p: Path, local_asn: int) -> object:
    # RFC 4271 section 9.1.2.2 f, with RFC 4456 section 9: ORIGINATOR_ID stands for the BGP identifier.
    if p.attrs.originator_id is not None:
        return -int(p.attrs.originator_id)
    return -int(p.source.router_id) if p.source else 0


def _cluster_list(p: Path, local_asn: int) -> object:
    # RFC 4456 section 9: between steps f and g, prefer the shorter CLUSTER_LIST.
    return -len(p.attrs.cluster_list)


def _peer_address(p: Path, local_asn: int) -> object:
    # RFC 4271 section 9.1.2.2 g: lowest peer address.
    version, value = _source_order(p)
    return (-version, -value)


_MED = None  # marks the MED step in _STEPS
_STEPS: tuple[tuple[BestPathReason, Callable[[Path, int], object] | None], ...] = (
    (BestPathReason.STICKY_MAC, _sticky),
    (BestPathReason.MAC_MOBILITY_SEQUENCE, _mobility),
    (BestPathReason.LOCAL_PREF, _local_pref),
    (BestPathReason.LOCALLY_ORIGINATED, _locally_originated),
    (BestPathReason.AS_PATH_LENGTH, _as_path_length),
    (BestPathReason.ORIGIN, _origin),
    (BestPathReason.MED, _MED),
    (BestPathReason.EBGP_OVER_IBGP, _ebgp),
    (BestPathReason.ROUTER_ID, _router_id),
    (BestPathReason.CLUSTER_LIST_LENGTH, _cluster_list),
    (BestPathReason.PEER_ADDRESS, _peer_address),
)


def _med_survivors(paths: list[Path]) -> list[Path]:
    # RFC 4271 section 9.1.2.2 c: MED is compared only among routes from the same neighboring AS;
    # a route is removed if another from its neighbor AS has a lower MED. Missing MED counts as 0.
    lowest: dict[int | None, int] = {}
    for p in paths:
        med = p.attrs.med or 0
        neighbor = p.attrs.neighbor_as
        lowest[neighbor] = min(med, lowest.get(neighbor, med))
    return [p for p in paths if (p.attrs.med or 0) == lowest[p.attrs.neighbor_as]]


def _select_pair(a: Path, b: Path, local_asn: int) -> tuple[Path, BestPathReason]:
    """select_best for two candidates (the common case: one route via two reflectors), a before b
    in source order. The same steps, without building lists."""
    for reason, preference in _STEPS:
        if preference is None:
            if a.attrs.neighbor_as == b.attrs.neighbor_as and (a.attrs.med or 0) != (b.attrs.med or 0):
                return (a if (a.attrs.med or 0) < (b.attrs.med or 0) else b), reason
            continue
        pa, pb = preference(a, local_asn), preference(b, local_asn)
        if pa != pb:
            return (a if pa > pb else b), reason
    return a, BestPathReason.PEER_ADDRESS


def select_best(paths: Sequence[Path], local_asn: int) -> tuple[Path | None, BestPathReason | None]:
    """The best of the candidate paths for one key, and why. Deterministic for any input order."""
    if len(paths) <= 1:
        return (paths[0], BestPathReason.ONLY_PATH) if paths else (None, None)
    candidates = sorted(paths, key=_source_order)
    if len(candidates) == 2:
        return _select_pair(candidates[0], candidates[1], local_asn)
    return _eliminate(candidates, local_asn)


def _eliminate(candidates: list[Path], local_asn: int) -> tuple[Path, BestPathReason]:
    """RFC 4271 section 9.1.2.2 elimination over candidates sorted in source order."""
    for reason, preference in _STEPS:
        if preference is None:
            candidates = _med_survivors(candidates)
        else:
            scores = [preference(p, local_asn) for p in candidates]
            best = max(scores)
            candidates = [p for p, score in zip(candidates, scores, strict=True) if score == best]
        if len(candidates) == 1:
            return candidates[0], reason
    # Only equal sources are left (e.g. one peer address twice): the first in address order.
    return candidates[0], BestPathReason.PEER_ADDRESS


def _keep_max(paths: list[Path], score: Callable[[Path], object]) -> list[Path]:
    best = max(score(p) for p in paths)
    return [p for p in paths if score(p) == best]


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
    for reason, preference in (
        (BestPathReason.STICKY_MAC, lambda p: p.route.sticky),
        (BestPathReason.MAC_MOBILITY_SEQUENCE, lambda p: p.route.mobility_seq),
        (BestPathReason.LOWEST_NEXT_HOP, lambda p: tuple(-v for v in _address_order(p.route.next_hop))),
    ):
        candidates = _keep_max(candidates, preference)
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

    def add(self, path: Path, key: RouteKey | None = None) -> Path | None:
        """Store path (replacing and un-staling its key); return the path it replaced. key, if given,
        is path.route.key (computed once by the caller)."""
        if key is None:
            key = path.route.key
        if self._stale:
            self._stale.discard(key)
        old = self._paths.setdefault(key, path)
        if old is path:
            return None
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


class _Entry:
    """A key of the Loc-RIB with several candidate paths (by source) and the best of them. A key with one
    path (one reflector: every key of an agent's table) is held as that path itself: an entry and a dict
    per key would be most of a 100,000-route RIB's memory."""

    __slots__ = ("paths", "best", "reason")

    def __init__(self, paths: dict[PeerRef | None, Path], local_asn: int) -> None:
        self.paths = paths
        self.best, self.reason = select_best(list(paths.values()), local_asn)


class LocRib:
    """Candidate paths per key from every source, and the best of them (RFC 4271 section 9.1.2)."""

    def __init__(self, local_asn: int) -> None:
        self.local_asn = local_asn
        self._entries: dict[RouteKey, Path | _Entry] = {}  # the path itself while it is the only one

    def __len__(self) -> int:
        return len(self._entries)

    def mac_owner(self, vsid: int, mac: str, ethernet_tag: int = 0) -> tuple[Path, BestPathReason] | None:
        """The type-2 path that owns MAC (any notation) in VSID across all hosts (RDs), per select_mac_owner.
        O(routes): a diagnostic read. No index is kept for it: one entry per MAC would cost a host agent's
        RIB a third more memory, for a question only tests and an operator ask."""
        wanted = Mac(mac)
        found = [best for k, e in self._entries.items() if isinstance(k, MacIpKey) and k.mac == wanted
                 and k.ethernet_tag == ethernet_tag and (best := _best(e)).route.vsid == vsid]
        owner, reason = select_mac_owner(found)
        return (owner, reason) if owner is not None else None

    def best(self, key: RouteKey) -> Path | None:
        entry = self._entries.get(key)
        return None if entry is None else _best(entry)

    def best_with_reason(self, key: RouteKey) -> tuple[Path, BestPathReason] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if type(entry) is not _Entry:
            return entry, BestPathReason.ONLY_PATH
        return entry.best, entry.reason

    def best_paths(self) -> list[Path]:
        return [_best(entry) for entry in self._entries.values()]

    def candidates(self, key: RouteKey) -> list[Path]:
        entry = self._entries.get(key)
        if entry is None:
            return []
        return [entry] if type(entry) is not _Entry else sorted(entry.paths.values(), key=_source_order)

    def add(self, path: Path, key: RouteKey | None = None) -> RibChange | None:
        """Add or replace the path from path.source for its key; the change of best path, if any.
        key, if given, is path.route.key (computed once by the caller)."""
        if key is None:
            key = path.route.key
        entries = self._entries
        entry = entries.setdefault(key, path)  # one hash of the key, new or not
        if entry is path:
            return RibChange(key, None, path, BestPathReason.ONLY_PATH)
        if type(entry) is not _Entry:
            if entry.source == path.source:  # (a new path from the same source replaces it)
                entries[key] = path
                return None if entry == path else RibChange(key, entry, path, BestPathReason.ONLY_PATH)
            entries[key] = new = _Entry({entry.source: entry, path.source: path}, self.local_asn)
            return _changed(key, entry, new.best, new.reason)
        old = entry.best
        entry.paths[path.source] = path
        entry.best, entry.reason = select_best(list(entry.paths.values()), self.local_asn)
        return _changed(key, old, entry.best, entry.reason)

    def remove(self, key: RouteKey, source: PeerRef | None) -> RibChange | None:
        """Remove the path from source for key; the change of best path, if any."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if type(entry) is not _Entry:
            if entry.source != source:
                return None
            del self._entries[key]
            return RibChange(key, entry, None, None)
        if entry.paths.pop(source, None) is None:
            return None
        old = entry.best
        if len(entry.paths) == 1:
            (left,) = entry.paths.values()
            self._entries[key] = left
            return _changed(key, old, left, BestPathReason.ONLY_PATH)
        entry.best, entry.reason = select_best(list(entry.paths.values()), self.local_asn)
        return _changed(key, old, entry.best, entry.reason)


def _best(entry: Path | _Entry) -> Path:
    return entry if type(entry) is not _Entry else entry.best  # type: ignore[return-value,union-attr]


def _changed(key: RouteKey, old: Path | None, new: Path | None, reason: BestPathReason | None) -> RibChange | None:
    if old is new or old == new:
        return None
    return RibChange(key, old, new, reason)


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
            if path.source is not peer and path.source != peer:
                raise ValueError(f"path source {path.source} is not the receiving peer {peer}")
            key = path.route.key
            adj.add(path, key)
            changes.append(self.loc.add(path, key))
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
