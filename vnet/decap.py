"""Decapsulation that delivers only what the control plane vouches for: the nftables table `inet nvfabric`,
shared by the host agent and the gateway (each feeds it its desired state; docs/dataplane.md, "What a
received NVGRE packet must prove").

Every GRE packet addressed to this host is judged on its OUTER packet, in the input hook at priority raw,
before the GRE stack reads it, in this order (each drop counted by its reason, a named counter):

0. A gateway's GRE sites: IP in GRE (protocol 0x0800 or 0x86dd, never 0x6558, no flags but K) that is exactly
   what one site's tunnel takes, (outer source, outer destination, key) = the tunnel's (remote, local, key)
   (sets `site4`, `site6`; without a key `site4nk`, `site6nk`), is accepted here and left to that tunnel. Any
   other GRE goes on to the NVGRE checks below and is dropped there: the kernel gives IPv6 GRE that no tunnel
   matches to the flow-based ip6gretap device whatever its protocol, which would read an attacker's payload as
   an Ethernet frame into a tenant. Empty on hosts.

1. `unknown_pa`: its outer source is not a provider address the fabric taught us (sets `pa4`, `pa6`).
2. `not_nvgre`: not RFC 7637 NVGRE as we parse it: IPv4 options or IPv6 extension headers (the fixed offsets
   below would read the wrong bytes), flags other than K (checksum, sequence, version), protocol not 0x6558.
3. The FlowID (low byte of the key) is zeroed when it is not zero: a sender may set it (RFC 7637), the
   receiver must ignore it, and the `tun_id VSID<<8` rules (and the gateway's flower `enc_key_id`) match
   the whole key. Only then: ours send FlowID 0, and a write into the packet costs on every packet.
4. `unknown_vsid`: the key is not one of the VSIDs this host or gateway serves (map `vsid`: key -> the
   routing domain's table number). The packet's mark is set to that number: the routing domain's identity
   for the next check (and the same mark vnet/vrfmark.py gives packets entering the domain from a port).
5. `not_ip`: the inner frame is not IPv4 or IPv6 (ARP and the rest are never carried).
6. `not_vouched`: a lookup of (outer source PA . routing domain . inner source) per outer/inner family
   pair, first in a hash set of exact addresses (`h44`, `h46`, `h64`, `h66`), then in an interval set of
   prefixes (`v44`, `v46`, `v64`, `v66`). Why two: nearly every element is one CA, and a concatenated
   interval set (nft's pipapo) costs per packet with the number of its elements (bitmaps scanned per
   field; without AVX2 the generic path), a hash set does not; the few prefixes stay in the interval set,
   which a packet from a CA never reaches. What is vouched for:
   - a lookup record "CA Y of routing domain D is at PA X" -> (X, D, Y/32 or /128);
   - a prefix announced by X in D (a type-5 route, e.g. a gateway's default route) -> (X, D, prefix);
   - a customer route of D through a CA at X (an appliance behind it) -> (X, D, prefix).
   The routing domain, not the VSID in the key: a sender encapsulates with the DESTINATION's VSID, so a
   packet from CA Y of VSID 5001 to a VM of VSID 5002 (one routing domain, routed between its subnets)
   carries key 5002<<8; a prefix is vouched in its routing domain for the same reason.
   Counted `vouched` when it passes.

Elements are kept non-overlapping (the kernel's concatenated interval sets refuse an element that
overlaps another): a CA inside a prefix vouched at the same PA in the same domain is covered by the
prefix and is not an element of its own (`maximal`). An element lives in exactly one set: a host (/32,
/128) in the hash set, a wider prefix in the interval set.

Written like vnet/vrfmark.py's table: the first write replaces the whole table in one transaction, then
only set and map elements change, in one transaction per change (a remote CA arriving is one element);
the chains, their rules and counters are never rewritten. The agent finds those elements by difference
(`DecapIndex`: what each element is vouched by, counted), in O(the change) whatever the table's size; the
whole table from its inputs (`decap_filter`) is the reference, used at the start and checked at each
periodic resync. At start the agent reads the table back
(`DecapTable.read`) and writes only the difference: the table stays while the agent is away, so a restart
never leaves a window without it.

In nft's own language, not its JSON: nft 1.0.6's JSON cannot declare a set `typeof` raw payloads (the inner
source is one), and the same text serves the whole table and the element changes.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from prometheus_client.core import CounterMetricFamily

from nvfabric.vnet.model import Address, CustomerRoute, LookupRecord, Network, RemotePrefix
from nvfabric.vnet.nftables import FAMILY, Nft, NftError, element_address, element_network

TABLE = "nvfabric"
VSID_MAP = "vsid"
# The served keys again, as a plain set: the kernel of Debian 12 (6.1) refuses a map used as a set ("is the
# key in it?"), so the unknown-VSID check has a set of its own; a VSID change writes one element in each.
VSID_SET = "vsids"
PA_SETS = {4: "pa4", 6: "pa6"}
# A gateway's GRE sites' tunnels (gateway/dataplane.py), step 0 above: keyed ones by (remote . local . key),
# keyless ones by (remote . local); hosts have none.
SITE_SETS = {4: "site4", 6: "site6"}
SITE_KEYLESS_SETS = {4: "site4nk", 6: "site6nk"}
SITE_PROTOCOLS = "{ 0x0800, 0x86dd }"
# The table's layout, kept as the comment of the input chain's first rule: a table read back without it was
# written by an older agent or gateway (other rules) and is replaced, not adopted
LAYOUT = "nvfabric decapsulation 2"


class SiteTunnel(NamedTuple):
    """A GRE site's tunnel as the kernel tells it apart: the site's address, the gateway's, the key (None: none)."""

    remote: Address
    local: Address
    key: int | None
# drop reasons in the order they are judged, then the counter of what passed
REASONS = ("unknown_pa", "not_nvgre", "unknown_vsid", "not_ip", "not_vouched")
PASSED = "vouched"
ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD

# Raw offsets (bits from the outer network header) by outer family: the GRE flags and protocol, the key, the
# inner Ethertype and the inner source for IPv4 and IPv6. IPv4: 20-byte header, GRE at byte 20 (key at 24,
# FlowID at 27), inner Ethernet at 28 (type at 40), inner IP at 42 (IPv4 source at 54, IPv6 source at 50).
# IPv6: 40-byte header, everything 20 bytes later.
_OFFSETS = {
    4: {"flags": 160, "proto": 176, "key": 192, "flow": 216, "ethertype": 320, 4: 432, 6: 400},
    6: {"flags": 320, "proto": 336, "key": 352, "flow": 376, "ethertype": 480, 4: 592, 6: 560},
}
_SADDR = {4: "ip saddr", 6: "ip6 saddr"}
_DADDR = {4: "ip daddr", 6: "ip6 daddr"}
_BITS = {4: 32, 6: 128}



class Element(NamedTuple):
    """One vouched (sender's PA, routing domain, inner source prefix), all integers: 100,000 of these are
    built, hashed and compared on every change, and ipaddress objects hash and compare in Python, ten times
    slower."""

    pa_version: int
    pa_int: int
    mark: int  # the routing domain's table number
    version: int  # of the inner source
    first: int  # the prefix's first address
    length: int  # its prefix length

    @classmethod
    def of(cls, pa: Address, mark: int, prefix: Network) -> Element:
        return cls(pa.version, int(pa), mark, prefix.version, int(prefix.network_address), prefix.prefixlen)

    @classmethod
    def host(cls, pa: Address, mark: int, ca: Address) -> Element:
        return cls(pa.version, int(pa), mark, ca.version, int(ca), _BITS[ca.version])

    @property
    def pa(self) -> Address:
        return ipaddress.IPv4Address(self.pa_int) if self.pa_version == 4 else ipaddress.IPv6Address(self.pa_int)

    @property
    def last(self) -> int:
        return self.first | ((1 << (_BITS[self.version] - self.length)) - 1)

    @property
    def prefix(self) -> Network:
        cls = ipaddress.IPv4Network if self.version == 4 else ipaddress.IPv6Network
        return cls((self.first, self.length))

    def covers(self, address: Address) -> bool:
        return address.version == self.version and self.first <= int(address) <= self.last


def set_name(outer: int, inner: int) -> str:
    """The interval set of prefixes for an outer/inner family pair."""
    return f"v{outer}{inner}"


def host_set_name(outer: int, inner: int) -> str:
    """The hash set of exact addresses (one CA each) for an outer/inner family pair."""
    return f"h{outer}{inner}"


def _set_of(e: Element) -> str:
    is_host = e.length == _BITS[e.version]
    return (host_set_name if is_host else set_name)(e.pa_version, e.version)


_VOUCHED_SETS = tuple(name(o, i) for o in (4, 6) for i in (4, 6) for name in (host_set_name, set_name))


@dataclass(frozen=True)
class DecapFilter:
    """What the table holds: the provider addresses GRE is accepted from, the VSIDs served (VSID -> the
    routing domain's table number) and the vouched elements (maximal: none inside another of its PA and
    domain)."""

    pas: frozenset[Address] = frozenset()
    vsids: Mapping[int, int] = field(default_factory=dict)
    vouched: frozenset[Element] = frozenset()
    sites: frozenset[SiteTunnel] = frozenset()  # the GRE sites' tunnels

    def __hash__(self) -> int:
        return hash((self.pas, tuple(sorted(self.vsids.items())), self.vouched, self.sites))

    def judge(self, pa: Address, key: int, inner_ethertype: int, source: Address | None) -> str:
        """Pure: what the table does with an arriving NVGRE packet (the agent's trace): a reason from
        REASONS, or PASSED."""
        if pa not in self.pas:
            return "unknown_pa"
        mark = self.vsids.get(key >> 8)
        if mark is None:
            return "unknown_vsid"
        if inner_ethertype not in (ETH_IPV4, ETH_IPV6) or source is None:
            return "not_ip"
        if any(e.pa == pa and e.mark == mark and e.covers(source) for e in self.vouched):
            return PASSED
        return "not_vouched"


def vouched(records: Iterable[LookupRecord], prefixes: Iterable[RemotePrefix],
            customer_routes: Mapping[str, Iterable[CustomerRoute]], tables: Mapping[str, int]) -> set[Element]:
    """Pure: every (PA, routing domain's table number, inner source prefix) the control plane vouches for
    (see the module docstring); only routing domains with a table number are served."""
    out: set[Element] = set()
    records = list(records)
    for r in records:
        if not r.local and r.pa is not None and r.routing_domain in tables:
            out.add(Element.host(r.pa, tables[r.routing_domain], r.ca))
    hops = {(d, route.next_hop) for d, routes in customer_routes.items() for route in routes
            if route.next_hop is not None}
    remote = {(r.routing_domain, r.ca): r.pa for r in records if (r.routing_domain, r.ca) in hops} if hops else {}
    for p in prefixes:
        if p.routing_domain in tables:
            out.add(Element.of(p.pa, tables[p.routing_domain], p.prefix))
    for domain, routes in customer_routes.items():
        for route in routes:
            pa = remote.get((domain, route.next_hop))
            if pa is not None and domain in tables:
                out.add(Element.of(pa, tables[domain], route.prefix))
    return out


def maximal(elements: Iterable[Element]) -> frozenset[Element]:
    """Pure: the elements not inside another of the same PA and domain. Only a prefix wider than a host can
    cover another, and there are few (gateways' defaults, customer routes): the CAs are checked against
    those of their group only. CIDR prefixes nest or are disjoint, so one sweep by first address, widest
    first, keeps exactly the outermost ones."""
    elements = elements if isinstance(elements, (set, frozenset)) else set(elements)
    wide = sorted((e for e in elements if e.length < _BITS[e.version]), key=lambda e: (e[:4], e.first, e.length))
    if not wide:
        return frozenset(elements)
    kept: dict[tuple, list[Element]] = {}
    for e in wide:
        group = kept.setdefault(e[:4], [])
        if not group or e.first > group[-1].last:
            group.append(e)
    firsts = {group: [p.first for p in prefixes] for group, prefixes in kept.items()}

    def covered(e: Element) -> bool:
        group = e[:4]
        if group not in kept:
            return False
        i = bisect.bisect_right(firsts[group], e.first) - 1
        return i >= 0 and e.first <= kept[group][i].last

    out = {e for e in elements if e.length == _BITS[e.version] and not covered(e)}
    out.update(e for group in kept.values() for e in group)
    return frozenset(out)


def decap_filter(pas: Collection[Address], vsids: Mapping[int, int], elements: Iterable[Element],
                 holding: bool, before: DecapFilter | None, sites: Collection[SiteTunnel] = ()) -> DecapFilter:
    """Pure: the table's content. While learned state is held (before End-of-RIB, headless) no PA and no
    vouched element is forgotten, like the routes of the lost hosts (vnet/hold.py)."""
    pas = set(pas)
    elements = set(elements)
    if holding and before is not None:
        pas |= before.pas
        elements |= before.vouched
    return DecapFilter(frozenset(pas), dict(vsids), maximal(elements), frozenset(sites))


# ------------------------------------------------------------------------------------------ by difference
#
# A change (a remote CA arriving, moving, leaving) must cost O(the elements it changes), not O(the table):
# the index below keeps what every element is vouched by, and answers each change with the elements to add
# and delete. `decap_filter` over all the inputs stays the reference (the start, the periodic resync, and
# the property test that the two agree).


@dataclass(frozen=True)
class DecapDelta:
    """What one change does to the table: set and map elements to delete and to add."""

    pas_removed: frozenset[Address] = frozenset()
    pas_added: frozenset[Address] = frozenset()
    vsids_removed: frozenset[int] = frozenset()  # no longer served, or their table number changed
    vsids_added: Mapping[int, int] = field(default_factory=dict)  # VSID -> table number: new or changed
    vouched_removed: frozenset[Element] = frozenset()
    vouched_added: frozenset[Element] = frozenset()
    sites_removed: frozenset[SiteTunnel] = frozenset()
    sites_added: frozenset[SiteTunnel] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.pas_removed or self.pas_added or self.vsids_removed or self.vsids_added
                    or self.vouched_removed or self.vouched_added or self.sites_removed or self.sites_added)


@dataclass(frozen=True)
class DecapInputs:
    """Everything the table is derived from. Collections are taken as given (not copied): 100,000 records
    are passed by reference."""

    records: Collection[LookupRecord] = ()  # one per (routing domain, CA); local ones vouch for nothing
    prefixes: Collection[RemotePrefix] = ()  # announced prefixes, one per announcing PA
    next_hops: Collection[Address] = ()  # the accepted routes' next hops (a Counter: routes per PA)
    customer_routes: Mapping[str, Collection[CustomerRoute]] = field(default_factory=dict)  # by routing domain
    tables: Mapping[str, int] = field(default_factory=dict)  # routing domain -> table number (its mark)
    vsids: Mapping[int, int] = field(default_factory=dict)  # served VSID -> table number

    def filter(self, holding: bool, before: DecapFilter | None) -> DecapFilter:
        """The reference: the whole table from scratch, O(inputs)."""
        elements = vouched(self.records, self.prefixes, self.customer_routes, self.tables)
        return decap_filter(self.next_hops, self.vsids, elements, holding, before)


@dataclass(frozen=True)
class DecapChange:
    """What changed in the inputs: for records, prefixes and next hops the ones gone and the ones come
    (multisets: two routes through one PA are two); for the rest, each routing domain's customer routes and
    table number as they are now (None: no table), and every served VSID, only where they changed."""

    records: tuple[tuple[LookupRecord, ...], tuple[LookupRecord, ...]] = ((), ())
    prefixes: tuple[tuple[RemotePrefix, ...], tuple[RemotePrefix, ...]] = ((), ())
    next_hops: tuple[tuple[Address, ...], tuple[Address, ...]] = ((), ())
    customer_routes: Mapping[str, tuple[CustomerRoute, ...]] = field(default_factory=dict)
    tables: Mapping[str, int | None] = field(default_factory=dict)
    vsids: Mapping[int, int] | None = None


def _gone_and_come(old: Iterable, new: Iterable) -> tuple[tuple, tuple]:
    # (a Counter is a multiset: its elements, each as often as counted)
    old = tuple(old.elements() if isinstance(old, Counter) else old)
    new = tuple(new.elements() if isinstance(new, Counter) else new)
    if not old or not new:  # (a restart's batches only come: 100,000 records not hashed for nothing)
        return old, new
    before, after = Counter(old), Counter(new)
    return tuple((before - after).elements()), tuple((after - before).elements())


def change(records: tuple[Iterable[LookupRecord], Iterable[LookupRecord]] = ((), ()),
           prefixes: tuple[Iterable[RemotePrefix], Iterable[RemotePrefix]] = ((), ()),
           next_hops: tuple[Iterable[Address], Iterable[Address]] = ((), ()),
           customer_routes: tuple[Mapping[str, Collection[CustomerRoute]],
                                  Mapping[str, Collection[CustomerRoute]]] = ({}, {}),
           tables: tuple[Mapping[str, int], Mapping[str, int]] = ({}, {}),
           vsids: tuple[Mapping[int, int], Mapping[int, int]] = ({}, {})) -> DecapChange:
    """Pure: a DecapChange from (old, new) pairs. For records, prefixes and next hops (an iterable or a
    Counter) each side may be just the changed items (O(the change)) or the whole before and after (what both
    hold cancels out: O(both)). The mappings are whole, compared per key (O(routing domains))."""
    old_routes, new_routes = customer_routes
    old_tables, new_tables = tables
    return DecapChange(
        _gone_and_come(*records), _gone_and_come(*prefixes), _gone_and_come(*next_hops),
        {d: tuple(new_routes.get(d, ())) for d in old_routes.keys() | new_routes.keys()
         if old_routes.get(d) is not new_routes.get(d)  # (a catalog keeps an unchanged domain's tuple)
         and tuple(old_routes.get(d, ())) != tuple(new_routes.get(d, ()))},
        {d: new_tables.get(d) for d in old_tables.keys() | new_tables.keys() if old_tables.get(d) != new_tables.get(d)},
        dict(vsids[1]) if vsids[0] != vsids[1] else None)


_Group = tuple[int, int, int, int]  # (PA version, PA, mark, inner version): elements that may cover each other
_Inner = Address | Network  # a CA (a host element) or a prefix


def _element(pa: Address, mark: int, inner: _Inner) -> Element:
    if isinstance(inner, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return Element.of(pa, mark, inner)
    return Element.host(pa, mark, inner)


class DecapIndex:
    """The decapsulation table kept by difference. Pure (no I/O), mutable: `apply` takes a DecapChange and
    returns the DecapDelta to write; `filter()` is the table it stands for, equal to the reference
    `DecapInputs.filter` of the same inputs (O(n): for tests and trace, not per change).

    Each element is counted by its sources (a remote lookup record, a prefix announced by one PA, a customer
    route through a remote CA); each PA by the accepted routes through it. Written is what `maximal` keeps:
    per group (PA, domain, family) the outermost prefixes and the hosts none of them covers. A host change
    costs a look at its group's prefixes (few); a prefix change recomputes its group (the CAs behind one PA
    in one domain: bounded by a host's VMs, not by the fabric). While holding, an element or PA whose last
    source goes stays (held) until a change that is not holding."""

    def __init__(self) -> None:
        # the inputs, indexed for a change: remote records by domain (CA -> PA), announced prefixes by domain,
        # customer routes by domain and by the CA they go through
        self._records: dict[str, dict[Address, Address]] = {}
        self._prefixes: dict[str, Counter[tuple[Address, Network]]] = {}
        self._customer: dict[str, tuple[CustomerRoute, ...]] = {}
        self._via: dict[str, dict[Address, Counter[Network]]] = {}
        self._tables: dict[str, int] = {}
        self._vsids: dict[int, int] = {}
        self._next_hops: Counter[Address] = Counter()
        self._held_pas: set[Address] = set()
        # the elements: sources per element, the held ones, the present ones by group, the written ones
        self._count: dict[Element, int] = {}
        self._held: set[Element] = set()
        self._hosts: dict[_Group, set[Element]] = {}
        self._wides: dict[_Group, set[Element]] = {}
        self._outer: dict[_Group, tuple[list[int], list[Element]]] = {}  # outermost prefixes: firsts, elements
        self._written: dict[_Group, set[Element]] = {}
        # during one apply: the hosts whose presence changed, the groups whose prefixes did, the PAs touched
        self._touched: set[Element] = set()
        self._regroup: set[_Group] = set()
        self._pas_touched: set[Address] = set()

    @classmethod
    def build(cls, inputs: DecapInputs, holding: bool = False, before: DecapFilter | None = None) -> DecapIndex:
        """The index of these inputs from scratch (O(inputs)); while holding, what `before` holds stays."""
        index = cls()
        if holding and before is not None:
            for e in before.vouched:
                index._held.add(e)
                index._present(e)
            index._held_pas.update(before.pas)
        # everything comes, nothing goes: no difference to take (hashing 100,000 records would double the cost)
        index.apply(DecapChange(((), tuple(inputs.records)), ((), tuple(inputs.prefixes)),
                                ((), tuple(Counter(inputs.next_hops).elements())),
                                {d: tuple(routes) for d, routes in inputs.customer_routes.items()},
                                dict(inputs.tables), dict(inputs.vsids)), holding)
        return index

    # ---------------------------------------------------------------------------- the table it stands for

    def pas(self) -> frozenset[Address]:
        return frozenset(self._next_hops.keys() | self._held_pas)

    def filter(self) -> DecapFilter:
        return DecapFilter(self.pas(), dict(self._vsids),
                           frozenset(e for group in self._written.values() for e in group))

    def __len__(self) -> int:
        """The vouched elements written."""
        return sum(len(group) for group in self._written.values())

    # ---------------------------------------------------------------------------------------- one change

    def apply(self, what: DecapChange, holding: bool) -> DecapDelta:
        pas_before = {pa: self._pa_present(pa) for pa in (*what.next_hops[0], *what.next_hops[1])}
        released = set() if holding else set(self._held_pas)  # the hold ends: what it kept may go
        vsids_removed: frozenset[int] = frozenset()
        vsids_added: dict[int, int] = {}
        if what.vsids is not None:
            old, new = self._vsids, what.vsids
            vsids_removed = frozenset(v for v, m in old.items() if new.get(v) != m)
            vsids_added = {v: m for v, m in new.items() if old.get(v) != m}
            self._vsids = dict(new)
        # what goes first, under the old table numbers, then the renumbering, then what comes: an element
        # is never counted in and out within one change (while holding, that would keep it)
        for r in what.records[0]:
            if not r.local and r.pa is not None:
                self._record(r.routing_domain, r.ca, r.pa, -1, holding)
        for p in what.prefixes[0]:
            self._prefix(p.routing_domain, p.pa, p.prefix, -1, holding)
        for domain in what.customer_routes:
            self._customer_routes(domain, self._customer.pop(domain, ()), -1, holding)
        for pa in what.next_hops[0]:
            left = self._next_hops[pa] - 1
            if left < 0:
                raise ValueError(f"next_hops: {pa} is not a next hop of any route")
            if left:
                self._next_hops[pa] = left
            else:
                del self._next_hops[pa]
                if holding:
                    self._held_pas.add(pa)
        for domain, table in what.tables.items():
            self._retable(domain, table, holding)
        for r in what.records[1]:
            if not r.local and r.pa is not None:
                self._record(r.routing_domain, r.ca, r.pa, +1, holding)
        for p in what.prefixes[1]:
            self._prefix(p.routing_domain, p.pa, p.prefix, +1, holding)
        for domain, routes in what.customer_routes.items():
            if routes:
                self._customer[domain] = tuple(routes)
                self._customer_routes(domain, self._customer[domain], +1, holding)
        for pa in what.next_hops[1]:
            self._next_hops[pa] += 1
            self._held_pas.discard(pa)
        if not holding:
            for e in self._held:
                self._absent(e)
            self._held.clear()
            self._held_pas.clear()
        pas_removed = {pa for pa, was in pas_before.items() if was and not self._pa_present(pa)}
        pas_removed |= {pa for pa in released if not self._pa_present(pa)}
        pas_added = frozenset(pa for pa, was in pas_before.items() if not was and self._pa_present(pa))
        removed, added = self._rewrite()
        return DecapDelta(frozenset(pas_removed), pas_added, vsids_removed, vsids_added, removed, added)

    def _pa_present(self, pa: Address) -> bool:
        return pa in self._next_hops or pa in self._held_pas

    # ----------------------------------------------------------------------------------- the sources

    def _record(self, domain: str, ca: Address, pa: Address, step: int, holding: bool) -> None:
        cas = self._records.get(domain, {})
        if step > 0:
            if ca in cas:
                raise ValueError(f"records: {ca} of {domain} has a record already (at {cas[ca]})")
            self._records.setdefault(domain, cas)[ca] = pa
        elif cas.get(ca) != pa:
            raise ValueError(f"records: {ca} of {domain} has no record at {pa}")
        else:
            del cas[ca]
            if not cas:
                del self._records[domain]
        mark = self._tables.get(domain)
        if mark is None:
            return
        self._step(Element(pa.version, int(pa), mark, ca.version, int(ca), _BITS[ca.version]), step, holding)
        through = self._via.get(domain)
        if through is not None and ca in through:
            for prefix, n in through[ca].items():
                for _ in range(n):
                    self._step(Element.of(pa, mark, prefix), step, holding)

    def _prefix(self, domain: str, pa: Address, prefix: Network, step: int, holding: bool) -> None:
        counts = self._prefixes.setdefault(domain, Counter())
        if step < 0 and counts[(pa, prefix)] <= 0:
            raise ValueError(f"prefixes: {prefix} of {domain} is not announced by {pa}")
        counts[(pa, prefix)] += step
        if not counts[(pa, prefix)]:
            del counts[(pa, prefix)]
        if not counts:
            del self._prefixes[domain]
        mark = self._tables.get(domain)
        if mark is not None:
            self._step(Element.of(pa, mark, prefix), step, holding)

    def _customer_routes(self, domain: str, routes: Iterable[CustomerRoute], step: int, holding: bool) -> None:
        """A domain's customer routes counted in (+1) or out (-1): each through a remote CA vouches for its
        prefix at that CA's PA."""
        mark = self._tables.get(domain)
        cas = self._records.get(domain, {})
        via = self._via.setdefault(domain, {})
        for route in routes:
            if route.next_hop is None:
                continue
            through = via.setdefault(route.next_hop, Counter())
            through[route.prefix] += step
            if not through[route.prefix]:
                del through[route.prefix]
                if not through:
                    del via[route.next_hop]
            pa = cas.get(route.next_hop)
            if pa is not None and mark is not None:
                self._step(Element.of(pa, mark, route.prefix), step, holding)
        if not via:
            del self._via[domain]

    def _sources(self, domain: str) -> Iterable[tuple[Address, _Inner]]:
        """Every (PA, CA or prefix) the domain's inputs vouch for, with multiplicity."""
        cas = self._records.get(domain, {})
        for ca, pa in cas.items():
            yield pa, ca
        for (pa, prefix), n in self._prefixes.get(domain, Counter()).items():
            for _ in range(n):
                yield pa, prefix
        for ca, through in self._via.get(domain, {}).items():
            pa = cas.get(ca)
            if pa is not None:
                for prefix, n in through.items():
                    for _ in range(n):
                        yield pa, prefix

    def _retable(self, domain: str, table: int | None, holding: bool) -> None:
        """A routing domain's table number changed (or it gained or lost one): every element of its sources
        moves (O(the domain's elements))."""
        old = self._tables.get(domain)
        if old == table:
            return
        for pa, inner in self._sources(domain):
            if old is not None:
                self._step(_element(pa, old, inner), -1, holding)
            if table is not None:
                self._step(_element(pa, table, inner), +1, holding)
        if table is None:
            del self._tables[domain]
        else:
            self._tables[domain] = table

    # ------------------------------------------------------------------------------------- the elements

    def _step(self, e: Element, step: int, holding: bool) -> None:
        n = self._count.get(e, 0) + step
        if n < 0:
            raise ValueError(f"vouched: {e.pa} {e.mark} {e.prefix} has no source left")
        if n:
            self._count[e] = n
            if n == 1 and step > 0:
                if e in self._held:
                    self._held.discard(e)  # present already
                else:
                    self._present(e)
            return
        del self._count[e]
        if holding:
            self._held.add(e)  # stays until the hold ends
        else:
            self._absent(e)

    def _present(self, e: Element) -> None:
        group = e[:4]
        if e.length == _BITS[e.version]:
            self._hosts.setdefault(group, set()).add(e)
            self._touched.add(e)
        else:
            self._wides.setdefault(group, set()).add(e)
            self._regroup.add(group)

    def _absent(self, e: Element) -> None:
        group = e[:4]
        if e.length == _BITS[e.version]:
            hosts = self._hosts[group]
            hosts.discard(e)
            if not hosts:
                del self._hosts[group]
            self._touched.add(e)
        else:
            wides = self._wides[group]
            wides.discard(e)
            if not wides:
                del self._wides[group]
            self._regroup.add(group)

    def _rewrite(self) -> tuple[frozenset[Element], frozenset[Element]]:
        """What `maximal` keeps now, for the groups and hosts this change touched: (deleted, added)."""
        removed: set[Element] = set()
        added: set[Element] = set()
        for group in self._regroup:
            wides = sorted(self._wides.get(group, ()), key=lambda e: (e.first, e.length))
            outer: list[Element] = []
            for e in wides:
                if not outer or e.first > outer[-1].last:
                    outer.append(e)
            if outer:
                self._outer[group] = ([e.first for e in outer], outer)
            else:
                self._outer.pop(group, None)
            want = set(outer)
            want.update(h for h in self._hosts.get(group, ()) if not self._covered(h))
            have = self._written.get(group, set())
            removed |= have - want
            added |= want - have
            if want:
                self._written[group] = want
            else:
                self._written.pop(group, None)
        hosts, written, outer, regroup = self._hosts, self._written, self._outer, self._regroup
        for h in self._touched:
            group = h[:4]
            if group in regroup:
                continue
            want = h in hosts.get(group, ()) and (group not in outer or not self._covered(h))
            have = written.get(group)
            if want:
                if have is None:
                    written[group] = {h}
                    added.add(h)
                elif h not in have:
                    have.add(h)
                    added.add(h)
            elif have is not None and h in have:
                have.discard(h)
                if not have:
                    del written[group]
                removed.add(h)
        self._touched.clear()
        self._regroup.clear()
        return frozenset(removed), frozenset(added)

    def _covered(self, host: Element) -> bool:
        found = self._outer.get(host[:4])
        if found is None:
            return False
        firsts, outer = found
        i = bisect.bisect_right(firsts, host.first) - 1
        return i >= 0 and host.first <= outer[i].last


# ------------------------------------------------------------------------------------------ nft's language


def _inner(e: Element) -> str:
    if e.length == _BITS[e.version]:
        return f"0x{e.first:x}"  # a host, in the hash set
    # a prefix is a range: the interval set's own form
    return f"0x{e.first:x}-0x{e.last:x}"


def _elements(what: str, name: str, items: list[str]) -> str:
    return f"{what} element {FAMILY} {TABLE} {name} {{ {', '.join(items)} }}\n" if items else ""


def _sorted(addresses: Iterable[Address], version: int) -> list[str]:
    return [str(a) for a in sorted(a for a in addresses if a.version == version)]


def _vouched_by_set(elements: Iterable[Element]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in sorted(elements):
        out.setdefault(_set_of(e), []).append(f"{e.pa} . {e.mark} . {_inner(e)}")
    return out


def _chain(outer: int) -> str:
    o = _OFFSETS[outer]
    saddr = _SADDR[outer]
    pas = PA_SETS[outer]
    header = ("ip hdrlength != 5 counter name not_nvgre drop" if outer == 4
              else "ip6 nexthdr != gre counter name not_nvgre drop")
    lines = [
        f"{saddr} != @{pas} counter name unknown_pa drop",
        header,
        f"@nh,{o['flags']},16 & 0xb0ff != 0x2000 counter name not_nvgre drop",
        f"@nh,{o['proto']},16 != 0x6558 counter name not_nvgre drop",
        f"@nh,{o['flow']},8 != 0x0 @nh,{o['flow']},8 set 0x0",
        f"@nh,{o['key']},32 != @{VSID_SET} counter name unknown_vsid drop",
        f"meta mark set @nh,{o['key']},32 map @{VSID_MAP}",
        # exact addresses first (a hash lookup), the prefixes only for what they miss
        *(f"@nh,{o['ethertype']},16 0x{eth:04x} {saddr} . meta mark . @nh,{o[inner]},{_BITS[inner]} "
          f"@{name(outer, inner)} counter name {PASSED} accept"
          for inner, eth in ((4, ETH_IPV4), (6, ETH_IPV6)) for name in (host_set_name, set_name)),
        f"@nh,{o['ethertype']},16 != {{ 0x{ETH_IPV4:04x}, 0x{ETH_IPV6:04x} }} counter name not_ip drop",
        "counter name not_vouched drop",
    ]
    body = "\n".join(f"    {line}" for line in lines)
    return f"  chain gre{outer} {{\n{body}\n  }}\n"


def ruleset(f: DecapFilter) -> str:
    """The whole table, replacing whatever is there, in one transaction (add, delete, then the content)."""
    sets = [f"  set {PA_SETS[4]} {{ type ipv4_addr; }}", f"  set {PA_SETS[6]} {{ type ipv6_addr; }}",
            *(f"  set {SITE_SETS[v]} {{ typeof {_SADDR[v]} . {_DADDR[v]} . @nh,{_OFFSETS[v]['key']},32; }}"
              for v in (4, 6)),
            *(f"  set {SITE_KEYLESS_SETS[v]} {{ typeof {_SADDR[v]} . {_DADDR[v]}; }}" for v in (4, 6)),
            f"  set {VSID_SET} {{ typeof @nh,192,32; }}",
            f"  map {VSID_MAP} {{ typeof @nh,192,32 : meta mark; }}"]
    for outer in (4, 6):
        for inner in (4, 6):
            key = f"typeof {_SADDR[outer]} . meta mark . @nh,{_OFFSETS[4][inner]},{_BITS[inner]};"
            sets.append(f"  set {host_set_name(outer, inner)} {{ {key} }}")
            sets.append(f"  set {set_name(outer, inner)} {{ {key} flags interval; }}")
    counters = [f"  counter {name} {{ }}" for name in (*REASONS, PASSED)]
    text = (f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
            f"table {FAMILY} {TABLE} {{\n" + "\n".join(sets + counters) + "\n"
            # priority raw: before conntrack and before anyone's filter chain; the GRE stack runs after the
            # whole input hook, so it reads the key this chain has cleaned
            "  chain input {\n    type filter hook input priority raw; policy accept;\n"
            + _site_rules() +
            "    meta nfproto ipv4 meta l4proto gre jump gre4\n"
            "    meta nfproto ipv6 meta l4proto gre jump gre6\n  }\n"
            + _chain(4) + _chain(6) + "}\n")
    return text + _add(f.pas, f.vsids, f.vouched, f.sites)


# The ways a site's GRE packet may begin: (family, what precedes the GRE header, its length in bits). IPv6 with
# one Destination Options header of 8 bytes whose next header is GRE: the tunnel encapsulation limit option
# (RFC 2473) that Linux's ip6gre sends by default (`encaplimit 4`), as a site's router will.
_SITE_HEADS = ((4, "meta l4proto gre ip hdrlength 5", 0), (6, "ip6 nexthdr gre", 0),
               (6, "ip6 nexthdr 60 @nh,320,8 47 @nh,328,8 0", 64))


def _site_rules() -> str:
    """Step 0: IP in GRE that one site's tunnel takes, accepted before the NVGRE checks. (`@th` after `l4proto
    gre` aborts nft 1.0.6's listing: fixed offsets, IPv4 without options, IPv6 with no extension header or
    with the encapsulation limit's.) The first rule carries the layout mark."""
    out = ""
    for v, head, shift in _SITE_HEADS:
        o = {field: offset + shift for field, offset in _OFFSETS[v].items() if isinstance(field, str)}
        ends = f"{_SADDR[v]} . {_DADDR[v]}"
        proto = f"@nh,{o['proto']},16 {SITE_PROTOCOLS}"
        mark = "" if out else f' comment "{LAYOUT}"'
        out += (f"    {head} @nh,{o['flags']},16 0x2000 {ends} . @nh,{o['key']},32 @{SITE_SETS[v]} {proto} "
                f"accept{mark}\n"
                f"    {head} @nh,{o['flags']},16 0x0 {ends} @{SITE_KEYLESS_SETS[v]} {proto} accept\n")
    return out


def _site_elements(what: str, sites: Iterable[SiteTunnel]) -> str:
    text = ""
    for v in (4, 6):
        ours = sorted((t for t in sites if t.remote.version == v),
                      key=lambda t: (int(t.remote), int(t.local), t.key or 0))
        keyed = [f"{t.remote} . {t.local} . 0x{t.key:x}" for t in ours if t.key is not None]
        text += _elements(what, SITE_SETS[v], keyed)
        text += _elements(what, SITE_KEYLESS_SETS[v], [f"{t.remote} . {t.local}" for t in ours if t.key is None])
    return text


def _add(pas: Iterable[Address], vsids: Mapping[int, int], elements: Iterable[Element],
         sites: Iterable[SiteTunnel] = ()) -> str:
    text = ""
    for version, name in PA_SETS.items():
        text += _elements("add", name, _sorted(pas, version))
    text += _site_elements("add", sites)
    text += _elements("add", VSID_SET, [f"0x{v << 8:x}" for v in sorted(vsids)])
    text += _elements("add", VSID_MAP, [f"0x{v << 8:x} : {m}" for v, m in sorted(vsids.items())])
    for name, items in _vouched_by_set(elements).items():
        text += _elements("add", name, items)
    return text


def difference(old: DecapFilter, new: DecapFilter) -> DecapDelta:
    """Pure: what turns the table `old` into `new` (a VSID whose table number changed is deleted and added)."""
    return _difference(old.pas, old.vsids, old.vouched, new, old.sites)


def _difference(pas: Collection[Address], vsids: Mapping[int, int], vouched: Collection[Element],
                new: DecapFilter, sites: Collection[SiteTunnel] = frozenset()) -> DecapDelta:
    gone = frozenset(v for v, m in vsids.items() if new.vsids.get(v) != m)
    return DecapDelta(frozenset(pas - new.pas), frozenset(new.pas - pas), gone,
                      {v: m for v, m in new.vsids.items() if vsids.get(v) != m},
                      frozenset(vouched - new.vouched), frozenset(new.vouched - vouched),
                      frozenset(sites - new.sites), frozenset(new.sites - sites))


def delta_text(delta: DecapDelta) -> str | None:
    """Set and map elements only, deletes first, in one transaction; None when nothing differs. nft refuses
    to delete an element that is not there (someone changed our table): the caller then replaces it."""
    text = ""
    for version, name in PA_SETS.items():
        text += _elements("delete", name, _sorted(delta.pas_removed, version))
    text += _site_elements("delete", delta.sites_removed)
    text += _elements("delete", VSID_SET, [f"0x{v << 8:x}" for v in sorted(delta.vsids_removed)])
    text += _elements("delete", VSID_MAP, [f"0x{v << 8:x}" for v in sorted(delta.vsids_removed)])
    for name, items in _vouched_by_set(delta.vouched_removed).items():
        text += _elements("delete", name, items)
    text += _add(delta.pas_added, delta.vsids_added, delta.vouched_added, delta.sites_added)
    return text or None


def changes(old: DecapFilter, new: DecapFilter) -> str | None:
    """The transaction that turns the table `old` into `new` (delta_text); None when nothing differs."""
    return delta_text(difference(old, new))


# ---------------------------------------------------------------------------------------------- read back


def _int(value: object) -> int:
    return value if isinstance(value, int) else int(str(value), 0)


def parse(doc: dict) -> DecapFilter | None:
    """`nft -j list table inet nvfabric` -> the DecapFilter it holds; None when it is not our current table
    (an older layout, or made by someone else): then it is replaced."""
    pas: set[Address] = set()
    sites: set[SiteTunnel] = set()
    vsids: dict[int, int] = {}
    elements: set[Element] = set()
    seen: set[str] = set()
    keys: set[int] = set()
    outers: dict[str, tuple[int, int]] = {}  # a PA as listed -> (version, integer)
    marked = False
    # an older layout (no hash sets) lacks some: `seen != wanted` below, replaced once
    wanted = {*PA_SETS.values(), *SITE_SETS.values(), *SITE_KEYLESS_SETS.values(), VSID_SET, VSID_MAP, *_VOUCHED_SETS}
    for item in doc.get("nftables", []):
        rule = item.get("rule")
        if rule is not None:
            marked = marked or (rule.get("table") == TABLE and rule.get("comment") == LAYOUT)
            continue
        found = item.get("set") or item.get("map")
        if not found or found.get("table") != TABLE or found.get("name") not in wanted:
            continue
        name = found["name"]
        seen.add(name)
        for elem in found.get("elem", []):
            if name in PA_SETS.values():
                pas.add(ipaddress.ip_address(elem))
            elif name in SITE_SETS.values():
                remote, local, key = elem["concat"]
                sites.add(SiteTunnel(ipaddress.ip_address(remote), ipaddress.ip_address(local), _int(key)))
            elif name in SITE_KEYLESS_SETS.values():
                remote, local = elem["concat"]
                sites.add(SiteTunnel(ipaddress.ip_address(remote), ipaddress.ip_address(local), None))
            elif name == VSID_MAP:
                vsids[_int(elem[0]) >> 8] = _int(elem[1])
            elif name == VSID_SET:
                keys.add(_int(elem) >> 8)
            else:
                pa, mark, inner = elem["concat"]
                outer = outers.get(pa)
                if outer is None:  # (a few hundred PAs behind 100,000 elements: each parsed once)
                    address = ipaddress.ip_address(pa)
                    outer = outers[pa] = (address.version, int(address))
                version = int(name[2])
                if name[0] == "h" and not isinstance(inner, dict):  # a host: an address, no prefix to build
                    first, length = element_address(inner, version), _BITS[version]
                else:
                    prefix = element_network(inner, version)
                    first, length = int(prefix.network_address), prefix.prefixlen
                elements.add(Element(outer[0], outer[1], _int(mark), version, first, length))
    if seen != wanted or keys != set(vsids) or not marked:
        return None
    return DecapFilter(frozenset(pas), vsids, frozenset(elements), frozenset(sites))


def parse_counters(doc: dict) -> dict[str, int]:
    """`nft -j list counters table inet nvfabric` -> packets by reason (and PASSED)."""
    out = {}
    for item in doc.get("nftables", []):
        c = item.get("counter")
        if c and c.get("table") == TABLE and c.get("name") in (*REASONS, PASSED):
            out[c["name"]] = int(c.get("packets", 0))
    return out


class DecapTable:
    """Keeps the kernel's table equal to what its owner wants: the whole table at the first write (and after
    a refused one), then only the elements that changed. What was applied is mirrored in mutable sets, so a
    delta costs O(its elements) here too; `applied` builds the DecapFilter from them (O(table), cached until
    the next write)."""

    def __init__(self, nft: Nft) -> None:
        self.nft = nft
        self._known = False  # False: what the kernel holds is not known, the next apply replaces the table
        self._pas: set[Address] = set()
        self._vsids: dict[int, int] = {}
        self._vouched: set[Element] = set()
        self._sites: set[SiteTunnel] = set()
        self._snapshot: DecapFilter | None = None

    @property
    def known(self) -> bool:
        """Whether what the kernel's table holds is known (else the next apply replaces it)."""
        return self._known

    @property
    def applied(self) -> DecapFilter | None:
        """What the kernel's table holds as far as we know (None: not known, the next apply replaces it)."""
        if not self._known:
            return None
        if self._snapshot is None:
            self._snapshot = DecapFilter(frozenset(self._pas), dict(self._vsids), frozenset(self._vouched),
                                         frozenset(self._sites))
        return self._snapshot

    def _mirror(self, f: DecapFilter | None) -> None:
        self._known = f is not None
        f = f or DecapFilter()
        self._pas, self._vsids, self._vouched, self._sites = set(f.pas), dict(f.vsids), set(f.vouched), set(f.sites)
        self._snapshot = f if self._known else None

    async def read(self) -> DecapFilter | None:
        """The table as the kernel has it (None when absent or not ours); what is read is what the next
        apply changes, so a restarted owner writes only the difference."""
        try:
            found = parse(await self.nft.list_json("table", FAMILY, TABLE))
        except NftError:
            found = None
        self._mirror(found)
        return found

    async def apply(self, f: DecapFilter) -> None:
        """The table made equal to `f`: replaced when not known, else by difference (O(table) to compare)."""
        if not self._known:
            await self._write(ruleset(f))
            self._mirror(f)
            return
        await self.apply_delta(_difference(self._pas, self._vsids, self._vouched, f, self._sites))

    async def apply_delta(self, delta: DecapDelta) -> None:
        """Element changes only, in one transaction; the table must be known (ValueError else: the owner
        applies a whole DecapFilter first). A refusal forgets what was applied and is raised."""
        if not self._known:
            raise ValueError("decap: the table is not known: apply a whole filter first")
        text = delta_text(delta)
        if text is None:
            return
        await self._write(text)
        self._pas -= delta.pas_removed
        self._pas |= delta.pas_added
        for v in delta.vsids_removed:
            self._vsids.pop(v, None)
        self._vsids.update(delta.vsids_added)
        self._vouched -= delta.vouched_removed
        self._vouched |= delta.vouched_added
        self._sites -= delta.sites_removed
        self._sites |= delta.sites_added
        self._snapshot = None

    async def _write(self, text: str) -> None:
        try:
            await self.nft.script("decap", text)
        except NftError:
            self._mirror(None)
            raise

    async def counters(self) -> dict[str, int]:
        """Packets by drop reason and PASSED; empty when the table is absent."""
        try:
            return parse_counters(await self.nft.list_json("counters", "table", FAMILY, TABLE))
        except NftError:
            return {}

    async def delete(self) -> None:
        self._mirror(None)
        try:
            await self.nft.script("delete", f"delete table {FAMILY} {TABLE}\n")
        except NftError:
            pass  # already gone


def metric_families(counts: Mapping[str, int]) -> list:
    """The counters for `/metrics` (both daemons): drops by reason, and the packets that passed."""
    drops = CounterMetricFamily("nvfabric_decap_drops", "NVGRE packets dropped before decapsulation, by reason",
                                labels=["reason"])
    for reason in REASONS:
        drops.add_metric([reason], counts.get(reason, 0))
    passed = CounterMetricFamily("nvfabric_decap_vouched", "NVGRE packets whose sender the control plane vouched for")
    passed.add_metric([], counts.get(PASSED, 0))
    return [drops, passed]


class DecapCollector:
    """A Prometheus collector of the last counters read (the owner reads them just before a scrape)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def collect(self) -> list:
        return metric_families(self.counts)
