"""The desired virtual network of one host (or gateway): routing domains and local ports, validated together.

A Catalog is immutable: a change computes a new Catalog (or raises, naming the field) and the caller swaps
it in only when everything downstream accepted it, so a refused change leaves nothing half-applied.
A port change checks and indexes that port alone (its CAs, its interface, its MAC), copying the
dictionaries at C speed; a routing domain change checks every port again (`build`). Lookups (VSID ->
routing domain, CA -> port, interface -> port, VSID and MAC -> ports) are O(1) through the indexes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from nvfabric.vnet.errors import ConflictError, ModelError
from nvfabric.vnet.model import Address, Port, RoutingDomain, VirtualSubnet


K = TypeVar("K")
V = TypeVar("V")


class NotFound(KeyError):
    """A named object does not exist; `kind` and `name` say which."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"no {kind} named {name!r}")
        self.kind, self.name = kind, name

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class Catalog:
    routing_domains: Mapping[str, RoutingDomain] = field(default_factory=dict)
    ports: Mapping[str, Port] = field(default_factory=dict)
    # Indexes derived from the above: built whole by `build`, changed for one port by `with_port` and
    # `without_port`
    _vsids: Mapping[int, tuple[RoutingDomain, VirtualSubnet]] = field(default_factory=dict, repr=False)
    _cas: Mapping[tuple[str, Address], str] = field(default_factory=dict, repr=False)
    _interfaces: Mapping[str, str] = field(default_factory=dict, repr=False)  # interface -> port name
    _macs: Mapping[tuple[int, str], frozenset[str]] = field(default_factory=dict, repr=False)  # (VSID, MAC) -> ports

    @classmethod
    def build(cls, routing_domains: Mapping[str, RoutingDomain], ports: Mapping[str, Port]) -> Catalog:
        vsids: dict[int, tuple[RoutingDomain, VirtualSubnet]] = {}
        for domain in routing_domains.values():
            for i, subnet in enumerate(domain.subnets):
                if subnet.vsid in vsids:
                    other = vsids[subnet.vsid][0].name
                    raise ConflictError(f"subnets[{i}].vsid", subnet.vsid, f"VSID already in routing domain {other}")
                vsids[subnet.vsid] = (domain, subnet)
        cas: dict[tuple[str, Address], str] = {}
        interfaces: dict[str, str] = {}
        macs: dict[tuple[int, str], frozenset[str]] = {}
        for port in ports.values():
            _add(port, vsids, cas, interfaces, macs)
        return cls(MappingProxyType(dict(routing_domains)), MappingProxyType(dict(ports)),
                   MappingProxyType(vsids), MappingProxyType(cas), MappingProxyType(interfaces),
                   MappingProxyType(macs))

    # ---------------------------------------------------------------- queries

    def subnet(self, vsid: int) -> tuple[RoutingDomain, VirtualSubnet] | None:
        return self._vsids.get(vsid)

    def port_with(self, routing_domain: str, ca: Address) -> Port | None:
        name = self._cas.get((routing_domain, ca))
        return self.ports[name] if name else None

    def ports_with_mac(self, vsid: int, mac: str) -> frozenset[str]:
        """The names of the ports with this MAC in this VSID (they share its MAC mobility state)."""
        return self._macs.get((vsid, mac), frozenset())

    def may_hold(self, port: Port) -> tuple[Address, ...]:
        """The virtual addresses `port` may hold: those of its routing domain that list it, inside its virtual
        subnet."""
        found = self.subnet(port.vsid)
        if found is None:
            return ()
        domain, subnet = found
        return tuple(v.address for v in domain.virtual_addresses
                     if port.name in v.ports and subnet.prefix_of(v.address) is not None)

    def routing_domain(self, name: str) -> RoutingDomain:
        try:
            return self.routing_domains[name]
        except KeyError:
            raise NotFound("routing domain", name) from None

    def port(self, name: str) -> Port:
        try:
            return self.ports[name]
        except KeyError:
            raise NotFound("port", name) from None

    # ---------------------------------------------------------------- changes (each returns a new Catalog)

    def with_routing_domain(self, domain: RoutingDomain) -> Catalog:
        """Add or replace a routing domain; refused if a port would lose its subnet or address."""
        return Catalog.build({**self.routing_domains, domain.name: domain}, self.ports)

    def without_routing_domain(self, name: str) -> Catalog:
        domain = self.routing_domain(name)
        vsids = {s.vsid for s in domain.subnets}
        users = sorted(p.name for p in self.ports.values() if p.vsid in vsids)
        if users:
            raise ConflictError("name", name, f"routing domain still has ports: {', '.join(users[:5])}")
        return Catalog.build({k: v for k, v in self.routing_domains.items() if k != name}, self.ports)

    def with_port(self, port: Port, interface_exists: Callable[[str], bool] | None = None) -> Catalog:
        """Add or replace a port; `interface_exists` checks the host interface (the kernel's view). The same
        checks as `build`, on this port's entries of the indexes only (the dictionaries are copied: a C-speed
        copy, no Python per other port)."""
        if interface_exists is not None and not interface_exists(port.interface):
            raise ModelError("interface", port.interface, "no such interface on this host")
        cas, interfaces, macs = _copy(self._cas), _copy(self._interfaces), _copy(self._macs)
        old = self.ports.get(port.name)
        if old is not None:
            _remove(old, self._vsids, cas, interfaces, macs)
        _add(port, self._vsids, cas, interfaces, macs)
        ports = _copy(self.ports)
        ports[port.name] = port
        return Catalog(self.routing_domains, MappingProxyType(ports), self._vsids,
                       MappingProxyType(cas), MappingProxyType(interfaces), MappingProxyType(macs))

    def without_port(self, name: str) -> Catalog:
        port = self.port(name)
        cas, interfaces, macs = _copy(self._cas), _copy(self._interfaces), _copy(self._macs)
        _remove(port, self._vsids, cas, interfaces, macs)
        ports = _copy(self.ports)
        del ports[name]
        return Catalog(self.routing_domains, MappingProxyType(ports), self._vsids, MappingProxyType(cas),
                       MappingProxyType(interfaces), MappingProxyType(macs))


def _copy(mapping: Mapping[K, V]) -> dict[K, V]:
    """A dict of `mapping`: the underlying dict's own copy (a proxy iterated item by item is several times
    slower)."""
    return mapping.copy() if isinstance(mapping, dict | MappingProxyType) else dict(mapping)


def _add(port: Port, vsids: Mapping[int, tuple[RoutingDomain, VirtualSubnet]], cas: dict[tuple[str, Address], str],
         interfaces: dict[str, str], macs: dict[tuple[int, str], frozenset[str]]) -> None:
    """Check `port` against the indexes (of the other ports) and enter it; ModelError naming the field."""
    if port.vsid not in vsids:
        raise ConflictError("vsid", port.vsid, f"port {port.name}: no routing domain has this VSID")
    domain, subnet = vsids[port.vsid]
    if port.interface in interfaces:
        raise ConflictError(
            "interface", port.interface, f"port {port.name}: already used by port {interfaces[port.interface]}"
        )
    entered: list[tuple[str, Address]] = []
    for i, address in enumerate(port.addresses):
        prefix = subnet.prefix_of(address)
        if prefix is None:
            raise ModelError(
                f"addresses[{i}]", str(address),
                f"port {port.name}: outside virtual subnet {port.vsid} "
                f"({', '.join(str(p) for p in subnet.prefixes)})",
            )
        if address in subnet.gateways or address == prefix.network_address:
            raise ModelError(
                f"addresses[{i}]", str(address), f"port {port.name}: the subnet's gateway or network address"
            )
        if domain.virtual_address(address) is not None:
            raise ConflictError(
                f"addresses[{i}]", str(address),
                f"port {port.name}: a virtual address of routing domain {domain.name} (it moves between "
                "the ports listed there; it is nobody's CA)",
            )
        owner = cas.get((domain.name, address))
        if owner is not None:
            raise ConflictError(
                f"addresses[{i}]", str(address),
                f"port {port.name}: CA already used by port {owner} in routing domain {domain.name}",
            )
        entered.append((domain.name, address))
    interfaces[port.interface] = port.name
    cas.update((key, port.name) for key in entered)
    key = (port.vsid, port.mac)
    macs[key] = macs.get(key, frozenset()) | {port.name}


def _remove(port: Port, vsids: Mapping[int, tuple[RoutingDomain, VirtualSubnet]], cas: dict[tuple[str, Address], str],
            interfaces: dict[str, str], macs: dict[tuple[int, str], frozenset[str]]) -> None:
    """Take `port` (as the indexes have it) out of them."""
    if interfaces.get(port.interface) == port.name:
        del interfaces[port.interface]
    found = vsids.get(port.vsid)
    if found is not None:
        for address in port.addresses:
            if cas.get((found[0].name, address)) == port.name:
                del cas[(found[0].name, address)]
    key = (port.vsid, port.mac)
    left = macs.get(key, frozenset()) - {port.name}
    if left:
        macs[key] = left
    else:
        macs.pop(key, None)
