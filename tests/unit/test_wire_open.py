"""OPEN, capabilities, negotiation, framing and the small messages."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest

from nvfabric.bgp import wire
from nvfabric.bgp.errors import MessageHeaderError, OpenError
from nvfabric.bgp.routes import Family

GR = wire.GracefulRestart(
    120, restarting=True, families=frozenset({(Family.L2VPN_EVPN, True), (Family.IPV4_UNICAST, False)})
)


def caps(**changes) -> wire.Capabilities:
    values = dict(asn=65000, router_id=IPv4Address("192.0.2.1"), hold_time=90, families=frozenset(Family))
    values.update(changes)
    return wire.Capabilities(**values)


def open_body(caps_: wire.Capabilities) -> bytes:
    messages, rest = wire.split_messages(wire.encode_open(caps_))
    assert rest == b"" and messages[0][0] == wire.MessageType.OPEN
    return messages[0][1]


@pytest.mark.parametrize(
    "value",
    [
        caps(),
        caps(asn=4200000000, graceful_restart=GR),
        caps(families=frozenset({Family.L2VPN_EVPN}), route_refresh=False),
        caps(four_octet=False, hold_time=0),
    ],
)
def test_open_roundtrip(value):
    assert wire.decode_open(open_body(value)) == value


def test_four_octet_as_travels_as_as_trans():
    body = open_body(caps(asn=4200000000))
    assert struct.unpack("!H", body[1:3])[0] == wire.AS_TRANS  # RFC 6793 section 4.1


def test_open_bytes_by_hand():
    # RFC 4271 4.2 with RFC 5492 capabilities: version 4, AS 65000, hold 90, id 192.0.2.1, then
    # MP ipv4/unicast, ipv6/unicast, l2vpn/evpn, route refresh, 4-octet AS 65000.
    expected = bytes.fromhex(
        "04 fde8 005a c0000201 24"
        "02060104 00010001" "02060104 00020001" "02060104 00190046"
        "02020200" "02064104 0000fde8"
    )
    assert open_body(caps()) == expected


def _open(version=4, asn=65000, hold=90, router_id="192.0.2.9", params=b"") -> bytes:
    return struct.pack("!BHH4sB", version, asn, hold, IPv4Address(router_id).packed, len(params)) + params


@pytest.mark.parametrize(
    "body, subcode",
    [
        (_open(version=3), 1),
        (_open(hold=2), 6),
        (_open(hold=1), 6),
        (_open(router_id="0.0.0.0"), 3),
        (_open(params=bytes.fromhex("0102 0000")), 4),  # parameter type 1 (authentication, obsolete)
        (_open(params=bytes.fromhex("0205 0104 0001")), 0),  # capability overruns its parameter
    ],
    ids=["version", "hold-2", "hold-1", "router-id", "param", "malformed"],
)
def test_bad_open_subcodes(body, subcode):
    with pytest.raises(OpenError) as info:
        wire.decode_open(body)
    assert info.value.subcode == subcode


def test_unsupported_version_data_is_our_version():
    with pytest.raises(OpenError) as info:
        wire.decode_open(_open(version=5))
    assert info.value.data == b"\x00\x04"  # RFC 4271 6.2: the largest supported version


def test_bad_peer_as():
    with pytest.raises(OpenError) as info:
        wire.decode_open(open_body(caps(asn=65001)), expected_asn=65000)
    assert info.value.subcode == 2
    assert wire.decode_open(open_body(caps(asn=65001)), expected_asn=65001).asn == 65001


def test_no_multiprotocol_capability_means_ipv4_unicast():
    assert wire.decode_open(_open()).families == frozenset({Family.IPV4_UNICAST})  # RFC 4760 section 8


def test_unknown_capabilities_are_ignored():
    body = _open(params=bytes.fromhex("0204 4602 abcd"))  # capability 70 with junk (RFC 5492 4)
    assert wire.decode_open(body).asn == 65000


def test_negotiate():
    local = caps(graceful_restart=wire.GracefulRestart(60))
    remote = caps(router_id=IPv4Address("192.0.2.2"), hold_time=30, families=frozenset({Family.L2VPN_EVPN}),
                  graceful_restart=GR, route_refresh=False)
    n = wire.negotiate(local, remote)
    assert n.families == {Family.L2VPN_EVPN}
    assert n.hold_time == 30 and n.four_octet and not n.route_refresh and n.ibgp
    assert n.graceful_restart == GR and n.peer_router_id == IPv4Address("192.0.2.2")
    assert wire.negotiate(caps(), remote).graceful_restart is None  # we did not offer GR
    assert hash(n) == hash(wire.negotiate(local, remote))  # usable as an update-group key


def test_negotiate_errors():
    with pytest.raises(OpenError) as info:
        wire.negotiate(caps(), caps())  # same identifier inside one AS
    assert info.value.subcode == 3
    with pytest.raises(OpenError) as info:
        wire.negotiate(caps(families=frozenset({Family.L2VPN_EVPN})),
                       caps(router_id=IPv4Address("192.0.2.2"), families=frozenset({Family.IPV4_UNICAST})))
    assert info.value.subcode == 7 and info.value.data == bytes.fromhex("0104 0019 0046")


@pytest.mark.parametrize(
    "changes, field",
    [({"asn": 0}, "asn"), ({"hold_time": 2}, "hold_time"), ({"router_id": IPv4Address(0)}, "router_id"),
     ({"asn": 70000, "four_octet": False}, "four_octet"), ({"families": frozenset({(25, 70)})}, "families")],
)
def test_capabilities_validation_names_the_field(changes, field):
    with pytest.raises(wire.RouteValueError) as info:
        caps(**changes)
    assert info.value.field == field


# ---------------------------------------------------------------- framing and small messages


def test_split_messages_keeps_the_incomplete_tail():
    stream = wire.encode_keepalive() + wire.encode_route_refresh(Family.L2VPN_EVPN) + wire.encode_keepalive()[:10]
    messages, rest = wire.split_messages(stream)
    assert messages == [(4, b""), (5, bytes.fromhex("0019 00 46"))]
    assert rest == wire.encode_keepalive()[:10]


@pytest.mark.parametrize(
    "message, subcode, data",
    [
        (b"\x00" * 16 + bytes.fromhex("0013 04"), 1, b""),
        (b"\xff" * 16 + bytes.fromhex("0014 04") + b"\x00", 2, b"\x00\x14"),  # KEEPALIVE of 20 bytes
        (b"\xff" * 16 + bytes.fromhex("1001 02"), 2, b"\x10\x01"),  # 4097 bytes
        (b"\xff" * 16 + bytes.fromhex("0012 04"), 2, b"\x00\x12"),  # below the header
        (b"\xff" * 16 + bytes.fromhex("0013 07"), 3, b"\x07"),
    ],
    ids=["marker", "keepalive-length", "too-long", "too-short", "type"],
)
def test_header_errors(message, subcode, data):
    with pytest.raises(MessageHeaderError) as info:
        wire.split_messages(message)
    assert (info.value.subcode, info.value.data) == (subcode, data)


def test_notification_roundtrip():
    message = wire.encode_notification(6, 2, b"bye")
    assert message == b"\xff" * 16 + bytes.fromhex("0018 03 06 02") + b"bye"
    code, subcode, data = wire.decode_notification(wire.split_messages(message)[0][0][1])
    assert (code, subcode, data) == (6, 2, b"bye")


def test_route_refresh_roundtrip():
    body = wire.split_messages(wire.encode_route_refresh(Family.IPV6_UNICAST))[0][0][1]
    assert wire.decode_route_refresh(body) is Family.IPV6_UNICAST
    assert wire.decode_route_refresh(bytes.fromhex("0001 00 80")) is None  # a family we do not speak


def test_keepalive():
    assert wire.encode_keepalive() == b"\xff" * 16 + bytes.fromhex("0013 04")


def test_extended_optional_parameters_rfc9072():
    # Type 255 + 2-octet total length, then parameters with 2-octet lengths (RFC 9072 section 2).
    capability = bytes.fromhex("4104 0000fde8") + bytes.fromhex("0104 00190046")
    params = bytes([2]) + len(capability).to_bytes(2, "big") + capability
    body = _open(params=b"")[:9] + bytes([255, 255]) + len(params).to_bytes(2, "big") + params
    decoded = wire.decode_open(body)
    assert decoded.asn == 65000 and decoded.families == frozenset({Family.L2VPN_EVPN})


def test_optional_parameters_length_mismatch_is_unspecific():
    body = _open(params=bytes.fromhex("0206 4104 0000fde8"))
    with pytest.raises(OpenError) as info:
        wire.decode_open(body + b"\x00")
    assert info.value.subcode == 0
