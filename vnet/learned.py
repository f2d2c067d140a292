"""Pure: the routes learned from the reflectors as an incremental table, for the host agent.

vnet/learn.py derives lookup records, remote prefixes and remote MACs from every learned route at once: right
for the gateway and as the reference, but O(routes) per batch, which at 100,000 remote CAs is most of a second
for one changed route. This table keeps, per route key, the import policy's verdict (vnet/policy.py `judge`)
and indexes of the winners, so that a change costs O(changed routes):

- per (routing domain, CA): the winning remote type-2 route (vnet/learn.py's rank: highest mobility sequence,
  then lower PA), what a lookup record and a virtual address's holder follow;
- per (VSID, MAC): the same, what MAC mobility follows (a MAC-only route counts here);
- per (routing domain, prefix): the winning type-5 route (lower PA), and every announcing PA (the decapsulation
  table vouches for all of them, vnet/decap.py);
- a refcount of the accepted routes' next hops (the PAs GRE is accepted from);
- the refused routes by reason, with examples (`Screened`, for status and metrics).

`apply` returns what changed as data (`Change`: old and new winner per key, next hops that came and went).
The verdicts depend on the routing domains (VSIDs, route targets, subnet prefixes and gateways), our PAs and
the provider prefixes, never on ports: a change of those `rebuilt`s the table, O(routes) (rare: a
configuration change), and a port change never does. Candidates per key are the routes of that key only (one,
two during a move), so a winner is found again in O(candidates).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from nvfabric.bgp.mac import Mac
from nvfabric.bgp.routes import MacIpRoute, PrefixRoute, Route
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.learn import prefix_rank, rank, remote_prefix
from nvfabric.vnet.model import Address, Network, RemotePrefix, RoutingDomain
from nvfabric.vnet.policy import EXAMPLES, REASONS, Judge, Refused, Screened, describe

CaKey = tuple[str, Address]  # (routing domain, CA)
MacKey = tuple[int, Mac]  # (VSID, MAC)
PrefixKey = tuple[str, Network]  # (routing domain, prefix)

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Change:
    """What applying route changes did to the winners: key -> (old, new), only keys whose winner differs."""

    cas: Mapping[CaKey, tuple[MacIpRoute | None, MacIpRoute | None]] = field(default_factory=dict)
    macs: Mapping[MacKey, tuple[MacIpRoute | None, MacIpRoute | None]] = field(default_factory=dict)
    prefixes: Mapping[PrefixKey, tuple[RemotePrefix | None, RemotePrefix | None]] = field(default_factory=dict)
    # every announcer of a prefix (not only the winner): what the decapsulation table vouches for
    announced: Mapping[PrefixKey, tuple[frozenset[RemotePrefix], frozenset[RemotePrefix]]] = field(
        default_factory=dict)
    next_hops_added: frozenset[Address] = frozenset()
    next_hops_removed: frozenset[Address] = frozenset()
    screened: bool = False  # the refused routes changed (counts or examples)
    rebuilt: bool = False  # the policy's inputs changed: every key was judged again

    def __bool__(self) -> bool:
        return bool(self.cas or self.macs or self.prefixes or self.announced or self.next_hops_added
                    or self.next_hops_removed or self.screened or self.rebuilt)

    def then(self, later: Change) -> Change:
        """This change followed by `later`, as one (old from this one, new from the later one)."""
        if not self:
            return later
        if not later:
            return self
        added = (self.next_hops_added - later.next_hops_removed) | (later.next_hops_added - self.next_hops_removed)
        removed = (self.next_hops_removed - later.next_hops_added) | (later.next_hops_removed - self.next_hops_added)
        return Change(_then(self.cas, later.cas), _then(self.macs, later.macs), _then(self.prefixes, later.prefixes),
                      _then(self.announced, later.announced), frozenset(added), frozenset(removed),
                      self.screened or later.screened, self.rebuilt or later.rebuilt)


EMPTY = Change()


def _then(first: Mapping[K, tuple[Any, Any]], later: Mapping[K, tuple[Any, Any]]) -> dict[K, tuple[Any, Any]]:
    out = dict(first)
    for key, (old, new) in later.items():
        if key in out:
            old = out[key][0]
        if old == new:
            out.pop(key, None)
        else:
            out[key] = (old, new)
    return out


class Winners(Mapping[tuple[K, V], Any], Generic[K, V]):
    """A read-only view of a two-level index (outer -> inner -> value) as one mapping of (outer, inner): a
    lookup is O(1); iterating walks the whole index (a full pass only). `best`: the value of what the index
    holds (a type-2 index holds its candidates, the winner is found on reading)."""

    def __init__(self, nested: dict[Any, dict[Any, Any]], best: Any = None) -> None:
        self._nested = nested
        self._best = best

    def __getitem__(self, key: tuple[Any, Any]) -> Any:
        held = self._nested[key[0]][key[1]]
        return held if self._best is None else self._best(held)

    def get(self, key: tuple[Any, Any], default: Any = None) -> Any:  # type: ignore[override]
        inner = self._nested.get(key[0])
        held = None if inner is None else inner.get(key[1])
        if held is None:
            return default
        return held if self._best is None else self._best(held)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and len(key) == 2 and key[1] in self._nested.get(key[0], {})

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return ((outer, inner) for outer, d in self._nested.items() for inner in d)

    def __len__(self) -> int:
        return sum(len(d) for d in self._nested.values())


class Best(Mapping[K, MacIpRoute], Generic[K]):
    """A read-only view of a type-2 index (key -> its candidates) as key -> the winning route: O(1) per
    lookup."""

    def __init__(self, index: dict[K, Any]) -> None:
        self._index = index

    def __getitem__(self, key: K) -> MacIpRoute:
        return _winner(self._index[key])

    def get(self, key: K, default: Any = None) -> Any:  # type: ignore[override]
        held = self._index.get(key)
        return default if held is None else _winner(held)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[K]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


@dataclass(frozen=True)
class _Inputs:
    """What the import policy's verdicts depend on (never the ports)."""

    domains: tuple[RoutingDomain, ...]
    our_pas: frozenset[Address]
    provider_prefixes: tuple[Network, ...] | None


class LearnedTable:
    """The learned routes with their verdicts and the winners' indexes; mutated only by `apply` (the agent's
    one owner), read through the methods below."""

    def __init__(self, catalog: Catalog, our_pas: Collection[Address],
                 provider_prefixes: Collection[Network] | None) -> None:
        self._catalog = catalog
        self._inputs = _inputs(catalog, our_pas, provider_prefixes)
        self._judge = Judge(catalog, self._inputs.provider_prefixes)
        self._routes: dict[Any, Route] = {}  # every delivered route by key (what a rebuild judges again)
        # per refusal reason: the refused routes by key, in the order they were refused (examples: the first)
        self._refused: dict[str, dict[Any, Refused]] = {r: {} for r in REASONS}
        # type-2 candidates by domain then CA, and by MAC: the route itself while it is the only one (nearly
        # always), else a `_Several` by route key (a move in progress); the winner is found when read
        # (`_winner`). One entry per CA and per MAC, each holding the route the table holds already.
        self._cas: dict[str, dict[Address, Any]] = {}
        self._cas6: dict[str, set[Address]] = {}  # the IPv6 ones among them (their proxy NDP entries follow ports)
        # by MAC alone (a VSID per MAC is the rule: a (VSID, MAC) tuple per route would cost more than the
        # entry), the VSID picked when read
        self._macs: dict[Mac, Any] = {}
        self._announcers: dict[str, dict[Network, Any]] = {}
        self._prefixes: dict[str, dict[Network, RemotePrefix]] = {}  # winners by domain, then prefix
        self._next_hops: dict[Address, int] = {}  # accepted routes per next hop

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self._routes)

    def matches(self, catalog: Catalog, our_pas: Collection[Address],
                provider_prefixes: Collection[Network] | None) -> bool:
        """The verdicts hold for these inputs (the catalog's ports do not matter)."""
        if catalog.routing_domains is self._catalog.routing_domains:
            return self._inputs.our_pas == frozenset(our_pas) and self._inputs.provider_prefixes == (
                None if provider_prefixes is None else tuple(provider_prefixes))
        return _inputs(catalog, our_pas, provider_prefixes) == self._inputs

    def routes(self) -> Mapping[Any, Route]:
        return MappingProxyType(self._routes)

    def ca(self, key: CaKey) -> MacIpRoute | None:
        inner = self._cas.get(key[0])
        return _winner(inner.get(key[1])) if inner is not None else None

    def cas(self) -> Winners[str, Address]:
        """(routing domain, CA) -> the winning remote type-2 route (vnet/learn.py remote_cas)."""
        return Winners(self._cas, _winner)

    def cas_in(self, domain: str) -> Mapping[Address, MacIpRoute]:
        return Best(self._cas.get(domain, {}))

    def cas6_in(self, domain: str) -> Collection[Address]:
        """The domain's remote IPv6 CAs (a port change in an IPv6 subnet touches their proxy NDP entries)."""
        return self._cas6.get(domain, frozenset())

    def mac(self, key: MacKey) -> MacIpRoute | None:
        return _winner(self._macs.get(key[1]), key[0])

    def macs(self) -> Mapping[MacKey, MacIpRoute]:
        """(VSID, MAC) -> the winning remote route (vnet/learn.py remote_macs)."""
        return _ByVsid(self._macs)

    def prefixes_in(self, domain: str) -> Mapping[Network, RemotePrefix]:
        """The domain's type-5 winners (vnet/learn.py remote_prefixes): one per prefix, the lower PA."""
        return MappingProxyType(self._prefixes.get(domain, {}))

    def prefixes(self) -> Iterator[RemotePrefix]:
        return (p for inner in self._prefixes.values() for p in inner.values())

    def announced(self) -> Iterator[RemotePrefix]:
        """Every announcer of every prefix (vnet/learn.py announced_prefixes)."""
        return (p for inner in self._announcers.values() for held in inner.values() for p in _values(held))

    def next_hops(self) -> Collection[Address]:
        """The next hops of the accepted routes (the PAs GRE may come from)."""
        return self._next_hops.keys()

    def accepted(self) -> Iterator[Route]:
        """Every route the import policy accepts (O(routes): a full pass only)."""
        ours = self._inputs.our_pas
        for route in self._routes.values():
            if getattr(route, "next_hop", None) in ours:
                continue
            domain, reason = self._judge(route)
            if domain is not None and reason is None:
                yield route

    def screened(self) -> Screened:
        """The refused routes, counted by reason, with the first few of each (`accepted` left empty: see
        `accepted`)."""
        counts = {reason: len(found) for reason, found in self._refused.items() if found}
        examples = tuple(r for found in self._refused.values() for r in islice(found.values(), EXAMPLES))
        return Screened((), counts, examples)

    # ------------------------------------------------------------------ changing

    def apply(self, changes: Iterable[tuple[Any, Route | None]]) -> Change:
        """Route key -> the route now known (None: gone), as bgp/client.py's RouteUpdate delivers them."""
        before_cas: dict[CaKey, MacIpRoute | None] = {}
        before_macs: dict[MacKey, MacIpRoute | None] = {}
        before_prefixes: dict[PrefixKey, tuple[RemotePrefix | None, frozenset[RemotePrefix]]] = {}
        before_hops: dict[Address, bool] = {}
        screened = False
        for key, route in changes:
            old = self._routes.get(key)
            if old == route:
                continue
            if old is not None:
                screened |= self._index(key, old, -1, before_cas, before_macs, before_prefixes, before_hops)
                del self._routes[key]
            if route is not None:
                self._routes[key] = route
                screened |= self._index(key, route, 1, before_cas, before_macs, before_prefixes, before_hops)
        return self._change(before_cas, before_macs, before_prefixes, before_hops, screened)

    def load(self, routes: Iterable[tuple[Any, Route]]) -> LearnedTable:
        """An empty table filled with these routes (key, route), as `apply` would, without noting what changed
        (everything did): at 100,000 routes that note is a winner and a key per CA and per MAC, only to be
        dropped by a caller that takes the table whole."""
        assert not self._routes, "load: the table is not empty (apply changes it)"
        for key, route in routes:  # (distinct keys: a dict's items)
            if route is not None:
                self._routes[key] = route
                self._index(key, route, 1, {}, {}, {}, {}, notes=False)
        return self

    def rebuilt(self, catalog: Catalog, our_pas: Collection[Address],
                provider_prefixes: Collection[Network] | None) -> tuple[LearnedTable, Change]:
        """A table for new policy inputs, every route judged again (O(routes)), and what that changed."""
        new = LearnedTable(catalog, our_pas, provider_prefixes).load(self._routes.items())
        return new, self.diff(new)

    def diff(self, new: LearnedTable) -> Change:
        """What differs between this table's winners and `new`'s, as a Change (O(routes))."""
        cas = _diff(dict(self.cas().items()), dict(new.cas().items()))
        macs = _diff(self.macs(), new.macs())
        prefixes = _diff(dict(Winners(self._prefixes).items()), dict(Winners(new._prefixes).items()))
        old_ann, new_ann = _announcer_sets(self), _announcer_sets(new)
        announced = {k: (old_ann.get(k, frozenset()), new_ann.get(k, frozenset()))
                     for k in old_ann.keys() | new_ann.keys() if old_ann.get(k) != new_ann.get(k)}
        return Change(cas, macs, prefixes, announced,
                      frozenset(new._next_hops.keys() - self._next_hops.keys()),
                      frozenset(self._next_hops.keys() - new._next_hops.keys()),
                      self.screened() != new.screened(), True)

    # ------------------------------------------------------------------ the indexes

    def _index(self, key: Any, route: Route, sign: int, before_cas: dict[CaKey, MacIpRoute | None],
               before_macs: dict[MacKey, MacIpRoute | None],
               before_prefixes: dict[PrefixKey, tuple[RemotePrefix | None, frozenset[RemotePrefix]]],
               before_hops: dict[Address, bool], notes: bool = True) -> bool:
        """Add (sign 1) or remove (sign -1) one route from the indexes, noting each touched key's winner
        before its first touch (unless not `notes`). Returns whether the refused routes changed."""
        next_hop = getattr(route, "next_hop", None)
        if next_hop in self._inputs.our_pas:
            return False  # our own routes: neither learned nor counted
        domain, reason = self._judge(route)
        if domain is None:
            return False  # another tenant's business
        if reason is not None:
            refused = self._refused[reason]
            if sign > 0:
                refused[key] = Refused(reason, describe(route), domain)
            else:
                refused.pop(key, None)
            return True
        assert next_hop is not None  # (an accepted route is a type-2 or type-5 route)
        if notes and next_hop not in before_hops:
            before_hops[next_hop] = next_hop in self._next_hops
        count = self._next_hops.get(next_hop, 0) + sign
        if count:
            self._next_hops[next_hop] = count
        else:
            del self._next_hops[next_hop]
        if isinstance(route, MacIpRoute):
            mac_key: MacKey = (route.vsid, route.mac)
            if notes and mac_key not in before_macs:
                before_macs[mac_key] = self.mac(mac_key)
            _route_candidate(self._macs, route.mac, key, route, sign)
            if route.ip is not None:
                ca_key: CaKey = (domain, route.ip)
                if notes and ca_key not in before_cas:
                    before_cas[ca_key] = self.ca(ca_key)
                cas = self._cas.setdefault(domain, {})
                _route_candidate(cas, route.ip, key, route, sign)
                if not cas:
                    del self._cas[domain]
                if route.ip.version == 6:
                    v6 = self._cas6.setdefault(domain, set())
                    if route.ip not in cas:
                        v6.discard(route.ip)
                    else:
                        v6.add(route.ip)
                    if not v6:
                        del self._cas6[domain]
        elif isinstance(route, PrefixRoute):
            prefix_key: PrefixKey = (domain, route.prefix)
            by_prefix = self._announcers.setdefault(domain, {})
            if notes and prefix_key not in before_prefixes:
                before_prefixes[prefix_key] = (self._prefixes.get(domain, {}).get(route.prefix),
                                               frozenset(_values(by_prefix.get(route.prefix))))
            _candidate(by_prefix, route.prefix, key, remote_prefix(domain, route), sign)
            _put(self._prefixes.setdefault(domain, {}), route.prefix, _best(by_prefix.get(route.prefix), prefix_rank))
            if not by_prefix:
                del self._announcers[domain]
            if not self._prefixes[domain]:
                del self._prefixes[domain]
        return False

    def _change(self, before_cas: dict[CaKey, MacIpRoute | None], before_macs: dict[MacKey, MacIpRoute | None],
                before_prefixes: dict[PrefixKey, tuple[RemotePrefix | None, frozenset[RemotePrefix]]],
                before_hops: dict[Address, bool], screened: bool) -> Change:
        cas = {k: (old, new) for k, old in before_cas.items() if (new := self.ca(k)) != old}
        macs = {k: (old, new) for k, old in before_macs.items() if (new := self.mac(k)) != old}
        prefixes: dict[PrefixKey, tuple[RemotePrefix | None, RemotePrefix | None]] = {}
        announced: dict[PrefixKey, tuple[frozenset[RemotePrefix], frozenset[RemotePrefix]]] = {}
        for (domain, prefix), (old, old_all) in before_prefixes.items():
            new = self._prefixes.get(domain, {}).get(prefix)
            if new != old:
                prefixes[(domain, prefix)] = (old, new)
            new_all = frozenset(_values(self._announcers.get(domain, {}).get(prefix)))
            if new_all != old_all:
                announced[(domain, prefix)] = (old_all, new_all)
        added = frozenset(h for h, had in before_hops.items() if not had and h in self._next_hops)
        removed = frozenset(h for h, had in before_hops.items() if had and h not in self._next_hops)
        return Change(cas, macs, prefixes, announced, added, removed, screened)


def _inputs(catalog: Catalog, our_pas: Collection[Address], provider_prefixes: Collection[Network] | None) -> _Inputs:
    return _Inputs(tuple(sorted(catalog.routing_domains.values(), key=lambda d: d.name)), frozenset(our_pas),
                   None if provider_prefixes is None else tuple(provider_prefixes))


def _candidate(index: dict[Any, Any], outer: Any, key: Any, value: Any, sign: int) -> None:
    """Add (sign 1) or remove a candidate of `outer`: held as one (key, value) pair while it is the only one,
    which it is for nearly every CA (a dict each would be most of the table's memory), else in a dict."""
    held = index.get(outer)
    if sign > 0:
        if held is None or (type(held) is tuple and held[0] == key):
            index[outer] = (key, value)
        elif type(held) is tuple:
            index[outer] = {held[0]: held[1], key: value}
        else:
            held[key] = value
    elif type(held) is tuple:
        if held[0] == key:
            del index[outer]
    elif held is not None:
        held.pop(key, None)
        if len(held) == 1:
            index[outer] = next(iter(held.items()))
        elif not held:
            del index[outer]


class _Several(dict):  # type: ignore[type-arg]
    """Several type-2 candidates of one index entry (a move in progress), by route key, with the best of them
    (found once per change, not at every read)."""

    __slots__ = ("best",)

    def __init__(self, routes: dict[Any, MacIpRoute]) -> None:
        super().__init__(routes)
        self.best = min(self.values(), key=rank)


def _route_candidate(index: dict[Any, Any], outer: Any, key: Any, route: MacIpRoute, sign: int) -> None:
    """Add (sign 1) or remove a type-2 candidate of `outer`: held as the route itself while it is the only
    one, else in a `_Several` by route key."""
    held = index.get(outer)
    if sign > 0:
        if held is None or (type(held) is not _Several and held.key == key):
            index[outer] = route
        elif type(held) is not _Several:
            index[outer] = _Several({held.key: held, key: route})
        else:
            held[key] = route
            held.best = min(held.values(), key=rank)
    elif type(held) is not _Several:
        if held is not None and held.key == key:
            del index[outer]
    else:
        held.pop(key, None)
        if len(held) == 1:
            index[outer] = next(iter(held.values()))
        elif not held:
            del index[outer]
        else:
            held.best = min(held.values(), key=rank)


def _winner(held: Any, vsid: int | None = None) -> MacIpRoute | None:
    """The winning route of a type-2 index entry (vnet/learn.py's rank), among those of `vsid` if given."""
    if held is None:
        return None
    if type(held) is not _Several:
        return held if vsid is None or held.vsid == vsid else None
    if vsid is None or held.best.vsid == vsid:
        return held.best
    return min((r for r in held.values() if r.vsid == vsid), key=rank, default=None)


class _ByVsid(Mapping[MacKey, MacIpRoute]):
    """The MAC index (MAC -> its candidates, of any VSID) as (VSID, MAC) -> the winning route."""

    def __init__(self, index: dict[Mac, Any]) -> None:
        self._index = index

    def __getitem__(self, key: MacKey) -> MacIpRoute:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def get(self, key: MacKey, default: Any = None) -> Any:  # type: ignore[override]
        found = _winner(self._index.get(key[1]), key[0])
        return default if found is None else found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and len(key) == 2 and self.get(key) is not None  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[MacKey]:
        for mac, held in self._index.items():
            if type(held) is not _Several:
                yield held.vsid, mac
            else:
                yield from ((vsid, mac) for vsid in dict.fromkeys(r.vsid for r in held.values()))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _values(held: Any) -> Iterable[Any]:
    if held is None:
        return ()
    return (held[1],) if type(held) is tuple else held.values()


def _best(held: Any, key: Any) -> Any:
    if held is None:
        return None
    if type(held) is tuple:
        return held[1]
    return min(held.values(), key=key)


def _put(index: dict[Any, Any], key: Any, value: Any) -> None:
    if value is None:
        index.pop(key, None)
    else:
        index[key] = value


def _diff(old: Mapping[K, V], new: Mapping[K, V]) -> dict[K, tuple[V | None, V | None]]:
    return {k: (old.get(k), new.get(k)) for k in old.keys() | new.keys() if old.get(k) != new.get(k)}


def _announcer_sets(table: LearnedTable) -> dict[PrefixKey, frozenset[RemotePrefix]]:
    return {(domain, prefix): frozenset(_values(held))
            for domain, inner in table._announcers.items() for prefix, held in inner.items()}
