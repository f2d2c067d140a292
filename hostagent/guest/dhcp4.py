"""DHCPv4 (RFC 2131) answered from the port model: pure, no lease database.

A port has exactly one IPv4 CA, fixed by the orchestrator: the only address its VM is ever offered. So the
server has no state: an answer depends on the request and the PortService alone, and is the same after an
agent restart (a renewing guest keeps its address). What is answered:

- DISCOVER -> OFFER of the port's CA;
- REQUEST -> ACK when it asks for the port's CA, NAK when it asks for another address; in the SELECTING
  state (a server identifier present) only when the identifier is ours (the subnet gateway): a request
  that chose another server is left alone;
- INFORM -> ACK with the configuration, without a lease (RFC 2131 section 3.4);
- DECLINE, RELEASE -> nothing (the address is the port's whatever the guest says);
- a request whose client hardware address is not the port's MAC, a relayed request (giaddr set: the host
  is on the guest's link, no relay is), a BOOTREPLY, anything malformed -> nothing.

Options sent (whether asked for or not, as most servers do): 1 subnet mask, 3 router, 6 DNS servers, 15 domain
name (the first search domain), 119 domain search (RFC 3397), 26 interface MTU, 28 broadcast address, 51
lease time, 54 server identifier, 58/59 renewal and rebinding times (1/2 and 7/8 of the lease), 121
classless static routes (RFC 3442) and 249 (the same data, for Windows guests). An option longer than 255
bytes is split into several (RFC 3396). A reply is kept within the size the client accepts (576 bytes, or
its option 57): options that do not fit are left out, the least needed first (249, 119, 121).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from nvfabric.hostagent.guest import frames
from nvfabric.hostagent.guest.offer import PortService

SERVER_PORT, CLIENT_PORT = 67, 68
MAGIC = b"\x63\x82\x53\x63"
FIXED = 236  # op .. file, before the magic cookie
BOOTREQUEST, BOOTREPLY = 1, 2
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
BROADCAST_FLAG = 0x8000
MIN_MESSAGE = 576  # every client accepts an IP datagram of this size (RFC 2131 section 2)
IP_UDP_HEADERS = 28

# option codes
PAD, END = 0, 255
SUBNET_MASK, ROUTER, DNS, DOMAIN_NAME, MTU, BROADCAST = 1, 3, 6, 15, 26, 28
REQUESTED_IP, LEASE_TIME, OVERLOAD, MESSAGE_TYPE, SERVER_ID, MAX_SIZE = 50, 51, 52, 53, 54, 57
RENEWAL, REBINDING, DOMAIN_SEARCH, CLASSLESS_ROUTES, MS_CLASSLESS_ROUTES = 58, 59, 119, 121, 249

ZERO = ipaddress.IPv4Address(0)
ALL_ONES = ipaddress.IPv4Address("255.255.255.255")


@dataclass(frozen=True)
class Message:
    """The fields of a BOOTREQUEST the server looks at (options concatenated per code, RFC 3396)."""

    op: int
    xid: int
    flags: int
    ciaddr: ipaddress.IPv4Address
    giaddr: ipaddress.IPv4Address
    chaddr: bytes  # the 6-byte client hardware address
    options: dict[int, bytes]

    @property
    def kind(self) -> int | None:
        value = self.options.get(MESSAGE_TYPE)
        return value[0] if value is not None and len(value) == 1 else None

    def address_option(self, code: int) -> ipaddress.IPv4Address | None:
        value = self.options.get(code)
        return ipaddress.IPv4Address(value) if value is not None and len(value) == 4 else None

    @property
    def max_size(self) -> int:
        value = self.options.get(MAX_SIZE)
        size = struct.unpack("!H", value)[0] if value is not None and len(value) == 2 else 0
        return max(size, MIN_MESSAGE)


def parse_options(data: bytes) -> dict[int, bytes] | None:
    """The options field: code -> value (repeated codes concatenated, RFC 3396); None when a length runs
    past the end. Whatever follows END is padding."""
    options: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        code = data[i]
        if code == END:
            return options
        if code == PAD:
            i += 1
            continue
        if i + 1 >= len(data) or i + 2 + data[i + 1] > len(data):
            return None
        length = data[i + 1]
        options[code] = options.get(code, b"") + data[i + 2:i + 2 + length]
        i += 2 + length
    return options  # (no END: tolerated, as most servers do)


def parse(data: bytes) -> Message | None:
    """A DHCP message over Ethernet (htype 1, hlen 6) with the magic cookie; None for anything else."""
    if len(data) < FIXED + len(MAGIC) or data[FIXED:FIXED + 4] != MAGIC:
        return None
    op, htype, hlen, _hops, xid, _secs, flags = struct.unpack_from("!BBBBIHH", data)
    if htype != 1 or hlen != 6:
        return None
    options = parse_options(data[FIXED + 4:])
    if options is None:
        return None
    # (option overload, 52, would put more options in sname/file: not followed, nothing we need is there)
    return Message(op, xid, flags, ipaddress.IPv4Address(data[12:16]), ipaddress.IPv4Address(data[24:28]),
                   data[28:34], options)


# ---------------------------------------------------------------------- encoding


def option(code: int, value: bytes) -> bytes:
    """One option, split into several of the same code when longer than 255 bytes (RFC 3396)."""
    if not value:
        return bytes((code, 0))
    return b"".join(bytes((code, len(chunk))) + chunk
                    for chunk in (value[i:i + 255] for i in range(0, len(value), 255)))


def domain_search(names: tuple[str, ...]) -> bytes:
    """RFC 3397: each name as DNS labels, uncompressed, one after the other."""
    return b"".join(frames.dns_name(name) for name in names)


def classless_routes(routes: tuple[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address], ...]) -> bytes:
    """RFC 3442: per route, the prefix length, the significant octets of the destination, the router."""
    out = b""
    for network, router in routes:
        width = network.prefixlen
        out += bytes((width,)) + network.network_address.packed[:(width + 7) // 8] + router.packed
    return out


def reply_options(port: PortService, kind: int, lease: bool) -> tuple[list[bytes], list[bytes]]:
    """(options always sent, options sent when they fit in order), without the END option."""
    assert port.ipv4 is not None and port.gateway4 is not None
    network = port.ipv4.network
    must = [option(MESSAGE_TYPE, bytes((kind,))), option(SERVER_ID, port.gateway4.packed)]
    if kind == NAK:
        return must, []
    if lease:
        must += [option(LEASE_TIME, struct.pack("!I", port.lease_time)),
                 option(RENEWAL, struct.pack("!I", port.lease_time // 2)),
                 option(REBINDING, struct.pack("!I", port.lease_time * 7 // 8))]
    must += [option(SUBNET_MASK, network.netmask.packed), option(ROUTER, port.gateway4.packed),
             option(BROADCAST, network.broadcast_address.packed), option(MTU, struct.pack("!H", port.mtu))]
    if port.dns4:
        must.append(option(DNS, b"".join(a.packed for a in port.dns4)))
    if port.search:
        must.append(option(DOMAIN_NAME, port.search[0].encode("ascii")))
    optional = []
    if port.routes4:
        routes = classless_routes(port.routes4)
        optional.append(option(CLASSLESS_ROUTES, routes))
    if port.search:
        optional.append(option(DOMAIN_SEARCH, domain_search(port.search)))
    if port.routes4:
        optional.append(option(MS_CLASSLESS_ROUTES, routes))
    return must, optional


def reply(request: Message, port: PortService, kind: int, yiaddr: ipaddress.IPv4Address) -> bytes:
    """The BOOTREPLY's DHCP payload, within the client's maximum message size."""
    assert port.gateway4 is not None
    head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", BOOTREPLY, 1, 6, 0, request.xid, 0, request.flags,
                       ZERO.packed, yiaddr.packed, ZERO.packed, request.giaddr.packed, request.chaddr, b"", b"")
    must, optional = reply_options(port, kind, lease=kind != ACK or request.kind != INFORM)
    body = head + MAGIC + b"".join(must)
    room = request.max_size - IP_UDP_HEADERS - 1  # (1: the END option)
    for extra in optional:
        if len(body) + len(extra) <= room:
            body += extra
    return body + bytes((END,))


# ---------------------------------------------------------------------- answering


def decide(request: Message, port: PortService) -> tuple[int, ipaddress.IPv4Address] | None:
    """(reply type, yiaddr) for a request from the port's client, or None when nothing is answered."""
    if port.ipv4 is None or port.gateway4 is None or request.op != BOOTREQUEST or request.giaddr != ZERO:
        return None
    if request.chaddr != frames.mac_bytes(port.mac):
        return None
    ours = port.ipv4.ip
    kind = request.kind
    if kind == DISCOVER:
        return OFFER, ours
    if kind == INFORM:
        return ACK, ZERO
    if kind != REQUEST:
        return None  # DECLINE, RELEASE, and types a server never receives
    server = request.address_option(SERVER_ID)
    wanted = request.address_option(REQUESTED_IP)
    if server is not None:  # SELECTING: the client chose a server
        if server != port.gateway4:
            return None
        if wanted is None:
            return None
    elif wanted is None:  # RENEWING (unicast) or REBINDING (broadcast): the address is ciaddr
        wanted = request.ciaddr if request.ciaddr != ZERO else None
        if wanted is None:
            return None
    # (INIT-REBOOT: no server identifier, the requested address option)
    return (ACK, ours) if wanted == ours else (NAK, ZERO)


def addressing(request: Message, kind: int, yiaddr: ipaddress.IPv4Address,
               client: bytes) -> tuple[bytes, ipaddress.IPv4Address]:
    """(Ethernet destination, IP destination) of a reply, by RFC 2131 section 4.1 (giaddr is never set here)."""
    if kind == NAK:
        return frames.BROADCAST, ALL_ONES
    if request.ciaddr != ZERO:
        return client, request.ciaddr
    if request.flags & BROADCAST_FLAG or yiaddr == ZERO:
        return frames.BROADCAST, ALL_ONES
    return client, yiaddr


def answer(eth: frames.Ethernet, port: PortService, host_mac: bytes) -> list[bytes]:
    """The reply frames to a DHCP request in eth from the port's VM: none, or one."""
    if eth.src != frames.mac_bytes(port.mac) or eth.ethertype != frames.ETH_P_IP:
        return []
    udp = frames.parse_udp4(eth.payload)
    if udp is None or udp.dport != SERVER_PORT:
        return []
    request = parse(udp.payload)
    if request is None:
        return []
    decided = decide(request, port)
    if decided is None:
        return []
    kind, yiaddr = decided
    assert port.gateway4 is not None
    mac_dst, ip_dst = addressing(request, kind, yiaddr, eth.src)
    payload = reply(request, port, kind, yiaddr)
    return [frames.ethernet(mac_dst, host_mac, frames.ETH_P_IP,
                            frames.udp4(port.gateway4, ip_dst, SERVER_PORT, CLIENT_PORT, payload))]
