"""The route reflector: bgp/speaker.py's sessions and owner task, with a raw decoder and a raw table.

Hot path (what makes 100k routes x 10 clients fast, see docs/benchmarks.md): an UPDATE is cut by
`wire.decode_raw_update` into raw attributes and (key, NLRI bytes); the routes go into `RawTable` as
tuples; the changes of up to FLUSH_UPDATES UPDATEs (or whatever arrived before the owner task goes
idle) are flushed together: each run of routes sharing attributes is encoded ONCE
(`wire.encode_raw_update`) and the same bytes object is written to every member of every update group
allowed to see it (RFC 4456 section 6 rules, route-target filter), except the peer it came from.
Nothing on that path logs or builds a per-route object.

Back-pressure: a peer whose transport is paused (`Peer.writable` false, see bgp/session.py) gets no
bytes; what it is owed is kept in an `Owed` as routes, the latest change per route in order, so memory
follows the table, not the churn. The initial table (Established, ROUTE-REFRESH) is owed the same way:
a cursor over a snapshot of the table's keys, encoded a chunk at a time as the peer reads
(`_feed`), never one bytes object per peer.

Inbound policy: a neighbour's `announce_route_targets` lists the route targets its EVPN routes may carry;
an UPDATE carrying others is treated as withdrawn (RFC 7606 vocabulary) and counted, not reflected.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, ip_address
from typing import Any

from nvfabric.bgp import fsm, wire
from nvfabric.bgp.config import ConfigError, DynamicNeighbors, Neighbor
from nvfabric.bgp.reflector import policy, rtc
from nvfabric.bgp.reflector.config import PeerPolicy, ReflectorConfig, ReflectorNeighbor
from nvfabric.bgp.reflector.table import AttrSet, Changes, Kind, RawTable
from nvfabric.bgp.routes import Family, PeerRef
from nvfabric.bgp.session import Peer
from nvfabric.bgp.speaker import Notice, PeerStatus, Speaker

log = logging.getLogger(__name__)

FLUSH_UPDATES = 64  # received UPDATEs per outgoing batch at most (latency bound under a burst)
ATTR_CACHE_MAX = 4096  # distinct attribute sets remembered per peer
FEED_ROUTES = 1024  # routes per chunk fed to a peer that was owed them (about 64 KiB of UPDATEs)
FEED_CHUNKS = 16  # chunks per turn of the event loop, so one peer's table does not starve the others


@dataclass(frozen=True)
class GroupPolicy:
    """The reflector's part of an update group key: peers with equal policy get equal bytes."""

    client: bool
    route_targets: frozenset[bytes] | None


@dataclass
class PeerCounters:
    updates_out: int = 0
    bytes_out: int = 0
    updates_in: int = 0
    loops: int = 0
    policy_dropped: int = 0  # routes outside its announce_route_targets


@dataclass
class Stats:
    updates_out: int = 0
    bytes_out: int = 0
    flushes: int = 0
    loops: int = 0
    max_prefix_events: int = 0
    reloads: int = 0
    policy_dropped: int = 0
    owed_peak: int = 0  # most routes owed to one peer at once (back-pressure)
    per_peer: dict[str, PeerCounters] = field(default_factory=dict)

    def peer(self, address: str) -> PeerCounters:
        counters = self.per_peer.get(address)
        if counters is None:
            counters = self.per_peer[address] = PeerCounters()
        return counters


@dataclass(frozen=True)
class ReloadResult:
    added: tuple[str, ...]
    removed: tuple[str, ...]


class Owed:
    """What one peer is owed while it is not written to directly: the rest of a table (per family, a
    snapshot of the keys) and then the changes since, per family the latest per NLRI in the order they
    last changed (None: withdraw). Nothing here is bytes of our own: the NLRI are the table's objects."""

    __slots__ = ("tables", "eor", "changes", "count")

    def __init__(self) -> None:
        self.tables: list[tuple[Family, list[bytes]]] = []
        self.eor: list[Family] = []
        self.changes: dict[Family, dict[bytes, AttrSet | None]] = {}
        self.count = 0  # routes in `changes`

    def __len__(self) -> int:
        return sum(len(keys) for _, keys in self.tables) + self.count

    def record(self, family: Family, raws: list[bytes], attrs: AttrSet | None) -> None:
        changes = self.changes.get(family)
        if changes is None:
            changes = self.changes[family] = {}
        before = len(changes)
        for raw in raws:
            changes.pop(raw, None)  # re-inserted at the end: the order of last change
            changes[raw] = attrs
        self.count += len(changes) - before

    def take(self, count: int) -> tuple[Family, list[tuple[bytes, AttrSet | None]]] | None:
        """Up to `count` of the oldest changes of one family, removed."""
        for family, changes in self.changes.items():
            if changes:
                items = list(itertools.islice(changes.items(), count))
                for raw, _attrs in items:
                    del changes[raw]
                self.count -= len(items)
                return family, items
        return None


def _raw_decoder(negotiated: wire.Negotiated, body: bytes, source: PeerRef | None) -> wire.RawUpdate:
    return wire.decode_raw_update(negotiated, body)


class Reflector(Speaker):
    def __init__(self, config: ReflectorConfig, *, inbox_size: int = 4096) -> None:
        super().__init__(config.speaker_config(), inbox_size=inbox_size, decoder=_raw_decoder)
        self.rr_config = config
        self.rib = RawTable(config.asn, config.families)  # type: ignore[assignment]  # same calls as rib.Rib
        self.router_id = IPv4Address(config.router_id)
        self.cluster_id = IPv4Address(config.cluster_id)
        self.stats = Stats()
        self.started = time.time()
        self.latency_observer: Callable[[float], None] | None = None
        self._policies: dict[str, PeerPolicy] = {}
        self._attr_cache: dict[str, dict[tuple[Any, ...], AttrSet]] = {}
        self._owed: dict[Peer, Owed] = {}
        self._pending = Changes()
        self._pending_since: float | None = None
        self._since_flush = 0
        self._flush_handle: asyncio.Handle | None = None
        self.subscribe(self._on_notices)

    def policy(self, address: str) -> PeerPolicy:
        found = self._policies.get(address)
        if found is None:
            found = self._policies[address] = self.rr_config.policy_for(address)
        return found

    # -- speaker hooks ------------------------------------------------------------------------------------

    def _group_policy(self, peer: Peer) -> Hashable:
        p = self.policy(peer.settings.address)
        return GroupPolicy(p.client, p.route_targets)

    def _on_established(self, peer: Peer, event: fsm.Established) -> None:
        self._attr_cache.pop(peer.settings.address, None)
        super()._on_established(peer, event)

    def _on_closed(self, peer: Peer, event: fsm.Closed) -> None:
        address = peer.settings.address
        self._attr_cache.pop(address, None)
        self._owed.pop(peer, None)
        super()._on_closed(peer, event)
        self._schedule_flush()

    def _on_peer_idle(self, peer: Peer) -> None:
        super()._on_peer_idle(peer)
        if peer.settings.address not in self.peers:
            self._policies.pop(peer.settings.address, None)

    def _send_table(self, peer: Peer, negotiated: wire.Negotiated, family: Family | None) -> None:
        """The table for one peer (on Established / ROUTE-REFRESH) is owed, then fed as the peer reads."""
        owed = self._owed.get(peer)
        if owed is None:
            owed = self._owed[peer] = Owed()
        for f in sorted(negotiated.families, key=lambda f: f.value):
            if (family is None or f is family) and f in self.rib.best:
                owed.tables.append((f, list(self.rib.best[f])))
            if family is None:
                owed.eor.append(f)
        self._feed(peer)

    def _on_writable(self, peer: Peer) -> None:
        if peer in self._owed:
            asyncio.get_running_loop().call_soon(self._feed, peer)

    def _feed(self, peer: Peer) -> None:
        """Write what `peer` is owed, a chunk at a time, while its transport takes it."""
        owed = self._owed.get(peer)
        negotiated = peer.negotiated
        if owed is None or negotiated is None:
            return
        for _ in range(FEED_CHUNKS):
            if not peer.writable:
                return  # resumed by _on_writable
            messages = self._next_chunk(peer, negotiated, owed)
            if messages is None:
                del self._owed[peer]
                return
            if messages:
                data = b"".join(messages)
                peer.send(data)
                self._count_out(peer, len(messages), len(data))
        asyncio.get_running_loop().call_soon(self._feed, peer)

    def _next_chunk(self, peer: Peer, negotiated: wire.Negotiated, owed: Owed) -> list[bytes] | None:
        """The next UPDATEs owed to `peer` (possibly none), or None when nothing is left."""
        address = peer.settings.address
        group = self._group_policy(peer)
        assert isinstance(group, GroupPolicy)
        runs: dict[tuple[AttrSet | None, Family], list[bytes]] = {}
        if owed.tables:
            family, keys = owed.tables[0]
            best = self.rib.best[family]
            for key in keys[-FEED_ROUTES:]:
                entry = best.get(key)
                if entry is not None:
                    attrs, raw = entry
                    if attrs.address != address and _eligible(group, negotiated.families, attrs):
                        runs.setdefault((attrs, family), []).append(raw)
            del keys[-FEED_ROUTES:]
            if not keys:
                owed.tables.pop(0)
        elif owed.eor:
            messages = [wire.encode_eor(f) for f in owed.eor]
            owed.eor.clear()
            return messages
        elif owed.count:
            # Each route appears once, with its latest change: the order across routes does not matter.
            taken = owed.take(FEED_ROUTES)
            assert taken is not None
            family, items = taken
            for raw, attrs in items:
                runs.setdefault((attrs, family), []).append(raw)
        else:
            return None
        messages: list[bytes] = []
        for (attrs, family), raws in runs.items():
            if attrs is None:
                messages += wire.encode_raw_update(family, b"", b"", (), raws)
            else:
                messages += wire.encode_raw_update(family, attrs.out, attrs.next_hop, raws)
        return messages

    def _count_out(self, peer: Peer, messages: int, size: int) -> None:
        counters = self.stats.peer(peer.settings.address)
        counters.updates_out += messages
        counters.bytes_out += size
        self.stats.updates_out += messages
        self.stats.bytes_out += size

    def _on_update(self, peer: Peer, event: fsm.UpdateReceived) -> None:
        result: wire.RawUpdate = event.result
        counters = self.counters
        counters.updates_in += 1
        address = peer.settings.address
        self.stats.peer(address).updates_in += 1
        if result.errors:
            counters.update_errors += 1
            for error in result.errors:
                log.warning("malformed UPDATE (%s): %s; raw %s; update %s", error.action, error.reason, error.raw,
                            event.body.hex(), extra={"event": "malformed-update", "peer": peer.name})
        ref = self._refs.get(address)
        if ref is None:
            return
        if self._pending_since is None:
            self._pending_since = time.perf_counter()
        pending = self._pending
        best = self.rib.best
        if result.withdrawn:
            counters.withdrawals_in += len(result.withdrawn)
            for family, nlri in result.withdrawn_by_family():
                if family in best:
                    self.rib.withdraw(address, family, nlri, pending)
        # One UPDATE may announce IPv4 prefixes beside another family's (result.also).
        for part in (result, result.also):
            if part is None or not part.announced or part.family not in best:
                continue
            counters.routes_in += len(part.announced)
            reason = policy.loop_reason(part.attrs, self.router_id, self.cluster_id)
            if reason is not None:
                # RFC 4456 section 8: ignore the routes (and so withdraw what the peer sent before under them).
                self.stats.loops += len(part.announced)
                self.stats.peer(address).loops += len(part.announced)
                log.debug("ignoring %d looped routes: %s", len(part.announced), reason,
                          extra={"event": "loop", "peer": peer.name})
                self.rib.withdraw(address, part.family, part.announced, pending)
            else:
                attrs = self._attrset(peer, ref, part)
                if not _may_announce(self.policy(address), attrs):
                    # Not this client's to announce: treat-as-withdraw (what it sent before under these
                    # keys goes too), counted; never reflected.
                    self.stats.policy_dropped += len(part.announced)
                    self.stats.peer(address).policy_dropped += len(part.announced)
                    log.debug("dropping %d routes with route targets outside announce_route_targets",
                              len(part.announced), extra={"event": "policy-drop", "peer": peer.name})
                    self.rib.withdraw(address, part.family, part.announced, pending)
                else:
                    self.rib.receive(attrs, part.announced, pending)
                    self.check_max_prefix(peer, self.rib.counts.get(address, 0), part.family)
                    self.stats.max_prefix_events = self.counters.max_prefix_events
        if result.eor is not None:
            self._publish(self._on_eor(peer, result.eor))
        self._schedule_flush()

    # -- attribute sets -----------------------------------------------------------------------------------

    def _attrset(self, peer: Peer, ref: PeerRef, result: wire.RawUpdate) -> AttrSet:
        address = peer.settings.address
        family = result.family
        generation = self.rib.generation(address, family)
        cache = self._attr_cache.get(address)
        if cache is None:
            cache = self._attr_cache[address] = {}
        key = (family, result.attributes, result.next_hop, generation)
        attrs = cache.get(key)
        if attrs is None:
            if len(cache) >= ATTR_CACHE_MAX:
                cache.clear()
            attrs = cache[key] = AttrSet(
                peer, ref, self.policy(address).client, family, result.next_hop, result.attrs,
                # RFC 4456 section 8: ORIGINATOR_ID = the BGP identifier of the peer that gave us the route
                # (kept if already set), our CLUSTER_ID prepended to CLUSTER_LIST.
                wire.reflect_attributes(result.attributes, ref.router_id, self.cluster_id),
                rtc.route_targets(result.attributes), rtc.mobility(result.attributes), generation,
            )
        return attrs

    # -- batching and sending -----------------------------------------------------------------------------

    def _on_notices(self, notices: list[Notice] | tuple[Notice, ...]) -> None:
        for notice in notices:
            if isinstance(notice, Changes):
                self._pending.extend(notice)
            elif isinstance(notice, PeerStatus):
                log.info("session %s%s", notice.state, f": {notice.reason}" if notice.reason else "",
                         extra={"event": notice.state, "peer": notice.peer,
                                **({"family": notice.family.name} if notice.family else {})})
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        self._since_flush += 1
        if self._since_flush >= FLUSH_UPDATES:
            self._flush()
        elif self._flush_handle is None and self._pending.segments:
            # Runs when the owner task has drained its inbox (it does not yield while items are queued).
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._since_flush = 0
        changes, self._pending = self._pending, Changes()
        since, self._pending_since = self._pending_since, None
        if not changes.segments:
            return
        self.stats.flushes += 1
        self._send(changes)
        if since is not None and self.latency_observer is not None:
            self.latency_observer(time.perf_counter() - since)

    def _send(self, changes: Changes) -> None:
        groups = [(g, g.key[1], g.negotiated.families) for g in self.groups.groups.values()]
        if not groups:
            return
        # Per group: (bytes, messages, excluded member, only member, segment, is a withdrawal).
        parts: list[list[tuple[bytes, int, Any, Any, Any, bool]]] = [[] for _ in groups]
        for seg in changes.segments:
            if not seg.raws:
                continue
            attrs = seg.attrs
            encoded: list[tuple[bytes, int] | None] = [None, None]  # announcement, withdrawal

            def announcement(a: AttrSet = attrs, raws: list[bytes] = seg.raws, e: list = encoded) -> tuple[bytes, int]:
                if e[0] is None:
                    messages = wire.encode_raw_update(a.family, a.out, a.next_hop, raws)
                    e[0] = (b"".join(messages), len(messages))
                return e[0]

            def withdrawal(a: AttrSet = attrs, raws: list[bytes] = seg.raws, e: list = encoded) -> tuple[bytes, int]:
                if e[1] is None:
                    messages = wire.encode_raw_update(a.family, b"", b"", (), raws)
                    e[1] = (b"".join(messages), len(messages))
                return e[1]

            for i, (_group, gpol, families) in enumerate(groups):
                if seg.kind is Kind.ANNOUNCE:
                    if _eligible(gpol, families, attrs):
                        parts[i].append((*announcement(), attrs.peer, None, seg, False))
                elif seg.kind is Kind.WITHDRAW:
                    if _eligible(gpol, families, attrs):
                        parts[i].append((*withdrawal(), attrs.peer, None, seg, True))
                else:
                    old = seg.old
                    assert old is not None
                    was = _eligible(gpol, families, old)
                    if _eligible(gpol, families, attrs):
                        parts[i].append((*announcement(), attrs.peer, None, seg, False))
                        if was and old.peer is not attrs.peer:
                            # The new best's own source held the old best from us: take it back.
                            parts[i].append((*withdrawal(), None, attrs.peer, seg, True))
                    elif was:
                        parts[i].append((*withdrawal(), old.peer, None, seg, True))
        stats = self.stats
        for (group, _gpol, _families), group_parts in zip(groups, parts, strict=True):
            if not group_parts:
                continue
            special = {p[2] for p in group_parts} | {p[3] for p in group_parts}
            common: tuple[bytes, int] | None = None
            for member in group.members:
                owed = self._owed.get(member)
                if owed is not None or not member.writable:
                    self._owe(member, owed, group_parts)
                    continue
                if member in special:
                    chosen = [p for p in group_parts if p[2] is not member and (p[3] is None or p[3] is member)]
                    data, count = b"".join(p[0] for p in chosen), sum(p[1] for p in chosen)
                else:
                    if common is None:
                        chosen = [p for p in group_parts if p[3] is None]
                        common = (b"".join(p[0] for p in chosen), sum(p[1] for p in chosen))
                    data, count = common
                if data and member.send(data):
                    peer_counters = stats.peer(member.settings.address)
                    peer_counters.updates_out += count
                    peer_counters.bytes_out += len(data)
                    stats.updates_out += count
                    stats.bytes_out += len(data)
                    group.messages_sent += count

    def _owe(self, member: Peer, owed: Owed | None, group_parts: list[tuple[Any, ...]]) -> None:
        """`member` is not taking bytes: keep what these parts would have sent it as routes."""
        if member.established is None:
            return
        if owed is None:
            owed = self._owed[member] = Owed()
        for _data, _count, excluded, only, seg, is_withdrawal in group_parts:
            if excluded is member or (only is not None and only is not member):
                continue
            owed.record(seg.attrs.family, seg.raws, None if is_withdrawal else seg.attrs)
        if len(owed) > self.stats.owed_peak:
            self.stats.owed_peak = len(owed)

    # -- reload -------------------------------------------------------------------------------------------

    async def reload(self, new: ReflectorConfig) -> ReloadResult:
        """Apply a new configuration: neighbours added are accepted (or dialled), removed ones closed with
        Cease / Peer De-configured (RFC 4486), changed ones reset; everything else is left alone."""
        old = self.rr_config
        for name in ("asn", "router_id", "cluster_id", "listen", "families", "hold_time", "graceful_restart"):
            if getattr(old, name) != getattr(new, name):
                raise ConfigError(name, "cannot change without a restart (reload refused, running configuration kept)")
        before = {n.name: _without_bfd(n) for n in old.neighbors}
        after = {n.name: _without_bfd(n) for n in new.neighbors}
        # A change of `bfd` alone changes the BFD session (sync_bfd), not the BGP session.
        removed = [name for name, n in before.items() if after.get(name) != n]
        added = [name for name, n in after.items() if before.get(name) != n]
        await self.start_bfd(new.speaker_config())
        return await self.call(lambda: self._reload(new, removed, added))

    def _reload(self, new: ReflectorConfig, removed: list[str], added: list[str]) -> ReloadResult:
        old = self.rr_config
        self.rr_config = new
        self.config = new.speaker_config()
        self._policies.clear()
        self._dynamic = [(d.prefix, d) for d in self.config.dynamic_neighbors]
        loop = asyncio.get_running_loop()
        old_by_name = {n.name: n for n in old.neighbors}
        for name in removed:
            session = old_by_name[name].session
            for address, peer in list(self.peers.items()):
                gone = address == name if isinstance(session, Neighbor) else (
                    _in(address, session) and not any(n.name == address for n in new.neighbors))
                if gone:
                    del self.peers[address]
                    loop.create_task(peer.stop(fsm.CEASE_PEER_DECONFIGURED))
            if self.listener is not None and session.md5_password:
                if isinstance(session, Neighbor):
                    self.listener.set_md5(session.address, "")
                else:
                    self.listener.set_md5(str(session.prefix.network_address), "", session.prefix.prefixlen)
        new_by_name = {n.name: n for n in new.neighbors}
        for name in added:
            session = new_by_name[name].session
            if self.listener is not None and session.md5_password:
                if isinstance(session, Neighbor):
                    self.listener.set_md5(session.address, session.md5_password)
                else:
                    self.listener.set_md5(str(session.prefix.network_address), session.md5_password,
                                          session.prefix.prefixlen)
            if isinstance(session, Neighbor):
                self.add_neighbor(session)
        self.sync_bfd()
        self.stats.reloads += 1
        result = ReloadResult(tuple(added), tuple(removed))
        log.info("configuration reloaded: added %s, removed %s", ", ".join(added) or "none",
                 ", ".join(removed) or "none", extra={"event": "reload"})
        return result


def _without_bfd(n: ReflectorNeighbor) -> ReflectorNeighbor:
    return replace(n, session=replace(n.session, bfd=None))


def _in(address: str, dynamic: DynamicNeighbors) -> bool:
    ip = ip_address(address)
    return ip.version == dynamic.prefix.version and ip in dynamic.prefix


def _may_announce(peer: PeerPolicy, attrs: AttrSet) -> bool:
    """Inbound policy: every route target of an EVPN route must be one the peer may announce (and it
    needs one); unicast routes and peers without `announce_route_targets` are not filtered."""
    allowed = peer.announce_route_targets
    return allowed is None or attrs.family is not Family.L2VPN_EVPN or bool(attrs.rts and attrs.rts <= allowed)


def _eligible(group: GroupPolicy, families: frozenset[Family], attrs: AttrSet) -> bool:
    """May a peer with this policy receive routes with these attributes? (RFC 4456 section 6, then the
    route-target filter for EVPN.)"""
    return (
        attrs.family in families
        and policy.reflects_to(attrs.client, group.client)
        and (attrs.family is not Family.L2VPN_EVPN or rtc.admits(group.route_targets, attrs.rts))
    )
