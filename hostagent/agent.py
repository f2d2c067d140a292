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
from types import MappingProxyType
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from nvfabric.bgp.client import Client, RouteUpdate
from nvfabric.bgp.config import GracefulRestartConfig, Neighbour, SpeakerConfig
from nvfabric.bgp.routes import Family, MacIpKey, MacIpRoute
from nvfabric.bgp.speaker import PeerStatus
from nvfabric.hostagent import state
from nvfabric.hostagent.config import AgentConfig
from nvfabric.hostagent.mobility import MacState, Mobility
from nvfabric.vnet import announce, learn
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import GLOBAL, Desired, HostIdentity, allocate_tables, desired_state, vrf_name
from nvfabric.vnet.errors import KernelError, ModelError, NotStarted
from nvfabric.vnet.kernel.netns import RtnlSocket, link_exists
from nvfabric.vnet.kernel.objects import Vrf
from nvfabric.vnet.model import Address, LookupRecord, Port, RemotePrefix, RoutingDomain
from nvfabric.vnet.nftables import GreFilter, Nft, NftError
from nvfabric.vnet.reconcile import Outcome, Reconciler
from nvfabric.vnet.vrfmark import VrfMarks

log = logging.getLogger(__name__)

COALESCE = 0.02  # seconds to gather a burst of BGP changes into one reconcile


AgentNotStarted = NotStarted  # the agent's name for it (hostagent.api, tests)


class NamespaceError(RuntimeError):
    pass


@dataclass(frozen=True)
class ReflectorStatus:
    address: str
    state: str  # "established" | "down" | "connecting"
    end_of_rib: bool
    since: float | None = None


@dataclass(frozen=True)
class AgentStatus:
    router_id: str
    reflectors: tuple[ReflectorStatus, ...]
    synced: bool  # End-of-RIB seen (or timed out) since start: deletes of learned state are allowed
    headless: bool  # no reflector up: forwarding kept as is
    last_reconcile: dict[str, Any] | None
    totals: dict[str, int]
    held_deletes: int
    mobility_freezes: tuple[dict[str, Any], ...]
    skipped: tuple[str, ...]
    local_routes: int
    learned_routes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Peer:
    state: str = "connecting"
    eor: bool = False
    since: float | None = None


@dataclass
class _View:
    """Everything the desired state is computed from, swapped as a whole."""

    catalog: Catalog
    tables: dict[str, int]
    mobility: Mobility = field(default_factory=Mobility)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.identity = announce.Identity(config.router_id, config.provider_addresses, config.router_mac)
        self.host = HostIdentity(config.router_mac, config.provider_addresses, config.underlay_mtu)
        saved = state.load(config.state_dir)
        if saved is None:
            catalog = Catalog.build({rd.name: rd for rd in config.routing_domains}, {})
            self._view = _View(catalog, allocate_tables(catalog.routing_domains, {}))
        else:
            # the sequences we announced before the restart (a restored sequence is not a move); every local
            # port's MAC is tracked, so a higher sequence elsewhere is noticed after a restart too
            seqs = {(p.vsid, p.mac): saved.seqs.get((p.vsid, p.mac), 0) for p in saved.catalog.ports.values()}
            mobility = Mobility(MappingProxyType({k: MacState(seq=s) for k, s in seqs.items()}))
            self._view = _View(saved.catalog, allocate_tables(saved.catalog.routing_domains, saved.tables), mobility)
        self.registry = CollectorRegistry()
        self._m_ports = Gauge("nvfabric_agent_ports", "local ports configured", registry=self.registry)
        self._m_records = Gauge("nvfabric_agent_lookup_records", "lookup records", ["kind"], registry=self.registry)
        self._m_ops = Counter("nvfabric_agent_kernel_ops", "kernel ops applied", ["action"], registry=self.registry)
        self._m_errors = Counter("nvfabric_agent_kernel_errors", "kernel ops refused", registry=self.registry)
        self._m_up = Gauge("nvfabric_agent_reflector_up", "BGP session established", ["reflector"],
                           registry=self.registry)
        self._m_held = Gauge("nvfabric_agent_held_deletes", "learned-state deletes held", registry=self.registry)
        frozen = Gauge("nvfabric_agent_mobility_frozen_macs", "MACs frozen now (RFC 7432 15.1 duplicate detection)",
                       registry=self.registry)
        frozen.set_function(lambda: len(self._view.mobility.freezes(time.monotonic())))
        self._lock = asyncio.Lock()
        self._started = False
        self._sock: RtnlSocket | None = None
        self._reconciler: Reconciler | None = None
        self._client: Client | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._dirty = asyncio.Event()
        self._peers = {r.address: _Peer() for r in config.route_reflectors}
        self._synced = False
        self._start_time = 0.0
        # End-of-RIB ends the hold of removals, or this deadline when it does not come (start + eor_timeout)
        self._eor_deadline = 0.0
        # back from headless: the reflectors may have restarted with empty tables, and a restarted reflector
        # answers End-of-RIB before the other hosts are back and have re-announced (docs/rr.md): its End-of-RIB
        # does not end the hold, only the deadline (the first reflector's return + eor_timeout) does
        self._after_headless = False
        self._announced: dict[MacIpKey, MacIpRoute] = {}
        self._records: list[LookupRecord] = []
        self._prefixes: list[RemotePrefix] = []
        self._skipped: dict[str, tuple[str, ...]] = {}  # by routing domain
        self._everything = True  # the next reconcile builds every routing domain (start, resync, error)
        self._nft = Nft(config.netns)
        self._vrf_marks = VrfMarks(self._nft)
        self._gre_allowed: frozenset[Address] | None = None

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
        self._start_time = time.monotonic()
        self._eor_deadline = self._start_time + self.config.eor_timeout
        self._sock = RtnlSocket(self.config.netns)
        self._reconciler = Reconciler(self._sock)
        # adopt the tables of VRFs already in the kernel (a restart without, or with a stale, state dir)
        current = await self._reconciler.observe([])
        adopted = {o.name[len("nvf-"):]: o.table for o in current.values() if isinstance(o, Vrf)}
        self._view.tables = allocate_tables(self._view.catalog.routing_domains,
                                            {**adopted, **self._view.tables})
        self._gre_allowed = await self._nft.allowed()
        self._client = Client(SpeakerConfig(
            asn=self.config.asn, router_id=self.config.router_id, families=(Family.L2VPN_EVPN,),
            neighbours=tuple(Neighbour(address=r.address, asn=r.asn, md5_password=r.md5_password)
                             for r in self.config.route_reflectors),
            graceful_restart=GracefulRestartConfig(enabled=True, forwarding_preserved=True),
        ))
        self._started = True
        async with self._lock:
            await self._sync_locked()  # adopts what is there; learned routes held until End-of-RIB
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
            await self._client.stop()
        if self._sock is not None:
            self._sock.close()
        # the kernel state stays: forwarding continues while the agent is away (graceful restart)

    # ------------------------------------------------------------------ API

    async def put_routing_domain(self, rd: RoutingDomain) -> bool:
        async with self._lock:
            created = rd.name not in self._view.catalog.routing_domains
            catalog = self._view.catalog.with_routing_domain(rd)
            tables = allocate_tables(catalog.routing_domains, self._view.tables)
            await self._commit(_View(catalog, tables, self._view.mobility), f"routing domain {rd.name}", {rd.name})
            return created

    async def delete_routing_domain(self, name: str) -> None:
        async with self._lock:
            catalog = self._view.catalog.without_routing_domain(name)
            tables = {k: v for k, v in self._view.tables.items() if k != name}
            await self._commit(_View(catalog, tables, self._view.mobility), f"routing domain {name}", {name})

    async def put_port(self, port: Port) -> bool:
        async with self._lock:
            old = self._view.catalog.ports.get(port.name)
            running = self._started and self._sock is not None
            netns = self.config.netns
            # one device looked up by name, not every link of the host dumped (O(ports) per attach)
            catalog = self._view.catalog.with_port(port, (lambda n: link_exists(netns, n)) if running else None)
            if running and port.interface.startswith("nvf-"):
                raise ModelError("interface", port.interface, "is a device of nvfabric, not a VM port")
            mobility = self._view.mobility
            if old is not None and (old.vsid, old.mac) != (port.vsid, port.mac):
                mobility = mobility.detach((old.vsid, old.mac))
            remote = learn.remote_macs(self._learned(), self.config.provider_addresses).get((port.vsid, port.mac))
            mobility = mobility.attach((port.vsid, port.mac), remote.mobility_seq if remote else None,
                                       time.monotonic())
            dirty = {_domain_of(catalog, port.vsid)}
            if old is not None:
                dirty.add(_domain_of(self._view.catalog, old.vsid))  # a port that changed routing domain
            await self._commit(_View(catalog, self._view.tables, mobility), f"port {port.name}", dirty - {None})
            return old is None

    async def delete_port(self, name: str) -> None:
        async with self._lock:
            port = self._view.catalog.port(name)
            catalog = self._view.catalog.without_port(name)
            mobility = self._view.mobility
            if not any((p.vsid, p.mac) == (port.vsid, port.mac) for p in catalog.ports.values()):
                mobility = mobility.detach((port.vsid, port.mac))
            await self._commit(_View(catalog, self._view.tables, mobility), f"port {name}",
                               {_domain_of(self._view.catalog, port.vsid)} - {None})

    def lookup_records(self) -> list[LookupRecord]:
        return list(self._records)

    def remote_prefixes(self) -> list[RemotePrefix]:
        return list(self._prefixes)

    def status(self) -> AgentStatus:
        last = self._reconciler.last if self._reconciler else None
        return AgentStatus(
            router_id=self.config.router_id,
            reflectors=tuple(ReflectorStatus(a, p.state, p.eor, p.since) for a, p in self._peers.items()),
            synced=self._synced,
            headless=self._headless(),
            last_reconcile=_outcome(last),
            totals=dict(self._reconciler.totals) if self._reconciler else {},
            held_deletes=last.held if last else 0,
            mobility_freezes=tuple(_wall(asdict(f)) for f in self._view.mobility.freezes(time.monotonic())),
            skipped=tuple(x for why in self._skipped.values() for x in why),
            local_routes=len(self._announced),
            learned_routes=len(self._client.routes()) if self._client else 0,
        )

    # ------------------------------------------------------------------ the one way state changes

    def _learned(self) -> list[Any]:
        return list(self._client.routes().values()) if self._client else []

    def _headless(self) -> bool:
        return self._started and not any(p.state == "established" for p in self._peers.values())

    def _hold(self) -> bool:
        return not self._synced or self._headless()

    def _compute(self, view: _View, dirty: set[str]) -> tuple[Desired, list[LookupRecord], list[RemotePrefix]]:
        """The desired objects of the dirty routing domains, plus those whose learned inputs changed since the
        last reconcile (a BGP batch marks the domains it touches: their records or prefixes differ); every
        domain after a start, a resync or an error."""
        routes = self._learned()
        inactive = view.mobility.inactive()
        records = learn.lookup_records(view.catalog, routes, self.config.provider_addresses, inactive)
        prefixes = learn.remote_prefixes(view.catalog, routes, self.config.provider_addresses)
        assert self._reconciler is not None
        if self._everything or self._reconciler.full_pending:
            domains = None
        else:
            domains = set(dirty) | _changed(self._records, records) | _changed(self._prefixes, prefixes)
        routes = {name: rd.customer_routes for name, rd in view.catalog.routing_domains.items()}
        desired = desired_state(view.catalog, records, prefixes, routes, self.host, view.tables, domains)
        return desired, records, prefixes

    async def _reconcile(self, desired: Desired) -> Outcome:
        assert self._reconciler is not None
        outcome = await self._reconciler.reconcile(desired.partitions, self._hold())
        self._count(outcome)
        self._everything = False
        return outcome

    def _swap_learned(self, desired: Desired, records: list[LookupRecord], prefixes: list[RemotePrefix]) -> None:
        self._records, self._prefixes = records, prefixes
        for name, part in desired.partitions.items():
            if name != GLOBAL:
                self._skipped.pop(name, None)
                if part and name in desired.skipped_in:
                    self._skipped[name] = desired.skipped_in[name]

    async def _commit(self, view: _View, what: str, dirty: set[str]) -> None:
        """Program, persist, swap, announce; on a kernel refusal revert the kernel and raise."""
        if not self._started or self._reconciler is None:
            raise AgentNotStarted(f"{what}: the agent is not running")
        desired, records, prefixes = self._compute(view, dirty)
        outcome = await self._reconcile(desired)
        if not outcome.ok:
            await self._reconciler.revert(outcome.applied)
            # the same partitions as they were (the revert makes this a full pass: the kernel is read back)
            back, _, _ = self._compute(self._view, set(desired.partitions) - {GLOBAL})
            # (a routing domain the change added is not in the old view: its partition is emptied)
            back_parts = {**{n: frozenset() for n in desired.partitions}, **back.partitions}
            self._count(await self._reconciler.reconcile(back_parts, self._hold()))
            raise KernelError(what, outcome.errors)
        state.save(self.config.state_dir, state.SavedState(view.catalog, view.tables, view.mobility.seqs()))
        self._view = view
        self._swap_learned(desired, records, prefixes)
        await self._update_vrf_marks()
        await self._announce()

    async def _sync_locked(self) -> None:
        """Follow BGP: mobility decisions, then desired -> kernel, GRE filter, announcements."""
        view = self._view
        remote = learn.remote_macs(self._learned(), self.config.provider_addresses)
        mobility = view.mobility
        now = time.monotonic()
        ours = self.config.next_hop
        for key, route in remote.items():
            if key in mobility.macs:
                wins_tie = (route.next_hop.version, route.next_hop.packed) < (ours.version, ours.packed)
                mobility = mobility.remote(key, route.mobility_seq, wins_tie, now)
        if mobility is not view.mobility:
            view = _View(view.catalog, view.tables, mobility)
            state.save(self.config.state_dir, state.SavedState(view.catalog, view.tables, mobility.seqs()))
            self._view = view
        desired, records, prefixes = self._compute(view, set())
        outcome = await self._reconcile(desired)
        if outcome.errors:
            log.warning("reconcile: %d errors: %s", len(outcome.errors), outcome.errors[:3])
            self._dirty.set()  # retry (the reconciler observes the kernel again, a full pass)
        self._swap_learned(desired, records, prefixes)
        await self._update_vrf_marks()
        await self._update_gre_filter()
        await self._announce()

    async def _update_gre_filter(self) -> None:
        pas = {r.next_hop for r in self._learned() if hasattr(r, "next_hop")}
        pas -= set(self.config.provider_addresses)
        if self._hold() and self._gre_allowed:
            pas |= self._gre_allowed  # like deletes: no PA is forgotten before End-of-RIB
        allowed = frozenset(pas)
        if allowed != self._gre_allowed:
            try:
                await self._nft.apply(GreFilter(allowed))
                self._gre_allowed = allowed
            except NftError as exc:
                log.warning("%s", exc)
                self._dirty.set()

    async def _update_vrf_marks(self) -> None:
        """Each routing domain's VRF marks its packets with its table number (vnet/vrfmark.py: the ICMPv6
        Packet Too Big the host sends is routed back into the right tenant)."""
        view = self._view
        marks = {vrf_name(n): t for n, t in view.tables.items() if n in view.catalog.routing_domains}
        try:
            await self._vrf_marks.apply(marks)
        except NftError as exc:
            log.warning("%s", exc)
            self._dirty.set()

    async def _announce(self) -> None:
        if self._client is None:
            return
        want = announce.local_routes(self._view.catalog, self.identity, self._view.mobility.seqs(),
                                     self._view.mobility.inactive())
        gone = [k for k in self._announced if k not in want]
        new = [r for k, r in want.items() if self._announced.get(k) != r]
        if gone:
            await self._client.withdraw(gone)
        if new:
            await self._client.announce(new)
        self._announced = want
        self._m_ports.set(len(self._view.catalog.ports))
        self._m_records.labels("local").set(sum(1 for r in self._records if r.local))
        self._m_records.labels("remote").set(sum(1 for r in self._records if not r.local))

    def _count(self, outcome: Outcome) -> None:
        for action, n in outcome.counts.items():
            if n:
                self._m_ops.labels(action).inc(n)
        if outcome.errors:
            self._m_errors.inc(len(outcome.errors))
        self._m_held.set(outcome.held)

    # ------------------------------------------------------------------ tasks

    async def _consume(self) -> None:
        assert self._client is not None
        async for event in self._client.events():
            if isinstance(event, PeerStatus):
                self._on_peer(event)
            elif isinstance(event, RouteUpdate):
                pass  # the client's delivered table is what we read; the event only marks us dirty
            self._dirty.set()

    def _on_peer(self, event: PeerStatus) -> None:
        peer = self._peers.setdefault(event.peer, _Peer())
        if event.state == "established":
            if self._headless():  # the first reflector (back) after none was up: the deadline counts from now
                self._eor_deadline = max(self._eor_deadline, time.monotonic() + self.config.eor_timeout)
            peer.state, peer.eor, peer.since = "established", False, time.time()
        elif event.state == "down":
            peer.state, peer.eor, peer.since = "down", False, time.time()
            if self._headless():
                self._synced = False  # after the reflectors return, hold removals again
                self._after_headless = True
        elif event.state == "end-of-rib":
            peer.eor = True
        self._m_up.labels(event.peer).set(1 if peer.state == "established" else 0)
        up = [p for p in self._peers.values() if p.state == "established"]
        if up and all(p.eor for p in up) and not self._after_headless:
            self._synced = True

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
            if not self._synced and not self._headless() and now > self._eor_deadline:
                # End-of-RIB did not come (or, back from headless, cannot be trusted): stop holding
                self._synced, self._after_headless = True, False
                self._dirty.set()
            if now - last_resync > self.config.resync_interval:
                last_resync = now
                assert self._reconciler is not None
                self._reconciler.invalidate()  # a full pass: what removes strays and repairs drift
                self._everything = True  # and every routing domain's desired state recomputed
                self._dirty.set()


def _wall(freeze: dict[str, Any]) -> dict[str, Any]:
    """A freeze's end in wall-clock time (Unix seconds): a monotonic value means nothing to an operator."""
    return {**freeze, "until": time.time() + (freeze["until"] - time.monotonic())}


def _domain_of(catalog: Catalog, vsid: int) -> str | None:
    found = catalog.subnet(vsid)
    return found[0].name if found is not None else None


def _changed(old: list[Any], new: list[Any]) -> set[str]:
    """Routing domains whose items (records or prefixes, each with a `routing_domain`) differ."""
    before: dict[str, set[Any]] = {}
    after: dict[str, set[Any]] = {}
    for item in old:
        before.setdefault(item.routing_domain, set()).add(item)
    for item in new:
        after.setdefault(item.routing_domain, set()).add(item)
    return {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}


def _outcome(o: Outcome | None) -> dict[str, Any] | None:
    if o is None:
        return None
    return {"at": o.at, "ops": o.counts, "errors": list(o.errors), "held": o.held, "seconds": round(o.seconds, 4),
            "full_observe": o.full_observe, "partitions": list(o.partitions),
            "plan_seconds": round(o.plan_seconds, 4), "apply_seconds": round(o.apply_seconds, 4),
            "kernel_seconds": round(o.kernel_seconds, 4)}


__all__ = ["Agent", "AgentNotStarted", "AgentStatus", "KernelError", "ReflectorStatus", "vrf_name"]
