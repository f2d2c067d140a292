"""The host agent: catalog (what the orchestrator asked for), BGP (what the fabric knows), kernel (what we did).

One asyncio owner: every change, whether from the API or from BGP, runs under one lock and follows the same
steps: compute the new state as values (catalog, mobility, learned routes) -> desired kernel objects of the
partitions the change touches (a routing domain's base, a port's or a remote CA's own: hostagent/compute.py)
-> reconcile those partitions (vnet.reconcile) -> persist -> swap -> announce. A learned change costs O(changed routes)
(vnet/learned.py), a port change O(that port: its own partition); the start and the periodic resync are full
passes (every partition from scratch, the whole kernel read back). An API change whose kernel programming
fails is reverted (the previous desired state is reconciled again) and raised as KernelError carrying the
kernel's message: nothing half-applied.

The agent must run in a thread that is inside `config.netns` when one is set (lab/daemons.py for
tests and the lab, hostagent/cli.py for the daemon): BGP and API sockets are created by that thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from nvfabric.bgp.announced import Announced
from nvfabric.bgp.bfd import BfdStatus
from nvfabric.bgp.bfd.metrics import BfdCollector
from nvfabric.bgp.client import Client, RouteUpdate
from nvfabric.bgp.mac import Mac
from nvfabric.bgp.config import GracefulRestartConfig, SpeakerConfig
from nvfabric.bgp.routes import Family, MacIpKey, MacIpRoute, Route, RouteKey
from nvfabric.bgp.metrics import SessionCollector, SessionSample, samples
from nvfabric.bgp.speaker import PeerStatus
from nvfabric.hostagent import state
from nvfabric.hostagent import status as report
from nvfabric.hostagent.config import AgentConfig
from nvfabric.hostagent.eligible import check_port_interface
from nvfabric.hostagent.filters import Filters, served_vsids
from nvfabric.hostagent.guest import offer
from nvfabric.hostagent.guest.responder import PacketWire, Responder
from nvfabric.hostagent.guest.wire import Wire
from nvfabric.hostagent.metrics import AgentMetrics, BacklogCollector
from nvfabric.hostagent.reload import Reconfiguration
from nvfabric.hostagent.status import AgentStatus, ReflectorStatus
from nvfabric.hostagent.compute import (
    Applied,
    Learned,
    Step,
    View,
    compute,
    follow_remote,
    follow_remote_holders,
)
from nvfabric.hostagent.holders import FROZEN, HolderKey, judge
from nvfabric.service.heap import Growth
from nvfabric.vnet import announce, decap
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.decap import DecapCollector, DecapFilter
from nvfabric.vnet.desired import GLOBAL, Conflict, HostIdentity, allocate_tables, vrf_name
from nvfabric.vnet.errors import KernelError, NotStarted
from nvfabric.vnet.hold import Hold, Policy
from nvfabric.vnet.kernel.interfaces import read_interface
from nvfabric.vnet.kernel.netns import RtnlSocket, link_exists
from nvfabric.vnet.kernel.objects import KernelObject, Vrf
from nvfabric.vnet.learned import EMPTY, Change, LearnedTable
from nvfabric.vnet.kernel.observe import address_prefixes, devices
from nvfabric.vnet.model import Address, LookupRecord, Network, Port, RemotePrefix, RoutingDomain
from nvfabric.vnet.nftables import Nft, NftError
from nvfabric.vnet.policy import Screened, pa_prefixes
from nvfabric.vnet.portsecurity import PortSecurity, guarded, guarded_port
from nvfabric.vnet.reconcile import Outcome, Reconciler

log = logging.getLogger(__name__)

# Seconds to gather BGP changes into one reconcile. A pass costs a few milliseconds whatever it carries (its
# nft transaction alone ~0.5-2 ms of CPU, and ~12 ms of the kernel's wall time when it deletes elements),
# so under churn the window sets how many changes share that cost: at 20 ms and 1,000 changes/s it was a
# third of the CPU per change. 50 ms keeps a change's lag far under a second and cuts that share.
COALESCE = 0.05
# At most this many delivered route changes are learned by one pass; the rest wait for the next ones. A pass
# runs on the loop without yielding: one that learns a whole table's backlog holds the loop for minutes
# under TCG at 100,000 routes (timers, KEEPALIVEs and the API wait). A slice is about a second there.
LEARN_SLICE = 2000
# Seconds past eor_timeout after which an agent still not synced lets the collector walk the whole heap again
# (a start whose passes keep failing must not keep its old garbage for ever).
GROWTH_LIMIT = 600.0


@dataclass(frozen=True)
class Touched:
    """What a change may have changed beyond routing domains and virtual addresses (which are few, and
    compared whole): the local ports by name and the MAC mobility keys. What depends on one port (its saved
    state, announcements, port security, guest services) is looked at for these alone."""

    ports: frozenset[str] = frozenset()
    macs: frozenset[tuple[int, Mac]] = frozenset()


@dataclass(frozen=True)
class Announcing:
    """What one local port's announced routes are built from: they are built again when this changes."""

    port: Port
    route_targets: tuple[str, ...] | None  # its routing domain's (None: no routing domain has its VSID)
    seq: int  # its MAC's mobility sequence
    inactive: bool  # its MAC moved to another host
    held: tuple[tuple[Address, int], ...]  # the virtual addresses it holds, with their sequences


class NamespaceError(RuntimeError):
    pass


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.identity = announce.Identity(config.router_id, config.provider_addresses, config.router_mac)
        self.host = HostIdentity(config.router_mac, config.provider_addresses, config.underlay_mtu)
        self._store = state.Store(config.state_dir)
        self._view = View.first(config.routing_domains, self._store.load())
        self.metrics = AgentMetrics(lambda: len(self._view.mobility.freezes(time.monotonic())))
        self.registry = self.metrics.registry
        self._decap_collector = DecapCollector()  # refreshed by decap_counters() before a scrape
        self.registry.register(self._decap_collector)
        self.registry.register(BfdCollector(self._bfd_status))
        self.registry.register(SessionCollector(self._sessions))
        self.registry.register(BacklogCollector(lambda: self._client.backlog() if self._client else None))
        self._last_sync: float | None = None  # seconds the last pass following BGP took
        self._lock = asyncio.Lock()
        self._started = False
        # a reconcile without the hold has put the fabric's table into the kernel since the start: before
        # that, End-of-RIB alone does not make the agent synced (ready)
        self._programmed = False
        self._sock: RtnlSocket | None = None
        self._reconciler: Reconciler | None = None
        self._client: Client | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._dirty = asyncio.Event()
        # removals of learned state held until End-of-RIB, and again after a time without reflectors
        self._policy = Policy(timeout=config.eor_timeout)
        self._hold = Hold.start(self._policy, [r.address for r in config.route_reflectors], 0.0)
        self._announced = Announced()  # one group of routes per local port (its name)
        self._announcing: dict[str, Announcing] = {}  # by port: what its announced routes were built from
        self._announce_basis: tuple[Any, ...] | None = None  # the view last announced in full
        # the learned routes (vnet/learned.py): route changes the client delivered wait in `_incoming` until
        # the syncer applies them to the table; what the table says changed waits in `_change` until a
        # computation that covers it is swapped in (a change the kernel refused is computed again)
        self._table: LearnedTable | None = None
        self._incoming: dict[RouteKey, Route | None] = {}
        # the last drain left delivered changes for a later pass: what the client delivered is not all in
        # effect yet (changes delivered while a pass awaits the kernel are not that: they came after its mark)
        self._left_behind = False
        self._change: Change = EMPTY
        self._remote_macs: set[tuple[int, str]] = set()  # whose winner changed since mobility last followed them
        self._learned_state = Learned()  # lookup records and partitions, as last swapped in
        # what the last swap changed (lookup records, announced prefixes, next hops): for who follows by difference
        self.applied = Applied()
        self._skipped: dict[str, tuple[str, ...]] = {}  # by partition
        self._conflicts: dict[str, tuple[Conflict, ...]] = {}  # routes that lost their key, by partition
        # the import policy's next-hop check (vnet/policy.py): configured, else read at start; None: unchecked
        self._provider_prefixes: tuple[Network, ...] | None = config.provider_prefixes
        self._screened = Screened()
        self._claims: dict[str, int] = {}  # virtual address claims judged, by outcome
        self._everything = True  # the next reconcile builds every routing domain (start, verify, error)
        self._reread_ports = False  # the next pass reads the ports' guards back (the periodic resync)
        self._resync_task: asyncio.Task[None] | None = None
        self._filters = Filters(Nft(config.netns))
        # port security on the VM ports (vnet/portsecurity.py): written before a new port is routed, read
        # back at start and adopted, so a restart never leaves a port unguarded
        self._port_security = PortSecurity(Nft(config.netns))
        # what the VMs get from their host (DHCP, RA...): answered from a packet socket opened at start
        self._guest: Responder | None = None
        self._new_wire: Callable[[], PacketWire] = Wire  # (tests give an in-memory one)
        self._guest_error: str | None = None
        self._guest_inputs: tuple[Any, ...] | None = None  # what the services were last derived from
        # from the start until synced, the heap grows by the fabric's table: the collector's full walks wait
        # (service/heap.py)
        self._growth = Growth()
        self._started_at = 0.0

    # ------------------------------------------------------------------ lifecycle

    @property
    def catalog(self) -> Catalog:
        return self._view.catalog

    def _check_namespace(self) -> None:
        ns = self.config.netns
        if ns is None:
            return
        try:
            want = os.stat(f"/run/netns/{ns}").st_ino
        except FileNotFoundError:
            raise NamespaceError(f"netns: no network namespace named {ns!r}") from None
        if os.stat("/proc/thread-self/ns/net").st_ino != want:
            raise NamespaceError(f"netns: the agent's thread is not inside {ns!r} "
                                 "(vnet.kernel.netns.enter_namespace enters it)")

    async def start(self) -> None:
        self._check_namespace()
        self._started_at = time.monotonic()
        self._hold = Hold.start(self._policy, self._hold.sessions, self._started_at)
        self._growth.open()
        self._sock = RtnlSocket(self.config.netns)
        self._reconciler = Reconciler(self._sock, routes_in_child=True)
        # adopt the tables of VRFs already in the kernel (a restart without, or with a stale, state dir): the
        # links are enough; the routes (one per remote CA) are read once, by the first reconcile below
        adopted = {o.name[len("nvf-"):]: o.table for o in (await devices(self._sock))[0] if isinstance(o, Vrf)}
        if self.config.provider_prefixes is None:
            self._provider_prefixes = pa_prefixes(self.config.provider_addresses, await address_prefixes(self._sock))
            if not self._provider_prefixes:
                log.warning("provider_prefixes: not configured and no provider address is on an interface: "
                            "learned next hops are not checked")
                self._provider_prefixes = None
        self._view.tables = allocate_tables(self._view.catalog.routing_domains,
                                            {**adopted, **self._view.tables})
        # (nft lists them on its own thread while the kernel's routes are read and the table arrives; a pass
        # after the read takes them)
        self._filters.begin(self._dirty.set)
        self._client = Client(SpeakerConfig(
            asn=self.config.asn, router_id=self.config.router_id, families=(Family.L2VPN_EVPN,),
            neighbors=tuple(r.neighbor() for r in self.config.route_reflectors),
            graceful_restart=GracefulRestartConfig(enabled=True, forwarding_preserved=True),
        ))
        self._started = True
        # The sessions start before the kernel is read: the fabric's table arrives (decoded and queued by the
        # client, not consumed: the hold does not move) while the first reconcile reads the kernel, instead
        # of after it. Our own routes are in the speaker first: a session that comes up sends them before our
        # End-of-RIB, so the reflectors, which keep them as stale meanwhile, never withdraw them.
        await self._announce()
        await self._client.start()
        async with self._lock:
            await self._sync_locked()  # adopts what is there; learned routes held until End-of-RIB
            self._start_guest()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._consume(), name="agent-bgp"),
            loop.create_task(self._syncer(), name="agent-sync"),
            loop.create_task(self._timers(), name="agent-timers"),
        ]

    async def stop(self) -> None:
        self._started = False
        self._growth.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._client is not None:
            # without a NOTIFICATION: the reflectors keep our routes, stale, until we are back (graceful
            # restart); a Cease would withdraw every VM of this host from the fabric for the restart
            await self._client.stop(notify=False)
        if self._guest is not None:
            await self._guest.close()
            self._guest = None
        await self._filters.close()
        if self._sock is not None:
            self._sock.close()
        # the kernel state stays: forwarding continues while the agent is away (graceful restart)

    # ------------------------------------------------------------------ API

    async def put_routing_domain(self, domain: RoutingDomain) -> bool:
        async with self._lock:
            created = domain.name not in self._view.catalog.routing_domains
            catalog = self._view.catalog.with_routing_domain(domain)
            tables = allocate_tables(catalog.routing_domains, self._view.tables)
            await self._commit(replace(self._view, catalog=catalog, tables=tables), f"routing domain {domain.name}",
                               {domain.name})
            return created

    async def delete_routing_domain(self, name: str) -> None:
        async with self._lock:
            catalog = self._view.catalog.without_routing_domain(name)
            tables = {k: v for k, v in self._view.tables.items() if k != name}
            await self._commit(replace(self._view, catalog=catalog, tables=tables), f"routing domain {name}", {name})

    async def reconfigure(self, change: Reconfiguration) -> None:
        """A reload (hostagent/reload.py `plan`): the routing domains it puts and deletes in ONE reconcile of
        just those domains (the others' forwarding is not looked at), then the new configuration. A domain
        that still has ports, or any model refusal, raises before the kernel is touched."""
        async with self._lock:
            catalog = self._view.catalog
            for name in change.delete:
                if name in catalog.routing_domains:  # (the API may have deleted it already)
                    catalog = catalog.without_routing_domain(name)
            for domain in change.put:
                catalog = catalog.with_routing_domain(domain)
            dirty = {d.name for d in change.put} | set(change.delete)
            if dirty:
                tables = allocate_tables(catalog.routing_domains, self._view.tables)
                await self._commit(replace(self._view, catalog=catalog, tables=tables), "reload", dirty)
            self.config = change.config

    async def put_port(self, port: Port) -> bool:
        async with self._lock:
            old = self._view.catalog.ports.get(port.name)
            running = self._started and self._sock is not None
            netns = self.config.netns
            # one device looked up by name, not every link of the host dumped (O(ports) per attach)
            catalog = self._view.catalog.with_port(port, (lambda n: link_exists(netns, n)) if running else None)
            if running:
                # the device as the kernel has it: never the underlay, the loopback, a bridge member...
                facts = await read_interface(netns, port.interface)
                if facts is not None:  # (absent: with_port refused it; gone since: the kernel will refuse)
                    check_port_interface(facts, self.config.provider_addresses)
            mobility = self._view.mobility
            if old is not None and (old.vsid, old.mac) != (port.vsid, port.mac):
                mobility = mobility.detach((old.vsid, old.mac))
            remote = self._table_for(catalog).mac((port.vsid, port.mac))
            mobility = mobility.attach((port.vsid, port.mac), remote.mobility_seq if remote else None,
                                       time.monotonic())
            macs = {(port.vsid, port.mac)}
            if old is not None:
                macs.add((old.vsid, old.mac))
            await self._commit(replace(self._view, catalog=catalog, mobility=mobility), f"port {port.name}",
                               set(), Touched(frozenset({port.name}), frozenset(macs)))
            return old is None

    async def delete_port(self, name: str) -> None:
        async with self._lock:
            port = self._view.catalog.port(name)
            catalog = self._view.catalog.without_port(name)
            mobility = self._view.mobility
            if not catalog.ports_with_mac(port.vsid, port.mac):
                mobility = mobility.detach((port.vsid, port.mac))
            await self._commit(replace(self._view, catalog=catalog, mobility=mobility), f"port {name}", set(),
                               Touched(frozenset({name}), frozenset({(port.vsid, port.mac)})))

    async def claim_virtual_address(self, port_name: str, address: Address) -> bool:
        """A VM announced `address` on its port (gratuitous ARP, ARP reply, unsolicited NA: the responder's
        `on_claim`). When the port may hold it (hostagent/holders.py `judge`), it becomes the holder
        fabric-wide: routed to the port here, announced with a sequence above the fabric's. Returns whether
        the port holds it now. A VM's frame never raises here: refusals and failures are counted and logged
        (the VM's next announcement tries again)."""
        async with self._lock:
            view = self._view
            domain, refused = judge(view.catalog, view.mobility.inactive(), port_name, address)
            if refused is not None or domain is None:
                return self._claimed(refused or "unknown_port", False)
            key: HolderKey = (domain, address)
            held, now = view.holders.held.get(key), time.monotonic()
            if held is not None and held.port == port_name:
                return self._claimed("repeated", True)  # keepalived repeats its announcements
            if view.holders.frozen(key, now):
                return self._claimed(FROZEN, False)
            remote = self._table_for(view.catalog).ca(key)
            holders = view.holders.claim(key, port_name, remote.mobility_seq if remote is not None else None, now)
            try:
                await self._commit(replace(view, holders=holders), f"virtual address {address}", set(), Touched())
            except (KernelError, NotStarted, state.SaveError) as exc:
                log.warning("virtual address %s claimed by port %s: not applied: %s", address, port_name, exc)
                return self._claimed("failed", False)
            log.info("virtual address %s (%s): held by port %s, sequence %d", address, domain, port_name,
                     holders.held[key].seq)
            return self._claimed("accepted", True)

    def _claimed(self, outcome: str, held: bool) -> bool:
        self._claims[outcome] = self._claims.get(outcome, 0) + 1
        self.metrics.claimed(outcome)
        return held

    def virtual_addresses(self) -> list[dict[str, Any]]:
        """Every declared virtual address and who holds it: a local port, another host (its PA), or nobody."""
        out = []
        for name, domain in sorted(self._view.catalog.routing_domains.items()):
            for virtual in domain.virtual_addresses:
                held = self._view.holders.held.get((name, virtual.address))
                record = self._learned_state.record((name, virtual.address))
                local = held is not None and held.port is not None
                out.append({"routing_domain": name, "address": str(virtual.address), "ports": list(virtual.ports),
                            "holder": held.port if local else None,
                            "seq": held.seq if held is not None else None,
                            "frozen_until": report.wall(held.frozen_until) if held is not None and
                            held.frozen(time.monotonic()) and held.frozen_until is not None else None,
                            "pa": str(record.pa) if record is not None and record.pa is not None else None,
                            "mac": record.mac if record is not None else None})
        return out

    async def port_drops(self) -> dict[str, dict[str, int]]:
        """Packets port security dropped so far, by port name and reason (vnet.portsecurity.REASONS); a
        guarded port that dropped nothing has zeros, an unguarded one is absent."""
        if not self._started:
            return {}
        by_interface = await self._port_security.drops()
        return {p.name: by_interface[p.interface] for p in self._view.catalog.ports.values()
                if p.port_security and p.interface in by_interface}

    def lookup_records(self) -> list[LookupRecord]:
        """Every lookup record, by routing domain, then CA (O(records log records): a read, not a change)."""
        return sorted(self._learned_state.records, key=lambda r: (r.routing_domain, r.ca.version, r.ca))

    def remote_prefixes(self) -> list[RemotePrefix]:
        prefixes = self._table.prefixes() if self._table is not None else ()
        return sorted(prefixes, key=lambda p: (p.routing_domain, p.prefix.version, p.prefix))

    @property
    def desired(self) -> Mapping[str, frozenset[KernelObject]]:
        """The desired objects by routing domain (and GLOBAL), as last swapped in: what trace follows."""
        return self._learned_state.by_domain()

    def status(self) -> AgentStatus:
        last = self._reconciler.last if self._reconciler else None
        return AgentStatus(
            router_id=self.config.router_id,
            reflectors=report.reflectors(self._hold),
            synced=self._hold.synced and self._programmed,
            headless=self._headless(),
            last_reconcile=report.outcome(last),
            totals=dict(self._reconciler.totals) if self._reconciler else {},
            held_deletes=last.held if last else 0,
            mobility_freezes=tuple(report.freeze(asdict(f)) for f in self._view.mobility.freezes(time.monotonic())),
            skipped=tuple(x for why in self._skipped.values() for x in why),
            local_routes=len(self._announced.routes),
            learned_routes=len(self._table) if self._table is not None else 0,
            decap=dict(self._decap_collector.counts),
            conflicts=tuple(c.as_dict() for name in sorted(self._conflicts) for c in self._conflicts[name]),
            import_policy={"provider_prefixes": None if self._provider_prefixes is None
                           else [str(p) for p in self._provider_prefixes], **self._screened.as_dict()},
            virtual_addresses=tuple(self.virtual_addresses()),
            claims=dict(self._claims),
            guest_services=self._guest.as_dict() if self._guest is not None
            else {"ports": 0, "frames": {}, "wire_errors": {}, "error": self._guest_error},
            bfd=tuple(s.as_dict() for s in self._bfd_status()),
            backlog=self._client.backlog().as_dict() if self._client else {},
            last_sync_s=None if self._last_sync is None else round(self._last_sync, 4),
            last_resync=None if self._reconciler is None else report.audit(self._reconciler.last_audit),
        )

    def readiness(self) -> tuple[str, ...]:
        """Why the agent is not ready (empty: ready): hostagent/status.py readiness."""
        return report.readiness(self._started, self._hold, time.monotonic(), self._programmed)

    def _bfd_status(self) -> list[BfdStatus]:
        return self._client.speaker.bfd_status() if self._client is not None else []

    def _sessions(self) -> list[SessionSample]:
        """The sessions to the configured reflectors (idle before the start), for /metrics."""
        peers = self._client.speaker.peers if self._client is not None else {}
        return samples((r.address, peers.get(r.address)) for r in self.config.route_reflectors)

    # ------------------------------------------------------------------ the one way state changes

    def _table_for(self, catalog: Catalog | None = None, fresh: bool = False, learn: bool = True) -> LearnedTable:
        """The learned routes judged for `catalog` (default: the current one; a change passes the catalog it
        computes), with what the client delivered since applied. A catalog whose routing domains differ (or
        other provider prefixes) judges every route again, O(routes): a port never does. `fresh`: built again
        from the client's table, the safety net of a full pass; a difference from the incremental table is
        logged. What the client delivered is learned a slice (LEARN_SLICE) at a time; `learn` False: none now
        (the pass took its slice already)."""
        catalog = catalog or self._view.catalog
        ours, prefixes = self.config.provider_addresses, self._provider_prefixes
        table, change = self._table, EMPTY
        if fresh or table is None:
            delivered = self._drain()  # (the client's table has them too)
            table = LearnedTable(catalog, ours, prefixes).load(
                self._client.routes().items() if self._client is not None else ())
            old = self._table
            if old is not None:
                if not old.matches(catalog, ours, prefixes):
                    old, _ = old.rebuilt(catalog, ours, prefixes)
                self._remote_macs |= old.apply(delivered).macs.keys()  # (mobility follows them at the next sync)
                drift = old.diff(table)
                if drift.cas or drift.macs or drift.prefixes or drift.announced:
                    log.warning("learned routes: the incremental table differed from the full pass (%d CAs, %d MACs,"
                                " %d prefixes): the full pass's is taken", len(drift.cas), len(drift.macs),
                                len(drift.prefixes))
            change = Change(rebuilt=True, screened=True)
        elif not table.matches(catalog, ours, prefixes):
            table, change = table.rebuilt(catalog, ours, prefixes)
        if self._incoming and learn:
            change = change.then(table.apply(self._drain(LEARN_SLICE)))
        self._table = table
        if change:
            self._change = self._change.then(change)
            self._remote_macs |= change.macs.keys()
            if change.screened or change.rebuilt:
                self._screened = table.screened()
                self.metrics.refused(self._screened.counts)
        return table

    def _drain(self, limit: int | None = None) -> list[tuple[RouteKey, Route | None]]:
        """The delivered route changes, the latest per key; `limit`: the first that many, the rest for a later
        pass (which is asked for)."""
        if limit is None or len(self._incoming) <= limit:
            incoming, self._incoming = self._incoming, {}
            self._left_behind = False
            return list(incoming.items())
        taken = list(itertools.islice(self._incoming.items(), limit))
        for key, _ in taken:
            del self._incoming[key]
        self._left_behind = True
        self._dirty.set()
        return taken

    def _holding(self) -> bool:
        """Learned state may not be removed: End-of-RIB is awaited (vnet/hold.py), or delivered routes still
        wait for a pass to learn them (the learned table is not the fabric's yet)."""
        return self._hold.holding or bool(self._incoming)

    def _headless(self) -> bool:
        return self._started and self._hold.headless

    def _compute(self, view: View, dirty: set[str], fresh: bool | None = None, ports: Collection[str] = (),
                 learn: bool = True) -> Step:
        """The partitions of the dirty routing domains and local ports and those the learned changes touch
        (hostagent/compute.py);
        every one after a start, a resync or an error (the learned table built again from the client's, unless
        `fresh` is False: the caller just did)."""
        assert self._reconciler is not None
        everything = self._everything or self._reconciler.full_pending
        table = self._table_for(view.catalog, fresh=everything if fresh is None else fresh, learn=learn)
        return compute(view, table, self.host, self._learned_state, None if everything else dirty, self._change, ports)

    async def _reconcile(self, desired: Step, defer: bool = False) -> Outcome:
        assert self._reconciler is not None
        holding = self._holding()  # (the hold may end while the kernel is written)
        outcome = await self._reconciler.reconcile(desired.partitions, holding, defer and holding)
        self.metrics.reconciled(outcome)
        self._programmed |= outcome.ok and not holding
        self._everything = False
        return outcome

    def _swap_learned(self, step: Step) -> None:
        # (before the swap: a partition that loses its conflicts is still listed)
        conflicts = step.full or any(name in self._conflicts or step.conflicts_in.get(name) for name in step.partitions)
        self._learned_state.swap(step)
        self._skipped, self._conflicts = self._learned_state.skipped_in, self._learned_state.conflicts_in
        change, self._change = self._change, EMPTY
        self.applied = Applied(full=True) if step.full else Applied(
            step.records, change.announced, change.next_hops_added, change.next_hops_removed)
        if conflicts:
            self.metrics.conflicts(c for found in self._conflicts.values() for c in found)

    async def _commit(self, view: View, what: str, dirty: set[str], touched: Touched | None = None) -> None:
        """Program, persist, swap, announce; on a kernel refusal, or when the state cannot be saved, put the
        kernel back and raise (KernelError, state.SaveError). `touched`: the ports and MACs the change may
        have changed (None: any; a routing domain's change), so that only theirs is saved, announced,
        guarded and offered again."""
        if not self._started or self._reconciler is None:
            raise NotStarted(f"{what}: the agent is not running")
        before = self._view
        # before the port is routed: never a moment unguarded
        if touched is None or not self._port_security.known:
            if guarded(view.catalog) != guarded(before.catalog):
                await self._guard_ports(view, what)
        elif touched.ports:
            await self._guard_touched(view, touched.ports, what)
        # a holder the change disallows (or removes) stops holding its virtual address
        view = replace(view, holders=view.holders.prune(view.catalog, view.mobility.inactive()))
        ports = None if touched is None else self._affected(before, view, touched)
        desired = self._compute(view, dirty, ports=ports or ())
        outcome = await self._reconcile(desired)
        if not outcome.ok:
            await self._put_back(desired, outcome)
            raise KernelError(what, outcome.errors)
        try:
            if touched is None:
                self._store.save(view.saved())
            else:
                self._store.save(view.saved(), touched.ports, touched.macs)
        except state.SaveError:
            # a change the agent cannot remember would be undone by its next restart: not made at all
            log.error("%s: the state could not be saved, the kernel is put back", what)
            await self._put_back(desired, outcome)
            raise
        self._view = view
        self._swap_learned(desired)
        await self._update_vrf_marks()
        await self._update_decap()
        await self._announce(ports, before)
        self._update_guest(ports)

    @staticmethod
    def _affected(before: View, after: View, touched: Touched) -> set[str]:
        """The local ports whose announcements or guest services a change may alter: the ports it names, those
        sharing a MAC it touched (one mobility state), and the holders of virtual addresses that changed."""
        ports = set(touched.ports)
        for vsid, mac in touched.macs:
            ports |= before.catalog.ports_with_mac(vsid, mac) | after.catalog.ports_with_mac(vsid, mac)
        if before.holders.held is not after.holders.held:
            had, has = before.holders.holding(), after.holders.holding()
            for key in had.keys() | has.keys():
                if had.get(key) != has.get(key):
                    ports.update(h[0] for h in (had.get(key), has.get(key)) if h is not None)
        return ports

    async def _put_back(self, desired: Step, outcome: Outcome) -> None:
        """The kernel as the current view wants it again, after a change that cannot stand."""
        assert self._reconciler is not None
        with contextlib.suppress(NftError):  # (a refusal here is retried by the next sync)
            await self._port_security.apply(guarded(self._view.catalog))
        await self._reconciler.revert(outcome.applied)
        # the same partitions as they were (the revert makes this a full pass: the kernel is read back)
        back = self._compute(self._view, {name.partition("/")[0] for name in desired.partitions} - {GLOBAL})
        # (a routing domain the change added is not in the old view: its partition is emptied)
        back_parts = {**{n: frozenset() for n in desired.partitions}, **back.partitions}
        self.metrics.reconciled(await self._reconciler.reconcile(back_parts, self._holding()))

    async def _guard_touched(self, view: View, names: frozenset[str], what: str) -> None:
        """Port security for the named ports only (their interfaces before and after the change)."""
        changed: dict[str, Port | None] = {}
        for name in names:
            old = self._view.catalog.ports.get(name)
            if old is not None:
                changed[old.interface] = None
        for name in names:
            new = view.catalog.ports.get(name)
            if new is not None:
                changed[new.interface] = guarded_port(view.catalog, new)
        try:
            await self._port_security.update(changed)
        except NftError as exc:
            raise KernelError(what, (str(exc),)) from None

    async def _guard_ports(self, view: View, what: str) -> None:
        try:
            await self._port_security.apply(guarded(view.catalog))
        except NftError as exc:
            raise KernelError(what, (str(exc),)) from None

    async def _sync_locked(self) -> None:
        """Follow BGP: mobility decisions, then desired -> kernel, GRE filter, announcements."""
        view = self._view
        if self._everything or self._reread_ports:
            self._port_security.invalidate()  # start, resync, verify: read the kernel back, repair any drift
            self._reread_ports = False
        if not self._port_security.known:  # (else every change of a port guarded it already)
            try:
                await self._port_security.apply(guarded(view.catalog))
            except NftError as exc:
                log.warning("%s", exc)
                self._dirty.set()
        assert self._reconciler is not None
        everything = self._everything or self._reconciler.full_pending
        table = self._table_for(view.catalog, fresh=everything)
        now, ours = time.monotonic(), self.config.next_hop
        # only the MACs whose remote winner changed are looked at (every local one on a full pass)
        mobility = follow_remote(view.mobility, table.macs(), ours, now, complete=not self._holding(),
                                 keys=None if everything else self._remote_macs)
        holders = follow_remote_holders(view.holders, table.cas(), ours, now).prune(view.catalog, mobility.inactive())
        ports: set[str] = set()
        if mobility is not view.mobility or holders != view.holders:
            changed = replace(view, mobility=mobility, holders=holders)
            try:
                self._store.save(changed.saved())
                # the ports that stopped or started being routed, or hold an address or not any more: their
                # local records change
                moved = view.mobility.inactive() ^ mobility.inactive()
                ports = self._affected(view, changed, Touched(macs=frozenset(moved)))
                view = self._view = changed
                self._remote_macs = set()
            except state.SaveError as exc:  # the sequences announced must be the ones a restart finds
                # (retried by the next sync, at the latest the periodic resync: not in a tight loop)
                log.error("%s: mobility changes wait until the state can be saved", exc)
        else:
            self._remote_macs = set()
        desired = self._compute(view, set(), fresh=False, ports=ports, learn=False)  # (its slice: above)
        outcome = await self._reconcile(desired, defer=self._selection_deferred())
        if outcome.errors:
            log.warning("reconcile: %d errors: %s", len(outcome.errors), outcome.errors[:3])
            self._dirty.set()  # retry (the reconciler observes the kernel again, a full pass)
        self._swap_learned(desired)
        await self._update_vrf_marks()
        await self._update_decap()
        await self._announce()
        self._update_guest()
        if self._growth.is_open and self._hold.synced and self._programmed and not self._left_behind:
            self._growth.close()  # the table is in: the heap holds what it will keep

    # ------------------------------------------------------------------ guest services

    def _start_guest(self) -> None:
        """The packet socket, opened by the agent's thread (so in its namespace). Without it (no
        CAP_NET_RAW) the agent runs on and reports the error in its status: VMs get no DHCP answers."""
        responder = Responder(self._new_wire(), self._on_claim)
        try:
            responder.start()
        except OSError as exc:
            self._guest_error = f"packet socket: {exc}"
            log.error("guest services off: %s", self._guest_error)
            return
        self._guest, self._guest_error = responder, None
        self._guest_inputs = None  # a new responder knows no port yet
        self.metrics.guest_frames.counters = responder.counters
        self._update_guest()

    def _update_guest(self, ports: Collection[str] | None = None) -> None:
        """What each local port is offered, derived again when its inputs changed (the catalog, the ports
        that moved away); `ports`: only these changed (a port's change), the others are not looked at."""
        if self._guest is None:
            return
        catalog, inactive = self._view.catalog, self._view.mobility.inactive()
        last = self._guest_inputs
        if ports is not None and last is not None:
            changed: dict[str, offer.PortService | None] = {}
            for port in (last[0].ports.get(name) for name in ports):
                if port is not None:
                    changed[port.interface] = None
            for port in (catalog.ports.get(name) for name in ports):
                if port is not None:
                    changed[port.interface] = offer.port_service(catalog, self.host, port,
                                                                 (port.vsid, port.mac) in inactive)
            self._guest_inputs = (catalog, inactive)
            self._guest.update_ports(changed)
        elif last is None or catalog is not last[0] or inactive != last[1]:
            self._guest_inputs = (catalog, inactive)
            self._guest.update(offer.port_services(catalog, self.host, inactive))

    async def _on_claim(self, port: str, address: Address) -> None:
        await self.claim_virtual_address(port, address)

    def _filters_pending(self) -> bool:
        """The previous run's nftables are still being read back (libnftables' thread: a minute of a table of
        100,000 elements under emulation) while nothing may be written (`_selection_deferred`): the passes
        learn the arriving table without them, the first pass after the read takes them (the decapsulation
        table from scratch, O(its elements) once). Before, every pass waited for the read."""
        return self._filters.reading and self._selection_deferred()

    async def _update_vrf_marks(self) -> None:
        if self._filters_pending():
            return
        if not await self._filters.marks(self._view.tables, self._view.catalog.routing_domains):
            self._dirty.set()

    async def _update_decap(self) -> None:
        """The decapsulation table (vnet/decap.py): the fabric's PAs, the VSIDs served here, and the inner
        sources vouched for by the lookup records, the announced prefixes and the customer routes; written by
        difference (hostagent/filters.py) from what the last swap changed (`self.applied`: lookup records,
        next hops), from scratch at the start, after a full pass and after a refusal (the index is then
        checked against the reference)."""
        if self._filters_pending():
            return
        table = self._table  # (as the computation just before read it)
        assert table is not None
        catalog, tables = self._view.catalog, self._view.tables
        customer = {name: d.customer_routes for name, d in catalog.routing_domains.items()}
        # a learned prefix that lost its key to a stronger route (a local CA, a customer route) is not
        # routed to its sender: nor are packets from that sender with sources in it delivered. The prefixes
        # (type-5 routes: a few per routing domain) are compared whole, so a conflict that comes or goes
        # without a route changing is followed too.
        lost = {(c.domain, c.prefix, c.pa) for found in self._conflicts.values() for c in found
                if c.loser == "remote_prefix"}
        announced = tuple(p for p in table.announced() if (p.routing_domain, str(p.prefix), str(p.pa)) not in lost)
        now = decap.DecapInputs(self._learned_state.every_record(), announced, table.next_hops(), customer,
                                dict(tables), served_vsids(catalog, tables))
        was, applied = self._filters.decap_fed, self.applied
        what = None
        if was is not None and not applied.full:
            changed = applied.records.values()
            what = decap.change(([old for old, _ in changed if old is not None],
                                 [new for _, new in changed if new is not None]),
                                (was.prefixes, now.prefixes),
                                (applied.next_hops_removed, applied.next_hops_added),
                                (was.customer_routes, now.customer_routes), (was.tables, now.tables),
                                (was.vsids, now.vsids))
        if not await self._filters.decapsulation(now, what, self._holding(), full=applied.full):
            self._dirty.set()

    async def decap_counters(self) -> dict[str, int]:
        """Packets judged by the decapsulation table, by drop reason (and vouched), as the kernel counts them."""
        counts = await self._filters.decap_counters()
        self._decap_collector.counts = counts
        return counts

    @property
    def decap(self) -> DecapFilter | None:
        """What the decapsulation table holds now (for trace)."""
        return self._filters.decap

    async def _announce(self, ports: Collection[str] | None = None, before: View | None = None) -> None:
        """Each local port's routes, one group per port (bgp/announced.py): a port's group is built again
        only when what it is built from changed (`_inputs`). `ports`: the only ports that may have changed
        from the view `before` (a port's change); None: every port is looked at, unless the view is the one
        last announced."""
        if self._client is None:
            return
        view = self._view
        held: dict[str, list[tuple[Address, int]]] = {}
        for (_domain, address), (holder, seq) in view.holders.holding().items():
            held.setdefault(holder, []).append((address, seq))
        basis = (view.catalog, view.mobility, view.holders.held)
        if ports is None:
            last = self._announce_basis
            if last is not None and all(a is b for a, b in zip(basis, last, strict=True)):
                names: Collection[str] = ()
            else:
                names = self._announcing.keys() | view.catalog.ports.keys()
        else:
            names = ports
        wanted: dict[str, dict[MacIpKey, MacIpRoute]] = {}
        inputs: dict[str, Announcing | None] = {}
        for name in names:
            port = view.catalog.ports.get(name)
            now = None if port is None else self._inputs(view, port, held.get(name, ()))
            if now == self._announcing.get(name):
                continue
            inputs[name] = now
            wanted[name] = {} if port is None or now is None else announce.port_routes(
                view.catalog, self.identity, port, now.seq, now.inactive, now.held)
        if wanted:
            await self._announced.update(self._client, wanted)
        for name, now in inputs.items():
            if now is None:
                self._announcing.pop(name, None)
            else:
                self._announcing[name] = now
        last = self._announce_basis
        if ports is None or (before is not None and last is not None and all(
                a is b for a, b in zip((before.catalog, before.mobility, before.holders.held), last, strict=True))):
            self._announce_basis = basis  # every port announced as this view wants
        self.metrics.announced(len(view.catalog.ports), *self._learned_state.counts())
        self.metrics.held_addresses(sum(len(h) for h in held.values()))

    @staticmethod
    def _inputs(view: View, port: Port, held: Collection[tuple[Address, int]]) -> Announcing:
        found = view.catalog.subnet(port.vsid)
        mac = view.mobility.macs.get((port.vsid, port.mac))
        return Announcing(port, found[0].route_targets if found is not None else None,
                          mac.seq if mac is not None else 0, mac is not None and not mac.active,
                          tuple(sorted(held, key=lambda h: (h[0].version, h[0]))))

    # ------------------------------------------------------------------ tasks

    async def _consume(self) -> None:
        assert self._client is not None
        taken = 0
        async for event in self._client.events():
            if isinstance(event, PeerStatus):
                self._on_peer(event)
            elif isinstance(event, RouteUpdate):
                # kept for the syncer (the latest per key: a burst of changes to one key is one change)
                self._incoming[event.key] = event.route
            self._dirty.set()
            taken += 1
            if taken % LEARN_SLICE == 0:
                await asyncio.sleep(0)  # (the stream does not wait while it has more: a table's backlog)

    def _selection_deferred(self) -> bool:
        """After a start, until End-of-RIB from the reflectors (or eor_timeout), the fabric's table is still
        arriving (RFC 4724 section 4.1 defers route selection likewise): the kernel keeps forwarding with
        what the previous run left. The table is learned and compared with the kernel as it arrives, batch
        by batch (O(each batch)), but nothing is written (`Reconciler.reconcile`'s `defer`): what differs
        waits, and is written by the pass after End-of-RIB, which then has only the rest to plan. Not after
        a reflector outage: changes apply as they come then."""
        return not self._hold.synced and not self._hold.after_headless

    def _on_peer(self, event: PeerStatus) -> None:
        self._hold = self._hold.on_session(event.peer, event.state, time.monotonic())

    async def _syncer(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(COALESCE)
            self._dirty.clear()
            async with self._lock:
                try:
                    # what the client delivered up to here is in effect once the pass ends (its backlog)
                    mark = self._client.mark() if self._client is not None else 0
                    began = time.monotonic()
                    await self._sync_locked()
                    self._last_sync = time.monotonic() - began
                    self.metrics.synced(self._last_sync)
                    if self._client is not None and not self._left_behind:  # (else a slice of it)
                        self._client.applied(mark)
                except Exception:  # noqa: BLE001 - the loop must survive; the error is logged and retried
                    log.exception("sync failed")
                    assert self._reconciler is not None
                    self._reconciler.invalidate()
                    self._everything = True
                    await asyncio.sleep(1.0)
                    self._dirty.set()

    async def _timers(self) -> None:
        last_resync = last_verify = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if self._growth.is_open and now - self._started_at > self.config.eor_timeout + GROWTH_LIMIT:
                log.warning("not synced %.0f s after the start: the collector's full walks resume",
                            now - self._started_at)
                self._growth.close()
            hold = self._hold.on_timer(now)
            if hold is not self._hold:
                # End-of-RIB did not come (or, back from headless, cannot be trusted): stop holding
                self._hold = hold
                self._dirty.set()
            if now - last_verify > self.config.verify_interval:
                # the desired state computed again from scratch and compared (a change the incremental
                # computation missed), and the kernel read back: O(the fabric), one long pass
                last_verify = last_resync = now
                assert self._reconciler is not None
                self._reconciler.invalidate()
                self._everything = True
                self._dirty.set()
            elif now - last_resync > self.config.resync_interval and (
                    self._resync_task is None or self._resync_task.done()):
                last_resync = now
                self._resync_task = asyncio.create_task(self._resync(), name="agent-resync")
                self._tasks = [t for t in self._tasks if not t.done()] + [self._resync_task]

    async def _resync(self) -> None:
        """The kernel read back and compared with the desired state held (vnet/reconcile.py `audit`), beside
        the passes, which go on meanwhile: what removes strays and repairs what someone else changed; nothing
        is computed again. What differs is written at once (`Reconciler.repair`)."""
        assert self._reconciler is not None
        try:
            with RtnlSocket(self.config.netns, cooperative=True) as sock:
                found, suspects = await self._reconciler.audit(sock)
        except OSError as exc:
            log.warning("resync: reading the kernel back: %s (again at the next resync)", exc)
            return
        async with self._lock:
            audit = self._reconciler.adopt(found, suspects)
            self._reread_ports = True
            self._dirty.set()
            if not any(audit.drift.values()):
                return
            found_text = ", ".join(f"{n} {kind}" for kind, n in audit.drift.items() if n)
            # written now, as a full pass would, even before End-of-RIB or while headless
            outcome = await self._reconciler.repair(self._holding())
            self.metrics.reconciled(outcome)
        if outcome.errors:
            log.warning("resync: the kernel differed from what the agent wrote (%s); the repair failed: %s",
                        found_text, outcome.errors[:3])
        else:
            log.warning("resync: the kernel differed from what the agent wrote (%s): repaired", found_text)


__all__ = ["Agent", "AgentStatus", "ReflectorStatus", "vrf_name"]
