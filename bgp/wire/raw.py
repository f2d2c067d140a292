"""Raw UPDATEs, the route reflector's path: a reflector forwards what it receives (RFC 4456 section 8)
and needs only each route's key to run best-path selection; it never needs the per-route objects.
decode_raw_update splits an UPDATE into raw attribute bytes + (key, raw NLRI bytes) pairs,
reflect_attributes adds ORIGINATOR_ID and CLUSTER_LIST, encode_raw_update packs UPDATEs from raw
parts (encode_update packs through it too).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, NamedTuple

from nvfabric.bgp.errors import RouteValueError
from nvfabric.bgp.routes import Family, Origin, PathAttributes, RouteKey, UnicastKey
from nvfabric.bgp.wire.attributes import (
    _CLUSTER_LIST,
    _MP_REACH,
    _MP_UNREACH,
    _ORIGINATOR_ID,
    _attribute,
    _four_octet_passthrough,
    _walk_attributes,
)
from nvfabric.bgp.wire.framing import HEADER_LENGTH, MAX_MESSAGE_LENGTH, MessageType, _frame, _update_sections
from nvfabric.bgp.wire.nlri import (
    _EVPN_PARSERS,
    _TYPE2_LENGTHS,
    _evpn_key,
    _evpn_opaque,
    _malformed_route,
    _parse_prefixes,
    _walk_evpn,
)
from nvfabric.bgp.wire.result import TREAT_AS_WITHDRAW, UpdateError, _Reset

if TYPE_CHECKING:
    from nvfabric.bgp.wire.open import Negotiated


class RawNlri(NamedTuple):
    """One NLRI as received (EVPN: type, length, value; unicast: length, prefix) and its key bytes.

    key identifies the route within its family with the fields RFC 7432 section 7 and RFC 9136
    section 3.2 make the key, as on the wire, without building objects: type 2 = route type, RD,
    Ethernet Tag, MAC, IP length and IP (not ESI, not labels); type 5 = route type, RD, Ethernet Tag,
    prefix length and prefix; type 1 = the route without its label; other types and unicast = the whole
    NLRI. typed_key(family, raw) gives the RouteKey when one is wanted (display, the typed RIB).
    """

    key: bytes
    raw: bytes


@dataclass(slots=True)
class RawUpdate:
    """An UPDATE cut into raw parts. attributes: every path attribute except MP_REACH/MP_UNREACH, as
    received; next_hop: the MP_REACH next-hop field (empty for IPv4 unicast, whose NEXT_HOP is among
    attributes); attrs: the parsed PathAttributes (for best path) or None if nothing was announced."""

    family: Family | None = None
    attributes: bytes = b""
    next_hop: bytes = b""
    attrs: PathAttributes | None = None
    announced: list[RawNlri] = field(default_factory=list)
    withdrawn: list[RawNlri] = field(default_factory=list)
    eor: Family | None = None
    errors: list[UpdateError] = field(default_factory=list)
    # The family of each run of `withdrawn`, in order: (family, count). One UPDATE can withdraw IPv4
    # prefixes in its Withdrawn Routes field and another family's routes in MP_UNREACH_NLRI (RFC 4760).
    withdrawn_runs: list[tuple[Family, int]] = field(default_factory=list)
    # Likewise it can announce IPv4 prefixes in its NLRI field beside another family's MP_REACH_NLRI:
    # those come here, same attributes, family IPv4 unicast (never mixed into the other family's routes).
    also: RawUpdate | None = None

    def withdrawn_by_family(self) -> list[tuple[Family, list[RawNlri]]]:
        out, start = [], 0
        for family, count in self.withdrawn_runs:
            if count:
                out.append((family, self.withdrawn[start : start + count]))
            start += count
        return out

    def _withdraw(self, family: Family, nlri: list[RawNlri]) -> None:
        self.withdrawn.extend(nlri)
        self.withdrawn_runs.append((family, len(nlri)))


def _type2_key(data: bytes, s: int, length: int) -> bytes | None:
    if length < 33:
        return None
    ip_bits = data[s + 29]
    # The same checks as _evpn_type2 (RFC 7432 section 7.2), on bytes only.
    if data[s + 22] != 48 or length not in _TYPE2_LENGTHS.get(ip_bits, ()) or data[s] or data[s + 1] > 2:
        return None
    return b"\x02" + data[s : s + 8] + data[s + 18 : s + 22] + data[s + 23 : s + 30 + ip_bits // 8]


def _type5_key(data: bytes, s: int, length: int) -> bytes | None:
    width = 4 if length == 34 else 16 if length == 58 else 0
    # The same checks as _evpn_type5 (RFC 9136 section 3.1), on bytes only.
    if not width or data[s + 22] > width * 8 or data[s] or data[s + 1] > 2:
        return None
    return b"\x05" + data[s : s + 8] + data[s + 18 : s + 23 + width]


def _raw_evpn(data: bytes, errors: list[UpdateError]) -> tuple[list[RawNlri], bool]:
    # A reflector forwards every route type, including those we do not model (RFC 4456 section 8).
    spans, _ = _walk_evpn(data, keep_all=True)
    out = []
    malformed = False
    for kind, start, end in spans:
        if kind == 2:
            key = _type2_key(data, start, end - start)
        elif kind == 5:
            key = _type5_key(data, start, end - start)
        else:
            # RFC 7432 section 7.1: a type-1 route's label (its last 3 bytes) is not key.
            key = data[start - 2 : end - 3 if kind == 1 and end - start >= 3 else end]
        if key is None:
            malformed = True
            errors.append(_malformed_route(kind, data, start, end))
        else:
            out.append(RawNlri(key, data[start - 2 : end]))
    return out, malformed


def _raw_prefixes(data: bytes, family: Family) -> list[RawNlri]:
    prefixes = _parse_prefixes(data, 4 if family is Family.IPV4_UNICAST else 6)  # validates the framing
    out = []
    pos = 0
    for prefix in prefixes:
        raw = data[pos : pos + 1 + (prefix.prefixlen + 7) // 8]
        out.append(RawNlri(raw, raw))
        pos += len(raw)
    return out


def typed_key(family: Family, raw: bytes) -> RouteKey:
    """The RouteKey of one raw NLRI (as in RawNlri.raw) of family."""
    if family is not Family.L2VPN_EVPN:
        return UnicastKey(_parse_prefixes(raw, 4 if family is Family.IPV4_UNICAST else 6)[0])
    item = _EVPN_PARSERS.get(raw[0], _evpn_opaque)(raw, 2, len(raw) - 2)
    if item is None:
        raise RouteValueError("nlri", raw.hex(), "malformed EVPN route")
    return _evpn_key(item)


def _raw_nlri(family: Family, data: bytes, errors: list[UpdateError]) -> tuple[list[RawNlri], bool]:
    if family is Family.L2VPN_EVPN:
        return _raw_evpn(data, errors)
    return _raw_prefixes(data, family), False


def decode_raw_update(negotiated: Negotiated, body: bytes) -> RawUpdate:
    """Split an UPDATE for reflection, with the same RFC 7606 handling as decode_update."""
    result = RawUpdate()
    try:
        _decode_raw_update(negotiated, body, result)
    except _Reset as reset:
        result.announced.clear()
        result.withdrawn.clear()
        result.withdrawn_runs.clear()
        result.errors.append(reset.error)
    return result


def _decode_raw_update(negotiated: Negotiated, body: bytes, result: RawUpdate) -> None:
    withdrawn_end, attributes_start, attributes_end = _update_sections(body)
    result._withdraw(Family.IPV4_UNICAST, _raw_prefixes(body[2:withdrawn_end], Family.IPV4_UNICAST))
    attrs = _walk_attributes(negotiated, body, attributes_start, attributes_end, result.errors)
    if attrs.unreach is not None:
        family, data = attrs.unreach
        if not data and attrs.count == 1 and withdrawn_end == 2 and attributes_end == len(body):
            result.eor = family
            return
        result._withdraw(family, _raw_nlri(family, data, result.errors)[0])
    if withdrawn_end == 2 and attributes_start == attributes_end == len(body):
        result.eor = Family.IPV4_UNICAST
        return
    ipv4: list[RawNlri] = []
    if attributes_end < len(body) and Family.IPV4_UNICAST in negotiated.families:
        ipv4 = _raw_prefixes(body[attributes_end:], Family.IPV4_UNICAST)
        if ipv4 and attrs.next_hop is None and attrs.withdraw_reason is None:
            # RFC 7606 section 3 (d): NEXT_HOP is mandatory when the NLRI field is not empty.
            attrs.withdraw_reason = "missing NEXT_HOP (RFC 7606 section 3 d)"
            result.errors.append(UpdateError(TREAT_AS_WITHDRAW, attrs.withdraw_reason, ""))
    reach: list[RawNlri] = []
    if attrs.reach is not None:
        reach, malformed = _raw_nlri(attrs.reach[0], attrs.reach[2], result.errors)
        if malformed:
            attrs.withdraw_reason = attrs.withdraw_reason or "malformed EVPN NLRI"
        if attrs.reach[0] is Family.IPV4_UNICAST:
            ipv4, reach = ipv4 + reach, []
    parts: list[tuple[Family, list[RawNlri]]] = [(Family.IPV4_UNICAST, ipv4)] if ipv4 else []
    if reach and attrs.reach is not None:
        parts.insert(0, (attrs.reach[0], reach))
    if not parts:
        return
    if attrs.origin is None or attrs.as_path is None:
        attrs.withdraw_reason = attrs.withdraw_reason or "missing ORIGIN or AS_PATH (RFC 7606 section 3 d)"
        result.errors.append(UpdateError(TREAT_AS_WITHDRAW, attrs.withdraw_reason, ""))
    if attrs.withdraw_reason is not None:
        for family, nlri in parts:
            result._withdraw(family, nlri)
        return
    path_attrs = PathAttributes(
        origin=Origin(attrs.origin), as_path=attrs.as_path, med=attrs.med, local_pref=attrs.local_pref,
        originator_id=attrs.originator_id, cluster_list=attrs.cluster_list, communities=attrs.communities,
        tunnel_type=attrs.ext.tunnel_type,
    )
    passthrough = attrs.passthrough
    if not negotiated.four_octet:
        passthrough = _four_octet_passthrough(passthrough, attrs.as_path)
    attributes = b"".join(passthrough)
    (family, nlri), *rest = parts
    result.family, result.announced, result.attributes, result.attrs = family, nlri, attributes, path_attrs
    if family is not Family.IPV4_UNICAST:
        result.next_hop = attrs.reach_next_hop
    if rest:
        result.also = RawUpdate(Family.IPV4_UNICAST, attributes, b"", path_attrs, rest[0][1])


def reflect_attributes(attributes: bytes, originator_id: IPv4Address | None, cluster_id: IPv4Address | None) -> bytes:
    """RFC 4456 section 8: add ORIGINATOR_ID (the BGP identifier of the route's originator in this AS)
    unless present, and prepend our CLUSTER_ID to CLUSTER_LIST (creating it)."""
    out = bytearray()
    has_originator = False
    cluster_list = b""
    pos = 0
    while pos < len(attributes):
        flags, code = attributes[pos], attributes[pos + 1]
        head = 4 if flags & 0x10 else 3
        length = int.from_bytes(attributes[pos + 2 : pos + head], "big")
        end = pos + head + length
        if code == _CLUSTER_LIST:
            cluster_list = attributes[pos + head : end]
        else:
            has_originator |= code == _ORIGINATOR_ID
            out += attributes[pos:end]
        pos = end
    if originator_id is not None and not has_originator:
        out += _attribute(0x80, _ORIGINATOR_ID, originator_id.packed)
    if cluster_id is not None:
        cluster_list = cluster_id.packed + cluster_list
    if cluster_list:
        out += _attribute(0x80, _CLUSTER_LIST, cluster_list)
    return bytes(out)


def _chunks(items: Sequence[bytes], budget: int) -> Iterable[list[bytes]]:
    chunk: list[bytes] = []
    size = 0
    for item in items:
        if chunk and size + len(item) > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += len(item)
    if chunk:
        yield chunk


def _update(withdrawn: bytes, attributes: bytes, nlri: bytes = b"") -> bytes:
    body = struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attributes)) + attributes + nlri
    return _frame(MessageType.UPDATE, body)


def encode_raw_update(
    family: Family,
    attributes: bytes,
    next_hop: bytes,
    announced: Sequence[bytes],
    withdrawn: Sequence[bytes] = (),
) -> list[bytes]:
    """UPDATEs (<= 4096 bytes each) from raw parts: withdrawals first, then announcements sharing
    `attributes` (use reflect_attributes first when reflecting). No per-route objects are built."""
    messages = []
    room = MAX_MESSAGE_LENGTH - HEADER_LENGTH - 4
    if family is Family.IPV4_UNICAST:
        messages += [_update(b"".join(c), b"") for c in _chunks(withdrawn, room)]
        messages += [_update(b"", attributes, b"".join(c)) for c in _chunks(announced, room - len(attributes))]
        return messages
    afi_safi = struct.pack("!HB", family.afi, family.safi)
    for chunk in _chunks(withdrawn, room - 4 - len(afi_safi)):
        messages.append(_update(b"", _attribute(0x80, _MP_UNREACH, afi_safi + b"".join(chunk))))
    reach_head = afi_safi + bytes([len(next_hop)]) + next_hop + b"\x00"
    for chunk in _chunks(announced, room - len(attributes) - 4 - len(reach_head)):
        reach = _attribute(0x80, _MP_REACH, reach_head + b"".join(chunk))
        # RFC 7606 section 5.1: MP_REACH_NLRI goes first so a receiver finds the NLRI early.
        messages.append(_update(b"", reach + attributes))
    return messages

