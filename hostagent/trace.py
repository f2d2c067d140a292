"""Where a packet from one CA to another goes on this host: HNV's Select-NetVirtualizationNextHop, OVN's
ovn-trace for one routing domain.

Pure. The forwarding decision is the kernel's, made over the objects vnet/desired.py built for the routing
domain (the ones the agent reconciled): a longest-prefix match, then the lowest metric, in its VRF table
over the local CA routes (to the port), the encap routes (remote CAs, remote prefixes, customer routes via
a remote CA), the via routes (customer routes via a local appliance) and the unreachable default, after the
local routes of the VRF's own addresses (the subnet gateways: answered by this host). There is no second
derivation of forwarding here, so trace and table cannot disagree.

The model (catalog, lookup records) only explains what the objects cannot say: where the source enters,
which port or VM a route leads to and in which VSID, why a more specific route is absent, and which other
routing domain has an address. A "forwarded" trace names the route, the VSID in the GRE key, the PA and the
device the packet leaves by; a "dropped" one says which route or rule dropped it.

`arriving` traces the other direction: an NVGRE packet from another host's PA, judged first by the
decapsulation table the agent wrote (vnet/decap.py: known PA, served VSID, vouched inner source), then
routed in its routing domain.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import ip_address, ip_network

from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.decap import ETH_IPV4, ETH_IPV6, PASSED, DecapFilter
from nvfabric.vnet.desired import GLOBAL
from nvfabric.vnet.kernel.objects import (
    DEFAULT_METRIC,
    EncapRoute,
    KernelObject,
    LocalPortRoute,
    NvgreDevice,
    UnreachableRoute,
    ViaRoute,
    Vrf,
    VrfAddress,
)
from nvfabric.vnet.model import Address, LookupRecord, Port, RoutingDomain
from nvfabric.vnet.portsecurity import SPOOFED_SOURCE, networks


class Verdict(enum.StrEnum):
    FORWARDED = "forwarded"  # encapsulated towards another host's PA
    DELIVERED_LOCALLY = "delivered-locally"  # to a port on this host
    ANSWERED = "answered"  # by this host itself: a subnet gateway's address (ICMP only)
    DROPPED = "dropped"


@dataclass(frozen=True)
class Trace:
    routing_domain: str
    src: Address
    dst: Address
    verdict: Verdict
    reason: str
    vsid: int | None = None  # the destination's VSID (the GRE key is vsid << 8)
    pa: Address | None = None  # the provider address the packet is sent to (forwarded only)
    mac: str | None = None  # the destination VM's MAC when the destination is a known CA
    device: str | None = None  # the device the packet leaves by: a local port or the NVGRE device
    route: str | None = None  # the route that decided, in `ip route` words
    src_vsid: int | None = None
    ingress: str | None = None  # where the packet enters: the source's port, or the NVGRE device
    drops: int | None = None  # dropped by port security: the packets its port's counter for that reason has


Route = LocalPortRoute | EncapRoute | ViaRoute | UnreachableRoute


@dataclass(frozen=True)
class Table:
    """One routing domain's VRF table as vnet/desired.py built it, plus the host's NVGRE devices."""

    vrf: str
    number: int  # the VRF's table
    routes: tuple[Route, ...]
    addresses: frozenset[Address]  # the VRF's own (the subnet gateways): local routes, before every other
    devices: Mapping[int, str]  # the NVGRE device by PA family

    @classmethod
    def of(cls, desired: Mapping[str, Iterable[KernelObject]], routing_domain: str) -> Table | None:
        """From the desired objects by partition (vnet.desired: GLOBAL and one per routing domain); None
        while the routing domain has no VRF (not built yet)."""
        objects = list(desired.get(routing_domain, ()))
        vrf = next((o for o in objects if isinstance(o, Vrf)), None)
        if vrf is None:
            return None
        routes = tuple(o for o in objects if isinstance(o, Route) and o.table == vrf.table)
        addresses = frozenset(ip_address(o.address) for o in objects if isinstance(o, VrfAddress) and o.vrf == vrf.name)
        devices = {o.family: o.name for o in desired.get(GLOBAL, ()) if isinstance(o, NvgreDevice)}
        return cls(vrf.name, vrf.table, routes, addresses, devices)

    def lookup(self, dst: Address) -> Route | None:
        """The kernel's choice: the longest prefix holding dst, then the lowest metric. (vnet.desired never
        puts two routes under one key; were there two, the lower PA, as vnet/learn.py picks.)"""
        matches = [r for r in self.routes if r.family == dst.version and dst in ip_network(r.prefix)]
        return min(matches, key=_rank, default=None)

    def has(self, prefix: str, metric: int) -> bool:
        return any(r.prefix == prefix and r.metric == metric for r in self.routes)


def _rank(route: Route) -> tuple[int, int, int, bytes, str]:
    pa = ip_address(route.pa) if isinstance(route, EncapRoute) else None
    return (-_length(route), route.metric, pa.version if pa else 0, pa.packed if pa else b"", str(route))


def _length(route: Route) -> int:
    return ip_network(route.prefix).prefixlen


def trace(
    catalog: Catalog,
    records: Iterable[LookupRecord],
    desired: Mapping[str, Iterable[KernelObject]],
    routing_domain: str,
    src: Address,
    dst: Address,
    port: str | None = None,
    drops: Mapping[str, Mapping[str, int]] | None = None,
) -> Trace:
    """`desired`: the desired objects by partition (vnet.desired's `Desired.partitions`, or the agent's last
    reconciled ones): GLOBAL and the routing domain's are read. `port`: the packet is sent by that local
    port's VM, whatever its source (else it enters where its source is); port security decides first, and
    `drops` (packets dropped by port name and reason, Agent.port_drops) gives the counter it goes to.
    Raises vnet.catalog.NotFound for an unknown routing domain or port; every other outcome is a Trace."""
    domain = catalog.routing_domain(routing_domain)
    sender = catalog.port(port) if port is not None else None
    table = Table.of(desired, domain.name)
    devices = table.devices if table is not None else {}
    records = list(records)
    mine = [r for r in records if r.routing_domain == domain.name]
    # Ports with an active local record: a port whose MAC moved to another host (MAC mobility) stays in the
    # catalog but is not routed here.
    local = {r.ca: catalog.ports[r.port] for r in mine if r.local and r.port in catalog.ports}
    remote = {r.ca: r for r in mine if not r.local and r.pa is not None}

    def dropped(reason: str, *, route: str | None = None, src_vsid: int | None = None,
                ingress: str | None = None) -> Trace:
        return Trace(domain.name, src, dst, Verdict.DROPPED, reason, route=route, src_vsid=src_vsid, ingress=ingress)

    # Where the packet enters: a local port (the VM sends it) or the NVGRE device (another host sent it).
    if sender is not None:
        found = catalog.subnet(sender.vsid)
        if found is None or found[0].name != domain.name:
            return dropped(f"port {sender.name} is not in routing domain {domain.name}")
        if sender.port_security and not _may_send(sender, src):
            count = (drops or {}).get(sender.name, {}).get(SPOOFED_SOURCE)
            return Trace(domain.name, src, dst, Verdict.DROPPED,
                         f"port security, spoofed source: {src} is not an address of port {sender.name} (its CAs, "
                         f"allowed_addresses and IPv6 link-local; nftables counter {SPOOFED_SOURCE} of "
                         f"{sender.interface})", src_vsid=sender.vsid, ingress=sender.interface, drops=count)
        src_vsid, ingress = sender.vsid, sender.interface
    elif src in local:
        src_vsid, ingress = local[src].vsid, local[src].interface
    elif (configured := catalog.port_with(domain.name, src)) is not None:
        return dropped(f"source port {configured.name} is configured but not active on this host "
                       f"(its MAC is active elsewhere: MAC mobility)")
    elif src in remote:
        src_vsid, ingress = remote[src].vsid, devices.get(remote[src].pa.version)  # type: ignore[union-attr]
    else:
        return dropped(f"source not a CA of routing domain {domain.name}: no local port and no lookup record has "
                       f"{src}{_elsewhere(catalog, records, domain, src)}")
    if src.version != dst.version:
        return dropped(f"source is IPv{src.version} and destination IPv{dst.version}", src_vsid=src_vsid,
                       ingress=ingress)
    if table is None:
        return dropped(f"routing domain {domain.name} has no VRF on this host yet (its objects are not built)",
                       src_vsid=src_vsid, ingress=ingress)
    vrf = table.vrf
    if dst in table.addresses:
        # the kernel's local route of the VRF's own address: metric 0, before any route vnet.desired adds
        gateway_of = _gateway_of(domain, dst)
        what = f"subnet gateway of VSID {gateway_of}" if gateway_of is not None else f"an address of {vrf}"
        return Trace(domain.name, src, dst, Verdict.ANSWERED,
                     f"answered by this host ({what}): ICMP and ICMPv6 only, anything else is dropped by the host's "
                     f"input guard", vsid=gateway_of, device=vrf, route=f"local {dst} dev {vrf} table {table.number}",
                     src_vsid=src_vsid, ingress=ingress)
    route = table.lookup(dst)
    note = _absent(domain, table, remote, dst, route)

    def delivered(reason: str, port: Port | None, dev: str, words: str) -> Trace:
        return Trace(domain.name, src, dst, Verdict.DELIVERED_LOCALLY, reason, vsid=port.vsid if port else None,
                     mac=port.mac if port else None, device=dev, route=f"{words} vrf {vrf}", src_vsid=src_vsid,
                     ingress=ingress)

    if isinstance(route, LocalPortRoute):
        port = _port_on(catalog, route.dev)
        why = f"local port {port.name} of VSID {port.vsid}" if port else f"local route to {route.dev}"
        return delivered(f"{why}{note}", port, route.dev, f"{route.prefix} dev {route.dev}")
    if isinstance(route, ViaRoute):
        port = _port_on(catalog, route.dev)
        return delivered(f"customer route {route.prefix} via {route.via} on local port "
                         f"{port.name if port else route.dev}{note}", port, route.dev,
                         f"{route.prefix} via {route.via} dev {route.dev}")
    if isinstance(route, EncapRoute):
        relayed = "" if src in local or sender is not None else f" (relayed: {src} is not on this host)"
        why, mac = _encapsulated_because(domain, remote, dst, route)
        encap = "ip" if route.pa_family == 4 else "ip6"
        words = (f"{route.prefix} encap {encap} id {route.tun_id} dst {route.pa} key via {route.via} dev "
                 f"{route.dev} onlink vrf {vrf}")
        return Trace(domain.name, src, dst, Verdict.FORWARDED, f"{why}{relayed}{note}", vsid=route.vsid,
                     pa=ip_address(route.pa), mac=mac, device=route.dev, route=words, src_vsid=src_vsid,
                     ingress=ingress)
    what = "destination CA not routable here" if note else "unknown destination CA (no lookup record)"
    where = f"the unreachable route of routing domain {domain.name}" if route is not None else "no route"
    return dropped(
        f"{what}: {where}{note}{_inactive(catalog, domain, dst)}{_elsewhere(catalog, records, domain, dst)}",
        route=f"unreachable {route.prefix} vrf {vrf}" if route is not None else None, src_vsid=src_vsid,
        ingress=ingress,
    )


def _encapsulated_because(domain: RoutingDomain, remote: Mapping[Address, LookupRecord], dst: Address,
                          route: EncapRoute) -> tuple[str, str | None]:
    """What an encap route was built from (vnet/desired.py): the destination's lookup record, a configured
    customer route via a remote CA, or a remote prefix; and the destination VM's MAC when it is one."""
    record = remote.get(dst)
    if record is not None and route.prefix == f"{dst}/{dst.max_prefixlen}":
        return f"lookup record: {dst} is {record.mac} in VSID {route.vsid} behind PA {route.pa}", record.mac
    configured = next((r for r in domain.customer_routes if r.next_hop is not None and str(r.prefix) == route.prefix
                       and (r.metric or DEFAULT_METRIC) == route.metric), None)
    if configured is not None:
        hop = remote.get(configured.next_hop)  # type: ignore[arg-type]
        mac = hop.mac if hop is not None else None
        return (f"customer route {route.prefix} via {configured.next_hop}: {mac} in VSID {route.vsid} behind PA "
                f"{route.pa}"), mac
    return f"remote prefix {route.prefix} in VSID {route.vsid} behind PA {route.pa}", None


def _absent(domain: RoutingDomain, table: Table, remote: Mapping[Address, LookupRecord], dst: Address,
            route: Route | None) -> str:
    """Why the table has nothing more specific for dst than `route`, in the model's words: a lookup record or
    a configured customer route that was not installed. Empty when nothing is missing."""
    note = ""
    length = _length(route) if route is not None else -1
    record = remote.get(dst)
    # (its host route, were it there, would be the longest match)
    if record is not None and record.pa is not None and length < dst.max_prefixlen:
        why = (f": this host has no IPv{record.pa.version} provider address"
               if record.pa.version not in table.devices else "")
        note += f" (its lookup record, behind PA {record.pa}, is not installed{why})"
    # the longest configured customer route that would have won, had it been installed
    missing = max((r for r in domain.customer_routes if r.next_hop is not None and r.prefix.version == dst.version
                   and dst in r.prefix and r.prefix.prefixlen >= length
                   and not table.has(str(r.prefix), r.metric or DEFAULT_METRIC)),
                  key=lambda r: r.prefix.prefixlen, default=None)
    if missing is not None:
        note += f" (customer route {missing.prefix}: its next hop {missing.next_hop} is not a known CA)"
    return note


def _may_send(port: Port, src: Address) -> bool:
    """vnet/portsecurity.py's rule for a source address (the MAC is the port's own in a trace)."""
    v4, v6 = networks(port)
    return any(src in n for n in (v4 if src.version == 4 else v6))


def _gateway_of(domain: RoutingDomain, address: Address) -> int | None:
    return next((s.vsid for s in domain.subnets if address in s.gateways), None)


def _port_on(catalog: Catalog, interface: str) -> Port | None:
    return next((p for p in catalog.ports.values() if p.interface == interface), None)


def _inactive(catalog: Catalog, domain: RoutingDomain, address: Address) -> str:
    port = catalog.port_with(domain.name, address)
    return f" (port {port.name} has it but is not active on this host)" if port is not None else ""


def _elsewhere(catalog: Catalog, records: list[LookupRecord], domain: RoutingDomain, address: Address) -> str:
    """Name another routing domain holding the address (a local port or a record): the usual mistake."""
    others = {name for name in catalog.routing_domains if name != domain.name and catalog.port_with(name, address)}
    others |= {r.routing_domain for r in records if r.ca == address and r.routing_domain != domain.name}
    if others:
        return f" ({address} is a CA of routing domain {min(others)}: crossing routing domains needs a gateway)"
    return ""


# ------------------------------------------------------------------ a packet arriving over NVGRE


@dataclass(frozen=True)
class Arrival:
    """What this host does with an NVGRE packet from another host: judged by the decapsulation table
    (vnet/decap.py), then, when delivered, routed in its routing domain like any packet (`inner`)."""

    pa: Address  # the outer source
    key: int  # the GRE key as sent (VSID << 8 | FlowID)
    src: Address  # the inner source
    dst: Address
    verdict: str  # "delivered" (to a local port) | "forwarded" (encapsulated again) | "answered" | "dropped"
    reason: str
    counter: str  # the decapsulation table's counter that counts it (a drop reason, or "vouched")
    routing_domain: str | None = None
    inner: Trace | None = None


def arriving(decap: DecapFilter | None, catalog: Catalog, records: Iterable[LookupRecord],
             desired: Mapping[str, Iterable[KernelObject]], pa: Address, key: int, src: Address,
             dst: Address) -> Arrival:
    """Pure: the decapsulation table's judgement (the same DecapFilter the agent wrote: `decap`, None before
    its first write) and, for a packet it lets through, the trace of the inner packet in its routing domain."""
    vsid = key >> 8
    found = catalog.subnet(vsid)
    domain = found[0].name if found is not None else None
    ethertype = ETH_IPV6 if src.version == 6 else ETH_IPV4
    counter = (decap or DecapFilter()).judge(pa, key, ethertype, src)
    if counter != PASSED:
        why = {"unknown_pa": f"GRE from {pa}: not a provider address the fabric taught this host",
               "unknown_vsid": f"VSID {vsid} (key {key:#x}, FlowID ignored) is not served on this host",
               "not_vouched": f"inner source {src} is not vouched for at {pa} in routing domain {domain}: no "
                              f"lookup record, announced prefix or customer route through a CA there"}
        return Arrival(pa, key, src, dst, "dropped", why.get(counter, counter), counter, domain)
    assert domain is not None  # a served VSID is a configured subnet's
    inner = trace(catalog, records, desired, domain, src, dst)
    verdict = {Verdict.DELIVERED_LOCALLY: "delivered", Verdict.FORWARDED: "forwarded",
               Verdict.ANSWERED: "answered"}.get(inner.verdict, "dropped")
    return Arrival(pa, key, src, dst, verdict, inner.reason, counter, domain, inner)
