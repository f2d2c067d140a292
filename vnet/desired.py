"""Pure: what a host (or gateway) wants in its kernel -> the set of vnet.kernel objects (docs/agent.md).

Inputs are plain values: the catalog (routing domains, local ports), the lookup records (local and remote
CAs), the remote prefixes (type-5 routes), customer routes, the host's identity and the table number of
each routing domain. The output is compared with what the kernel has by vnet.kernel.diff; nothing here
reads or writes the kernel.

Per routing domain: a VRF `nvf-<name>`, `unreachable default` for IPv4 and IPv6 (everything unknown is
dropped), and for every VSID a `tun_id` rule on each NVGRE device steering decapsulated frames into its
table. Per local port: a routed port in the VRF with proxy ARP / proxy NDP, and a /32 (/128) route per CA.
Per remote CA or remote prefix: one LWT encap route to the PA. The subnet gateway is answered too:
IPv4 proxy ARP answers only for a target with a unicast route leaving by another device, so the gateway
gets a /32 towards the NVGRE device (a packet for the gateway address itself finds no neighbour there and
is dropped: the gateway answers ARP, not ping); IPv6 gets a proxy NDP entry on each port of the subnet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vnet.catalog import Catalog
from vnet.kernel.objects import (
    EncapRoute,
    KernelObject,
    LocalPortRoute,
    NvgreDevice,
    PermanentNeighbour,
    Port,
    ProxyNeighbour,
    Sysctl,
    TunIdRule,
    UnreachableRoute,
    Vrf,
)
from vnet.model import Address, CustomerRoute, LookupRecord, Network, RemotePrefix

NVGRE_DEVICES = {4: "nvf-gre4", 6: "nvf-gre6"}
ROUTER_NEXTHOPS = ("169.254.0.1", "fe80::1")
RULE_PRIORITY = 900
TABLE_MIN, TABLE_MAX = 1000, 0x0FFFFFFF  # away from the kernel's (253-255) and the usual hand-made tables
# RFC 7637 over IPv4: outer IPv4 20 + GRE with key 8 + inner Ethernet 14 = 42; over IPv6: 40 + 8 + 14 = 62.
OVERHEAD = {4: 42, 6: 62}

GLOBAL_SYSCTLS = (
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
    ("net/ipv4/conf/all/rp_filter", "0"),  # decapsulated frames arrive on the NVGRE device, not the port
)


def vrf_name(routing_domain: str) -> str:
    return f"nvf-{routing_domain}"


@dataclass(frozen=True)
class HostIdentity:
    router_mac: str
    provider_addresses: tuple[Address, ...]
    underlay_mtu: int = 1500

    @property
    def pa_families(self) -> tuple[int, ...]:
        return tuple(sorted({pa.version for pa in self.provider_addresses}))


@dataclass(frozen=True)
class Desired:
    objects: frozenset[KernelObject]
    # what could not be realised, with the reason (e.g. a remote PA of a family we have no device for)
    skipped: tuple[str, ...] = ()

    @property
    def sysctl_paths(self) -> list[str]:
        return sorted(o.path for o in self.objects if isinstance(o, Sysctl))


def _host(address: Address) -> str:
    return f"{address}/{address.max_prefixlen}"


def allocate_tables(names: Iterable[str], known: Mapping[str, int]) -> dict[str, int]:
    """Keep every known table number; give each new routing domain the lowest free one (deterministic)."""
    out = {name: known[name] for name in names if name in known}
    used = set(known.values())
    candidate = TABLE_MIN
    for name in sorted(set(names) - set(out)):
        while candidate in used:
            candidate += 1
        if candidate > TABLE_MAX:
            raise ValueError("no free routing table number")
        out[name] = candidate
        used.add(candidate)
    return out


def port_mtu(requested: int | None, identity: HostIdentity) -> int:
    """The port keeps the underlay MTU unless the orchestrator asks for one: the overlay's smaller MTU is
    enforced where the packet is encapsulated (the NVGRE device's MTU, which the kernel derives from the
    encapsulation), so a too-large DF packet from a VM gets ICMP "fragmentation needed" / "packet too big"
    from the host instead of being dropped silently on the way into a smaller port."""
    return requested if requested is not None else identity.underlay_mtu


def desired_state(
    catalog: Catalog,
    records: Iterable[LookupRecord],
    prefixes: Iterable[RemotePrefix],
    customer_routes: Mapping[str, Iterable[CustomerRoute]],
    identity: HostIdentity,
    tables: Mapping[str, int],
) -> Desired:
    objects: set[KernelObject] = set()
    skipped: list[str] = []
    families = identity.pa_families
    devices = {f: NVGRE_DEVICES[f] for f in families}

    for path, value in GLOBAL_SYSCTLS:
        objects.add(Sysctl(path, value))
    for family, dev in devices.items():
        objects.add(NvgreDevice(dev, family, identity.router_mac))
        for nh in ROUTER_NEXTHOPS:
            objects.add(PermanentNeighbour(dev, nh, identity.router_mac))

    records = list(records)
    # local ports, per routing domain (for proxy NDP entries)
    ports_in: dict[str, list[tuple[str, tuple[Network, ...]]]] = {}
    for rd in catalog.routing_domains.values():
        table = tables[rd.name]
        vrf = vrf_name(rd.name)
        objects.add(Vrf(vrf, table))
        objects.add(UnreachableRoute(table, 4))
        objects.add(UnreachableRoute(table, 6))
        for subnet in rd.subnets:
            for dev in devices.values():
                for family in (4, 6):
                    objects.add(TunIdRule(family, dev, subnet.vsid << 8, table, RULE_PRIORITY))
            for gateway in subnet.gateways:
                if gateway.version == 4 and devices:
                    objects.add(LocalPortRoute(table, _host(gateway), devices.get(4) or devices[families[0]]))

    active_ports = {r.port for r in records if r.local and r.port is not None}
    for port in catalog.ports.values():
        found = catalog.subnet(port.vsid)
        if found is None or port.name not in active_ports:
            continue  # moved away (mobility): not routed here
        rd, subnet = found
        ifname = port.interface
        objects.add(Port(ifname, vrf_name(rd.name), port_mtu(port.mtu, identity)))
        for path, value in (
            (f"net/ipv4/conf/{ifname}/proxy_arp", "1"),
            (f"net/ipv4/neigh/{ifname}/proxy_delay", "0"),  # answer at once, not after up to 0.8 s
            (f"net/ipv6/conf/{ifname}/proxy_ndp", "1"),
            (f"net/ipv4/conf/{ifname}/rp_filter", "0"),
        ):
            objects.add(Sysctl(path, value))
        ports_in.setdefault(rd.name, []).append((ifname, subnet.prefixes))
        for gateway in subnet.gateways:
            if gateway.version == 6:
                objects.add(ProxyNeighbour(ifname, str(gateway)))

    def proxy_v6(rd_name: str, ca: Address, except_if: str | None = None) -> None:
        # only ports whose subnet contains the CA: a VM solicits on-link neighbours only
        for ifname, prefixes in ports_in.get(rd_name, ()):
            if ifname != except_if and any(ca in p for p in prefixes):
                objects.add(ProxyNeighbour(ifname, str(ca)))

    by_ca: dict[tuple[str, Address], LookupRecord] = {}
    for record in records:
        if record.routing_domain not in tables:
            continue
        by_ca[(record.routing_domain, record.ca)] = record
        table = tables[record.routing_domain]
        if record.local:
            port = catalog.ports.get(record.port or "")
            if port is None:
                continue
            objects.add(LocalPortRoute(table, _host(record.ca), port.interface))
            if record.ca.version == 6:
                proxy_v6(record.routing_domain, record.ca, except_if=port.interface)
            continue
        if record.pa is None or record.pa.version not in devices:
            skipped.append(f"{record.routing_domain} {record.ca}: no NVGRE device for PA {record.pa}")
            continue
        objects.add(EncapRoute(table, _host(record.ca), record.vsid, str(record.pa), devices[record.pa.version]))
        if record.ca.version == 6:
            proxy_v6(record.routing_domain, record.ca)

    for prefix in prefixes:
        table = tables.get(prefix.routing_domain)
        if table is None:
            continue
        if prefix.pa.version not in devices:
            skipped.append(f"{prefix.routing_domain} {prefix.prefix}: no NVGRE device for PA {prefix.pa}")
            continue
        objects.add(EncapRoute(table, str(prefix.prefix), prefix.vsid, str(prefix.pa), devices[prefix.pa.version]))

    for rd_name, routes in customer_routes.items():
        table = tables.get(rd_name)
        if table is None:
            continue
        for route in routes:
            target = by_ca.get((rd_name, route.next_hop)) if route.next_hop is not None else None
            if target is None or target.local or target.pa is None or target.pa.version not in devices:
                # on-link and via-a-local-VM routes need a route kind vnet.kernel does not have yet
                skipped.append(f"{rd_name} {route.prefix}: next hop {route.next_hop} is not a known remote CA")
                continue
            objects.add(EncapRoute(table, str(route.prefix), target.vsid, str(target.pa),
                                   devices[target.pa.version], metric=route.metric or 1024))
    return Desired(frozenset(objects), tuple(skipped))
