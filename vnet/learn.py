"""Pure: routes learned from the reflectors (plus the local catalog) -> lookup records and remote prefixes.

Used by the host agent (its catalog) and by the gateway (a catalog of its tenants' routing domains, no ports).
Only routes the import policy accepts are learned (vnet/policy.py: VSID and route target of one routing
domain, no reserved address; the next-hop check against the provider prefixes is the caller's, by
`policy.screen`).

- A type-2 route (MAC/IP) with an IP in a VSID of one of our routing domains is a remote CA: a LookupRecord
  (HNV's lookup record: CA + VSID -> MAC, PA). Several hosts may announce the same CA during a move: the
  highest MAC mobility sequence wins, then the lower PA (RFC 7432 section 15.1's tie-break), so every host
  picks the same one.
- A CA of an active local port is always local (a remote claim with a higher sequence first makes the port
  inactive, hostagent/mobility.py).
- A virtual address held by a local port (hostagent/holders.py) is local likewise; held elsewhere, it is a
  remote CA like any other: per address, the highest sequence wins, whichever MAC announces it.
- A type-5 route (IP prefix, RFC 9136) whose VSID belongs to one of our routing domains (and a route target
  to the same one) is a RemotePrefix (e.g. the gateway's default route).
- Our own routes (next hop = one of our PAs) are never learned.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from nvfabric.bgp.routes import MacIpRoute, PrefixRoute, Route
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.model import Address, LookupRecord, RemotePrefix
from nvfabric.vnet.policy import judge, target_index


def rank(route: MacIpRoute) -> tuple[int, int, bytes, int, str, int, bytes]:
    """Higher sequence first, then lower PA (IPv4 before IPv6, then numerically); the rest only orders what
    the RFC leaves tied (one host announcing one CA twice), so the winner never depends on arrival order."""
    ip = route.ip
    return (-route.mobility_seq, route.next_hop.version, route.next_hop.packed, route.vsid, route.mac,
            ip.version if ip is not None else 0, ip.packed if ip is not None else b"")


def prefix_rank(prefix: RemotePrefix) -> tuple[int, bytes, int, str, str]:
    """The lower PA wins (two gateways announcing one prefix); the rest orders what one host announces twice."""
    return (prefix.pa.version, prefix.pa.packed, prefix.vsid, str(prefix.router_mac), str(prefix.gateway_ip))





def remote_macs(routes: Iterable[Route], our_pas: Collection[Address]) -> dict[tuple[int, str], MacIpRoute]:
    """(VSID, MAC) -> the winning remote route for it (for mobility decisions)."""
    best: dict[tuple[int, str], MacIpRoute] = {}
    for route in routes:
        if isinstance(route, MacIpRoute) and route.next_hop not in our_pas:
            key = (route.vsid, route.mac)
            if key not in best or rank(route) < rank(best[key]):
                best[key] = route
    return best


def remote_cas(catalog: Catalog, routes: Iterable[Route],
               our_pas: Collection[Address]) -> dict[tuple[str, Address], MacIpRoute]:
    """(routing domain, CA) -> the winning remote type-2 route for it (what a lookup record follows, and what
    a virtual address's holder compares its sequence with)."""
    remote: dict[tuple[str, Address], MacIpRoute] = {}
    targets = target_index(catalog)
    for route in routes:
        if not isinstance(route, MacIpRoute) or route.ip is None or route.next_hop in our_pas:
            continue
        domain, refused = judge(catalog, route, None, targets)
        found = catalog.subnet(route.vsid)
        if domain is None or refused is not None or found is None:
            continue  # not one of our routing domains, or refused by the import policy
        key = (found[0].name, route.ip)
        if key not in remote or rank(route) < rank(remote[key]):
            remote[key] = route
    return remote


def lookup_records(
    catalog: Catalog,
    routes: Iterable[Route],
    our_pas: Collection[Address],
    inactive: Collection[tuple[int, str]] = (),
    held: Mapping[tuple[str, Address], str] | None = None,
) -> list[LookupRecord]:
    """`held`: the virtual addresses a local port holds, (routing domain, address) -> port name
    (hostagent/holders.py): a CA of that port here, whatever other hosts announce."""
    records: dict[tuple[str, Address], LookupRecord] = {}
    for port in catalog.ports.values():
        found = catalog.subnet(port.vsid)
        if found is None or (port.vsid, port.mac) in inactive:
            continue
        for ca in port.addresses:
            records[(found[0].name, ca)] = LookupRecord(found[0].name, port.vsid, ca, port.mac, None, True, port.name)
    for (domain, address), name in (held or {}).items():
        port = catalog.ports.get(name)
        if port is not None and (port.vsid, port.mac) not in inactive:
            records[(domain, address)] = LookupRecord(domain, port.vsid, address, port.mac, None, True, name)
    for (domain, ca), route in remote_cas(catalog, routes, our_pas).items():
        if (domain, ca) not in records:  # else an active local port has it
            records[(domain, ca)] = LookupRecord(domain, route.vsid, ca, route.mac, route.next_hop)
    return sorted(records.values(), key=lambda r: (r.routing_domain, r.ca.version, r.ca))


def announced_prefixes(catalog: Catalog, routes: Iterable[Route], our_pas: Collection[Address]) -> list[RemotePrefix]:
    """Every type-5 route of our routing domains, one RemotePrefix per announcing host (two gateways may
    announce the same prefix: both are vouched for as senders, vnet/decap.py)."""
    out: list[RemotePrefix] = []
    targets = target_index(catalog)
    for route in routes:
        if not isinstance(route, PrefixRoute) or route.next_hop in our_pas:
            continue
        domain, refused = judge(catalog, route, None, targets)
        if domain is None or refused is not None:
            continue  # not one of our routing domains, or refused by the import policy
        out.append(remote_prefix(domain, route))
    return out


def remote_prefix(domain: str, route: PrefixRoute) -> RemotePrefix:
    return RemotePrefix(domain, route.prefix, route.vsid, route.next_hop, route.router_mac,
                        route.gateway_ip if route.gateway_ip and not route.gateway_ip.is_unspecified else None)


def remote_prefixes(catalog: Catalog, routes: Iterable[Route], our_pas: Collection[Address]) -> list[RemotePrefix]:
    out: dict[tuple[str, object], RemotePrefix] = {}
    for prefix in announced_prefixes(catalog, routes, our_pas):
        key = (prefix.routing_domain, prefix.prefix)
        # deterministic when two hosts (two gateways) announce the same prefix: the lower PA
        if key not in out or prefix_rank(prefix) < prefix_rank(out[key]):
            out[key] = prefix
    return sorted(out.values(), key=lambda p: (p.routing_domain, p.prefix.version, p.prefix))
