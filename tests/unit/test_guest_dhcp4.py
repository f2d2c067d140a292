"""DHCPv4 from the port model (hostagent/guest/dhcp4.py): the codec against the RFCs' examples, the answer to
each message type in each client state, reply addressing (RFC 2131 section 4.1), the size bound, and
hostile input that never raises."""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from nvfabric.hostagent.guest import dhcp4, frames
from nvfabric.hostagent.guest.offer import PortService

ip4 = ipaddress.IPv4Address
net4 = ipaddress.IPv4Network
MAC = "02:00:00:00:00:01"
HOST_MAC = bytes.fromhex("fe0000000001")
PORT = PortService(
    port="vm1", interface="tap1", routing_domain="blue", vsid=5001, mac=MAC,
    ipv4=ipaddress.IPv4Interface("10.0.0.5/24"), ipv6=None, gateway4=ip4("10.0.0.1"), gateway6=None, mtu=1458,
    dns4=(ip4("10.0.0.53"),), search=("tenant.example",),
    routes4=((net4("0.0.0.0/0"), ip4("10.0.0.1")), (net4("172.16.0.0/12"), ip4("10.0.0.1"))), lease_time=3600)


def request(kind: int, *, ciaddr: str = "0.0.0.0", flags: int = 0, chaddr: str = MAC, giaddr: str = "0.0.0.0",
            options: dict[int, bytes] | None = None, op: int = dhcp4.BOOTREQUEST, src: str = MAC,
            ip_src: str = "0.0.0.0", ip_dst: str = "255.255.255.255") -> frames.Ethernet:
    head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", op, 1, 6, 0, 0xC0FFEE, 0, flags, ip4(ciaddr).packed,
                       bytes(4), bytes(4), ip4(giaddr).packed, frames.mac_bytes(chaddr), b"", b"")
    body = head + dhcp4.MAGIC + dhcp4.option(dhcp4.MESSAGE_TYPE, bytes((kind,)))
    for code, value in (options or {}).items():
        body += dhcp4.option(code, value)
    body += bytes((dhcp4.END,))
    packet = frames.udp4(ip4(ip_src), ip4(ip_dst), 68, 67, body)
    raw = frames.ethernet(frames.BROADCAST, frames.mac_bytes(src), frames.ETH_P_IP, packet)
    eth = frames.parse_ethernet(raw)
    assert eth is not None
    return eth


@dataclasses.dataclass
class Reply:
    eth_dst: bytes
    ip_src: ipaddress.IPv4Address
    ip_dst: ipaddress.IPv4Address
    message: dhcp4.Message
    yiaddr: ipaddress.IPv4Address
    size: int

    @property
    def kind(self) -> int | None:
        return self.message.kind


def answer(eth: frames.Ethernet, port: PortService = PORT) -> Reply | None:
    out = dhcp4.answer(eth, port, HOST_MAC)
    if not out:
        return None
    (frame,) = out
    parsed = frames.parse_ethernet(frame)
    assert parsed is not None and parsed.src == HOST_MAC
    udp = frames.parse_udp4(parsed.payload)
    assert udp is not None and (udp.sport, udp.dport) == (67, 68)
    message = dhcp4.parse(udp.payload)
    assert message is not None and message.op == dhcp4.BOOTREPLY and message.xid == 0xC0FFEE
    return Reply(parsed.dst, udp.src, udp.dst, message, ip4(udp.payload[16:20]), len(udp.payload))


# ---------------------------------------------------------------------- encodings (the RFCs' examples)


def test_classless_routes_encode_as_rfc_3442_shows():
    routes = ((net4("0.0.0.0/0"), ip4("10.0.0.1")), (net4("10.0.0.0/8"), ip4("10.0.0.1")),
              (net4("10.17.0.0/16"), ip4("10.0.0.1")), (net4("10.27.129.0/24"), ip4("10.0.0.1")),
              (net4("10.229.0.128/25"), ip4("10.0.0.1")), (net4("10.198.122.47/32"), ip4("10.0.0.1")))
    gw = bytes([10, 0, 0, 1])
    assert dhcp4.classless_routes(routes) == (bytes([0]) + gw + bytes([8, 10]) + gw + bytes([16, 10, 17]) + gw
                                              + bytes([24, 10, 27, 129]) + gw + bytes([25, 10, 229, 0, 128]) + gw
                                              + bytes([32, 10, 198, 122, 47]) + gw)


def test_domain_search_encodes_dns_labels_as_rfc_3397_shows():
    # RFC 3397 section 3's example names, without compression (which the RFC allows, not requires)
    assert dhcp4.domain_search(("eng.apple.com", "marketing.apple.com")) == (
        b"\x03eng\x05apple\x03com\x00\x09marketing\x05apple\x03com\x00")


def test_an_option_longer_than_255_bytes_is_split_and_parsed_back_whole():
    value = bytes(range(256)) * 2
    encoded = dhcp4.option(dhcp4.DOMAIN_SEARCH, value)
    assert [encoded[0], encoded[1]] == [119, 255] and encoded[257:259] == bytes([119, 255])
    assert dhcp4.parse_options(encoded + bytes([255])) == {119: value}


def test_options_that_run_past_the_end_are_malformed():
    assert dhcp4.parse_options(bytes([53, 4, 1])) is None
    assert dhcp4.parse_options(bytes([53])) is None
    assert dhcp4.parse_options(bytes([0, 0, 53, 1, 1, 255, 99, 99])) == {53: b"\x01"}


# ---------------------------------------------------------------------- answers per message type


def test_discover_gets_an_offer_of_the_ports_address_with_every_option():
    reply = answer(request(dhcp4.DISCOVER))
    assert reply is not None and reply.kind == dhcp4.OFFER and reply.yiaddr == ip4("10.0.0.5")
    o = reply.message.options
    assert o[dhcp4.SERVER_ID] == ip4("10.0.0.1").packed and o[dhcp4.ROUTER] == ip4("10.0.0.1").packed
    assert o[dhcp4.SUBNET_MASK] == ip4("255.255.255.0").packed and o[dhcp4.BROADCAST] == ip4("10.0.0.255").packed
    assert o[dhcp4.DNS] == ip4("10.0.0.53").packed and o[dhcp4.DOMAIN_NAME] == b"tenant.example"
    assert o[dhcp4.DOMAIN_SEARCH] == b"\x06tenant\x07example\x00"
    assert struct.unpack("!H", o[dhcp4.MTU]) == (1458,)
    assert [struct.unpack("!I", o[c])[0] for c in (dhcp4.LEASE_TIME, dhcp4.RENEWAL, dhcp4.REBINDING)] == [
        3600, 1800, 3150]
    assert o[dhcp4.CLASSLESS_ROUTES] == o[dhcp4.MS_CLASSLESS_ROUTES] == bytes(
        [0, 10, 0, 0, 1, 12, 172, 16, 10, 0, 0, 1])
    # no broadcast flag, no ciaddr: unicast to the offered address at the client's MAC, from the gateway
    assert (reply.eth_dst, reply.ip_dst, reply.ip_src) == (frames.mac_bytes(MAC), ip4("10.0.0.5"), ip4("10.0.0.1"))


def test_the_broadcast_flag_makes_the_reply_a_broadcast():
    reply = answer(request(dhcp4.DISCOVER, flags=dhcp4.BROADCAST_FLAG))
    assert reply is not None and (reply.eth_dst, reply.ip_dst) == (frames.BROADCAST, ip4("255.255.255.255"))
    assert reply.message.flags == dhcp4.BROADCAST_FLAG


def selecting(server: str, wanted: str) -> frames.Ethernet:
    return request(dhcp4.REQUEST, options={dhcp4.SERVER_ID: ip4(server).packed,
                                           dhcp4.REQUESTED_IP: ip4(wanted).packed})


def test_selecting_our_offer_is_acked_another_servers_is_left_alone():
    reply = answer(selecting("10.0.0.1", "10.0.0.5"))
    assert reply is not None and reply.kind == dhcp4.ACK and reply.yiaddr == ip4("10.0.0.5")
    assert answer(selecting("10.0.0.2", "10.0.0.5")) is None  # the client chose another server
    nak = answer(selecting("10.0.0.1", "10.0.0.6"))
    assert nak is not None and nak.kind == dhcp4.NAK and nak.yiaddr == ip4("0.0.0.0")
    assert (nak.eth_dst, nak.ip_dst) == (frames.BROADCAST, ip4("255.255.255.255"))
    assert dhcp4.LEASE_TIME not in nak.message.options and dhcp4.ROUTER not in nak.message.options


def test_init_reboot_keeps_the_ports_address_and_naks_another():
    ok = answer(request(dhcp4.REQUEST, options={dhcp4.REQUESTED_IP: ip4("10.0.0.5").packed}))
    assert ok is not None and ok.kind == dhcp4.ACK
    moved = answer(request(dhcp4.REQUEST, options={dhcp4.REQUESTED_IP: ip4("192.168.1.5").packed}))
    assert moved is not None and moved.kind == dhcp4.NAK


def test_renewing_and_rebinding_are_acked_unicast_to_ciaddr():
    # after an agent restart too: nothing but the port model decides
    renew = answer(request(dhcp4.REQUEST, ciaddr="10.0.0.5", ip_src="10.0.0.5", ip_dst="10.0.0.1"))
    assert renew is not None and renew.kind == dhcp4.ACK and renew.yiaddr == ip4("10.0.0.5")
    assert (renew.eth_dst, renew.ip_dst) == (frames.mac_bytes(MAC), ip4("10.0.0.5"))
    rebind = answer(request(dhcp4.REQUEST, ciaddr="10.0.0.5", flags=dhcp4.BROADCAST_FLAG, ip_src="10.0.0.5"))
    assert rebind is not None and rebind.kind == dhcp4.ACK and rebind.ip_dst == ip4("10.0.0.5")
    readdressed = answer(request(dhcp4.REQUEST, ciaddr="10.0.0.9", ip_src="10.0.0.9"))
    assert readdressed is not None and readdressed.kind == dhcp4.NAK
    assert answer(request(dhcp4.REQUEST)) is None  # no server id, no requested address, no ciaddr


def test_inform_gets_the_configuration_without_a_lease():
    reply = answer(request(dhcp4.INFORM, ciaddr="10.0.0.5", ip_src="10.0.0.5"))
    assert reply is not None and reply.kind == dhcp4.ACK and reply.yiaddr == ip4("0.0.0.0")
    assert reply.ip_dst == ip4("10.0.0.5")
    assert not {dhcp4.LEASE_TIME, dhcp4.RENEWAL, dhcp4.REBINDING} & reply.message.options.keys()
    assert dhcp4.ROUTER in reply.message.options and dhcp4.DNS in reply.message.options


def test_release_decline_and_replies_get_nothing():
    assert answer(request(dhcp4.RELEASE, ciaddr="10.0.0.5")) is None
    assert answer(request(dhcp4.DECLINE, options={dhcp4.REQUESTED_IP: ip4("10.0.0.5").packed})) is None
    assert answer(request(dhcp4.OFFER)) is None
    assert answer(request(dhcp4.DISCOVER, op=dhcp4.BOOTREPLY)) is None


def test_another_client_a_relayed_request_and_a_port_without_ipv4_get_nothing():
    assert answer(request(dhcp4.DISCOVER, chaddr="02:00:00:00:00:99")) is None  # chaddr not the port's
    assert answer(request(dhcp4.DISCOVER, src="02:00:00:00:00:99")) is None  # Ethernet source not the port's
    assert answer(request(dhcp4.DISCOVER, giaddr="10.0.0.200")) is None
    assert answer(request(dhcp4.DISCOVER), dataclasses.replace(PORT, ipv4=None, gateway4=None)) is None


def test_a_reply_stays_within_576_bytes_leaving_out_what_does_not_fit_unless_the_client_takes_more():
    many = dataclasses.replace(
        PORT, search=tuple(f"{'x' * 30}.{'y' * 30}.example{i}" for i in range(8)),
        routes4=tuple((net4(f"172.{16 + i}.0.0/16"), ip4("10.0.0.1")) for i in range(20)))
    small = answer(request(dhcp4.DISCOVER), many)
    assert small is not None and small.size <= 576 - 28
    assert dhcp4.ROUTER in small.message.options and dhcp4.LEASE_TIME in small.message.options
    assert dhcp4.CLASSLESS_ROUTES in small.message.options and dhcp4.DOMAIN_SEARCH not in small.message.options
    big = answer(request(dhcp4.DISCOVER, options={dhcp4.MAX_SIZE: struct.pack("!H", 1500)}), many)
    assert big is not None and big.size <= 1500 - 28
    assert big.message.options[dhcp4.DOMAIN_SEARCH] == dhcp4.domain_search(many.search)  # split and joined
    assert big.message.options[dhcp4.MS_CLASSLESS_ROUTES] == dhcp4.classless_routes(many.routes4)


# ---------------------------------------------------------------------- hostile input


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=700))
def test_random_frames_never_raise(raw):
    eth = frames.parse_ethernet(raw)
    if eth is not None:
        assert dhcp4.answer(eth, PORT, HOST_MAC) == []  # (random bytes are never a request from the port)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=240), st.binary(max_size=400))
def test_random_dhcp_payloads_from_the_port_never_raise(head, options):
    # a valid Ethernet/IPv4/UDP frame from the port's MAC around a random BOOTP head and random options
    body = head.ljust(dhcp4.FIXED, b"\0")[:dhcp4.FIXED] + dhcp4.MAGIC + options
    packet = frames.udp4(ip4("0.0.0.0"), ip4("255.255.255.255"), 68, 67, body)
    eth = frames.parse_ethernet(frames.ethernet(frames.BROADCAST, frames.mac_bytes(MAC), frames.ETH_P_IP, packet))
    assert eth is not None
    for reply in dhcp4.answer(eth, PORT, HOST_MAC):
        assert len(reply) <= 14 + 576
