"""NLRI bytes <-> route values and keys: EVPN type 2 (RFC 7432 section 7.2) and type 5 (RFC 9136
section 3), other EVPN types as opaque keys, and IPv4/IPv6 unicast prefixes (RFC 4271 section 4.3,
RFC 4760). Route distinguishers (RFC 4364 section 4.2) are converted here too.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING

from nvfabric.bgp.mac import Mac
from nvfabric.bgp.routes import (
    ZERO_ESI,
    Address,
    Family,
    HashedIPv4Address,
    HashedIPv6Address,
    MacIpKey,
    MacIpRoute,
    OpaqueEvpnKey,
    Path,
    PathAttributes,
    PeerRef,
    PrefixKey,
    PrefixRoute,
    Route,
    RouteKey,
    UnicastKey,
    UnicastRoute,
    format_admin_pair,
    parse_admin_pair,
)
from nvfabric.bgp.wire.result import (
    SUBCODE_INVALID_NETWORK_FIELD,
    SUBCODE_OPTIONAL_ATTRIBUTE_ERROR,
    TREAT_AS_WITHDRAW,
    UpdateError,
    _Reset,
)

if TYPE_CHECKING:
    from nvfabric.bgp.wire.attributes import _ExtInfo

@lru_cache(maxsize=65536)
def _rd_bytes(rd: str) -> bytes:
    """RFC 4364 section 4.2: type (2 octets) then administrator and assigned number."""
    kind, admin, number = parse_admin_pair(rd, "rd")
    layout = ("!HHI", "!HIH", "!HIH")[kind]
    return struct.pack(layout, kind, admin, number)


def _nlri_bytes(item: Route | RouteKey) -> bytes:
    """One NLRI as on the wire. For a key (a withdrawal) the non-key fields are zero: RFC 7432 7.2
    and RFC 9136 3.2 make label, ESI and gateway attributes, ignored when withdrawing."""
    if isinstance(item, (UnicastRoute, UnicastKey)):
        prefix = item.prefix  # RFC 4271 section 4.3: length in bits, then the minimal octets
        return bytes([prefix.prefixlen]) + prefix.network_address.packed[: (prefix.prefixlen + 7) // 8]
    if isinstance(item, OpaqueEvpnKey):
        # A type-1 key lacks its label (RFC 7432 7.1); a zero label is as good for a withdrawal.
        value = item.value + (b"\x00\x00\x00" if item.route_type == 1 else b"")
        return bytes([item.route_type, len(value)]) + value
    full = isinstance(item, (MacIpRoute, PrefixRoute))
    esi = item.esi if full else ZERO_ESI
    # RFC 8365 section 5.1.3: the 24-bit VSID fills the MPLS label field as is (no shift, no BoS bit).
    label = (item.vsid if full else 0).to_bytes(3, "big")
    head = _rd_bytes(item.rd) + esi + item.ethernet_tag.to_bytes(4, "big")
    if isinstance(item, (MacIpRoute, MacIpKey)):
        ip = item.ip.packed if item.ip is not None else b""
        # RFC 7432 section 7.2: MAC length 48, MAC, IP length in bits, IP, MPLS Label1.
        value = head + b"\x30" + Mac(item.mac).packed + bytes([len(ip) * 8]) + ip + label
        return b"\x02" + bytes([len(value)]) + value
    prefix = item.prefix
    gateway = item.gateway_ip if full else (IPv4Address(0) if prefix.version == 4 else IPv6Address(0))
    # RFC 9136 section 3.1: prefix length, prefix, gateway IP (same width), MPLS Label.
    value = head + bytes([prefix.prefixlen]) + prefix.network_address.packed + gateway.packed + label
    return b"\x05" + bytes([len(value)]) + value


_rd_texts: dict[bytes, str] = {}


def _rd_text(raw: bytes) -> str | None:
    """RD bytes -> "admin:number" (RFC 4364 section 4.2 types 0, 1, 2), None for other types."""
    text = _rd_texts.get(raw)
    if text is None:
        kind = int.from_bytes(raw[:2], "big")
        if kind > 2:
            return None
        admin, number = struct.unpack(("!HI", "!IH", "!IH")[kind], raw[2:])
        text = format_admin_pair(kind, admin, number)
        if len(_rd_texts) > 65536:
            _rd_texts.clear()
        _rd_texts[raw] = text
    return text


_vsids: dict[int, int] = {}


def _vsid(value: int) -> int:
    """One int object per VSID (a fabric has a few thousand): not one per route."""
    found = _vsids.get(value)
    if found is None:
        if len(_vsids) >= 65536:
            _vsids.clear()
        found = _vsids[value] = value
    return found


# A parsed EVPN NLRI before it becomes a route or a key:
# (2, rd, esi, ethernet_tag, mac, ip, vsid) or (5, rd, esi, ethernet_tag, prefix, gateway, vsid).
_EvpnItem = tuple

# RFC 7432 section 7.2: 33 + IP length (0, 4, 16) + 3 if a second label is present.
_TYPE2_LENGTHS = {0: (33, 36), 32: (37, 40), 128: (49, 52)}


def _evpn_type2(data: bytes, s: int, length: int) -> _EvpnItem | None:
    if length < 33 or data[s + 22] != 48:  # MAC length is always 48 bits (RFC 7432 section 7.2)
        return None
    ip_bits = data[s + 29]
    if length not in _TYPE2_LENGTHS.get(ip_bits, ()):
        return None
    rd = _rd_text(data[s : s + 8])
    if rd is None:
        return None
    esi = data[s + 8 : s + 18]
    label_at = s + 30 + ip_bits // 8
    if ip_bits == 0:
        ip = None
    elif ip_bits == 32:
        ip = HashedIPv4Address(data[s + 30 : label_at])
    else:
        ip = HashedIPv6Address(data[s + 30 : label_at])
    return (
        2,
        rd,
        ZERO_ESI if esi == ZERO_ESI else esi,
        int.from_bytes(data[s + 18 : s + 22], "big"),
        Mac.from_packed(data[s + 23 : s + 29]),
        ip,
        # RFC 8365 section 5.1.3: the 24-bit VSID is the whole label field (no shift).
        _vsid(int.from_bytes(data[label_at : label_at + 3], "big")),
    )


def _evpn_type5(data: bytes, s: int, length: int) -> _EvpnItem | None:
    # RFC 9136 section 3.1: RD(8) ESI(10) Ethernet Tag(4) prefix length(1) prefix, gateway (4 or 16
    # each) and label(3): 34 bytes for IPv4, 58 for IPv6.
    if length == 34:
        width, address, network = 4, IPv4Address, IPv4Network
    elif length == 58:
        width, address, network = 16, IPv6Address, IPv6Network
    else:
        return None
    plen = data[s + 22]
    rd = _rd_text(data[s : s + 8])
    if plen > width * 8 or rd is None:
        return None
    p = s + 23
    esi = data[s + 8 : s + 18]
    return (
        5,
        rd,
        ZERO_ESI if esi == ZERO_ESI else esi,
        int.from_bytes(data[s + 18 : s + 22], "big"),
        network((address(data[p : p + width]), plen), strict=False),
        address(data[p + width : p + 2 * width]),
        int.from_bytes(data[p + 2 * width : p + 2 * width + 3], "big"),
    )


_EVPN_PARSERS = {2: _evpn_type2, 5: _evpn_type5}


def _evpn_opaque(data: bytes, s: int, length: int) -> _EvpnItem:
    kind = data[s - 2]
    # RFC 7432 section 7.1: the Ethernet A-D route's MPLS label (its last 3 bytes) is not key.
    key_end = s + length - 3 if kind == 1 and length >= 3 else s + length
    return (kind, OpaqueEvpnKey(kind, data[s:key_end]))


def _walk_evpn(data: bytes, keep_all: bool = False) -> tuple[list[tuple[int, int, int]], int]:
    """EVPN NLRI framing (RFC 7432 section 7): [(route type, value start, value end)], ignored count.
    Route types other than 2 and 5 are listed only with keep_all (the reflector forwards them).

    A route whose length overruns the field makes the rest unlocatable: session reset (RFC 7606 5.3).
    """
    spans = []
    ignored = 0
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 2 or pos + 2 + data[pos + 1] > end:
            raise _Reset(SUBCODE_OPTIONAL_ATTRIBUTE_ERROR, "EVPN NLRI length overruns the attribute", data[pos:])
        kind, start = data[pos], pos + 2
        pos = start + data[pos + 1]
        if keep_all or kind in _EVPN_PARSERS:
            spans.append((kind, start, pos))
        else:
            ignored += 1  # RFC 7606 section 5.4: unrecognised route types are discarded
    return spans, ignored


def _evpn_keys(data: bytes, errors: list[UpdateError]) -> tuple[list[RouteKey], int]:
    """Keys of the type-2 and type-5 routes of an EVPN NLRI field (withdrawals, treat-as-withdraw),
    and how many routes of other types were ignored. Malformed routes are reported and skipped."""
    spans, ignored = _walk_evpn(data)
    keys = []
    for kind, start, end in spans:
        item = _EVPN_PARSERS[kind](data, start, end - start)
        if item is None:
            errors.append(_malformed_route(kind, data, start, end))
        else:
            keys.append(_evpn_key(item))
    return keys, ignored


def _malformed_route(kind: int, data: bytes, start: int, end: int) -> UpdateError:
    # RFC 7606 section 5.3 / RFC 7432: the route is framed but its fields are inconsistent; the other
    # routes can still be located, so the UPDATE is treat-as-withdraw rather than a session reset.
    return UpdateError(TREAT_AS_WITHDRAW, f"malformed EVPN type-{kind} route", data[start - 2 : end].hex())


def _parse_prefixes(data: bytes, version: int) -> list[IPv4Network | IPv6Network]:
    """RFC 4271 section 4.3 / RFC 4760: (length in bits, minimal prefix octets) pairs."""
    width, address, network = (4, IPv4Address, IPv4Network) if version == 4 else (16, IPv6Address, IPv6Network)
    prefixes = []
    pos = 0
    while pos < len(data):
        plen = data[pos]
        octets = (plen + 7) // 8
        if plen > width * 8 or pos + 1 + octets > len(data):
            raise _Reset(SUBCODE_INVALID_NETWORK_FIELD, "prefix malformed", data[pos:])
        packed = data[pos + 1 : pos + 1 + octets] + bytes(width - octets)
        prefixes.append(network((address(packed), plen), strict=False))
        pos += 1 + octets
    return prefixes


def _evpn_key(item: _EvpnItem) -> RouteKey:
    if item[0] == 2:
        return MacIpKey(item[1], item[3], item[4], item[5])
    if item[0] == 5:
        return PrefixKey(item[1], item[3], item[4])
    return item[1]


def _keys(family: Family, data: bytes, errors: list[UpdateError]) -> tuple[list[RouteKey], int]:
    if family is Family.L2VPN_EVPN:
        return _evpn_keys(data, errors)
    return [UnicastKey(p) for p in _parse_prefixes(data, 4 if family is Family.IPV4_UNICAST else 6)], 0


# The decoder's constructors: values parsed from the wire are already valid, so checks are skipped.
_new_mac_ip = MacIpRoute.unchecked
_new_prefix = PrefixRoute.unchecked
_new_path = Path.unchecked


def _evpn_announced(
    data: bytes, next_hop: Address, attrs: PathAttributes, ext: _ExtInfo, source: PeerRef | None,
    errors: list[UpdateError],
) -> tuple[list[Path], int, bool]:
    """Paths of an MP_REACH EVPN NLRI field, ignored count, and whether a route was malformed.
    The hot loop of the decoder: one pass, no intermediate values kept."""
    spans, ignored = _walk_evpn(data)
    paths = []
    malformed = False
    targets, router_mac = ext.route_targets, ext.router_mac
    seq, sticky = ext.mobility_seq, ext.sticky
    for kind, start, end in spans:
        item = _EVPN_PARSERS[kind](data, start, end - start)
        if item is None:
            malformed = True
            errors.append(_malformed_route(kind, data, start, end))
        elif kind == 2:
            _, rd, esi, etag, mac, ip, vsid = item
            route = _new_mac_ip(rd, mac, ip, vsid, next_hop, targets, router_mac, seq, sticky, etag, esi)
            paths.append(_new_path(route, attrs, source))
        else:
            _, rd, esi, etag, prefix, gateway, vsid = item
            route = _new_prefix(rd, prefix, vsid, next_hop, targets, router_mac, gateway, etag, esi)
            paths.append(_new_path(route, attrs, source))
    return paths, ignored, malformed

