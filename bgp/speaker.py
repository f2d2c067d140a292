"""The BGP speaker: ONE owner task that owns every session's events, the RIB and the outbound tables.

Everything that changes state runs in `_run()`, one item at a time: events from sessions (through the
bounded `session.Inbox`) and commands from API callers (closures with a future, GoBGP's `mgmtCh` shape).
No locks, no shared mutation. The route reflector (bgp/reflector/) reuses this class: it subscribes to RIB
changes and re-advertises them through the same update groups (`groups.broadcast(..., exclude=peer)`),
overrides `_send_table` (a peer's whole table) and `_group_policy` (its update group key), and gives
sessions a raw decoder (`decoder=`, e.g. `wire.decode_raw_update`) so forwarded NLRI are not decoded into
objects.

Graceful restart (RFC 4724), both roles:
- restarting speaker: our OPEN carries the R bit on the first session to each peer after start, and the
  F bit per family when `forwarding_preserved`; we send our table and End-of-RIB at once (we originate, we
  have nothing to wait for);
- helper: when a GR-capable peer's session drops without a NOTIFICATION, its routes stay, marked stale,
  for its Restart Time; after it comes back they stay until its End-of-RIB (or `stale_time`), then the
  ones it did not re-announce are swept. Re-announced identical routes change nothing downstream.

BFD (bgp/bfd/): when a neighbour or dynamic range has `bfd`, the speaker owns one `Bfd` endpoint (or uses
one it is given, shared with the other speakers of its namespace). A configured neighbour's BFD session
exists as long as the neighbour; a dynamic neighbour's from its first Established until its Peer is
forgotten. Both send first unless `passive`: a dynamic peer is known once its BGP session is Established,
and a passive session of ours could stay Down for good after a flap, because FRR's bfdd keeps addressing
our previous session's discriminator, which a new session must drop (RFC 5880 6.8.6) and which only our
first packet (Your Discriminator 0) replaces.

When a BFD session goes from Up to Down while its BGP session is Established, the BGP session is closed at
once with Cease / BFD Down (RFC 9384), so its routes go at once (a session we close with a NOTIFICATION is
never a graceful restart). A neighbour that takes BFD down administratively (remote AdminDown) keeps its
BGP session (RFC 5882 3.2). The connect-retry loop is not held back while BFD is down: BGP may come back
before BFD does, and only a later Up -> Down closes it again; a path that is really down carries no TCP
either.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from nvfabric.bgp import fsm, rib, wire
from nvfabric.bgp.bfd import BfdConfig, BfdState, BfdStatus
from nvfabric.bgp.bfd.endpoint import Bfd
from nvfabric.bgp.config import DynamicNeighbors, MaxPrefix, MaxPrefixAction, Neighbor, SpeakerConfig
from nvfabric.bgp.routes import Family, MacIpRoute, Path, PeerRef, PrefixRoute, Route, RouteKey, UnicastRoute
from nvfabric.bgp.session import Inbox, Listener, Peer, PeerEvent, PeerSettings, cancel
from nvfabric.bgp.updgroup import UpdateGroups, encode_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerStatus:
    """A peer's session came up or went down, or it finished sending its table (End-of-RIB)."""

    peer: str
    state: str  # "established" | "down" | "end-of-rib"
    family: Family | None = None
    reason: str = ""


Notice = rib.RibChange | PeerStatus
Subscriber = Callable[[Sequence[Notice]], None]


@dataclass
class _Command:
    run: Callable[[], Any]
    done: asyncio.Future[Any]


@dataclass
class Counters:
    updates_in: int = 0
    routes_in: int = 0
    withdrawals_in: int = 0
    update_errors: int = 0
    refused: int = 0
    refused_opening: int = 0  # accepted connections refused: too many in OpenSent/OpenConfirm
    refused_prefix_full: int = 0  # refused: the dynamic prefix has max_connections already
    refused_held_down: int = 0  # refused: the peer's max-prefix restart timer is running
    max_prefix_events: int = 0
    routes_ignored: int = 0  # received on a speaker that does not accept routes (accept_routes false)
    dynamic_removed: int = 0
    bfd_teardowns: int = 0  # Established sessions closed because their BFD session went down


@dataclass
class _GracefulState:
    """Helper-side state for one peer whose routes are stale."""

    families: set[Family]
    timer: asyncio.TimerHandle | None = None


class Speaker:
    def __init__(
        self,
        config: SpeakerConfig,
        *,
        inbox_size: int = 4096,
        decoder: fsm.UpdateDecoder = fsm.typed_decoder,
        bfd: Bfd | None = None,
    ) -> None:
        """`decoder` is given to every session (configured and dynamic); a subclass that passes a raw
        decoder overrides `_on_update`, `_send_table` and `_group_policy`, and broadcasts its RIB
        changes through `groups` itself. `bfd`: a BFD endpoint shared with other speakers (one UDP port
        3784 per namespace: a second endpoint would take the first one's packets), started and stopped by
        whoever made it; without one, the speaker makes, starts and stops its own when a neighbour or a
        dynamic range has `bfd`."""
        self.config = config
        self.decoder = decoder
        self.inbox = Inbox(inbox_size)
        self.peers: dict[str, Peer] = {}
        self.listener: Listener | None = None
        self.groups = UpdateGroups()
        self.rib = rib.Rib(config.asn)
        # The PeerRef (address, BGP identifier, AS) each peer's paths carry, from its last OPEN.
        self._refs: dict[str, PeerRef] = {}
        self.local: dict[RouteKey, Path] = {}
        self.counters = Counters()
        self._subscribers: list[Subscriber] = []
        self._task: asyncio.Task[None] | None = None
        self._graceful: dict[str, _GracefulState] = {}
        self._started_sessions: set[str] = set()
        self._dynamic = [(d.prefix, d) for d in config.dynamic_neighbors]
        # Peers torn down for max-prefix: address -> loop time until which they are not accepted.
        self._held_down: dict[str, float] = {}
        self._establishments: dict[str, int] = {}  # of dynamic neighbours whose Peer was forgotten
        self._over_limit: set[str] = set()
        self.bfd = bfd
        self._owns_bfd = False
        # What the endpoint was asked for, per peer address (configuration, local address), and which of
        # those sessions are Up now (an Up -> Down is what closes a BGP session).
        self._bfd_sessions: dict[str, tuple[BfdConfig, str | None]] = {}
        self._bfd_up: set[str] = set()
        self._bfd_calls: set[asyncio.Task[Any]] = set()
        self._stopping = False

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.start_bfd(self.config)
        if self.config.listen is not None:
            self.listener = Listener(self.config.listen.address, self.config.listen.port, self._lookup)
            self.listener.open()
            for n in self.config.neighbors:
                if n.md5_password:
                    self.listener.set_md5(n.address, n.md5_password)
            for d in self.config.dynamic_neighbors:
                if d.md5_password:
                    self.listener.set_md5(str(d.prefix.network_address), d.md5_password, d.prefix.prefixlen)
            self.listener.start()
        for n in self.config.neighbors:
            self.add_neighbor(n)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bgp-speaker")

    async def start_bfd(self, config: SpeakerConfig) -> None:
        """Make and start the BFD endpoint if `config` has a neighbour or a dynamic range with `bfd` (at
        start, and before a reload that brings the first one)."""
        if self.bfd is None and wants_bfd(config):
            self.bfd = Bfd()
            self._owns_bfd = True
            await self.bfd.start()

    def add_neighbor(self, n: Neighbor) -> Peer:
        """Create and start the session of one configured neighbour (at start, or on a reload)."""
        peer = self._new_peer(
            PeerSettings(
                address=n.address,
                port=n.port,
                peer_asn=n.asn,
                local=self._capabilities(n.address),
                md5_password=n.md5_password,
                local_address=n.local_address,
                bind_device=n.bind_device,
                passive=n.passive,
                decoder=self.decoder,
                write_buffer_limit=self.config.write_buffer_limit,
                open_hold_time=self.config.open_hold_time,
            ),
        )
        self.peers[n.address] = peer
        peer.start()
        if n.bfd is not None:
            self._bfd_add(n.address, n.bfd, n.local_address)
        return peer

    def _new_peer(self, settings: PeerSettings, name: str | None = None) -> Peer:
        peer = Peer(settings, self.inbox, name=name)
        peer.on_writable = self._on_writable
        if settings.dynamic:
            peer.on_idle = self._on_peer_idle
        return peer

    def _on_writable(self, peer: Peer) -> None:
        """`peer`'s write buffer drained (called from the event loop). The reflector feeds it what it owes;
        a plain speaker writes its (small) table at once and has nothing waiting."""

    def _on_peer_idle(self, peer: Peer) -> None:
        """A dynamic neighbour has no connection left: forget its Peer (its routes went, or wait stale under
        graceful restart, through the owner task's own Closed handling, which keeps a reference)."""
        address = peer.settings.address
        if self.peers.get(address) is peer:
            del self.peers[address]
            self.counters.dynamic_removed += 1
            # An int per address ever seen (as `_refs`): the count of sessions survives the Peer object.
            self._establishments[address] = peer.establishments
            self._bfd_remove(address)

    def max_prefix(self, address: str) -> MaxPrefix:
        """The max-prefix setting of the peer at `address` (configured, then dynamic prefix)."""
        for n in self.config.neighbors:
            if n.address == address:
                return n.max_prefix
        dynamic = self._dynamic_for(address)
        return dynamic.max_prefix if dynamic is not None else MaxPrefix()

    def _dynamic_for(self, address: str) -> DynamicNeighbors | None:
        ip = ipaddress.ip_address(address)
        for prefix, dynamic in self._dynamic:
            if ip.version == prefix.version and ip in prefix:
                return dynamic
        return None

    def check_max_prefix(self, peer: Peer, count: int, family: Family) -> None:
        """RFC 4486 section 4: over its limit, a peer is warned about or torn down with Cease / Maximum
        Number of Prefixes Reached (data: AFI, SAFI, the limit) and held down for the restart time."""
        address = peer.settings.address
        setting = self.max_prefix(address)
        if count <= setting.limit:
            self._over_limit.discard(address)
            return
        if address in self._over_limit:
            return
        self._over_limit.add(address)
        self.counters.max_prefix_events += 1
        log.warning("peer %s sent %d routes, over its limit of %d (action %s)", peer.name, count, setting.limit,
                    setting.action.value, extra={"event": "max-prefix", "peer": peer.name})
        if setting.action is MaxPrefixAction.TEARDOWN and peer.established is not None:
            if setting.restart:
                self._held_down[address] = asyncio.get_running_loop().time() + setting.restart
                peer.hold_down(setting.restart)
            data = struct.pack("!HBI", family.afi, family.safi, setting.limit)
            peer.established.stop(fsm.ERR_CEASE, fsm.CEASE_MAX_PREFIX, f"maximum number of prefixes ({setting.limit})",
                                  data)

    async def stop(self, notify: bool = True) -> None:
        """`notify` False: the sessions close without a NOTIFICATION, so the peers keep our routes as a
        graceful restart (bgp/session.py `Peer.stop`)."""
        self._stopping = True
        for peer in list(self.peers.values()):
            await peer.stop(notify=notify)
        # After the Cease: the peer's BFD then sees AdminDown, which it must not act on (RFC 5882 3.2).
        if self.bfd is not None and self._owns_bfd:
            await self.bfd.stop()
        else:
            for address in list(self._bfd_sessions):
                self._bfd_remove(address)
        if self.listener is not None:
            await self.listener.close()
        for task in list(self._bfd_calls):
            await cancel(task)
        await cancel(self._task)

    def bfd_status(self) -> list[BfdStatus]:
        """This speaker's BFD sessions, sorted by peer (none without `bfd` anywhere)."""
        if self.bfd is None:
            return []
        return [status for status in self.bfd.status() if status.peer in self._bfd_sessions]

    def subscribe(self, subscriber: Subscriber) -> None:
        """`subscriber` is called from the owner task with each batch of changes; it must not block."""
        self._subscribers.append(subscriber)

    @property
    def running(self) -> bool:
        """The owner task runs: started, not stopped, and not ended by a failure."""
        return self._task is not None and not self._task.done() and not self._stopping

    @property
    def listen_port(self) -> int | None:
        return self.listener.port if self.listener else None

    # -- API: every call runs inside the owner task -------------------------------------------------------

    async def announce(self, routes: Iterable[Route | Path]) -> None:
        paths = [r if isinstance(r, Path) else Path(r) for r in routes]
        await self._call(lambda: self._announce(paths))

    async def withdraw(self, routes: Iterable[Route | RouteKey]) -> None:
        keys = [r.key if isinstance(r, (MacIpRoute, PrefixRoute, UnicastRoute)) else r for r in routes]
        await self._call(lambda: self._withdraw(keys))

    async def refresh(self, family: Family | None = None) -> None:
        """Ask every established peer to resend its routes (RFC 2918), e.g. after widening an import filter."""
        await self._call(lambda: self._send_refresh(family))

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` in the owner task (for readers that want a consistent view, e.g. tests and the reflector)."""
        return await self._call(fn)

    async def _call(self, fn: Callable[[], Any]) -> Any:
        if self._task is None:
            return fn()  # not started: nothing else can be changing state
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Same queue as the sessions' events: one order of everything that changes state.
        await self.inbox.queue.put(_Command(fn, done))
        return await done

    # -- the owner task -----------------------------------------------------------------------------------

    async def _run(self) -> None:
        inbox = self.inbox
        while True:
            item = await inbox.get()
            if isinstance(item, _Command):
                self._run_command(item)
            else:
                self._handle(item)

    def _run_command(self, command: _Command) -> None:
        try:
            result = command.run()
        except Exception as err:  # noqa: BLE001 - the caller gets its own error back
            if not command.done.done():
                command.done.set_exception(err)
            return
        if not command.done.done():
            command.done.set_result(result)

    def _publish(self, notices: Sequence[Notice]) -> None:
        if notices:
            for subscriber in self._subscribers:
                subscriber(notices)

    def _handle(self, item: PeerEvent) -> None:
        peer, event = item.peer, item.event
        if isinstance(event, fsm.UpdateReceived):
            self._on_update(peer, event)
        elif isinstance(event, fsm.Established):
            self._on_established(peer, event)
        elif isinstance(event, fsm.Closed):
            self._on_closed(peer, event)
        elif isinstance(event, fsm.RouteRefreshReceived):
            self._on_route_refresh(peer, event)

    # -- sessions -----------------------------------------------------------------------------------------

    def _capabilities(self, address: str) -> wire.Capabilities:
        gr_cfg = self.config.graceful_restart
        graceful = None
        if gr_cfg.enabled:
            # RFC 4724 3: R bit on the first session after we (re)started; on a cold start it is harmless
            # (the peer holds nothing of ours), after a crash it tells the peer we lost our state.
            graceful = wire.GracefulRestart(
                restart_time=gr_cfg.restart_time,
                restarting=address not in self._started_sessions,
                families=frozenset((f, gr_cfg.forwarding_preserved) for f in self.config.families),
            )
        return wire.Capabilities(
            asn=self.config.asn,
            router_id=ipaddress.IPv4Address(self.config.router_id),
            hold_time=self.config.hold_time,
            families=frozenset(self.config.families),
            graceful_restart=graceful,
        )

    def _lookup(self, address: str) -> Peer | str:
        """The listener's question: who is this? Configured first, then dynamic prefixes (first match). A
        string is the reason for refusing (the listener answers Cease / Connection Rejected)."""
        loop = asyncio.get_running_loop()
        until = self._held_down.get(address)
        if until is not None:
            if loop.time() < until:
                self.counters.refused_held_down += 1
                return "held down after a max-prefix teardown"
            del self._held_down[address]
        peers = self.peers.values()
        peer = self.peers.get(address)
        if peer is not None and not peer.settings.dynamic:
            return peer  # configured neighbours are few and known: never crowded out by a flood
        dynamic = self._dynamic_for(address)
        if dynamic is None:
            self.counters.refused += 1
            return "not a configured or dynamic neighbour"
        if sum(p.opening() for p in peers) >= self.config.max_opening:
            self.counters.refused_opening += 1
            return f"{self.config.max_opening} connections already in OpenSent/OpenConfirm (max_opening)"
        prefix = dynamic.prefix
        used = sum(len(p.connections) for p in peers if p.settings.dynamic and self._dynamic_for(p.settings.address)
                   is dynamic)
        if used >= dynamic.max_connections:
            self.counters.refused_prefix_full += 1
            return f"{used} connections from {prefix} already (max_connections)"
        if peer is not None:
            return peer
        peer = self._new_peer(
            PeerSettings(
                address=address,
                port=0,
                peer_asn=dynamic.asn,
                local=self._capabilities(address),
                md5_password=dynamic.md5_password,
                passive=True,
                decoder=self.decoder,
                write_buffer_limit=self.config.write_buffer_limit,
                open_hold_time=self.config.open_hold_time,
                dynamic=True,
            ),
            name=f"{address} (dynamic {prefix})",
        )
        peer.establishments = self._establishments.pop(address, 0)
        self.peers[address] = peer
        return peer

    def _on_established(self, peer: Peer, event: fsm.Established) -> None:
        negotiated = event.negotiated
        address = peer.settings.address
        self._started_sessions.add(address)
        ref = PeerRef(ipaddress.ip_address(address), event.remote.router_id, event.remote.asn)
        old_ref = self._refs.get(address)
        notices: list[Notice] = [PeerStatus(peer.name, "established")]
        if old_ref is not None and old_ref != ref:
            # The peer came back as another speaker (new identifier or AS): its old routes are not its.
            notices += self._rib_drop(peer, None)
            self._graceful.pop(address, None)
        self._refs[address] = ref
        # Later OPENs to this peer no longer carry the R bit.
        peer.settings = _with_local(peer.settings, self._capabilities(peer.settings.address))
        log.info("peer %s: established (families %s, hold %d s)", peer.name,
                 ",".join(sorted(f.name for f in negotiated.families)), negotiated.hold_time)
        notices += self._graceful_reconnect(peer, negotiated)
        # Initial table, then End-of-RIB per family (RFC 4724 2), encoded for this peer alone; from now on
        # changes reach it through its update group.
        self._send_table(peer, negotiated, None)
        self.groups.join(peer, negotiated, self._group_policy(peer))
        if peer.settings.dynamic:
            self._bfd_add_dynamic(peer)
        self._publish(notices)

    def _send_table(self, peer: Peer, negotiated: wire.Negotiated, family: Family | None) -> None:
        """The table `peer` gets on Established (every family, then End-of-RIB per family) and on
        ROUTE-REFRESH (one family)."""
        data = self._table_messages(peer, negotiated, family)
        if family is None:
            data += b"".join(wire.encode_eor(f) for f in sorted(negotiated.families, key=lambda f: f.value))
        peer.send(data)

    def _table_messages(self, peer: Peer, negotiated: wire.Negotiated, family: Family | None) -> bytes:
        """The UPDATEs carrying the table `peer` gets on Established and on ROUTE-REFRESH (one family)."""
        paths = [p for p in self.local.values() if family is None or p.family is family]
        return b"".join(encode_for(negotiated, paths, ()))

    def _group_policy(self, peer: Peer) -> Hashable:
        """The outbound policy part of the peer's update group key (peers with equal keys get equal bytes)."""
        return None

    def _on_closed(self, peer: Peer, event: fsm.Closed) -> None:
        self.groups.leave(peer)
        self._over_limit.discard(peer.settings.address)
        log.warning("peer %s: session down: %s", peer.name, event.reason)
        notices: list[Notice] = [PeerStatus(peer.name, "down", reason=str(event.reason))]
        negotiated = peer.negotiated
        graceful = negotiated.graceful_restart if negotiated is not None else None
        if self._ref(peer) is not None:
            # RFC 4724 4.2: only a session lost without a NOTIFICATION is a restart we wait for.
            if graceful is not None and event.reason.kind is fsm.CloseKind.CONNECTION_LOST and graceful.restart_time:
                families = {f for f, _ in graceful.families} & set(negotiated.families)
                notices += self._rib_mark_stale(peer, families)
                notices += self._rib_drop(peer, set(negotiated.families) - families)
                state = self._graceful.setdefault(peer.settings.address, _GracefulState(set()))
                state.families |= families
                self._arm_graceful_timer(peer, state, graceful.restart_time)
                log.info("peer %s: keeping its routes stale for up to %d s (graceful restart)",
                         peer.name, graceful.restart_time)
            else:
                notices += self._rib_drop(peer, None)
        self._publish(notices)

    def _arm_graceful_timer(self, peer: Peer, state: _GracefulState, seconds: float) -> None:
        if state.timer is not None:
            state.timer.cancel()
        loop = asyncio.get_running_loop()
        expire = lambda: self._graceful_expired(peer)  # noqa: E731
        state.timer = loop.call_later(seconds, lambda: loop.create_task(self._call(expire)))

    def _graceful_expired(self, peer: Peer) -> None:
        state = self._graceful.pop(peer.settings.address, None)
        if state is None:
            return
        log.warning("peer %s: graceful restart timer expired; removing its stale routes", peer.name)
        self._publish(self._rib_sweep(peer, state.families))

    def _graceful_reconnect(self, peer: Peer, negotiated: wire.Negotiated) -> list[Notice]:
        """RFC 4724 4.2 on re-establishment: families without GR or without the F bit lose their stale
        routes now; the others keep them until End-of-RIB (or `stale_time`)."""
        state = self._graceful.get(peer.settings.address)
        if state is None:
            return []
        graceful = negotiated.graceful_restart
        preserved = {f for f, forwarding in graceful.families if forwarding} if graceful else set()
        gone = state.families - preserved
        state.families &= preserved
        notices = self._rib_sweep(peer, gone) if gone else []
        if state.families:
            self._arm_graceful_timer(peer, state, self.config.graceful_restart.stale_time)
        else:
            self._graceful.pop(peer.settings.address, None)
        return notices

    def _on_route_refresh(self, peer: Peer, event: fsm.RouteRefreshReceived) -> None:
        # RFC 2918 section 4: resend the Adj-RIB-Out for that family; an unknown family is ignored.
        negotiated = peer.negotiated
        family = wire.decode_route_refresh(event.body)
        if negotiated is None or family is None or family not in negotiated.families:
            return
        self._send_table(peer, negotiated, family)

    def _send_refresh(self, family: Family | None) -> None:
        for peer in self.peers.values():
            n = peer.negotiated
            if peer.established is None or n is None or not n.route_refresh:
                continue
            for f in sorted(n.families, key=lambda f: f.value):
                if family is None or f is family:
                    peer.send(wire.encode_route_refresh(f))

    # -- BFD ----------------------------------------------------------------------------------------------

    def _bfd_add(self, address: str, config: BfdConfig, local_address: str | None) -> None:
        if self.bfd is None:
            raise RuntimeError(f"peer {address}: bfd configured but the speaker has no BFD endpoint (start_bfd)")
        if self._bfd_sessions.get(address) == (config, local_address):
            return
        self.bfd.add(address, config, self._bfd_listener(address), local_address)
        self._bfd_sessions[address] = (config, local_address)

    def _bfd_remove(self, address: str) -> None:
        if self._bfd_sessions.pop(address, None) is not None and self.bfd is not None:
            self._bfd_up.discard(address)
            self.bfd.remove(address)

    def _bfd_add_dynamic(self, peer: Peer) -> None:
        dynamic = self._dynamic_for(peer.settings.address)
        if dynamic is not None and dynamic.bfd is not None:
            try:
                self._bfd_add(peer.settings.address, dynamic.bfd, _local_address(peer))
            except (OSError, ValueError) as err:  # e.g. out of sockets: the BGP session goes on without BFD
                log.error("peer %s: no BFD session: %s", peer.name, err,
                          extra={"event": "bfd-error", "peer": peer.name})

    def sync_bfd(self) -> None:
        """Make the BFD sessions what the configuration says (after a reload): a session per configured
        neighbour with `bfd`, and per Established dynamic peer whose range has it; the rest removed."""
        wanted: dict[str, tuple[BfdConfig, str | None]] = {
            n.address: (n.bfd, n.local_address) for n in self.config.neighbors if n.bfd is not None}
        for address, peer in self.peers.items():
            dynamic = self._dynamic_for(address) if peer.settings.dynamic else None
            if dynamic is not None and dynamic.bfd is not None and peer.established is not None:
                wanted[address] = (dynamic.bfd, _local_address(peer))
        for address in list(self._bfd_sessions):
            if address not in wanted:
                self._bfd_remove(address)
        for address, (config, local_address) in wanted.items():
            self._bfd_add(address, config, local_address)

    def _bfd_listener(self, address: str) -> Callable[[BfdStatus], None]:
        """The endpoint's `on_change` for one peer: called from the event loop, it hands the change to the
        owner task, which alone touches sessions."""

        def on_change(status: BfdStatus) -> None:
            if self._stopping:
                return
            task = asyncio.get_running_loop().create_task(self._call(lambda: self._on_bfd(address, status)))
            self._bfd_calls.add(task)
            task.add_done_callback(self._bfd_calls.discard)

        return on_change

    def _on_bfd(self, address: str, status: BfdStatus) -> None:
        if address not in self._bfd_sessions:
            return  # removed since (a late change of a session we no longer have)
        was_up = address in self._bfd_up
        if status.state is BfdState.UP:
            self._bfd_up.add(address)
            log.info("peer %s: BFD up (detect time %.0f ms)", address, status.detect_time * 1000,
                     extra={"event": "bfd-up", "peer": address})
            return
        self._bfd_up.discard(address)
        if not was_up or status.state is BfdState.ADMIN_DOWN:
            return  # never was a path to lose, or we took it down ourselves
        reason = status.diagnostic.name.lower().replace("_", "-")
        peer = self.peers.get(address)
        if status.remote_state is BfdState.ADMIN_DOWN:
            log.info("peer %s: BFD taken down by the peer (AdminDown); BGP session kept (RFC 5882 3.2)", address,
                     extra={"event": "bfd-admin-down", "peer": address})
            return
        log.warning("peer %s: BFD down (%s)%s", address, reason,
                    "; closing its BGP session" if peer is not None and peer.established is not None else "",
                    extra={"event": "bfd-down", "peer": address})
        if peer is not None and peer.established is not None:
            self.counters.bfd_teardowns += 1
            peer.established.stop(fsm.ERR_CEASE, fsm.CEASE_BFD_DOWN, "BFD down")

    # -- routes in ----------------------------------------------------------------------------------------

    def _on_update(self, peer: Peer, event: fsm.UpdateReceived) -> None:
        result = event.result
        self.counters.updates_in += 1
        if result.errors:
            # RFC 7606: the session stays up; say who sent what, with the bytes, once per UPDATE.
            self.counters.update_errors += 1
            for error in result.errors:
                log.warning("peer %s: malformed UPDATE, %s: %s; raw %s; update %s",
                            peer.name, error.action, error.reason, error.raw, event.body.hex())
        notices: list[Notice] = []
        if not self.config.accept_routes:
            # A session we only announce on: keep nothing of what the peer sends (not even keys).
            self.counters.routes_ignored += len(result.announced)
        elif result.announced or result.withdrawn:
            self.counters.routes_in += len(result.announced)
            self.counters.withdrawals_in += len(result.withdrawn)
            notices += self._rib_update(peer, result.announced, result.withdrawn)
            ref = self._ref(peer)
            if ref is not None and result.announced:
                self.check_max_prefix(peer, len(self.rib.adj_in(ref)), result.announced[0].family)
        if result.eor is not None:
            notices += self._on_eor(peer, result.eor)
        self._publish(notices)

    def _on_eor(self, peer: Peer, family: Family) -> list[Notice]:
        notices: list[Notice] = []
        state = self._graceful.get(peer.settings.address)
        if state is not None and family in state.families:
            # RFC 4724 4.2: End-of-RIB ends the wait; what is still stale was not re-announced.
            state.families.discard(family)
            notices += self._rib_sweep(peer, {family})
            if not state.families:
                if state.timer is not None:
                    state.timer.cancel()
                self._graceful.pop(peer.settings.address, None)
        notices.append(PeerStatus(peer.name, "end-of-rib", family))
        return notices

    # -- routes out ---------------------------------------------------------------------------------------

    def _announce(self, paths: list[Path]) -> None:
        for path in paths:
            self.local[path.key] = path
        self.groups.broadcast(paths, ())

    def _withdraw(self, keys: list[RouteKey]) -> None:
        gone = [k for k in keys if self.local.pop(k, None) is not None]
        if gone:
            self.groups.broadcast((), gone)

    # -- the RIB (bgp/rib.py) -----------------------------------------------------------------------------

    def _ref(self, peer: Peer) -> PeerRef | None:
        return self._refs.get(peer.settings.address)

    def _rib_update(self, peer: Peer, announced: list[Path], withdrawn: list[RouteKey]) -> list[Notice]:
        ref = self._ref(peer)
        return list(self.rib.receive(ref, announced, withdrawn)) if ref else []

    def _rib_mark_stale(self, peer: Peer, families: set[Family]) -> list[Notice]:
        ref = self._ref(peer)
        if ref and families:
            self.rib.mark_stale(ref, families)
        return []

    def _rib_sweep(self, peer: Peer, families: set[Family]) -> list[Notice]:
        ref = self._ref(peer)
        if ref is None:
            return []
        return [c for f in sorted(families, key=lambda f: f.value) for c in self.rib.sweep_stale(ref, f)]

    def _rib_drop(self, peer: Peer, families: set[Family] | None) -> list[Notice]:
        ref = self._ref(peer)
        if ref is None:
            return []
        if families is None:
            return list(self.rib.peer_down(ref))
        self.rib.mark_stale(ref, families)
        return self._rib_sweep(peer, families)


def wants_bfd(config: SpeakerConfig) -> bool:
    """Does a neighbour or a dynamic range of `config` have `bfd`?"""
    return any(n.bfd is not None for n in (*config.neighbors, *config.dynamic_neighbors))


def _with_local(settings: PeerSettings, local: wire.Capabilities) -> PeerSettings:
    return replace(settings, local=local)


def _local_address(peer: Peer) -> str | None:
    """Our address on the peer's established connection (a v4-mapped IPv6 address as IPv4)."""
    conn = peer.established
    name = conn.transport.get_extra_info("sockname") if conn is not None and conn.transport is not None else None
    if not name:
        return None
    address = str(name[0])
    return address[7:] if address.startswith("::ffff:") else address
