"""RFC 7606 and RFC 4271 attribute handling on reflection, over real sessions on loopback: a raw client
sends an UPDATE carrying odd attributes to the reflector, another raw client checks the attribute bytes
it gets reflected."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator

import pytest

from nvfabric.bgp import wire
from nvfabric.bgp.reflector import config as rr_config
from nvfabric.bgp.reflector.daemon import Reflector
from nvfabric.bgp.routes import MacIpRoute
from nvfabric.lab.fuzz.session import RawSession, SessionClosed, attributes_of, capabilities, updates

AGGREGATOR, ORIGINATOR_ID, CLUSTER_LIST, MP_REACH = 7, 9, 10, 14
ROUTE = MacIpRoute(rd="198.51.100.1:1", mac="02:00:00:00:00:01", ip="10.1.0.1", vsid=5001,
                   next_hop="198.51.100.1", route_targets=("65000:5001",))


@pytest.fixture
async def reflector() -> AsyncIterator[Reflector]:
    rr = Reflector(rr_config.parse({
        "asn": 65000, "router_id": "198.51.100.100", "cluster_id": "192.0.2.100", "hold_time": 9,
        "listen": {"address": "127.0.0.1", "port": 0},
        "neighbors": [{"prefix": "127.0.1.0/24", "asn": 65000, "client": True}]}))
    await rr.start()
    yield rr
    await rr.stop()


def attribute(flags: int, code: int, value: bytes) -> bytes:
    if flags & 0x10:
        return struct.pack("!BBH", flags, code, len(value)) + value
    return struct.pack("!BBB", flags, code, len(value)) + value


def with_attributes(message: bytes, extra: bytes) -> bytes:
    """The UPDATE `message` (whole, with header) with `extra` appended to its path attributes."""
    body = message[wire.HEADER_LENGTH:]
    withdrawn_end = 2 + int.from_bytes(body[:2], "big")
    attrs_len = int.from_bytes(body[withdrawn_end : withdrawn_end + 2], "big")
    new = body[:withdrawn_end] + struct.pack("!H", attrs_len + len(extra)) + \
        body[withdrawn_end + 2 : withdrawn_end + 2 + attrs_len] + extra + body[withdrawn_end + 2 + attrs_len :]
    return wire.MARKER + struct.pack("!HB", wire.HEADER_LENGTH + len(new), wire.MessageType.UPDATE) + new


async def reflected(rr: Reflector, extra: bytes) -> tuple[list[tuple[int, int, bytes]], RawSession]:
    """Send ROUTE with `extra` attributes from one client; the attributes another client receives."""
    port = rr.listen_port
    receiver = await RawSession.connect("127.0.0.1", port, "127.0.1.2", capabilities("198.51.100.2"))
    sender = await RawSession.connect("127.0.0.1", port, "127.0.1.1", capabilities("198.51.100.1"))
    assert sender.negotiated is not None
    start = len(receiver.received)
    sender.send(with_attributes(wire.encode_update(sender.negotiated, [ROUTE])[0], extra))
    await receiver.wait_for(lambda kind, body: kind == wire.MessageType.UPDATE and
                            any(code == MP_REACH for _, code, _ in attributes_of(body)), 10, start)
    body = next(b for b in updates(receiver, start) if any(c == MP_REACH for _, c, _ in attributes_of(b)))
    await receiver.close()
    return attributes_of(body), sender


async def test_a_malformed_aggregator_is_discarded_not_reflected(reflector):
    # RFC 7606 section 7.7: AGGREGATOR of the wrong length (4-octet AS session: 8) is attribute-discard.
    attrs, sender = await reflected(reflector, attribute(0xC0, AGGREGATOR, b"\x00\x00\xfd\xe8\xc6"))
    assert AGGREGATOR not in [code for _, code, _ in attrs]
    assert not sender.closed
    await sender.close()


async def test_a_well_formed_aggregator_is_reflected_as_received(reflector):
    value = struct.pack("!I", 65000) + bytes([198, 51, 100, 1])
    attrs, sender = await reflected(reflector, attribute(0xC0, AGGREGATOR, value))
    assert (0xC0, AGGREGATOR, value) in attrs
    await sender.close()


async def test_unknown_optional_non_transitive_is_dropped_transitive_gets_the_partial_bit(reflector):
    extra = attribute(0x80, 250, b"secret") + attribute(0xC0, 251, b"pass-me") + \
        attribute(0xD0, 252, b"x" * 300)  # Extended Length kept
    attrs, sender = await reflected(reflector, extra)
    codes = {code: (flags, value) for flags, code, value in attrs}
    assert 250 not in codes
    assert codes[251] == (0xE0, b"pass-me")  # RFC 4271 section 5: Partial set by who passes it on
    assert codes[252] == (0xF0, b"x" * 300)
    # The reflector's own attributes (RFC 4456 section 8) are still there.
    assert ORIGINATOR_ID in codes and CLUSTER_LIST in codes
    assert not sender.closed
    await sender.close()


async def test_an_unrecognized_well_known_attribute_resets_only_its_session(reflector):
    # RFC 4271 section 6.3: NOTIFICATION 3/2 whose data is the attribute.
    port = reflector.listen_port
    other = await RawSession.connect("127.0.0.1", port, "127.0.1.2", capabilities("198.51.100.2"))
    sender = await RawSession.connect("127.0.0.1", port, "127.0.1.1", capabilities("198.51.100.1"))
    assert sender.negotiated is not None
    bad = attribute(0x40, 253, b"\x01")
    sender.send(with_attributes(wire.encode_update(sender.negotiated, [ROUTE])[0], bad))
    with pytest.raises(SessionClosed):
        await sender.wait_for(lambda kind, body: False, 10)
    assert sender.notification == (3, 2, bad)
    assert not other.closed and other.notification is None
    await other.close()


async def test_ipv4_nlri_beside_evpn_are_reflected_in_their_own_family_and_nobody_is_reset(reflector):
    # Found by fuzzing: the reflector put the IPv4 prefix of such an UPDATE into the EVPN MP_REACH_NLRI
    # it sent every other client, which each answered with a session reset (RFC 7606 section 7.11).
    port = reflector.listen_port
    receiver = await RawSession.connect("127.0.0.1", port, "127.0.1.2", capabilities("198.51.100.2"))
    sender = await RawSession.connect("127.0.0.1", port, "127.0.1.1", capabilities("198.51.100.1"))
    assert sender.negotiated is not None and receiver.negotiated is not None
    start = len(receiver.received)
    next_hop = attribute(0x40, 3, bytes([198, 51, 100, 1]))
    message = with_attributes(wire.encode_update(sender.negotiated, [ROUTE])[0], next_hop)
    prefix = bytes([24, 203, 0, 113])
    message = message[:16] + struct.pack("!H", len(message) + 4) + message[18:] + prefix
    sender.send(message)
    got: dict[str, list] = {"evpn": [], "ipv4": []}

    def both(kind: int, body: bytes) -> bool:
        if kind == wire.MessageType.UPDATE:
            result = wire.decode_update(receiver.negotiated, body)
            assert result.errors == [], result.errors
            for path in result.announced:
                got["ipv4" if path.family.name == "IPV4_UNICAST" else "evpn"].append(path.route)
        return bool(got["evpn"] and got["ipv4"])

    await receiver.wait_for(both, 10, start)
    assert got["evpn"] == [ROUTE] and [str(r.prefix) for r in got["ipv4"]] == ["203.0.113.0/24"]
    assert not receiver.closed and not sender.closed
    await receiver.close()
    await sender.close()
