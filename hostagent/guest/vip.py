"""Which virtual address a frame from a VM announces (pure): the start of a move (hostagent/holders.py).

A VM that takes over an address (keepalived becoming master) tells its link so: a gratuitous ARP (a request
or reply whose sender IP is its target IP, RFC 5227 section 3), an ARP reply from the address, or an IPv6
neighbour advertisement for it that is unsolicited or has the override flag (RFC 4861 section 7.2.6). A
frame announcing one of the port's routing domain's virtual addresses (PortService.virtual_addresses) is a
claim; whether the port may hold it is the agent's decision, not this module's. The frame must be
consistent with itself: the ARP sender MAC, and an NA's target link-layer address when present, are the
Ethernet source (the responder has checked that it is the port's MAC). Anything else is not a claim.
"""

from __future__ import annotations

import ipaddress

from nvfabric.hostagent.guest import frames
from nvfabric.hostagent.guest.offer import PortService

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

ARP_REPLY = 2
NEIGHBOUR_ADVERTISEMENT = 136
SOLICITED = 0x40  # the S flag of a neighbour advertisement (RFC 4861 section 4.4)
OVERRIDE = 0x20  # the O flag
TARGET_LINK_LAYER = 2  # option type (RFC 4861 section 4.6.1)


def claimed(eth: frames.Ethernet, port: PortService) -> Address | None:
    """The virtual address `eth` announces, or None."""
    if not port.virtual_addresses:
        return None
    if eth.ethertype == frames.ETH_P_ARP:
        address = _arp(eth)
    elif eth.ethertype == frames.ETH_P_IPV6:
        address = _advertisement(eth)
    else:
        return None
    return address if address is not None and address in port.virtual_addresses else None


def _arp(eth: frames.Ethernet) -> Address | None:
    arp = frames.parse_arp(eth.payload)
    if arp is None or arp.sender_mac != eth.src:
        return None
    if arp.sender_ip == arp.target_ip or arp.op == ARP_REPLY:
        return arp.sender_ip
    return None  # a plain request: the VM asks, it does not announce


def _advertisement(eth: frames.Ethernet) -> Address | None:
    packet = frames.parse_ip6(eth.payload)
    # body: flags (1 byte), reserved (3), target (16), options
    body = frames.parse_nd(packet, NEIGHBOUR_ADVERTISEMENT, 20) if packet is not None else None
    if body is None:
        return None
    flags = body[0]
    if flags & SOLICITED and not flags & OVERRIDE:
        return None  # an answer that does not take the address over
    target = ipaddress.IPv6Address(body[4:20])
    if target.is_multicast:
        return None
    options = frames.nd_options(body[20:])
    if options is None:
        return None
    link_layer = next((value for kind, value in options if kind == TARGET_LINK_LAYER), None)
    if link_layer is not None and link_layer[:6] != eth.src:
        return None
    return target
