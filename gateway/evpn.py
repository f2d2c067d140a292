"""The gateway towards the fabric: the same EVPN sessions to the route reflectors as a host.

- Announces, for every tenant, an EVPN type-5 default route (0.0.0.0/0, and ::/0 when the tenant has IPv6
  subnets and a way out for them) with the gateway's PA as next hop, the fabric's router MAC and the VSID of
  the tenant's first subnet (RFC 9136 interface-less model): hosts install it as the tenant's default
  route towards the gateway (vnet/learn.py remote_prefixes).
- Learns the tenants' CAs from the type-2 routes exactly as a host does (vnet/learn.py lookup_records,
  with a catalog of the tenants' routing domains and no ports) and hands them to the gateway, whose
  dataplane installs one encap route per CA: the return path of NAT and floating-IP traffic.
- A standby gateway (config `standby`) announces nothing while another gateway's default route is in the
  fabric, and takes over (announces, and tells the gateway to announce upstream) when there is none. It
  decides only after End-of-RIB from a reflector (or STANDBY_WAIT), so it does not announce at start-up
  just because it has not heard of the active gateway yet; and not for STANDBY_WAIT after it had no
  reflector session at all (restarted reflectors answer End-of-RIB with an empty table), during which no
  learned CA is removed either. When it may judge is the hold state machine the agent uses too (vnet/hold.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from nvfabric.bgp.client import Client
from nvfabric.bgp.speaker import PeerStatus
from nvfabric.bgp.config import GracefulRestartConfig, SpeakerConfig
from nvfabric.bgp.routes import Family, PrefixKey, PrefixRoute
from nvfabric.bgp.announced import Announced
from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.tenants import Tenant
from nvfabric.vnet import learn
from nvfabric.vnet.announce import route_distinguisher
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.kernel.netns import RtnlSocket
from nvfabric.vnet.kernel.observe import address_prefixes
from nvfabric.vnet.hold import Hold, Policy
from nvfabric.vnet.model import LookupRecord
from nvfabric.vnet.policy import Screened, pa_prefixes, screen, within

log = logging.getLogger(__name__)

COALESCE = 0.02  # seconds: a burst of learned routes becomes one reconcile
STANDBY_WAIT = 15.0  # seconds a standby waits for End-of-RIB before judging that no gateway is active
# End-of-RIB from one reflector is enough to judge; with no reflector session the last judgement stands
HOLD = Policy(timeout=STANDBY_WAIT, every_session=False, headless_holds=False)
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


def other_gateway_active(routes: Iterable[object], our_pas: Iterable[object]) -> bool:
    """Pure: is a default route of another gateway in the fabric?"""
    ours = set(our_pas)
    return any(isinstance(r, PrefixRoute) and r.prefix.prefixlen == 0 and r.next_hop not in ours for r in routes)


def keep_records(previous: Iterable[LookupRecord], learned: Iterable[LookupRecord]) -> tuple[LookupRecord, ...]:
    """Pure: the learned records plus the previous ones they do not replace (same tenant and CA): while the
    reflectors refill after a restart, a CA missing from their table is not yet a CA gone."""
    out = {(r.routing_domain, r.ca): r for r in previous}
    out.update({(r.routing_domain, r.ca): r for r in learned})
    return tuple(sorted(out.values(), key=lambda r: (r.routing_domain, r.ca.version, r.ca)))


class Fabric:
    def __init__(self, config: GatewayConfig, on_records: Callable[[tuple[LookupRecord, ...]], Awaitable[None]],
                 on_serving: Callable[[bool], Awaitable[None]] | None = None):
        self.config = config
        self.on_records = on_records
        self.on_serving = on_serving
        self.serving = not config.standby
        # a standby judges after End-of-RIB or STANDBY_WAIT (`hold.synced`), and keeps learned CAs while
        # recovering from a time without reflectors (`hold.recovering`)
        self.hold = Hold.start(HOLD, [r.address for r in config.route_reflectors], time.monotonic())
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
        self.hold = Hold.start(HOLD, self.hold.sessions, time.monotonic())
        await self.client.start()
        await self.sync(tenants)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._consume(), name="gateway-bgp"),
                       loop.create_task(self._learner(), name="gateway-learn")]
        self._arm()

    @property
    def judged(self) -> bool:
        """A standby may judge whether another gateway is active (an active gateway always serves)."""
        return not self.config.standby or self.hold.synced

    def _arm(self) -> None:
        """The hold's next deadline: then a standby judges and the kept CAs are learned again."""
        at = self.hold.next_timer()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if at is None else asyncio.get_running_loop().call_later(
            max(0.0, at - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self.hold = self.hold.on_timer(time.monotonic())
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
            n: default_routes([t], self.config) if t is not None and self.serving else {} for n, t in changes.items()})
        self._dirty.set()

    @property
    def announced(self) -> dict[PrefixKey, PrefixRoute]:
        return self._announced.routes

    def records(self) -> tuple[LookupRecord, ...]:
        catalog = Catalog.build({n: t.routing_domain for n, t in self._tenants.items()}, {})
        # the hosts' import policy (vnet/policy.py): a rogue speaker's routes never become return routes
        # or vouched senders of the decapsulation table
        self.screened = screen(catalog, self.client.routes().values(), self.config.provider_addresses,
                               self.provider_prefixes)
        return tuple(learn.lookup_records(catalog, self.screened.accepted, self.config.provider_addresses))

    def _fabric_routes(self) -> list[object]:
        """The learned routes whose next hop is in the provider's space: only those may make a standby
        stand aside (a speaker outside it must not switch the gateway off)."""
        routes = self.client.routes().values()
        if self.provider_prefixes is None:
            return list(routes)
        return [r for r in routes
                if getattr(r, "next_hop", None) is not None and within(r.next_hop, self.provider_prefixes)]

    async def _consume(self) -> None:
        async for event in self.client.events():
            if isinstance(event, PeerStatus):
                self.on_status(event, time.monotonic())
            self._dirty.set()  # the client's delivered table is what is read

    def on_status(self, event: PeerStatus, now: float) -> None:
        """A reflector session's news. After a time with no reflector session at all (both restarted, or our
        links), a reflector's table may be empty or partial: it answers End-of-RIB at once and fills up as
        the hosts and the other gateway reconnect. For STANDBY_WAIT from the first session back, a standby
        does not judge (it would take over from a live active gateway) and no learned CA is removed."""
        before = self.hold.next_timer()
        self.hold = self.hold.on_session(event.peer, event.state, now)
        if self.hold.next_timer() != before:
            self._arm()

    def recovering(self, now: float) -> bool:
        return self.hold.recovering(now)

    async def _standby(self) -> None:
        if not self.config.standby or not self.hold.synced:
            return
        serve = not other_gateway_active(self._fabric_routes(), self.config.provider_addresses)
        if serve != self.serving:
            log.warning("standby gateway %s: %s", self.config.router_id,
                        "no active gateway in the fabric: taking over" if serve else "an active gateway is back")
            self.serving = serve
            if serve:
                self.takeovers.append(time.time())
            await self.sync(self._tenants)
            if self.on_serving is not None:
                await self.on_serving(serve)

    async def _learner(self) -> None:
        last: tuple[LookupRecord, ...] | None = None
        while True:
            await self._dirty.wait()
            await asyncio.sleep(COALESCE)
            self._dirty.clear()
            try:
                await self._standby()
            except Exception:  # noqa: BLE001 - logged; judged again on the next change
                log.exception("standby decision failed")
            records = self.records()
            if last is not None and self.recovering(time.monotonic()):
                records = keep_records(last, records)
            if records != last:
                try:
                    await self.on_records(records)
                    last = records
                except Exception:  # noqa: BLE001 - logged and retried on the next change
                    log.exception("installing %d learned records failed", len(records))
