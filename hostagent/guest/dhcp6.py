"""DHCPv6 for a VM port (RFC 8415), answered from its PortService: the port's IPv6 CA in an IA_NA, the DNS
servers (option 23) and the search domains (option 24).

Stateless in the agent: the address is the port's, so an answer is the same after an agent restart and no
binding is stored. A message is decoded into `Message` (strict: anything truncated or overrunning is None),
checked against RFC 8415 section 16 (what each type must and must not carry), and answered:
SOLICIT -> ADVERTISE (REPLY when the client asks for rapid commit), REQUEST/RENEW/REBIND -> REPLY with the
bindings, CONFIRM -> REPLY with a status, INFORMATION-REQUEST -> REPLY without bindings, RELEASE/DECLINE ->
REPLY with Success (there is nothing to free). A message naming another server is not for us: nothing.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from nvfabric.hostagent.guest import frames
from nvfabric.hostagent.guest.offer import PortService
from nvfabric.hostagent.guest.ra import router_address

CLIENT_PORT, SERVER_PORT = 546, 547
ALL_SERVERS = ipaddress.IPv6Address("ff02::1:2")  # All_DHCP_Relay_Agents_and_Servers

# message types (RFC 8415 7.3)
SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY, RELEASE, DECLINE = 1, 2, 3, 4, 5, 6, 7, 8, 9
INFORMATION_REQUEST = 11
# options (RFC 8415 21, RFC 3646, RFC 6939)
OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IA_TA, OPT_IAADDR = 1, 2, 3, 4, 5
OPT_PREFERENCE, OPT_STATUS_CODE, OPT_RAPID_COMMIT = 7, 13, 14
OPT_DNS_SERVERS, OPT_DOMAIN_LIST, OPT_IA_PD = 23, 24, 25
OPT_CLIENT_LINKLAYER_ADDR = 79
# status codes (RFC 8415 21.13)
SUCCESS, NO_ADDRS_AVAIL, NOT_ON_LINK, NO_PREFIX_AVAIL = 0, 2, 4, 6

MAX_DUID = 130  # type (2) and at most 128 octets (RFC 8415 11.1)
PREFERENCE = 255  # the client takes this server at once, without waiting for others (RFC 8415 18.2.1)
DUID_LL, HW_ETHERNET = 3, 1
MAX_ANSWERED = 8  # IAs per reply, and addresses returned with lifetime 0 in the first IA_NA


def duid_ll(mac: bytes) -> bytes:
    """The server's DUID-LL (RFC 8415 11.4) from the host side's MAC: the same after an agent restart, so a
    renewing client keeps talking to "its" server."""
    return struct.pack("!HH", DUID_LL, HW_ETHERNET) + mac


@dataclass(frozen=True)
class IaNa:
    iaid: int
    addresses: tuple[ipaddress.IPv6Address, ...]  # the addresses the client holds or hints at


@dataclass(frozen=True)
class Message:
    kind: int
    transaction: bytes  # 3 octets
    client_id: bytes | None
    server_id: bytes | None
    ia_na: tuple[IaNa, ...]
    other_ias: tuple[tuple[int, int], ...]  # (option code, IAID) of the IA_TA and IA_PD asked for: none given
    rapid_commit: bool
    client_link_layer: bytes | None  # option 79 (hardware type 1): a relay's, or a hostile client's


def parse(data: bytes) -> Message | None:
    """A client's message (not a relay's), None when anything in it is malformed."""
    if len(data) < 4:
        return None
    options = _options(data[4:])
    if options is None:
        return None
    link_layer = None
    duids: dict[int, bytes] = {}  # client and server id: each at most once, a DUID's length
    ia_na: list[IaNa] = []
    other: list[tuple[int, int]] = []
    rapid = False
    for code, value in options:
        if code in (OPT_CLIENTID, OPT_SERVERID):
            if code in duids or not 2 < len(value) <= MAX_DUID:
                return None
            duids[code] = value
        elif code == OPT_IA_NA:
            ia = _ia_na(value)
            if ia is None:
                return None
            ia_na.append(ia)
        elif code in (OPT_IA_TA, OPT_IA_PD):
            if len(value) < 4:
                return None
            other.append((code, struct.unpack_from("!I", value)[0]))
        elif code == OPT_RAPID_COMMIT:
            rapid = True
        elif code == OPT_CLIENT_LINKLAYER_ADDR:
            if len(value) != 8 or struct.unpack_from("!H", value)[0] != HW_ETHERNET:
                return None
            link_layer = value[2:]
    if len({ia.iaid for ia in ia_na}) != len(ia_na):
        return None
    return Message(data[0], data[1:4], duids.get(OPT_CLIENTID), duids.get(OPT_SERVERID), tuple(ia_na), tuple(other),
                   rapid, link_layer)


def _options(data: bytes) -> list[tuple[int, bytes]] | None:
    out = []
    at = 0
    while at < len(data):
        if at + 4 > len(data):
            return None
        code, length = struct.unpack_from("!HH", data, at)
        if at + 4 + length > len(data):
            return None
        out.append((code, data[at + 4:at + 4 + length]))
        at += 4 + length
    return out


def _ia_na(value: bytes) -> IaNa | None:
    """IAID, T1, T2, then options; the IA Address options (address, lifetimes, options) are kept."""
    if len(value) < 12:
        return None
    inner = _options(value[12:])
    if inner is None:
        return None
    addresses = []
    for code, data in inner:
        if code == OPT_IAADDR:
            if len(data) < 24 or _options(data[24:]) is None:
                return None
            addresses.append(ipaddress.IPv6Address(data[:16]))
    return IaNa(struct.unpack_from("!I", value)[0], tuple(addresses))


def answer(eth: frames.Ethernet, packet: frames.Ip6, port: PortService, host_mac: bytes,
           server_duid: bytes) -> list[bytes]:
    """The reply to a client's DHCPv6 message from the port's VM, or nothing; never raises on what the VM
    sent."""
    if port.ipv6 is None or eth.src != frames.mac_bytes(port.mac) or not packet.src.is_link_local:
        return []
    server = router_address(port, host_mac)
    if packet.dst not in (ALL_SERVERS, server):
        return []
    udp = frames.parse_udp6(packet)
    if udp is None or udp[:2] != (CLIENT_PORT, SERVER_PORT):
        return []
    message = parse(udp[2])
    if message is None or (message.client_link_layer is not None and message.client_link_layer != eth.src):
        return []
    reply = respond(message, port, server_duid)
    if reply is None:
        return []
    ip = frames.udp6(server, packet.src, SERVER_PORT, CLIENT_PORT, reply)
    return [frames.ethernet(eth.src, host_mac, frames.ETH_P_IPV6, ip)]


def respond(message: Message, port: PortService, server_duid: bytes) -> bytes | None:
    """The reply's DHCPv6 payload (RFC 8415 18.3), None when the message gets no answer (section 16's
    validation, or it names another server)."""
    assert port.ipv6 is not None
    kind, ours = message.kind, message.server_id == server_duid
    named = message.server_id is not None
    if kind == INFORMATION_REQUEST:
        # 16.12: no IA options; a server id, if any, ours
        if message.ia_na or message.other_ias or (named and not ours):
            return None
        return _message(REPLY, message, port, server_duid, [])
    if message.client_id is None:
        return None
    if kind == SOLICIT:
        if named:
            return None
        bindings = _bindings(message, port)
        if message.rapid_commit:  # 18.3.1: the REPLY commits at once and says so
            return _message(REPLY, message, port, server_duid, [_option(OPT_RAPID_COMMIT, b"")] + bindings)
        preference = _option(OPT_PREFERENCE, bytes([PREFERENCE]))
        return _message(ADVERTISE, message, port, server_duid, [preference] + bindings)
    if kind in (REQUEST, RENEW, RELEASE, DECLINE):
        if not ours:
            return None
        if kind in (RELEASE, DECLINE):
            # the address is the port's for as long as the port exists: nothing to free or to mark
            return _message(REPLY, message, port, server_duid, [_status(SUCCESS)])
        return _message(REPLY, message, port, server_duid, _bindings(message, port))
    if kind == REBIND:
        return None if named else _message(REPLY, message, port, server_duid, _bindings(message, port))
    if kind == CONFIRM:
        # 18.3.3: whether the addresses the client holds are on this link; nothing to say if it holds none
        held = [a for ia in message.ia_na for a in ia.addresses]
        if named or not held:
            return None
        on_link = all(a in port.ipv6.network for a in held)
        return _message(REPLY, message, port, server_duid, [_status(SUCCESS if on_link else NOT_ON_LINK)])
    return None


def _bindings(message: Message, port: PortService) -> list[bytes]:
    """One IA_NA per IA the client asked for: the first gets the port's CA (and any other address it named,
    with lifetimes 0 so the client drops it, RFC 8415 18.3.4); the port has one address, so further IA_NAs
    and every IA_TA / IA_PD get a status saying none is available. At most MAX_ANSWERED IAs and as many
    dropped addresses are answered, so what a VM sends cannot make the reply outgrow a frame."""
    assert port.ipv6 is not None
    lease = min(port.lease_time, 0xFFFFFFFE)
    out = []
    for n, ia in enumerate(message.ia_na[:MAX_ANSWERED]):
        if n:
            out.append(_option(OPT_IA_NA, struct.pack("!III", ia.iaid, 0, 0) + _status(NO_ADDRS_AVAIL)))
            continue
        addresses = _address(port.ipv6.ip, lease)
        others = [a for a in dict.fromkeys(ia.addresses) if a != port.ipv6.ip]
        for other in others[:MAX_ANSWERED]:
            addresses += _address(other, 0)
        # T1 and T2 at 0.5 and 0.8 of the preferred lifetime (RFC 8415 21.4)
        out.append(_option(OPT_IA_NA, struct.pack("!III", ia.iaid, lease // 2, lease * 4 // 5) + addresses))
    for code, iaid in message.other_ias[:MAX_ANSWERED - len(message.ia_na[:MAX_ANSWERED])]:
        if code == OPT_IA_TA:
            out.append(_option(code, struct.pack("!I", iaid) + _status(NO_ADDRS_AVAIL)))
        else:
            out.append(_option(code, struct.pack("!III", iaid, 0, 0) + _status(NO_PREFIX_AVAIL)))
    return out


def _address(address: ipaddress.IPv6Address, lifetime: int) -> bytes:
    return _option(OPT_IAADDR, address.packed + struct.pack("!II", lifetime, lifetime))


def _message(kind: int, message: Message, port: PortService, server_duid: bytes, options: list[bytes]) -> bytes:
    """Our id, the client's echoed, the options of this answer, then the DNS configuration (sent whether or not
    the client's Option Request names it: RFC 8415 21.7 lets a server add options)."""
    head = [_option(OPT_SERVERID, server_duid)]
    if message.client_id is not None:
        head.append(_option(OPT_CLIENTID, message.client_id))
    if port.dns6:
        options = options + [_option(OPT_DNS_SERVERS, b"".join(a.packed for a in port.dns6))]
    if port.search:
        options = options + [_option(OPT_DOMAIN_LIST, b"".join(frames.dns_name(d) for d in port.search))]
    return bytes([kind]) + message.transaction + b"".join(head + options)


def _status(code: int) -> bytes:
    return _option(OPT_STATUS_CODE, struct.pack("!H", code))


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value
