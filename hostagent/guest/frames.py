"""Framing shared by the host's answers to its VMs: parse what a VM sent, build what the host replies.

Pure and strict: a frame from a VM is hostile input, so every parser checks lengths before it reads and
returns None for anything it does not fully understand (the caller counts it and answers nothing). IPv4
options, IPv6 extension headers and VLAN tags are not followed: DHCP, router solicitations and ARP from a
VM never need them.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from nvfabric.bgp.mac import Mac

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
PROTO_UDP = 17
PROTO_ICMPV6 = 58
BROADCAST = b"\xff" * 6
ETH_HEADER = 14


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(Mac(mac).replace(":", ""))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data, odd lengths padded with a zero byte."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@dataclass(frozen=True)
class Ethernet:
    dst: bytes
    src: bytes
    ethertype: int
    payload: bytes


def parse_ethernet(frame: bytes) -> Ethernet | None:
    if len(frame) < ETH_HEADER:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    return Ethernet(frame[0:6], frame[6:12], ethertype, frame[ETH_HEADER:])


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


@dataclass(frozen=True)
class Arp:
    op: int  # 1 request, 2 reply
    sender_mac: bytes
    sender_ip: ipaddress.IPv4Address
    target_mac: bytes
    target_ip: ipaddress.IPv4Address


def parse_arp(payload: bytes) -> Arp | None:
    """ARP for IPv4 over Ethernet only (htype 1, ptype 0x0800, hlen 6, plen 4)."""
    if len(payload) < 28:
        return None
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", payload)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4) or op not in (1, 2):
        return None
    return Arp(op, payload[8:14], ipaddress.IPv4Address(payload[14:18]), payload[18:24],
               ipaddress.IPv4Address(payload[24:28]))


@dataclass(frozen=True)
class Udp4:
    src: ipaddress.IPv4Address
    dst: ipaddress.IPv4Address
    sport: int
    dport: int
    payload: bytes


def parse_udp4(payload: bytes) -> Udp4 | None:
    """An IPv4 UDP datagram, unfragmented, without IP options, lengths consistent."""
    if len(payload) < 28:
        return None
    ver_ihl, _tos, total, _ident, frag, _ttl, proto = struct.unpack_from("!BBHHHBB", payload)
    if ver_ihl != 0x45 or proto != PROTO_UDP or frag & 0x3FFF or not 28 <= total <= len(payload):
        return None
    sport, dport, length = struct.unpack_from("!HHH", payload, 20)
    if length < 8 or 20 + length > total:
        return None
    return Udp4(ipaddress.IPv4Address(payload[12:16]), ipaddress.IPv4Address(payload[16:20]), sport, dport,
                payload[28:20 + length])


def udp4(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, sport: int, dport: int, data: bytes,
         ttl: int = 64) -> bytes:
    """An IPv4 header and a UDP datagram carrying data, both checksums filled in."""
    length = 8 + len(data)
    pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, PROTO_UDP, length)
    head = struct.pack("!HHHH", sport, dport, length, 0)
    csum = checksum(pseudo + head + data) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, length, csum) + data
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0x4000, ttl, PROTO_UDP, 0, src.packed, dst.packed)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + udp


@dataclass(frozen=True)
class Ip6:
    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    next_header: int
    hop_limit: int
    payload: bytes


def parse_ip6(payload: bytes) -> Ip6 | None:
    """An IPv6 packet whose next header is the upper layer (no extension headers followed)."""
    if len(payload) < 40 or payload[0] >> 4 != 6:
        return None
    length, next_header, hop_limit = struct.unpack_from("!HBB", payload, 4)
    if 40 + length > len(payload):
        return None
    return Ip6(ipaddress.IPv6Address(payload[8:24]), ipaddress.IPv6Address(payload[24:40]), next_header, hop_limit,
               payload[40:40 + length])


def upper6_checksum(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, proto: int, data: bytes) -> int:
    """The UDP or ICMPv6 checksum over the IPv6 pseudo-header (RFC 8200 section 8.1); data has its checksum
    field zeroed."""
    pseudo = src.packed + dst.packed + struct.pack("!IxxxB", len(data), proto)
    return checksum(pseudo + data)


def ip6(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, next_header: int, data: bytes,
        hop_limit: int = 64) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(data), next_header, hop_limit) + src.packed + dst.packed + data


def udp6(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, sport: int, dport: int, data: bytes,
         hop_limit: int = 64) -> bytes:
    length = 8 + len(data)
    csum = upper6_checksum(src, dst, PROTO_UDP, struct.pack("!HHHH", sport, dport, length, 0) + data) or 0xFFFF
    return ip6(src, dst, PROTO_UDP, struct.pack("!HHHH", sport, dport, length, csum) + data, hop_limit)


def icmp6(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, kind: int, code: int, body: bytes,
          hop_limit: int = 255) -> bytes:
    """An ICMPv6 message (type, code, checksum, body); neighbour discovery wants hop limit 255 (RFC 4861)."""
    csum = upper6_checksum(src, dst, PROTO_ICMPV6, struct.pack("!BBH", kind, code, 0) + body)
    return ip6(src, dst, PROTO_ICMPV6, struct.pack("!BBH", kind, code, csum) + body, hop_limit)


def parse_udp6(packet: Ip6) -> tuple[int, int, bytes] | None:
    """(source port, destination port, data) of a UDP datagram in packet, checksum verified.

    A guest's kernel leaves the checksum to its NIC when it can (veth, virtio with checksum offload): the
    AF_PACKET copy on the host then carries only the pseudo-header's sum (CHECKSUM_PARTIAL, completed by
    nobody on a local link), which is accepted as such."""
    data = packet.payload
    if packet.next_header != PROTO_UDP or len(data) < 8:
        return None
    sport, dport, length, csum = struct.unpack_from("!HHHH", data)
    if length < 8 or length > len(data):
        return None
    partial = ~checksum(packet.src.packed + packet.dst.packed + struct.pack("!IxxxB", length, PROTO_UDP)) & 0xFFFF
    full = upper6_checksum(packet.src, packet.dst, PROTO_UDP, data[:6] + b"\0\0" + data[8:length])
    if csum and csum not in (full, partial):
        return None
    return sport, dport, data[8:length]


def parse_icmp6(packet: Ip6) -> tuple[int, int, bytes] | None:
    """(type, code, body) of an ICMPv6 message in packet, checksum verified."""
    data = packet.payload
    if packet.next_header != PROTO_ICMPV6 or len(data) < 4:
        return None
    kind, code, csum = struct.unpack_from("!BBH", data)
    if upper6_checksum(packet.src, packet.dst, PROTO_ICMPV6, data[:2] + b"\0\0" + data[4:]) != csum:
        return None
    return kind, code, data[4:]


def link_local(mac: str) -> ipaddress.IPv6Address:
    """The EUI-64 link-local address of a MAC (RFC 4291 appendix A): what the kernel gives the host side of a
    port, so the router's address in our advertisements is one the kernel answers neighbour solicitations for."""
    raw = bytearray(mac_bytes(mac))
    raw[0] ^= 0x02
    return ipaddress.IPv6Address(b"\xfe\x80" + b"\0" * 6 + bytes(raw[:3]) + b"\xff\xfe" + bytes(raw[3:]))


def solicited_node_mac(address: ipaddress.IPv6Address) -> bytes:
    return b"\x33\x33" + address.packed[-4:]


def multicast_mac(group: ipaddress.IPv6Address) -> bytes:
    return b"\x33\x33" + group.packed[-4:]


def dns_name(domain: str) -> bytes:
    """A domain name in DNS wire format without compression (RFC 1035 3.1), as DHCPv4 option 119, DNSSL and
    DHCPv6 option 24 carry it. The model has already checked the labels."""
    labels = [label.encode("ascii") for label in domain.strip(".").split(".") if label]
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


ND_HOP_LIMIT = 255  # a neighbour discovery message with another hop limit did not come from the link


def parse_nd(packet: Ip6, kind: int, min_body: int) -> bytes | None:
    """The body (after type, code, checksum) of a neighbour discovery message of type `kind` (RFC 4861: hop
    limit 255, code 0, checksum verified, at least `min_body` octets), None for anything else."""
    if packet.hop_limit != ND_HOP_LIMIT:
        return None
    parsed = parse_icmp6(packet)
    if parsed is None:
        return None
    got, code, body = parsed
    if got != kind or code != 0 or len(body) < min_body:
        return None
    return body


def nd_options(data: bytes) -> list[tuple[int, bytes]] | None:
    """Neighbour discovery options (type, value) (RFC 4861 4.6: type, length in units of 8 octets); None when
    one has length 0 or overruns the message."""
    out = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            return None
        kind, units = data[at], data[at + 1]
        if units == 0 or at + units * 8 > len(data):
            return None
        out.append((kind, data[at + 2:at + units * 8]))
        at += units * 8
    return out
