"""Path attributes (RFC 4271 section 5 and the RFCs of each attribute): the walk over an UPDATE's
attribute list with the RFC 7606 checks, MP_REACH/MP_UNREACH (RFC 4760), AS4_PATH (RFC 6793), the
extended communities EVPN uses, and the header that packs one raw attribute.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from nvfabric.bgp.mac import Mac
from nvfabric.bgp.routes import (
    AS_SEQUENCE,
    AS_SET,
    Address,
    AsSegment,
    Family,
    HashedIPv4Address,
    HashedIPv6Address,
    canonical_route_targets,
)
from nvfabric.bgp.wire.result import (
    ATTRIBUTE_DISCARD,
    SUBCODE_MALFORMED_ATTRIBUTE_LIST,
    SUBCODE_OPTIONAL_ATTRIBUTE_ERROR,
    TREAT_AS_WITHDRAW,
    UpdateError,
    _Reset,
)

if TYPE_CHECKING:
    from nvfabric.bgp.wire.open import Negotiated

NVGRE_TUNNEL_TYPE = 9  # RFC 8365 section 5.1.3 / IANA BGP Tunnel Encapsulation Attribute Tunnel Types

# Attribute type codes (RFC 4271 section 5, RFC 4456, RFC 4760, RFC 4360).
_ORIGIN, _AS_PATH, _NEXT_HOP, _MED, _LOCAL_PREF, _ATOMIC_AGGREGATE, _AGGREGATOR = 1, 2, 3, 4, 5, 6, 7
_COMMUNITIES, _ORIGINATOR_ID, _CLUSTER_LIST, _MP_REACH, _MP_UNREACH, _EXT_COMMUNITIES = 8, 9, 10, 14, 15, 16
_AS4_PATH = 17  # RFC 6793

_AS4_AGGREGATOR = 18  # RFC 6793

# Attribute Flags (RFC 4271 section 4.3).
_FLAG_OPTIONAL, _FLAG_TRANSITIVE, _FLAG_PARTIAL = 0x80, 0x40, 0x20
_WELL_KNOWN, _OPTIONAL_TRANSITIVE, _OPTIONAL_NON_TRANSITIVE = 0x40, 0xC0, 0x80

# The Optional and Transitive bits each attribute we recognise must carry (RFC 4271 section 5, RFC 4456,
# RFC 4760, RFC 4360, RFC 6793). RFC 7606 section 3 (c): a conflict means treat-as-withdraw.
_CATEGORY = {
    _ORIGIN: _WELL_KNOWN, _AS_PATH: _WELL_KNOWN, _NEXT_HOP: _WELL_KNOWN, _LOCAL_PREF: _WELL_KNOWN,
    _ATOMIC_AGGREGATE: _WELL_KNOWN,
    _MED: _OPTIONAL_NON_TRANSITIVE, _ORIGINATOR_ID: _OPTIONAL_NON_TRANSITIVE, _CLUSTER_LIST: _OPTIONAL_NON_TRANSITIVE,
    _MP_REACH: _OPTIONAL_NON_TRANSITIVE, _MP_UNREACH: _OPTIONAL_NON_TRANSITIVE,
    _AGGREGATOR: _OPTIONAL_TRANSITIVE, _COMMUNITIES: _OPTIONAL_TRANSITIVE, _EXT_COMMUNITIES: _OPTIONAL_TRANSITIVE,
    _AS4_PATH: _OPTIONAL_TRANSITIVE, _AS4_AGGREGATOR: _OPTIONAL_TRANSITIVE,
}

# RFC 4271 section 6.3 UPDATE Message Error subcode for a well-known attribute we do not recognise.
SUBCODE_UNRECOGNIZED_WELL_KNOWN = 2

# An EVPN next hop is the provider address, IPv4 or IPv6 (RFC 8365 section 5.1.3, RFC 7432 section 7),
# and RFC 2545 section 3 allows 32 bytes (global + link-local). exa.py widens ExaBGP's table to these.
EVPN_NEXT_HOP_LENGTHS = (4, 16, 32)

# Next-hop lengths we accept per family (RFC 4760 section 3, RFC 2545 section 3, RFC 8365 5.1.3).
_NEXT_HOP_LENGTHS = {
    Family.L2VPN_EVPN: EVPN_NEXT_HOP_LENGTHS,
    Family.IPV4_UNICAST: (4,),
    Family.IPV6_UNICAST: (16, 32),
}


class _Attrs:
    """Mutable scratch state while walking the path attributes of one UPDATE."""

    __slots__ = (
        "origin", "as_path", "next_hop", "med", "local_pref", "originator_id", "cluster_list",
        "communities", "ext", "reach", "unreach", "withdraw_reason", "count", "passthrough", "reach_next_hop",
        "as4_path",
    )

    def __init__(self) -> None:
        self.origin: int | None = None
        self.as_path: tuple[AsSegment, ...] | None = None
        self.next_hop: IPv4Address | None = None
        self.med: int | None = None
        self.local_pref: int | None = None
        self.originator_id: IPv4Address | None = None
        self.cluster_list: tuple[IPv4Address, ...] = ()
        self.communities: tuple[int, ...] = ()
        self.ext: _ExtInfo = _NO_EXT
        self.reach: tuple[Family, Address, bytes] | None = None
        self.unreach: tuple[Family, bytes] | None = None
        self.withdraw_reason: str | None = None
        self.count = 0
        self.passthrough: list[bytes] = []  # raw attributes other than MP_REACH/MP_UNREACH, for reflection
        self.reach_next_hop = b""  # the raw MP_REACH next-hop field
        self.as4_path: tuple[AsSegment, ...] | None = None


@dataclass(frozen=True, slots=True)
class _ExtInfo:
    """What we read from EXTENDED_COMMUNITIES (RFC 4360) for EVPN routes."""

    route_targets: tuple[str, ...] = ()
    tunnel_type: int | None = None
    mobility_seq: int = 0
    sticky: bool = False
    router_mac: Mac | None = None


_NO_EXT = _ExtInfo()


@lru_cache(maxsize=4096)
def _as_path(value: bytes, width: int) -> tuple[AsSegment, ...] | None:
    """AS_PATH segments (RFC 4271 section 4.3), or None if malformed (RFC 7606 section 7.2). Cached, as the
    attributes below: a fabric's UPDATEs carry a few distinct values each, one UPDATE per route under churn."""
    segments = []
    pos = 0
    fmt = "!{}" + ("I" if width == 4 else "H")
    while pos < len(value):
        if pos + 2 > len(value):
            return None
        kind, count = value[pos], value[pos + 1]
        end = pos + 2 + count * width
        if kind not in (AS_SET, AS_SEQUENCE, 3, 4) or count == 0 or end > len(value):
            return None
        asns = struct.unpack(fmt.format(count), value[pos + 2 : end])
        if kind in (AS_SET, AS_SEQUENCE):  # confederation segments (3, 4) do not count (RFC 5065 5.3)
            segments.append(AsSegment(kind, asns))
        pos = end
    return tuple(segments)


@lru_cache(maxsize=4096)
def _ext_info(value: bytes) -> _ExtInfo:
    """Route targets, encapsulation, MAC mobility and Router's MAC out of EXTENDED_COMMUNITIES.
    Cached: every route of an UPDATE, and usually many UPDATEs, carry the same value."""
    targets = []
    tunnel_type = None
    mobility_seq, sticky, router_mac = 0, False, None
    for pos in range(0, len(value), 8):
        kind, sub = value[pos], value[pos + 1]
        if sub == 0x02 and kind in (0x00, 0x01, 0x02):
            # RFC 4360 section 4 route target: AS2:number4, IPv4:number2, AS4:number2 (RFC 5668).
            layout = ("!HI", "!IH", "!IH")[kind]
            admin, number = struct.unpack(layout, value[pos + 2 : pos + 8])
            targets.append((kind, admin, number))
        elif kind == 0x03 and sub == 0x0C:
            # RFC 9012 section 4.1 (was RFC 5512): Encapsulation, tunnel type in the last 2 octets.
            tunnel_type = int.from_bytes(value[pos + 6 : pos + 8], "big")
        elif kind == 0x06 and sub == 0x00:
            # RFC 7432 section 7.7: MAC Mobility, flags (0x01 = sticky), reserved, 32-bit sequence.
            sticky = bool(value[pos + 2] & 0x01)
            mobility_seq = int.from_bytes(value[pos + 4 : pos + 8], "big")
        elif kind == 0x06 and sub == 0x03:
            # RFC 9135 section 8.1: EVPN Router's MAC.
            router_mac = Mac.from_packed(value[pos + 2 : pos + 8])
    return _ExtInfo(canonical_route_targets(targets), tunnel_type, mobility_seq, sticky, router_mac)


def _read_attribute(negotiated: Negotiated, attrs: _Attrs, code: int, value: bytes) -> str | None:
    """Store one attribute; return a treat-as-withdraw reason if it is malformed (RFC 7606 section 7)."""
    length = len(value)
    if code == _ORIGIN:
        if length != 1 or value[0] > 2:
            return "ORIGIN malformed (RFC 7606 section 7.1)"
        attrs.origin = value[0]
    elif code == _AS_PATH:
        attrs.as_path = _as_path(value, 4 if negotiated.four_octet else 2)
        if attrs.as_path is None:
            return "AS_PATH malformed (RFC 7606 section 7.2)"
    elif code == _NEXT_HOP:
        if length != 4:
            return "NEXT_HOP length is not 4 (RFC 7606 section 7.3)"
        attrs.next_hop = HashedIPv4Address(value)
    elif code == _MED:
        if length != 4:
            return "MULTI_EXIT_DISC length is not 4 (RFC 7606 section 7.4)"
        attrs.med = int.from_bytes(value, "big")
    elif code == _LOCAL_PREF:
        if length != 4:
            return "LOCAL_PREF length is not 4 (RFC 7606 section 7.5)"
        # RFC 4271 section 5.1.5: LOCAL_PREF from an external peer is ignored.
        attrs.local_pref = int.from_bytes(value, "big") if negotiated.ibgp else None
    elif code == _COMMUNITIES:
        if length == 0 or length % 4:
            return "COMMUNITIES length is not a non-zero multiple of 4 (RFC 7606 section 7.8)"
        attrs.communities = struct.unpack(f"!{length // 4}I", value)
    elif code == _ORIGINATOR_ID:
        if length != 4:
            return "ORIGINATOR_ID length is not 4 (RFC 7606 section 7.9)"
        attrs.originator_id = _router_id(value)
    elif code == _CLUSTER_LIST:
        if length == 0 or length % 4:
            return "CLUSTER_LIST length is not a non-zero multiple of 4 (RFC 7606 section 7.10)"
        attrs.cluster_list = _cluster_list(value)
    elif code == _EXT_COMMUNITIES:
        if length % 8:
            return "EXTENDED_COMMUNITIES length is not a multiple of 8 (RFC 7606 section 7.14)"
        attrs.ext = _ext_info(value)
    return None


@lru_cache(maxsize=4096)
def _router_id(value: bytes) -> IPv4Address:
    return HashedIPv4Address(value)


@lru_cache(maxsize=4096)
def _cluster_list(value: bytes) -> tuple[IPv4Address, ...]:
    return tuple(HashedIPv4Address(value[p : p + 4]) for p in range(0, len(value), 4))


# next hop bytes -> the address: a fabric has a host's worth of PAs, and every route of a PA holds the
# same address object (100,000 routes over 1,000 PAs: 1,000 objects, not one per UPDATE)
_next_hops: dict[bytes, Address] = {}


def _read_mp_reach(negotiated: Negotiated, attrs: _Attrs, value: bytes, raw: bytes) -> UpdateError | None:
    # RFC 4760 section 3: AFI(2) SAFI(1) next-hop length(1) next hop, reserved(1), NLRI.
    if len(value) < 5 or 5 + value[3] > len(value):
        # RFC 7606 section 7.11: the NLRI cannot be located reliably.
        raise _Reset(SUBCODE_OPTIONAL_ATTRIBUTE_ERROR, "MP_REACH_NLRI truncated", raw)
    afi, safi, nh_length = struct.unpack("!HBB", value[:4])
    family = Family.from_afi_safi(afi, safi)
    if family is None or family not in negotiated.families:
        return UpdateError(ATTRIBUTE_DISCARD, f"MP_REACH_NLRI for family {afi}/{safi} not negotiated", raw.hex())
    if nh_length not in _NEXT_HOP_LENGTHS[family]:
        raise _Reset(SUBCODE_OPTIONAL_ATTRIBUTE_ERROR, f"next-hop length {nh_length} invalid for {family.name}", raw)
    next_hop = value[4 : 4 + nh_length]
    address = _next_hops.get(next_hop)
    if address is None:
        # With 32 bytes (RFC 2545 section 3) the first 16 are the global address we tunnel to.
        address = HashedIPv4Address(next_hop) if nh_length == 4 else HashedIPv6Address(next_hop[:16])
        if len(_next_hops) >= 65536:
            _next_hops.clear()
        _next_hops[next_hop] = address
    attrs.reach = (family, address, value[5 + nh_length :])
    attrs.reach_next_hop = next_hop
    return None


def _read_mp_unreach(negotiated: Negotiated, attrs: _Attrs, value: bytes, raw: bytes) -> UpdateError | None:
    # RFC 4760 section 4: AFI(2) SAFI(1) withdrawn NLRI.
    if len(value) < 3:
        raise _Reset(SUBCODE_OPTIONAL_ATTRIBUTE_ERROR, "MP_UNREACH_NLRI truncated", raw)
    afi, safi = struct.unpack("!HB", value[:3])
    family = Family.from_afi_safi(afi, safi)
    if family is None or family not in negotiated.families:
        return UpdateError(ATTRIBUTE_DISCARD, f"MP_UNREACH_NLRI for family {afi}/{safi} not negotiated", raw.hex())
    attrs.unreach = (family, value[3:])
    return None


def _walk_attributes(negotiated: Negotiated, body: bytes, start: int, end: int, errors: list[UpdateError]) -> _Attrs:
    attrs = _Attrs()
    seen: set[int] = set()
    pos = start
    while pos < end:
        if pos + 3 > end:
            raise _Reset(SUBCODE_MALFORMED_ATTRIBUTE_LIST, "attribute header truncated", body[pos:end])
        flags, code = body[pos], body[pos + 1]
        if flags & 0x10:  # Extended Length bit: a 2-octet length (RFC 4271 section 4.3)
            if pos + 4 > end:
                raise _Reset(SUBCODE_MALFORMED_ATTRIBUTE_LIST, "attribute header truncated", body[pos:end])
            value_start = pos + 4
            length = int.from_bytes(body[pos + 2 : pos + 4], "big")
        else:
            value_start = pos + 3
            length = body[pos + 2]
        value_end = value_start + length
        if value_end > end:
            # RFC 7606 section 4: with the attribute list broken the MP_REACH NLRI cannot be found
            # for certain, so treat-as-withdraw is not safe.
            raise _Reset(SUBCODE_MALFORMED_ATTRIBUTE_LIST, f"attribute {code} overruns the list", body[pos:end])
        raw = body[pos:value_end]
        value = body[value_start:value_end]
        pos = value_end
        attrs.count += 1
        if code in seen:
            if code in (_MP_REACH, _MP_UNREACH):
                raise _Reset(SUBCODE_MALFORMED_ATTRIBUTE_LIST, "MP_REACH/MP_UNREACH repeated (RFC 7606 3 g)", raw)
            reason = f"attribute {code} repeated (RFC 7606 section 3 g)"
            errors.append(UpdateError(ATTRIBUTE_DISCARD, reason, raw.hex()))
            continue
        seen.add(code)
        category = _CATEGORY.get(code)
        if category is None:
            kept = _unrecognized(flags, code, raw)
            if kept:
                attrs.passthrough.append(kept)
            continue
        if flags & _OPTIONAL_TRANSITIVE != category:
            reason = f"attribute {code} has flags {flags:#04x} conflicting with its type (RFC 7606 section 3 c)"
            errors.append(UpdateError(TREAT_AS_WITHDRAW, reason, raw.hex()))
            attrs.withdraw_reason = reason
            if code != _MP_REACH and code != _MP_UNREACH:
                continue  # MP_* are still read: their NLRI are what treat-as-withdraw withdraws
        if code == _MP_REACH:
            error = _read_mp_reach(negotiated, attrs, value, raw)
        elif code == _MP_UNREACH:
            error = _read_mp_unreach(negotiated, attrs, value, raw)
        elif code == _AS4_PATH:
            error = _read_as4_path(negotiated, attrs, value, raw)
        elif code == _AS4_AGGREGATOR:
            error = _as4_discarded(negotiated, code, raw)
        elif code == _ATOMIC_AGGREGATE or code == _AGGREGATOR:
            error = _check_discardable(negotiated, code, value, raw)
        else:
            reason = _read_attribute(negotiated, attrs, code, value)
            error = UpdateError(TREAT_AS_WITHDRAW, reason, raw.hex()) if reason else None
            if reason:
                attrs.withdraw_reason = reason
        if error is not None:
            errors.append(error)
        # What the reflector passes on: never what RFC 7606 told us to discard, never MP_REACH/MP_UNREACH
        # (it packs its own).
        if code != _MP_REACH and code != _MP_UNREACH and (error is None or error.action != ATTRIBUTE_DISCARD):
            attrs.passthrough.append(raw)
    if attrs.as4_path is not None and attrs.as_path is not None:
        attrs.as_path = _merge_as4_path(attrs.as_path, attrs.as4_path)
    return attrs


def _unrecognized(flags: int, code: int, raw: bytes) -> bytes | None:
    """An attribute whose type code we do not recognise, as it may be passed on (RFC 4271 section 5):
    well-known is a session reset (section 6.3, NOTIFICATION 3/2 carrying the attribute); optional
    non-transitive is quietly ignored and not passed (None); optional transitive is passed with the
    Partial bit set (section 5 and 9.1.3)."""
    if not flags & _FLAG_OPTIONAL:
        raise _Reset(SUBCODE_UNRECOGNIZED_WELL_KNOWN, f"unrecognized well-known attribute {code}", raw)
    if not flags & _FLAG_TRANSITIVE:
        return None
    return bytes([flags | _FLAG_PARTIAL]) + raw[1:]


def _as4_discarded(negotiated: Negotiated, code: int, raw: bytes) -> UpdateError | None:
    # RFC 6793 section 3: AS4_PATH and AS4_AGGREGATOR from a 4-octet speaker are discarded.
    if negotiated.four_octet:
        return UpdateError(ATTRIBUTE_DISCARD, f"attribute {code} from a 4-octet AS speaker (RFC 6793 section 3)",
                           raw.hex())
    return None


def _read_as4_path(negotiated: Negotiated, attrs: _Attrs, value: bytes, raw: bytes) -> UpdateError | None:
    # RFC 6793 section 4.2.2: AS4_PATH matters only on a 2-octet session (a 4-octet speaker discards
    # it); a malformed one is discarded (section 6), the AS_PATH then stands alone.
    if negotiated.four_octet:
        return _as4_discarded(negotiated, _AS4_PATH, raw)
    attrs.as4_path = _as_path(value, 4)
    if attrs.as4_path is None:
        return UpdateError(ATTRIBUTE_DISCARD, "AS4_PATH malformed (RFC 6793 section 6)", raw.hex())
    return None


def _merge_as4_path(as_path: tuple[AsSegment, ...], as4_path: tuple[AsSegment, ...]) -> tuple[AsSegment, ...]:
    """RFC 6793 section 4.2.3: keep as many leading ASes of AS_PATH as AS4_PATH lacks, then AS4_PATH.
    If AS_PATH is the shorter, AS4_PATH is ignored. An AS_SET counts as one AS."""
    def length(path: tuple[AsSegment, ...]) -> int:
        return sum(len(s.asns) if s.kind == AS_SEQUENCE else 1 for s in path)

    missing = length(as_path) - length(as4_path)
    if missing < 0:
        return as_path
    leading: list[AsSegment] = []
    for segment in as_path:
        if missing <= 0:
            break
        size = len(segment.asns) if segment.kind == AS_SEQUENCE else 1
        leading.append(segment if size <= missing else AsSegment(segment.kind, segment.asns[:missing]))
        missing -= size
    return tuple(leading) + as4_path


def _check_discardable(negotiated: Negotiated, code: int, value: bytes, raw: bytes) -> UpdateError | None:
    # RFC 7606 sections 7.6 and 7.7: a malformed ATOMIC_AGGREGATE or AGGREGATOR is discarded.
    expected = 0 if code == _ATOMIC_AGGREGATE else (8 if negotiated.four_octet else 6)
    if len(value) != expected:
        return UpdateError(ATTRIBUTE_DISCARD, f"attribute {code} length {len(value)} != {expected}", raw.hex())
    return None


_AS_TRANS = 23456  # RFC 6793 section 9


def _four_octet_passthrough(passthrough: list[bytes], as_path: tuple[AsSegment, ...] | None) -> list[bytes]:
    """Attributes received on a 2-octet AS session as a 4-octet speaker passes them on (RFC 6793 sections
    4.2.2 and 4.2.3): AS_PATH rebuilt with 4-octet numbers from the path merged with AS4_PATH, AGGREGATOR
    widened (its AS from AS4_AGGREGATOR when it says AS_TRANS), AS4_PATH and AS4_AGGREGATOR dropped. The
    reflector's clients all speak 4-octet AS numbers; bytes passed as received would be malformed there."""
    def value_of(raw: bytes) -> bytes:
        return raw[4:] if raw[0] & 0x10 else raw[3:]

    as4_aggregator = next((value_of(raw) for raw in passthrough if raw[1] == _AS4_AGGREGATOR), b"")
    out = []
    for raw in passthrough:
        flags, code, value = raw[0], raw[1], value_of(raw)
        if code == _AS_PATH and as_path is not None:
            out.append(_attribute(flags, code, b"".join(
                bytes([s.kind, len(s.asns)]) + struct.pack(f"!{len(s.asns)}I", *s.asns) for s in as_path)))
        elif code == _AGGREGATOR and len(value) == 6:
            asn = int.from_bytes(value[:2], "big")
            as4 = asn == _AS_TRANS and len(as4_aggregator) == 8
            out.append(_attribute(flags, code, as4_aggregator if as4 else struct.pack("!I", asn) + value[2:]))
        elif code not in (_AS4_PATH, _AS4_AGGREGATOR):
            out.append(raw)
    return out


def _attribute(flags: int, code: int, value: bytes) -> bytes:
    if len(value) > 255:
        return struct.pack("!BBH", flags | 0x10, code, len(value)) + value
    return struct.pack("!BBB", flags & ~0x10, code, len(value)) + value
