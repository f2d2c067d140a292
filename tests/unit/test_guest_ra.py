"""Router advertisements (hostagent/guest/ra.py): the bytes on the wire against RFC 4861 / RFC 8106 layouts,
which solicitations are answered, and hostile input."""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from nvfabric.hostagent.guest import frames, ra
from nvfabric.hostagent.guest.offer import PortService

VM_MAC = "02:00:00:00:0c:01"
VM = frames.mac_bytes(VM_MAC)
HOST = bytes.fromhex("fe5400aabbcc")
ROUTER = ipaddress.IPv6Address("fe80::fc54:ff:feaa:bbcc")  # EUI-64 of HOST
VM_LL = ipaddress.IPv6Address("fe80::ff:fe00:c01")
PORT = PortService(
    port="g1", interface="tap-g1", routing_domain="blue", vsid=5001, mac=VM_MAC, ipv4=None,
    ipv6=ipaddress.IPv6Interface("fd00:c::11/64"), gateway4=None, gateway6=ipaddress.IPv6Address("fd00:c::1"),
    mtu=1410, dns6=(ipaddress.IPv6Address("fd00:53::53"),), search=("corp.example",), lease_time=7200)
ALL_ROUTERS = ipaddress.IPv6Address("ff02::2")


def solicitation(src: ipaddress.IPv6Address = VM_LL, options: bytes = b"", hop_limit: int = 255, code: int = 0,
                 eth_src: bytes = VM, body: bytes | None = None) -> tuple[frames.Ethernet, frames.Ip6]:
    rest = b"\0\0\0\0" + options if body is None else body
    ip = frames.icmp6(src, ALL_ROUTERS, ra.ROUTER_SOLICITATION, code, rest, hop_limit=hop_limit)
    frame = frames.ethernet(frames.multicast_mac(ALL_ROUTERS), eth_src, frames.ETH_P_IPV6, ip)
    eth = frames.parse_ethernet(frame)
    assert eth is not None
    packet = frames.parse_ip6(eth.payload)
    assert packet is not None
    return eth, packet


def decode(frame: bytes) -> tuple[frames.Ethernet, frames.Ip6, bytes, list[tuple[int, bytes]]]:
    """Ethernet, IPv6, the RA's fixed part and its options (type, whole option bytes)."""
    eth = frames.parse_ethernet(frame)
    assert eth is not None and eth.ethertype == frames.ETH_P_IPV6
    packet = frames.parse_ip6(eth.payload)
    assert packet is not None and packet.next_header == frames.PROTO_ICMPV6
    icmp = frames.parse_icmp6(packet)  # checksum verified
    assert icmp is not None and icmp[:2] == (ra.ROUTER_ADVERTISEMENT, 0)
    body = icmp[2]
    options, at = [], 12
    while at < len(body):
        kind, units = body[at], body[at + 1]
        assert units > 0
        options.append((kind, body[at:at + units * 8]))
        at += units * 8
    assert at == len(body)
    return eth, packet, body[:12], options


def test_an_advertisement_answers_a_solicitation_with_every_option_laid_out_as_the_rfcs_say() -> None:
    [frame] = ra.answer(*solicitation(options=bytes([1, 1]) + VM), PORT, HOST)
    eth, packet, fixed, options = decode(frame)
    # unicast to the soliciting VM (RFC 4861 6.2.6), from the host side's EUI-64 link-local, hop limit 255
    assert (eth.dst, eth.src) == (VM, HOST)
    assert (packet.src, packet.dst, packet.hop_limit) == (ROUTER, VM_LL, 255)
    # cur hop limit 64, M and O set (0xC0), router lifetime 1800, reachable time and retrans timer unspecified
    assert fixed == bytes([64, 0xC0]) + struct.pack("!HII", 1800, 0, 0)
    assert dict(options) == {
        1: bytes([1, 1]) + HOST,  # source link-layer address (RFC 4861 4.6.1)
        5: bytes([5, 1, 0, 0]) + struct.pack("!I", 1410),  # MTU (4.6.4)
        # prefix information (4.6.2): /64, L=1 A=0, valid and preferred = the lease, reserved, prefix
        3: bytes([3, 4, 64, 0x80]) + struct.pack("!III", 7200, 7200, 0) + ipaddress.IPv6Address("fd00:c::").packed,
        # RDNSS (RFC 8106 5.1): length 1 + 2 per address, reserved, lifetime, addresses
        25: bytes([25, 3, 0, 0]) + struct.pack("!I", 1800) + ipaddress.IPv6Address("fd00:53::53").packed,
        # DNSSL (5.2): the names in DNS wire format, zero-padded to 8 octets
        31: bytes([31, 3, 0, 0]) + struct.pack("!I", 1800) + b"\x04corp\x07example\x00" + b"\0\0",
    }
    assert [kind for kind, _ in options] == [1, 5, 3, 25, 31]


def test_a_solicitation_from_the_unspecified_address_is_answered_to_all_nodes_as_the_periodic_one_is() -> None:
    [frame] = ra.answer(*solicitation(src=ipaddress.IPv6Address("::")), PORT, HOST)
    eth, packet, _, _ = decode(frame)
    assert eth.dst == bytes.fromhex("333300000001") and packet.dst == ipaddress.IPv6Address("ff02::1")
    assert frame == ra.unsolicited(PORT, HOST)


def test_a_solicitation_from_the_vms_ca_is_answered() -> None:
    [frame] = ra.answer(*solicitation(src=ipaddress.IPv6Address("fd00:c::11")), PORT, HOST)
    assert decode(frame)[1].dst == ipaddress.IPv6Address("fd00:c::11")


def test_a_port_without_ipv6_is_advertised_nothing() -> None:
    bare = dataclasses.replace(PORT, ipv6=None, gateway6=None)
    assert ra.answer(*solicitation(), bare, HOST) == [] and ra.unsolicited(bare, HOST) is None


def test_without_dns_configuration_there_are_no_dns_options_and_a_configured_router_address_is_the_source() -> None:
    other = ipaddress.IPv6Address("fe80::1:2")
    frame = ra.unsolicited(dataclasses.replace(PORT, dns6=(), search=(), router_address=other), HOST)
    assert frame is not None
    _, packet, _, options = decode(frame)
    assert packet.src == other and [kind for kind, _ in options] == [1, 5, 3]


def test_dns_servers_and_search_domains_that_do_not_fit_the_minimum_mtu_are_left_out() -> None:
    many = tuple(f"{'d' * 60}{n}.{'e' * 60}.example" for n in range(40))
    frame = ra.unsolicited(dataclasses.replace(PORT, search=many), HOST)
    assert frame is not None and len(frame) - 14 <= 1280
    dnssl = dict(decode(frame)[3])[31]
    assert b"d" * 60 + b"0" in dnssl and b"d" * 60 + b"39" not in dnssl
    # 100 servers: 73 fit (16 octets each after the 60 octets of the rest: 1280 exactly), no room for names
    servers = tuple(ipaddress.IPv6Address(f"fd00:53::{n + 1:x}") for n in range(100))
    frame = ra.unsolicited(dataclasses.replace(PORT, dns6=servers, search=many), HOST)
    assert frame is not None and len(frame) - 14 <= 1280
    options = dict(decode(frame)[3])
    assert options[25][1] == 1 + 2 * 73 and 31 not in options and len(frame) - 14 == 1280
    # every padding case stays within the limit
    for length in range(1, 64):
        frame = ra.unsolicited(dataclasses.replace(PORT, search=tuple(f"{'x' * length}{n}.example"
                                                                      for n in range(60))), HOST)
        assert frame is not None and len(frame) - 14 <= 1280


def test_invalid_or_foreign_solicitations_get_nothing() -> None:
    stranger = bytes.fromhex("020000000999")
    cases = {
        "hop limit not 255 (RFC 4861 6.1.1)": solicitation(hop_limit=64),
        "code not 0": solicitation(code=1),
        "an option of length 0": solicitation(options=bytes([1, 0]) + VM),
        "an option overrunning the message": solicitation(options=bytes([1, 2]) + VM),
        "too short": solicitation(body=b"\0\0"),
        "source link-layer option from ::": solicitation(src=ipaddress.IPv6Address("::"), options=bytes([1, 1]) + VM),
        "another MAC in the source link-layer option": solicitation(options=bytes([1, 1]) + stranger),
        "another MAC in the Ethernet source": solicitation(eth_src=stranger),
        "a global source that is not the VM's": solicitation(src=ipaddress.IPv6Address("fd00:c::12")),
    }
    for why, (eth, packet) in cases.items():
        assert ra.answer(eth, packet, PORT, HOST) == [], why
    # a bad checksum
    eth, packet = solicitation()
    broken = dataclasses.replace(packet, payload=packet.payload[:2] + b"\0\0" + packet.payload[4:])
    assert ra.answer(eth, broken, PORT, HOST) == []
    # an advertisement is not a solicitation
    ip = frames.icmp6(VM_LL, ALL_ROUTERS, ra.ROUTER_ADVERTISEMENT, 0, bytes(12))
    eth = frames.Ethernet(frames.multicast_mac(ALL_ROUTERS), VM, frames.ETH_P_IPV6, ip)
    packet = frames.parse_ip6(ip)
    assert packet is not None and ra.answer(eth, packet, PORT, HOST) == []


def test_the_router_address_is_the_kernels_eui64_link_local() -> None:
    assert ra.router_address(PORT, HOST) == ROUTER == frames.link_local(frames.mac_text(HOST))


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200), hop_limit=st.sampled_from([255, 64]), code=st.integers(0, 255))
def test_any_solicitation_body_never_raises(body: bytes, hop_limit: int, code: int) -> None:
    eth, packet = solicitation(body=body, hop_limit=hop_limit, code=code)
    for frame in ra.answer(eth, packet, PORT, HOST):
        decode(frame)


@settings(max_examples=300, deadline=None)
@given(frame=st.binary(max_size=200))
def test_any_frame_never_raises(frame: bytes) -> None:
    eth = frames.parse_ethernet(frame)
    packet = frames.parse_ip6(eth.payload) if eth is not None else None
    if eth is not None and packet is not None:
        ra.answer(eth, packet, PORT, HOST)
