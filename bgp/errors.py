"""Typed errors of the BGP layer. Each names what was wrong so callers can log or answer precisely."""

from __future__ import annotations


class RouteValueError(ValueError):
    """A route or attribute value is out of range; `field` names the offending field."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"{field}={value!r}: {reason}")
        self.field = field
        self.value = value
        self.reason = reason


class MessageHeaderError(Exception):
    """RFC 4271 section 6.1: a bad message header; the session answers with NOTIFICATION 1/subcode.

    Subcodes: 1 connection not synchronized (marker), 2 bad message length, 3 bad message type.
    `data` is what RFC 4271 says the NOTIFICATION must carry (the bad length or type).
    """

    code = 1

    def __init__(self, subcode: int, data: bytes, reason: str) -> None:
        super().__init__(f"message header error {self.code}/{subcode}: {reason}")
        self.subcode = subcode
        self.data = data
        self.reason = reason


class OpenError(Exception):
    """RFC 4271 section 6.2: an unacceptable OPEN; the session answers with NOTIFICATION 2/subcode.

    Subcodes used: 1 unsupported version, 2 bad peer AS, 3 bad BGP identifier, 4 unsupported optional
    parameter, 6 unacceptable hold time, 7 unsupported capability (RFC 5492 section 5).
    """

    code = 2

    def __init__(self, subcode: int, data: bytes = b"", reason: str = "") -> None:
        super().__init__(f"OPEN message error {self.code}/{subcode}: {reason}")
        self.subcode = subcode
        self.data = data
        self.reason = reason


class NotificationDecodeError(ValueError):
    """A NOTIFICATION body shorter than its two fixed octets (RFC 4271 section 4.5)."""
