"""UPDATE encode/decode: round trips, hand-checked bytes, RFC 7606 error handling, packing."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, ip_network

import pytest

from nvfabric.bgp import wire
from nvfabric.bgp.routes import (
    AsSegment, Family, MacIpKey, Origin, Path, PathAttributes, PeerRef, UnicastKey, UnicastRoute,
)
from tests.fixtures.bgp_samples import (
    EBGP, FIXTURES, IBGP, RD, TWO_OCTET, body, fixture_bytes, mac_route, prefix_route,
)

PEER = PeerRef(IPv4Address("192.0.2.2"), IPv4Address("192.0.2.2"), 65000)


def roundtrip(route, negotiated=IBGP, attrs=None):
    path = Path(route, attrs) if attrs else route
    messages = wire.encode_update(negotiated, [path])
    assert len(messages) == 1
    result = wire.decode_update(negotiated, body(messages[0]), PEER)
    assert result.errors == [] and result.withdrawn == []
    assert len(result.announced) == 1
    return result.announced[0]


@pytest.mark.parametrize(
    "route",
    [
        mac_route(),
        mac_route(ip="2001:db8:1::5"),
        mac_route(ip=None),
        mac_route(next_hop="2001:db8::11"),
        mac_route(ip="2001:db8:1::5", next_hop="2001:db8::11", router_mac="02:AA:00:00:00:01"),
        mac_route(mobility_seq=7, sticky=True, ethernet_tag=12, esi=bytes(range(10))),
        mac_route(vsid=0xFFFFFF, route_targets=("65000:5001", "4200000000:7", "192.0.2.1:9")),
        prefix_route(),
        prefix_route(prefix="2001:db8:1::/64", next_hop="2001:db8::11"),
        prefix_route(prefix="2001:db8:1::/64", gateway_ip="2001:db8:1::1", router_mac="02:00:00:00:00:aa"),
        prefix_route(next_hop="2001:db8::11"),
    ],
    ids=["t2-v4", "t2-v6ca", "t2-noip", "t2-v6nh", "t2-v6-v6nh-rmac", "t2-mobility", "t2-rts",
         "t5-v4", "t5-v6", "t5-v6-gw", "t5-v4-v6nh"],
)
def test_evpn_roundtrip(route):
    path = roundtrip(route)
    assert path.route == route
    assert path.source == PEER
    assert path.attrs.tunnel_type == wire.NVGRE_TUNNEL_TYPE
    assert path.attrs.local_pref == 100  # iBGP default added on send (RFC 4271 5.1.5)


ROUTES = [
    mac_route(),
    mac_route(ip="2001:db8:1::5", next_hop="2001:db8::11", router_mac="02:00:00:00:00:aa", mobility_seq=4),
    mac_route(ip=None, sticky=True, ethernet_tag=3, esi=bytes(range(10))),
    prefix_route(),
    prefix_route(prefix="2001:db8:1::/64", next_hop="2001:db8::11", gateway_ip="2001:db8:1::1"),
    UnicastRoute("203.0.113.0/24", "198.51.100.1"),
    UnicastRoute("2001:db8:f::/48", "2001:db8::1"),
]


@pytest.mark.parametrize("route", ROUTES)
def test_reference_decoder_agrees(route):
    message = wire.encode_update(IBGP, [route])[0]
    assert wire.reference_decode_update(IBGP, body(message)).announced[0].route == route


@pytest.mark.parametrize("route", ROUTES)
def test_our_nlri_bytes_equal_exabgps(route):
    # ExaBGP builds the same route with its own classes (Labels([], raw_labels=[vsid]) for the VSID).
    ours = wire.decode_raw_update(IBGP, body(wire.encode_update(IBGP, [route])[0]))
    theirs = wire.decode_raw_update(IBGP, body(wire.reference_encode_update(IBGP, [route])[0]))
    assert ours.announced == theirs.announced and ours.next_hop == theirs.next_hop
    assert ours.attrs == theirs.attrs
    assert sorted(ours.attributes) == sorted(theirs.attributes)


def test_our_withdrawals_equal_exabgps():
    keys = [r.key for r in ROUTES]
    ours = [n for m in wire.encode_update(IBGP, [], keys) for n in wire.decode_raw_update(IBGP, body(m)).withdrawn]
    theirs = [n for m in wire.reference_encode_update(IBGP, [], keys)
              for n in wire.decode_raw_update(IBGP, body(m)).withdrawn]
    assert sorted(n.raw for n in ours) == sorted(n.raw for n in theirs) and len(ours) == len(keys)


def test_unicast_roundtrip_v4_and_v6():
    for route in (UnicastRoute("203.0.113.0/24", "198.51.100.1"), UnicastRoute("2001:db8:f::/48", "2001:db8::1")):
        assert roundtrip(route).route == route


def test_attributes_roundtrip():
    attrs = PathAttributes(
        origin=Origin.INCOMPLETE, as_path=(AsSegment(2, (65001, 4200000000)), AsSegment(1, (1, 2))),
        med=5, local_pref=200, originator_id=IPv4Address("192.0.2.9"),
        cluster_list=(IPv4Address("192.0.2.10"), IPv4Address("192.0.2.11")), communities=(0xFDE80001,),
    )
    path = roundtrip(mac_route(), attrs=attrs)
    assert path.attrs == PathAttributes(**{**_fields(attrs), "tunnel_type": 9})


def _fields(attrs):
    return {name: getattr(attrs, name) for name in attrs.__slots__}


def test_two_octet_as_path_roundtrip():
    attrs = PathAttributes(as_path=(AsSegment(2, (65001, 65002)),))
    assert roundtrip(mac_route(), TWO_OCTET, attrs).attrs.as_path == attrs.as_path


def test_ebgp_ignores_received_local_pref():
    # RFC 4271 5.1.5: LOCAL_PREF is not sent to, and ignored from, external peers.
    path = roundtrip(mac_route(), EBGP, PathAttributes(as_path=(AsSegment(2, (65000,)),), local_pref=300))
    assert path.attrs.local_pref is None


# ---------------------------------------------------------------- hand-checked bytes


def test_type2_fixture_decodes_and_our_encoder_produces_it():
    fixture = fixture_bytes("evpn_type2_ipv4.hex")
    route = mac_route(router_mac="02:00:00:00:00:aa")
    result = wire.decode_update(IBGP, body(fixture))
    assert [p.route for p in result.announced] == [route]
    assert wire.encode_update(IBGP, [route]) == [fixture]


def test_type5_fixture_decodes_and_our_encoder_produces_it():
    fixture = fixture_bytes("evpn_type5_ipv6.hex")
    route = prefix_route(prefix="2001:db8:1::/64", next_hop="2001:db8::11")
    assert [p.route for p in wire.decode_update(IBGP, body(fixture)).announced] == [route]
    assert wire.encode_update(IBGP, [route]) == [fixture]


def test_vsid_is_the_raw_24_bit_label_and_encapsulation_is_nvgre():
    message = wire.encode_update(IBGP, [mac_route(vsid=0x123456)])[0]
    # RFC 8365 5.1.3: the label field holds the VSID unshifted: 12 34 56, no MPLS BoS bit.
    assert bytes.fromhex("0a010005" "123456") in message
    assert bytes.fromhex("030c000000000009") in message


def test_mac_mobility_bytes():
    message = wire.encode_update(IBGP, [mac_route(mobility_seq=0x01020304, sticky=True)])[0]
    assert bytes.fromhex("0600" "01" "00" "01020304") in message  # RFC 7432 7.7, sticky flag 0x01


def test_withdraw_by_key_and_route():
    messages = wire.encode_update(IBGP, [], [mac_route().key, prefix_route(), UnicastKey(ip_network("203.0.113.0/24"))])
    withdrawn = []
    for message in messages:
        result = wire.decode_update(IBGP, body(message))
        assert result.announced == [] and result.errors == []
        withdrawn += result.withdrawn
    assert set(withdrawn) == {mac_route().key, prefix_route().key, UnicastKey(ip_network("203.0.113.0/24"))}


def test_keys_exclude_label_and_next_hop():
    # RFC 7432 7.2 / RFC 9136 3.2: VSID (label), next hop, ESI and gateway are not part of the key.
    assert mac_route(vsid=1, next_hop="192.0.2.1").key == mac_route(vsid=2, next_hop="192.0.2.2").key
    assert prefix_route(vsid=1, gateway_ip="10.1.0.1").key == prefix_route(vsid=2).key
    assert mac_route().key != mac_route(ip=None).key


# ---------------------------------------------------------------- packing


def test_packing_groups_equal_attributes_and_respects_4096():
    routes = [mac_route(mac=f"02:00:00:00:{i // 256:02x}:{i % 256:02x}", ip=None) for i in range(500)]
    routes += [mac_route(mac="02:00:00:01:00:00", route_targets=("65000:9",))]
    messages = wire.encode_update(IBGP, routes)
    assert all(len(m) <= 4096 for m in messages)
    # 500 routes of 35 bytes need at least 5 messages; the odd one out needs its own.
    assert 5 <= len(messages) <= 7
    decoded = [p.route for m in messages for p in wire.decode_update(IBGP, body(m)).announced]
    assert sorted(decoded, key=lambda r: r.mac) == sorted(routes, key=lambda r: r.mac)


def test_family_not_negotiated_is_refused():
    only_evpn = wire.negotiate(
        wire.Capabilities(65000, IPv4Address("192.0.2.1"), 90, frozenset({Family.L2VPN_EVPN})),
        wire.Capabilities(65000, IPv4Address("192.0.2.2"), 90, frozenset(Family)),
    )
    with pytest.raises(wire.RouteValueError) as info:
        wire.encode_update(only_evpn, [UnicastRoute("203.0.113.0/24", "198.51.100.1")])
    assert info.value.field == "family"


# ---------------------------------------------------------------- End-of-RIB


@pytest.mark.parametrize("family", list(Family))
def test_eor_roundtrip(family):
    result = wire.decode_update(IBGP, body(wire.encode_eor(family)))
    assert result.eor is family and result.announced == [] and result.withdrawn == []
    assert wire.reference_decode_update(IBGP, body(wire.encode_eor(family))).eor is family  # ExaBGP agrees


def test_eor_bytes():
    assert wire.encode_eor(Family.IPV4_UNICAST)[16:] == bytes.fromhex("0017 02 0000 0000")
    assert wire.encode_eor(Family.L2VPN_EVPN)[19:] == bytes.fromhex("0000 0006 800f03 0019 46")


# ---------------------------------------------------------------- RFC 7606 error handling


def _update_body(attributes: bytes, nlri: bytes = b"", withdrawn: bytes = b"") -> bytes:
    return struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attributes)) + attributes + nlri


def _evpn_reach(*nlris: bytes, next_hop: bytes = bytes([198, 51, 100, 11])) -> bytes:
    value = struct.pack("!HBB", 25, 70, len(next_hop)) + next_hop + b"\x00" + b"".join(nlris)
    return struct.pack("!BBB", 0x80, 14, len(value)) + value


BASE = bytes.fromhex("40010100" "400200" "40050400000064")  # ORIGIN, AS_PATH, LOCAL_PREF


def _type2(mac_last: int, ip_length_bits: int = 32, mac_length_bits: int = 48) -> bytes:
    value = (bytes.fromhex("0001c633640b1389") + bytes(10) + bytes(4) + bytes([mac_length_bits])
             + bytes.fromhex("0200000000") + bytes([mac_last]) + bytes([ip_length_bits]) + bytes([10, 1, 0, mac_last])
             + (5001).to_bytes(3, "big"))
    return bytes([2, len(value)]) + value


def test_hand_built_helpers_decode_cleanly():
    result = wire.decode_update(IBGP, _update_body(BASE + _evpn_reach(_type2(1), _type2(2))))
    assert result.errors == []
    assert [p.route.mac for p in result.announced] == ["02:00:00:00:00:01", "02:00:00:00:00:02"]


@pytest.mark.parametrize(
    "bad, reason",
    [
        (_type2(2, ip_length_bits=24), "type-2"),  # IP length must be 0, 32 or 128 (RFC 7432 7.2)
        (_type2(2, mac_length_bits=40), "type-2"),  # MAC length must be 48
    ],
)
def test_malformed_evpn_route_is_treat_as_withdraw(bad, reason):
    result = wire.decode_update(IBGP, _update_body(BASE + _evpn_reach(_type2(1), bad)))
    assert result.session_reset is None
    assert result.announced == []
    assert MacIpKey(RD, 0, "02:00:00:00:00:01", IPv4Address("10.1.0.1")) in result.withdrawn
    assert [e.action for e in result.errors] == [wire.TREAT_AS_WITHDRAW]
    assert reason in result.errors[0].reason and result.errors[0].raw == bad.hex()


def test_exabgp_itself_raises_on_that_route():
    # The reason we do not decode with ExaBGP: it resets the session where RFC 7606 does not.
    with pytest.raises(Exception, match="IP field length is given as 24 bits"):
        wire.reference_decode_update(IBGP, _update_body(BASE + _evpn_reach(_type2(1), _type2(2, 24))))


@pytest.mark.parametrize(
    "attribute",
    [
        bytes.fromhex("400101" "07"),  # ORIGIN value 7
        bytes.fromhex("40010200 00"),  # ORIGIN length 2
        bytes.fromhex("c0100700 02fde8000013"),  # EXTENDED_COMMUNITIES length 7
        bytes.fromhex("800a03 c00002"),  # CLUSTER_LIST length 3
        bytes.fromhex("800903 c00002"),  # ORIGINATOR_ID length 3
        bytes.fromhex("80040300 0000"),  # MED length 3
        bytes.fromhex("c0080300 0000"),  # COMMUNITIES length 3
        bytes.fromhex("000a04 c0000201"),  # CLUSTER_LIST without the optional flag (RFC 7606 3 c)
    ],
    ids=["origin-value", "origin-length", "extcomm", "cluster", "originator", "med", "communities", "flags"],
)
def test_malformed_attribute_is_treat_as_withdraw(attribute):
    base = BASE[4:] if attribute[1] == 1 else BASE
    result = wire.decode_update(IBGP, _update_body(attribute + base + _evpn_reach(_type2(1))))
    assert result.session_reset is None
    assert result.announced == []
    assert result.withdrawn == [MacIpKey(RD, 0, "02:00:00:00:00:01", IPv4Address("10.1.0.1"))]
    assert result.errors[0].action == wire.TREAT_AS_WITHDRAW and result.errors[0].raw == attribute.hex()


def test_missing_mandatory_attribute_is_treat_as_withdraw():
    result = wire.decode_update(IBGP, _update_body(BASE[4:] + _evpn_reach(_type2(1))))  # no ORIGIN
    assert result.announced == [] and len(result.withdrawn) == 1
    assert "ORIGIN" in result.errors[0].reason


def test_malformed_atomic_aggregate_is_discarded_and_route_kept():
    result = wire.decode_update(IBGP, _update_body(bytes.fromhex("400601ff") + BASE + _evpn_reach(_type2(1))))
    assert [e.action for e in result.errors] == [wire.ATTRIBUTE_DISCARD]
    assert len(result.announced) == 1


def test_repeated_attribute_keeps_the_first():
    result = wire.decode_update(IBGP, _update_body(BASE + bytes.fromhex("40010102") + _evpn_reach(_type2(1))))
    assert result.announced[0].attrs.origin is Origin.IGP
    assert [e.action for e in result.errors] == [wire.ATTRIBUTE_DISCARD]


def test_unknown_evpn_route_type_is_ignored():
    type3 = bytes([3, 17]) + bytes(17)  # RFC 7606 5.4: unrecognised types are discarded
    result = wire.decode_update(IBGP, _update_body(BASE + _evpn_reach(type3, _type2(1))))
    assert result.errors == [] and result.ignored == 1 and len(result.announced) == 1


@pytest.mark.parametrize(
    "payload, subcode",
    [
        (b"\x00", 1),  # shorter than its length fields
        (b"\x00\x05\x00\x00", 1),  # withdrawn length overruns
        (b"\x00\x00\x00\x09\x40\x01\x01\x00", 1),  # attribute length overruns
        (_update_body(BASE + bytes.fromhex("40010a00")), 1),  # an attribute overruns the list
        (_update_body(BASE + _evpn_reach(_type2(1))[:-3]), 1),  # MP_REACH cut (the list is short)
        (_update_body(BASE + _evpn_reach(bytes([2, 40]) + bytes(20))), 9),  # EVPN route length overruns
        (_update_body(BASE + _evpn_reach(_type2(1), next_hop=bytes(5))), 9),  # next-hop length 5
        (_update_body(BASE + _evpn_reach(_type2(1)) * 2), 1),  # MP_REACH twice (RFC 7606 3 g)
        (_update_body(BASE, nlri=bytes([33, 1, 2, 3, 4, 5])), 10),  # /33 IPv4 prefix
    ],
    ids=["short", "withdrawn", "attr-total", "attr-overrun", "mp-cut", "evpn-overrun", "nh-len", "mp-twice", "v4-33"],
)
def test_unparsable_update_is_session_reset(payload, subcode):
    result = wire.decode_update(IBGP, payload)
    error = result.session_reset
    assert error is not None and error.subcode == subcode
    assert result.announced == [] and result.withdrawn == []


def test_garbage_never_raises():
    import random

    rng = random.Random(7)
    good = body(wire.encode_update(IBGP, [mac_route(), mac_route(mac="02:00:00:00:00:09", ip="2001:db8::9")])[0])
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)) :]  # truncated
        wire.decode_update(IBGP, bytes(data))  # must not raise
        wire.decode_raw_update(IBGP, bytes(data))


def test_second_label_is_accepted_and_ignored():
    # RFC 7432 7.2: Label2 (3 more bytes) may follow, e.g. FRR's L3 VNI; the VSID is Label1.
    two_labels = _type2(1)[:-3] + (5001).to_bytes(3, "big") + (9999).to_bytes(3, "big")
    two_labels = bytes([2, len(two_labels) - 2]) + two_labels[2:]
    result = wire.decode_update(IBGP, _update_body(BASE + _evpn_reach(two_labels)))
    assert result.errors == [] and result.announced[0].route.vsid == 5001


def test_extended_length_and_unknown_attributes():
    # PMSI tunnel (22, optional transitive) with the Extended Length bit: ignored by the typed
    # decoder, carried by the raw one with the Partial bit set (RFC 4271 section 5: we do not
    # recognise it).
    pmsi = bytes.fromhex("d016 0009 00 06 000000 c633640b")  # flags, ingress replication, label, IP
    reach = _evpn_reach(_type2(1))
    result = wire.decode_update(IBGP, _update_body(BASE + pmsi + reach))
    assert result.errors == [] and len(result.announced) == 1
    raw = wire.decode_raw_update(IBGP, _update_body(BASE + pmsi + reach))
    assert raw.attributes == BASE + bytes([0xf0]) + pmsi[1:]


def test_withdrawal_only_update_carries_no_attributes():
    message = wire.encode_update(IBGP, [], [mac_route().key])[0]
    payload = body(message)
    attributes_length = int.from_bytes(payload[2:4], "big")
    assert payload[4:6] == bytes.fromhex("800f") and attributes_length == len(payload) - 4
    assert payload[4 + 3 : 4 + 6] == bytes.fromhex("0019 46")  # only MP_UNREACH_NLRI (RFC 4760 4)


# ---------------------------------------------------------------- messages captured from GoBGP


def gobgp_messages() -> list[tuple[str, bytes]]:
    text = (FIXTURES / "gobgp_evpn.txt").read_text()
    return [(kind, bytes.fromhex(data)) for kind, data in
            (line.split() for line in text.splitlines() if line and not line.startswith("#"))]


GOBGP_ROUTES = [
    mac_route(),
    prefix_route(router_mac="02:00:00:00:00:aa"),
    mac_route(mac="02:00:00:00:00:02", ip="2001:db8:1::5", next_hop="2001:db8::11"),
    prefix_route(prefix="2001:db8:1::/64", next_hop="2001:db8::11"),
]


def test_gobgp_updates_decode_to_the_routes_it_was_given():
    updates = [payload for kind, payload in gobgp_messages() if kind == "UPDATE"]
    decoded = [wire.decode_update(IBGP, payload) for payload in updates]
    assert all(result.errors == [] for result in decoded)
    assert [p.route for result in decoded for p in result.announced] == GOBGP_ROUTES
    assert {p.attrs.origin for result in decoded for p in result.announced} == {Origin.INCOMPLETE}
    assert {p.attrs.tunnel_type for result in decoded for p in result.announced} == {wire.NVGRE_TUNNEL_TYPE}


def test_our_nlri_bytes_equal_gobgps():
    updates = [payload for kind, payload in gobgp_messages() if kind == "UPDATE"]
    for route, payload in zip(GOBGP_ROUTES, updates, strict=True):
        ours = wire.decode_raw_update(IBGP, body(wire.encode_update(IBGP, [route])[0]))
        theirs = wire.decode_raw_update(IBGP, payload)
        assert ours.announced == theirs.announced and ours.next_hop == theirs.next_hop


def test_gobgp_open():
    [payload] = [payload for kind, payload in gobgp_messages() if kind == "OPEN"]
    caps = wire.decode_open(payload, expected_asn=65000)
    assert caps.router_id == IPv4Address("198.51.100.11") and caps.hold_time == 90
    assert caps.families == frozenset({Family.L2VPN_EVPN}) and caps.four_octet and caps.route_refresh


def test_as4_path_restores_four_octet_ases_on_a_two_octet_session():
    # RFC 6793 4.2.3: AS_PATH 65001 AS_TRANS AS_TRANS + AS4_PATH (4200000000 4200000001).
    attrs = PathAttributes(as_path=(AsSegment(2, (65001, 4200000000, 4200000001)),))
    path = roundtrip(mac_route(), TWO_OCTET, attrs)
    assert path.attrs.as_path == attrs.as_path


def test_as4_path_longer_than_as_path_is_ignored():
    as_path = bytes.fromhex("400204 0201 fde9")  # one AS: 65001
    as4_path = bytes.fromhex("c0110a 0202 fa56ea00 fa56ea01")  # two ASes
    payload = _update_body(bytes.fromhex("40010100") + as_path + as4_path + _evpn_reach(_type2(1)))
    result = wire.decode_update(TWO_OCTET, payload)
    assert result.errors == [] and result.announced[0].attrs.as_path == (AsSegment(2, (65001,)),)


def test_malformed_as4_path_is_discarded():
    payload = _update_body(bytes.fromhex("40010100 400204 0201 fde9 c01103 0205 00") + _evpn_reach(_type2(1)))
    result = wire.decode_update(TWO_OCTET, payload)
    assert [e.action for e in result.errors] == [wire.ATTRIBUTE_DISCARD] and len(result.announced) == 1


# ---------------------------------------------------------------- messages reflected by FRR


def test_frr_reflected_updates_decode_to_what_we_sent():
    text = (FIXTURES / "frr_reflected_evpn.txt").read_text()
    messages = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
    sent = [
        mac_route(router_mac="02:00:00:00:00:aa", mobility_seq=3),
        mac_route(mac="02:00:00:00:00:02", ip="2001:db8:1::5", next_hop="2001:db8::11"),
        prefix_route(prefix="2001:db8:1::/64", next_hop="2001:db8::11"),
    ]
    updates = [wire.decode_update(IBGP, bytes.fromhex(data)) for kind, data in messages if kind == "UPDATE"]
    assert all(result.errors == [] for result in updates)
    paths = [p for result in updates for p in result.announced]
    assert [p.route for p in paths] == sent
    # RFC 4456 section 8: the reflector names the originator and prepends its cluster id.
    assert {(p.attrs.originator_id, p.attrs.cluster_list, p.attrs.med) for p in paths} == {
        (IPv4Address("198.51.100.11"), (IPv4Address("192.0.2.100"),), 0)
    }
    [open_body] = [bytes.fromhex(data) for kind, data in messages if kind == "OPEN"]
    caps = wire.decode_open(open_body, expected_asn=65000)
    assert caps.families == frozenset({Family.L2VPN_EVPN}) and caps.hold_time == 180
    assert caps.graceful_restart == wire.GracefulRestart(120, restarting=True)  # R bit, no families


def test_mp_reach_with_wrong_flags_withdraws_its_routes():
    # RFC 7606 3 (c): wrong flags make the UPDATE treat-as-withdraw; the NLRI must still be found.
    reach = bytearray(_evpn_reach(_type2(1)))
    reach[0] = 0x40  # well-known instead of optional
    result = wire.decode_update(IBGP, _update_body(BASE + bytes(reach)))
    assert result.announced == []
    assert result.withdrawn == [MacIpKey(RD, 0, "02:00:00:00:00:01", IPv4Address("10.1.0.1"))]


def _random_route(rng):
    from ipaddress import IPv6Address as V6

    rd = rng.choice([f"198.51.100.{rng.randint(1, 254)}:{rng.randint(0, 65535)}", f"{rng.randint(1, 65535)}:7",
                     f"{rng.randint(65536, 4294967295)}:{rng.randint(0, 65535)}"])
    next_hop = rng.choice([f"203.0.113.{rng.randint(1, 254)}", str(V6(rng.getrandbits(128)))])
    targets = tuple(f"65000:{rng.randint(0, 2**32 - 1)}" for _ in range(rng.randint(0, 3)))
    common = dict(rd=rd, vsid=rng.randint(0, 2**24 - 1), next_hop=next_hop, route_targets=targets,
                  router_mac=rng.choice([None, "02:00:00:00:00:aa"]), ethernet_tag=rng.choice([0, 2**32 - 1]))
    if rng.random() < 0.6:
        ip = rng.choice([None, str(IPv4Address(rng.getrandbits(32))), str(V6(rng.getrandbits(128)))])
        mac = ":".join(f"{rng.getrandbits(8):02x}" for _ in range(6))
        return mac_route(mac=mac, ip=ip, mobility_seq=rng.choice([0, 1, 2**32 - 1]), sticky=rng.random() < 0.2,
                         **common)
    if rng.random() < 0.5:
        plen = rng.randint(0, 32)
        prefix = ip_network((rng.getrandbits(32) >> (32 - plen) << (32 - plen) if plen else 0, plen))
    else:
        plen = rng.randint(0, 128)
        prefix = ip_network((rng.getrandbits(128) >> (128 - plen) << (128 - plen) if plen else 0, plen))
    return prefix_route(prefix=prefix, **common)


def test_random_routes_roundtrip_and_agree_with_exabgp():
    import random

    rng = random.Random(2026)
    routes = [_random_route(rng) for _ in range(300)]
    messages = wire.encode_update(IBGP, routes)
    ours = [p.route for m in messages for p in wire.decode_update(IBGP, body(m)).announced]
    assert sorted(map(repr, ours)) == sorted(map(repr, routes))
    for route in routes[:60]:
        [message] = wire.encode_update(IBGP, [route])
        assert wire.reference_decode_update(IBGP, body(message)).announced[0].route == route
        theirs = wire.decode_raw_update(IBGP, body(wire.reference_encode_update(IBGP, [route])[0]))
        assert wire.decode_raw_update(IBGP, body(message)).announced == theirs.announced


def test_a_transitive_flag_that_contradicts_the_type_is_treat_as_withdraw():
    # RFC 7606 section 3 (c): MED is optional non-transitive; with the Transitive bit it is malformed.
    med = bytes.fromhex("c004 04 00000001")
    result = wire.decode_update(IBGP, _update_body(BASE + med + _evpn_reach(_type2(1))))
    assert [e.action for e in result.errors] == [wire.TREAT_AS_WITHDRAW] and not result.announced
    assert len(result.withdrawn) == 1


def test_as4_path_from_a_four_octet_speaker_is_discarded_and_not_passed_on():
    # RFC 6793 section 3: between 4-octet speakers AS4_PATH is discarded, the UPDATE is processed.
    as4_path = bytes.fromhex("c011 06 0201 0000fde8")
    raw = wire.decode_raw_update(IBGP, _update_body(BASE + as4_path + _evpn_reach(_type2(1))))
    assert [e.action for e in raw.errors] == [wire.ATTRIBUTE_DISCARD] and len(raw.announced) == 1
    assert raw.attributes == BASE
