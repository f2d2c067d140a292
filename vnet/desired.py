"""Pure: what a host (or gateway) wants in its kernel -> the set of vnet.kernel objects (docs/agent.md).

Inputs are plain values: the catalog (routing domains, local ports), the lookup records (local and remote
CAs), the remote prefixes (type-5 routes), customer routes, the host's identity and the table number of
each routing domain. The output is compared with what the kernel has by vnet.kernel.diff; nothing here
reads or writes the kernel.

Globally, with the NVGRE devices: `iif <nvgre dev> unreachable` after every tun_id rule (a decapsulated
packet no VSID claims goes nowhere) and the local table moved after the l3mdev rule (an inner packet is
never delivered to the host's own addresses): both families, for the host and the gateway alike.
Per routing domain: a VRF `nvf-<name>`, `unreachable default` for IPv4 and IPv6 (everything unknown is
dropped), and for every VSID a `tun_id` rule on each NVGRE device steering decapsulated frames into its
table. Per local port: a routed port in the VRF with proxy ARP / proxy NDP, and a /32 (/128) route per CA
whose preferred source is its subnet's gateway (the host's ICMP errors to the VM come from its gateway).
Per remote CA or remote prefix: one LWT encap route to the PA. Each subnet gateway is a local address of
the VRF device (a /32 or /128, IPv6 `nodad`): its local route in the VRF's table makes every host answer
for it on its own ports, ARP (the kernel's own reply for a local address, with the port's MAC), neighbour
solicitations (NA with the router flag: the VRF forwards; the port's proxy entry for the IPv6 gateway only
joins its solicited-node group) and ICMP echo; the agent's input guard (vnet/vrfmark.py) lets only ICMP
reach it.

Routes of one routing domain can want the same key (table, prefix, metric) from different sources: a type-5
/32 equal to a local CA, a customer route 0.0.0.0/0 via an appliance next to the gateway's type-5 default.
One key holds one route, chosen here by a fixed precedence (PRECEDENCE: local CA > customer route > remote
CA > remote prefix; a route to a subnet gateway's address loses to the gateway's local route, the kernel's);
the loser is left out and reported (`conflicts`), so a bad or unlucky route costs at most its own key,
never the routing domain or the host.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Set as AbstractSet
from dataclasses import dataclass, field
from functools import cached_property

from nvfabric.bgp.mac import Mac
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.kernel.objects import (
    EncapRoute,
    FwmarkRule,
    KernelObject,
    LocalTableRule,
    LocalPortRoute,
    NvgreDevice,
    PermanentNeighbour,
    ProxyNeighbour,
    Sysctl,
    TunIdRule,
    UnreachableIifRule,
    UnreachableRoute,
    ViaRoute,
    Vrf,
    VrfAddress,
    VrfPort,
)
from nvfabric.vnet.kernel.objects import DEFAULT_METRIC, OVERHEAD, address_text, encap_route
from nvfabric.vnet.model import (
    Address,
    CustomerRoute,
    LookupRecord,
    Network,
    Port,
    RemotePrefix,
    RoutingDomain,
    VirtualSubnet,
)

NVGRE_DEVICES = {4: "nvf-gre4", 6: "nvf-gre6"}
ROUTER_NEXTHOPS = ("169.254.0.1", "fe80::1")
RULE_PRIORITY = 900
TABLE_MIN, TABLE_MAX = 1000, 0x0FFFFFFF  # away from the kernel's (253-255) and the usual hand-made tables

GLOBAL_SYSCTLS = (
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
    ("net/ipv4/conf/all/rp_filter", "0"),  # decapsulated frames arrive on the NVGRE device, not the port
    # ICMPv6 errors carry the mark of the packet they are about: the routing domain's (vnet/vrfmark.py)
    ("net/ipv6/fwmark_reflect", "1"),
)
ICMP6_RULE_PRIORITY = 910
IPPROTO_ICMPV6 = 58


def vrf_name(routing_domain: str) -> str:
    return f"nvf-{routing_domain}"


@dataclass(frozen=True)
class HostIdentity:
    router_mac: Mac
    provider_addresses: tuple[Address, ...]
    underlay_mtu: int = 1500

    @property
    def pa_families(self) -> tuple[int, ...]:
        return tuple(sorted({pa.version for pa in self.provider_addresses}))


# the sources of a route, strongest first: what configuration and this host know beats what was learned,
# and an exact address beats a prefix
PRECEDENCE = ("local", "customer_route", "remote_ca", "remote_prefix")
ROUTES = (LocalPortRoute, EncapRoute, ViaRoute)


@dataclass(frozen=True)
class Conflict:
    """Two sources wanted one route key of a routing domain; `loser` was left out."""

    domain: str
    prefix: str
    winner: str  # a PRECEDENCE kind
    loser: str
    dropped: str  # the route left out, as text
    pa: str | None = None  # the loser's provider address (a remote route): not vouched for either

    def as_dict(self) -> dict[str, str | None]:
        return {"domain": self.domain, "prefix": self.prefix, "winner": self.winner, "loser": self.loser,
                "dropped": self.dropped, "pa": self.pa}


@dataclass(frozen=True)
class Desired:
    # what could not be realised, with the reason (e.g. a remote PA of a family we have no device for)
    skipped: tuple[str, ...] = ()
    # the objects by partition (GLOBAL, then one per routing domain built): what vnet.reconcile takes
    partitions: Mapping[str, frozenset[KernelObject]] = field(default_factory=dict)
    skipped_in: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # `skipped` by partition
    conflicts_in: Mapping[str, tuple[Conflict, ...]] = field(default_factory=dict)  # by partition
    bases: Mapping[str, Base] = field(default_factory=dict)  # by routing domain, when built `by_ca`
    ports_on: Mapping[str, PortsOn] = field(default_factory=dict)  # by routing domain, when built `by_ca`

    @cached_property
    def objects(self) -> frozenset[KernelObject]:
        """Every partition's objects in one set (built when asked: the host agent never does, and at fabric
        scale it is 100,000 objects more at the start's peak)."""
        return frozenset().union(*self.partitions.values())

    @property
    def sysctl_paths(self) -> list[str]:
        return sorted(o.path for o in self.objects if isinstance(o, Sysctl))


def _host(address: Address) -> str:
    return f"{address}/{address.max_prefixlen}"


def allocate_tables(names: Iterable[str], known: Mapping[str, int]) -> dict[str, int]:
    """Keep every known table number; give each new routing domain the lowest free one (deterministic)."""
    out = {name: known[name] for name in names if name in known}
    used = set(known.values())
    candidate = TABLE_MIN
    for name in sorted(set(names) - set(out)):
        while candidate in used:
            candidate += 1
        if candidate > TABLE_MAX:
            raise ValueError("no free routing table number")
        out[name] = candidate
        used.add(candidate)
    return out


def port_mtu(requested: int | None, identity: HostIdentity) -> int:
    """The port keeps the underlay MTU unless the orchestrator asks for one: the overlay's smaller MTU is
    enforced where the packet is encapsulated (the NVGRE device's MTU: underlay MTU - OVERHEAD), so a
    too-large DF packet from a VM gets ICMP "fragmentation needed" / "packet too big" from the host instead
    of being dropped silently on the way into a smaller port."""
    return requested if requested is not None else identity.underlay_mtu


GLOBAL = ""  # the partition of what belongs to no routing domain (devices, their neighbours, global sysctls)


def desired_state(
    catalog: Catalog,
    records: Iterable[LookupRecord],
    prefixes: Iterable[RemotePrefix],
    customer_routes: Mapping[str, Iterable[CustomerRoute]],
    identity: HostIdentity,
    tables: Mapping[str, int],
    domains: Collection[str] | None = None,
    by_ca: bool = False,
) -> Desired:
    """The desired objects, partitioned: `GLOBAL` plus one partition per routing domain.

    `domains`: build only these routing domains' partitions (and GLOBAL, which is small): what an
    incremental change needs (vnet.reconcile applies only the partitions it is given). A named domain
    that is not in the catalog gets an empty partition: its objects are to be removed.
    `by_ca`: each remote CA in a partition of its own (`ca_partition`), each active local port in one of its
    own (`port_partition`), beside its domain's base partition (`base_partition`): what the host agent
    reconciles, so that one changed CA or port costs its own partition."""
    devices = devices_of(identity)
    wanted = set(catalog.routing_domains) if domains is None else set(domains)

    glob: set[KernelObject] = {Sysctl(path, value) for path, value in GLOBAL_SYSCTLS}
    for family, dev in devices.items():
        glob.add(NvgreDevice(dev, family, identity.router_mac, mtu=identity.underlay_mtu - OVERHEAD[family]))
        for nh in ROUTER_NEXTHOPS:
            glob.add(PermanentNeighbour(dev, nh, identity.router_mac))
        # nothing decapsulated reaches the main table: what no tun_id rule claimed is unreachable
        glob.update(UnreachableIifRule(ca_family, dev) for ca_family in (4, 6))
    if devices:
        # nor the host's own addresses: the local table after the tun_id rules and the l3mdev rule
        glob.update(LocalTableRule(ca_family) for ca_family in (4, 6))

    # the inputs, grouped by routing domain in one pass each (only the wanted ones are kept)
    records_in: dict[str, list[LookupRecord]] = {}
    active_ports: set[str] = set()
    for record in records:
        if record.routing_domain in wanted:
            records_in.setdefault(record.routing_domain, []).append(record)
            if record.local and record.port is not None:
                active_ports.add(record.port)
    prefixes_in: dict[str, list[RemotePrefix]] = {}
    for prefix in prefixes:
        if prefix.routing_domain in wanted:
            prefixes_in.setdefault(prefix.routing_domain, []).append(prefix)
    ports_in: dict[str, list[tuple[Port, VirtualSubnet]]] = {}
    for port in catalog.ports.values():
        found = catalog.subnet(port.vsid)
        if found is None or found[0].name not in wanted or port.name not in active_ports:
            continue  # another routing domain's, or moved away (mobility): not routed here
        ports_in.setdefault(found[0].name, []).append((port, found[1]))

    partitions: dict[str, frozenset[KernelObject]] = {GLOBAL: frozenset(glob)}
    bases: dict[str, Base] = {}
    ports_on: dict[str, PortsOn] = {}
    skipped: dict[str, tuple[str, ...]] = {}
    conflicts: dict[str, tuple[Conflict, ...]] = {}
    for name in sorted(wanted):
        domain = catalog.routing_domains.get(name)
        if domain is None or name not in tables:
            partitions[name] = frozenset()
            continue
        if by_ca:
            mine = records_in.get(name, [])
            lookup = {r.ca: r for r in mine}
            objects, why, lost, base = base_partition(
                domain, tables[name], prefixes_in.get(name, ()), customer_routes.get(name, ()), lookup.get, catalog,
                devices)
            bases[name] = base
            ports_on[name] = on = ports_by_prefixes(ports_in.get(name, ()))
            by_port: dict[str, list[LookupRecord]] = {}
            for record in mine:
                if record.local:
                    by_port.setdefault(record.port or "", []).append(record)
                else:
                    part = ca_partition(name, record.ca)
                    partitions[part], ca_why, ca_lost = remote_ca_partition(record, base, on, devices)
                    if ca_why:
                        skipped[part] = tuple(ca_why)
                    if ca_lost:
                        conflicts[part] = tuple(ca_lost)
            for port, subnet in ports_in.get(name, ()):
                part = port_partition(name, port.name)
                partitions[part], port_lost = local_port_partition(
                    domain, tables[name], port, subnet, by_port.get(port.name, ()), on, identity)
                if port_lost:
                    conflicts[part] = tuple(port_lost)
        else:
            objects, why, lost = _domain(
                domain, tables[name], ports_in.get(name, ()), records_in.get(name, ()), prefixes_in.get(name, ()),
                customer_routes.get(name, ()), catalog, identity, devices,
            )
        partitions[name] = frozenset(objects)
        if why:
            skipped[name] = tuple(why)
        if lost:
            conflicts[name] = tuple(lost)
    return Desired(tuple(x for why in skipped.values() for x in why),
                   partitions, skipped, conflicts, bases, ports_on)


def devices_of(identity: HostIdentity) -> dict[int, str]:
    """The NVGRE device by underlay family: one per family of the host's PAs."""
    return {f: NVGRE_DEVICES[f] for f in identity.pa_families}


def global_partition(identity: HostIdentity) -> frozenset[KernelObject]:
    """What belongs to no routing domain: the NVGRE devices, their neighbours, the global rules and sysctls."""
    return desired_state(Catalog.build({}, {}), (), (), {}, identity, {}, ()).partitions[GLOBAL]


def ca_partition(domain: str, ca: Address) -> str:
    """The partition of one remote CA of a routing domain. A routing domain's name has no '/' (vnet/model.py
    NAME_RE) and GLOBAL is empty: the names never collide. Interned: every holder of the name (the agent's
    partitions, the reconciler's, its owner index) holds one string per remote CA, not one per computation."""
    return sys.intern(f"{domain}/{address_text(ca)}")


def port_partition(domain: str, port: str) -> str:
    """The partition of one active local port of a routing domain (a CA's text has no '/': never a CA's)."""
    return f"{domain}/port/{port}"


# the active local ports by the IPv6 prefixes of their subnet, as (port name, interface): the ports a CA of
# the subnet gets a proxy NDP entry on, matched per subnet and not per port (a VM solicits on-link
# neighbours only); subnets without an IPv6 prefix are left out (no proxy NDP there)
PortsOn = Mapping[tuple[Network, ...], tuple[tuple[str, str], ...]]


def ports_by_prefixes(ports: Iterable[tuple[Port, VirtualSubnet]]) -> PortsOn:
    on: dict[tuple[Network, ...], list[tuple[str, str]]] = {}
    for port, subnet in ports:
        nets = v6_prefixes(subnet)
        if nets:
            on.setdefault(nets, []).append((port.name, port.interface))
    return {nets: tuple(found) for nets, found in on.items()}


def v6_prefixes(subnet: VirtualSubnet) -> tuple[Network, ...]:
    return tuple(p for p in subnet.prefixes if p.version == 6)


@dataclass(frozen=True)
class Base:
    """What the remote CA partitions of a routing domain need from its base partition, and what the base
    needs from them. The precedence (PRECEDENCE) crosses the partitions only through this: a remote CA's
    route loses to a customer route with its key (`strong`) and to a subnet gateway's address (a local CA's
    route has its CA's key: a CA is local or remote, never both); the base must be built again when a CA in
    `watch` changes, local or remote (a customer route's next hop; the address of a customer route or a
    learned prefix that is a host prefix, whose key a local CA's route takes, as a remote CA's takes a
    learned prefix's)."""

    table: int
    strong: Mapping[tuple, tuple[str, KernelObject]]  # route key -> (kind, route) held by the base
    gateways: frozenset[str]  # the subnet gateways' host prefixes
    watch: frozenset[Address]


def base_partition(
    domain: RoutingDomain,
    table: int,
    prefixes: Iterable[RemotePrefix],
    customer_routes: Iterable[CustomerRoute],
    lookup: Callable[[Address], LookupRecord | None],
    catalog: Catalog,
    devices: Mapping[int, str],
) -> tuple[set[KernelObject], list[str], list[Conflict], Base]:
    """A routing domain's own objects (VRF, rules, gateways, customer routes, remote prefixes), what could not
    be realised, the routes that lost their key, and its `Base`. `lookup`: any lookup record of the domain by
    CA, local or remote (a customer route's next hop; a host prefix's CA). O(the domain's customer routes
    and prefixes): never its ports or remote CAs."""
    customer_routes = list(customer_routes)
    prefixes = list(prefixes)
    objects = _vrf(domain, table, devices)
    prefix_routes, skipped_prefixes = _remote_prefixes(table, prefixes, devices)
    via, skipped_routes = _customer_routes(domain, table, customer_routes, lookup, catalog, devices)
    watch = {r.next_hop for r in customer_routes if r.next_hop is not None}
    # a CA's route with the key of a host prefix takes it: a local CA's from a customer route or a learned
    # prefix, a remote CA's from a learned prefix. They are judged against it here, and left to the port's
    # or the CA's own partition
    local: set[KernelObject] = set()
    shadow: set[KernelObject] = set()
    for kind, prefix in [*(("customer_route", r.prefix) for r in customer_routes),
                         *(("remote_prefix", p.prefix) for p in prefixes)]:
        if prefix.prefixlen != prefix.max_prefixlen:
            continue
        ca = prefix.network_address
        watch.add(ca)
        record = lookup(ca)
        if record is None:
            continue
        if record.local:
            port = catalog.ports.get(record.port or "")
            if port is not None:
                local.add(LocalPortRoute(table, _host(ca), port.interface, src=_gateway(catalog, port, ca)))
        elif kind == "remote_prefix" and record.pa is not None and record.pa.version in devices:
            shadow.add(EncapRoute(table, _host(ca), record.vsid, str(record.pa), devices[record.pa.version]))
    by_kind, shadowed = _behind_gateways(domain.name, {"local": local, "customer_route": via, "remote_ca": shadow,
                                                       "remote_prefix": prefix_routes}, objects)
    routes, conflicts = resolve(domain.name, by_kind)
    strong: dict[tuple, tuple[str, KernelObject]] = {}
    for obj in sorted(by_kind["customer_route"], key=_sort_key):
        strong.setdefault(obj.key, ("customer_route", obj))
    lost = sorted((c for c in shadowed + conflicts if c.loser not in ("remote_ca", "local")), key=_order)
    gateways = frozenset(f"{o.address}/{o.prefixlen}" for o in objects if isinstance(o, VrfAddress))
    base = Base(table, strong, gateways, frozenset(watch))
    # (a remote CA's route equal to a customer route's is the base's: its partition leaves it out)
    theirs = (shadow - {obj for _, obj in strong.values()}) | local
    return objects | (routes - theirs), [*skipped_prefixes, *skipped_routes], lost, base


def local_port_partition(domain: RoutingDomain, table: int, port: Port, subnet: VirtualSubnet,
                         records: Iterable[LookupRecord], ports_on: PortsOn,
                         identity: HostIdentity) -> tuple[frozenset[KernelObject], list[Conflict]]:
    """One active local port's objects: routed in its VRF, answering ARP/NDP (proxy), a route per local CA
    it has (its addresses, the virtual addresses it holds), and its IPv6 CAs' proxy NDP entries on the other
    active ports of its subnet; and its CA routes that lost to a subnet gateway's address. A local CA's route
    wins its key over every other source (PRECEDENCE), so nothing else is looked at: O(its CAs), plus one
    proxy entry per other active port of an IPv6 subnet for each of its IPv6 CAs."""
    objects, _ = _ports(vrf_name(domain.name), [(port, subnet)], identity)
    gateways = {_host(g) for s in domain.subnets for g in s.gateways}
    lost: list[Conflict] = []
    src = {g.version: str(g) for g in subnet.gateways}
    for record in records:
        route = LocalPortRoute(table, _host(record.ca), port.interface, src=src.get(record.ca.version))
        if route.prefix in gateways:
            lost.append(_conflict(domain.name, "local", route, "local"))
            continue
        objects.add(route)
        if record.ca.version == 6:
            objects.update(_proxy_v6(ports_on, record.ca, except_if=port.interface))
    return frozenset(objects), lost


def remote_ca_partition(record: LookupRecord, base: Base, ports_on: PortsOn,
                        devices: Mapping[int, str]) -> tuple[frozenset[KernelObject], list[str], list[Conflict]]:
    """One remote CA's objects (its encap route, its IPv6 proxy NDP entries), what could not be realised, and
    its route when it lost its key to the base (PRECEDENCE: a customer route before it; a subnet gateway's
    address). O(1), plus one proxy entry per active port of an IPv6 subnet holding the CA."""
    if record.pa is None or record.pa.version not in devices:
        return frozenset(), [f"{record.routing_domain} {record.ca}: no NVGRE device for PA {record.pa}"], []
    route = encap_route(base.table, record.ca, record.vsid, record.pa, devices[record.pa.version])
    lost: list[Conflict] = []
    held = base.strong.get(route.key)
    if route.prefix in base.gateways:
        lost.append(_conflict(record.routing_domain, "remote_ca", route, "local"))
    elif held is not None:
        if held[1] != route:  # (the same route from a customer route: one object, the base's, no conflict)
            lost.append(_conflict(record.routing_domain, "remote_ca", route, held[0]))
    elif record.ca.version == 4:  # (the common case, one object: no set built and hashed for it)
        return One(route), [], lost
    objects: set[KernelObject] = set(_proxy_v6(ports_on, record.ca)) if record.ca.version == 6 else set()
    if not lost and held is None:
        objects.add(route)
    return (One(route) if len(objects) == 1 and route in objects else frozenset(objects)), [], lost


class One(AbstractSet[KernelObject]):
    """An immutable set of one kernel object: a remote CA's partition (its encap route), in a fifth of a
    frozenset's memory (a host at fabric scale holds 100,000 of them). Equal to, and hashed as, the frozenset
    of the same object; what it is combined with (`|`, `&`...) is a frozenset."""

    __slots__ = ("_obj",)

    def __init__(self, obj: KernelObject) -> None:
        self._obj = obj

    def __contains__(self, item: object) -> bool:
        return item == self._obj

    def __iter__(self) -> Iterator[KernelObject]:
        return iter((self._obj,))

    def __len__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        return AbstractSet.__eq__(self, other)

    def __hash__(self) -> int:
        return hash(frozenset((self._obj,)))

    def __repr__(self) -> str:
        return f"One({self._obj!r})"

    @classmethod
    def _from_iterable(cls, it: Iterable[KernelObject]) -> frozenset[KernelObject]:
        return frozenset(it)


def _domain(
    domain: RoutingDomain,
    table: int,
    ports: Iterable[tuple[Port, VirtualSubnet]],
    records: Iterable[LookupRecord],
    prefixes: Iterable[RemotePrefix],
    customer_routes: Iterable[CustomerRoute],
    catalog: Catalog,
    identity: HostIdentity,
    devices: Mapping[int, str],
) -> tuple[set[KernelObject], list[str], list[Conflict]]:
    """One routing domain's objects (everything here lives in its table, its VRF or on its ports), what
    could not be realised, with the reason, and the routes that lost their key to a stronger source."""
    records = list(records)
    objects = _vrf(domain, table, devices)
    port_objects, ports_on = _ports(vrf_name(domain.name), ports, identity)
    objects |= port_objects
    ca_objects, skipped = _cas(table, records, catalog, devices, ports_on)
    prefix_routes, skipped_prefixes = _remote_prefixes(table, prefixes, devices)
    by_ca = {record.ca: record for record in records}
    via, skipped_routes = _customer_routes(domain, table, customer_routes, by_ca.get, catalog, devices)
    local = {o for o in objects | ca_objects if isinstance(o, LocalPortRoute)}
    remote_ca = {o for o in ca_objects if isinstance(o, EncapRoute)}
    other = {o for o in objects | ca_objects if not isinstance(o, ROUTES)}
    by_kind, shadowed = _behind_gateways(domain.name, {"local": local, "customer_route": via, "remote_ca": remote_ca,
                                                       "remote_prefix": prefix_routes}, other)
    routes, conflicts = resolve(domain.name, by_kind)
    return other | routes, [*skipped, *skipped_prefixes, *skipped_routes], sorted(shadowed + conflicts, key=_order)


def _behind_gateways(domain: str, by_kind: Mapping[str, set[KernelObject]], objects: Iterable[KernelObject]
                     ) -> tuple[dict[str, set[KernelObject]], list[Conflict]]:
    """A route to a subnet gateway's own address (a type-5 /32, a customer route) would never be taken: the
    kernel's local route of the VRF's address comes first, whatever the metric. Left out, reported as lost to
    `local`."""
    gateways = {f"{o.address}/{o.prefixlen}" for o in objects if isinstance(o, VrfAddress)}
    kept: dict[str, set[KernelObject]] = {}
    lost: list[Conflict] = []
    for kind, routes in by_kind.items():
        kept[kind] = {r for r in routes if r.prefix not in gateways}
        lost += [_conflict(domain, kind, r, "local") for r in routes if r.prefix in gateways]
    return kept, lost


def _sort_key(obj: KernelObject) -> tuple[str, str]:
    return type(obj).__name__, repr(obj)


def resolve(domain: str, by_kind: Mapping[str, Iterable[KernelObject]]) -> tuple[set[KernelObject], list[Conflict]]:
    """One route per key: the first kind of PRECEDENCE that wants the key keeps it (within a kind, the
    lower in a fixed order: the same on every host and at every run); the others are conflicts. Linear:
    only colliding routes are compared (a host has tens of thousands of remote CAs)."""
    kept: dict[tuple, tuple[str, KernelObject]] = {}
    lost: list[tuple[str, KernelObject, str]] = []  # (loser's kind, loser, winner's kind)
    for kind in PRECEDENCE:
        for obj in by_kind.get(kind, ()):
            held = kept.get(obj.key)
            if held is None:
                kept[obj.key] = (kind, obj)
            elif held[1] != obj:
                if held[0] == kind and _sort_key(obj) < _sort_key(held[1]):
                    kept[obj.key] = (kind, obj)
                    obj = held[1]
                lost.append((kind, obj, held[0]))
    conflicts = sorted((_conflict(domain, kind, obj, winner) for kind, obj, winner in lost), key=_order)
    return {obj for _, obj in kept.values()}, conflicts


def _conflict(domain: str, kind: str, obj: KernelObject, winner: str) -> Conflict:
    return Conflict(domain, obj.prefix, winner, kind, str(obj),
                    getattr(obj, "pa", None) if kind.startswith("remote") else None)


def _order(c: Conflict) -> tuple[str, int, str]:
    return c.prefix, PRECEDENCE.index(c.loser), c.dropped


def _vrf(domain: RoutingDomain, table: int, devices: Mapping[int, str]) -> set[KernelObject]:
    """The VRF and what steers into its table: the unreachable defaults, the ICMPv6 error rule, the tun_id
    rules of every VSID; the subnet gateways as the VRF's own addresses, and the VRF forwarding IPv6 (what
    makes the kernel's NA for them carry the router flag, whatever `default/forwarding` was at its creation)."""
    vrf = vrf_name(domain.name)
    objects: set[KernelObject] = {Vrf(vrf, table), Sysctl(f"net/ipv6/conf/{vrf}/forwarding", "1"),
                                  UnreachableRoute(table, 4), UnreachableRoute(table, 6)}
    # the host's own ICMPv6 errors about this domain's packets (Packet Too Big), marked with the table number
    # by vnet/vrfmark.py, are routed in this table, not the main one (docs/dataplane.md, "Packet Too Big")
    objects.add(FwmarkRule(6, table, table, ICMP6_RULE_PRIORITY, "lo", IPPROTO_ICMPV6))
    for subnet in domain.subnets:
        for dev in devices.values():
            for family in (4, 6):
                objects.add(TunIdRule(family, dev, subnet.vsid << 8, table, RULE_PRIORITY))
        objects.update(VrfAddress(vrf, str(gateway)) for gateway in subnet.gateways)
    return objects


def _ports(vrf: str, ports: Iterable[tuple[Port, VirtualSubnet]],
           identity: HostIdentity) -> tuple[set[KernelObject], PortsOn]:
    """Each active local port: routed in the VRF, answering ARP/NDP (proxy)."""
    objects: set[KernelObject] = set()
    ports = list(ports)
    for port, subnet in ports:
        ifname = port.interface
        objects.add(VrfPort(ifname, vrf, port_mtu(port.mtu, identity)))
        for path, value in (
            (f"net/ipv4/conf/{ifname}/proxy_arp", "1"),
            (f"net/ipv4/neigh/{ifname}/proxy_delay", "0"),  # answer at once, not after up to 0.8 s
            (f"net/ipv6/conf/{ifname}/proxy_ndp", "1"),
            (f"net/ipv4/conf/{ifname}/rp_filter", "0"),
        ):
            objects.add(Sysctl(path, value))
        # The IPv6 gateway is the VRF's address, and the NA is that address's (router flag: the VRF's
        # forwarding); but a VM's NS goes to the gateway's solicited-node group, which only the VRF device has
        # joined: a proxy entry makes the port join it (the kernel then finds the address on the master).
        objects.update(ProxyNeighbour(ifname, str(gateway)) for gateway in subnet.gateways if gateway.version == 6)
    return objects, ports_by_prefixes(ports)


def _gateway(catalog: Catalog, port: Port, ca: Address) -> str | None:
    """The gateway of the port's subnet in the CA's family (the source of the host's ICMP errors to the CA)."""
    found = catalog.subnet(port.vsid)
    return next((str(g) for g in found[1].gateways if g.version == ca.version), None) if found else None


def _proxy_v6(ports_on: PortsOn, ca: Address, except_if: str | None = None) -> list[ProxyNeighbour]:
    """Proxy NDP entries for an IPv6 CA: only on ports whose subnet contains it (a VM solicits on-link
    neighbours only)."""
    text = str(ca)
    return [ProxyNeighbour(ifname, text) for nets, found in ports_on.items() if any(ca in p for p in nets)
            for _, ifname in found if ifname != except_if]


def _cas(table: int, records: Iterable[LookupRecord], catalog: Catalog, devices: Mapping[int, str],
         ports_on: PortsOn) -> tuple[set[KernelObject], list[str]]:
    """A host route per CA: to its port when local, encapsulated to its PA when remote (and proxy NDP)."""
    objects: set[KernelObject] = set()
    skipped: list[str] = []
    for record in records:
        if record.local:
            port = catalog.ports.get(record.port or "")
            if port is None:
                continue
            objects.add(LocalPortRoute(table, _host(record.ca), port.interface, src=_gateway(catalog, port, record.ca)))
            if record.ca.version == 6:
                objects.update(_proxy_v6(ports_on, record.ca, except_if=port.interface))
            continue
        if record.pa is None or record.pa.version not in devices:
            skipped.append(f"{record.routing_domain} {record.ca}: no NVGRE device for PA {record.pa}")
            continue
        objects.add(EncapRoute(table, _host(record.ca), record.vsid, str(record.pa), devices[record.pa.version]))
        if record.ca.version == 6:
            objects.update(_proxy_v6(ports_on, record.ca))
    return objects, skipped


def _remote_prefixes(table: int, prefixes: Iterable[RemotePrefix],
                     devices: Mapping[int, str]) -> tuple[set[KernelObject], list[str]]:
    """Prefixes learned from other hosts (type 5): one encap route each to its PA."""
    objects: set[KernelObject] = set()
    skipped: list[str] = []
    for prefix in prefixes:
        if prefix.pa.version not in devices:
            skipped.append(f"{prefix.routing_domain} {prefix.prefix}: no NVGRE device for PA {prefix.pa}")
            continue
        objects.add(EncapRoute(table, str(prefix.prefix), prefix.vsid, str(prefix.pa), devices[prefix.pa.version]))
    return objects, skipped


def _customer_routes(domain: RoutingDomain, table: int, routes: Iterable[CustomerRoute],
                     lookup: Callable[[Address], LookupRecord | None], catalog: Catalog,
                     devices: Mapping[int, str]) -> tuple[set[KernelObject], list[str]]:
    """The configured customer routes with a next hop: via a local appliance's port, or encapsulated to the
    next hop's host; an on-link one needs nothing."""
    objects: set[KernelObject] = set()
    skipped: list[str] = []
    for route in routes:
        metric = route.metric or DEFAULT_METRIC
        if route.next_hop is None:
            # On-link (HNV's next hop 0.0.0.0): the prefix's addresses are reached like any CA, each by its
            # lookup record (its own /32 or /128), and an address without one hits the unreachable default,
            # as HNV drops an unknown CA. Nothing to add; only a prefix outside every subnet of the domain
            # cannot work: no lookup record can exist there.
            if not any(route.prefix.subnet_of(p) for sub in domain.subnets for p in sub.prefixes
                       if p.version == route.prefix.version):
                skipped.append(f"{domain.name} {route.prefix}: on-link, but outside every subnet of the domain")
            continue
        target = lookup(route.next_hop)
        if target is not None and target.local:
            port = catalog.ports.get(target.port or "")
            if port is None:
                skipped.append(f"{domain.name} {route.prefix}: next hop {route.next_hop} has no local port")
                continue
            # a VM on this host routes the prefix (an appliance): via its CA on its port, after its /32
            objects.add(ViaRoute(table, str(route.prefix), str(route.next_hop), port.interface, metric))
            continue
        if target is None or target.pa is None or target.pa.version not in devices:
            skipped.append(f"{domain.name} {route.prefix}: next hop {route.next_hop} is not a known CA")
            continue
        # a remote next hop: the prefix goes straight to the next hop's host (the kernel cannot resolve a
        # gateway through an encap /32, so the route carries the next hop's VSID and PA itself)
        objects.add(EncapRoute(table, str(route.prefix), target.vsid, str(target.pa),
                               devices[target.pa.version], metric=metric))
    return objects, skipped
