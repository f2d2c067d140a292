"""The routing-domain mark: every packet entering a routing domain's VRF is marked with the domain's table
number, so that the ICMPv6 errors the host sends about it are routed back into that domain.

Why (docs/dataplane.md, "Packet Too Big"): for a too-big packet, ip6_forward sets the packet's device to the
OUTPUT device before icmpv6_send, and icmp6_send picks the routing table from that device's VRF. Our output
device is the NVGRE device, outside every VRF, so the Packet Too Big was looked up in the main table, found
no route to the VM and was never sent (IPv4 keeps the input device: "fragmentation needed" works). With
`net.ipv6.fwmark_reflect=1` the error carries the packet's mark, and vnet.desired's `FwmarkRule` per routing
domain (`fwmark T iif lo ipproto ipv6-icmp lookup T`) routes it in the tenant's own table: right even when
tenants overlap. An address in the VRF does not help (tried in the VM: still nothing sent).

The mark is set by nftables (rules cannot set marks): one table `inet nvfabric-vrf` of our own (the GRE
filter's `inet nvfabric` is vnet/nftables.py's), one prerouting rule `meta mark set iifname map @vrf`, matched
on the VRF device's own prerouting pass (the kernel runs the hook once for the port, once for the VRF). A
packet of a device not in the map is left as it is. A routing domain added or removed is one element
change; the outer NVGRE packet inherits the mark, which only the ICMPv6 rule (ipproto 58, iif lo) looks at.

The same table guards the host's addresses in the routing domains (vnet.desired: each subnet gateway is a
local address of its VRF device): an input chain drops everything but ICMP and ICMPv6 that arrives through one
of our devices, so a VM reaches its gateway's echo, ARP and neighbour discovery, and nothing else on the host
(the API's port, BGP, any socket the host binds to all addresses, whatever `tcp_l3mdev_accept` says).
"Through": the input device is one of ours (a VRF: where an IPv4 packet, or an IPv6 one to a global address,
arrives after its port; an NVGRE device: a decapsulated packet) or the packet's VRF is (`sdifname`: IPv6 to a
link-local or multicast address keeps its port as input device). DHCP needs no exception: the responder
reads it from an AF_PACKET socket, before this hook. Counted in the rule's counter.
"""

from __future__ import annotations

from collections.abc import Mapping

from nvfabric.vnet.kernel.objects import DEVICE_PREFIX
from nvfabric.vnet.nftables import FAMILY, Nft, NftError, Owned

TABLE = "nvfabric-vrf"
MAP = "vrf"
GUARD = "only ICMP to the host through a routing domain"
# The table's layout, kept as the comment of the prerouting rule: a table read back at start with this mark
# and these rules per chain is this code's, and only its map elements are compared (a restart writes
# nothing when they are right); any other is replaced whole.
LAYOUT = "nvfabric vrf marks 2"
RULES = {"prerouting": 1, "input": 2}
_OWNED = {"family": FAMILY, "table": TABLE}
_HEAD = {"metainfo": {"json_schema_version": 1}}


def ruleset(marks: Mapping[str, int]) -> dict:
    """The whole table (replacing whatever is there, in one transaction): VRF device name -> mark."""
    table = {"family": FAMILY, "name": TABLE}
    cmds: list[dict] = [
        {"add": {"table": table}},
        {"delete": {"table": table}},  # with the add before it: a replace, inside one transaction
        {"add": {"table": table}},
        {"add": {"map": {**_OWNED, "name": MAP, "type": "ifname", "map": "mark"}}},
        # mangle priority: before conntrack and routing, like any mark that routing should see
        {"add": {"chain": {**_OWNED, "name": "prerouting", "type": "filter", "hook": "prerouting", "prio": -150,
                           "policy": "accept"}}},
        {"add": {"rule": {**_OWNED, "chain": "prerouting", "comment": LAYOUT, "expr": [
            {"mangle": {"key": {"meta": {"key": "mark"}},
                        "value": {"map": {"key": {"meta": {"key": "iifname"}}, "data": f"@{MAP}"}}}},
        ]}}},
        {"add": {"chain": {**_OWNED, "name": "input", "type": "filter", "hook": "input", "prio": 0,
                           "policy": "accept"}}},
        *({"add": {"rule": {**_OWNED, "chain": "input", "comment": GUARD, "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": key}}, "right": f"{DEVICE_PREFIX}*"}},
            {"match": {"op": "!=", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["icmp", "ipv6-icmp"]}}},
            {"counter": None},
            {"drop": None},
        ]}}} for key in ("iifname", "sdifname")),
    ]
    if marks:
        cmds.append({"add": {"element": {**_OWNED, "name": MAP, "elem": _elems(marks)}}})
    return {"nftables": [_HEAD, *cmds]}


def changes(old: Mapping[str, int], new: Mapping[str, int]) -> dict | None:
    """Map elements only: deletes (and changed values) first, then adds; None when nothing differs."""
    gone = {k: v for k, v in old.items() if new.get(k) != v}
    added = {k: v for k, v in new.items() if old.get(k) != v}
    cmds: list[dict] = []
    if gone:
        cmds.append({"delete": {"element": {**_OWNED, "name": MAP, "elem": _elems(gone)}}})
    if added:
        cmds.append({"add": {"element": {**_OWNED, "name": MAP, "elem": _elems(added)}}})
    return {"nftables": [_HEAD, *cmds]} if cmds else None


def parse(doc: dict) -> dict[str, int] | None:
    """`nft -j list table inet nvfabric-vrf` -> its map (VRF device -> mark); None when the table is not one
    this code wrote (no layout mark, other rules): then it is replaced."""
    marks: dict[str, int] = {}
    rules: dict[str, int] = {}
    marked = False
    for item in doc.get("nftables", []):
        if "map" in item and item["map"].get("name") == MAP:
            marks = {str(k): int(v) for k, v in item["map"].get("elem", [])}
        elif "rule" in item:
            rule = item["rule"]
            rules[rule.get("chain")] = rules.get(rule.get("chain"), 0) + 1
            marked = marked or rule.get("comment") == LAYOUT
    return marks if marked and rules == RULES else None


def _elems(marks: Mapping[str, int]) -> list:
    return [[name, mark] for name, mark in sorted(marks.items())]


class VrfMarks:
    """Keeps the kernel's map equal to the given one: the whole table at the first write (and after a
    refused one), then only the elements that changed."""

    def __init__(self, nft: Nft) -> None:
        self.nft = nft
        self._owned: Owned[dict[str, int]] = Owned(ruleset, changes, lambda doc: nft.transaction("vrf marks", doc))

    @property
    def applied(self) -> dict[str, int] | None:
        return self._owned.applied

    async def apply(self, marks: Mapping[str, int]) -> None:
        await self._owned.apply(dict(marks))

    async def adopt(self) -> dict[str, int] | None:
        """Read the table back (a restart): when it is ours, what it maps is taken as applied, so the next
        `apply` writes only the elements that differ (nothing when they are right); else (absent, another
        layout) the next `apply` replaces it. Returns the map adopted."""
        try:
            found = parse(await self.nft.list_json("table", FAMILY, TABLE))
        except (NftError, ValueError, TypeError):
            found = None
        self._owned.applied = found
        return found

    async def read(self) -> dict[str, int] | None:
        """The map as the kernel has it; None when the table does not exist."""
        try:
            doc = await self.nft.list_json("map", FAMILY, TABLE, MAP)
        except NftError:
            return None
        for item in doc.get("nftables", []):
            found = item.get("map")
            if found and found.get("name") == MAP:
                return {str(k): int(v) for k, v in found.get("elem", [])}
        return {}
