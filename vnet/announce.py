"""Pure: the local ports of a catalog -> the EVPN type-2 routes this host announces (RFC 7432, RFC 8365).

One MAC/IP route per customer address of every active port:
- RD = router_id:N with N = VSID mod 65536 (RFC 7432 section 7.9: type-1 RD, unique per host and EVI; the
  low 16 bits of the VSID are enough to keep the routes of one host apart, because the route key also
  carries MAC and IP: two VSIDs congruent mod 65536 would share a key only for the same MAC and IP);
- label = VSID (RFC 8365 section 5.1.3), next hop = the host's first provider address;
- route targets of the port's routing domain, the fabric-wide Router's MAC, and the MAC mobility
  sequence (hostagent/mobility.py).

Here `rd` is only ever the route distinguisher (the field of bgp.routes' routes); a routing domain is `domain`.
The gateway's type-5 default routes use the same route distinguisher (gateway/evpn.py).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from nvfabric.bgp.routes import MacIpKey, MacIpRoute
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.model import Address, Port


@dataclass(frozen=True)
class Identity:
    router_id: str
    provider_addresses: tuple[Address, ...]
    router_mac: str

    @property
    def next_hop(self) -> Address:
        return self.provider_addresses[0]


def route_distinguisher(router_id: str, vsid: int) -> str:
    return f"{router_id}:{vsid & 0xFFFF}"


def local_routes(
    catalog: Catalog,
    identity: Identity,
    seqs: Mapping[tuple[int, str], int],
    inactive: Collection[tuple[int, str]] = (),
    held: Mapping[tuple[str, Address], tuple[str, int]] | None = None,
) -> dict[MacIpKey, MacIpRoute]:
    """Every local port's routes (`port_routes` of each). `held`: the virtual addresses a local port holds,
    (routing domain, address) -> (port name, sequence) (hostagent/holders.py)."""
    by_port: dict[str, list[tuple[Address, int]]] = {}
    for (_domain, address), (name, seq) in (held or {}).items():
        by_port.setdefault(name, []).append((address, seq))
    out: dict[MacIpKey, MacIpRoute] = {}
    for port in catalog.ports.values():
        out.update(port_routes(catalog, identity, port, seqs.get((port.vsid, port.mac), 0),
                               (port.vsid, port.mac) in inactive, by_port.get(port.name, ())))
    return out


def port_routes(catalog: Catalog, identity: Identity, port: Port, seq: int, inactive: bool,
                held: Iterable[tuple[Address, int]] = ()) -> dict[MacIpKey, MacIpRoute]:
    """The routes of one port: one per CA with its MAC's sequence `seq`, and one per virtual address it
    holds (`held`: address, sequence) with that address's own sequence, announced like a CA of the port.
    Nothing while its MAC moved to another host (`inactive`: a higher sequence there, not ours to announce)."""
    if inactive:
        return {}
    routes = (_route(catalog, identity, port, address, s)
              for address, s in (*((a, seq) for a in port.addresses), *held))
    return {route.key: route for route in routes if route is not None}


def _route(catalog: Catalog, identity: Identity, port: Port, address: Address, seq: int) -> MacIpRoute | None:
    found = catalog.subnet(port.vsid)
    if found is None:
        return None
    return MacIpRoute(
        rd=route_distinguisher(identity.router_id, port.vsid), mac=port.mac, ip=address, vsid=port.vsid,
        next_hop=identity.next_hop, route_targets=found[0].route_targets, router_mac=identity.router_mac,
        mobility_seq=seq,
    )
