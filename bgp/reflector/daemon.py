"""The route reflector: bgp/speaker.py's sessions and owner task, with a raw decoder and a raw table.

Hot path (what makes 100k routes x 10 clients fast, see docs/benchmarks.md): an UPDATE is cut by
`wire.decode_raw_update` into raw attributes and (key, NLRI bytes); the routes go into `RawTable` as
tuples; the changes of up to FLUSH_UPDATES UPDATEs (or whatever arrived before the owner task goes
idle) are flushed together: each run of routes sharing attributes is encoded ONCE
(`wire.encode_raw_update`) and the same bytes object is written to every member of every update group
allowed to see it (RFC 4456 section 6 rules, route-target filter), except the peer it came from.
Nothing on that path logs or builds a per-route object.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address
from typing import Any

from nvfabric.bgp import fsm, wire
from nvfabric.bgp.config import ConfigError, DynamicNeighbors, Neighbor
from nvfabric.bgp.reflector import policy, rtc
from nvfabric.bgp.reflector.config import MaxPrefixAction, PeerPolicy, ReflectorConfig
from nvfabric.bgp.reflector.table import AttrSet, Changes, Kind, RawTable
from nvfabric.bgp.routes import Family, PeerRef
from nvfabric.bgp.session import Peer
from nvfabric.bgp.speaker import Notice, PeerStatus, Speaker

log = logging.getLogger(__name__)

FLUSH_UPDATES = 64  # received UPDATEs per outgoing batch at most (latency bound under a burst)
CEASE_MAX_PREFIX = 1  # RFC 4486 section 4: Maximum Number of Prefixes Reached
ATTR_CACHE_MAX = 4096  # distinct attribute sets remembered per peer


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


@dataclass
class Stats:
    updates_out: int = 0
    bytes_out: int = 0
    flushes: int = 0
    loops: int = 0
    max_prefix_events: int = 0
    reloads: int = 0
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
        self._over_limit: set[str] = set()
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
        self._over_limit.discard(address)
        super()._on_closed(peer, event)
        self._schedule_flush()

    def _table_messages(self, peer: Peer, negotiated: wire.Negotiated, family: Family | None) -> bytes:
        """The whole table for one peer (on Established / ROUTE-REFRESH): runs grouped by attribute set."""
        address = peer.settings.address
        group = self._group_policy(peer)
        assert isinstance(group, GroupPolicy)
        out: list[bytes] = []
        for f in sorted(negotiated.families, key=lambda f: f.value):
            if (family is not None and f is not family) or f not in self.rib.best:
                continue
            runs: dict[AttrSet, list[bytes] | None] = {}
            for attrs, raw in self.rib.best[f].values():
                run = runs.get(attrs, ())
                if run == ():
                    ok = attrs.address != address and _eligible(group, negotiated.families, attrs)
                    run = runs[attrs] = [] if ok else None
                if run is not None:
                    run.append(raw)
            for attrs, raws in runs.items():
                if raws:
                    out += wire.encode_raw_update(f, attrs.out, attrs.next_hop, raws)
        data = b"".join(out)
        counters = self.stats.peer(address)
        counters.updates_out += len(out)
        counters.bytes_out += len(data)
        self.stats.updates_out += len(out)
        self.stats.bytes_out += len(data)
        return data

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
                self.rib.receive(self._attrset(peer, ref, part), part.announced, pending)
                self._check_max_prefix(peer, address)
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

    def _check_max_prefix(self, peer: Peer, address: str) -> None:
        limit = self.policy(address).max_prefix
        if limit is None:
            return
        count = self.rib.counts.get(address, 0)
        if count <= limit.limit:
            self._over_limit.discard(address)
            return
        if address in self._over_limit:
            return
        self._over_limit.add(address)
        self.stats.max_prefix_events += 1
        log.warning("peer sent %d routes, over its limit of %d (action %s)", count, limit.limit, limit.action.value,
                    extra={"event": "max-prefix", "peer": peer.name})
        if limit.action is MaxPrefixAction.TEARDOWN and peer.established is not None:
            peer.established.stop(fsm.ERR_CEASE, CEASE_MAX_PREFIX, "maximum number of prefixes reached")

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
        # Per group: (bytes, messages, excluded member, only member).
        parts: list[list[tuple[bytes, int, Any, Any]]] = [[] for _ in groups]
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
                        parts[i].append((*announcement(), attrs.peer, None))
                elif seg.kind is Kind.WITHDRAW:
                    if _eligible(gpol, families, attrs):
                        parts[i].append((*withdrawal(), attrs.peer, None))
                else:
                    old = seg.old
                    assert old is not None
                    was = _eligible(gpol, families, old)
                    if _eligible(gpol, families, attrs):
                        parts[i].append((*announcement(), attrs.peer, None))
                        if was and old.peer is not attrs.peer:
                            # The new best's own source held the old best from us: take it back.
                            parts[i].append((*withdrawal(), None, attrs.peer))
                    elif was:
                        parts[i].append((*withdrawal(), old.peer, None))
        stats = self.stats
        for (group, _gpol, _families), group_parts in zip(groups, parts, strict=True):
            if not group_parts:
                continue
            special = {p[2] for p in group_parts} | {p[3] for p in group_parts}
            common: tuple[bytes, int] | None = None
            for member in group.members:
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

    # -- reload -------------------------------------------------------------------------------------------

    async def reload(self, new: ReflectorConfig) -> ReloadResult:
        """Apply a new configuration: neighbours added are accepted (or dialled), removed ones closed with
        Cease / Peer De-configured (RFC 4486), changed ones reset; everything else is left alone."""
        old = self.rr_config
        for name in ("asn", "router_id", "cluster_id", "listen", "families", "hold_time", "graceful_restart"):
            if getattr(old, name) != getattr(new, name):
                raise ConfigError(name, "cannot change without a restart (reload refused, running configuration kept)")
        before = {n.name: n for n in old.neighbors}
        after = {n.name: n for n in new.neighbors}
        removed = [name for name, n in before.items() if after.get(name) != n]
        added = [name for name, n in after.items() if before.get(name) != n]
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
        self.stats.reloads += 1
        result = ReloadResult(tuple(added), tuple(removed))
        log.info("configuration reloaded: added %s, removed %s", ", ".join(added) or "none",
                 ", ".join(removed) or "none", extra={"event": "reload"})
        return result


def _in(address: str, dynamic: DynamicNeighbors) -> bool:
    ip = ip_address(address)
    return ip.version == dynamic.prefix.version and ip in dynamic.prefix


def _eligible(group: GroupPolicy, families: frozenset[Family], attrs: AttrSet) -> bool:
    """May a peer with this policy receive routes with these attributes? (RFC 4456 section 6, then the
    route-target filter for EVPN.)"""
    return (
        attrs.family in families
        and policy.reflects_to(attrs.client, group.client)
        and (attrs.family is not Family.L2VPN_EVPN or rtc.admits(group.route_targets, attrs.rts))
    )
