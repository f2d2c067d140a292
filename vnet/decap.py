"""Decapsulation that delivers only what the control plane vouches for: the nftables table `inet nvfabric`,
shared by the host agent and the gateway (each feeds it its desired state; docs/dataplane.md, "What a
received NVGRE packet must prove").

Every GRE packet addressed to this host is judged on its OUTER packet, in the input hook at priority raw,
before the GRE stack reads it, in this order (each drop counted by its reason, a named counter):

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
the chains, their rules and counters are never rewritten. At start the agent reads the table back
(`DecapTable.read`) and writes only the difference: the table stays while the agent is away, so a restart
never leaves a window without it.

In nft's own language, not its JSON: nft 1.0.6's JSON cannot declare a set `typeof` raw payloads (the inner
source is one), and the same text serves the whole table and the element changes.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from prometheus_client.core import CounterMetricFamily

from nvfabric.vnet.model import Address, CustomerRoute, LookupRecord, Network, RemotePrefix
from nvfabric.vnet.nftables import FAMILY, Nft, NftError, Owned, element_network

TABLE = "nvfabric"
VSID_MAP = "vsid"
# The served keys again, as a plain set: the kernel of Debian 12 (6.1) refuses a map used as a set ("is the
# key in it?"), so the unknown-VSID check has a set of its own; a VSID change writes one element in each.
VSID_SET = "vsids"
PA_SETS = {4: "pa4", 6: "pa6"}
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

    def __hash__(self) -> int:
        return hash((self.pas, tuple(sorted(self.vsids.items())), self.vouched))

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
                 holding: bool, before: DecapFilter | None) -> DecapFilter:
    """Pure: the table's content. While learned state is held (before End-of-RIB, headless) no PA and no
    vouched element is forgotten, like the routes of the lost hosts (vnet/hold.py)."""
    pas = set(pas)
    elements = set(elements)
    if holding and before is not None:
        pas |= before.pas
        elements |= before.vouched
    return DecapFilter(frozenset(pas), dict(vsids), maximal(elements))


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
            "    meta nfproto ipv4 meta l4proto gre jump gre4\n"
            "    meta nfproto ipv6 meta l4proto gre jump gre6\n  }\n"
            + _chain(4) + _chain(6) + "}\n")
    return text + _add(f.pas, f.vsids, f.vouched)


def _add(pas: Iterable[Address], vsids: Mapping[int, int], elements: Iterable[Element]) -> str:
    text = ""
    for version, name in PA_SETS.items():
        text += _elements("add", name, _sorted(pas, version))
    text += _elements("add", VSID_SET, [f"0x{v << 8:x}" for v in sorted(vsids)])
    text += _elements("add", VSID_MAP, [f"0x{v << 8:x} : {m}" for v, m in sorted(vsids.items())])
    for name, items in _vouched_by_set(elements).items():
        text += _elements("add", name, items)
    return text


def changes(old: DecapFilter, new: DecapFilter) -> str | None:
    """Set and map elements only, deletes first, in one transaction; None when nothing differs. nft refuses
    to delete an element that is not there (someone changed our table): the caller then replaces it."""
    text = ""
    for version, name in PA_SETS.items():
        text += _elements("delete", name, _sorted(old.pas - new.pas, version))
    gone = {v: m for v, m in old.vsids.items() if new.vsids.get(v) != m}
    text += _elements("delete", VSID_SET, [f"0x{v << 8:x}" for v in sorted(gone)])
    text += _elements("delete", VSID_MAP, [f"0x{v << 8:x}" for v in sorted(gone)])
    for name, items in _vouched_by_set(old.vouched - new.vouched).items():
        text += _elements("delete", name, items)
    added = {v: m for v, m in new.vsids.items() if old.vsids.get(v) != m}
    text += _add(new.pas - old.pas, added, new.vouched - old.vouched)
    return text or None


# ---------------------------------------------------------------------------------------------- read back


def _int(value: object) -> int:
    return value if isinstance(value, int) else int(str(value), 0)


def parse(doc: dict) -> DecapFilter | None:
    """`nft -j list table inet nvfabric` -> the DecapFilter it holds; None when it is not our current table
    (an older layout, or made by someone else): then it is replaced."""
    pas: set[Address] = set()
    vsids: dict[int, int] = {}
    elements: set[Element] = set()
    seen: set[str] = set()
    keys: set[int] = set()
    # an older layout (no hash sets) lacks some: `seen != wanted` below, replaced once
    wanted = {*PA_SETS.values(), VSID_SET, VSID_MAP, *_VOUCHED_SETS}
    for item in doc.get("nftables", []):
        found = item.get("set") or item.get("map")
        if not found or found.get("table") != TABLE or found.get("name") not in wanted:
            continue
        name = found["name"]
        seen.add(name)
        for elem in found.get("elem", []):
            if name in PA_SETS.values():
                pas.add(ipaddress.ip_address(elem))
            elif name == VSID_MAP:
                vsids[_int(elem[0]) >> 8] = _int(elem[1])
            elif name == VSID_SET:
                keys.add(_int(elem) >> 8)
            else:
                pa, mark, inner = elem["concat"]
                elements.add(Element.of(ipaddress.ip_address(pa), _int(mark), element_network(inner, int(name[2]))))
    if seen != wanted or keys != set(vsids):
        return None
    return DecapFilter(frozenset(pas), vsids, frozenset(elements))


def parse_counters(doc: dict) -> dict[str, int]:
    """`nft -j list counters table inet nvfabric` -> packets by reason (and PASSED)."""
    out = {}
    for item in doc.get("nftables", []):
        c = item.get("counter")
        if c and c.get("table") == TABLE and c.get("name") in (*REASONS, PASSED):
            out[c["name"]] = int(c.get("packets", 0))
    return out


class DecapTable:
    """Keeps the kernel's table equal to the given DecapFilter: the whole table at the first write (and
    after a refused one), then only the elements that changed."""

    def __init__(self, nft: Nft) -> None:
        self.nft = nft
        self._owned: Owned[DecapFilter] = Owned(ruleset, changes, lambda text: nft.script("decap", text))

    @property
    def applied(self) -> DecapFilter | None:
        """What the kernel's table holds as far as we know (None: not known, the next apply replaces it)."""
        return self._owned.applied

    async def read(self) -> DecapFilter | None:
        """The table as the kernel has it (None when absent or not ours); what is read is what the next
        apply changes, so a restarted owner writes only the difference."""
        try:
            found = parse(await self.nft.list_json("table", FAMILY, TABLE))
        except NftError:
            found = None
        self._owned.applied = found
        return found

    async def apply(self, f: DecapFilter) -> None:
        await self._owned.apply(f)

    async def counters(self) -> dict[str, int]:
        """Packets by drop reason and PASSED; empty when the table is absent."""
        try:
            return parse_counters(await self.nft.list_json("counters", "table", FAMILY, TABLE))
        except NftError:
            return {}

    async def delete(self) -> None:
        self._owned.applied = None
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
