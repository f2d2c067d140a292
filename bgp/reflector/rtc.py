"""Route targets from raw path attributes, and the per-peer route-target filter.

The filter is the effect of RFC 4684 (route target constrained distribution) configured on the
reflector: a peer with `route_targets` receives only the EVPN routes carrying at least one of them, so a
hypervisor gets the routes of the routing domains it hosts and nothing else. Route targets are read
once per received attribute set (they are shared by every route of an UPDATE), so the decision costs
nothing per route.
"""

from __future__ import annotations

_EXTENDED_COMMUNITIES = 16
# RFC 4360 section 4 / RFC 5668: route target = subtype 0x02 of the transitive two-octet AS (0x00),
# IPv4 address (0x01) and four-octet AS (0x02) types.
_RT_TYPES = (0x00, 0x01, 0x02)
_MAC_MOBILITY = b"\x06\x00"  # RFC 7432 section 7.7


def _extended_communities(attributes: bytes) -> bytes:
    pos = 0
    end = len(attributes)
    while pos + 3 <= end:
        flags, code = attributes[pos], attributes[pos + 1]
        head = 4 if flags & 0x10 else 3
        length = int.from_bytes(attributes[pos + 2 : pos + head], "big")
        if code == _EXTENDED_COMMUNITIES:
            return attributes[pos + head : pos + head + length]
        pos += head + length
    return b""


def route_targets(attributes: bytes) -> frozenset[bytes]:
    """The 8-byte route target communities among raw path attributes (attribute list bytes)."""
    data = _extended_communities(attributes)
    return frozenset(
        data[i : i + 8] for i in range(0, len(data) - 7, 8) if data[i + 1] == 0x02 and data[i] in _RT_TYPES
    )


def mobility(attributes: bytes) -> tuple[bool, int]:
    """(sticky, sequence) of the MAC Mobility community (RFC 7432 section 7.7); (False, 0) when absent,
    as section 15.1 counts a route without it."""
    data = _extended_communities(attributes)
    for i in range(0, len(data) - 7, 8):
        if data[i : i + 2] == _MAC_MOBILITY:
            return bool(data[i + 2] & 0x01), int.from_bytes(data[i + 4 : i + 8], "big")
    return False, 0


def admits(wanted: frozenset[bytes] | None, carried: frozenset[bytes]) -> bool:
    """The filter: None admits everything; otherwise at least one route target in common."""
    return wanted is None or not wanted.isdisjoint(carried)
