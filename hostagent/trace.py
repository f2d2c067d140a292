"""Where a packet from one CA to another goes on this host: HNV's Select-NetVirtualizationNextHop, OVN's
ovn-trace for one routing domain.

Pure: the catalog (routing domains, local ports), the lookup records and the remote prefixes the agent
knows, in; a Trace value out. It follows the decision the kernel makes with the objects vnet/desired.py
builds from the same inputs: longest-prefix match in the routing domain's VRF table over the local CA
routes (/32, /128 to the port, for ports with an active local record), the remote CA routes (one encap
route per lookup record), the subnet gateways' IPv4 routes, the configured customer routes (via a CA), the
remote prefixes (customer routes learned from other hosts) and the unreachable default. A "forwarded" trace
names the route, the VSID in the GRE key, the PA and the device the packet leaves by; a "dropped" one says
which rule dropped it.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import NVGRE_DEVICES, ROUTER_NEXTHOPS, vrf_name
from nvfabric.vnet.model import Address, LookupRecord, Port, RemotePrefix, RoutingDomain


class Verdict(enum.StrEnum):
    FORWARDED = "forwarded"  # encapsulated towards another host's PA
    DELIVERED_LOCALLY = "delivered-locally"  # to a port on this host
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


@dataclass(frozen=True)
class _Local:
    record: LookupRecord
    port: Port


def trace(
    catalog: Catalog,
    records: Iterable[LookupRecord],
    remote_prefixes: Iterable[RemotePrefix],
    routing_domain: str,
    src: Address,
    dst: Address,
    pa_families: Collection[int] = (4, 6),
) -> Trace:
    """`pa_families`: the underlay families this host has a provider address (so an NVGRE device) for.
    Raises vnet.catalog.NotFound for an unknown routing domain; every other outcome is a Trace."""
    rd = catalog.routing_domain(routing_domain)
    vrf = vrf_name(rd.name)
    devices = {f: NVGRE_DEVICES[f] for f in pa_families}
    records = list(records)
    mine = [r for r in records if r.routing_domain == rd.name]
    # Local routes exist only for ports with an active local record: a port whose MAC moved to another
    # host (MAC mobility) stays in the catalog but is not routed here (vnet/desired.py).
    local = {r.ca: _Local(r, catalog.ports[r.port]) for r in mine if r.local and r.port in catalog.ports}
    remote = {r.ca: r for r in mine if not r.local and r.pa is not None}

    def dropped(reason: str, *, route: str | None = None, src_vsid: int | None = None,
                ingress: str | None = None) -> Trace:
        return Trace(rd.name, src, dst, Verdict.DROPPED, reason, route=route, src_vsid=src_vsid, ingress=ingress)

    # Where the packet enters: a local port (the VM sends it) or the NVGRE device (another host sent it).
    if src in local:
        src_vsid, ingress = local[src].port.vsid, local[src].port.interface
    elif (configured := catalog.port_with(rd.name, src)) is not None:
        return dropped(f"source port {configured.name} is configured but not active on this host "
                       f"(its MAC is active elsewhere: MAC mobility)")
    elif src in remote:
        src_vsid, ingress = remote[src].vsid, devices.get(remote[src].pa.version)  # type: ignore[union-attr]
    else:
        return dropped(f"source not a CA of routing domain {rd.name}: no local port and no lookup record has "
                       f"{src}{_elsewhere(catalog, records, rd, src)}")
    if src.version != dst.version:
        return dropped(f"source is IPv{src.version} and destination IPv{dst.version}", src_vsid=src_vsid,
                       ingress=ingress)
    # A packet that came in by the NVGRE device is looked up in the same table (its tun_id rule steers it
    # there), so a remote source towards a remote CA is relayed: only stale records cause that.
    relayed = "" if src in local else f" (relayed: {src} is not on this host)"
    host = f"{dst}/{dst.max_prefixlen}"

    if dst in local:
        port = local[dst].port
        return Trace(rd.name, src, dst, Verdict.DELIVERED_LOCALLY, f"local port {port.name} of VSID {port.vsid}",
                     vsid=port.vsid, mac=port.mac, device=port.interface,
                     route=f"{host} dev {port.interface} vrf {vrf}", src_vsid=src_vsid, ingress=ingress)
    # A record behind a PA family this host has no device for is not installed (vnet/desired.py skips it):
    # the packet falls through to the prefixes or the unreachable route, and the reason says why.
    note = ""
    if dst in remote:
        record = remote[dst]
        assert record.pa is not None
        if record.pa.version in devices:
            return _encap(rd.name, src, dst, host, record.vsid, record.pa, vrf, devices,
                          f"lookup record: {dst} is {record.mac} in VSID {record.vsid} behind PA {record.pa}{relayed}",
                          mac=record.mac, src_vsid=src_vsid, ingress=ingress)
        note = (f" (its lookup record, behind PA {record.pa}, is not installed: this host has no "
                f"IPv{record.pa.version} provider address)")
    gateway_of = next((s.vsid for s in rd.subnets if dst in s.gateways), None)
    if gateway_of is not None and dst.version == 4 and devices:
        # vnet/desired.py: IPv4 gateways get a /32 to an NVGRE device so that proxy ARP answers for them;
        # no neighbour answers there, so packets to the gateway address itself go nowhere.
        dev = devices.get(4) or devices[min(devices)]
        return dropped(f"{dst} is the gateway of VSID {gateway_of}: this host answers ARP for it, but nothing on "
                       f"this host is the gateway", route=f"{host} dev {dev} vrf {vrf}", src_vsid=src_vsid,
                       ingress=ingress)
    if gateway_of is not None:
        note += f" ({dst} is the gateway of VSID {gateway_of}: answered for neighbour discovery only)"
    best = _longest_match(rd.name, dst, remote_prefixes, devices)
    # A configured customer route (vnet/desired.py: via the next hop's port, or encapsulated to its host's PA)
    # wins over a learned prefix when it is longer or as long (the longest match, as in the table).
    route = max((r for r in rd.customer_routes if r.next_hop is not None and dst in r.prefix),
                key=lambda r: r.prefix.prefixlen, default=None)
    if route is not None and (best is None or route.prefix.prefixlen >= best.prefix.prefixlen):
        assert route.next_hop is not None
        why = f"customer route {route.prefix} via {route.next_hop}"
        if route.next_hop in local:
            port = local[route.next_hop].port
            return Trace(rd.name, src, dst, Verdict.DELIVERED_LOCALLY, f"{why} on local port {port.name}{note}",
                         vsid=port.vsid, mac=port.mac, device=port.interface,
                         route=f"{route.prefix} via {route.next_hop} dev {port.interface} vrf {vrf}",
                         src_vsid=src_vsid, ingress=ingress)
        hop = remote.get(route.next_hop)
        if hop is not None and hop.pa is not None and hop.pa.version in devices:
            return _encap(rd.name, src, dst, str(route.prefix), hop.vsid, hop.pa, vrf, devices,
                          f"{why}: {hop.mac} in VSID {hop.vsid} behind PA {hop.pa}{relayed}{note}",
                          mac=hop.mac, src_vsid=src_vsid, ingress=ingress)
        note += f" (customer route {route.prefix}: its next hop {route.next_hop} is not a known CA)"
    if best is not None:
        return _encap(rd.name, src, dst, str(best.prefix), best.vsid, best.pa, vrf, devices,
                      f"remote prefix {best.prefix} in VSID {best.vsid} behind PA {best.pa}{relayed}{note}",
                      mac=None, src_vsid=src_vsid, ingress=ingress)
    unreachable = "0.0.0.0/0" if dst.version == 4 else "::/0"
    what = "destination CA not routable here" if note else "unknown destination CA (no lookup record)"
    return dropped(
        f"{what}: the unreachable route of routing domain {rd.name}{note}"
        f"{_inactive(catalog, rd, dst)}{_elsewhere(catalog, records, rd, dst)}",
        route=f"unreachable {unreachable} vrf {vrf}", src_vsid=src_vsid, ingress=ingress,
    )


def _encap(rd: str, src: Address, dst: Address, prefix: str, vsid: int, pa: Address, vrf: str,
           devices: dict[int, str], reason: str, *, mac: str | None, src_vsid: int, ingress: str | None) -> Trace:
    device = devices[pa.version]
    encap = "ip" if pa.version == 4 else "ip6"
    via = ROUTER_NEXTHOPS[0] if dst.version == 4 else ROUTER_NEXTHOPS[1]
    route = f"{prefix} encap {encap} id {vsid << 8} dst {pa} key via {via} dev {device} onlink vrf {vrf}"
    return Trace(rd, src, dst, Verdict.FORWARDED, reason, vsid=vsid, pa=pa, mac=mac, device=device, route=route,
                 src_vsid=src_vsid, ingress=ingress)


def _longest_match(rd: str, dst: Address, prefixes: Iterable[RemotePrefix],
                   devices: dict[int, str]) -> RemotePrefix | None:
    best: RemotePrefix | None = None
    for candidate in prefixes:
        if (candidate.routing_domain != rd or candidate.prefix.version != dst.version or dst not in candidate.prefix
                or candidate.pa.version not in devices):
            continue
        # Equal prefixes from two hosts: the lower PA, as hostagent/learn.py picks, whatever the order.
        if best is None or _rank(candidate) < _rank(best):
            best = candidate
    return best


def _rank(prefix: RemotePrefix) -> tuple[int, int, bytes]:
    return (-prefix.prefix.prefixlen, prefix.pa.version, prefix.pa.packed)


def _inactive(catalog: Catalog, rd: RoutingDomain, address: Address) -> str:
    port = catalog.port_with(rd.name, address)
    return f" (port {port.name} has it but is not active on this host)" if port is not None else ""


def _elsewhere(catalog: Catalog, records: list[LookupRecord], rd: RoutingDomain, address: Address) -> str:
    """Name another routing domain holding the address (a local port or a record): the usual mistake."""
    others = {name for name in catalog.routing_domains if name != rd.name and catalog.port_with(name, address)}
    others |= {r.routing_domain for r in records if r.ca == address and r.routing_domain != rd.name}
    if others:
        return f" ({address} is a CA of routing domain {min(others)}: crossing routing domains needs a gateway)"
    return ""
