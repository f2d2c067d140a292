"""Pure: tenants -> nftables JSON. One table per tenant, `inet nvfgw-<name>`, so a change to one tenant is a
transaction that replaces that table only: no other tenant's rules, counters or flows are touched.

Every tenant has one number `tid` (its routing table number, vnet.desired.allocate_tables) used as
- the packet mark: set before netfilter for NVGRE traffic (gateway/mark.py, tc per VSID), or by this
  table's raw chain for directly attached interfaces; `ip rule fwmark tid lookup tid` routes by it,
- the conntrack zone, in BOTH directions: the tenant's own traffic by its mark, traffic from outside by
  the destination (its SNAT addresses, floating IPs, public prefixes are its alone, tenants.check_tenants).
  Overlapping private addresses therefore never meet in one zone, not even in reply tuples (two tenants'
  VMs 10.0.0.5:9000 answering the same client through their floating IPs stay apart),
- the conntrack mark: copied back to the packet mark for every later packet of a flow, so replies from
  outside and floating-IP traffic are routed into the tenant's table.
SNAT and DNAT match the external interface (`oifname`/`iifname`): with VRFs, netfilter sees a packet
once per device, and an unrestricted masquerade would NAT twice (shared/notes/dataplane.md).

Hook priorities: raw (-300) zone and mark, mangle (-150) ct mark <-> meta mark, dstnat (-100) floating IPs,
forward (0) counters and drops, srcnat (100) SNAT.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.tenants import Tenant
from vnet.model import Address, Network

FAMILY = "inet"
TABLE_PREFIX = "nvfgw-"
ZONE_MAX = 0xFFFF  # conntrack zones are 16 bit
COUNTERS = ("out", "in", "drops")


def table_name(tenant: str) -> str:
    return f"{TABLE_PREFIX}{tenant}"


@dataclass(frozen=True)
class TenantNat:
    tenant: Tenant
    tid: int  # mark = zone = routing table number

    def __post_init__(self) -> None:
        if not 1 <= self.tid <= ZONE_MAX:
            raise ValueError(f"tenant {self.tenant.name}: id {self.tid} does not fit a conntrack zone (1..{ZONE_MAX})")


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

# ---------------------------------------------------------------------- one tenant's table


def tenant_commands(nat: TenantNat, external: Sequence[str]) -> list[dict]:
    """The commands that (re)create one tenant's table: add, delete, add (a replace inside the transaction),
    then its content. Nothing here names another tenant."""
    t, tid = nat.tenant, nat.tid
    name = table_name(t.name)
    table = {"family": FAMILY, "name": name}
    owned = {"family": FAMILY, "table": name}
    ext_in = _eq(_meta("iifname"), _set_of(list(external)))
    ext_out = _eq(_meta("oifname"), _set_of(list(external)))
    mine = _eq(_meta("mark"), tid)
    my_ct = _eq(_ct("mark"), tid)
    cmds: list[dict] = [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}}]
    for counter in COUNTERS:
        cmds.append({"add": {"counter": {**owned, "name": counter}}})
    chains = (("raw", "filter", "prerouting", -300), ("mangle", "filter", "prerouting", -150),
              ("dnat", "nat", "prerouting", -100), ("fwd", "filter", "forward", 0),
              ("snat", "nat", "postrouting", 100))
    for chain, kind, hook, prio in chains:
        cmds.append({"add": {"chain": {**owned, "name": chain, "type": kind, "hook": hook, "prio": prio,
                                       "policy": "accept"}}})

    def rule(chain: str, *expr: dict) -> None:
        cmds.append({"add": {"rule": {**owned, "chain": chain, "expr": list(expr)}}})

    by_version: dict[int, list[Address | Network]] = {4: [], 6: []}
    for a in t.public_addresses:
        by_version[a.version].append(a)
    for p in t.public_prefixes:
        by_version[6].append(p)

    # raw: which zone. Directly attached interfaces are marked here; NVGRE traffic arrives marked.
    if t.interfaces:
        rule("raw", _eq(_meta("iifname"), _set_of(list(t.interfaces))), _mark_set(tid))
    rule("raw", mine, _zone_set(tid))
    for version, dests in by_version.items():
        if dests:
            rule("raw", ext_in, _addr_match("daddr", version, dests), _zone_set(tid))

    # mangle: new flows from the tenant get its ct mark; inbound to public prefixes too; then every
    # packet of the tenant's flows carries the mark (replies from outside are routed into its table)
    rule("mangle", mine, NEW, _ctmark_set(tid))
    if t.public_prefixes:
        rule("mangle", ext_in, _addr_match("daddr", 6, list(t.public_prefixes)), NEW, _ctmark_set(tid))
    rule("mangle", my_ct, _mark_set(_ct("mark")))

    # dnat: floating IPs, inbound
    for fip in t.floating_ips:
        rule("dnat", ext_in, _addr_match("daddr", fip.public.version, [fip.public]), _mark_set(tid),
             _ctmark_set(tid), {"dnat": {"family": _proto(fip.public.version), "addr": str(fip.private)}})

    # forward: counters per direction; invalid state and leaks of unroutable sources are dropped
    rule("fwd", my_ct, {"match": {"op": "in", "left": _ct("state"), "right": "invalid"}},
         {"counter": "drops"}, {"drop": None})
    own = [p for p in t.prefixes]
    for version in (4, 6):
        sources = [p for p in own if p.version == version]
        if sources:
            # a tenant packet leaving by the external side from an address not its own is spoofed
            rule("fwd", my_ct, ext_out, {"match": {"op": "!=", "left": {"payload": {
                "protocol": _proto(version), "field": "saddr"}}, "right": _set_of(
                [_addr(p) for p in sources])}}, _eq(_meta("nfproto"), "ipv4" if version == 4 else "ipv6"),
                _eq({"ct": {"key": "direction"}}, "original"), {"counter": "drops"}, {"drop": None})
    rule("fwd", my_ct, ext_out, {"counter": "out"})
    rule("fwd", my_ct, ext_in, {"counter": "in"})

    # snat: a floating IP's CA leaves with its public address; the rest of the tenant with its SNAT address
    for fip in t.floating_ips:
        rule("snat", ext_out, my_ct, _addr_match("saddr", fip.private.version, [fip.private]),
             {"snat": {"family": _proto(fip.private.version), "addr": str(fip.public)}})
    for version in (4, 6):
        sources = [p for p in own if p.version == version]
        if not sources:
            continue
        if version == 6 and t.public_prefixes:
            rule("snat", ext_out, my_ct, _addr_match("saddr", 6, list(t.public_prefixes)), {"accept": None})
        snat = t.snat_for(version)
        if snat is None:
            continue
        lo, hi = snat.ports
        base = (ext_out, my_ct, _addr_match("saddr", version, sources))
        rule("snat", *base, L4_PORTS, {"snat": {"family": _proto(version), "addr": str(snat.address),
                                                "port": {"range": [lo, hi]}}})
        rule("snat", *base, {"snat": {"family": _proto(version), "addr": str(snat.address)}})  # ICMP etc.
    return cmds


def delete_commands(tenant: str) -> list[dict]:
    table = {"family": FAMILY, "name": table_name(tenant)}
    # add first: deleting a table that was never created would fail the whole transaction
    return [{"add": {"table": table}}, {"delete": {"table": table}}]


def transaction(changes: Mapping[str, TenantNat | None], external: Sequence[str]) -> dict:
    """One atomic document: every tenant in `changes` replaced (or deleted, for None); nothing else."""
    cmds: list[dict] = []
    for name in sorted(changes):
        nat = changes[name]
        cmds.extend(delete_commands(name) if nat is None else tenant_commands(nat, external))
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
    """`nft -j list counters` (or a table listing) -> tenant name -> counters; tables not ours are ignored."""
    found: dict[str, dict[str, tuple[int, int]]] = {}
    for item in doc.get("nftables", []):
        c = item.get("counter")
        if not c or not str(c.get("table", "")).startswith(TABLE_PREFIX) or c.get("family") != FAMILY:
            continue
        tenant = c["table"][len(TABLE_PREFIX):]
        found.setdefault(tenant, {})[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
    out = {}
    for tenant, cs in found.items():
        o, i, d = cs.get("out", (0, 0)), cs.get("in", (0, 0)), cs.get("drops", (0, 0))
        out[tenant] = TenantCounters(o[0], o[1], i[0], i[1], d[0])
    return out


def owned_tables(doc: dict) -> set[str]:
    """Tenant names whose table exists, from `nft -j list tables`."""
    return {t["table"]["name"][len(TABLE_PREFIX):] for t in doc.get("nftables", [])
            if "table" in t and t["table"].get("family") == FAMILY
            and t["table"].get("name", "").startswith(TABLE_PREFIX)}


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
