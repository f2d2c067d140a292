"""DHCPv6 (hostagent/guest/dhcp6.py): every message type's answer against RFC 8415 layouts, what is ignored,
and hostile input (random bytes, every truncation)."""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from nvfabric.hostagent.guest import dhcp6, frames
from nvfabric.hostagent.guest.offer import PortService

VM_MAC = "02:00:00:00:0c:01"
VM = frames.mac_bytes(VM_MAC)
HOST = bytes.fromhex("fe5400aabbcc")
ROUTER = ipaddress.IPv6Address("fe80::fc54:ff:feaa:bbcc")  # EUI-64 of HOST
VM_LL = ipaddress.IPv6Address("fe80::ff:fe00:c01")
CA = ipaddress.IPv6Address("fd00:c::11")
PORT = PortService(
    port="g1", interface="tap-g1", routing_domain="blue", vsid=5001, mac=VM_MAC, ipv4=None,
    ipv6=ipaddress.IPv6Interface("fd00:c::11/64"), gateway4=None, gateway6=ipaddress.IPv6Address("fd00:c::1"),
    mtu=1410, dns6=(ipaddress.IPv6Address("fd00:53::53"), ipaddress.IPv6Address("fd00:53::54")),
    search=("tenant.example", "corp.example"), lease_time=7200)
SERVER_DUID = dhcp6.duid_ll(HOST)
CLIENT_DUID = bytes.fromhex("000100012fa3021202000000 0c01".replace(" ", ""))  # a DUID-LLT
XID = b"\x12\x34\x56"


def option(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value


def ia_na(iaid: int = 0xC01, *addresses: str) -> bytes:
    inner = b"".join(option(5, ipaddress.IPv6Address(a).packed + struct.pack("!II", 100, 200)) for a in addresses)
    return option(3, struct.pack("!III", iaid, 0, 0) + inner)


def client(kind: int, *options: bytes, server: bytes | None = None, with_client: bool = True) -> bytes:
    out = bytes([kind]) + XID
    if with_client:
        out += option(1, CLIENT_DUID)
    if server is not None:
        out += option(2, server)
    return out + option(8, b"\0\0") + b"".join(options)  # elapsed time, as every client sends


def frame(message: bytes, src: ipaddress.IPv6Address = VM_LL, dst: ipaddress.IPv6Address = dhcp6.ALL_SERVERS,
          eth_src: bytes = VM, sport: int = 546, dport: int = 547) -> tuple[frames.Ethernet, frames.Ip6]:
    ip = frames.udp6(src, dst, sport, dport, message)
    eth = frames.parse_ethernet(frames.ethernet(frames.multicast_mac(dst), eth_src, frames.ETH_P_IPV6, ip))
    assert eth is not None
    packet = frames.parse_ip6(eth.payload)
    assert packet is not None
    return eth, packet


def ask(message: bytes, port: PortService = PORT, **where: object) -> list[bytes]:
    eth, packet = frame(message, **where)  # type: ignore[arg-type]
    return dhcp6.answer(eth, packet, port, HOST, SERVER_DUID)


def options_of(data: bytes) -> list[tuple[int, bytes]]:
    out, at = [], 0
    while at < len(data):
        code, length = struct.unpack_from("!HH", data, at)
        assert at + 4 + length <= len(data)
        out.append((code, data[at + 4:at + 4 + length]))
        at += 4 + length
    return out


def message_of(replies: list[bytes]) -> bytes:
    """The one reply's DHCPv6 message, after checking how it is addressed."""
    [raw] = replies
    eth = frames.parse_ethernet(raw)
    assert eth is not None and (eth.dst, eth.src, eth.ethertype) == (VM, HOST, frames.ETH_P_IPV6)
    packet = frames.parse_ip6(eth.payload)
    assert packet is not None and (packet.src, packet.dst) == (ROUTER, VM_LL)
    udp = frames.parse_udp6(packet)  # checksum verified
    assert udp is not None and udp[:2] == (547, 546)
    assert udp[2][1:4] == XID
    return udp[2]


def reply(replies: list[bytes]) -> tuple[int, dict[int, bytes]]:
    """The one reply's type and options (each code once, our server id and the client's)."""
    data = message_of(replies)
    options = options_of(data[4:])
    assert len({code for code, _ in options}) == len(options)
    got = dict(options)
    assert got[1] == CLIENT_DUID and got[2] == SERVER_DUID
    return data[0], got


DNS = b"".join(ipaddress.IPv6Address(a).packed for a in ("fd00:53::53", "fd00:53::54"))
DOMAINS = b"\x06tenant\x07example\x00\x04corp\x07example\x00"


def iaaddr(address: ipaddress.IPv6Address, lifetime: int) -> bytes:
    return option(5, address.packed + struct.pack("!II", lifetime, lifetime))


def test_solicit_gets_an_advertise_with_the_ports_ca_the_dns_configuration_and_top_preference() -> None:
    kind, got = reply(ask(client(dhcp6.SOLICIT, ia_na(), option(6, struct.pack("!HH", 23, 24)))))
    assert kind == dhcp6.ADVERTISE
    assert SERVER_DUID == bytes.fromhex("00030001") + HOST  # DUID-LL, hardware type Ethernet (RFC 8415 11.4)
    assert got[7] == b"\xff"  # preference 255: the client need not wait for others
    # IA_NA: IAID echoed, T1 and T2 at 0.5 and 0.8 of the lease, one IA Address (address, preferred, valid)
    assert got[3] == struct.pack("!III", 0xC01, 3600, 5760) + iaaddr(CA, 7200)
    assert got[23] == DNS and got[24] == DOMAINS  # RFC 3646: addresses; names in uncompressed wire format
    assert 14 not in got


def test_solicit_with_rapid_commit_gets_the_reply_at_once() -> None:
    kind, got = reply(ask(client(dhcp6.SOLICIT, ia_na(), option(14, b""))))
    assert kind == dhcp6.REPLY and got[14] == b"" and 7 not in got
    assert got[3] == struct.pack("!III", 0xC01, 3600, 5760) + iaaddr(CA, 7200)


def test_request_renew_rebind_get_a_reply_with_the_binding() -> None:
    for kind, server in ((dhcp6.REQUEST, SERVER_DUID), (dhcp6.RENEW, SERVER_DUID), (dhcp6.REBIND, None)):
        got_kind, got = reply(ask(client(kind, ia_na(0xC01, str(CA)), server=server)))
        assert got_kind == dhcp6.REPLY, kind
        assert got[3] == struct.pack("!III", 0xC01, 3600, 5760) + iaaddr(CA, 7200), kind
        assert got[23] == DNS and got[24] == DOMAINS


def test_an_ia_asking_for_another_address_gets_ours_and_the_old_one_with_lifetime_zero() -> None:
    _, got = reply(ask(client(dhcp6.RENEW, ia_na(7, "fd00:c::99"), server=SERVER_DUID)))
    old = ipaddress.IPv6Address("fd00:c::99")
    assert got[3] == struct.pack("!III", 7, 3600, 5760) + iaaddr(CA, 7200) + iaaddr(old, 0)
    # a SOLICIT hinting at another address gets ours too
    _, got = reply(ask(client(dhcp6.SOLICIT, ia_na(7, "fd00:c::99"))))
    assert iaaddr(CA, 7200) in got[3]


def test_messages_for_another_server_or_without_what_rfc8415_requires_get_nothing() -> None:
    another = dhcp6.duid_ll(bytes.fromhex("020000000999"))
    cases = {
        "REQUEST for another server": client(dhcp6.REQUEST, ia_na(), server=another),
        "REQUEST naming no server": client(dhcp6.REQUEST, ia_na()),
        "RENEW for another server": client(dhcp6.RENEW, ia_na(), server=another),
        "REBIND naming a server": client(dhcp6.REBIND, ia_na(), server=SERVER_DUID),
        "SOLICIT naming a server": client(dhcp6.SOLICIT, ia_na(), server=SERVER_DUID),
        "SOLICIT without client id": client(dhcp6.SOLICIT, ia_na(), with_client=False),
        "CONFIRM without addresses": client(dhcp6.CONFIRM, ia_na()),
        "INFORMATION-REQUEST with an IA": client(dhcp6.INFORMATION_REQUEST, ia_na()),
        "INFORMATION-REQUEST for another server": client(dhcp6.INFORMATION_REQUEST, server=another),
        "RELEASE for another server": client(dhcp6.RELEASE, ia_na(), server=another),
        "an ADVERTISE (a server's message)": client(dhcp6.ADVERTISE, ia_na(), server=another),
        "a RELAY-FORW": client(12),
        "two client ids": client(dhcp6.SOLICIT, option(1, CLIENT_DUID)),
        "a client id too long": bytes([dhcp6.SOLICIT]) + XID + option(1, bytes(131)),
        "two IA_NAs with one IAID": client(dhcp6.SOLICIT, ia_na(1), ia_na(1)),
    }
    for why, message in cases.items():
        assert ask(message) == [], why


def test_confirm_says_whether_the_clients_addresses_are_on_link() -> None:
    kind, got = reply(ask(client(dhcp6.CONFIRM, ia_na(1, str(CA)))))
    assert kind == dhcp6.REPLY and got[13] == struct.pack("!H", 0) and 3 not in got
    _, got = reply(ask(client(dhcp6.CONFIRM, ia_na(1, "fd00:d::11"))))
    assert got[13] == struct.pack("!H", 4)  # NotOnLink


def test_information_request_gets_dns_configuration_without_bindings() -> None:
    kind, got = reply(ask(client(dhcp6.INFORMATION_REQUEST)))
    assert kind == dhcp6.REPLY and got[23] == DNS and got[24] == DOMAINS and 3 not in got
    # a client id is optional in an INFORMATION-REQUEST: the reply then carries none
    options = dict(options_of(message_of(ask(bytes([dhcp6.INFORMATION_REQUEST]) + XID))[4:]))
    assert 1 not in options and options[2] == SERVER_DUID


def test_release_and_decline_are_acknowledged_and_change_nothing() -> None:
    for kind in (dhcp6.RELEASE, dhcp6.DECLINE):
        got_kind, got = reply(ask(client(kind, ia_na(1, str(CA)), server=SERVER_DUID)))
        assert got_kind == dhcp6.REPLY and got[13] == struct.pack("!H", 0)
    _, got = reply(ask(client(dhcp6.RENEW, ia_na(1, str(CA)), server=SERVER_DUID)))
    assert iaaddr(CA, 7200) in got[3]


def test_one_address_per_port_further_ias_get_a_status_instead() -> None:
    solicit = client(dhcp6.SOLICIT, ia_na(1), ia_na(2), option(25, struct.pack("!III", 9, 0, 0)),
                     option(4, struct.pack("!I", 8)))
    options = options_of(message_of(ask(solicit))[4:])
    ias = [value for code, value in options if code == 3]
    assert ias == [struct.pack("!III", 1, 3600, 5760) + iaaddr(CA, 7200),
                   struct.pack("!III", 2, 0, 0) + option(13, struct.pack("!H", 2))]  # NoAddrsAvail
    assert dict(options)[25] == struct.pack("!III", 9, 0, 0) + option(13, struct.pack("!H", 6))  # NoPrefixAvail
    assert dict(options)[4] == struct.pack("!I", 8) + option(13, struct.pack("!H", 2))


def test_a_reply_stays_small_whatever_the_client_asks_for() -> None:
    hints = [f"fd00:c::{n + 100:x}" for n in range(60)]
    many = client(dhcp6.RENEW, ia_na(1, *hints), *(ia_na(n + 2) for n in range(40)),
                  *(option(25, struct.pack("!III", n, 0, 0)) for n in range(40)), server=SERVER_DUID)
    data = message_of(ask(many))
    options = options_of(data[4:])
    assert len([v for code, v in options if code in (3, 25)]) == dhcp6.MAX_ANSWERED
    first = next(value for code, value in options if code == 3)
    assert first.count(bytes([0, 5, 0, 24])) == 1 + dhcp6.MAX_ANSWERED and len(data) < 1000


def test_no_dns_options_when_the_subnet_has_none() -> None:
    _, got = reply(ask(client(dhcp6.SOLICIT, ia_na()), port=dataclasses.replace(PORT, dns6=(), search=())))
    assert 23 not in got and 24 not in got


def test_not_from_the_ports_vm_or_not_dhcpv6_gets_nothing() -> None:
    solicit = client(dhcp6.SOLICIT, ia_na())
    stranger = bytes.fromhex("020000000999")
    assert ask(solicit, eth_src=stranger) == []
    assert ask(client(dhcp6.SOLICIT, ia_na(), option(79, struct.pack("!H", 1) + stranger))) == []
    assert reply(ask(client(dhcp6.SOLICIT, ia_na(), option(79, struct.pack("!H", 1) + VM))))[0] == dhcp6.ADVERTISE
    assert ask(solicit, src=CA) == []  # clients send from their link-local (RFC 8415 13.1)
    assert ask(solicit, dst=ipaddress.IPv6Address("ff02::1")) == []
    assert ask(solicit, sport=5000) == [] and ask(solicit, dport=548) == []
    assert ask(solicit, port=dataclasses.replace(PORT, ipv6=None, gateway6=None)) == []
    # unicast to the server's own link-local is accepted
    assert reply(ask(solicit, dst=ROUTER))[0] == dhcp6.ADVERTISE


def test_an_offloaded_checksum_is_accepted_a_wrong_one_is_not() -> None:
    eth, packet = frame(client(dhcp6.SOLICIT, ia_na()))
    data = packet.payload
    length = len(data)
    pseudo = packet.src.packed + packet.dst.packed + struct.pack("!IxxxB", length, frames.PROTO_UDP)
    partial = ~frames.checksum(pseudo) & 0xFFFF  # what a guest kernel leaves for its NIC to complete
    offloaded = dataclasses.replace(packet, payload=data[:6] + struct.pack("!H", partial) + data[8:])
    assert reply(dhcp6.answer(eth, offloaded, PORT, HOST, SERVER_DUID))[0] == dhcp6.ADVERTISE
    wrong = dataclasses.replace(packet, payload=data[:6] + struct.pack("!H", partial ^ 0x0101) + data[8:])
    assert dhcp6.answer(eth, wrong, PORT, HOST, SERVER_DUID) == []


def test_every_truncation_of_a_valid_message_is_answered_or_ignored_never_raises() -> None:
    full = client(dhcp6.REQUEST, ia_na(1, str(CA)), option(79, struct.pack("!H", 1) + VM), server=SERVER_DUID)
    for cut in range(len(full)):
        replies = ask(full[:cut])
        assert replies == [] or reply(replies)[0] == dhcp6.REPLY


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_messages_never_raise(data: bytes) -> None:
    ask(data)
    # and with a valid header, so the option parser sees random bytes
    ask(bytes([dhcp6.SOLICIT]) + XID + data)
    ask(bytes([dhcp6.REQUEST]) + XID + option(2, SERVER_DUID) + option(1, CLIENT_DUID) + option(3, data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_frames_never_raise(raw: bytes) -> None:
    eth = frames.parse_ethernet(raw)
    packet = frames.parse_ip6(eth.payload) if eth is not None else None
    if eth is not None and packet is not None:
        dhcp6.answer(eth, packet, PORT, HOST, SERVER_DUID)


OPTION_CODES = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 13, 14, 23, 24, 25, 79, 0, 0xFFFF])
STRUCTURED = st.lists(st.tuples(OPTION_CODES, st.binary(max_size=40)), max_size=8)


@settings(max_examples=400, deadline=None)
@given(kind=st.integers(0, 255), options=STRUCTURED, ours=st.booleans())
def test_well_formed_messages_with_random_options_are_answered_by_the_rules_or_ignored(
        kind: int, options: list[tuple[int, bytes]], ours: bool) -> None:
    """Options well framed, their contents random: the parser sees every code; an answer is a valid reply."""
    head = option(1, CLIENT_DUID) + (option(2, SERVER_DUID) if ours else b"")
    replies = ask(bytes([kind]) + XID + head + b"".join(option(code, value) for code, value in options))
    if replies:
        message_of(replies)
