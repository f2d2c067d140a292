"""Router advertisements for a VM port (RFC 4861), answered from its PortService.

The host is the VM's only router. Addresses come from DHCPv6 (M=1) and so does other configuration (O=1): port
security drops any source that is not one of the port's CAs, so an address a guest made up by SLAAC would be
useless, and the prefix is advertised on-link only (L=1, A=0). The advertisement also carries the MTU that fits
the encapsulation, and the DNS servers and search domains (RFC 8106), for guests that take them from here.

Pure: a solicitation in, the advertisement out; the responder owns the socket and the timer (it sends
`unsolicited` when a port appears and at least every ADVERT_INTERVAL seconds).
"""

from __future__ import annotations

import ipaddress
import struct

from nvfabric.hostagent.guest import frames
from nvfabric.hostagent.guest.offer import PortService

ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134
ALL_NODES = ipaddress.IPv6Address("ff02::1")
UNSPECIFIED = ipaddress.IPv6Address("::")

# RFC 4861 6.2.1 defaults: MaxRtrAdvInterval 600 s, AdvDefaultLifetime 3 x that; RFC 8106 5.1 wants the DNS
# options' lifetime at least 3 x MaxRtrAdvInterval too, so one lost advertisement loses nothing.
ADVERT_INTERVAL = 600
ROUTER_LIFETIME = 3 * ADVERT_INTERVAL
DNS_LIFETIME = 3 * ADVERT_INTERVAL
CUR_HOP_LIMIT = 64
MANAGED, OTHER = 0x80, 0x40  # M and O flags (RFC 4861 4.2)
ON_LINK = 0x80  # prefix information L flag; A (0x40) stays off (RFC 4861 4.6.2)

OPT_SOURCE_LINK_LAYER = 1
OPT_PREFIX_INFORMATION = 3
OPT_MTU = 5
OPT_RDNSS = 25
OPT_DNSSL = 31
# An advertisement stays within the IPv6 minimum MTU, whatever the port's: search domains that do not fit are
# left out (the DHCPv6 reply carries them all).
MAX_PACKET = 1280
MAX_OPTION = 255 * 8  # an option's length field counts 8-octet units in one byte


def router_address(port: PortService, host_mac: bytes) -> ipaddress.IPv6Address:
    """The host side's link-local address: the source of the advertisement, so the guest's default route and
    its neighbour solicitations for it. The kernel gives a port the EUI-64 link-local of its MAC (addr_gen_mode
    eui64, kept when the port is enslaved to a VRF); a host configured otherwise sets port.router_address."""
    return port.router_address or frames.link_local(frames.mac_text(host_mac))


def answer(eth: frames.Ethernet, packet: frames.Ip6, port: PortService, host_mac: bytes) -> list[bytes]:
    """The advertisement answering a valid router solicitation from the port's VM, or nothing."""
    if port.ipv6 is None or eth.src != frames.mac_bytes(port.mac):
        return []
    if packet.src not in (UNSPECIFIED, port.ipv6.ip) and not packet.src.is_link_local:
        return []
    if not _valid_solicitation(packet, eth.src):
        return []
    if packet.src == UNSPECIFIED:
        return [_advertisement(port, host_mac, ALL_NODES, frames.multicast_mac(ALL_NODES))]
    # RFC 4861 6.2.6 allows a unicast answer to a solicitation with a source address: the port has one VM.
    return [_advertisement(port, host_mac, packet.src, eth.src)]


def unsolicited(port: PortService, host_mac: bytes) -> bytes | None:
    """The periodic advertisement to all nodes (ff02::1, Ethernet 33:33:00:00:00:01); None for a port without
    IPv6, which is advertised nothing."""
    if port.ipv6 is None:
        return None
    return _advertisement(port, host_mac, ALL_NODES, frames.multicast_mac(ALL_NODES))


def _valid_solicitation(packet: frames.Ip6, vm_mac: bytes) -> bool:
    """RFC 4861 6.1.1 (hop limit 255, checksum, code 0, length, options of non-zero length, no source
    link-layer option from the unspecified address), and the VM's own link-layer address in that option."""
    body = frames.parse_nd(packet, ROUTER_SOLICITATION, 4)
    if body is None:
        return False
    options = frames.nd_options(body[4:])
    if options is None:
        return False
    for kind, value in options:
        if kind == OPT_SOURCE_LINK_LAYER and (packet.src == UNSPECIFIED or value[:6] != vm_mac):
            return False
    return True


def _advertisement(port: PortService, host_mac: bytes, dst: ipaddress.IPv6Address, dst_mac: bytes) -> bytes:
    assert port.ipv6 is not None
    src = router_address(port, host_mac)
    lifetime = min(port.lease_time, 0xFFFFFFFE)  # all ones would mean infinity
    body = struct.pack("!BBHII", CUR_HOP_LIMIT, MANAGED | OTHER, ROUTER_LIFETIME, 0, 0)
    body += _option(OPT_SOURCE_LINK_LAYER, host_mac)
    body += _option(OPT_MTU, struct.pack("!xxI", port.mtu))
    network = port.ipv6.network
    body += _option(OPT_PREFIX_INFORMATION, struct.pack("!BBIIxxxx", network.prefixlen, ON_LINK, lifetime, lifetime)
                    + network.network_address.packed)
    servers = port.dns6[:_room(body) // 16]
    if servers:
        body += _option(OPT_RDNSS, struct.pack("!xxI", DNS_LIFETIME) + b"".join(a.packed for a in servers))
    names = b""
    for domain in port.search:
        name = frames.dns_name(domain)
        if len(names) + len(name) <= _room(body):
            names += name
    if names:
        body += _option(OPT_DNSSL, struct.pack("!xxI", DNS_LIFETIME) + names)
    ip = frames.icmp6(src, dst, ROUTER_ADVERTISEMENT, 0, body)
    return frames.ethernet(dst_mac, host_mac, frames.ETH_P_IPV6, ip)


def _room(body: bytes) -> int:
    """How many octets of addresses or names one more DNS option may carry after body: what is left of
    MAX_PACKET after the IPv6 and ICMPv6 headers, in whole 8-octet units (the option is padded to them), less
    the option's own 8 octets (type, length, reserved, lifetime)."""
    left = min(MAX_OPTION, MAX_PACKET - 40 - 4 - len(body))
    return max(0, left // 8 * 8 - 8)


def _option(kind: int, value: bytes) -> bytes:
    """A neighbour discovery option, zero-padded to a multiple of 8 octets (RFC 4861 4.6, RFC 8106 5.2)."""
    units = (2 + len(value) + 7) // 8
    return bytes([kind, units]) + value + b"\0" * (units * 8 - 2 - len(value))
