"""The reflector's table: routes kept as the NLRI bytes they arrived in, attributes shared per UPDATE.

A reflector forwards what it receives (RFC 4456 section 8) and needs only each route's key to choose a
best path, so nothing here builds a route object. One `AttrSet` holds everything the routes of one
UPDATE share (raw attributes, the reflected attributes to send, next hop, parsed PathAttributes for best
path, route targets, MAC mobility); a route is a `(AttrSet, raw NLRI)` tuple in a dict keyed by the NLRI
key bytes (`wire.RawNlri.key`). Keys with a single candidate (almost all: a host's route under its own
RD) live only in `best`; keys with several candidates (the same route via another reflector) also have
an entry in `alts`, per peer, where selection runs the decision steps of `bgp/rib.py`.

Changes come out as `Changes`: ordered segments, one per run of routes sharing an attribute set, so the
daemon encodes each run once (`wire.encode_raw_update`) for every update group.

The methods the speaker calls for graceful restart and session loss (`mark_stale`, `sweep_stale`,
`peer_down`) take a `PeerRef`, as `bgp.rib.Rib`'s do, and return `[Changes]`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nvfabric.bgp import rib
from nvfabric.bgp.routes import Family, PathAttributes, PeerRef

Entry = tuple["AttrSet", bytes]


class AttrSet:
    """What the routes of one UPDATE from one peer share. `generation` is the peer's stale-marking
    generation when it arrived (graceful restart: older generations are stale)."""

    __slots__ = ("peer", "address", "ref", "client", "family", "next_hop", "attrs", "out", "rts", "mobility",
                 "generation", "ident")

    def __init__(self, peer: Any, ref: PeerRef, client: bool, family: Family, next_hop: bytes,
                 attrs: PathAttributes, out: bytes, rts: frozenset[bytes], mobility: tuple[bool, int],
                 generation: int) -> None:
        self.peer = peer  # the session (bgp.session.Peer): excluded from its own routes' recipients
        self.address = str(ref.address)
        self.ref = ref
        self.client = client
        self.family = family
        self.next_hop = next_hop
        self.attrs = attrs
        self.out = out  # attributes as sent: ORIGINATOR_ID and CLUSTER_LIST added (RFC 4456 section 8)
        self.rts = rts
        self.mobility = mobility
        self.generation = generation
        # What a receiver sees: equal idents with equal NLRI bytes are the same announcement.
        self.ident = (family, next_hop, out)

    # rib.select_best reads .route, .attrs, .source; the EVPN steps it takes from .route are done here.
    route = None

    @property
    def source(self) -> PeerRef:
        return self.ref


class Kind(enum.Enum):
    ANNOUNCE = "announce"  # send raws with attrs to groups eligible for attrs
    WITHDRAW = "withdraw"  # withdraw raws from groups that were eligible for attrs
    REPLACE = "replace"  # best moved to another source or another route-target set: see Segment


@dataclass(slots=True)
class Segment:
    """A run of changes sharing attributes. REPLACE: `attrs` is the new best, `old` the previous one; the
    groups eligible for `old` but not `attrs` (and `attrs`'s own peer) get a withdrawal."""

    kind: Kind
    attrs: AttrSet
    raws: list[bytes]
    old: AttrSet | None = None


@dataclass(slots=True)
class Changes:
    segments: list[Segment] = field(default_factory=list)
    # Open withdrawal runs by (peer, family, client flag, route targets): withdrawals name keys only, so
    # the routes of several UPDATEs (and attribute sets) go out in one run; closed by any other change,
    # which keeps every key's announce/withdraw order.
    withdrawal_runs: dict[tuple[Any, ...], list[bytes]] = field(default_factory=dict)

    @property
    def routes(self) -> int:
        return sum(len(s.raws) for s in self.segments)

    def add(self, kind: Kind, attrs: AttrSet, raw: bytes, old: AttrSet | None = None) -> None:
        self.withdrawal_runs.clear()
        if self.segments:
            last = self.segments[-1]
            if last.kind is kind and last.attrs is attrs and last.old is old:
                last.raws.append(raw)
                return
        self.segments.append(Segment(kind, attrs, [raw], old))

    def run(self, kind: Kind, attrs: AttrSet) -> list[bytes]:
        """The list to append same-attribute changes to (the hot path appends without calls)."""
        if kind is Kind.WITHDRAW:
            signature = (attrs.address, attrs.family, attrs.client, attrs.rts)
            found = self.withdrawal_runs.get(signature)
            if found is not None:
                return found
        else:
            self.withdrawal_runs.clear()
        if self.segments:
            last = self.segments[-1]
            if last.kind is kind and last.attrs is attrs and last.old is None:
                return last.raws
        segment = Segment(kind, attrs, [])
        self.segments.append(segment)
        if kind is Kind.WITHDRAW:
            self.withdrawal_runs[signature] = segment.raws
        return segment.raws

    def extend(self, other: Changes) -> None:
        self.withdrawal_runs.clear()
        self.segments.extend(other.segments)


class RawTable:
    def __init__(self, local_asn: int, families: Iterable[Family] = tuple(Family)) -> None:
        self.local_asn = local_asn
        self.best: dict[Family, dict[bytes, Entry]] = {f: {} for f in families}
        self.alts: dict[Family, dict[bytes, dict[str, Entry]]] = {f: {} for f in self.best}
        self.counts: dict[str, int] = {}  # per peer address: keys it has a candidate for (max-prefix)
        self._generation: dict[tuple[str, Family], int] = {}

    def __len__(self) -> int:
        return sum(len(t) for t in self.best.values())

    def generation(self, address: str, family: Family) -> int:
        return self._generation.get((address, family), 0)

    # -- routes in ----------------------------------------------------------------------------------------

    def receive(self, attrs: AttrSet, announced: Sequence[Any], changes: Changes) -> None:
        """Routes (wire.RawNlri: key, raw) announced by attrs.peer with attrs. Hot path: no per-route calls."""
        table, alts = self.best[attrs.family], self.alts[attrs.family]
        out = changes.run(Kind.ANNOUNCE, attrs)
        address, new_keys = attrs.address, 0
        for key, raw in announced:
            current = table.get(key)
            if current is None:
                table[key] = (attrs, raw)
                out.append(raw)
                new_keys += 1
            elif key in alts:
                new_keys += self._add_alternative(table, alts, key, (attrs, raw), changes)
                out = changes.run(Kind.ANNOUNCE, attrs)
            elif current[0].address == address:
                # Implicit withdrawal (RFC 4271 3.1): the same peer replaces its route.
                old = current[0]
                table[key] = (attrs, raw)
                if old is attrs or (current[1] == raw and old.ident == attrs.ident):
                    continue  # identical re-announcement (e.g. after graceful restart): nothing to send
                if old.rts == attrs.rts:
                    out.append(raw)
                else:
                    changes.add(Kind.REPLACE, attrs, raw, old)
                    out = changes.run(Kind.ANNOUNCE, attrs)
            else:
                new_keys += self._add_alternative(table, alts, key, (attrs, raw), changes)
                out = changes.run(Kind.ANNOUNCE, attrs)
        if new_keys:
            self.counts[address] = self.counts.get(address, 0) + new_keys

    def withdraw(self, address: str, family: Family, withdrawn: Iterable[Any], changes: Changes) -> None:
        """Routes (wire.RawNlri) withdrawn by the peer at `address`."""
        table, alts = self.best[family], self.alts[family]
        gone = 0
        last: AttrSet | None = None
        out: list[bytes] = []
        for key, _raw in withdrawn:
            current = table.get(key)
            if current is None:
                continue
            if key in alts:
                gone += self._remove_alternative(table, alts, key, address, changes)
                last = None
            elif current[0].address == address:
                del table[key]
                gone += 1
                if current[0] is not last:
                    last = current[0]
                    out = changes.run(Kind.WITHDRAW, last)
                out.append(current[1])
        if gone:
            self.counts[address] -= gone

    def _add_alternative(self, table: dict, alts: dict, key: bytes, new: Entry, changes: Changes) -> int:
        current = table[key]
        candidates = alts.get(key)
        if candidates is None:
            candidates = alts[key] = {current[0].address: current}
        address = new[0].address
        added = address not in candidates
        candidates[address] = new
        best = self._select(candidates)
        if best is not current:
            table[key] = best
            self._changed(current, best, changes)
        return int(added)

    def _remove_alternative(self, table: dict, alts: dict, key: bytes, address: str, changes: Changes) -> int:
        candidates = alts[key]
        if candidates.pop(address, None) is None:
            return 0
        current = table[key]
        if len(candidates) == 1:
            del alts[key]
            best = next(iter(candidates.values()))
        else:
            best = self._select(candidates)
        if best is not current:
            table[key] = best
            self._changed(current, best, changes)
        return 1

    def _changed(self, old: Entry, new: Entry, changes: Changes) -> None:
        if old[1] == new[1] and old[0].ident == new[0].ident and old[0].address == new[0].address:
            return
        if old[0].address == new[0].address and old[0].rts == new[0].rts:
            changes.add(Kind.ANNOUNCE, new[0], new[1])
        else:
            changes.add(Kind.REPLACE, new[0], new[1], old[0])

    def _select(self, candidates: dict[str, Entry]) -> Entry:
        """Best of several candidates for one key: RFC 7432 section 15 (sticky, then the highest MAC
        Mobility sequence) from the raw communities, then bgp/rib.py's RFC 4271/4456 steps."""
        entries = list(candidates.values())
        top = max(e[0].mobility for e in entries)
        entries = [e for e in entries if e[0].mobility == top]
        if len(entries) == 1:
            return entries[0]
        best, _reason = rib.select_best([e[0] for e in entries], self.local_asn)
        return next(e for e in entries if e[0] is best)

    # -- peers going away (called by bgp/speaker.py) -----------------------------------------------------

    def peer_down(self, peer: PeerRef) -> list[Changes]:
        return [self._drop(str(peer.address), None)]

    def mark_stale(self, peer: PeerRef, families: Iterable[Family] | None = None) -> int:
        """RFC 4724 4.2: what the peer has now is stale; routes it re-announces get a newer generation."""
        address = str(peer.address)
        for family in families if families is not None else self.best:
            self._generation[(address, family)] = self.generation(address, family) + 1
        return self.counts.get(address, 0)

    def sweep_stale(self, peer: PeerRef, family: Family | None = None) -> list[Changes]:
        address = str(peer.address)
        changes = Changes()
        for f in [family] if family is not None else list(self.best):
            current = self.generation(address, f)
            self._drop_where(address, f, lambda attrs, g=current: attrs.generation < g, changes)
        return [changes]

    def _drop(self, address: str, families: Iterable[Family] | None) -> Changes:
        changes = Changes()
        for family in families if families is not None else list(self.best):
            self._drop_where(address, family, None, changes)
        return changes

    def _drop_where(self, address: str, family: Family, stale: Any, changes: Changes) -> None:
        keys = [k for k, (a, _) in self.best[family].items() if a.address == address and (stale is None or stale(a))]
        keys += [k for k, c in self.alts[family].items()
                 if address in c and c[address][0] is not self.best[family][k][0]
                 and (stale is None or stale(c[address][0]))]
        self.withdraw(address, family, [(k, b"") for k in keys], changes)

    # -- reading ------------------------------------------------------------------------------------------

    def routes(self, family: Family) -> Iterable[tuple[bytes, Entry]]:
        return self.best[family].items()

    def candidates(self, family: Family, key: bytes) -> list[Entry]:
        alts = self.alts[family].get(key)
        if alts is not None:
            return list(alts.values())
        entry = self.best[family].get(key)
        return [entry] if entry else []
