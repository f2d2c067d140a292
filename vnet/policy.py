"""Pure: which routes learned from the reflectors a host (or the gateway) may import at all: the import policy.

A reflector passes on what any speaker announces; a tenant can trust what is installed only if a route is
bound to the tenant on both of its identities and comes from the fabric:

- A route concerns us when its VSID is one of our virtual subnets or one of its route targets is one of our
  routing domains'. Routes that concern us on neither count are other tenants' business: ignored, not
  counted.
- `next_hop`: the next hop (the sender's PA) must lie inside `provider_prefixes` (None: not checked). A next
  hop outside them is a speaker that is not a host or gateway of the fabric; its routes are never installed
  and its address never joins the decapsulation table's provider addresses or vouched senders.
- `route_target`: the VSID and a route target must name the same routing domain. A type-2 route with the
  VSID of blue and only red's route target (or none of ours), or a type-5 route with red's route target and
  blue's VSID (or a VSID we do not serve: traffic sent with it would land in whichever tenant has it at the
  receiver), is refused.
- `reserved_address`: a type-2 route for a subnet's gateway, network or broadcast address: those are
  answered by every host itself, never a VM.
- `outside_subnet`: a type-2 route whose IP is not in the prefix of its VSID's subnet (no route to it could
  be right). A MAC-only route (no IP) passes (MAC mobility follows it).

Our own routes (next hop = one of our PAs) are neither imported nor counted. The refused ones are counted by
reason (metrics, status) with a few examples, so an operator sees a rogue speaker without reading BGP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from nvfabric.bgp.routes import MacIpRoute, PrefixRoute, Route
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.model import Address, Network

REASONS = ("next_hop", "route_target", "reserved_address", "outside_subnet")
EXAMPLES = 5  # refused routes kept per reason for status


@dataclass(frozen=True)
class Refused:
    reason: str
    route: str  # the route as an operator reads it: type, VSID, address or prefix, next hop, route targets
    domain: str | None = None  # the routing domain it claimed (by VSID, else by route target)


@dataclass(frozen=True)
class Screened:
    accepted: tuple[Route, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)  # reason -> refused routes now
    examples: tuple[Refused, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"refused": dict(self.counts),
                "examples": [{"reason": r.reason, "route": r.route, "domain": r.domain} for r in self.examples]}


def describe(route: Route) -> str:
    if isinstance(route, MacIpRoute):
        what = f"type-2 vsid {route.vsid} {route.mac}" + (f" {route.ip}" if route.ip is not None else "")
    elif isinstance(route, PrefixRoute):
        what = f"type-5 vsid {route.vsid} {route.prefix}"
    else:
        what = type(route).__name__
    targets = ",".join(getattr(route, "route_targets", ()))
    return f"{what} via {getattr(route, 'next_hop', None)} rt [{targets}]"


def within(address: Address, prefixes: Collection[Network]) -> bool:
    return any(address.version == p.version and address in p for p in prefixes)


def pa_prefixes(provider_addresses: Iterable[Address], interface_addresses: dict[str, int]) -> tuple[Network, ...]:
    """The default `provider_prefixes`: the prefix of each provider address as configured on its interface
    (interface address text -> prefix length, vnet.kernel.observe.address_prefixes). A PA on no interface
    adds nothing."""
    out: list[Network] = []
    for pa in provider_addresses:
        length = interface_addresses.get(str(pa))
        if length is not None:
            network = ipaddress.ip_network(f"{pa}/{length}", strict=False)
            if network not in out:
                out.append(network)
    return tuple(out)


def target_index(catalog: Catalog) -> dict[str, frozenset[str]]:
    """Route target -> the routing domains that import it."""
    index: dict[str, set[str]] = {}
    for domain in catalog.routing_domains.values():
        for target in domain.route_targets:
            index.setdefault(target, set()).add(domain.name)
    return {t: frozenset(names) for t, names in index.items()}


def judge(catalog: Catalog, route: Route, provider_prefixes: Collection[Network] | None,
          targets: dict[str, frozenset[str]] | None = None) -> tuple[str | None, str | None]:
    """(the routing domain the route claims or None, the reason it is refused or None). A route that claims
    none of our routing domains is (None, None): not ours to judge. `targets`: target_index(catalog), when
    many routes are judged (or a `Judge`)."""
    if not isinstance(route, MacIpRoute | PrefixRoute):
        return None, None
    claimed, agreed, found = _claim(catalog, route.vsid, route.route_targets,
                                    target_index(catalog) if targets is None else targets)
    if claimed is None:
        return None, None
    if provider_prefixes is not None and not within(route.next_hop, provider_prefixes):
        return claimed, "next_hop"
    if not agreed:
        return claimed, "route_target"
    return claimed, _address(route, found)


class Judge:
    """`judge` for the many routes of one table, whose inputs do not change: what follows from a route's VSID
    and route targets, and from its next hop, is worked out once per distinct value (a fabric's 100,000 routes
    carry a few of each: the table of a restart is judged in a third of the time). The memories are bounded:
    a peer that sends ever new targets or next hops only makes them start again."""

    LIMIT = 4096

    def __init__(self, catalog: Catalog, provider_prefixes: Collection[Network] | None) -> None:
        self.catalog = catalog
        self.provider_prefixes = provider_prefixes
        self.targets = target_index(catalog)
        self._claims: dict[tuple[int, tuple[str, ...]], tuple[str | None, bool, tuple[Any, Any] | None]] = {}
        self._hops: dict[Address, bool] = {}

    def __call__(self, route: Route) -> tuple[str | None, str | None]:
        if not isinstance(route, MacIpRoute | PrefixRoute):
            return None, None
        key = (route.vsid, route.route_targets)
        claim = self._claims.get(key)
        if claim is None:
            if len(self._claims) >= self.LIMIT:
                self._claims.clear()
            claim = self._claims[key] = _claim(self.catalog, route.vsid, route.route_targets, self.targets)
        claimed, agreed, found = claim
        if claimed is None:
            return None, None
        if self.provider_prefixes is not None:
            hop = route.next_hop
            inside = self._hops.get(hop)
            if inside is None:
                if len(self._hops) >= self.LIMIT:
                    self._hops.clear()
                inside = self._hops[hop] = within(hop, self.provider_prefixes)
            if not inside:
                return claimed, "next_hop"
        if not agreed:
            return claimed, "route_target"
        return claimed, _address(route, found)


def _claim(catalog: Catalog, vsid: int, route_targets: tuple[str, ...],
           targets: dict[str, frozenset[str]]) -> tuple[str | None, bool, tuple[Any, Any] | None]:
    """(the routing domain claimed, whether the VSID's domain imports one of the targets, the VSID's
    (domain, subnet) or None)."""
    found = catalog.subnet(vsid)
    by_vsid = found[0].name if found is not None else None
    by_target = sorted({name for t in route_targets for name in targets.get(t, ())})
    claimed = by_vsid or (by_target[0] if by_target else None)
    return claimed, by_vsid is not None and by_vsid in by_target, found


def _address(route: MacIpRoute | PrefixRoute, found: tuple[Any, Any] | None) -> str | None:
    """A type-2 route's IP address against its subnet: None when it may be learned."""
    if isinstance(route, MacIpRoute) and route.ip is not None and found is not None:
        subnet = found[1]
        prefix = subnet.prefix_of(route.ip)
        if prefix is None:
            return "outside_subnet"
        # the same addresses vnet/catalog.py refuses to a local port, and IPv4's broadcast
        broadcast = route.ip.version == 4 and prefix.prefixlen < 31 and route.ip == prefix.broadcast_address
        if route.ip in subnet.gateways or route.ip == prefix.network_address or broadcast:
            return "reserved_address"
    return None


def screen(catalog: Catalog, routes: Iterable[Route], our_pas: Collection[Address],
           provider_prefixes: Collection[Network] | None) -> Screened:
    """The routes we may import (ours and other tenants' are left out), and the refused ones by reason."""
    accepted: list[Route] = []
    counts: dict[str, int] = {}
    examples: list[Refused] = []
    targets = target_index(catalog)
    for route in routes:
        if getattr(route, "next_hop", None) in our_pas:
            continue
        domain, reason = judge(catalog, route, provider_prefixes, targets)
        if domain is None:
            continue
        if reason is None:
            accepted.append(route)
            continue
        counts[reason] = counts.get(reason, 0) + 1
        if sum(1 for e in examples if e.reason == reason) < EXAMPLES:
            examples.append(Refused(reason, describe(route), domain))
    return Screened(tuple(accepted), counts, tuple(examples))
