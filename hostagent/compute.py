"""Pure: what the agent's desired kernel state is computed from (its view: catalog, routing tables, MAC
mobility; the learned routes, vnet/learned.py), and the computation, restricted to what a change touches.

The desired state is partitioned (vnet/desired.py `by_ca`): per routing domain a base partition (VRF, rules,
gateways, customer routes, remote prefixes), one partition per active local port and one per remote CA. A
computation takes the changed keys and returns a `Step` (the new partitions, lookup records and local ports,
as data); `Learned.swap` takes it in once the kernel did. What one change costs:
- a remote CA whose winning route changed: its own partition, O(1) (plus its IPv6 proxy entries, one per
  active port of its subnet); its domain's base only when the CA is one the base watches (a customer route's
  next hop, the address of a host prefix), then O(the base: customer routes and prefixes);
- a learned prefix: its domain's base;
- a local port touched (attached, detached, moved away or back, holding a virtual address or not): its own
  partition, O(its CAs); its CAs' remote partitions when a CA became (or stopped being) local; the base when
  it watches one of its CAs; in an IPv6 subnet, when the port came or went, the partitions of the subnet's
  other IPv6 CAs, local and remote (a proxy entry on the port for each: one kernel object per port and CA,
  inherent);
- a routing domain put or deleted (dirty): all its partitions, O(ports of the host: the catalog has no
  index by domain); put with other subnets or route targets, every learned route judged again;
- a full pass (start, resync, after an error) computes everything from scratch.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
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
    PortsOn,
    allocate_tables,
    base_partition,
    ca_partition,
    desired_state,
    devices_of,
    global_partition,
    local_port_partition,
    port_partition,
    remote_ca_partition,
    v6_prefixes,
)
from nvfabric.vnet.kernel.objects import KernelObject
from nvfabric.vnet.learned import CaKey, Change, LearnedTable, PrefixKey
from nvfabric.vnet.model import Address, LookupRecord, Network, Port, RemotePrefix, RoutingDomain, VirtualSubnet


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
    """A routing domain as its partitions were last built: what its port and remote CA partitions are judged
    against."""

    domain: RoutingDomain
    table: int
    base: Base
    ports_on: PortsOn  # its active ports in IPv6 subnets (where a CA of the subnet gets a proxy NDP entry)


@dataclass(frozen=True)
class PortState:
    """An active local port (routed here: not moved away, with at least one CA) as its partition was built."""

    domain: str
    port: Port
    subnet: VirtualSubnet
    records: tuple[LookupRecord, ...]  # its local CAs: its addresses and the virtual addresses it holds


@dataclass(frozen=True)
class Step:
    """One computation: the partitions to reconcile (only those that may have changed, or all of them on a
    full pass) and what the lookup records and local ports became, taken in by `Learned.swap` once the kernel
    has them."""

    partitions: Mapping[str, frozenset[KernelObject]]
    skipped_in: Mapping[str, tuple[str, ...]]  # of the partitions above, by partition
    conflicts_in: Mapping[str, tuple[Conflict, ...]]
    domains: Mapping[str, DomainState | None]  # the changed routing domains' states (None: the domain is gone)
    ca_names: Mapping[str, CaKey]  # the remote CA partitions above: name -> (routing domain, CA)
    records: Mapping[CaKey, tuple[LookupRecord | None, LookupRecord | None]]  # changed: (old, new); none if full
    ports: Mapping[str, PortState | None] = field(default_factory=dict)  # changed local ports (None: not routed)
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
        self.ports: dict[str, PortState] = {}  # the active local ports by name, each with a partition
        self.port_parts: dict[str, set[str]] = {}  # routing domain -> its active local ports
        self._local = 0  # local lookup records

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
        """(local, remote) lookup records (O(routing domains))."""
        return self._local, sum(len(inner) for inner in self._records.values()) - self._local

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
        for name, port in step.ports.items():
            old = self.ports.pop(name, None)
            if old is not None:
                self._local -= len(old.records)
                names = self.port_parts[old.domain]
                names.discard(name)
                if not names:
                    del self.port_parts[old.domain]
            if port is not None:
                self.ports[name] = port
                self._local += len(port.records)
                self.port_parts.setdefault(port.domain, set()).add(name)
        if step.every_record is not None:
            self._records = {d: dict(inner) for d, inner in step.every_record.items() if inner}
            return
        for (domain, ca), (_, record) in step.records.items():
            inner = self._records.setdefault(domain, {})
            _put(inner, ca, record if record is None or record.local else step.remote[(domain, ca)])
            if not inner:
                del self._records[domain]

    def by_domain(self) -> Mapping[str, frozenset[KernelObject]]:
        """The desired objects by routing domain (its base, port and remote CA partitions together) and GLOBAL:
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
        learned = self._learned
        parts = learned.parts
        if name not in parts and name not in learned.ca_parts and name not in learned.port_parts:
            raise KeyError(name)
        if name == GLOBAL:
            return parts[GLOBAL]
        cas = learned.ca_parts.get(name, ())
        ports = learned.port_parts.get(name, ())
        return parts.get(name, frozenset()).union(*(parts.get(ca_partition(name, ca), ()) for ca in cas),
                                                  *(parts.get(port_partition(name, p), ()) for p in ports))

    def __iter__(self) -> Iterator[str]:
        return iter(n for n in self._learned.parts if "/" not in n)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _put(index: dict, key: object, value: object) -> None:
    if value:
        index[key] = value
    else:
        index.pop(key, None)


def _remote(domain: str, ca: Address, route: MacIpRoute | None) -> LookupRecord | None:
    return None if route is None else LookupRecord(domain, route.vsid, ca, route.mac, route.next_hop)


def _port_state(catalog: Catalog, tables: Mapping[str, int], name: str, inactive: Collection[MacKey],
                held_by: Mapping[str, list[tuple[str, Address]]]) -> PortState | None:
    """A local port as it is routed now (vnet/learn.py lookup_records' local part, for this port): None when
    it is not (gone, moved away, no CA). O(its CAs)."""
    port = catalog.ports.get(name)
    found = catalog.subnet(port.vsid) if port is not None else None
    if port is None or found is None or found[0].name not in tables or (port.vsid, port.mac) in inactive:
        return None
    domain = found[0].name
    # (a virtual address is never a port's CA: the catalog refuses it)
    addresses = [*port.addresses, *(a for d, a in held_by.get(name, ()) if d == domain)]
    if not addresses:
        return None  # a port with no CA is not routed
    return PortState(domain, port, found[1], tuple(
        LookupRecord(domain, port.vsid, ca, port.mac, None, True, name) for ca in addresses))


def _held_by(view: View) -> dict[str, list[tuple[str, Address]]]:
    """The held virtual addresses by holder (O(held addresses): a few per routing domain)."""
    out: dict[str, list[tuple[str, Address]]] = {}
    for key, name in view.held().items():
        out.setdefault(name, []).append(key)
    return out


def compute(view: View, table: LearnedTable, host: HostIdentity, before: Learned,
            dirty: Collection[str] | None, change: Change, ports: Collection[str] = ()) -> Step:
    """The partitions that `change` (the learned winners that changed since the last swap), the `ports` (local
    ports whose routing may have changed: attached, detached, moved, holding a virtual address or not) and
    the `dirty` routing domains (put or deleted: every partition of theirs) touch; `dirty` None: a full pass,
    every partition from scratch (and those that are no more, emptied)."""
    if dirty is None:
        return _everything(view, table, host, before)
    catalog, tables, devices = view.catalog, view.tables, devices_of(host)
    inactive, held_by = view.mobility.inactive(), _held_by(view)
    parts: dict[str, frozenset[KernelObject]] = {}
    skipped_in: dict[str, tuple[str, ...]] = {}
    conflicts_in: dict[str, tuple[Conflict, ...]] = {}
    domains: dict[str, DomainState | None] = {}
    ca_names: dict[str, CaKey] = {}
    records: dict[CaKey, tuple[LookupRecord | None, LookupRecord | None]] = {}
    winners: dict[CaKey, MacIpRoute] = {}

    cas: set[CaKey] = set(change.cas)
    bases = {d for d, _ in change.prefixes}
    for domain, ca in change.cas:
        state = before.domains.get(domain)
        if state is not None and ca in state.base.watch:
            bases.add(domain)
    # (a change in a routing domain never built: built now, whole)
    named = bases | {d for d, _ in change.cas} | {
        domain_of(catalog, p.vsid) for p in (catalog.ports.get(name) for name in ports) if p is not None}
    dirty = set(dirty) | {d for d in named if d not in before.domains and d in catalog.routing_domains and d in tables}

    # routing domains gone, added or changed (subnets, route targets, table): every partition of theirs
    rebuilt: set[str] = set()
    touched = set(ports)
    for name in dirty:
        old, domain = before.domains.get(name), catalog.routing_domains.get(name)
        touched |= before.port_parts.get(name, set())
        if domain is None or name not in tables:  # gone: its base and every remote CA partition emptied
            parts[name] = frozenset()
            domains[name] = None
            for ca in before.ca_parts.get(name, ()):
                parts[ca_partition(name, ca)] = frozenset()
                ca_names[ca_partition(name, ca)] = (name, ca)
            for ca, held in before._records.get(name, {}).items():
                if type(held) is not LookupRecord or not held.local:
                    records[(name, ca)] = (before.record((name, ca)), None)
            bases.discard(name)
            continue
        bases.add(name)
        if old is None or old.domain != domain or old.table != tables[name]:
            rebuilt.add(name)
            cas |= {(name, ca) for ca in table.cas_in(name)} | {(name, ca) for ca in before.ca_parts.get(name, ())}
        vsids = {s.vsid for s in domain.subnets}  # (one pass over the host's ports: a configuration change)
        touched |= {p.name for p in catalog.ports.values() if p.vsid in vsids}

    # the local ports: their new state, the local CAs that changed, the active ports of IPv6 subnets
    changed: dict[str, tuple[PortState | None, PortState | None]] = {}
    for name in touched:
        old_port, new_port = before.ports.get(name), _port_state(catalog, tables, name, inactive, held_by)
        if old_port != new_port or (new_port is not None and new_port.domain in rebuilt):
            changed[name] = (old_port, new_port)
    local: dict[CaKey, LookupRecord | None] = {}  # (routing domain, CA) -> its local record now (None: not local)
    for old_port, _ in changed.values():
        for r in old_port.records if old_port is not None else ():
            local[(r.routing_domain, r.ca)] = None
    for _, new_port in changed.values():
        for r in new_port.records if new_port is not None else ():
            local[(r.routing_domain, r.ca)] = r
    cas |= local.keys()
    for domain, ca in local:
        state = before.domains.get(domain)
        if state is not None and ca in state.base.watch:
            bases.add(domain)  # (a customer route via it, a host prefix it takes: judged again)
    ports_on: dict[str, dict[tuple[Network, ...], tuple[tuple[str, str], ...]]] = {}
    nets_changed: dict[str, set[tuple[Network, ...]]] = {}
    for name, (old_port, new_port) in changed.items():
        entries = [(p, -1) for p in (old_port,) if p is not None] + [(p, 1) for p in (new_port,) if p is not None]
        if len(entries) == 2 and old_port is not None and new_port is not None and (
                old_port.domain, old_port.subnet, old_port.port.interface) == (
                new_port.domain, new_port.subnet, new_port.port.interface):
            continue
        for state_of, sign in entries:
            nets = v6_prefixes(state_of.subnet)
            if not nets:
                continue
            if state_of.domain not in ports_on:
                was = before.domains.get(state_of.domain)
                ports_on[state_of.domain] = dict(was.ports_on) if was is not None else {}
            on = ports_on[state_of.domain]
            entry = (name, state_of.port.interface)
            found = tuple(e for e in on.get(nets, ()) if e != entry) + ((entry,) if sign > 0 else ())
            _put(on, nets, found)
            nets_changed.setdefault(state_of.domain, set()).add(nets)
    # a port that came or went in an IPv6 subnet: a proxy NDP entry on it for every other IPv6 CA of the
    # subnet, local and remote (one kernel object per pair: inherent to proxy NDP)
    build = {name for name, (_, new_port) in changed.items() if new_port is not None}
    for domain, nets_set in nets_changed.items():
        was = before.domains.get(domain)
        for nets in nets_set:
            for peer, _ in {*ports_on[domain].get(nets, ()), *(was.ports_on.get(nets, ()) if was else ())}:
                state = changed[peer][1] if peer in changed else before.ports.get(peer)
                if state is not None and any(r.ca.version == 6 for r in state.records):
                    build.add(peer)
        cas |= {(domain, ca) for ca in table.cas6_in(domain) if any(ca in p for ns in nets_set for p in ns)}

    def record_of(key: CaKey) -> LookupRecord | None:
        """The CA's local record now, else None."""
        if key in local:
            return local[key]
        record = before.record(key)
        return record if record is not None and record.local else None

    for name in bases:
        domain = catalog.routing_domains.get(name)
        if domain is None or name not in tables:
            continue
        old = before.domains.get(name)
        remote = table.cas_in(name)

        def lookup(ca: Address, name: str = name, remote: Mapping[Address, MacIpRoute] = remote) -> LookupRecord | None:
            return record_of((name, ca)) or _remote(name, ca, remote.get(ca))

        objects, why, lost, base = base_partition(
            domain, tables[name], table.prefixes_in(name).values(), domain.customer_routes, lookup, catalog, devices)
        parts[name], skipped_in[name], conflicts_in[name] = frozenset(objects), tuple(why), tuple(lost)
        on = ports_on.get(name, old.ports_on if old is not None else {})
        domains[name] = DomainState(domain, tables[name], base, MappingProxyType(on))
        if old is not None and name not in rebuilt:
            cas |= _affected(name, old.base, base)
    for name, on in ports_on.items():
        if name not in domains and name in before.domains:
            domains[name] = replace(before.domains[name], ports_on=MappingProxyType(on))

    port_states: dict[str, PortState | None] = {name: new for name, (_, new) in changed.items()}
    for name, (old_port, new_port) in changed.items():
        if old_port is not None and (new_port is None or new_port.domain != old_port.domain):
            parts[port_partition(old_port.domain, name)] = frozenset()
    for name in build:
        port = port_states[name] if name in port_states else before.ports[name]
        state = domains.get(port.domain) or before.domains[port.domain]
        part = port_partition(port.domain, name)
        parts[part], lost = local_port_partition(state.domain, state.table, port.port, port.subnet, port.records,
                                                 state.ports_on, host)
        conflicts_in[part] = tuple(lost)

    for name, ca in cas:
        state = domains.get(name) or before.domains.get(name)
        if state is None or name not in tables or catalog.routing_domains.get(name) is None:
            continue
        key = (name, ca)
        part = ca_partition(name, ca)
        old_record = before.record(key)
        # (record_of's answer, from the one lookup of the record before)
        record = local[key] if key in local else old_record if old_record is not None and old_record.local else None
        if record is None:
            route = table.ca(key)
            record = _remote(name, ca, route)
            if route is not None:
                winners[key] = route
        if record is not None and not record.local:
            ca_names[part] = key
            parts[part], why, lost = remote_ca_partition(record, state.base, state.ports_on, devices)
            skipped_in[part], conflicts_in[part] = tuple(why), tuple(lost)
        elif ca in before.ca_parts.get(name, ()):  # (a local CA, or none: its remote partition, if any, emptied)
            ca_names[part] = key
            parts[part] = frozenset()
        if old_record != record:
            records[key] = (old_record, record)
    # a gone routing domain's local records (its ports' states above are None)
    for (name, ca), now in local.items():
        if now is None and (name, ca) not in records and name not in tables:
            old_record = before.record((name, ca))
            if old_record is not None:
                records[(name, ca)] = (old_record, None)
    return Step(parts, skipped_in, conflicts_in, domains, ca_names, records, port_states, remote=winners)


def _affected(name: str, old: Base, new: Base) -> set[CaKey]:
    """The remote CAs whose partition a rebuilt base changes: a route key the base took or gave back (a
    customer route: host prefixes)."""
    out: set[CaKey] = set()
    for key in old.strong.keys() | new.strong.keys():
        if old.strong.get(key) != new.strong.get(key):
            prefix = ipaddress.ip_network(key[3])
            if prefix.prefixlen == prefix.max_prefixlen:
                out.add((name, prefix.network_address))
    return out


def _everything(view: View, table: LearnedTable, host: HostIdentity, before: Learned) -> Step:
    """Every partition from scratch (vnet/desired.py desired_state, by remote CA and local port), and those of
    the last swap that are no more, emptied."""
    catalog, tables = view.catalog, view.tables
    names = [n for n in catalog.routing_domains if n in tables]
    inactive, held_by = view.mobility.inactive(), _held_by(view)
    ports = {name: state for name in catalog.ports
             if (state := _port_state(catalog, tables, name, inactive, held_by)) is not None}
    local: dict[str, dict[Address, LookupRecord]] = {name: {} for name in names}
    for state in ports.values():
        local[state.domain].update((r.ca, r) for r in state.records)
    records: list[LookupRecord] = []
    every: dict[str, dict[Address, LookupRecord | MacIpRoute]] = {}
    for name in names:
        records += local[name].values()
        mine: dict[Address, LookupRecord | MacIpRoute] = dict(local[name])
        for ca, r in table.cas_in(name).items():
            if ca not in local[name]:
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
        name: DomainState(catalog.routing_domains[name], tables[name], desired.bases[name],
                          MappingProxyType(dict(desired.ports_on[name]))) for name in names}
    return Step(parts, desired.skipped_in, desired.conflicts_in, domains, ca_names, {}, dict(ports), True, every)
