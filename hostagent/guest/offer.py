"""What one VM port is offered by its host (DHCPv4, router advertisements, DHCPv6), as one frozen value
derived from the catalog and the host's identity: the responders answer from it and nothing else, so what a
guest gets is decided here, in one pure place, and is the same after an agent restart.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass

from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import HostIdentity
from nvfabric.vnet.kernel.objects import OVERHEAD
from nvfabric.vnet.model import Port, RoutingDomain, VirtualSubnet


@dataclass(frozen=True)
class PortService:
    port: str  # the port's name
    interface: str  # the host side of the VM's interface: where requests arrive and answers leave
    routing_domain: str
    vsid: int
    mac: str  # the VM's MAC (canonical text): the only client a port's answers are for
    ipv4: ipaddress.IPv4Interface | None  # the port's first IPv4 CA with its subnet's prefix length
    ipv6: ipaddress.IPv6Interface | None  # the port's first IPv6 CA with its subnet's prefix length
    gateway4: ipaddress.IPv4Address | None  # the subnet gateway (router option, server identifier)
    gateway6: ipaddress.IPv6Address | None
    mtu: int  # what fits the NVGRE encapsulation over the underlay (and the port's own MTU)
    dns4: tuple[ipaddress.IPv4Address, ...] = ()
    dns6: tuple[ipaddress.IPv6Address, ...] = ()
    search: tuple[str, ...] = ()  # DNS search domains
    # classless static routes (RFC 3442: a client that takes them ignores the router option, so the default
    # route via the gateway is among them): customer routes and the subnet's configured extra routes
    routes4: tuple[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address], ...] = ()
    lease_time: int = 86400  # seconds; also the valid lifetime of advertised IPv6 prefixes
    # the routing domain's virtual addresses: a frame from the port announcing one is a claim
    # (hostagent/guest/vip.py), which the agent judges (hostagent/holders.py: may this port hold it?)
    virtual_addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    # the host side's IPv6 link-local address, when it is not the EUI-64 one of its MAC (a host whose ports
    # use another addr_gen_mode): the source of router advertisements and DHCPv6 replies (ra.router_address)
    router_address: ipaddress.IPv6Address | None = None


def offered_mtu(port_mtu: int | None, host: HostIdentity) -> int:
    """The MTU a guest is told: its port's MTU if set, never more than fits the NVGRE encapsulation over the
    underlay in every provider address family the host sends from (the smaller the worse header)."""
    fits = min((host.underlay_mtu - OVERHEAD[family] for family in host.pa_families),
               default=host.underlay_mtu - max(OVERHEAD.values()))
    return min(port_mtu if port_mtu is not None else host.underlay_mtu, fits)


def classless_routes(domain: RoutingDomain, subnet: VirtualSubnet,
                     gateway: ipaddress.IPv4Address) -> tuple[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address], ...]:
    """Option 121's routes: the default via the gateway (RFC 3442: a client that takes option 121 ignores the
    router option), the routing domain's IPv4 customer routes via the gateway (the host routes them, whatever
    their next hop), then the subnet's configured routes; one route per prefix, the first one kept."""
    routes: dict[ipaddress.IPv4Network, ipaddress.IPv4Address] = {ipaddress.IPv4Network("0.0.0.0/0"): gateway}
    for route in domain.customer_routes:
        if isinstance(route.prefix, ipaddress.IPv4Network):
            routes.setdefault(route.prefix, gateway)
    for extra in subnet.dhcp.routes:
        if isinstance(extra.prefix, ipaddress.IPv4Network) and isinstance(extra.next_hop, ipaddress.IPv4Address):
            routes.setdefault(extra.prefix, extra.next_hop)
    return tuple(routes.items())


def port_services(catalog: Catalog, host: HostIdentity,
                  inactive: Collection[tuple[int, str]] = ()) -> dict[str, PortService]:
    """What every local port is offered, by its interface (`port_service` of each)."""
    out: dict[str, PortService] = {}
    for port in catalog.ports.values():
        service = port_service(catalog, host, port, (port.vsid, port.mac) in inactive)
        if service is not None:
            out[port.interface] = service
    return out


def port_service(catalog: Catalog, host: HostIdentity, port: Port, inactive: bool = False) -> PortService | None:
    """What one local port is offered: None unless its subnet has DHCP enabled (or its routing domain virtual
    addresses, whose claims are watched), and while its VM moved to another host (`inactive`: its (VSID,
    MAC) is, hostagent/mobility.py)."""
    found = catalog.subnet(port.vsid)
    if found is None or inactive:
        return None
    domain, subnet = found
    if not subnet.dhcp.enabled and not domain.virtual_addresses:
        return None
    # (DHCP off but virtual addresses declared: the port is watched for claims, offered no address)
    offered = zip(subnet.prefixes, subnet.gateways, strict=True) if subnet.dhcp.enabled else ()
    ipv4 = ipv6 = gateway4 = gateway6 = None
    for prefix, gateway in offered:
        ca = next((a for a in port.addresses if a in prefix), None)
        if ca is None:
            continue
        if isinstance(prefix, ipaddress.IPv4Network) and isinstance(gateway, ipaddress.IPv4Address):
            ipv4, gateway4 = ipaddress.IPv4Interface(f"{ca}/{prefix.prefixlen}"), gateway
        elif isinstance(prefix, ipaddress.IPv6Network) and isinstance(gateway, ipaddress.IPv6Address):
            ipv6, gateway6 = ipaddress.IPv6Interface(f"{ca}/{prefix.prefixlen}"), gateway
    servers = subnet.dhcp.dns_servers
    return PortService(
        port=port.name, interface=port.interface, routing_domain=domain.name, vsid=port.vsid, mac=str(port.mac),
        ipv4=ipv4, ipv6=ipv6, gateway4=gateway4, gateway6=gateway6, mtu=offered_mtu(port.mtu, host),
        dns4=tuple(a for a in servers if isinstance(a, ipaddress.IPv4Address)),
        dns6=tuple(a for a in servers if isinstance(a, ipaddress.IPv6Address)),
        search=subnet.dhcp.search_domains,
        routes4=classless_routes(domain, subnet, gateway4) if gateway4 is not None else (),
        lease_time=subnet.dhcp.lease_time,
        virtual_addresses=tuple(v.address for v in domain.virtual_addresses),
    )
