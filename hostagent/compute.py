"""Pure: what the agent's desired kernel state is computed from (its view: catalog, routing tables, MAC
mobility; the learned routes, vnet/learned.py), and the computation, restricted to what a change touches.

The desired state is partitioned (vnet/desired.py `by_ca`): per routing domain a base partition (VRF, rules,
ports, local CAs, customer routes, remote prefixes) and one partition per remote CA. A computation takes the
changed keys and returns a `Step` (the new partitions and lookup records, as data); `Learned.swap` takes it
in once the kernel did. What one change costs:
- a remote CA whose winning route changed: its own partition, O(1) (plus its IPv6 proxy entries, one per
  active port of its subnet); its domain's base only when the CA is one the base watches (a customer route's
  next hop, the address of a learned host prefix), then O(the base);
- a learned prefix: its domain's base;
- a routing domain the catalog, MAC mobility or a held address changed (dirty): its local records and base,
  O(ports of the host: the catalog has no index by domain), and the remote CAs whose partition depends on
  what changed: a CA that became (or stopped being) local, a key a customer route or local CA took or gave
  back, the IPv6 remote CAs of a subnet whose active ports changed (one proxy entry per port and CA is one
  kernel object each: inherent); a routing domain added or changed (its subnets, route targets...) rebuilds
  all its partitions;
- a full pass (start, resync, after an error) computes everything from scratch.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from nvfabric.bgp.routes import MacIpRoute
from nvfabric.hostagent.holders import Holders
from nvfabric.hostagent.mobility import MacKey, MacState, Mobility
from nvfabric.hostagent.state import SavedState
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import (
    GLOBAL,
    Base,
    Conflict,
    HostIdentity,
    allocate_tables,
    base_partition,
    ca_partition,
    desired_state,
    devices_of,
    global_partition,
    remote_ca_partition,
)
from nvfabric.vnet.kernel.objects import KernelObject
from nvfabric.vnet.learned import CaKey, Change, LearnedTable, PrefixKey
from nvfabric.vnet.model import Address, LookupRecord, Port, RemotePrefix, RoutingDomain, VirtualSubnet


@dataclass
class View:
    """Everything the desired state is computed from, swapped as a whole."""

    catalog: Catalog
    tables: dict[str, int]
    mobility: Mobility = field(default_factory=Mobility)
    holders: Holders = field(default_factory=Holders)  # virtual addresses held here (hostagent/holders.py)

    @classmethod
    def first(cls, domains: Iterable[RoutingDomain], saved: SavedState | None) -> View:
        """The configured routing domains, or what the state directory kept from the previous run."""
        if saved is None:
            catalog = Catalog.build({d.name: d for d in domains}, {})
            return cls(catalog, allocate_tables(catalog.routing_domains, {}))
        # the sequences we announced before the restart (a restored sequence is not a move); every local
        # port's MAC is tracked, so a higher sequence elsewhere is noticed after a restart too
        seqs = {(p.vsid, p.mac): saved.seqs.get((p.vsid, p.mac), 0) for p in saved.catalog.ports.values()}
        mobility = Mobility(MappingProxyType({k: MacState(seq=s) for k, s in seqs.items()}))
        # the virtual addresses held before the restart, with the sequences announced then
        holders = Holders(MappingProxyType(dict(saved.holders))).prune(saved.catalog, ())
        return cls(saved.catalog, allocate_tables(saved.catalog.routing_domains, saved.tables), mobility, holders)

    def saved(self) -> SavedState:
        return SavedState(self.catalog, self.tables, self.mobility.seqs(), dict(self.holders.held))

    def held(self) -> dict[tuple[str, Address], str]:
        """The virtual addresses a local port holds: (routing domain, address) -> port name."""
        return {key: port for key, (port, _seq) in self.holders.holding().items()}


def domain_of(catalog: Catalog, vsid: int) -> str | None:
    found = catalog.subnet(vsid)
    return found[0].name if found is not None else None


def lower(pa: Address, ours: Address) -> bool:
    """`pa` wins a tie of sequences against ours (RFC 7432 section 15.1: the lower PA; IPv4 first)."""
    return (pa.version, pa.packed) < (ours.version, ours.packed)


def follow_remote(mobility: Mobility, remote: Mapping[MacKey, MacIpRoute], ours: Address,
                  now: float, complete: bool = True, keys: Iterable[MacKey] | None = None) -> Mobility:
    """The MAC mobility decisions for our MACs that other hosts announce (RFC 7432 section 15: a higher
    sequence elsewhere is a move; on a tie the lower PA keeps it), and for those nobody else announces any
    more: a port that gave way comes back. `complete`: the learned table is whole (End-of-RIB, not headless);
    until then an absent claim may just not have arrived yet, and nothing comes back. `keys`: the MACs whose
    remote winner changed (None: every local MAC is looked up); O(keys + MACs that gave way)."""
    for key in list(mobility.macs if keys is None else keys):
        route = remote.get(key)
        if route is not None and key in mobility.macs:
            mobility = mobility.remote(key, route.mobility_seq, lower(route.next_hop, ours), now)
    if complete:
        for key in mobility.inactive():
            if key not in remote:
                mobility = mobility.withdrawn(key)
    return mobility


def follow_remote_holders(holders: Holders, remote: Mapping[tuple[str, Address], MacIpRoute],
                          ours: Address, now: float) -> Holders:
    """Virtual addresses we hold that another host announces with a higher sequence (or the same from a lower
    PA, vnet/learn.py's tie-break) are held there now: we stop holding."""
    for key in holders.holding():
        route = remote.get(key)
        if route is not None:
            holders = holders.remote(key, route.mobility_seq, lower(route.next_hop, ours), now)
    return holders


# ---------------------------------------------------------------------- the desired state, by change


@dataclass(frozen=True)
class DomainState:
    """A routing domain as its partitions were last built: what its remote CA partitions are judged against."""

    domain: RoutingDomain
    table: int
    local: Mapping[Address, LookupRecord]  # its local CAs: active ports' and held addresses
    ports: tuple[tuple[Port, VirtualSubnet], ...]  # its active ports
    base: Base


@dataclass(frozen=True)
class Step:
    """One computation: the partitions to reconcile (only those that may have changed, or all of them on a
    full pass) and what the lookup records became, taken in by `Learned.swap` once the kernel has them."""

    partitions: Mapping[str, frozenset[KernelObject]]
    skipped_in: Mapping[str, tuple[str, ...]]  # of the partitions above, by partition
    conflicts_in: Mapping[str, tuple[Conflict, ...]]
    domains: Mapping[str, DomainState | None]  # the rebuilt bases (None: the domain is gone)
    ca_names: Mapping[str, CaKey]  # the remote CA partitions above: name -> (routing domain, CA)
    records: Mapping[CaKey, tuple[LookupRecord | None, LookupRecord | None]]  # changed: (old, new); none if full
    full: bool = False
    # a full pass: every record (a remote one as the route it is made from, `Learned`'s form)
    every_record: Mapping[str, Mapping[Address, LookupRecord | MacIpRoute]] | None = None
    # the routes the changed remote records above are made from (what `Learned` holds of them)
    remote: Mapping[CaKey, MacIpRoute] = field(default_factory=dict)


@dataclass(frozen=True)
class Applied:
    """What one swap changed in what was learned, as data, for who follows by difference (the decapsulation
    table): lookup records (local and remote), every announcer of a learned prefix, the next hops of the
    accepted routes. `full`: a full pass, after which nothing is given: everything may have changed (the learned
    table was built again, every record computed again): read them whole."""

    records: Mapping[CaKey, tuple[LookupRecord | None, LookupRecord | None]] = field(default_factory=dict)
    announced: Mapping[PrefixKey, tuple[frozenset[RemotePrefix], frozenset[RemotePrefix]]] = field(
        default_factory=dict)
    next_hops_added: frozenset[Address] = frozenset()
    next_hops_removed: frozenset[Address] = frozenset()
    full: bool = False


class Learned:
    """What the learned routes and the view became at the last swap: the lookup records, the partitions as
    reconciled, each routing domain's base. Mutated only by `swap`. A remote lookup record is held as the
    route it is made from (the learned table's, held there anyway) and made when read: a host at fabric
    scale has 100,000 of them, read one at a time per change or all at once by a full pass."""

    def __init__(self) -> None:
        self._records: dict[str, dict[Address, LookupRecord | MacIpRoute]] = {}
        self.parts: dict[str, frozenset[KernelObject]] = {}  # non-empty partitions by name
        self.skipped_in: dict[str, tuple[str, ...]] = {}
        self.conflicts_in: dict[str, tuple[Conflict, ...]] = {}
        self.domains: dict[str, DomainState] = {}
        self.ca_parts: dict[str, set[Address]] = {}  # routing domain -> CAs with a partition

    @property
    def records(self) -> list[LookupRecord]:
        """Every lookup record (O(records): for a full pass or an API read)."""
        return list(_Records(self._records))

    def every_record(self) -> Collection[LookupRecord]:
        """Every lookup record as a view (O(1) to take, O(records) to read): the decapsulation table reads
        it only when it builds from scratch."""
        return _Records(self._records)

    def record(self, key: CaKey) -> LookupRecord | None:
        inner = self._records.get(key[0])
        held = inner.get(key[1]) if inner is not None else None
        return held if held is None or type(held) is LookupRecord else _remote(key[0], key[1], held)

    def counts(self) -> tuple[int, int]:
        """(local, remote) lookup records (O(routing domains + local CAs))."""
        local = sum(len(s.local) for s in self.domains.values())
        return local, sum(len(inner) for inner in self._records.values()) - local

    def swap(self, step: Step) -> None:
        if step.full:
            self.__init__()  # type: ignore[misc]
        for name, objects in step.partitions.items():
            _put(self.parts, name, objects)
            _put(self.skipped_in, name, step.skipped_in.get(name))
            _put(self.conflicts_in, name, step.conflicts_in.get(name))
            key = step.ca_names.get(name)
            if key is not None:
                cas = self.ca_parts.setdefault(key[0], set())
                if objects or name in self.skipped_in or name in self.conflicts_in:
                    cas.add(key[1])
                else:
                    cas.discard(key[1])
                    if not cas:
                        del self.ca_parts[key[0]]
        for name, state in step.domains.items():
            _put(self.domains, name, state)
        if step.every_record is not None:
            self._records = {d: dict(inner) for d, inner in step.every_record.items() if inner}
            return
        for (domain, ca), (_, record) in step.records.items():
            inner = self._records.setdefault(domain, {})
            _put(inner, ca, record if record is None or record.local else step.remote[(domain, ca)])
            if not inner:
                del self._records[domain]

    def by_domain(self) -> Mapping[str, frozenset[KernelObject]]:
        """The desired objects by routing domain (its base and remote CA partitions together) and GLOBAL:
        what trace (hostagent/trace.py) reads."""
        return ByDomain(self)


class _Records(Collection[LookupRecord]):
    """`Learned`'s lookup records, read through."""

    def __init__(self, records: Mapping[str, Mapping[Address, LookupRecord | MacIpRoute]]) -> None:
        self._records = records

    def __iter__(self) -> Iterator[LookupRecord]:
        return (r if type(r) is LookupRecord else _remote(domain, ca, r)  # type: ignore[misc]
                for domain, inner in self._records.items() for ca, r in inner.items())

    def __len__(self) -> int:
        return sum(len(inner) for inner in self._records.values())

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, LookupRecord):
            return False
        inner = self._records.get(item.routing_domain)
        held = inner.get(item.ca) if inner is not None else None
        if held is None or type(held) is LookupRecord:
            return held == item
        return _remote(item.routing_domain, item.ca, held) == item


class ByDomain(Mapping[str, frozenset[KernelObject]]):
    """`Learned`'s partitions by routing domain; a lookup is O(the domain's objects)."""

    def __init__(self, learned: Learned) -> None:
        self._learned = learned

    def __getitem__(self, name: str) -> frozenset[KernelObject]:
        parts = self._learned.parts
        if name not in parts and name not in self._learned.ca_parts:
            raise KeyError(name)
        if name == GLOBAL:
            return parts[GLOBAL]
        cas = self._learned.ca_parts.get(name, ())
        return parts.get(name, frozenset()).union(*(parts.get(ca_partition(name, ca), ()) for ca in cas))

    def __iter__(self) -> Iterator[str]:
        return iter(n for n in self._learned.parts if "/" not in n)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _put(index: dict, key: object, value: object) -> None:
    if value:
        index[key] = value
    else:
        index.pop(key, None)


def _locals(catalog: Catalog, names: Collection[str], inactive: Collection[MacKey],
            held: Mapping[tuple[str, Address], str]
            ) -> dict[str, tuple[dict[Address, LookupRecord], tuple[tuple[Port, VirtualSubnet], ...]]]:
    """The local lookup records and active ports of these routing domains (vnet/learn.py lookup_records'
    local part): one pass over the catalog's ports."""
    records: dict[str, dict[Address, LookupRecord]] = {name: {} for name in names}
    subnets: dict[str, VirtualSubnet] = {}
    for port in catalog.ports.values():
        found = catalog.subnet(port.vsid)
        if found is None or found[0].name not in records or (port.vsid, port.mac) in inactive:
            continue
        subnets[port.name] = found[1]
        for ca in port.addresses:
            records[found[0].name][ca] = LookupRecord(found[0].name, port.vsid, ca, port.mac, None, True, port.name)
    for (domain, address), name in held.items():
        port = catalog.ports.get(name)
        if domain in records and port is not None and (port.vsid, port.mac) not in inactive:
            records[domain][address] = LookupRecord(domain, port.vsid, address, port.mac, None, True, name)
            found = catalog.subnet(port.vsid)
            if found is not None:
                subnets.setdefault(name, found[1])
    active = {r.port for local in records.values() for r in local.values()}  # a port with no CA is not routed
    ports: dict[str, list[tuple[Port, VirtualSubnet]]] = {name: [] for name in names}
    for port in catalog.ports.values():
        if port.name in active and port.name in subnets:
            found = catalog.subnet(port.vsid)
            if found is not None and found[0].name in ports:
                ports[found[0].name].append((port, subnets[port.name]))
    return {name: (local, tuple(ports[name])) for name, local in records.items()}


def _remote(domain: str, ca: Address, route: MacIpRoute | None) -> LookupRecord | None:
    return None if route is None else LookupRecord(domain, route.vsid, ca, route.mac, route.next_hop)


def compute(view: View, table: LearnedTable, host: HostIdentity, before: Learned,
            dirty: Collection[str] | None, change: Change) -> Step:
    """The partitions that `change` (the learned winners that changed since the last swap) and the `dirty`
    routing domains (the catalog, MAC mobility or held addresses changed there) touch; None: a full pass,
    every partition from scratch (and those that are no more, emptied)."""
    if dirty is None:
        return _everything(view, table, host, before)
    catalog, tables, devices = view.catalog, view.tables, devices_of(host)
    inactive, held = view.mobility.inactive(), view.held()
    parts: dict[str, frozenset[KernelObject]] = {}
    skipped_in: dict[str, tuple[str, ...]] = {}
    conflicts_in: dict[str, tuple[Conflict, ...]] = {}
    domains: dict[str, DomainState | None] = {}
    ca_names: dict[str, CaKey] = {}
    records: dict[CaKey, tuple[LookupRecord | None, LookupRecord | None]] = {}
    winners: dict[CaKey, MacIpRoute] = {}

    cas: set[CaKey] = set(change.cas)
    bases = set(dirty) | {d for d, _ in change.prefixes}
    for domain, ca in change.cas:
        state = before.domains.get(domain)
        if state is not None and ca in state.base.watch:
            bases.add(domain)
    rebuilt: set[str] = set()  # domains new or changed: every partition built again
    wanted = [d for d in dirty if d in catalog.routing_domains and d in tables]
    fresh = _locals(catalog, wanted, inactive, held) if wanted else {}  # (a BGP change: no pass over the ports)
    for name in dirty:
        old = before.domains.get(name)
        if name not in fresh:  # gone: its base and every remote CA partition emptied, its records dropped
            parts[name] = frozenset()
            domains[name] = None
            for ca in before.ca_parts.get(name, ()):
                parts[ca_partition(name, ca)] = frozenset()
                ca_names[ca_partition(name, ca)] = (name, ca)
            for ca in before._records.get(name, {}):
                records[(name, ca)] = (before.record((name, ca)), None)
            bases.discard(name)
            continue
        local = fresh[name][0]
        if old is None or old.domain != catalog.routing_domains[name] or old.table != tables[name]:
            rebuilt.add(name)
            cas |= {(name, ca) for ca in table.cas_in(name)} | {(name, ca) for ca in before.ca_parts.get(name, ())}
            cas |= {(name, ca) for ca in local.keys() | (old.local.keys() if old is not None else ())}
        else:
            cas |= {(name, ca) for ca in old.local.keys() | local.keys() if old.local.get(ca) != local.get(ca)}

    for name in bases:
        domain = catalog.routing_domains.get(name)
        if domain is None or name not in tables:
            continue
        old = before.domains.get(name)
        local: Mapping[Address, LookupRecord]
        if name in fresh:
            local, ports = fresh[name]
        elif old is not None:
            local, ports = old.local, old.ports
        else:  # (a learned change for a domain never built: built now)
            local, ports = _locals(catalog, [name], inactive, held)[name]
            rebuilt.add(name)
            cas |= {(name, ca) for ca in table.cas_in(name)} | {(name, ca) for ca in local}
        remote = table.cas_in(name)

        def lookup(ca: Address, local: Mapping[Address, LookupRecord] = local, name: str = name,
                   remote: Mapping[Address, MacIpRoute] = remote) -> LookupRecord | None:
            return local.get(ca) or _remote(name, ca, remote.get(ca))

        objects, why, lost, base = base_partition(
            domain, tables[name], ports, local.values(), table.prefixes_in(name).values(), domain.customer_routes,
            lookup, catalog, host, devices)
        parts[name], skipped_in[name], conflicts_in[name] = frozenset(objects), tuple(why), tuple(lost)
        domains[name] = DomainState(domain, tables[name], local, ports, base)
        if old is not None and name not in rebuilt:
            cas |= _affected(name, old.base, base, table.cas6_in(name))

    for name, ca in cas:
        state = domains.get(name) or before.domains.get(name)
        if state is None or name not in tables or catalog.routing_domains.get(name) is None:
            continue
        part = ca_partition(name, ca)
        ca_names[part] = (name, ca)
        record = state.local.get(ca)
        if record is None:
            route = table.ca((name, ca))
            record = _remote(name, ca, route)
            if route is not None:
                winners[(name, ca)] = route
                parts[part], why, lost = remote_ca_partition(record, state.base, devices)
                skipped_in[part], conflicts_in[part] = tuple(why), tuple(lost)
            else:
                parts[part] = frozenset()
        else:
            parts[part] = frozenset()
        old_record = before.record((name, ca))
        if old_record != record:
            records[(name, ca)] = (old_record, record)
    return Step(parts, skipped_in, conflicts_in, domains, ca_names, records, remote=winners)


def _affected(name: str, old: Base, new: Base, remote6: Collection[Address]) -> set[CaKey]:
    """The remote CAs whose partition a rebuilt base changes: a route key the base took or gave back (a
    customer route, a local CA: host prefixes), the IPv6 CAs of a subnet whose active ports changed."""
    out: set[CaKey] = set()
    for key in old.strong.keys() | new.strong.keys():
        if old.strong.get(key) != new.strong.get(key):
            prefix = ipaddress.ip_network(key[3])
            if prefix.prefixlen == prefix.max_prefixlen:
                out.add((name, prefix.network_address))
    nets = [n for n in old.ports_on.keys() | new.ports_on.keys()
            if n and old.ports_on.get(n) != new.ports_on.get(n)]
    if nets:  # O(the domain's remote IPv6 CAs): a port came or went in a subnet with IPv6 prefixes
        out |= {(name, ca) for ca in remote6 if any(ca in p for ns in nets for p in ns)}
    return out


def _everything(view: View, table: LearnedTable, host: HostIdentity, before: Learned) -> Step:
    """Every partition from scratch (vnet/desired.py desired_state, by remote CA), and those of the last
    swap that are no more, emptied."""
    catalog, tables = view.catalog, view.tables
    names = [n for n in catalog.routing_domains if n in tables]
    fresh = _locals(catalog, names, view.mobility.inactive(), view.held())
    records: list[LookupRecord] = []
    every: dict[str, dict[Address, LookupRecord | MacIpRoute]] = {}
    for name in names:
        local = fresh[name][0]
        records += local.values()
        mine: dict[Address, LookupRecord | MacIpRoute] = dict(local)
        for ca, r in table.cas_in(name).items():
            if ca not in local:
                records.append(LookupRecord(name, r.vsid, ca, r.mac, r.next_hop))
                mine[ca] = r
        if mine:
            every[name] = mine
    customer = {name: d.customer_routes for name, d in catalog.routing_domains.items()}
    desired = desired_state(catalog, records, table.prefixes(), customer, host, tables, names, by_ca=True)
    parts = dict(desired.partitions)
    parts[GLOBAL] = global_partition(host) if GLOBAL not in parts else parts[GLOBAL]
    for name in before.parts.keys() - parts.keys():
        parts[name] = frozenset()
    ca_names = {ca_partition(r.routing_domain, r.ca): (r.routing_domain, r.ca) for r in records if not r.local}
    domains: dict[str, DomainState | None] = {
        name: DomainState(catalog.routing_domains[name], tables[name], fresh[name][0], fresh[name][1],
                          desired.bases[name]) for name in names}
    return Step(parts, desired.skipped_in, desired.conflicts_in, domains, ca_names, {}, True, every)
