"""Port security: what a VM may send into its port, enforced by nftables on the host (OVN's port_security,
Hyper-V's MAC spoofing guard, DHCP guard and router guard).

A guarded port's VM may send only
- IPv4/IPv6 from its own MAC and its CAs, its `allowed_addresses`, and the IPv6 link-local prefix fe80::/64
  (any interface identifier: guests such as Windows pick random ones, and a link-local address never leaves
  the port's link, which here is the VM and this host alone);
- ARP whose Ethernet source and sender MAC are its own MAC and whose sender IP is one of those addresses, or
  0.0.0.0 (an ARP probe, RFC 5227);
- neighbour solicitations from one of those addresses, or from :: from its own MAC (duplicate address
  detection; router solicitations and MLD reports sent before an address is valid likewise); neighbour
  advertisements only for a target that is one of its addresses;
- DHCP client traffic (0.0.0.0:68 -> 255.255.255.255:67 from its own MAC), which the host agent answers from
  its packet socket: requests to UDP port 67 or 547 are then dropped before the stack sees
  them;
- never a DHCP server's or relay's reply (UDP source port 67, DHCPv6 547: DHCP guard), nor a router
  advertisement or an ICMPv6 redirect (router guard).
A port with `port_security: false` has no element here and is not checked at all.

Where: two tables of our own, `inet nvfabric-ports` (a prerouting chain at priority raw, before conntrack
and routing) and `arp nvfabric-ports` (ARP input, before proxy ARP answers). The prerouting hook runs a
second time with the routing domain's VRF device as input device: only interfaces in `@guarded` jump to
the checks. Every check is a lookup in concatenated sets keyed by the port's interface
(`iifname . ether saddr . ip saddr`), in two steps: exact addresses (the CAs, a /32 or /128
`allowed_addresses` entry, ARP's 0.0.0.0) in a hash set (`src4_exact`, ...: one jhash lookup whatever the
number of ports), checked first, so the common packet never reaches the second; real prefixes
(`allowed_addresses`, fe80::/64) in a set with the interval flag (`src4`, ...: nft's pipapo backend, whose
lookup cost grows with its elements and which has no AVX2 path on every host), checked only on a miss. nft
1.0.6 has no `icmpv6 taddr`: the NA target is the raw payload `@th,64,128`, in sets of its own (`nd6_exact`,
`nd6`, `typeof`, which nft's JSON cannot declare: the tables are written in nft's own language).

Drops are counted per port and reason: one named counter per (port, reason), reached through one map per
reason (`counter name iifname map @spoofed_source`). A port's counter is added in the same transaction as
the port's interface in `@guarded`, so a guarded port never lacks one (a map miss would skip the drop).

Changes: the first write (start) replaces both tables in one transaction (add, delete, add) unless what the
kernel has is ours (same layout mark) -- then it is adopted and only the difference is written, so an agent
restart never leaves the ports unguarded nor resets their counters. After that, attaching, detaching or
readdressing a port writes that port's elements only (O(1) in the number of ports), in one transaction.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.model import Address, Network, Port
from nvfabric.vnet.nftables import Nft, NftError, element_network

TABLE = "nvfabric-ports"
# The layout of the tables below, kept as the comment of each hooked chain's first rule (nft 1.0.6 lists a
# rule's comment in JSON, not a table's): a kernel table without it (an older agent's) is replaced at start
# rather than adopted
LAYOUT = "nvfabric port security 4"

SPOOFED_SOURCE = "spoofed_source"
SPOOFED_ARP = "spoofed_arp"
SPOOFED_ND = "spoofed_nd"
DHCP_GUARD = "dhcp_guard"
ROUTER_GUARD = "router_guard"
REASONS = (SPOOFED_SOURCE, SPOOFED_ARP, SPOOFED_ND, DHCP_GUARD, ROUTER_GUARD)
_FAMILY_OF = {SPOOFED_ARP: "arp"}  # the others are counted in the inet table

LINK_LOCAL = ipaddress.ip_network("fe80::/64")
UNSPECIFIED4 = ipaddress.ip_network("0.0.0.0/32")  # an ARP probe's sender IP

# Set name -> (family, declaration). Keys all start with the port's interface name. Each address check has
# two sets: NAME_exact (a hash: exact addresses) and NAME (interval: prefixes)
_SETS = {
    ("inet", "guarded"): "type ifname;",
    ("inet", "macs"): "type ifname . ether_addr;",
    ("inet", "src4_exact"): "type ifname . ether_addr . ipv4_addr;",
    ("inet", "src6_exact"): "type ifname . ether_addr . ipv6_addr;",
    ("inet", "nd6_exact"): "typeof iifname . ether saddr . @th,64,128;",  # the NA target (raw)
    ("inet", "src4"): "type ifname . ether_addr . ipv4_addr; flags interval;",
    ("inet", "src6"): "type ifname . ether_addr . ipv6_addr; flags interval;",
    ("inet", "nd6"): "typeof iifname . ether saddr . @th,64,128; flags interval;",
    ("arp", "guarded"): "type ifname;",
    ("arp", "arp4_exact"): "type ifname . ether_addr . ether_addr . ipv4_addr;",
    ("arp", "arp4"): "type ifname . ether_addr . ether_addr . ipv4_addr; flags interval;",
}


def _not_in(key: str, name: str) -> str:
    """A match for `key` in neither the exact set nor the prefix set of `name`: the hash is looked up first
    and a hit ends the rule there."""
    return f"{key} != @{name}_exact {key} != @{name}"


_INET_GUARD = (
    f"icmpv6 type {{ nd-router-advert, nd-redirect }} counter name iifname map @{ROUTER_GUARD} drop",
    f"udp sport {{ 67, 547 }} counter name iifname map @{DHCP_GUARD} drop",
    # a request to the DHCP servers is answered by the agent, which takes its copy before netfilter: the
    # stack must not see it too, or a unicast renewal to the gateway address draws a port unreachable
    "udp dport { 67, 547 } drop",
    "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 iifname . ether saddr @macs accept",
    "ip6 saddr :: icmpv6 type { nd-neighbor-solicit, nd-router-solicit, mld-listener-report, mld2-listener-report }"
    " iifname . ether saddr @macs accept",
    f"icmpv6 type nd-neighbor-advert {_not_in('iifname . ether saddr . @th,64,128', 'nd6')} counter name "
    f"iifname map @{SPOOFED_ND} drop",
    f"icmpv6 type nd-neighbor-solicit {_not_in('iifname . ether saddr . ip6 saddr', 'src6')} counter name "
    f"iifname map @{SPOOFED_ND} drop",
    # exact addresses first (the hash): nearly every packet is accepted by one of these two
    "iifname . ether saddr . ip saddr @src4_exact accept",
    "iifname . ether saddr . ip6 saddr @src6_exact accept",
    "iifname . ether saddr . ip saddr @src4 accept",
    "iifname . ether saddr . ip6 saddr @src6 accept",
    f"counter name iifname map @{SPOOFED_SOURCE} drop",
)
# (family, chain) -> (hook line or None for a regular chain, rules)
CHAINS: dict[tuple[str, str], tuple[str | None, tuple[str, ...]]] = {
    # raw: before conntrack (nothing spoofed gets a conntrack entry) and before the VRF marks (mangle)
    ("inet", "prerouting"): ("type filter hook prerouting priority raw; policy accept;",
                             ("iifname @guarded jump guard",)),
    ("inet", "guard"): (None, _INET_GUARD),
    ("arp", "input"): ("type filter hook input priority -300; policy accept;", (
        f"iifname @guarded {_not_in('iifname . ether saddr . arp saddr ether . arp saddr ip', 'arp4')} "
        f"counter name iifname map @{SPOOFED_ARP} drop",)),
}

Key = tuple  # an element: (interface, ...) as below


@dataclass(frozen=True)
class Elements:
    """Every element of both tables, as plain keys: what a set of ports needs, or what the kernel has.
    `sets[(family, name)]`: frozensets of keys, (interface,), (interface, mac) or (interface, mac, network);
    `counters`: (interface, reason) pairs, each a named counter and its map element."""

    sets: Mapping[tuple[str, str], frozenset[Key]]
    counters: frozenset[tuple[str, str]]

    def size(self) -> int:
        return sum(len(v) for v in self.sets.values()) + len(self.counters)


def guarded(catalog: Catalog) -> list[Port]:
    """The catalog's ports as port security sees them (`guarded_port` of each)."""
    return [guarded_port(catalog, port) for port in catalog.ports.values()]


def guarded_port(catalog: Catalog, port: Port) -> Port:
    """A port as port security sees it: a port that may hold virtual addresses may send from them and ARP/NA
    for them, as if they were in its `allowed_addresses` (derived here, so the orchestrator does not repeat
    them). Whether it holds one now does not matter: keepalived's backup must be able to take the address
    over with its first gratuitous ARP."""
    extra = [_host(a) for a in catalog.may_hold(port)]
    extra = [n for n in extra if n not in port.allowed_addresses]
    return replace(port, allowed_addresses=(*port.allowed_addresses, *extra)) if extra else port


def networks(port: Port) -> tuple[tuple[Network, ...], tuple[Network, ...]]:
    """The port's IPv4 and IPv6 sources, without the ones another covers: what it may send from."""
    kept = _outermost([*(_host(a) for a in port.addresses), *port.allowed_addresses, LINK_LOCAL])
    return tuple(n for n in kept if n.version == 4), tuple(n for n in kept if n.version == 6)


def sources(port: Port) -> tuple[tuple[Network, ...], tuple[Network, ...]]:
    """The port's sources split for the two kinds of set: (exact addresses, prefixes), both versions in each.
    Exact: its CAs and any /32 or /128 in `allowed_addresses`, kept even when a prefix covers them (the hash
    set has no overlap rule, and a hit there is the cheap path). Prefixes: the other `allowed_addresses` and
    fe80::/64, without the ones another covers."""
    nets = sorted({*(_host(a) for a in port.addresses), *port.allowed_addresses, LINK_LOCAL},
                  key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    exact = tuple(n for n in nets if n.prefixlen == n.max_prefixlen)
    return exact, _outermost([n for n in nets if n.prefixlen < n.max_prefixlen])


def _outermost(nets: Iterable[Network]) -> tuple[Network, ...]:
    """The networks no other covers (nft refuses overlapping intervals in one set). Two prefixes are nested or
    disjoint."""
    kept: list[Network] = []
    for net in sorted(set(nets), key=lambda n: (n.prefixlen, n.version, int(n.network_address))):
        if not any(net.version == k.version and net.subnet_of(k) for k in kept):  # type: ignore[arg-type]
            kept.append(net)
    return tuple(kept)


def _host(address: Address) -> Network:
    return ipaddress.IPv4Network(address) if address.version == 4 else ipaddress.IPv6Network(address)


def port_elements(port: Port) -> Elements:
    """Pure: one port's elements (none when its port security is off)."""
    if not port.port_security:
        return EMPTY
    i, mac = port.interface, str(port.mac)
    exact, prefixes = sources(port)

    def keys(nets: Iterable[Network], version: int) -> frozenset[Key]:
        return frozenset((i, mac, n) for n in nets if n.version == version)

    return Elements({
        ("inet", "guarded"): frozenset({(i,)}),
        ("arp", "guarded"): frozenset({(i,)}),
        ("inet", "macs"): frozenset({(i, mac)}),
        ("inet", "src4_exact"): keys(exact, 4),
        ("inet", "src6_exact"): keys(exact, 6),
        ("inet", "nd6_exact"): keys(exact, 6),
        ("inet", "src4"): keys(prefixes, 4),
        ("inet", "src6"): keys(prefixes, 6),
        ("inet", "nd6"): keys(prefixes, 6),
        ("arp", "arp4_exact"): keys((*exact, UNSPECIFIED4), 4),  # 0.0.0.0: an ARP probe
        ("arp", "arp4"): keys(prefixes, 4),
    }, frozenset((i, reason) for reason in REASONS))


def union(parts: Iterable[Elements]) -> Elements:
    sets: dict[tuple[str, str], set[Key]] = {name: set() for name in _SETS}
    counters: set[tuple[str, str]] = set()
    for part in parts:
        for name, keys in part.sets.items():
            sets[name].update(keys)
        counters.update(part.counters)
    return Elements({k: frozenset(v) for k, v in sets.items()}, frozenset(counters))


def elements(ports: Iterable[Port]) -> Elements:
    """Pure: the elements of the guarded ports (port_security true)."""
    return union(port_elements(p) for p in ports)


EMPTY = Elements({}, frozenset())


# ------------------------------------------------------------------------------------------ nft's language


def counter_name(interface: str, reason: str) -> str:
    # the reason first: nft's language takes an object name only unquoted, starting with a letter (an
    # interface name may start with a digit)
    return f"{reason}.{interface}"


def _counter_key(name: str) -> tuple[str, str]:
    """(interface, reason) of a counter's name."""
    reason, _, interface = name.partition(".")
    return interface, reason


def _family(reason: str) -> str:
    return _FAMILY_OF.get(reason, "inet")


def _net(n: Network) -> str:
    return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)


def _raw128(n: Network) -> str:
    """An IPv6 network as the integer range a raw 128-bit payload is compared with."""
    first, last = f"0x{int(n.network_address):032x}", f"0x{int(n.broadcast_address):032x}"
    return first if first == last else f"{first}-{last}"


def _element(name: tuple[str, str], key: Key) -> str:
    interface = f'"{key[0]}"'
    if len(key) == 1:
        return interface
    mac = key[1]
    if len(key) == 2:
        return f"{interface} . {mac}"
    net = key[2]
    if name[1].startswith("nd6"):
        return f"{interface} . {mac} . {_raw128(net)}"
    if name[1].startswith("arp4"):
        return f"{interface} . {mac} . {mac} . {_net(net)}"
    return f"{interface} . {mac} . {_net(net)}"


def _set_lines(verb: str, name: tuple[str, str], keys: Iterable[Key]) -> list[str]:
    items = sorted(keys, key=_order)
    if not items:
        return []
    family, set_name = name
    return [f"{verb} element {family} {TABLE} {set_name} {{ {', '.join(_element(name, k) for k in items)} }}"]


def _counter_lines(verb: str, counters: Iterable[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(the counter objects, their map elements) added or deleted."""
    objects, maps = [], []
    for interface, reason in sorted(counters):
        family, name = _family(reason), counter_name(interface, reason)
        objects.append(f"{verb} counter {family} {TABLE} {name}")
        maps.append(f'{verb} element {family} {TABLE} {reason} {{ "{interface}" : {name} }}')
    return objects, maps


def _order(key: Key) -> tuple:
    return tuple((x.version, int(x.network_address), x.prefixlen) if isinstance(x, ipaddress.IPv4Network |
                                                                             ipaddress.IPv6Network) else (0, x, 0)
                 for x in key)


def ruleset(want: Elements) -> str:
    """Both tables, whole, replacing whatever is there, in one transaction (add, delete, add again)."""
    lines: list[str] = []
    for family in ("inet", "arp"):
        lines += [f"add table {family} {TABLE}", f"delete table {family} {TABLE}",
                  f"add table {family} {TABLE}"]
        for (fam, name), decl in _SETS.items():
            if fam == family:
                lines.append(f"add set {family} {TABLE} {name} {{ {decl} }}")
        for reason in REASONS:
            if _family(reason) == family:
                lines.append(f"add map {family} {TABLE} {reason} {{ type ifname : counter; }}")
        for (fam, chain), (hook, _) in CHAINS.items():
            if fam == family:
                lines.append(f"add chain {family} {TABLE} {chain}" + (f" {{ {hook} }}" if hook else ""))
    # the content: counters before the maps that name them, sets before the rules that use them
    objects, maps = _counter_lines("add", want.counters)
    lines += objects + maps
    for name in _SETS:
        lines += _set_lines("add", name, want.sets.get(name, ()))
    for (family, chain), (hook, rules) in CHAINS.items():
        marked = [f'{rule} comment "{LAYOUT}"' if hook and i == 0 else rule for i, rule in enumerate(rules)]
        lines += [f"add rule {family} {TABLE} {chain} {rule}" for rule in marked]
    return "\n".join(lines) + "\n"


def changes(old: Elements, new: Elements) -> str | None:
    """Elements only, in one transaction: what `old` has and `new` lacks is deleted (map elements before the
    counters they name), then the new added (counters before their map elements); None when equal. Its size
    follows the change: one port attached is one port's elements, whatever the number of ports."""
    lines: list[str] = []
    gone_objects, gone_maps = _counter_lines("delete", old.counters - new.counters)
    lines += gone_maps
    for name in _SETS:
        lines += _set_lines("delete", name, old.sets.get(name, frozenset()) - new.sets.get(name, frozenset()))
    lines += gone_objects
    new_objects, new_maps = _counter_lines("add", new.counters - old.counters)
    lines += new_objects
    for name in _SETS:
        lines += _set_lines("add", name, new.sets.get(name, frozenset()) - old.sets.get(name, frozenset()))
    lines += new_maps
    return "\n".join(lines) + "\n" if lines else None


# ------------------------------------------------------------------------------------------ read back


class NotOurs(ValueError):
    """The kernel's table is not one this code wrote (another layout, or changed by hand): replace it."""


def _key(name: tuple[str, str], elem: object) -> Key:
    if isinstance(elem, dict) and "elem" in elem:  # an element with its own state or comment
        elem = elem["elem"]["val"]
    if isinstance(elem, str):
        return (elem,)
    parts = elem["concat"] if isinstance(elem, dict) else None
    if not parts:
        raise NotOurs(f"element {elem!r} of set {name[1]}")
    if len(parts) == 2:
        return (parts[0], parts[1])
    if name[1].startswith("arp4"):
        if parts[1] != parts[2]:
            raise NotOurs(f"{name[1]} element {elem!r}: two MACs")
        return (parts[0], parts[1], element_network(parts[3], 4))
    return (parts[0], parts[1], element_network(parts[2], 4 if name[1].startswith("src4") else 6))


def parse(docs: Mapping[str, dict]) -> Elements:
    """The elements of our two tables from `nft -j list table FAMILY nvfabric-ports`, by family. NotOurs
    when a table lacks the layout mark, a chain has other rules than ours, or an element does not fit."""
    sets: dict[tuple[str, str], set[Key]] = {name: set() for name in _SETS}
    counters: set[tuple[str, str]] = set()
    mapped: set[tuple[str, str]] = set()
    rules: dict[tuple[str, str], int] = {}
    for family, doc in docs.items():
        marked = False
        for item in doc.get("nftables", []):
            if "set" in item and (family, item["set"]["name"]) in _SETS:
                name = (family, item["set"]["name"])
                sets[name].update(_key(name, e) for e in item["set"].get("elem", []))
            elif "map" in item and item["map"]["name"] in REASONS:
                reason = item["map"]["name"]
                for interface, counter in item["map"].get("elem", []):
                    if counter != counter_name(interface, reason):
                        raise NotOurs(f"map {reason}: {interface} -> {counter}")
                    mapped.add((interface, reason))
            elif "counter" in item:
                counters.add(_counter_key(item["counter"]["name"]))
            elif "rule" in item:
                chain = (family, item["rule"]["chain"])
                rules[chain] = rules.get(chain, 0) + 1
                marked = marked or item["rule"].get("comment") == LAYOUT
        if not marked:
            raise NotOurs(f"table {family} {TABLE} has no layout mark {LAYOUT!r}")
    if rules != {chain: len(r) for chain, (_, r) in CHAINS.items()}:
        raise NotOurs(f"rules per chain {rules}")
    if mapped != counters:
        raise NotOurs("counters and their map elements differ")
    mirrored = (sets["inet", "src6"] == sets["inet", "nd6"] and sets["inet", "src6_exact"] == sets["inet", "nd6_exact"]
                and sets["inet", "guarded"] == sets["arp", "guarded"])
    if not mirrored:
        raise NotOurs("the sets that mirror each other differ")
    return Elements({k: frozenset(v) for k, v in sets.items()}, frozenset(counters))


def parse_drops(docs: Mapping[str, dict]) -> dict[str, dict[str, int]]:
    """Packets dropped, by interface and reason, from `nft -j list counters table FAMILY nvfabric-ports`."""
    out: dict[str, dict[str, int]] = {}
    for doc in docs.values():
        for item in doc.get("nftables", []):
            counter = item.get("counter")
            if counter:
                interface, reason = _counter_key(counter["name"])
                if reason in REASONS:
                    out.setdefault(interface, {})[reason] = int(counter.get("packets", 0))
    return out


# ------------------------------------------------------------------------------------------ the applier


class PortSecurity:
    """Keeps the kernel's two tables equal to the elements of the given ports. When what the kernel has is
    not known (start, a refused transaction, a forced resync), it is read back first: adopted and changed
    by the difference when it is ours, replaced in one transaction when not."""

    def __init__(self, nft: Nft) -> None:
        self.nft = nft
        self._known = False  # False: what the kernel has is not known (read it back before writing)
        self._ports: dict[str, Port] = {}  # the guarded ports last written, by interface
        self.last_size = 0  # elements (and counters) written by the last transaction: for tests and benchmarks

    async def read(self) -> Elements | None:
        """What the kernel has; None when a table is missing or not ours."""
        docs = {}
        for family in ("inet", "arp"):
            try:
                docs[family] = await self.nft.list_json("table", family, TABLE)
            except NftError:
                return None
        try:
            return parse(docs)
        except (NotOurs, ValueError, KeyError, TypeError):
            return None

    def invalidate(self) -> None:
        """Read the kernel back before the next write (a periodic resync repairs drift this way)."""
        self._known = False

    async def apply(self, ports: Iterable[Port]) -> int:
        """Make the kernel match `ports`; returns the number of elements written (0: nothing to do).
        NftError when nft refuses (nothing was changed: one transaction); the next call reads back.
        Once the kernel is known, only the ports that differ from the last call are looked at beyond one
        comparison each: a change costs that port's elements, in time and in the transaction."""
        want = {p.interface: p for p in ports if p.port_security}
        if not self._known:
            have = await self.read()
            new = elements(want.values())
            text = ruleset(new) if have is None else changes(have, new)
            size = new.size() if have is None else _delta(have, new)
        else:
            touched = [i for i in self._ports.keys() | want.keys()
                       if self._ports.get(i) is not want.get(i) and self._ports.get(i) != want.get(i)]
            text, size = self._difference(touched, want)
        await self._write(text)
        self._known = True
        self._ports = want
        self.last_size = size
        return size

    def _difference(self, touched: list[str], want: Mapping[str, Port]) -> tuple[str | None, int]:
        """The nft text and element count that take the `touched` interfaces from what was written to `want`."""
        before = elements(self._ports[i] for i in touched if i in self._ports)
        after = elements(want[i] for i in touched if i in want)
        return changes(before, after), _delta(before, after)

    async def _write(self, text: str | None) -> None:
        if text is None:
            return
        try:
            await self.nft.script("port security", text)
        except NftError:
            self._known = False  # (one transaction: nothing changed, but read back before the next write)
            raise

    @property
    def known(self) -> bool:
        """What the kernel has is known: `update` may be used (else `apply`, which reads it back)."""
        return self._known

    async def update(self, changed: Mapping[str, Port | None]) -> int:
        """Make the kernel match for the ports on these interfaces only (interface -> its port now, as
        `guarded_port` gives it; None: no port there); the others are not looked at. The kernel must be
        known. Returns the number of elements written; NftError as `apply`."""
        assert self._known, "update needs the kernel known: apply first"
        want = {i: p for i, p in changed.items() if p is not None and p.port_security}
        touched = [i for i in changed if self._ports.get(i) != want.get(i)]
        text, size = self._difference(touched, want)
        await self._write(text)
        for i in touched:
            if i in want:
                self._ports[i] = want[i]
            else:
                self._ports.pop(i, None)
        self.last_size = size
        return size

    async def drops(self) -> dict[str, dict[str, int]]:
        """Packets dropped so far by interface and reason ({} when the tables are not there)."""
        docs = {}
        for family in ("inet", "arp"):
            try:
                docs[family] = await self.nft.list_json("counters", "table", family, TABLE)
            except NftError:
                continue
        return parse_drops(docs)


def _delta(old: Elements, new: Elements) -> int:
    names = set(old.sets) | set(new.sets)
    return (sum(len(old.sets.get(n, frozenset()) ^ new.sets.get(n, frozenset())) for n in names)
            + len(old.counters ^ new.counters))
