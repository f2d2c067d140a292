"""The multi-tenant gateway (docs/gateway.md): tenants (gateway/tenants.py) served through NAT (gateway/nat.py),
per-tenant VRFs and tc marks behind NVGRE (gateway/dataplane.py, vnet's dataplane), EVPN towards the reflectors
(gateway/evpn.py: the tenants' CAs learned, type-5 default routes announced; gateway/role.py: whether this
gateway serves), and eBGP upstream for the public addresses (gateway/upstream.py).

One asyncio owner: every change runs under one lock and follows the same steps: validate the tenant as a
value and against what the others hold (tenants.Claims) -> allocate its id -> the VRF side and the tc
marks (vnet, over netlink) -> ONE nftables transaction with only the changed tenant's chains and map elements ->
swap -> announce (upstream, fabric) only that tenant's routes. A refused change (invalid value, conflict,
kernel or nft refusal) raises before the swap, the VRF side is reverted and nft transactions are atomic:
nothing is half-applied. Each step's work follows the changed tenant, not the number of tenants. Then the
state directory is saved (gateway/state.py); when it cannot be, the kernel is put back as it was and the
change refused (StateSaveError).

Which tenants, with which ids, at start: the configuration file's tenants, then the API's from the state
directory (the file wins for a name both hold); ids kept from the state, else adopted from the kernel's NAT
table, else new (state.assign_ids): never reshuffled by a change in the set of tenants.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from nvfabric.bgp.bfd import BfdStatus
from nvfabric.bgp.bfd.endpoint import Bfd
from nvfabric.bgp.metrics import SessionSample
from nvfabric.bgp.speaker import wants_bfd
from nvfabric.gateway import nat
from nvfabric.gateway import sitebgp, sites as sitemodel, sitestatus
from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.conntrackd import ConntrackSync, SyncStatus, own_addresses
from nvfabric.gateway.dataplane import Dataplane, PlumbingError, decap_filter
from nvfabric.gateway.evpn import Fabric
from nvfabric.gateway.role import ANNOUNCE, DEPREFERRED, WITHDRAWN, Role
from nvfabric.gateway.reload import Reconfiguration
from nvfabric.gateway.strongswan import Charon, CharonError, CharonFiles, SiteSa, connections
from nvfabric.gateway.sitepeers import SitePeers
from nvfabric.gateway.sitecerts import check_new as check_new_certificates
from nvfabric.gateway.state import SavedState, StateDir, StateSaveError, assign_ids
from nvfabric.gateway.status import RoleStatus, SessionClock, SessionStatus, readiness as status_readiness
from nvfabric.gateway.tenants import Claims, Tenant
from nvfabric.gateway.upstream import Upstream
from nvfabric.vnet.catalog import NotFound
from nvfabric.vnet.decap import DecapTable
from nvfabric.vnet.desired import HostIdentity, allocate_tables
# the agent's error types too: the REST layer maps them to 503 and 500
from nvfabric.vnet.errors import KernelError, ModelError, NotStarted
from nvfabric.vnet.kernel.conntrack import SessionSampler
from nvfabric.vnet.model import LookupRecord
from nvfabric.vnet.nftables import Nft, NftError

log = logging.getLogger(__name__)

COALESCE = 0.02  # seconds: a burst of a site's route changes becomes one pass of its tenant


@dataclass(frozen=True)
class TenantStatus:
    name: str
    tid: int  # mark = conntrack zone = routing table
    vsids: tuple[int, ...]
    snat: tuple[str, ...]
    floating_ips: int
    counters: nat.TenantCounters
    sessions: int

    def as_dict(self) -> dict[str, Any]:
        c = self.counters
        return {"name": self.name, "id": self.tid, "vsids": list(self.vsids), "snat": list(self.snat),
                "floating_ips": self.floating_ips, "packets_out": c.packets_out, "bytes_out": c.bytes_out,
                "packets_in": c.packets_in, "bytes_in": c.bytes_in, "drops": c.drops, "nat_sessions": self.sessions}


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._tenants: Mapping[str, Tenant] = MappingProxyType({t.name: t for t in config.tenants})
        # provisional until start() has read the state directory and the kernel
        self._ids: Mapping[str, int] = MappingProxyType(allocate_tables(self._tenants, {}))
        self._claims = Claims.of(self._tenants)  # config.parse checked them
        self._reserved = config.reserved
        self._state = StateDir(config.state_dir) if config.state_dir is not None else None
        self._last_id = max(self._ids.values(), default=0)
        # API tenants from the state directory that cannot be served now (the configuration took what they
        # hold): reported, kept in the state file, never silently dropped; a PUT or DELETE settles them
        self._suspended: dict[str, tuple[Tenant, int | None]] = {}
        self.state_problems: tuple[str, ...] = ()  # what was wrong with the state files at start
        self._sessions = SessionSampler(config.netns, config.sessions_interval)
        self._nft = Nft(config.netns)
        # NVGRE-attached tenants need the vnet dataplane; a gateway without provider addresses serves only
        # tenants attached by interface (and the host tests, which have no VRF or GRE)
        self._dp = None if not config.provider_addresses else Dataplane(
            config.netns, HostIdentity(config.router_mac, config.provider_addresses), config.external)
        self._records: dict[str, tuple[LookupRecord, ...]] = {}  # tenant -> its learned CAs
        # the GRE source filter and decapsulation checks (vnet/decap.py), with the NVGRE side; until the
        # fabric's first records, what a previous run vouched for is kept (a restart keeps enforcing)
        self._decap = DecapTable(self._nft) if self._dp is not None else None
        self._decap_learned = False
        # the tenants' IPsec sites (gateway/strongswan.py): charon started with the first site, in the gateway's
        # namespace (the tunnels are the dataplane's XFRM interfaces, so a gateway without VRFs has no sites); with
        # reflectors it holds the sites' SAs only while this gateway serves (Charon.serve)
        self._charon = Charon(config.netns, CharonFiles.for_gateway(config.netns, config.router_id),
                              serving=not config.route_reflectors) if self._dp is not None else None
        self._upstream = Upstream(config) if config.upstream else None
        # the reflectors: learn tenant CAs, announce the tenants' default routes (needs the NVGRE side)
        self._fabric = Fabric(config, self.set_records, self._role_changed) \
            if config.route_reflectors and self._dp else None
        # eBGP with the sites that have `bgp` (gateway/sitepeers.py): what they announce is routed in the
        # tenant's VRF and announced into the tenant (both read it from here, judged: gateway/sitebgp.py)
        self._site_peers = SitePeers(config.asn, config.router_id, config.hold_time, self._site_learned_changed,
                                     serving=not config.route_reflectors) if self._dp is not None else None
        if self._charon is not None and self._site_peers is not None:
            self._charon.on_child_up = self._site_peers.sa_up  # a site's SA up: its session dials at once
        self._site_dirty: set[str] = set()
        self._site_wakeup = asyncio.Event()
        self._site_task: asyncio.Task[None] | None = None
        if self._site_peers is not None:
            for part in (self._dp, self._fabric):
                if part is not None:
                    part.site_learned = self._site_peers.learned
        # One BFD endpoint for the reflectors' and the upstream's sessions: one UDP port 3784 per namespace
        # (a second endpoint would take the first one's packets).
        speakers = [part.client.speaker for part in (self._upstream, self._fabric) if part is not None]
        self._bfd = Bfd() if any(wants_bfd(s.config) for s in speakers) else None
        for speaker in speakers:
            speaker.bfd = self._bfd
        # conntrack entries replicated with the other gateway (gateway/conntrackd.py), told when this gateway
        # becomes active or stands by
        self._sync = None if config.sync is None else ConntrackSync(
            config.sync, config.netns, own_addresses(config), role="standby" if config.standby else "active")
        self._was_serving: bool | None = None  # what the replication was last told (None: nothing yet)
        self._repair: asyncio.Future[None] | None = None  # the dataplane read back on becoming active
        self._clocks = [SessionClock(part.client.speaker, kind, [p.address for p in peers])
                        for part, kind, peers in ((self._fabric, "reflector", config.route_reflectors),
                                                  (self._upstream, "upstream", config.upstream)) if part is not None]
        self._created = time.time()
        self._lock = asyncio.Lock()
        self._started = False
        self.last_change: dict[str, Any] | None = None

    # ------------------------------------------------------------------ reading

    @property
    def tenants(self) -> Mapping[str, Tenant]:
        return self._tenants

    def tenant(self, name: str) -> Tenant:
        try:
            return self._tenants[name]
        except KeyError:
            raise NotFound("tenant", name) from None

    def tenant_id(self, name: str) -> int:
        self.tenant(name)
        return self._ids[name]

    @property
    def records(self) -> tuple[LookupRecord, ...]:
        """The tenant CAs (and their hosts' PAs) the return routes are installed for."""
        return tuple(r for name in sorted(self._records) for r in self._records[name])

    def nat_view(self) -> list[nat.TenantNat]:
        return [nat.TenantNat(t, self._ids[n]) for n, t in sorted(self._tenants.items())]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Replace the gateway's table with every configured tenant in one transaction (adopt, not flush:
        conntrack state, i.e. established flows and their NAT bindings, survives a restart)."""
        if self._bfd is not None:
            await self._bfd.start()
        async with self._lock:
            await self._restore()
            doc = nat.full_document(self.nat_view(), self.config.external.interfaces)
            await self._load("start", doc)
            if self._dp is not None:
                await self._dp.start()
                # every tenant's VRF side and tc filters, and the NVGRE devices' tc hooks: one netlink pass
                await self._dp.reconcile(self._tenants, self._ids, self._records)
            for name, tenant in self._tenants.items():
                if sitemodel.ipsec_sites(tenant.sites):
                    await self._put_sites(name, tenant, self._ids[name])
                elif self._site_peers is not None and sitemodel.bgp_sites(tenant.sites):
                    await self._site_peers.put(name, tenant)  # BGP over GRE sites only: nothing for charon
            if self._decap is not None:
                await self._decap.read()  # what is enforced now: changed by difference
                await self._update_decap()
            if self._upstream is not None:
                await self._upstream.start()
                await self._upstream.sync(self._public(), own=self.upstream_mode != WITHDRAWN)
            self._started = True
            if self._site_peers is not None:
                self._site_task = asyncio.get_running_loop().create_task(self._site_routes(), name="site-routes")
            self._sessions.start()
            if self._sync is not None:  # after the NAT table: its kernel settings need nf_conntrack loaded
                await self._sync.start(ids=lambda: self._ids)
        if self._fabric is not None:
            await self._fabric.start(self._tenants)  # outside the lock: learned records take it

    async def _restore(self) -> None:
        """The tenants and ids to serve: the configuration's tenants and the API's from the state directory,
        the ids kept (state, else the kernel's NAT table, else new). Nothing here refuses to start: an
        unusable state file or a saved tenant that no longer fits is logged and left for the operator."""
        saved = SavedState()
        if self._state is not None:
            loaded = self._state.load()
            self.state_problems = loaded.problems
            for problem in loaded.problems:
                log.error("state: %s", problem)
            if loaded.problems:
                log.error("state: %s", "using the previous copy" if loaded.state is not None
                          else "no usable copy: starting from the configuration and the kernel's ids")
                self._state.set_aside()
            saved = loaded.state or saved
        else:
            log.warning("no state_dir: tenants created through the API will not survive a restart")
        tenants = dict(self._tenants)
        claims = Claims.of(tenants)
        for t in saved.api_tenants:
            if t.name in tenants:
                if t != tenants[t.name]:
                    log.warning("tenant %s: the configuration file defines it; its version from the API "
                                "is replaced by the file's", t.name)
                continue
            try:
                self._reserved.check(t)
                claims.check(t)
            except ModelError as exc:
                log.error("tenant %s (created through the API) not served: %s", t.name, exc)
                self._suspended[t.name] = (t, saved.ids.get(t.name))
                continue
            claims.put(t)
            tenants[t.name] = t
        adopted = await self._adopted_ids()
        # a suspended tenant's id stays its own: avoided like the ids the kernel still has
        avoid = {**adopted, **{n: i for n, (_, i) in self._suspended.items() if i is not None}}
        ids, self._last_id = assign_ids(tenants, saved.ids, avoid, saved.last_id)
        changed = sorted(n for n in ids if n in adopted and adopted[n] != ids[n])
        if changed:
            log.warning("tenants %s: the kernel had other ids than the state directory; the state's are "
                        "applied", ", ".join(changed))
        self._tenants, self._ids, self._claims = MappingProxyType(tenants), MappingProxyType(ids), claims
        try:
            self._save(tenants, ids)
        except OSError as exc:  # reported; the next change tries again (and is refused if it still fails)
            log.error("state: could not save %s: %s", self.config.state_dir, exc)

    async def _adopted_ids(self) -> dict[str, int]:
        """What a previous run gave each tenant, from the NAT table it left (none: {})."""
        try:
            return nat.adopted_ids(await self._nft.list_json("map", nat.FAMILY, nat.TABLE, "m_zone"))
        except NftError:
            return {}

    def _save(self, tenants: Mapping[str, Tenant], ids: Mapping[str, int]) -> None:
        """Write the state directory (OSError when it cannot be). The API tenants are those the
        configuration file does not name, with the suspended ones kept as they were."""
        if self._state is None:
            return
        config = {t.name for t in self.config.tenants}
        api = [t for n, t in tenants.items() if n not in config]
        api += [t for n, (t, _) in self._suspended.items() if n not in tenants]
        all_ids = {**{n: i for n, (_, i) in self._suspended.items() if i is not None}, **ids}
        self._state.save(SavedState(tuple(api), all_ids, self._last_id))

    async def stop(self) -> None:
        # The tables, VRFs and routes stay: forwarding and NAT keep working while the daemon restarts (but for
        # the sites: their SAs end with charon).
        self._started = False
        if self._sync is not None:
            await self._sync.stop()
        if self._site_task is not None:
            self._site_task.cancel()
            self._site_task = None
        if self._site_peers is not None:
            await self._site_peers.stop()
        if self._charon is not None and self._charon.running:
            await self._charon.stop()
        await asyncio.to_thread(self.close)
        if self._fabric is not None:
            await self._fabric.stop()
        if self._upstream is not None:
            await self._upstream.stop()
        if self._bfd is not None:
            await self._bfd.stop()
        if self._dp is not None:
            self._dp.close()

    def bfd_status(self) -> list[BfdStatus]:
        """The BFD sessions of the reflectors' and the upstream's BGP sessions, sorted by peer."""
        return self._bfd.status() if self._bfd is not None else []

    @property
    def suspended(self) -> list[str]:
        """API tenants kept in the state but not served (they no longer fit: the start's log says why)."""
        return sorted(self._suspended)

    def close(self) -> None:
        """Stop the conntrack sampler's thread (stop() does it; for an owner that drops a gateway without
        stopping it), and conntrackd, which must not outlive the gateway. Blocks until the thread ends, at most
        a few seconds."""
        if self._sync is not None:
            self._sync.kill()
        if self._charon is not None:
            self._charon.kill()
        self._sessions.stop()

    @property
    def serving(self) -> bool:
        """Whether this gateway announces its tenants' default routes (gateway/role.py); always without
        reflectors (nothing to share the role with)."""
        return self._fabric is None or self._fabric.serving

    @property
    def upstream_mode(self) -> str:
        """How the public addresses are announced upstream: gateway/role.py ANNOUNCE, DEPREFERRED, WITHDRAWN."""
        return ANNOUNCE if self._fabric is None else self._fabric.upstream

    def role_status(self) -> RoleStatus:
        """Whether this gateway serves, why, since when (docs/gateway.md "Failover")."""
        f = self._fabric
        if f is None:
            return RoleStatus(True, "active", "no route reflectors: nothing to share the role with", self._created,
                              0, ANNOUNCE)
        return RoleStatus(f.serving, f.role.configured, f.role.reason, f.role_since, f.role_change_count,
                          f.upstream)

    def readiness(self) -> tuple[str, ...]:
        """Why the gateway is not ready (empty: ready): gateway/status.py readiness."""
        repairing = self._repair is not None and not self._repair.done()
        return status_readiness(self._started, None if self._fabric is None else self._fabric.role, repairing)

    def sessions(self) -> list[SessionStatus]:
        """The BGP sessions: the reflectors', then the upstream's."""
        return [s for clock in self._clocks for s in clock.sessions()]

    def session_samples(self) -> list[SessionSample]:
        """The same sessions for /metrics."""
        return [s for clock in self._clocks for s in clock.samples()]

    def _public(self) -> list[Tenant]:
        return list(self._tenants.values()) if self.upstream_mode != WITHDRAWN else []

    async def _role_changed(self, role: Role) -> None:
        """The role changed, or was judged for the first time (evpn.Fabric applies it): the replication told
        first when becoming active (its state in the kernel before the traffic comes), then the upstream;
        told last when standing by (at a start too: a restarted gateway asks the serving one for its state)."""
        was = self._was_serving
        flipped, self._was_serving = role.serving != was, role.serving
        if flipped and role.serving:
            await self._tell_sync(True)
        async with self._lock:
            if self._upstream is not None:
                await self._upstream.sync(self._public(), depreferred=self.upstream_mode == DEPREFERRED,
                                          own=self.upstream_mode != WITHDRAWN)
            if self._charon is not None:
                await self._charon.serve(role.serving)
            if self._site_peers is not None:  # the sites' sessions follow their SAs to the serving gateway
                await self._site_peers.serve(role.serving)
        if flipped and not role.serving:
            await self._tell_sync(False)
        if was is False and role.serving and self._dp is not None and self._started:
            # a standby's kernel may have lost objects while it waited (a link that went down took the tenants'
            # default routes leaked to the external side with it): read back and repaired beside the
            # announcements, not before them (a full read of the kernel takes a while)
            self._repair = asyncio.ensure_future(self._repair_dataplane())

    async def _repair_dataplane(self) -> None:
        assert self._dp is not None
        try:
            async with self._lock:
                await self._dp.repair(self._tenants, self._ids, self._records)
        except Exception:  # noqa: BLE001 - the next change reconciles again; logged
            log.exception("repairing the dataplane on becoming active failed")

    async def _tell_sync(self, active: bool) -> None:
        if self._sync is None:
            return
        try:
            await (self._sync.became_active() if active else self._sync.became_standby())
        except Exception:  # noqa: BLE001 - the role is not held back by the replication; logged
            log.exception("conntrack replication: telling it this gateway became %s failed",
                          "active" if active else "standby")

    def sync_status(self) -> SyncStatus | None:
        """The connection state replication's last sample (None: no `sync` configured)."""
        if self._sync is None:
            return None
        counts = self._sessions.counts if self._sessions.sampled_at is not None else None
        tenants = None if counts is None else sum(counts.get(i, 0) for i in self._ids.values())
        return self._sync.status(tenants)

    async def set_records(self, records: tuple[LookupRecord, ...]) -> None:
        """The tenant CAs and the PAs of their hosts (from the reflectors, like a host learns them): the
        return routes of every tenant. Only the tenants whose CAs changed are reconciled."""
        by_tenant: dict[str, list[LookupRecord]] = {}
        for r in records:
            by_tenant.setdefault(r.routing_domain, []).append(r)
        new = {name: tuple(rs) for name, rs in by_tenant.items()}
        async with self._lock:
            changed = {n for n in new.keys() | self._records.keys() if new.get(n) != self._records.get(n)}
            self._records = new
            if self._dp is not None and self._started and changed:
                await self._dp.records_changed(changed & self._tenants.keys(), self._tenants, self._ids,
                                               self._records)
            self._decap_learned = True
            if self._started:
                await self._update_decap()

    async def _update_decap(self) -> None:
        """The decapsulation table follows the tenants and their learned CAs (element changes only). A
        refusal is logged; the next change replaces the table (DecapTable forgets what it applied)."""
        if self._decap is None:
            return
        want = decap_filter(self._tenants, self._ids, self._records, not self._decap_learned, self._decap.applied,
                            self.config.external)
        if want == self._decap.applied:
            return
        try:
            await self._decap.apply(want)
        except NftError as exc:
            log.warning("decapsulation table: %s", exc)

    @property
    def refused_routes(self) -> dict[str, int]:
        """Learned routes the import policy refuses now, by reason (none without reflectors)."""
        return dict(self._fabric.screened.counts) if self._fabric is not None else {}

    async def decap_counters(self) -> dict[str, int]:
        """NVGRE packets judged before decapsulation, by drop reason (and vouched)."""
        return await self._decap.counters() if self._decap is not None else {}

    async def _load(self, what: str, doc: dict) -> None:
        began = time.monotonic()
        try:
            await self._nft.transaction(what, doc)
        except NftError as exc:
            raise KernelError(what, (exc.message.strip(),)) from None
        self.last_change = {"what": what, "rules": nat.rule_count(doc),
                            "seconds": round(time.monotonic() - began, 4)}

    # ------------------------------------------------------------------ changes

    async def reconfigure(self, change: Reconfiguration) -> None:
        """A reload (gateway/reload.py `plan`): every tenant it puts is checked first against the gateway's
        reserved space and the tenants that stay (ModelError naming the field, nothing applied); then the
        deletes, then the puts, one tenant at a time through `delete_tenant` and `put_tenant`. The new
        configuration is taken when all are applied: after a failure half-way (the kernel refused one
        tenant), the same reload again applies what is left."""
        if not self._started:
            raise NotStarted("the gateway is not running")
        async with self._lock:
            claims = Claims.of({n: t for n, t in self._tenants.items() if n not in change.delete})
            index = {t.name: i for i, t in enumerate(change.config.tenants)}
            for tenant in change.put:
                where = f"tenants[{index[tenant.name]}]"  # the field as the file spells it
                try:
                    self._reserved.check(tenant)
                    claims.check(tenant)
                except ModelError as exc:
                    raise exc.within(where) from None
                claims.put(tenant)
        for name in change.delete:
            if name in self._tenants or name in self._suspended:  # (the API may have deleted it already)
                await self.delete_tenant(name)
        for tenant in change.put:
            await self.put_tenant(tenant)
        self.config = change.config  # the file's tenants from now on: the state file keeps the others

    async def put_tenant(self, tenant: Tenant) -> bool:
        """Create or replace one tenant. True when it was created. The work follows this tenant: the
        others are neither rechecked, recomputed nor rewritten."""
        async with self._lock:
            self._reserved.check(tenant)  # ModelError naming the field: the gateway's own, public space
            sitebgp.check_asn(tenant.sites, self.config.asn)
            before_sites = self._tenants[tenant.name].sites if tenant.name in self._tenants else ()
            check_new_certificates(tenant.sites, before_sites, datetime.now(UTC))  # those given must be valid now
            self._claims.check(tenant)  # raises ConflictError naming the field, before anything is applied
            if not self._started:
                raise NotStarted("the gateway is not running")
            name = tenant.name
            before = self._tenants.get(name)
            if before == tenant and name not in self._suspended:
                return False
            if before is not None:
                tid, last = self._ids[name], self._last_id
            else:
                avoid = {**self._ids, **{n: i for n, (_, i) in self._suspended.items()
                                         if i is not None and n != name}}
                kept = self._suspended.get(name, (None, None))[1]
                ids_, last = assign_ids([name], {name: kept} if kept is not None else {}, avoid, self._last_id)
                tid = ids_[name]
            proposed = {**self._tenants, name: tenant}
            ids = {**self._ids, name: tid}
            await self._apply(name, tenant, before, tid, ids)
            suspended = self._suspended.pop(name, None)
            previous_last, self._last_id = self._last_id, last
            try:
                self._save(proposed, ids)
            except OSError as exc:
                self._last_id = previous_last
                if suspended is not None:
                    self._suspended[name] = suspended
                await self._put_back(name, before, tenant, tid, self._ids)
                raise StateSaveError(f"put tenant {name}", exc) from None
            self._tenants, self._ids = MappingProxyType(proposed), MappingProxyType(ids)
            self._claims.put(tenant)
            await self._update_decap()
            if self._upstream is not None:
                await self._upstream.update({name: tenant if self.upstream_mode != WITHDRAWN else None})  # after NAT
            if self._fabric is not None:
                await self._fabric.update({name: tenant}, self._tenants)
            return before is None

    async def _apply(self, name: str, new: Tenant | None, old: Tenant | None, tid: int, ids: Mapping[str, int]) -> None:
        """One tenant from `old` to `new` (None: absent) in the kernel: the VRF side, then its NAT in one
        transaction. A refusal puts back what was applied and raises KernelError. `ids` holds `tid`."""
        if self._dp is not None:
            try:
                await self._dp.put_tenant(name, new, ids, self._records)
            except PlumbingError as exc:  # the dataplane reverted its side
                raise KernelError(f"{'put' if new else 'delete'} tenant {name}", (str(exc),)) from None
        def pair(a: Tenant | None, b: Tenant | None) -> tuple[nat.TenantNat | None, nat.TenantNat | None]:
            return (None if a is None else nat.TenantNat(a, tid), None if b is None else nat.TenantNat(b, tid))

        change = pair(new, old)
        what = f"{'put' if new else 'delete'} tenant {name}"
        try:
            await self._load(what, nat.transaction({name: change}))
        except KernelError:
            await self._put_back_vrf(name, old, ids, "nft")
            raise
        if any(t is not None and sitemodel.ipsec_sites(t.sites) for t in (new, old)):
            try:
                await self._put_sites(name, new, tid)
            except KernelError:  # charon put back its side; the NAT and the VRF side go back too
                try:
                    await self._load(f"{what}: put back", nat.transaction({name: pair(old, new)}))
                except KernelError as exc:
                    log.error("tenant %s: putting back its NAT after charon refused failed: %s", name, exc)
                await self._put_back_vrf(name, old, ids, "charon")
                raise
        elif self._site_peers is not None and any(t is not None and sitemodel.bgp_sites(t.sites) for t in (new, old)):
            await self._site_peers.put(name, new)  # BGP over GRE sites only: nothing for charon

    async def _put_back_vrf(self, name: str, old: Tenant | None, ids: Mapping[str, int], who: str) -> None:
        if self._dp is not None:
            try:
                await self._dp.put_tenant(name, old, ids, self._records)
            except PlumbingError as exc:  # logged: the refusal is what the caller must hear of
                log.error("tenant %s: putting back the VRF side after %s refused failed: %s", name, who, exc)

    async def _put_sites(self, name: str, tenant: Tenant | None, tid: int) -> None:
        """One tenant's IPsec connections in charon (started with the first site). KernelError when refused."""
        assert self._charon is not None, "Reserved.check refuses sites without the VRF dataplane"
        if not self._charon.running:
            try:
                await self._charon.start()
            except CharonError as exc:
                raise KernelError(f"sites of tenant {name}", (str(exc),)) from None
        await self._charon.put(name, connections(name, tenant, tid, self.config.external))
        if self._site_peers is not None:
            await self._site_peers.put(name, tenant)

    def _site_learned_changed(self, name: str) -> None:
        """What a site of this tenant announces changed (gateway/sitepeers.py): routed again, coalesced."""
        self._site_dirty.add(name)
        self._site_wakeup.set()

    async def _site_routes(self) -> None:
        """The tenants whose sites' learned prefixes changed: their VRF partition (the routes to the tunnels)
        and their type-5 routes, one tenant at a time; the others are not touched."""
        while True:
            await self._site_wakeup.wait()
            await asyncio.sleep(COALESCE)
            self._site_wakeup.clear()
            names, self._site_dirty = self._site_dirty, set()
            for name in sorted(names):
                try:
                    async with self._lock:
                        tenant = self._tenants.get(name)
                        if tenant is None or self._dp is None:
                            continue
                        await self._dp.put_tenant(name, tenant, self._ids, self._records)
                        if self._fabric is not None:
                            await self._fabric.update({name: tenant}, self._tenants)
                except Exception:  # noqa: BLE001 - logged; tried again on the next change, which this asks for
                    log.exception("tenant %s: routing what its sites announce failed", name)
                    asyncio.get_running_loop().call_later(1.0, self._site_learned_changed, name)

    def site_verdicts(self, name: str) -> dict[str, sitebgp.Verdict]:
        """What the tenant's BGP sites announce, judged (accepted: routed in; refused: with why)."""
        learned = self._site_peers.learned(name) if self._site_peers is not None else {}
        return sitebgp.judge(self.tenant(name), learned)

    async def site_sas(self) -> dict[str, SiteSa]:
        """The sites' IKE SAs as charon lists them, by connection (`<tenant>.<site>`)."""
        return await self._charon.sas() if self._charon is not None else {}

    async def site_status(self, name: str) -> list[dict[str, Any]]:
        """One tenant's sites: what each is in the kernel (its tunnel device and if_id) and in charon (the IKE
        SA's state and SPIs, the child SAs' SPIs, bytes and install time; `sa` None: no SA)."""
        tenant, tid = self.tenant(name), self._ids[name]
        sas = await self.site_sas()
        verdicts = self.site_verdicts(name)
        out = []
        for site in tenant.sites:
            sa = sas.get(sitemodel.connection_name(name, site))
            out.append({"name": site.name, "kind": site.kind, "remote_address": str(site.remote_address),
                        "if_id": sitemodel.if_id(tid, site), "device": sitemodel.device_name(tid, site),
                        "prefixes": [str(p) for p in site.prefixes], "sa": None if sa is None else sa.as_dict(),
                        "bgp": self._site_bgp_status(name, site.name, verdicts),
                        **({"certificates": site.certs.status()} if site.certs is not None else {})})
        return out

    def site_bgp_samples(self) -> list[sitestatus.SiteBgpSample]:
        """Every BGP site's session and what it announces, judged, for /metrics (no session: standing by)."""
        peers = self._site_peers
        return sitestatus.bgp_samples(self._tenants.values(), peers.learned if peers is not None else lambda _: {},
                                      peers.status if peers is not None else lambda _, __: None)

    def _site_bgp_status(self, name: str, site: str, verdicts: Mapping[str, sitebgp.Verdict]) -> dict[str, Any] | None:
        session = self._site_peers.status(name, site) if self._site_peers is not None else None
        if session is None:
            return None
        verdict = verdicts.get(site, sitebgp.Verdict())
        return {**session, "learned": len(verdict.accepted), **verdict.as_dict()}

    async def _put_back(self, name: str, old: Tenant | None, new: Tenant | None, tid: int,
                        ids: Mapping[str, int]) -> None:
        """Undo an applied change (its state could not be saved): logged when the kernel refuses even that."""
        try:
            await self._apply(name, old, new, tid, {**ids, name: tid})
        except KernelError as exc:
            log.error("tenant %s: putting the kernel back after the state was not saved failed: %s", name, exc)

    async def delete_tenant(self, name: str) -> None:
        async with self._lock:
            if name in self._suspended and name not in self._tenants:
                suspended = self._suspended.pop(name)
                try:
                    self._save(self._tenants, self._ids)
                except OSError as exc:
                    self._suspended[name] = suspended
                    raise StateSaveError(f"delete tenant {name}", exc) from None
                return
            tenant = self.tenant(name)
            if not self._started:
                raise NotStarted("the gateway is not running")
            tid = self._ids[name]
            await self._apply(name, None, tenant, tid, self._ids)
            remaining = {n: t for n, t in self._tenants.items() if n != name}
            ids = {n: i for n, i in self._ids.items() if n != name}
            try:
                self._save(remaining, ids)
            except OSError as exc:
                await self._put_back(name, tenant, None, tid, self._ids)
                raise StateSaveError(f"delete tenant {name}", exc) from None
            self._tenants, self._ids = MappingProxyType(remaining), MappingProxyType(ids)
            self._claims.remove(name)
            await self._update_decap()
            if self._upstream is not None:
                await self._upstream.update({name: None})
            if self._fabric is not None:
                await self._fabric.update({name: None}, self._tenants)

    # ------------------------------------------------------------------ observing

    async def counters(self) -> dict[str, nat.TenantCounters]:
        return nat.parse_counters(await self._nft.list_json("counters", "table", nat.FAMILY, nat.TABLE))

    async def status(self) -> list[TenantStatus]:
        counters = await self.counters()
        sessions = self._sessions.counts  # the sampler's last count: no table walk per call
        out = []
        for name, t in sorted(self._tenants.items()):
            tid = self._ids[name]
            out.append(TenantStatus(name, tid, t.vsids, tuple(str(s.address) for s in t.snat),
                                    len(t.floating_ips), counters.get(name, nat.TenantCounters()),
                                    sessions.get(tid, 0)))
        return out

