"""The host agent: catalog (what the orchestrator asked for), BGP (what the fabric knows), kernel (what we did).

One asyncio owner: every change, whether from the API or from BGP, runs under one lock and follows the same
steps: compute the new state as values (catalog, mobility, learned routes) -> desired kernel objects of the
routing domains the change touches (dirty) -> reconcile those partitions (vnet.reconcile) -> persist -> swap
-> announce. A change costs O(size of the dirty routing domains), not O(host); the start and the periodic
resync are full passes (every domain, the whole kernel read back). An API change whose kernel programming
fails is reverted (the previous desired state is reconciled again) and raised as KernelError carrying the
kernel's message: nothing half-applied.

The agent must run in a thread that is inside `config.netns` when one is set (lab/daemons.py for
tests and the lab, hostagent/cli.py for the daemon): BGP and API sockets are created by that thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from nvfabric.bgp.announced import Announced
from nvfabric.bgp.bfd import BfdStatus
from nvfabric.bgp.bfd.metrics import BfdCollector
from nvfabric.bgp.client import Client, RouteUpdate
from nvfabric.bgp.config import GracefulRestartConfig, SpeakerConfig
from nvfabric.bgp.routes import Family, MacIpKey, MacIpRoute
from nvfabric.bgp.metrics import SessionCollector, SessionSample, samples
from nvfabric.bgp.speaker import PeerStatus
from nvfabric.hostagent import state
from nvfabric.hostagent import status as report
from nvfabric.hostagent.config import AgentConfig
from nvfabric.hostagent.eligible import check_port_interface
from nvfabric.hostagent.filters import Filters, gre_allowed, served_vsids
from nvfabric.hostagent.guest import offer
from nvfabric.hostagent.guest.responder import PacketWire, Responder
from nvfabric.hostagent.guest.wire import Wire
from nvfabric.hostagent.metrics import AgentMetrics
from nvfabric.hostagent.reload import Reconfiguration
from nvfabric.hostagent.status import AgentStatus, ReflectorStatus
from nvfabric.hostagent.compute import Learned, View, compute, domain_of, follow_remote, follow_remote_holders
from nvfabric.hostagent.holders import FROZEN, HolderKey, judge
from nvfabric.vnet import announce, decap, learn
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.decap import DecapCollector, DecapFilter
from nvfabric.vnet.desired import GLOBAL, Conflict, Desired, HostIdentity, allocate_tables, vrf_name
from nvfabric.vnet.errors import KernelError, NotStarted
from nvfabric.vnet.hold import Hold, Policy
from nvfabric.vnet.kernel.interfaces import read_interface
from nvfabric.vnet.kernel.netns import RtnlSocket, link_exists
from nvfabric.vnet.kernel.objects import KernelObject, Vrf
from nvfabric.vnet.kernel.observe import address_prefixes, devices
from nvfabric.vnet.model import Address, LookupRecord, Network, Port, RemotePrefix, RoutingDomain
from nvfabric.vnet.nftables import Nft, NftError
from nvfabric.vnet.policy import Screened, pa_prefixes, screen
from nvfabric.vnet.portsecurity import PortSecurity, guarded
from nvfabric.vnet.reconcile import Outcome, Reconciler

log = logging.getLogger(__name__)

COALESCE = 0.02  # seconds to gather a burst of BGP changes into one reconcile
LOCAL = "ports"  # the one group of routes the agent announces (bgp.announced)



class NamespaceError(RuntimeError):
    pass


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.identity = announce.Identity(config.router_id, config.provider_addresses, config.router_mac)
        self.host = HostIdentity(config.router_mac, config.provider_addresses, config.underlay_mtu)
        self._view = View.first(config.routing_domains, state.load(config.state_dir))
        self.metrics = AgentMetrics(lambda: len(self._view.mobility.freezes(time.monotonic())))
        self.registry = self.metrics.registry
        self._decap_collector = DecapCollector()  # refreshed by decap_counters() before a scrape
        self.registry.register(self._decap_collector)
        self.registry.register(BfdCollector(self._bfd_status))
        self.registry.register(SessionCollector(self._sessions))
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
        self._announced = Announced()
        self._learned_state = Learned()
        self._skipped: dict[str, tuple[str, ...]] = {}  # by routing domain
        self._conflicts: dict[str, tuple[Conflict, ...]] = {}  # routes that lost their key, by routing domain
        # the import policy's next-hop check (vnet/policy.py): configured, else read at start; None: unchecked
        self._provider_prefixes: tuple[Network, ...] | None = config.provider_prefixes
        self._screened = Screened()
        self._claims: dict[str, int] = {}  # virtual address claims judged, by outcome
        self.desired: dict[str, frozenset[KernelObject]] = {}  # by partition, as last swapped in: what trace follows
        self._everything = True  # the next reconcile builds every routing domain (start, resync, error)
        self._filters = Filters(Nft(config.netns))
        # port security on the VM ports (vnet/portsecurity.py): written before a new port is routed, read
        # back at start and adopted, so a restart never leaves a port unguarded
        self._port_security = PortSecurity(Nft(config.netns))
        # what the VMs get from their host (DHCP, RA...): answered from a packet socket opened at start
        self._guest: Responder | None = None
        self._new_wire: Callable[[], PacketWire] = Wire  # (tests give an in-memory one)
        self._guest_error: str | None = None
        self._guest_inputs: tuple[Any, ...] | None = None  # what the services were last derived from

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
        self._hold = Hold.start(self._policy, self._hold.sessions, time.monotonic())
        self._sock = RtnlSocket(self.config.netns)
        self._reconciler = Reconciler(self._sock)
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
        await self._filters.start()
        self._client = Client(SpeakerConfig(
            asn=self.config.asn, router_id=self.config.router_id, families=(Family.L2VPN_EVPN,),
            neighbors=tuple(r.neighbor() for r in self.config.route_reflectors),
            graceful_restart=GracefulRestartConfig(enabled=True, forwarding_preserved=True),
        ))
        self._started = True
        async with self._lock:
            await self._sync_locked()  # adopts what is there; learned routes held until End-of-RIB
            self._start_guest()
        await self._client.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._consume(), name="agent-bgp"),
            loop.create_task(self._syncer(), name="agent-sync"),
            loop.create_task(self._timers(), name="agent-timers"),
        ]

    async def stop(self) -> None:
        self._started = False
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
            remote = learn.remote_macs(self._learned(catalog), self.config.provider_addresses).get(
                (port.vsid, port.mac))
            mobility = mobility.attach((port.vsid, port.mac), remote.mobility_seq if remote else None,
                                       time.monotonic())
            dirty = {domain_of(catalog, port.vsid)}
            if old is not None:
                dirty.add(domain_of(self._view.catalog, old.vsid))  # a port that changed routing domain
            await self._commit(replace(self._view, catalog=catalog, mobility=mobility), f"port {port.name}",
                               dirty - {None})
            return old is None

    async def delete_port(self, name: str) -> None:
        async with self._lock:
            port = self._view.catalog.port(name)
            catalog = self._view.catalog.without_port(name)
            mobility = self._view.mobility
            if not any((p.vsid, p.mac) == (port.vsid, port.mac) for p in catalog.ports.values()):
                mobility = mobility.detach((port.vsid, port.mac))
            await self._commit(replace(self._view, catalog=catalog, mobility=mobility), f"port {name}",
                               {domain_of(self._view.catalog, port.vsid)} - {None})

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
            remote = learn.remote_cas(view.catalog, self._learned(), self.config.provider_addresses).get(key)
            holders = view.holders.claim(key, port_name, remote.mobility_seq if remote is not None else None, now)
            try:
                await self._commit(replace(view, holders=holders), f"virtual address {address}", {domain})
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
        records = {(r.routing_domain, r.ca): r for r in self._learned_state.records}
        out = []
        for name, domain in sorted(self._view.catalog.routing_domains.items()):
            for virtual in domain.virtual_addresses:
                held = self._view.holders.held.get((name, virtual.address))
                record = records.get((name, virtual.address))
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
        return list(self._learned_state.records)

    def remote_prefixes(self) -> list[RemotePrefix]:
        return list(self._learned_state.prefixes)

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
            learned_routes=len(self._client.routes()) if self._client else 0,
            decap=dict(self._decap_collector.counts),
            conflicts=tuple(c.as_dict() for name in sorted(self._conflicts) for c in self._conflicts[name]),
            import_policy={"provider_prefixes": None if self._provider_prefixes is None
                           else [str(p) for p in self._provider_prefixes], **self._screened.as_dict()},
            virtual_addresses=tuple(self.virtual_addresses()),
            claims=dict(self._claims),
            guest_services=self._guest.as_dict() if self._guest is not None
            else {"ports": 0, "frames": {}, "wire_errors": {}, "error": self._guest_error},
            bfd=tuple(s.as_dict() for s in self._bfd_status()),
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

    def _learned(self, catalog: Catalog | None = None) -> list[Any]:
        """The learned routes the import policy accepts (vnet/policy.py) for `catalog` (default: the current
        one; a change passes the catalog it computes); the refused ones are counted."""
        if self._client is None:
            return []
        self._screened = screen(catalog or self._view.catalog, self._client.routes().values(),
                                self.config.provider_addresses, self._provider_prefixes)
        self.metrics.refused(self._screened.counts)
        return list(self._screened.accepted)

    def _headless(self) -> bool:
        return self._started and self._hold.headless

    def _compute(self, view: View, dirty: set[str]) -> tuple[Desired, Learned]:
        """The desired objects of the dirty routing domains and of those whose learned inputs changed; every
        domain after a start, a resync or an error."""
        assert self._reconciler is not None
        everything = self._everything or self._reconciler.full_pending
        return compute(view, self._learned(view.catalog), self.config.provider_addresses, self.host,
                       self._learned_state, None if everything else dirty)

    async def _reconcile(self, desired: Desired) -> Outcome:
        assert self._reconciler is not None
        holding = self._hold.holding  # (the hold may end while the kernel is written)
        outcome = await self._reconciler.reconcile(desired.partitions, holding)
        self.metrics.reconciled(outcome)
        self._programmed |= outcome.ok and not holding
        self._everything = False
        return outcome

    def _swap_learned(self, desired: Desired, learned: Learned) -> None:
        self._learned_state = learned
        self.desired.update(desired.partitions)
        for name, part in desired.partitions.items():
            if name != GLOBAL:
                self._skipped.pop(name, None)
                self._conflicts.pop(name, None)
                if part and name in desired.skipped_in:
                    self._skipped[name] = desired.skipped_in[name]
                if part and name in desired.conflicts_in:
                    self._conflicts[name] = desired.conflicts_in[name]
        self.metrics.conflicts(c for found in self._conflicts.values() for c in found)

    async def _commit(self, view: View, what: str, dirty: set[str]) -> None:
        """Program, persist, swap, announce; on a kernel refusal, or when the state cannot be saved, put the
        kernel back and raise (KernelError, state.SaveError)."""
        if not self._started or self._reconciler is None:
            raise NotStarted(f"{what}: the agent is not running")
        if guarded(view.catalog) != guarded(self._view.catalog):
            await self._guard_ports(view, what)  # before the port is routed: never a moment unguarded
        # a holder the change disallows (or removes) stops holding its virtual address
        view = replace(view, holders=view.holders.prune(view.catalog, view.mobility.inactive()))
        desired, learned = self._compute(view, dirty)
        outcome = await self._reconcile(desired)
        if not outcome.ok:
            await self._put_back(desired, outcome)
            raise KernelError(what, outcome.errors)
        try:
            state.save(self.config.state_dir, view.saved())
        except state.SaveError:
            # a change the agent cannot remember would be undone by its next restart: not made at all
            log.error("%s: the state could not be saved, the kernel is put back", what)
            await self._put_back(desired, outcome)
            raise
        self._view = view
        self._swap_learned(desired, learned)
        await self._update_vrf_marks()
        await self._update_decap()
        await self._announce()
        self._update_guest()

    async def _put_back(self, desired: Desired, outcome: Outcome) -> None:
        """The kernel as the current view wants it again, after a change that cannot stand."""
        assert self._reconciler is not None
        with contextlib.suppress(NftError):  # (a refusal here is retried by the next sync)
            await self._port_security.apply(guarded(self._view.catalog))
        await self._reconciler.revert(outcome.applied)
        # the same partitions as they were (the revert makes this a full pass: the kernel is read back)
        back, _ = self._compute(self._view, set(desired.partitions) - {GLOBAL})
        # (a routing domain the change added is not in the old view: its partition is emptied)
        back_parts = {**{n: frozenset() for n in desired.partitions}, **back.partitions}
        self.metrics.reconciled(await self._reconciler.reconcile(back_parts, self._hold.holding))

    async def _guard_ports(self, view: View, what: str) -> None:
        try:
            await self._port_security.apply(guarded(view.catalog))
        except NftError as exc:
            raise KernelError(what, (str(exc),)) from None

    async def _sync_locked(self) -> None:
        """Follow BGP: mobility decisions, then desired -> kernel, GRE filter, announcements."""
        view = self._view
        if self._everything:
            self._port_security.invalidate()  # start and resync: read the kernel back, repair any drift
        try:
            await self._port_security.apply(guarded(view.catalog))
        except NftError as exc:
            log.warning("%s", exc)
            self._dirty.set()
        routes = self._learned()
        remote = learn.remote_macs(routes, self.config.provider_addresses)
        mobility = follow_remote(view.mobility, remote, self.config.next_hop, time.monotonic(),
                                 complete=not self._hold.holding)
        holders = follow_remote_holders(view.holders, learn.remote_cas(view.catalog, routes,
                                                                       self.config.provider_addresses),
                                        self.config.next_hop, time.monotonic()).prune(view.catalog,
                                                                                      mobility.inactive())
        if mobility is not view.mobility or holders != view.holders:
            changed = replace(view, mobility=mobility, holders=holders)
            try:
                state.save(self.config.state_dir, changed.saved())
                view = self._view = changed
            except state.SaveError as exc:  # the sequences announced must be the ones a restart finds
                # (retried by the next sync, at the latest the periodic resync: not in a tight loop)
                log.error("%s: mobility changes wait until the state can be saved", exc)
        desired, learned = self._compute(view, set())
        outcome = await self._reconcile(desired)
        if outcome.errors:
            log.warning("reconcile: %d errors: %s", len(outcome.errors), outcome.errors[:3])
            self._dirty.set()  # retry (the reconciler observes the kernel again, a full pass)
        self._swap_learned(desired, learned)
        await self._update_vrf_marks()
        await self._update_decap()
        await self._announce()
        self._update_guest()

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

    def _update_guest(self) -> None:
        """What each local port is offered, derived again when its inputs changed (the catalog, the ports
        that moved away)."""
        if self._guest is None:
            return
        inputs = (self._view.catalog, self._view.mobility.inactive())
        last = self._guest_inputs
        if last is None or inputs[0] is not last[0] or inputs[1] != last[1]:
            self._guest_inputs = inputs
            self._guest.update(offer.port_services(self._view.catalog, self.host, inputs[1]))

    async def _on_claim(self, port: str, address: Address) -> None:
        await self.claim_virtual_address(port, address)

    async def _update_vrf_marks(self) -> None:
        if not await self._filters.marks(self._view.tables, self._view.catalog.routing_domains):
            self._dirty.set()

    async def _update_decap(self) -> None:
        """The decapsulation table (vnet/decap.py): the fabric's PAs, the VSIDs served here, and the inner
        sources vouched for by the lookup records, the announced prefixes and the customer routes."""
        routes = list(self._screened.accepted)  # screened by the _compute just before, for this catalog
        catalog, tables, ours = self._view.catalog, self._view.tables, self.config.provider_addresses
        pas = gre_allowed((r.next_hop for r in routes if hasattr(r, "next_hop")), ours)
        customer = {name: d.customer_routes for name, d in catalog.routing_domains.items()}
        # a learned prefix that lost its key to a stronger route (a local CA, a customer route) is not
        # routed to its sender: nor are packets from that sender with sources in it delivered
        lost = {(c.domain, c.prefix, c.pa) for found in self._conflicts.values() for c in found
                if c.loser == "remote_prefix"}
        announced = [p for p in learn.announced_prefixes(catalog, routes, ours)
                     if (p.routing_domain, str(p.prefix), str(p.pa)) not in lost]
        elements = decap.vouched(self._learned_state.records, announced, customer, tables)
        if not await self._filters.decapsulation(pas, served_vsids(catalog, tables), elements,
                                                 self._hold.holding):
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

    async def _announce(self) -> None:
        if self._client is None:
            return
        want: dict[MacIpKey, MacIpRoute] = announce.local_routes(
            self._view.catalog, self.identity, self._view.mobility.seqs(), self._view.mobility.inactive(),
            self._view.holders.holding())
        await self._announced.update(self._client, {LOCAL: want})
        self.metrics.announced(len(self._view.catalog.ports), self._learned_state.records)
        self.metrics.held_addresses(len(self._view.holders.holding()))

    # ------------------------------------------------------------------ tasks

    async def _consume(self) -> None:
        assert self._client is not None
        async for event in self._client.events():
            if isinstance(event, PeerStatus):
                self._on_peer(event)
            elif isinstance(event, RouteUpdate):
                pass  # the client's delivered table is what we read; the event only marks us dirty
            if isinstance(event, RouteUpdate) and self._selection_deferred():
                continue  # kept, and programmed once the table is all in (End-of-RIB), not batch by batch
            self._dirty.set()

    def _selection_deferred(self) -> bool:
        """After a start, until End-of-RIB from the reflectors (or eor_timeout), the fabric's table is still
        arriving (RFC 4724 section 4.1 defers route selection likewise): the kernel keeps forwarding with
        what the previous run left, and the table is computed and compared with it once, not for every
        batch of a 100,000-route table. Not after a reflector outage: changes apply as they come then."""
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
                    await self._sync_locked()
                except Exception:  # noqa: BLE001 - the loop must survive; the error is logged and retried
                    log.exception("sync failed")
                    assert self._reconciler is not None
                    self._reconciler.invalidate()
                    self._everything = True
                    await asyncio.sleep(1.0)
                    self._dirty.set()

    async def _timers(self) -> None:
        last_resync = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            hold = self._hold.on_timer(now)
            if hold is not self._hold:
                # End-of-RIB did not come (or, back from headless, cannot be trusted): stop holding
                self._hold = hold
                self._dirty.set()
            if now - last_resync > self.config.resync_interval:
                last_resync = now
                assert self._reconciler is not None
                self._reconciler.invalidate()  # a full pass: what removes strays and repairs drift
                self._everything = True  # and every routing domain's desired state recomputed
                self._dirty.set()


__all__ = ["Agent", "AgentStatus", "ReflectorStatus", "vrf_name"]
