"""Message framing (RFC 4271 section 4): the header, cutting a receive buffer into messages, the
sections of an UPDATE body, and the messages that are little more than a header: KEEPALIVE,
NOTIFICATION, ROUTE-REFRESH and End-of-RIB.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from nvfabric.bgp.errors import MessageHeaderError, NotificationDecodeError
from nvfabric.bgp.routes import Family
from nvfabric.bgp.wire.result import SUBCODE_MALFORMED_ATTRIBUTE_LIST, _Reset

MARKER = b"\xff" * 16
HEADER_LENGTH = 19
MAX_MESSAGE_LENGTH = 4096  # RFC 4271 section 4.1; we do not negotiate RFC 8654 extended messages


class MessageType(enum.IntEnum):
    """BGP message type codes (RFC 4271 section 4.1, RFC 2918 for ROUTE-REFRESH)."""

    OPEN = 1
    UPDATE = 2
    NOTIFICATION = 3
    KEEPALIVE = 4
    ROUTE_REFRESH = 5


# RFC 4271 section 6.1: a length below these minimums (or KEEPALIVE/ROUTE-REFRESH not exactly so)
# is a Bad Message Length (1/2).
_MIN_LENGTH = {
    MessageType.OPEN: 29,
    MessageType.UPDATE: 23,
    MessageType.NOTIFICATION: 21,
    MessageType.KEEPALIVE: 19,
    MessageType.ROUTE_REFRESH: 23,
}
_EXACT_LENGTH = {MessageType.KEEPALIVE: 19, MessageType.ROUTE_REFRESH: 23}


def split_messages(buffer: bytes | bytearray) -> tuple[list[tuple[int, bytes]], bytes]:
    """Cut complete messages off the front of a receive buffer.

    Returns ([(type, body), ...], rest) where rest is an incomplete tail to keep for the next read.
    Raises MessageHeaderError (NOTIFICATION 1/1 marker, 1/2 length, 1/3 type, RFC 4271 section 6.1).
    """
    messages: list[tuple[int, bytes]] = []
    data = bytes(buffer)
    pos = 0
    end = len(data)
    while end - pos >= HEADER_LENGTH:
        if data[pos : pos + 16] != MARKER:
            raise MessageHeaderError(1, b"", "marker is not all ones (connection not synchronized)")
        length = int.from_bytes(data[pos + 16 : pos + 18], "big")
        kind = data[pos + 18]
        if kind not in _MIN_LENGTH:
            raise MessageHeaderError(3, bytes([kind]), f"unknown message type {kind}")
        exact = _EXACT_LENGTH.get(kind)
        if length > MAX_MESSAGE_LENGTH or length < _MIN_LENGTH[kind] or (exact and length != exact):
            # RFC 4271 section 6.1: the Data field carries the erroneous Length.
            raise MessageHeaderError(2, data[pos + 16 : pos + 18], f"bad length {length} for type {kind}")
        if end - pos < length:
            break
        messages.append((kind, data[pos + HEADER_LENGTH : pos + length]))
        pos += length
    return messages, data[pos:]


def _frame(kind: int, body: bytes) -> bytes:
    return MARKER + struct.pack("!HB", HEADER_LENGTH + len(body), kind) + body


def encode_keepalive() -> bytes:
    """KEEPALIVE: a bare header (RFC 4271 section 4.4)."""
    return _frame(MessageType.KEEPALIVE, b"")


def encode_notification(code: int, subcode: int, data: bytes = b"") -> bytes:
    """NOTIFICATION (RFC 4271 section 4.5). Data is truncated so the message fits in 4096 bytes."""
    return _frame(MessageType.NOTIFICATION, bytes([code, subcode]) + data[: MAX_MESSAGE_LENGTH - 21])


class Notification(NamedTuple):
    """A received NOTIFICATION (RFC 4271 section 4.5); unpacks as (code, subcode, data)."""

    code: int
    subcode: int
    data: bytes


def decode_notification(body: bytes) -> Notification:
    """(code, subcode, data) of a NOTIFICATION body."""
    if len(body) < 2:
        raise NotificationDecodeError("NOTIFICATION body shorter than 2 bytes")
    return Notification(body[0], body[1], body[2:])


def decode_route_refresh(body: bytes) -> Family | None:
    """The family a ROUTE-REFRESH asks for (RFC 2918 section 3), None if we do not speak it.
    RFC 7313 subtypes (the reserved octet) are not interpreted."""
    if len(body) != 4:
        return None
    afi, _subtype, safi = struct.unpack("!HBB", body)
    return Family.from_afi_safi(afi, safi)


def encode_route_refresh(family: Family) -> bytes:
    """ROUTE-REFRESH for one family (RFC 2918 section 3: AFI, reserved, SAFI)."""
    return _frame(MessageType.ROUTE_REFRESH, struct.pack("!HBB", family.afi, 0, family.safi))


def encode_eor(family: Family) -> bytes:
    """End-of-RIB marker (RFC 4724 section 2): an empty UPDATE for IPv4 unicast, otherwise an UPDATE
    whose only attribute is an MP_UNREACH_NLRI with no withdrawn routes."""
    if family is Family.IPV4_UNICAST:
        return _frame(MessageType.UPDATE, b"\x00\x00\x00\x00")
    attribute = struct.pack("!BBBHB", 0x80, 15, 3, family.afi, family.safi)
    return _frame(MessageType.UPDATE, b"\x00\x00" + struct.pack("!H", len(attribute)) + attribute)


def _update_sections(body: bytes) -> tuple[int, int, int]:
    """(withdrawn routes end, attributes start, attributes end) per RFC 4271 section 4.3."""
    if len(body) < 4:
        raise _Reset(SUBCODE_MALFORMED_ATTRIBUTE_LIST, "UPDATE shorter than its length fields", body)
    withdrawn_end = 2 + int.from_bytes(body[:2], "big")
    if withdrawn_end + 2 > len(body):
        raise _Reset(SUBCODE_MALFORMED_ATTRIBUTE_LIST, "withdrawn routes length overruns the UPDATE", body)
    attributes_end = withdrawn_end + 2 + int.from_bytes(body[withdrawn_end : withdrawn_end + 2], "big")
    if attributes_end > len(body):
        raise _Reset(SUBCODE_MALFORMED_ATTRIBUTE_LIST, "path attribute length overruns the UPDATE", body)
    return withdrawn_end, withdrawn_end + 2, attributes_end

