"""UPDATE messages (RFC 4271 section 4.3, RFC 4760) as typed values: encode_update packs routes
(attributes built by ExaBGP, NLRI and MP_REACH/MP_UNREACH packed here), decode_update parses bytes
into paths and withdrawn keys with the RFC 7606 error handling.
"""

from __future__ import annotations

from collections.abc import Sequence

from nvfabric.bgp.errors import RouteValueError
from nvfabric.bgp.routes import (
    DEFAULT_ATTRIBUTES,
    Address,
    Family,
    MacIpRoute,
    Origin,
    Path,
    PathAttributes,
    PeerRef,
    PrefixRoute,
    Route,
    RouteKey,
    UnicastKey,
    UnicastRoute,
)
from nvfabric.bgp.wire.attributes import _Attrs, _walk_attributes
from nvfabric.bgp.wire.exa import attributes_bytes
from nvfabric.bgp.wire.framing import _update_sections
from nvfabric.bgp.wire.nlri import _evpn_announced, _keys, _new_path, _nlri_bytes, _parse_prefixes
from nvfabric.bgp.wire.open import Negotiated
from nvfabric.bgp.wire.raw import encode_raw_update
from nvfabric.bgp.wire.result import ATTRIBUTE_DISCARD, TREAT_AS_WITHDRAW, UpdateError, UpdateResult, _Reset


def _attribute_signature(route: Route, attrs: PathAttributes) -> tuple:
    """Everything that ends up in the path attributes: routes with equal signatures share an UPDATE."""
    if isinstance(route, UnicastRoute):
        return (route.family, attrs, route.next_hop if route.prefix.version == 4 else None)
    mobility = (route.mobility_seq, route.sticky) if isinstance(route, MacIpRoute) else (0, False)
    return (route.family, attrs, route.route_targets, route.router_mac, mobility)


def encode_update(
    negotiated: Negotiated,
    announce: Sequence[Path | Route],
    withdraw: Sequence[Route | RouteKey] = (),
) -> list[bytes]:
    """Whole UPDATE messages (with header, each <= 4096 bytes) announcing and withdrawing routes.

    Withdrawals come first, in their own messages. Announcements with equal attributes are packed
    together, one MP_REACH_NLRI per next hop. Path attributes are built by ExaBGP from the values
    given, except: LOCAL_PREF is added (100) for iBGP and left out for eBGP (RFC 4271 section 5.1.5),
    and a missing AS_PATH becomes empty (iBGP) or our AS (eBGP). Prepending our AS for eBGP is the
    caller's choice, made in PathAttributes. The NLRI are packed here, not by ExaBGP's
    Update.messages, which sorts them through a costly index (17k routes/s for 100k routes);
    tests/unit/test_wire_update.py checks our bytes against ExaBGP's (reference_encode_update).
    """
    messages: list[bytes] = []
    withdrawals: dict[Family, list[bytes]] = {}
    for item in withdraw:
        key = item.key if isinstance(item, (MacIpRoute, PrefixRoute, UnicastRoute)) else item
        _check_family(negotiated, key.family)
        withdrawals.setdefault(key.family, []).append(_nlri_bytes(key))
    for family, nlris in withdrawals.items():
        messages += encode_raw_update(family, b"", b"", (), nlris)
    groups: dict[tuple, tuple[Route, PathAttributes, dict[Address | None, list[bytes]]]] = {}
    for item in announce:
        route, attrs = (item.route, item.attrs) if isinstance(item, Path) else (item, DEFAULT_ATTRIBUTES)
        signature = _attribute_signature(route, attrs)
        group = groups.get(signature)
        if group is None:
            _check_family(negotiated, route.family)
            group = groups[signature] = (route, attrs, {})
        # IPv4 unicast carries its next hop in NEXT_HOP (part of the signature), the others in MP_REACH.
        next_hop = None if route.family is Family.IPV4_UNICAST else route.next_hop
        group[2].setdefault(next_hop, []).append(_nlri_bytes(route))
    for route, attrs, by_next_hop in groups.values():
        attributes = attributes_bytes(negotiated, route, attrs)
        for next_hop, nlris in by_next_hop.items():
            packed_next_hop = next_hop.packed if next_hop is not None else b""
            messages += encode_raw_update(route.family, attributes, packed_next_hop, nlris)
    return messages


def _check_family(negotiated: Negotiated, family: Family) -> None:
    # RFC 4760 section 6: routes of a family the peer did not negotiate must not be sent.
    if family not in negotiated.families:
        raise RouteValueError("family", family.name, "not negotiated on this session")



def decode_update(negotiated: Negotiated, body: bytes, source: PeerRef | None = None) -> UpdateResult:
    """Decode an UPDATE body (after the header) into paths (tagged with source) and withdrawn keys.

    Never raises for bad content: problems are in .errors with their RFC 7606 action. With a
    treat-as-withdraw error every route the UPDATE announced is returned as withdrawn instead.
    With a session-reset error (check .session_reset) nothing else of the result is meaningful.
    """
    result = UpdateResult()
    try:
        _decode_update(negotiated, body, source, result)
    except _Reset as reset:
        result.announced.clear()
        result.withdrawn.clear()
        result.errors.append(reset.error)
    return result



def _decode_update(negotiated: Negotiated, body: bytes, source: PeerRef | None, result: UpdateResult) -> None:
    withdrawn_end, attributes_start, attributes_end = _update_sections(body)
    errors = result.errors
    for prefix in _parse_prefixes(body[2:withdrawn_end], 4):
        result.withdrawn.append(UnicastKey(prefix))
    attrs = _walk_attributes(negotiated, body, attributes_start, attributes_end, errors)
    nlri = _parse_prefixes(body[attributes_end:], 4)
    if attrs.unreach is not None:
        family, data = attrs.unreach
        if not data and attrs.count == 1 and not nlri and withdrawn_end == 2:
            result.eor = family  # RFC 4724 section 2
            return
        keys, ignored = _keys(family, data, errors)
        result.withdrawn.extend(keys)
        result.ignored += ignored
    if withdrawn_end == 2 and attributes_start == attributes_end and not nlri:
        result.eor = Family.IPV4_UNICAST  # RFC 4724 section 2: an empty UPDATE
        return
    if nlri and Family.IPV4_UNICAST not in negotiated.families:
        reason = "IPv4 NLRI but IPv4 unicast not negotiated"
        errors.append(UpdateError(ATTRIBUTE_DISCARD, reason, body[attributes_end:].hex()))
        nlri = []
    reaches = attrs.reach is not None and bool(attrs.reach[2])
    if not reaches and not nlri:
        return
    if attrs.withdraw_reason is None:
        # RFC 7606 section 3 (d): a missing well-known mandatory attribute means treat-as-withdraw.
        missing = [name for name, value in (("ORIGIN", attrs.origin), ("AS_PATH", attrs.as_path)) if value is None]
        if nlri and attrs.next_hop is None:
            missing.append("NEXT_HOP")
        if missing:
            attrs.withdraw_reason = "missing " + ", ".join(missing)
            errors.append(UpdateError(TREAT_AS_WITHDRAW, attrs.withdraw_reason, ""))
    if attrs.withdraw_reason is not None:
        _treat_as_withdraw(attrs, nlri, result)
        return
    path_attrs = PathAttributes(
        origin=Origin(attrs.origin),
        as_path=attrs.as_path,
        med=attrs.med,
        local_pref=attrs.local_pref,
        originator_id=attrs.originator_id,
        cluster_list=attrs.cluster_list,
        communities=attrs.communities,
        tunnel_type=attrs.ext.tunnel_type,
    )
    # one object per distinct set of attributes (a table sent route by route, or churn, would otherwise give
    # each route its own)
    path_attrs = _path_attributes.setdefault(path_attrs, path_attrs)
    if len(_path_attributes) > 4096:
        _path_attributes.clear()
    announced = result.announced
    announced.extend(_new_path(UnicastRoute.unchecked(p, attrs.next_hop), path_attrs, source) for p in nlri)
    if not reaches:
        return
    family, next_hop, data = attrs.reach
    if family is Family.L2VPN_EVPN:
        paths, ignored, malformed = _evpn_announced(data, next_hop, path_attrs, attrs.ext, source, errors)
        result.ignored += ignored
        if malformed:
            result.withdrawn.extend(p.route.key for p in announced)
            result.withdrawn.extend(p.route.key for p in paths)
            announced.clear()
            return
        announced.extend(paths)
    else:
        prefixes = _parse_prefixes(data, 4 if family is Family.IPV4_UNICAST else 6)
        announced.extend(_new_path(UnicastRoute.unchecked(p, next_hop), path_attrs, source) for p in prefixes)


_path_attributes: dict[PathAttributes, PathAttributes] = {}


def _treat_as_withdraw(attrs: _Attrs, nlri: list, result: UpdateResult) -> None:
    """RFC 7606 section 2: every route the UPDATE announced is handled as withdrawn."""
    result.withdrawn.extend(UnicastKey(p) for p in nlri)
    if attrs.reach is not None:
        keys, ignored = _keys(attrs.reach[0], attrs.reach[2], result.errors)
        result.withdrawn.extend(keys)
        result.ignored += ignored

