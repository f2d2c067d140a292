"""ExaBGP, the one place nvfabric talks to it (tests/unit/test_layers.py enforces it).

ExaBGP builds the OPEN (open_message) and the path attributes we send (attributes_bytes) and holds
the per-session state its classes need (negotiated_state). It is also the independent codec ours is
checked against: reference_encode_update builds whole UPDATEs with ExaBGP's classes (the tests compare
the bytes with encode_update), reference_decode_update parses with ExaBGP and converts to our values,
exabgp_parse_update is its bare parse for the benchmark. Importing this module initialises ExaBGP's
logger and applies the EVPN NEXT-HOP FIX below.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING

from exabgp.bgp.message import Open as _ExaOpen
from exabgp.bgp.message import Update as _ExaUpdate
from exabgp.bgp.message.action import Action as _ExaAction
from exabgp.bgp.message.direction import Direction as _ExaDirection
from exabgp.bgp.message.open import ASN as _ExaASN
from exabgp.bgp.message.open import HoldTime as _ExaHoldTime
from exabgp.bgp.message.open import RouterID as _ExaRouterID
from exabgp.bgp.message.open import Version as _ExaVersion
from exabgp.bgp.message.open.capability import Capabilities as _ExaCapabilities
from exabgp.bgp.message.open.capability import Capability as _ExaCapability
from exabgp.bgp.message.open.capability import Negotiated as _ExaNegotiated
from exabgp.bgp.message.open.capability.asn4 import ASN4 as _ExaASN4
from exabgp.bgp.message.open.capability.graceful import Graceful as _ExaGraceful
from exabgp.bgp.message.open.capability.mp import MultiProtocol as _ExaMultiProtocol
from exabgp.bgp.message.open.capability.refresh import RouteRefresh as _ExaRouteRefresh
from exabgp.bgp.message.update.attribute import MED as _ExaMED
from exabgp.bgp.message.update.attribute import SEQUENCE as _ExaSEQUENCE
from exabgp.bgp.message.update.attribute import SET as _ExaSET
from exabgp.bgp.message.update.attribute import ASPath as _ExaASPath
from exabgp.bgp.message.update.attribute import Attributes as _ExaAttributes
from exabgp.bgp.message.update.attribute import ClusterID as _ExaClusterID
from exabgp.bgp.message.update.attribute import ClusterList as _ExaClusterList
from exabgp.bgp.message.update.attribute import Communities as _ExaCommunities
from exabgp.bgp.message.update.attribute import LocalPreference as _ExaLocalPreference
from exabgp.bgp.message.update.attribute import NextHop as _ExaNextHop
from exabgp.bgp.message.update.attribute import Origin as _ExaOrigin
from exabgp.bgp.message.update.attribute import OriginatorID as _ExaOriginatorID
from exabgp.bgp.message.update.attribute.community.extended import Encapsulation as _ExaEncapsulation
from exabgp.bgp.message.update.attribute.community.extended import ExtendedCommunities as _ExaExtCommunities
from exabgp.bgp.message.update.attribute.community.extended import ExtendedCommunity as _ExaExtCommunity
from exabgp.bgp.message.update.attribute.community.extended import MacMobility as _ExaMacMobility
from exabgp.bgp.message.update.attribute.community.extended import RouteTargetASN2Number as _ExaRT2
from exabgp.bgp.message.update.attribute.community.extended import RouteTargetASN4Number as _ExaRT4
from exabgp.bgp.message.update.attribute.community.extended import RouteTargetIPNumber as _ExaRTIP
from exabgp.bgp.message.update.attribute.community.initial.community import Community as _ExaCommunity
from exabgp.bgp.message.update.eor import EOR as _ExaEOR
from exabgp.bgp.message.update.nlri import INET as _ExaINET
from exabgp.bgp.message.update.nlri.cidr import CIDR as _ExaCIDR
from exabgp.bgp.message.update.nlri.evpn import MAC as _ExaEvpnMAC
from exabgp.bgp.message.update.nlri.evpn import Prefix as _ExaEvpnPrefix
from exabgp.bgp.message.update.nlri.qualifier import ESI as _ExaESI
from exabgp.bgp.message.update.nlri.qualifier import MAC as _ExaMACQualifier
from exabgp.bgp.message.update.nlri.qualifier import EthernetTag as _ExaEthernetTag
from exabgp.bgp.message.update.nlri.qualifier import Labels as _ExaLabels
from exabgp.bgp.message.update.nlri.qualifier import RouteDistinguisher as _ExaRD
from exabgp.environment import getenv as _exa_getenv
from exabgp.logger import log as _exa_log
from exabgp.protocol import family as _exa_family
from exabgp.protocol.family import AFI as _ExaAFI
from exabgp.protocol.family import SAFI as _ExaSAFI
from exabgp.protocol.ip import IP as _ExaIP

from nvfabric.bgp.mac import Mac
from nvfabric.bgp.routes import (
    AS_SEQUENCE,
    DEFAULT_ATTRIBUTES,
    ZERO_ESI,
    Address,
    Family,
    MacIpKey,
    MacIpRoute,
    Origin,
    Path,
    PathAttributes,
    PrefixRoute,
    Route,
    RouteKey,
    UnicastKey,
    UnicastRoute,
    parse_admin_pair,
)
from nvfabric.bgp.wire.attributes import (
    _EXT_COMMUNITIES,
    _LOCAL_PREF,
    _MED,
    _NO_EXT,
    _ORIGIN,
    EVPN_NEXT_HOP_LENGTHS,
    NVGRE_TUNNEL_TYPE,
    _ext_info,
    _ExtInfo,
)
from nvfabric.bgp.wire.nlri import _rd_bytes, _rd_text
from nvfabric.bgp.wire.result import UpdateResult

if TYPE_CHECKING:
    from nvfabric.bgp.wire.open import Capabilities, Negotiated

# ExaBGP's classes log through its logger, which must be initialised once per process.
_exa_log.init(_exa_getenv())

# ---------------------------------------------------------------------- EVPN NEXT-HOP FIX
# ExaBGP 5.0.15 accepts only a 4-byte next hop in an l2vpn/evpn MP_REACH_NLRI (its Family.size table
# says ((4,), 0)); a 16-byte IPv6 next hop encodes but decoding it raises a NOTIFICATION. RFC 8365
# section 5.1.3 / RFC 7432 section 7 put the provider address (IPv4 or IPv6) there, and RFC 2545
# section 3 allows 32 bytes (global + link-local). Our hosts may have IPv6 provider addresses, so the
# table entry is widened here, once, at import, to the lengths our own decoder accepts
# (attributes.EVPN_NEXT_HOP_LENGTHS). tests/unit/test_wire_nexthop.py fails if it stops applying.
_exa_family.Family.size[(_ExaAFI.l2vpn, _ExaSAFI.evpn)] = (EVPN_NEXT_HOP_LENGTHS, 0)
# ---------------------------------------------------------------------- end of EVPN NEXT-HOP FIX


def _exa_families(families: Iterable[Family]) -> list[tuple[_ExaAFI, _ExaSAFI]]:
    # Sorted by the RFC numbers so the OPEN bytes do not depend on set iteration order.
    return [(_ExaAFI.create(f.afi), _ExaSAFI.create(f.safi)) for f in sorted(families, key=lambda f: f.value)]


def _exa_capabilities(caps: Capabilities) -> _ExaCapabilities:
    exa = _ExaCapabilities()
    exa[_ExaCapability.CODE.MULTIPROTOCOL] = _ExaMultiProtocol(_exa_families(caps.families))
    if caps.route_refresh:
        exa[_ExaCapability.CODE.ROUTE_REFRESH] = _ExaRouteRefresh()
    if caps.four_octet:
        exa[_ExaCapability.CODE.FOUR_BYTES_ASN] = _ExaASN4(caps.asn)
    gr = caps.graceful_restart
    if gr is not None:
        flags = {f: preserved for f, preserved in gr.families}
        exa[_ExaCapability.CODE.GRACEFUL_RESTART] = _ExaGraceful().set(
            _ExaGraceful.RESTART_STATE if gr.restarting else 0,
            gr.restart_time,
            [
                (afi, safi, _ExaGraceful.FORWARDING_STATE if flags[Family.from_afi_safi(int(afi), int(safi))] else 0)
                for afi, safi in _exa_families(flags)
            ],
        )
    return exa


def open_message(caps: Capabilities, my_as: int) -> bytes:
    """The whole OPEN message (with header) for caps, with my_as in the 2-octet My AS field."""
    message = _ExaOpen(
        _ExaVersion(4), _ExaASN(my_as), _ExaHoldTime(caps.hold_time), _ExaRouterID(str(caps.router_id)),
        _exa_capabilities(caps),
    )
    return message.message()


def negotiated_state(
    local_asn: int, peer_asn: int, four_octet: bool, families: Iterable[Family], hold_time: int
) -> _ExaNegotiated:
    """ExaBGP's Negotiated for a session: what its classes need to pack attributes and parse UPDATEs."""
    exa = _ExaNegotiated({"capability": {"aigp": False}})
    exa.local_as = _ExaASN(local_asn)
    exa.peer_as = _ExaASN(peer_asn)
    exa.asn4 = four_octet
    exa.families = _exa_families(families)
    exa.holdtime = _ExaHoldTime(hold_time)
    return exa


@lru_cache(maxsize=65536)
def _exa_rd(rd: str) -> _ExaRD:
    return _ExaRD(_rd_bytes(rd))


@lru_cache(maxsize=65536)
def _exa_route_target(target: str) -> _ExaExtCommunity:
    kind, admin, number = parse_admin_pair(target, "route_targets")
    if kind == 0:
        return _ExaRT2(admin, number)
    if kind == 2:
        return _ExaRT4(admin, number)
    return _ExaRTIP(str(IPv4Address(admin)), number)


@lru_cache(maxsize=4096)
def _exa_ip(address: Address) -> _ExaIP:
    return _ExaIP.create(str(address))


def _exa_router_mac(mac: Mac) -> _ExaExtCommunity:
    # RFC 9135 section 8.1: EVPN Router's MAC, type 0x06 sub-type 0x03, then the 6-byte MAC.
    # ExaBGP has no class for it, so it is built from its bytes.
    return _ExaExtCommunity.unpack(b"\x06\x03" + mac.packed)


def _evpn_to_exa(route: MacIpRoute | PrefixRoute | RouteKey, action: int):
    """An ExaBGP EVPN NLRI for a route (announce) or a key (withdraw: label, ESI, gateway zero)."""
    vsid = getattr(route, "vsid", 0)
    esi = _ExaESI(getattr(route, "esi", ZERO_ESI))
    # RFC 8365 section 5.1.3: the 24-bit VSID fills the MPLS label field as is (raw, no shift, no BoS).
    labels = _ExaLabels([], raw_labels=[vsid])
    next_hop = _exa_ip(route.next_hop) if action == _ExaAction.ANNOUNCE else None
    if isinstance(route, (MacIpRoute, MacIpKey)):
        ip = _exa_ip(route.ip) if route.ip is not None else None
        return _ExaEvpnMAC(
            _exa_rd(route.rd), esi, _ExaEthernetTag(route.ethernet_tag), _ExaMACQualifier(route.mac), 48,
            labels, ip, None, next_hop, action,
        )
    prefix = route.prefix
    gateway = getattr(route, "gateway_ip", None) or (IPv4Address(0) if prefix.version == 4 else IPv6Address(0))
    return _ExaEvpnPrefix(
        _exa_rd(route.rd), esi, _ExaEthernetTag(route.ethernet_tag), labels,
        _exa_ip(prefix.network_address), prefix.prefixlen, _exa_ip(gateway), None, next_hop, action,
    )


def _unicast_to_exa(route: UnicastRoute | UnicastKey, action: int):
    family = route.family
    nlri = _ExaINET(_ExaAFI.create(family.afi), _ExaSAFI.create(family.safi), action)
    prefix = route.prefix
    nlri.cidr = _ExaCIDR(prefix.network_address.packed, prefix.prefixlen)
    if action == _ExaAction.ANNOUNCE:
        nlri.nexthop = _exa_ip(route.next_hop)
    return nlri


def _to_exa_nlri(item: Route | RouteKey, action: int):
    if isinstance(item, (UnicastRoute, UnicastKey)):
        return _unicast_to_exa(item, action)
    return _evpn_to_exa(item, action)


def _exa_attributes(route: Route, attrs: PathAttributes) -> _ExaAttributes:
    exa = _ExaAttributes()
    exa.add(_ExaOrigin(int(attrs.origin)))
    segments = [
        (_ExaSEQUENCE if s.kind == AS_SEQUENCE else _ExaSET)([_ExaASN(a) for a in s.asns]) for s in attrs.as_path
    ]
    if segments:
        exa.add(_ExaASPath(segments))
    if attrs.med is not None:
        exa.add(_ExaMED(attrs.med))
    if attrs.local_pref is not None:
        exa.add(_ExaLocalPreference(attrs.local_pref))
    if attrs.originator_id is not None:
        exa.add(_ExaOriginatorID(str(attrs.originator_id)))
    if attrs.cluster_list:
        exa.add(_ExaClusterList([_ExaClusterID(str(c)) for c in attrs.cluster_list]))
    if attrs.communities:
        exa.add(_ExaCommunities([_ExaCommunity(struct.pack("!I", c)) for c in attrs.communities]))
    if isinstance(route, UnicastRoute):
        if route.prefix.version == 4:
            exa.add(_ExaNextHop(str(route.next_hop)))
        return exa
    communities = [_exa_route_target(t) for t in route.route_targets]
    communities.append(_ExaEncapsulation(attrs.tunnel_type or NVGRE_TUNNEL_TYPE))
    if isinstance(route, MacIpRoute) and (route.mobility_seq or route.sticky):
        # RFC 7432 section 7.7: MAC Mobility, flags (bit 0x01 sticky/static) and a 32-bit sequence.
        communities.append(_ExaMacMobility(route.mobility_seq, route.sticky))
    if route.router_mac is not None:
        communities.append(_exa_router_mac(route.router_mac))
    exa.add(_ExaExtCommunities(communities))
    return exa


def attributes_bytes(negotiated: Negotiated, route: Route, attrs: PathAttributes) -> bytes:
    """The path attributes of route with attrs, packed by ExaBGP for this session."""
    return _exa_attributes(route, attrs).pack(negotiated._exa)


def reference_encode_update(
    negotiated: Negotiated, announce: Sequence[Path | Route], withdraw: Sequence[Route | RouteKey] = ()
) -> list[bytes]:
    """The same UPDATEs built entirely by ExaBGP (Update.messages, NLRI classes with
    Labels([], raw_labels=[vsid])): the independent encoder our NLRI bytes are tested against."""
    exa = negotiated._exa
    messages: list[bytes] = []
    keys = [item.key if isinstance(item, (MacIpRoute, PrefixRoute, UnicastRoute)) else item for item in withdraw]
    if keys:
        nlris = [_to_exa_nlri(key, _ExaAction.WITHDRAW) for key in keys]
        messages += _ExaUpdate(nlris, _ExaAttributes()).messages(exa)
    for item in announce:
        route, attrs = (item.route, item.attrs) if isinstance(item, Path) else (item, DEFAULT_ATTRIBUTES)
        nlri = _to_exa_nlri(route, _ExaAction.ANNOUNCE)
        messages += _ExaUpdate([nlri], _exa_attributes(route, attrs)).messages(exa)
    return messages


def reference_decode_update(negotiated: Negotiated, body: bytes) -> UpdateResult:
    """Decode with ExaBGP's own parser and convert to our values: the benchmark's reference, and an
    independent parser for cross-checking ours in tests. Raises what ExaBGP raises on bad input."""
    update = _ExaUpdate.unpack_message(body, _ExaDirection.IN, negotiated._exa)
    result = UpdateResult()
    if isinstance(update, _ExaEOR):
        result.eor = Family.from_afi_safi(int(update.nlris[0].afi), int(update.nlris[0].safi))
        return result
    attributes = update.attributes
    ext = _NO_EXT
    if _EXT_COMMUNITIES in attributes:
        ext = _ext_info(b"".join(c.community for c in attributes[_EXT_COMMUNITIES].communities))
    path_attrs = PathAttributes(
        origin=Origin(attributes[_ORIGIN].origin) if _ORIGIN in attributes else Origin.IGP,
        med=attributes[_MED].med if _MED in attributes else None,
        local_pref=attributes[_LOCAL_PREF].localpref if _LOCAL_PREF in attributes else None,
        tunnel_type=ext.tunnel_type,
    )
    for nlri in update.nlris:
        route = _route_from_exa(nlri, ext)
        if route is None:
            result.ignored += 1
        elif nlri.action == _ExaAction.WITHDRAW:
            result.withdrawn.append(route.key)
        else:
            result.announced.append(Path(route, path_attrs))
    return result


def exabgp_parse_update(negotiated: Negotiated, body: bytes) -> int:
    """ExaBGP's own UPDATE parse (objects, no JSON, no conversion), for the benchmark. Returns the
    number of NLRI."""
    update = _ExaUpdate.unpack_message(body, _ExaDirection.IN, negotiated._exa)
    return len(getattr(update, "nlris", ()))


def _route_from_exa(nlri, ext: _ExtInfo) -> Route | None:
    if isinstance(nlri, _ExaINET):
        return UnicastRoute(nlri.cidr.prefix(), nlri.nexthop.top() if nlri.nexthop else "0.0.0.0")
    next_hop = nlri.nexthop.top() if nlri.nexthop else "0.0.0.0"
    rd = _rd_text(nlri.rd.pack())
    vsid = int.from_bytes(nlri.label.pack()[:3], "big")
    if isinstance(nlri, _ExaEvpnMAC):
        return MacIpRoute(
            rd=rd, mac=Mac.from_packed(nlri.mac.pack()), ip=nlri.ip.top() if nlri.ip else None, vsid=vsid,
            next_hop=next_hop, route_targets=ext.route_targets, router_mac=ext.router_mac,
            mobility_seq=ext.mobility_seq, sticky=ext.sticky, ethernet_tag=nlri.etag.tag, esi=nlri.esi.pack(),
        )
    if isinstance(nlri, _ExaEvpnPrefix):
        return PrefixRoute(
            rd=rd, prefix=f"{nlri.ip.top()}/{nlri.iplen}", vsid=vsid, next_hop=next_hop,
            route_targets=ext.route_targets, router_mac=ext.router_mac, gateway_ip=nlri.gwip.top(),
            ethernet_tag=nlri.etag.tag, esi=nlri.esi.pack(),
        )
    return None

