"""eBGP to the upstream routers: the tenants' public addresses (SNAT addresses, floating IPs, public IPv6
prefixes) announced as IPv4/IPv6 unicast routes with the gateway's external address as next hop.

And the gateway's own address that follows the serving role, the GRE sites' tunnel end (external.sites_address4/6),
announced, depreferred and withdrawn with the role exactly as the tenants' addresses are.

The upstream router therefore routes each public address to the gateway that announces it, and to no other:
addresses are not configured on the external interface (no ARP/ND for them), and a gateway that stops
announcing (tenant deleted, daemon stopped, session lost) stops attracting the traffic. The session is the
project's own BGP speaker (bgp/client.py), as for the reflectors, with the unicast families only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from nvfabric.bgp.client import Client
from nvfabric.bgp.config import GracefulRestartConfig, SpeakerConfig
from nvfabric.bgp.routes import AS_SEQUENCE, AsSegment, Family, Path, PathAttributes, UnicastKey, UnicastRoute
from nvfabric.bgp.announced import Announced
from nvfabric.gateway.config import External, GatewayConfig
from nvfabric.gateway.reserved import within
from nvfabric.gateway.role import PREPEND
from nvfabric.gateway.tenants import Tenant
from nvfabric.vnet.model import Network

FAMILIES = (Family.IPV4_UNICAST, Family.IPV6_UNICAST)
OWN = " gateway"  # the announced group of the gateway's own addresses: no tenant's name (a space is never in one)


def public_routes(tenants: Iterable[Tenant], next_hop4: object, next_hop6: object,
                  allowed: Sequence[Network] = ()) -> dict[UnicastKey, UnicastRoute]:
    """Pure: what the gateway announces upstream for these tenants (families without a next hop are left out).
    Never a default route, and with `allowed` (the gateway's public_prefixes) nothing outside it: the tenant
    boundary (gateway/reserved.py) refuses such values already; this keeps the wire right whatever let one in."""
    out: dict[UnicastKey, UnicastRoute] = {}
    for t in tenants:
        prefixes = [ipaddress.ip_network(a) for a in t.public_addresses] + list(t.public_prefixes)
        for p in prefixes:
            nh = next_hop4 if p.version == 4 else next_hop6
            if p.prefixlen == 0 or (allowed and not within(p, allowed)):
                continue
            if nh is not None:
                route = UnicastRoute(prefix=p, next_hop=nh)
                out[route.key] = route
    return out


def own_routes(external: External) -> dict[UnicastKey, UnicastRoute]:
    """Pure: the gateway's own addresses that follow the serving role upstream: the GRE sites' tunnel end
    (external.sites_address4/6, a host route each with the family's external address as next hop; the
    configuration refused one without it)."""
    out: dict[UnicastKey, UnicastRoute] = {}
    for address in external.sites_addresses:
        nh = external.address4 if address.version == 4 else external.address6
        if nh is not None:
            route = UnicastRoute(prefix=ipaddress.ip_network(address), next_hop=nh)
            out[route.key] = route
    return out


class Upstream:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        ext = config.external
        self.next_hops = (ext.address4, ext.address6)
        neighbors = tuple(u.neighbor(description=f"upstream {u.address}") for u in config.upstream)
        # No graceful restart towards the upstream: after a gateway restart the upstream should send the
        # traffic elsewhere (the other gateway) rather than keep stale routes to a gateway without state.
        # The gateway only announces upstream: what the upstream sends (possibly a full Internet table) is
        # counted and dropped, never stored (accept_routes false).
        self.client = Client(SpeakerConfig(asn=config.asn, router_id=config.router_id, families=FAMILIES,
                                           neighbors=neighbors, hold_time=config.hold_time,
                                           graceful_restart=GracefulRestartConfig(enabled=False),
                                           accept_routes=False))
        self._announced = Announced()
        # an isolated gateway's announcement (gateway/role.py): our AS prepended, so that the upstream prefers
        # a gateway that took over and uses this one only while nobody else announces the addresses
        self.depreferred = False
        self._worse = PathAttributes(as_path=(AsSegment(AS_SEQUENCE, (config.asn,) * (1 + PREPEND)),))

    async def start(self) -> None:
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()

    async def sync(self, tenants: Iterable[Tenant], depreferred: bool = False, own: bool = False) -> None:
        """Announce exactly these tenants' public addresses (start, and every change of the role: taking
        over, standing by, isolated), depreferred or not: every tenant is recomputed; and with `own` the
        gateway's own moving addresses (`own_routes`: the role's, as the tenants' are), else withdraw them."""
        self.depreferred = depreferred
        wanted: dict[str, Tenant | None] = {n: None for n in self._announced.groups if n != OWN}
        wanted.update((t.name, t) for t in tenants)
        await self.update(wanted, own)

    async def update(self, changes: Mapping[str, Tenant | None], own: bool | None = None) -> None:
        """Only these tenants (None: withdraw its addresses): the work follows the change, not the number of
        tenants. `own`: announce (True) or withdraw (False) the gateway's own addresses too (None: leave them)."""
        allowed = self.config.public_prefixes
        wanted = {n: public_routes([t], *self.next_hops, allowed) if t is not None else {} for n, t in changes.items()}
        if own is not None:
            wanted[OWN] = own_routes(self.config.external) if own else {}
        if self.depreferred:
            wanted = {n: {k: Path(r, self._worse) for k, r in routes.items()} for n, routes in wanted.items()}
        await self._announced.update(self.client, wanted)


    @property
    def announced(self) -> dict[UnicastKey, UnicastRoute]:
        return self._announced.routes
