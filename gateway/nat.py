"""Pure: tenants -> nftables JSON. One shared table, `inet nvfgw`, whose base chains only DISPATCH through
verdict maps to per-tenant chains (`<tenant>_zone`, `_in`, `_mark`, `_dnat`, `_fwd`, `_snat`) and counters
(`<tenant>_out`, `_in`, `_drops`). A change to one tenant is ONE transaction that flushes and refills that
tenant's chains and adds/deletes only its own map elements: no other tenant's rule, counter or flow is
touched, and a packet finds its tenant in O(1) whatever the number of tenants.

Why not one table per tenant (the first version): every table brings its own base chains, and the kernel
allows at most 1024 hooks per hook point (MAX_HOOK_COUNT in net/netfilter/core.c): three prerouting chains
per tenant stopped at about 340 tenants ("Could not process rule: Argument list too long"), and every
packet would have run through every tenant's base chains.

Every tenant has one number `tid` (its routing table number, vnet.desired.allocate_tables) used as
- the packet mark: set before netfilter for NVGRE traffic (gateway/dataplane.py, tc per VSID), or by the
  tenant's `_in` chain for directly attached interfaces and its sites' tunnels; `ip rule fwmark tid lookup
  tid` routes by it,
- the conntrack zone, in BOTH directions: the tenant's own traffic by its mark, traffic from outside by
  the destination (its SNAT addresses, floating IPs, public prefixes are its alone, tenants.check_tenants).
  Overlapping private addresses therefore never meet in one zone, not even in reply tuples (two tenants'
  VMs 10.0.0.5:9000 answering the same client through their floating IPs stay apart),
- the conntrack mark: copied back to the packet mark for every later packet of a flow, so replies from
  outside and floating-IP traffic are routed into the tenant's table.
Marks MARK_MIN..ZONE_MAX are the gateway's; nothing else on the gateway may use them.
SNAT and DNAT match the external interfaces (set `ext`): with VRFs, netfilter sees a packet once per
device, and an unrestricted masquerade would NAT twice.

Hook priorities: raw (-300) zone and mark, mangle (-150) ct mark <-> meta mark, dstnat (-100) floating IPs,
forward (0) counters and drops, srcnat (100) SNAT.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nvfabric.gateway import sites
from nvfabric.gateway.tenants import Tenant
from nvfabric.vnet.model import Address, Network

FAMILY = "inet"
TABLE = "nvfgw"
MARK_MIN = 1000  # vnet.desired.TABLE_MIN: tenant ids are routing table numbers
ZONE_MAX = 0xFFFF  # conntrack zones are 16 bit
COUNTERS = ("out", "in", "drops")
CHAINS = ("zone", "in", "mark", "dnat", "fwd", "snat")
OWNED = {"family": FAMILY, "table": TABLE}


@dataclass(frozen=True)
class TenantNat:
    tenant: Tenant
    tid: int  # mark = zone = routing table number

    def __post_init__(self) -> None:
        if not MARK_MIN <= self.tid <= ZONE_MAX:
            raise ValueError(f"tenant {self.tenant.name}: id {self.tid} does not fit a conntrack zone "
                             f"({MARK_MIN}..{ZONE_MAX})")


# ---------------------------------------------------------------------- expression builders


def _eq(left: dict, right: Any) -> dict:
    return {"match": {"op": "==", "left": left, "right": right}}


def _meta(key: str) -> dict:
    return {"meta": {"key": key}}


def _ct(key: str) -> dict:
    return {"ct": {"key": key}}


def _set_of(values: Sequence[Any]) -> Any:
    return values[0] if len(values) == 1 else {"set": list(values)}


def _addr(a: Address | Network) -> Any:
    if isinstance(a, ipaddress.IPv4Network | ipaddress.IPv6Network):
        if a.prefixlen == a.max_prefixlen:
            return str(a.network_address)
        return {"prefix": {"addr": str(a.network_address), "len": a.prefixlen}}
    return str(a)


def _proto(version: int) -> str:
    return "ip" if version == 4 else "ip6"


def _addr_match(field: str, version: int, values: Sequence[Address | Network]) -> dict:
    return _eq({"payload": {"protocol": _proto(version), "field": field}}, _set_of([_addr(v) for v in values]))


def _mark_set(value: Any) -> dict:
    return {"mangle": {"key": _meta("mark"), "value": value}}


def _ctmark_set(value: int) -> dict:
    return {"mangle": {"key": _ct("mark"), "value": value}}


def _zone_set(value: int) -> dict:
    return {"mangle": {"key": _ct("zone"), "value": value}}


NEW = {"match": {"op": "in", "left": _ct("state"), "right": "new"}}
L4_PORTS = _eq(_meta("l4proto"), {"set": ["tcp", "udp"]})
EXT_IN = _eq(_meta("iifname"), "@ext")
EXT_OUT = _eq(_meta("oifname"), "@ext")
OURS = {"range": [MARK_MIN, ZONE_MAX]}

# map name -> (key type, interval)
MAPS = {"m_zone": ("mark", False), "i_in": ("ifname", False), "a4_zone": ("ipv4_addr", False),
        "a6_zone": ("ipv6_addr", False), "p6_zone": ("ipv6_addr", True), "p6_mark": ("ipv6_addr", True),
        "a4_dnat": ("ipv4_addr", False),
        "a6_dnat": ("ipv6_addr", False), "c_fwd": ("mark", False), "c_snat": ("mark", False)}


def _chain(tenant: str, kind: str) -> str:
    return f"{tenant}_{kind}"


def _rule(chain: str, *expr: dict) -> dict:
    return {"add": {"rule": {**OWNED, "chain": chain, "expr": list(expr)}}}


def _vmap(key: dict, name: str) -> dict:
    return {"vmap": {"key": key, "data": f"@{name}"}}


def base_commands(external: Sequence[str]) -> list[dict]:
    """The shared table: replaced whole (start, resync). Dispatch only; nothing per tenant."""
    table = {"family": FAMILY, "name": TABLE}
    cmds: list[dict] = [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}},
                        {"add": {"set": {**OWNED, "name": "ext", "type": "ifname"}}},
                        {"add": {"element": {**OWNED, "name": "ext", "elem": list(external)}}}]
    for name, (kind, interval) in MAPS.items():
        cmds.append({"add": {"map": {**OWNED, "name": name, "type": kind, "map": "verdict",
                                     **({"flags": ["interval"]} if interval else {})}}})
    for chain, kind, hook, prio in (("raw", "filter", "prerouting", -300), ("mangle", "filter", "prerouting", -150),
                                    ("dnat", "nat", "prerouting", -100), ("fwd", "filter", "forward", 0),
                                    ("snat", "nat", "postrouting", 100)):
        cmds.append({"add": {"chain": {**OWNED, "name": chain, "type": kind, "hook": hook, "prio": prio,
                                       "policy": "accept"}}})
    cmds += [
        _rule("raw", _vmap(_meta("iifname"), "i_in")),  # directly attached tenants: mark and zone
        _rule("raw", _vmap(_meta("mark"), "m_zone")),  # NVGRE tenants, marked by tc: zone
        _rule("raw", EXT_IN, _vmap({"payload": {"protocol": "ip", "field": "daddr"}}, "a4_zone")),
        _rule("raw", EXT_IN, _vmap({"payload": {"protocol": "ip6", "field": "daddr"}}, "a6_zone")),
        _rule("raw", EXT_IN, _vmap({"payload": {"protocol": "ip6", "field": "daddr"}}, "p6_zone")),
        _rule("mangle", _eq(_meta("mark"), OURS), NEW, {"mangle": {"key": _ct("mark"), "value": _meta("mark")}}),
        _rule("mangle", EXT_IN, NEW, _vmap({"payload": {"protocol": "ip6", "field": "daddr"}}, "p6_mark")),
        _rule("mangle", _eq(_ct("mark"), OURS), {"mangle": {"key": _meta("mark"), "value": _ct("mark")}}),
        _rule("dnat", EXT_IN, _vmap({"payload": {"protocol": "ip", "field": "daddr"}}, "a4_dnat")),
        _rule("dnat", EXT_IN, _vmap({"payload": {"protocol": "ip6", "field": "daddr"}}, "a6_dnat")),
        _rule("fwd", _vmap(_ct("mark"), "c_fwd")),
        _rule("snat", EXT_OUT, _vmap(_ct("mark"), "c_snat")),
    ]
    return cmds


def _elements(nat: TenantNat) -> dict[str, list[tuple[Any, str]]]:
    """map name -> [(key, target chain)] for one tenant."""
    t, name = nat.tenant, nat.tenant.name
    pubs = {4: [], 6: []}  # type: dict[int, list[Any]]
    for a in t.public_addresses:
        pubs[a.version].append(str(a))
    out: dict[str, list[tuple[Any, str]]] = {
        "m_zone": [(nat.tid, _chain(name, "zone"))],
        # a site's tunnel attaches the tenant as an interface does: what arrives from the site is the tenant's
        "i_in": [(i, _chain(name, "in")) for i in (*t.interfaces, *(sites.device_name(nat.tid, s) for s in t.sites))],
        "a4_zone": [(a, _chain(name, "zone")) for a in pubs[4]],
        "a6_zone": [(a, _chain(name, "zone")) for a in pubs[6]],
        "p6_zone": [(_interval(p), _chain(name, "zone")) for p in t.public_prefixes],
        "p6_mark": [(_interval(p), _chain(name, "mark")) for p in t.public_prefixes],
        "a4_dnat": [(str(f.public), _chain(name, "dnat")) for f in t.floating_ips if f.public.version == 4],
        "a6_dnat": [(str(f.public), _chain(name, "dnat")) for f in t.floating_ips if f.public.version == 6],
        "c_fwd": [(nat.tid, _chain(name, "fwd"))],
        "c_snat": [(nat.tid, _chain(name, "snat"))],
    }
    return out


def _interval(value: Any) -> dict:
    net = ipaddress.ip_network(value)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _key(value: Any) -> str:
    return repr(value)


def _tenant_rules(nat: TenantNat) -> list[dict]:
    t, tid, name = nat.tenant, nat.tid, nat.tenant.name
    cmds: list[dict] = []

    def rule(kind: str, *expr: dict) -> None:
        cmds.append(_rule(_chain(name, kind), *expr))

    rule("zone", _zone_set(tid))
    rule("in", _mark_set(tid), _zone_set(tid))
    rule("mark", _ctmark_set(tid))
    for fip in t.floating_ips:
        rule("dnat", _addr_match("daddr", fip.public.version, [fip.public]), _mark_set(tid), _ctmark_set(tid),
             {"dnat": {"family": _proto(fip.public.version), "addr": str(fip.private)}})
    rule("fwd", {"match": {"op": "in", "left": _ct("state"), "right": "invalid"}},
         {"counter": _chain(name, "drops")}, {"drop": None})
    own = list(t.prefixes)
    for version in (4, 6):
        sources = [p for p in own if p.version == version] + (list(t.public_prefixes) if version == 6 else [])
        # each prefix once, and none inside another: nft refuses an anonymous interval set whose elements
        # overlap (a public prefix is usually the subnet itself; seen as ENOENT "Could not process rule")
        sources = [p for i, p in enumerate(sources)
                   if not any(q != p and p.subnet_of(q) for q in sources) and p not in sources[:i]]
        if sources:
            # a tenant packet leaving by the external side from an address not its own is spoofed
            rule("fwd", EXT_OUT, _eq(_meta("nfproto"), "ipv4" if version == 4 else "ipv6"),
                 {"match": {"op": "!=", "left": {"payload": {"protocol": _proto(version), "field": "saddr"}},
                            "right": _set_of([_addr(p) for p in sources])}},
                 _eq({"ct": {"key": "direction"}}, "original"), {"counter": _chain(name, "drops")}, {"drop": None})
    rule("fwd", EXT_OUT, {"counter": _chain(name, "out")})
    rule("fwd", EXT_IN, {"counter": _chain(name, "in")})
    # snat (the base chain matched the external side): a floating IP's CA leaves with its public address,
    # the rest of the tenant with its SNAT address
    for fip in t.floating_ips:
        rule("snat", _addr_match("saddr", fip.private.version, [fip.private]),
             {"snat": {"family": _proto(fip.private.version), "addr": str(fip.public)}})
    for version in (4, 6):
        sources = [p for p in own if p.version == version]
        if not sources:
            continue
        if version == 6 and t.public_prefixes:
            rule("snat", _addr_match("saddr", 6, list(t.public_prefixes)), {"accept": None})
        snat = t.snat_for(version)
        if snat is None:
            continue
        lo, hi = snat.ports
        match = _addr_match("saddr", version, sources)
        rule("snat", match, L4_PORTS, {"snat": {"family": _proto(version), "addr": str(snat.address),
                                                "port": {"range": [lo, hi]}}})
        rule("snat", match, {"snat": {"family": _proto(version), "addr": str(snat.address)}})  # ICMP etc.
    return cmds


def tenant_commands(name: str, new: TenantNat | None, old: TenantNat | None) -> list[dict]:
    """Replace (or create, or delete for new=None) ONE tenant: its chains are flushed and refilled, its map
    elements added/deleted by difference with `old` (what the kernel has for it), its counters kept."""
    cmds: list[dict] = []
    olds = _elements(old) if old is not None else {}
    news = _elements(new) if new is not None else {}
    # element deletes first: a chain can be deleted only once no map element jumps to it
    for m in MAPS:
        have = {_key(k): (k, c) for k, c in olds.get(m, [])}
        want = {_key(k): (k, c) for k, c in news.get(m, [])}
        gone = [have[k] for k in have if k not in want or want[k][1] != have[k][1]]
        if gone:
            cmds.append({"delete": {"element": {**OWNED, "name": m, "elem": [k for k, _ in gone]}}})
    if new is None:
        if old is not None:
            for kind in CHAINS:
                cmds.append({"delete": {"chain": {**OWNED, "name": _chain(name, kind)}}})
            for c in COUNTERS:
                cmds.append({"delete": {"counter": {**OWNED, "name": _chain(name, c)}}})
        return cmds
    for c in COUNTERS:
        cmds.append({"add": {"counter": {**OWNED, "name": _chain(name, c)}}})  # kept when it exists
    for kind in CHAINS:
        chain = {**OWNED, "name": _chain(name, kind)}
        cmds += [{"add": {"chain": chain}}, {"flush": {"chain": chain}}]
    cmds += _tenant_rules(new)
    for m in MAPS:
        have = {_key(k): c for k, c in olds.get(m, [])}
        add = [[k, {"jump": {"target": c}}] for k, c in news.get(m, []) if have.get(_key(k)) != c]
        if add:
            cmds.append({"add": {"element": {**OWNED, "name": m, "elem": add}}})
    return cmds


def full_document(tenants: Iterable[TenantNat], external: Sequence[str]) -> dict:
    """Start and resync: the whole table, every tenant."""
    tenants = sorted(tenants, key=lambda n: n.tenant.name)
    cmds = base_commands(external)
    # every tenant chain declared before the maps: nft 1.0.6 refuses (ENOENT, "Could not process rule") an
    # element of an INTERVAL verdict map created in the same transaction that jumps to a chain created
    # after the map (seen with a public IPv6 prefix; a change to an existing table is not affected)
    cmds[3:3] = [{"add": {"chain": {**OWNED, "name": _chain(n.tenant.name, kind)}}} for n in tenants for kind in CHAINS]
    for nat in tenants:
        cmds += tenant_commands(nat.tenant.name, nat, None)
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *cmds]}


def transaction(changes: Mapping[str, tuple[TenantNat | None, TenantNat | None]]) -> dict:
    """One atomic document: each tenant in `changes` (name -> (new, old)) replaced or deleted; nothing else."""
    cmds: list[dict] = []
    for name in sorted(changes):
        new, old = changes[name]
        cmds += tenant_commands(name, new, old)
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *cmds]}


def rule_count(doc: dict) -> int:
    return sum(1 for c in doc["nftables"] if "add" in c and "rule" in c["add"])


# ---------------------------------------------------------------------- read back


@dataclass(frozen=True)
class TenantCounters:
    packets_out: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    bytes_in: int = 0
    drops: int = 0


def parse_counters(doc: dict) -> dict[str, TenantCounters]:
    """`nft -j list counters table inet nvfgw` -> tenant name -> counters; other tables are ignored."""
    found: dict[str, dict[str, tuple[int, int]]] = {}
    for item in doc.get("nftables", []):
        c = item.get("counter")
        if not c or c.get("table") != TABLE or c.get("family") != FAMILY:
            continue
        tenant, _, kind = str(c["name"]).rpartition("_")
        if tenant and kind in COUNTERS:
            found.setdefault(tenant, {})[kind] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
    out = {}
    for tenant, cs in found.items():
        o, i, d = cs.get("out", (0, 0)), cs.get("in", (0, 0)), cs.get("drops", (0, 0))
        out[tenant] = TenantCounters(o[0], o[1], i[0], i[1], d[0])
    return out


def adopted_ids(doc: dict) -> dict[str, int]:
    """`nft -j list map inet nvfgw m_zone` -> tenant name -> id: what a previous run gave each tenant (the
    map sends a tenant's mark to its `<tenant>_zone` chain). Elements of another shape are ignored."""
    out: dict[str, int] = {}
    for item in doc.get("nftables", []):
        m = item.get("map")
        if not m or m.get("name") != "m_zone" or m.get("table") != TABLE or m.get("family") != FAMILY:
            continue
        for elem in m.get("elem", []):
            try:
                key, verdict = elem
                chain = verdict["jump"]["target"]
            except (TypeError, ValueError, KeyError):
                continue
            tenant, _, kind = str(chain).rpartition("_")
            if tenant and kind == "zone" and isinstance(key, int) and MARK_MIN <= key <= ZONE_MAX:
                out[tenant] = key
    return out


# ---------------------------------------------------------------------- trace (ovn-trace for NAT)


@dataclass(frozen=True)
class FiveTuple:
    proto: str  # tcp | udp | icmp | ...
    src: Address
    sport: int
    dst: Address
    dport: int


@dataclass(frozen=True)
class NatDecision:
    tenant: str | None
    direction: str  # "outbound" | "inbound"
    action: str  # "snat" | "dnat" | "route" (no NAT) | "drop"
    translated: FiveTuple | None
    zone: int | None
    mark: int | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        tr = self.translated
        return {"tenant": self.tenant, "direction": self.direction, "action": self.action, "zone": self.zone,
                "mark": self.mark, "reason": self.reason,
                "translated": None if tr is None else {"proto": tr.proto, "src": str(tr.src), "sport": tr.sport,
                                                       "dst": str(tr.dst), "dport": tr.dport}}


def trace(tenants: Iterable[TenantNat], flow: FiveTuple, from_tenant: str | None) -> NatDecision:
    """The decision the rules of `tenant_commands` take for the first packet of `flow`, arriving from
    the tenant `from_tenant` (outbound) or from the external side (None). Mirrors the rule order above."""
    nats = {n.tenant.name: n for n in tenants}
    if from_tenant is not None:
        nat = nats.get(from_tenant)
        if nat is None:
            return NatDecision(from_tenant, "outbound", "drop", None, None, None, "no such tenant on this gateway")
        t = nat.tenant
        if not any(flow.src in p for p in t.prefixes):
            return NatDecision(t.name, "outbound", "drop", None, nat.tid, nat.tid,
                               f"source {flow.src} is in none of the tenant's subnets (spoofed): counted in drops")
        for i, fip in enumerate(t.floating_ips):
            if fip.private == flow.src:
                return NatDecision(t.name, "outbound", "snat",
                                   FiveTuple(flow.proto, fip.public, flow.sport, flow.dst, flow.dport), nat.tid,
                                   nat.tid, f"floating_ips[{i}]: {fip.private} leaves as {fip.public}")
        if flow.src.version == 6 and any(flow.src in p for p in t.public_prefixes):
            return NatDecision(t.name, "outbound", "route", flow, nat.tid, nat.tid, "public IPv6 prefix: no NAT")
        snat = t.snat_for(flow.src.version)
        if snat is None:
            return NatDecision(t.name, "outbound", "route", flow, nat.tid, nat.tid,
                               f"no SNAT address for IPv{flow.src.version}: leaves untranslated")
        ported = flow.proto in ("tcp", "udp")
        sport = flow.sport if ported and snat.ports[0] <= flow.sport <= snat.ports[1] else None
        port_text = f"port {snat.ports[0]}-{snat.ports[1]} (kept if free)" if ported else "no port (not TCP/UDP)"
        return NatDecision(t.name, "outbound", "snat",
                           FiveTuple(flow.proto, snat.address, sport if sport is not None else 0, flow.dst,
                                     flow.dport), nat.tid, nat.tid,
                           f"SNAT to {snat.address}, {port_text}, zone {nat.tid}")
    for nat in nats.values():
        t = nat.tenant
        for i, fip in enumerate(t.floating_ips):
            if fip.public == flow.dst:
                return NatDecision(t.name, "inbound", "dnat",
                                   FiveTuple(flow.proto, flow.src, flow.sport, fip.private, flow.dport), nat.tid,
                                   nat.tid, f"floating_ips[{i}]: {fip.public} -> {fip.private}")
        for s in t.snat:
            if s.address == flow.dst:
                return NatDecision(t.name, "inbound", "route", None, nat.tid, None,
                                   f"{s.address} is the tenant's SNAT address: only replies of its flows pass "
                                   "(conntrack); a new flow to it is not forwarded into the tenant")
        for p in t.public_prefixes:
            if flow.dst in p:
                return NatDecision(t.name, "inbound", "route", flow, nat.tid, nat.tid, f"public prefix {p}: no NAT")
    return NatDecision(None, "inbound", "drop", None, None, None, f"{flow.dst} belongs to no tenant")
