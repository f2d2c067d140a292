"""The gateway towards the fabric: the same EVPN sessions to the route reflectors as a host.

- Announces, for every tenant, an EVPN type-5 default route (0.0.0.0/0, and ::/0 when the tenant has IPv6
  subnets and a way out for them) with the gateway's PA as next hop, the fabric's router MAC and the VSID of
  the tenant's first subnet (RFC 9136 interface-less model): hosts install it as the tenant's default
  route towards the gateway (vnet/learn.py remote_prefixes).
- Learns the tenants' CAs from the type-2 routes exactly as a host does (vnet/learn.py lookup_records,
  with a catalog of the tenants' routing domains and no ports) and hands them to the gateway, whose
  dataplane installs one encap route per CA: the return path of NAT and floating-IP traffic.
- Which gateway serves (announces the default routes here, and the public addresses upstream) is
  gateway/role.py's pure machine: this module feeds it the reflector sessions' news, the other gateways
  whose default route is in the fabric and the time, and applies its answer (`on_role` tells the gateway,
  for the upstream). Learned CAs are not removed while the fabric's table is not complete (start, no
  reflector session, back from none: vnet/hold.py): a CA missing then is not yet a CA gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from nvfabric.bgp.client import Client
from nvfabric.bgp.speaker import PeerStatus
from nvfabric.bgp.config import GracefulRestartConfig, SpeakerConfig
from nvfabric.bgp.routes import Family, PrefixKey, PrefixRoute
from nvfabric.bgp.announced import Announced
from nvfabric.gateway import sitebgp
from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.role import WITHDRAWN, Role
from nvfabric.gateway.tenants import Tenant
from nvfabric.vnet import learn
from nvfabric.vnet.announce import route_distinguisher
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.kernel.netns import RtnlSocket
from nvfabric.vnet.kernel.observe import address_prefixes
from nvfabric.vnet.hold import Hold
from nvfabric.vnet.model import LookupRecord
from nvfabric.vnet.policy import Screened, pa_prefixes, screen

log = logging.getLogger(__name__)

COALESCE = 0.02  # seconds: a burst of learned routes becomes one reconcile (and one role judgement)
ROLE_HISTORY = 32  # the last role changes kept for the status
DEFAULTS = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}


def default_routes(tenants: Iterable[Tenant], config: GatewayConfig) -> dict[PrefixKey, PrefixRoute]:
    """Pure: the type-5 default routes the gateway announces into its tenants."""
    pa = config.provider_addresses[0]
    out: dict[PrefixKey, PrefixRoute] = {}
    for t in tenants:
        if not t.vsids:
            continue
        vsid = t.vsids[0]
        families = {p.version for p in t.prefixes}
        for family in sorted(families):
            way_out = (t.snat_for(family) is not None or any(f.public.version == family for f in t.floating_ips)
                       or (family == 6 and bool(t.public_prefixes)))
            if not way_out:
                continue
            route = PrefixRoute(rd=route_distinguisher(config.router_id, vsid), prefix=DEFAULTS[family], vsid=vsid,
                                next_hop=pa, route_targets=t.routing_domain.route_targets,
                                router_mac=config.router_mac)
            out[route.key] = route
    return out


def other_gateways(routes: Iterable[object], our_pas: Iterable[object]) -> frozenset[object]:
    """Pure: the PAs of the other gateways whose default route is in the fabric (the role's input)."""
    ours = set(our_pas)
    return frozenset(r.next_hop for r in routes
                     if isinstance(r, PrefixRoute) and r.prefix.prefixlen == 0 and r.next_hop not in ours)


@dataclass(frozen=True)
class RoleChange:
    at: float  # wall clock (time.time())
    serving: bool
    reason: str


def keep_records(previous: Iterable[LookupRecord], learned: Iterable[LookupRecord]) -> tuple[LookupRecord, ...]:
    """Pure: the learned records plus the previous ones they do not replace (same tenant and CA): while the
    reflectors refill after a restart, a CA missing from their table is not yet a CA gone."""
    out = {(r.routing_domain, r.ca): r for r in previous}
    out.update({(r.routing_domain, r.ca): r for r in learned})
    return tuple(sorted(out.values(), key=lambda r: (r.routing_domain, r.ca.version, r.ca)))


class Fabric:
    def __init__(self, config: GatewayConfig, on_records: Callable[[tuple[LookupRecord, ...]], Awaitable[None]],
                 on_role: Callable[[Role], Awaitable[None]] | None = None):
        self.config = config
        self.on_records = on_records
        self.on_role = on_role
        reflectors = [r.address for r in config.route_reflectors]
        self.role = Role.start(config.standby, config.provider_addresses[0], reflectors, time.monotonic())
        # what is applied: our default routes announced here; the public addresses' mode upstream (on_role)
        self.serving = False
        self.upstream = WITHDRAWN
        self.role_since = time.time()  # wall clock of the last change of `serving`
        self.takeovers: list[float] = []  # wall-clock times (time.time()) at which this gateway started serving
        self.role_changes: deque[RoleChange] = deque(maxlen=ROLE_HISTORY)  # the last ones
        self.role_change_count = 0
        self._told_judged = False  # on_role has heard the first judgement (standing by tells nothing else)
        self._timer: asyncio.TimerHandle | None = None
        self.takeovers: list[float] = []  # wall-clock times (time.time()) at which this standby started serving
        self.client = Client(SpeakerConfig(
            asn=config.asn, router_id=config.router_id, families=(Family.L2VPN_EVPN,),
            neighbors=tuple(r.neighbor() for r in config.route_reflectors),
            # No graceful restart towards the reflectors: a gateway that goes away must be replaced by the standby
            # at once, not kept as a stale next hop for the restart time (seen in the VM: GoBGP kept the dead
            # gateway's default routes for its 120 s restart time, so the standby never took over)
            hold_time=config.hold_time, graceful_restart=GracefulRestartConfig(enabled=False)))
        self._announced = Announced()
        # what each tenant's sites announce over BGP now (tenant -> site -> prefixes: gateway/sitepeers.py)
        self.site_learned: Callable[[str], Mapping[str, Iterable[object]]] = lambda name: {}
        self._tenants: Mapping[str, Tenant] = {}
        self.provider_prefixes = config.provider_prefixes  # None until start reads the PAs' interfaces
        self.screened = Screened()  # the import policy's last verdict (refused routes by reason)
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, tenants: Mapping[str, Tenant]) -> None:
        self._tenants = tenants
        if self.provider_prefixes is None:
            with RtnlSocket(self.config.netns) as sock:
                self.provider_prefixes = pa_prefixes(self.config.provider_addresses, await address_prefixes(sock)) \
                    or None
            if self.provider_prefixes is None:
                log.warning("provider_prefixes: not configured and no provider address is on an interface: "
                            "learned next hops are not checked")
        self.role = Role.start(self.config.standby, self.role.pa, list(self.role.hold.sessions), time.monotonic())
        await self.client.start()
        await self.sync(tenants)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._consume(), name="gateway-bgp"),
                       loop.create_task(self._learner(), name="gateway-learn")]
        self._arm()

    @property
    def hold(self) -> Hold:
        """The reflector sessions' End-of-RIB hold (in the role): when learned CAs may be removed."""
        return self.role.hold

    def _arm(self) -> None:
        """The role's next deadline (End-of-RIB waited for, a start-up grace, an isolation's end)."""
        at = self.role.next_timer()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if at is None else asyncio.get_running_loop().call_later(
            max(0.0, at - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self.role = self.role.on_timer(time.monotonic())
        self._arm()
        self._dirty.set()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.client.stop()

    async def sync(self, tenants: Mapping[str, Tenant]) -> None:
        """Announce/withdraw the default routes for this whole set of tenants (start, standby decisions)."""
        await self.update({**{n: None for n in self._announced.groups if n not in tenants}, **tenants}, tenants)

    async def update(self, changes: Mapping[str, Tenant | None], tenants: Mapping[str, Tenant]) -> None:
        """Only the changed tenants' default routes (None: withdrawn): the work follows the change. `tenants`
        is the whole new set, kept for relearning the CAs."""
        self._tenants = tenants
        await self._announced.update(self.client, {
            n: {**default_routes([t], self.config), **self.site_routes(t)} if t is not None and self.serving else {}
            for n, t in changes.items()})
        self._dirty.set()

    def site_routes(self, tenant: Tenant) -> dict[PrefixKey, PrefixRoute]:
        """The tenant's sites' prefixes (static, and learned over BGP as judged) as type-5 routes to us."""
        if not tenant.sites:
            return {}
        verdicts = sitebgp.judge(tenant, self.site_learned(tenant.name))  # type: ignore[arg-type]
        return sitebgp.prefix_routes(tenant, verdicts, self.config.router_id, self.config.provider_addresses[0],
                                     self.config.router_mac)

    @property
    def announced(self) -> dict[PrefixKey, PrefixRoute]:
        return self._announced.routes

    def _catalog(self) -> Catalog:
        return Catalog.build({n: t.routing_domain for n, t in self._tenants.items()}, {})

    def records(self) -> tuple[LookupRecord, ...]:
        catalog = self._catalog()
        # the hosts' import policy (vnet/policy.py): a rogue speaker's routes never become return routes
        # or vouched senders of the decapsulation table
        self.screened = screen(catalog, self.client.routes().values(), self.config.provider_addresses,
                               self.provider_prefixes)
        return tuple(learn.lookup_records(catalog, self.screened.accepted, self.config.provider_addresses))

    def _fabric_routes(self) -> list[object]:
        """The learned routes the hosts' import policy accepts for one of our tenants (next hop in the
        provider's space, VSID and route target of one tenant): only those may make a standby stand aside.
        A speaker outside the provider's space, or a default route of a VSID no tenant of ours has, must not
        switch the gateway off (the hosts would not install such a route either)."""
        return list(screen(self._catalog(), self.client.routes().values(), self.config.provider_addresses,
                           self.provider_prefixes).accepted)

    async def _consume(self) -> None:
        async for event in self.client.events():
            if isinstance(event, PeerStatus):
                self.on_status(event, time.monotonic())
            self._dirty.set()  # the client's delivered table is what is read

    def others(self) -> frozenset[object]:
        return other_gateways(self._fabric_routes(), self.config.provider_addresses)

    def on_status(self, event: PeerStatus, now: float) -> None:
        """A reflector session's news, judged with the table as delivered up to it (an End-of-RIB comes
        after its routes: the role must not judge the table without them)."""
        self.role = self.role.on_routes(self.others(), now).on_session(event.peer, event.state, now)
        self._arm()

    def recovering(self, now: float) -> bool:
        return self.hold.recovering(now)

    async def _apply_role(self) -> None:
        """Make what is announced follow the role. Becoming active, the gateway goes first (conntrack state
        committed, public addresses upstream) and the default routes, which bring the hosts' traffic, after;
        standing by, the default routes go first."""
        role = self.role
        first = role.ever_judged and not self._told_judged  # e.g. a restart that finds another gateway serving
        if (role.serving, role.upstream) == (self.serving, self.upstream) and not first:
            return
        log.warning("gateway %s: %s", self.config.router_id, role.reason)
        if not role.serving and self.serving:
            self._flip(role)
            await self.sync(self._tenants)
        previous, self.upstream = self.upstream, role.upstream
        if self.on_role is not None:
            try:
                await self.on_role(role)
            except Exception:
                self.upstream = previous  # not applied: the next pass tries again
                raise
        self._told_judged = role.ever_judged
        if role.serving and not self.serving:
            self._flip(role)
            await self.sync(self._tenants)

    def _flip(self, role: Role) -> None:
        self.serving = role.serving
        self.role_since = time.time()
        self.role_change_count += 1
        self.role_changes.append(RoleChange(self.role_since, role.serving, role.reason))
        if role.serving:
            self.takeovers.append(self.role_since)

    async def _learner(self) -> None:
        last: tuple[LookupRecord, ...] | None = None
        while True:
            await self._dirty.wait()
            await asyncio.sleep(COALESCE)
            self._dirty.clear()
            self.role = self.role.on_routes(self.others(), time.monotonic())
            self._arm()
            try:
                await self._apply_role()
            except Exception:  # noqa: BLE001 - logged; applied again on the next pass, which this asks for
                log.exception("applying the role failed")
                asyncio.get_running_loop().call_later(1.0, self._dirty.set)
            records = self.records()
            if last is not None and self.hold.holding:
                records = keep_records(last, records)
            if records != last:
                try:
                    await self.on_records(records)
                    last = records
                except Exception:  # noqa: BLE001 - logged and retried on the next change
                    log.exception("installing %d learned records failed", len(records))
