"""The EVPN IPv6 next-hop fix in bgp/wire/exa.py (ExaBGP 5.0.15 allows only 4-byte EVPN next hops).

These fail if the fix stops applying (removed, or a new ExaBGP reads another table)."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest

from nvfabric.bgp import wire
from nvfabric.bgp.wire import exa
from tests.fixtures.bgp_samples import IBGP, body, fixture_bytes, mac_route


def test_exabgp_decodes_a_type2_route_with_a_16_byte_next_hop():
    route = mac_route(next_hop="2001:db8::11")
    message = wire.encode_update(IBGP, [route])[0]
    assert bytes.fromhex("800e") in message and bytes([16]) + IPv6Address("2001:db8::11").packed in message
    assert [p.route for p in wire.reference_decode_update(IBGP, body(message)).announced] == [route]


def test_exabgp_decodes_the_hand_built_type5_with_an_ipv6_next_hop():
    result = wire.reference_decode_update(IBGP, body(fixture_bytes("evpn_type5_ipv6.hex")))
    assert result.announced[0].route.next_hop == IPv6Address("2001:db8::11")


def test_a_32_byte_next_hop_uses_the_global_address():
    # RFC 2545 section 3: global + link-local; we tunnel to the global one.
    message = bytearray(body(fixture_bytes("evpn_type5_ipv6.hex")))
    at = message.index(bytes([16]) + IPv6Address("2001:db8::11").packed)
    message[at] = 32
    message[at + 17 : at + 17] = IPv6Address("fe80::11").packed
    message[message.index(b"\x80\x0e") + 2] += 16
    message[2:4] = (int.from_bytes(message[2:4], "big") + 16).to_bytes(2, "big")
    for decode in (wire.decode_update, wire.reference_decode_update):
        assert decode(IBGP, bytes(message)).announced[0].route.next_hop == IPv6Address("2001:db8::11")


def test_without_the_fix_exabgp_rejects_it(monkeypatch):
    # Shows the tests above can fail: put ExaBGP's own table entry back and the decode raises.
    table = exa._exa_family.Family.size
    key = (exa._ExaAFI.l2vpn, exa._ExaSAFI.evpn)
    assert table[key] == (wire.EVPN_NEXT_HOP_LENGTHS, 0)
    monkeypatch.setitem(table, key, ((4,), 0))
    message = wire.encode_update(IBGP, [mac_route(next_hop="2001:db8::11")])[0]
    with pytest.raises(Exception, match="next-hop length 16"):
        wire.reference_decode_update(IBGP, body(message))
