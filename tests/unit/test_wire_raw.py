"""The reflector's raw path: split an UPDATE into raw attributes + (key, raw NLRI), rebuild it."""

from __future__ import annotations

from ipaddress import IPv4Address

from nvfabric.bgp import wire
from nvfabric.bgp.routes import Family, OpaqueEvpnKey, Path as RoutePath, PathAttributes, UnicastRoute
from tests.fixtures.bgp_samples import IBGP, body, fixture_bytes, mac_route, prefix_route

ORIGINATOR = IPv4Address("198.51.100.11")
CLUSTER = IPv4Address("192.0.2.100")


def test_raw_split_matches_the_typed_decoder():
    message = fixture_bytes("evpn_type2_ipv4.hex")
    raw = wire.decode_raw_update(IBGP, body(message))
    typed = wire.decode_update(IBGP, body(message))
    assert raw.errors == [] and raw.family is Family.L2VPN_EVPN
    assert [wire.typed_key(Family.L2VPN_EVPN, n.raw) for n in raw.announced] == [p.key for p in typed.announced]
    # The key bytes: route type, RD, Ethernet Tag, MAC, IP length, IP (RFC 7432 7.2; no ESI, no label).
    assert raw.announced[0].key == bytes.fromhex("02 0001c633640b1389 00000000 020000000001 20 0a010005")
    nlri = raw.announced[0].raw  # type, length and the 37-byte route
    assert len(nlri) == 39 and nlri[:2] == bytes([2, 37]) and nlri in message
    assert raw.next_hop == bytes([198, 51, 100, 11])
    assert raw.attrs == typed.announced[0].attrs
    assert b"\x80\x0e" not in raw.attributes  # MP_REACH is rebuilt, not copied


def test_reflect_attributes_adds_originator_and_prepends_cluster():
    attributes = bytes.fromhex("40010100" "800a04 01020304")
    out = wire.reflect_attributes(attributes, ORIGINATOR, CLUSTER)
    # RFC 4456 section 8: ORIGINATOR_ID (optional non-transitive, 9) and CLUSTER_LIST (10) with ours first.
    assert out == bytes.fromhex("40010100" "800904 c633640b" "800a08 c0000264 01020304")
    # An ORIGINATOR_ID already present is kept.
    present = bytes.fromhex("800904 0a000001")
    assert wire.reflect_attributes(present, ORIGINATOR, None) == present


def test_reflected_update_decodes_to_the_same_routes():
    routes = [mac_route(mac=f"02:00:00:00:{i // 256:02x}:{i % 256:02x}") for i in range(300)]
    routes.append(prefix_route())
    raw_nlri = []
    attributes = next_hop = b""
    for message in wire.encode_update(IBGP, routes):
        raw = wire.decode_raw_update(IBGP, body(message))
        raw_nlri += [n.raw for n in raw.announced]
        attributes, next_hop = raw.attributes, raw.next_hop
    reflected_attributes = wire.reflect_attributes(attributes, ORIGINATOR, CLUSTER)
    messages = wire.encode_raw_update(Family.L2VPN_EVPN, reflected_attributes, next_hop, raw_nlri)
    assert all(len(m) <= 4096 for m in messages) and len(messages) >= 3
    decoded = [p for m in messages for p in wire.decode_update(IBGP, body(m)).announced]
    assert len(decoded) == len(routes) and {p.route.key for p in decoded} == {r.key for r in routes}
    assert len({n for n in raw_nlri}) == len(routes)
    assert {p.attrs.originator_id for p in decoded} == {ORIGINATOR}
    assert {p.attrs.cluster_list for p in decoded} == {(CLUSTER,)}


def test_raw_withdraw_and_ipv4_unicast():
    route = UnicastRoute("203.0.113.0/24", "198.51.100.1")
    message = wire.encode_update(IBGP, [RoutePath(route, PathAttributes(local_pref=100))])[0]
    raw = wire.decode_raw_update(IBGP, body(message))
    assert raw.family is Family.IPV4_UNICAST and raw.announced[0].raw == bytes([24, 203, 0, 113])
    again = wire.encode_raw_update(Family.IPV4_UNICAST, raw.attributes, b"", [n.raw for n in raw.announced])
    assert wire.decode_update(IBGP, body(again[0])).announced[0].route == route
    withdrawal = wire.encode_raw_update(Family.L2VPN_EVPN, b"", b"", [], [wire.decode_raw_update(
        IBGP, body(fixture_bytes("evpn_type2_ipv4.hex"))).announced[0].raw])
    assert wire.decode_update(IBGP, body(withdrawal[0])).withdrawn == [mac_route(router_mac="02:00:00:00:00:aa").key]


def test_raw_treat_as_withdraw():
    message = bytearray(body(fixture_bytes("evpn_type2_ipv4.hex")))
    message[message.index(bytes.fromhex("400101")) + 3] = 9  # ORIGIN 9
    raw = wire.decode_raw_update(IBGP, bytes(message))
    assert raw.announced == []
    assert [wire.typed_key(Family.L2VPN_EVPN, n.raw) for n in raw.withdrawn] == [mac_route().key]
    assert raw.errors[0].action == wire.TREAT_AS_WITHDRAW


def test_raw_eor():
    assert wire.decode_raw_update(IBGP, body(wire.encode_eor(Family.L2VPN_EVPN))).eor is Family.L2VPN_EVPN
    assert wire.decode_raw_update(IBGP, body(wire.encode_eor(Family.IPV4_UNICAST))).eor is Family.IPV4_UNICAST


def test_raw_path_carries_route_types_we_do_not_model():
    # A type-3 (Inclusive Multicast, RFC 7432 7.3) and a type-1 (Ethernet A-D, 7.1) route: the typed
    # decoder ignores them, the reflector's raw path keys and forwards them.
    type3 = bytes([3, 17]) + bytes.fromhex("0001c633640b1389 00000000 20 c633640b")
    type1 = bytes([1, 25]) + bytes.fromhex("0001c633640b1389") + bytes(range(10)) + bytes(4) + bytes.fromhex("001389")
    attributes = bytes.fromhex("40010100 400200 40050400000064")
    reach = bytes.fromhex("0019 46 04 c633640b 00") + type3 + type1
    payload = (b"\x00\x00" + (len(attributes) + 3 + len(reach)).to_bytes(2, "big")
               + attributes + bytes([0x80, 14, len(reach)]) + reach)
    assert wire.decode_update(IBGP, payload).ignored == 2
    raw = wire.decode_raw_update(IBGP, payload)
    assert [n.raw for n in raw.announced] == [type3, type1]
    assert [n.key for n in raw.announced] == [type3, type1[:-3]]  # type 1's label is not key
    keys = [wire.typed_key(Family.L2VPN_EVPN, n.raw) for n in raw.announced]
    assert keys[0] == OpaqueEvpnKey(3, type3[2:]) and keys[1] == OpaqueEvpnKey(1, type1[2:-3])
    again = wire.encode_raw_update(Family.L2VPN_EVPN, raw.attributes, raw.next_hop, [n.raw for n in raw.announced])
    assert [n.key for n in wire.decode_raw_update(IBGP, body(again[0])).announced] == [type3, type1[:-3]]
    withdrawal = wire.encode_update(IBGP, [], keys)
    assert [n.key for n in wire.decode_raw_update(IBGP, body(withdrawal[0])).withdrawn] == [type3, type1[:-3]]


def test_raw_keys_ignore_what_is_not_key():
    # Same MAC/IP under the same RD with another VSID, ESI or next hop is the same route (RFC 7432 7.2).
    variants = [mac_route(), mac_route(vsid=7, esi=bytes(range(10)), next_hop="2001:db8::11")]
    keys = {wire.decode_raw_update(IBGP, body(wire.encode_update(IBGP, [r])[0])).announced[0].key for r in variants}
    assert len(keys) == 1
    assert len({wire.decode_raw_update(IBGP, body(wire.encode_update(IBGP, [mac_route(ip=None)])[0])).announced[0].key}
               | keys) == 2


def test_raw_malformed_evpn_route_is_treat_as_withdraw():
    good = wire.decode_raw_update(IBGP, body(wire.encode_update(IBGP, [mac_route(), prefix_route()])[0]))
    payload = bytearray(body(wire.encode_update(IBGP, [mac_route(), prefix_route()])[0]))
    payload[payload.index(bytes.fromhex("30020000000001")) ] = 40  # MAC length 40
    raw = wire.decode_raw_update(IBGP, bytes(payload))
    assert raw.announced == [] and [n.key for n in raw.withdrawn] == [good.announced[1].key]
    assert [e.action for e in raw.errors] == [wire.TREAT_AS_WITHDRAW]


def test_short_evpn_routes_at_the_end_of_the_field_are_malformed_not_exceptions():
    attributes = bytes.fromhex("40010100 400200")
    for route in (bytes([2, 5]) + bytes(5), bytes([5, 3]) + bytes(3), bytes([2, 0])):
        reach = bytes.fromhex("0019 46 04 c633640b 00") + route
        payload = (b"\x00\x00" + (len(attributes) + 3 + len(reach)).to_bytes(2, "big")
                   + attributes + bytes([0x80, 14, len(reach)]) + reach)
        for decode in (wire.decode_update, wire.decode_raw_update):
            result = decode(IBGP, payload)
            assert result.announced == [] and [e.action for e in result.errors] == [wire.TREAT_AS_WITHDRAW]


def _with_ipv4_nlri(evpn_body: bytes, next_hop: bool = True) -> bytes:
    """An EVPN UPDATE body that also announces 203.0.113.0/24 in its NLRI field (RFC 4760 allows both)."""
    attributes_end = 4 + int.from_bytes(evpn_body[2:4], "big")
    extra = bytes.fromhex("400304 c6336401") if next_hop else b""
    attributes = evpn_body[4:attributes_end] + extra
    return b"\x00\x00" + len(attributes).to_bytes(2, "big") + attributes + bytes([24, 203, 0, 113])


def test_ipv4_nlri_beside_an_evpn_mp_reach_stay_ipv4_routes():
    # Found by fuzzing: the IPv4 prefix was taken for an EVPN route and reflected inside MP_REACH_NLRI,
    # which every other client had to answer with a session reset.
    raw = wire.decode_raw_update(IBGP, _with_ipv4_nlri(body(wire.encode_update(IBGP, [mac_route()])[0])))
    assert raw.errors == [] and raw.family is Family.L2VPN_EVPN
    assert [wire.typed_key(Family.L2VPN_EVPN, n.raw) for n in raw.announced] == [mac_route().key]
    assert raw.also is not None and raw.also.family is Family.IPV4_UNICAST and raw.also.next_hop == b""
    assert [n.raw for n in raw.also.announced] == [bytes([24, 203, 0, 113])]
    assert raw.also.attributes == raw.attributes and raw.also.attrs == raw.attrs


def test_ipv4_nlri_without_next_hop_is_treat_as_withdraw():
    # RFC 7606 section 3 (d): NEXT_HOP is mandatory with a non-empty NLRI field; everything is withdrawn.
    raw = wire.decode_raw_update(IBGP, _with_ipv4_nlri(body(wire.encode_update(IBGP, [mac_route()])[0]), False))
    assert raw.announced == [] and raw.also is None
    assert [e.action for e in raw.errors] == [wire.TREAT_AS_WITHDRAW]
    assert [(f, len(n)) for f, n in raw.withdrawn_by_family()] == [(Family.L2VPN_EVPN, 1), (Family.IPV4_UNICAST, 1)]


def test_attributes_from_a_two_octet_session_are_passed_on_in_four_octet_form():
    # Found by fuzzing with a 2-octet AS session: the reflector passed AS_PATH with 2-octet numbers,
    # AS4_PATH and AS4_AGGREGATOR to its 4-octet clients, where AS_PATH is malformed (RFC 6793 4.2.3).
    from tests.fixtures.bgp_samples import TWO_OCTET
    as_path = bytes.fromhex("400206 0202 fde9 5ba0")  # AS_SEQUENCE 65001 AS_TRANS
    as4_path = bytes.fromhex("c0110a 0202 0000fde9 00011170")  # AS_SEQUENCE 65001 70000
    aggregator = bytes.fromhex("c00706 5ba0 c6336401")  # AS_TRANS 198.51.100.1
    as4_aggregator = bytes.fromhex("c01208 00011170 c6336401")  # 70000 198.51.100.1
    from tests.unit.test_wire_update import _evpn_reach, _type2
    attributes = bytes.fromhex("40010100") + as_path + as4_path + aggregator + as4_aggregator + _evpn_reach(_type2(1))
    raw = wire.decode_raw_update(TWO_OCTET, b"\x00\x00" + len(attributes).to_bytes(2, "big") + attributes)
    assert raw.errors == [] and len(raw.announced) == 1
    assert raw.attributes == bytes.fromhex("40010100" "40020a 0202 0000fde9 00011170" "c00708 00011170 c6336401")
