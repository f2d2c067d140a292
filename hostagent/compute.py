"""Pure: what the agent's desired kernel state is computed from (its view: catalog, routing tables, MAC
mobility), and the computation, restricted to the routing domains a change touches."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from nvfabric.bgp.routes import MacIpRoute, Route
from nvfabric.hostagent.holders import Holders
from nvfabric.hostagent.mobility import MacState, Mobility
from nvfabric.hostagent.state import SavedState
from nvfabric.vnet import learn
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import Desired, HostIdentity, allocate_tables, desired_state
from nvfabric.vnet.model import Address, LookupRecord, RemotePrefix, RoutingDomain


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


@dataclass(frozen=True)
class Learned:
    """What the routes learned from the reflectors became, at the last reconcile."""

    records: tuple[LookupRecord, ...] = ()
    prefixes: tuple[RemotePrefix, ...] = ()


def domain_of(catalog: Catalog, vsid: int) -> str | None:
    found = catalog.subnet(vsid)
    return found[0].name if found is not None else None


def lower(pa: Address, ours: Address) -> bool:
    """`pa` wins a tie of sequences against ours (RFC 7432 section 15.1: the lower PA; IPv4 first)."""
    return (pa.version, pa.packed) < (ours.version, ours.packed)


def follow_remote(mobility: Mobility, remote: Mapping[tuple[int, str], MacIpRoute], ours: Address,
                  now: float, complete: bool = True) -> Mobility:
    """The MAC mobility decisions for our MACs that other hosts announce (RFC 7432 section 15: a higher
    sequence elsewhere is a move; on a tie the lower PA keeps it), and for those nobody else announces any
    more: a port that gave way comes back. `complete`: the learned table is whole (End-of-RIB, not headless);
    until then an absent claim may just not have arrived yet, and nothing comes back."""
    for key, route in remote.items():
        if key in mobility.macs:
            mobility = mobility.remote(key, route.mobility_seq, lower(route.next_hop, ours), now)
    if complete:
        for key in mobility.inactive() - remote.keys():
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


def compute(view: View, routes: list[Route], our_pas: Collection[Address], host: HostIdentity, before: Learned,
            dirty: Collection[str] | None) -> tuple[Desired, Learned]:
    """The desired objects of the `dirty` routing domains (None: every one), plus those whose learned inputs
    changed since `before` (a BGP batch marks the domains it touches: their records or prefixes differ)."""
    records = learn.lookup_records(view.catalog, routes, our_pas, view.mobility.inactive(), view.held())
    prefixes = learn.remote_prefixes(view.catalog, routes, our_pas)
    domains = None if dirty is None else (
        set(dirty) | _changed(before.records, records) | _changed(before.prefixes, prefixes))
    customer = {name: d.customer_routes for name, d in view.catalog.routing_domains.items()}
    desired = desired_state(view.catalog, records, prefixes, customer, host, view.tables, domains)
    return desired, Learned(tuple(records), tuple(prefixes))


def _changed(old: Iterable[Any], new: Iterable[Any]) -> set[str]:
    """Routing domains whose items (records or prefixes, each with a `routing_domain`) differ."""
    before: dict[str, set[Any]] = {}
    after: dict[str, set[Any]] = {}
    for item in old:
        before.setdefault(item.routing_domain, set()).add(item)
    for item in new:
        after.setdefault(item.routing_domain, set()).add(item)
    return {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
