"""What one VM port is offered by its host (DHCPv4, router advertisements, DHCPv6), as one frozen value
derived from the catalog and the host's identity: the responders answer from it and nothing else, so what a
guest gets is decided here, in one pure place, and is the same after an agent restart.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


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
