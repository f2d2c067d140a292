"""eBGP to the upstream routers: the tenants' public addresses (SNAT addresses, floating IPs, public IPv6
prefixes) announced as IPv4/IPv6 unicast routes with the gateway's external address as next hop.

The upstream router therefore routes each public address to the gateway that announces it, and to no other:
addresses are not configured on the external interface (no ARP/ND for them), and a gateway that stops
announcing (tenant deleted, daemon stopped, session lost) stops attracting the traffic. The session is the
project's own BGP speaker (bgp/client.py), as for the reflectors, with the unicast families only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from bgp.client import Client
from bgp.config import GracefulRestartConfig, Neighbour, SpeakerConfig
from bgp.routes import Family, UnicastKey, UnicastRoute
from gateway.config import GatewayConfig
from gateway.tenants import Tenant

FAMILIES = (Family.IPV4_UNICAST, Family.IPV6_UNICAST)


def public_routes(tenants: Iterable[Tenant], next_hop4: object, next_hop6: object) -> dict[UnicastKey, UnicastRoute]:
    """Pure: what the gateway announces upstream for these tenants (families without a next hop are left out)."""
    out: dict[UnicastKey, UnicastRoute] = {}
    for t in tenants:
        prefixes = [ipaddress.ip_network(a) for a in t.public_addresses] + list(t.public_prefixes)
        for p in prefixes:
            nh = next_hop4 if p.version == 4 else next_hop6
            if nh is not None:
                route = UnicastRoute(prefix=p, next_hop=nh)
                out[route.key] = route
    return out


class Upstream:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        ext = config.external
        self.next_hops = (ext.address4, ext.address6)
        neighbours = tuple(Neighbour(str(u.address), u.asn, md5_password=u.md5_password,
                                     description=f"upstream {u.address}") for u in config.upstream)
        # No graceful restart towards the upstream: after a gateway restart the upstream should send the
        # traffic elsewhere (the other gateway) rather than keep stale routes to a gateway without state.
        self.client = Client(SpeakerConfig(asn=config.asn, router_id=config.router_id, families=FAMILIES,
                                           neighbours=neighbours,
                                           graceful_restart=GracefulRestartConfig(enabled=False)))
        self.announced: dict[UnicastKey, UnicastRoute] = {}

    async def start(self) -> None:
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()

    async def sync(self, tenants: Iterable[Tenant]) -> None:
        want = public_routes(tenants, *self.next_hops)
        gone = [k for k in self.announced if k not in want]
        new = [r for k, r in want.items() if self.announced.get(k) != r]
        if gone:
            await self.client.withdraw(gone)
        if new:
            await self.client.announce(new)
        self.announced = want
