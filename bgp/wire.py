"""The BGP codec: bytes on the wire <-> the typed values of bgp/routes.py.

This is the only module of nvfabric that imports ExaBGP (tests/unit/test_wire_boundary.py enforces it).
ExaBGP builds the OPEN and the path attributes we send. The NLRI and MP_REACH/MP_UNREACH framing are
packed here (ExaBGP's Update.messages sorts NLRI at ~17k routes/s); reference_encode_update builds the
same UPDATE entirely with ExaBGP and the tests compare the bytes. What we receive is parsed here from
bytes: it is the hot path (ExaBGP's decoder builds objects and JSON we do not need, ~30k routes/s) and
RFC 7606 wants a malformed attribute or NLRI to degrade to treat-as-withdraw, where ExaBGP raises and
the session would reset. ExaBGP's decoder is kept as reference_decode_update for cross-checks.

Sections: ExaBGP set-up (with the EVPN next-hop fix) / framing / OPEN / small messages / UPDATE encode /
UPDATE decode / reference decoder / raw UPDATEs for the route reflector.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import NamedTuple

from exabgp.bgp.message import Open as _ExaOpen
from exabgp.bgp.message import Update as _ExaUpdate
from exabgp.bgp.message.update.eor import EOR as _ExaEOR
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

from bgp.errors import MessageHeaderError, NotificationDecodeError, OpenError, RouteValueError
from bgp.routes import (
    AS_SEQUENCE,
    AS_SET,
    DEFAULT_ATTRIBUTES,
    ZERO_ESI,
    Address,
    AsSegment,
    Family,
    MacIpKey,
    MacIpRoute,
    OpaqueEvpnKey,
    Origin,
    Path,
    PathAttributes,
    PeerRef,
    PrefixKey,
    PrefixRoute,
    Route,
    RouteKey,
    UnicastKey,
    UnicastRoute,
    canonical_route_targets,
    format_admin_pair,
    parse_admin_pair,
)

__all__ = [
    "Capabilities",
    "GracefulRestart",
    "MessageHeaderError",
    "MessageType",
    "Negotiated",
    "NotificationDecodeError",
    "OpenError",
    "RawNlri",
    "RawUpdate",
    "UpdateError",
    "UpdateResult",
    "Notification",
    "decode_notification",
    "decode_route_refresh",
    "decode_open",
    "decode_raw_update",
    "decode_update",
    "encode_eor",
    "encode_keepalive",
    "encode_notification",
    "encode_open",
    "encode_raw_update",
    "encode_route_refresh",
    "encode_update",
    "exabgp_parse_update",
    "negotiate",
    "reference_decode_update",
    "reference_encode_update",
    "reflect_attributes",
    "typed_key",
    "split_messages",
]

# ====================================================================== ExaBGP set-up

# ExaBGP's classes log through its logger, which must be initialised once per process.
_exa_log.init(_exa_getenv())

# ---------------------------------------------------------------------- EVPN NEXT-HOP FIX
# ExaBGP 5.0.15 accepts only a 4-byte next hop in an l2vpn/evpn MP_REACH_NLRI (its Family.size table
# says ((4,), 0)); a 16-byte IPv6 next hop encodes but decoding it raises a NOTIFICATION. RFC 8365
# section 5.1.3 / RFC 7432 section 7 put the provider address (IPv4 or IPv6) there, and RFC 2545
# section 3 allows 32 bytes (global + link-local). Our hosts may have IPv6 provider addresses, so the
# table entry is widened here, once, at import. tests/unit/test_wire_nexthop.py fails if it stops applying.
EVPN_NEXT_HOP_LENGTHS = (4, 16, 32)
_exa_family.Family.size[(_ExaAFI.l2vpn, _ExaSAFI.evpn)] = (EVPN_NEXT_HOP_LENGTHS, 0)
# ---------------------------------------------------------------------- end of EVPN NEXT-HOP FIX


# ====================================================================== framing (RFC 4271 section 4.1)

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


# ====================================================================== OPEN and capabilities

AS_TRANS = 23456  # RFC 6793 section 9

_CAP_MULTIPROTOCOL = 1  # RFC 4760
_CAP_ROUTE_REFRESH = 2  # RFC 2918
_CAP_GRACEFUL_RESTART = 64  # RFC 4724
_CAP_FOUR_OCTET_AS = 65  # RFC 6793
_PARAM_CAPABILITIES = 2  # RFC 5492


@dataclass(frozen=True, slots=True)
class GracefulRestart:
    """Graceful Restart capability (RFC 4724 section 3).

    restart_time: seconds (12 bits) the peer asks us to keep its routes while it reconnects;
    restarting: the R bit (the sender has just restarted); families: (family, forwarding preserved).
    """

    restart_time: int
    restarting: bool = False
    families: frozenset[tuple[Family, bool]] = frozenset()

    def __post_init__(self) -> None:
        if not 0 <= self.restart_time <= 0xFFF:
            raise RouteValueError("restart_time", self.restart_time, "expected 0..4095 (12 bits)")


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What one side says in its OPEN (RFC 4271 section 4.2 and the capabilities we know)."""

    asn: int
    router_id: IPv4Address
    hold_time: int
    families: frozenset[Family]
    route_refresh: bool = True
    four_octet: bool = True
    graceful_restart: GracefulRestart | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.asn <= 0xFFFFFFFF:
            raise RouteValueError("asn", self.asn, "expected 1..4294967295")
        if self.asn > 0xFFFF and not self.four_octet:
            raise RouteValueError("four_octet", self.four_octet, "a 4-octet AS needs the capability (RFC 6793)")
        object.__setattr__(self, "router_id", IPv4Address(self.router_id))
        if int(self.router_id) == 0:
            raise RouteValueError("router_id", self.router_id, "the BGP identifier must be non-zero (RFC 6286)")
        if not (self.hold_time == 0 or 3 <= self.hold_time <= 0xFFFF):
            raise RouteValueError("hold_time", self.hold_time, "expected 0 or 3..65535 (RFC 4271 section 4.2)")
        object.__setattr__(self, "families", frozenset(self.families))
        if not all(isinstance(f, Family) for f in self.families):
            raise RouteValueError("families", self.families, "expected bgp.routes.Family members")


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What both sides of an established session support (RFC 4271 4.2, RFC 5492, RFC 4760, RFC 4724).

    graceful_restart is the peer's GR capability when both sides advertised GR (it governs how long we
    keep the peer's routes stale), else None. The ExaBGP state used to encode is kept inside.
    """

    local: Capabilities
    remote: Capabilities
    families: frozenset[Family]
    four_octet: bool
    hold_time: int
    route_refresh: bool
    graceful_restart: GracefulRestart | None
    _exa: _ExaNegotiated = field(repr=False, compare=False)

    @property
    def ibgp(self) -> bool:
        return self.local.asn == self.remote.asn

    @property
    def peer_asn(self) -> int:
        return self.remote.asn

    @property
    def peer_router_id(self) -> IPv4Address:
        return self.remote.router_id


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


def encode_open(caps: Capabilities) -> bytes:
    """The whole OPEN message (with header). A 4-octet AS is sent as AS_TRANS (RFC 6793 section 4.1)."""
    my_as = caps.asn if caps.asn <= 0xFFFF else AS_TRANS
    message = _ExaOpen(
        _ExaVersion(4), _ExaASN(my_as), _ExaHoldTime(caps.hold_time), _ExaRouterID(str(caps.router_id)),
        _exa_capabilities(caps),
    )
    return message.message()


def _tlvs(data: bytes, what: str, length_octets: int = 1) -> list[tuple[int, bytes]]:
    """(type, value) of 1-octet type, 1- or 2-octet length items: optional parameters and capabilities
    (RFC 4271 section 4.2, RFC 5492 section 4, RFC 9072 section 2). An overrun is OPEN error 0."""
    items = []
    pos = 0
    head = 1 + length_octets
    while pos < len(data):
        if pos + head > len(data):
            raise OpenError(0, b"", f"{what} header truncated")
        end = pos + head + int.from_bytes(data[pos + 1 : pos + head], "big")
        if end > len(data):
            raise OpenError(0, b"", f"{what} length overruns its container")
        items.append((data[pos], data[pos + head : end]))
        pos = end
    return items


def _parse_optional_parameters(body: bytes) -> dict[int, list[bytes]]:
    """Capability code -> values (a code may repeat, RFC 5492 section 4) from an OPEN body."""
    length, params, length_octets = body[9], body[10:], 1
    if length == 255 and params[:1] == b"\xff":
        # RFC 9072 section 2: the extended form, a 2-octet total length and 2-octet parameter lengths.
        length, params, length_octets = int.from_bytes(params[1:3], "big"), params[3:], 2
    if len(params) != length:
        raise OpenError(0, b"", "optional parameters length does not match the OPEN length")
    caps: dict[int, list[bytes]] = {}
    for kind, value in _tlvs(params, "optional parameter", length_octets):
        if kind != _PARAM_CAPABILITIES:
            # RFC 4271 section 6.2: an unrecognised optional parameter is subcode 4.
            raise OpenError(4, b"", f"unsupported optional parameter type {kind}")
        for code, capability in _tlvs(value, "capability"):
            caps.setdefault(code, []).append(capability)
    return caps


def _decode_graceful(value: bytes) -> GracefulRestart:
    # RFC 4724 section 3: flags(4 bits) time(12 bits), then (AFI 2, SAFI 1, flags 1) per family.
    if len(value) < 2 or (len(value) - 2) % 4:
        raise OpenError(0, b"", "graceful restart capability has a bad length")
    head = int.from_bytes(value[:2], "big")
    families = set()
    for pos in range(2, len(value), 4):
        afi, safi, flags = struct.unpack("!HBB", value[pos : pos + 4])
        family = Family.from_afi_safi(afi, safi)
        if family is not None:
            families.add((family, bool(flags & 0x80)))
    return GracefulRestart(head & 0xFFF, bool(head & 0x8000), frozenset(families))


def decode_open(body: bytes, expected_asn: int | None = None) -> Capabilities:
    """Parse an OPEN body (after the 19-byte header) into the peer's Capabilities.

    Raises OpenError with the RFC 4271 section 6.2 subcode: 1 version, 2 peer AS (when expected_asn
    is given and differs), 3 BGP identifier, 4 optional parameter, 6 hold time; 0 for malformed
    capabilities. Unknown capabilities are ignored (RFC 5492 section 4).
    """
    if len(body) < 10:
        raise OpenError(0, b"", "OPEN shorter than its fixed fields")
    version, my_as, hold_time, router_id = struct.unpack("!BHH4s", body[:9])
    if version != 4:
        # RFC 4271 section 6.2: the data is the largest version we support, as 2 octets.
        raise OpenError(1, struct.pack("!H", 4), f"unsupported BGP version {version}")
    if hold_time in (1, 2):
        raise OpenError(6, b"", f"hold time {hold_time} is below 3 seconds (RFC 4271 section 4.2)")
    identifier = IPv4Address(router_id)
    if int(identifier) == 0:
        raise OpenError(3, b"", "BGP identifier 0.0.0.0 (RFC 6286 section 2.2)")
    caps = _parse_optional_parameters(body)
    asn = my_as
    four_octet = _CAP_FOUR_OCTET_AS in caps
    if four_octet:
        value = caps[_CAP_FOUR_OCTET_AS][0]
        if len(value) != 4:
            raise OpenError(0, b"", "4-octet AS capability is not 4 bytes")
        asn = int.from_bytes(value, "big")
    if asn == 0 or (expected_asn is not None and asn != expected_asn):
        raise OpenError(2, b"", f"peer AS {asn} is not the expected {expected_asn}")
    families = set()
    for value in caps.get(_CAP_MULTIPROTOCOL, []):
        if len(value) != 4:
            raise OpenError(0, b"", "multiprotocol capability is not 4 bytes")
        afi, _reserved, safi = struct.unpack("!HBB", value)
        family = Family.from_afi_safi(afi, safi)
        if family is not None:
            families.add(family)
    if _CAP_MULTIPROTOCOL not in caps:
        # RFC 4760 section 8: without the capability, only IPv4 unicast is spoken.
        families.add(Family.IPV4_UNICAST)
    graceful = _decode_graceful(caps[_CAP_GRACEFUL_RESTART][0]) if _CAP_GRACEFUL_RESTART in caps else None
    return Capabilities(
        asn=asn,
        router_id=identifier,
        hold_time=hold_time,
        families=frozenset(families),
        route_refresh=_CAP_ROUTE_REFRESH in caps,
        four_octet=four_octet,
        graceful_restart=graceful,
    )


def negotiate(local: Capabilities, remote: Capabilities) -> Negotiated:
    """Combine our OPEN with the peer's. Raises OpenError 3 on a BGP identifier collision inside an AS
    (RFC 6286 section 2.2) and 7 when no address family is common (RFC 5492 section 5)."""
    if local.asn == remote.asn and local.router_id == remote.router_id:
        raise OpenError(3, b"", f"peer uses our BGP identifier {local.router_id} inside AS {local.asn}")
    families = local.families & remote.families
    if not families:
        # RFC 5492 section 5: the data lists the capabilities we wanted (our multiprotocol ones).
        ours = sorted(local.families, key=lambda f: f.value)
        wanted = b"".join(struct.pack("!BBHBB", 1, 4, f.afi, 0, f.safi) for f in ours)
        raise OpenError(7, wanted, "no address family in common")
    four_octet = local.four_octet and remote.four_octet
    hold_time = min(local.hold_time, remote.hold_time)
    exa = _ExaNegotiated({"capability": {"aigp": False}})
    exa.local_as = _ExaASN(local.asn)
    exa.peer_as = _ExaASN(remote.asn)
    exa.asn4 = four_octet
    exa.families = _exa_families(families)
    exa.holdtime = _ExaHoldTime(hold_time)
    graceful = remote.graceful_restart if local.graceful_restart is not None else None
    return Negotiated(
        local=local,
        remote=remote,
        families=families,
        four_octet=four_octet,
        hold_time=hold_time,
        route_refresh=local.route_refresh and remote.route_refresh,
        graceful_restart=graceful,
        _exa=exa,
    )


# ====================================================================== small messages


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


# ====================================================================== UPDATE encode (via ExaBGP)

NVGRE_TUNNEL_TYPE = 9  # RFC 8365 section 5.1.3 / IANA BGP Tunnel Encapsulation Attribute Tunnel Types


@lru_cache(maxsize=65536)
def _rd_bytes(rd: str) -> bytes:
    """RFC 4364 section 4.2: type (2 octets) then administrator and assigned number."""
    kind, admin, number = parse_admin_pair(rd, "rd")
    layout = ("!HHI", "!HIH", "!HIH")[kind]
    return struct.pack(layout, kind, admin, number)


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


def _exa_router_mac(mac: str) -> _ExaExtCommunity:
    # RFC 9135 section 8.1: EVPN Router's MAC, type 0x06 sub-type 0x03, then the 6-byte MAC.
    # ExaBGP has no class for it, so it is built from its bytes.
    return _ExaExtCommunity.unpack(bytes.fromhex("0603" + mac.replace(":", "")))


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


def _attribute_signature(route: Route, attrs: PathAttributes) -> tuple:
    """Everything that ends up in the path attributes: routes with equal signatures share an UPDATE."""
    if isinstance(route, UnicastRoute):
        return (route.family, attrs, route.next_hop if route.prefix.version == 4 else None)
    mobility = (route.mobility_seq, route.sticky) if isinstance(route, MacIpRoute) else (0, False)
    return (route.family, attrs, route.route_targets, route.router_mac, mobility)


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


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
        value = head + b"\x30" + _mac_bytes(item.mac) + bytes([len(ip) * 8]) + ip + label
        return b"\x02" + bytes([len(value)]) + value
    prefix = item.prefix
    gateway = item.gateway_ip if full else (IPv4Address(0) if prefix.version == 4 else IPv6Address(0))
    # RFC 9136 section 3.1: prefix length, prefix, gateway IP (same width), MPLS Label.
    value = head + bytes([prefix.prefixlen]) + prefix.network_address.packed + gateway.packed + label
    return b"\x05" + bytes([len(value)]) + value


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
        attributes = _exa_attributes(route, attrs).pack(negotiated._exa)
        for next_hop, nlris in by_next_hop.items():
            packed_next_hop = next_hop.packed if next_hop is not None else b""
            messages += encode_raw_update(route.family, attributes, packed_next_hop, nlris)
    return messages


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


def _check_family(negotiated: Negotiated, family: Family) -> None:
    # RFC 4760 section 6: routes of a family the peer did not negotiate must not be sent.
    if family not in negotiated.families:
        raise RouteValueError("family", family.name, "not negotiated on this session")



# ====================================================================== UPDATE decode (from bytes)

TREAT_AS_WITHDRAW = "treat-as-withdraw"
ATTRIBUTE_DISCARD = "attribute-discard"
SESSION_RESET = "session-reset"

# RFC 4271 section 6.3 UPDATE Message Error subcodes used for a session reset.
SUBCODE_MALFORMED_ATTRIBUTE_LIST = 1
SUBCODE_OPTIONAL_ATTRIBUTE_ERROR = 9
SUBCODE_INVALID_NETWORK_FIELD = 10


@dataclass(frozen=True, slots=True)
class UpdateError:
    """One problem found in an UPDATE and what RFC 7606 says to do about it.

    action: "treat-as-withdraw" (the UPDATE's routes are withdrawn, session stays up),
    "attribute-discard" (the attribute is ignored) or "session-reset" (send NOTIFICATION 3/subcode).
    raw: hex of the offending bytes, for the log.
    """

    action: str
    reason: str
    raw: str
    subcode: int = 0


@dataclass(slots=True)
class UpdateResult:
    """A decoded UPDATE: announced paths, withdrawn keys, End-of-RIB family, errors.

    ignored counts EVPN NLRI of route types we do not model (1, 3, 4, ...), which RFC 7606 section 5.4
    says to discard.
    """

    announced: list[Path] = field(default_factory=list)
    withdrawn: list[RouteKey] = field(default_factory=list)
    eor: Family | None = None
    errors: list[UpdateError] = field(default_factory=list)
    ignored: int = 0

    @property
    def session_reset(self) -> UpdateError | None:
        """The error that requires a NOTIFICATION and session reset, if any."""
        for error in self.errors:
            if error.action == SESSION_RESET:
                return error
        return None


class _Reset(Exception):
    def __init__(self, subcode: int, reason: str, raw: bytes = b"") -> None:
        super().__init__(reason)
        self.error = UpdateError(SESSION_RESET, reason, raw.hex(), subcode)


# Attribute type codes (RFC 4271 section 5, RFC 4456, RFC 4760, RFC 4360).
_ORIGIN, _AS_PATH, _NEXT_HOP, _MED, _LOCAL_PREF, _ATOMIC_AGGREGATE, _AGGREGATOR = 1, 2, 3, 4, 5, 6, 7
_COMMUNITIES, _ORIGINATOR_ID, _CLUSTER_LIST, _MP_REACH, _MP_UNREACH, _EXT_COMMUNITIES = 8, 9, 10, 14, 15, 16
_AS4_PATH = 17  # RFC 6793

# RFC 7606 section 3 (c): the Optional bit must match the attribute's category, else treat-as-withdraw.
_OPTIONAL_BIT = {
    _ORIGIN: False, _AS_PATH: False, _NEXT_HOP: False, _LOCAL_PREF: False, _ATOMIC_AGGREGATE: False,
    _MED: True, _AGGREGATOR: True, _COMMUNITIES: True, _ORIGINATOR_ID: True, _CLUSTER_LIST: True,
    _MP_REACH: True, _MP_UNREACH: True, _EXT_COMMUNITIES: True, _AS4_PATH: True,
}

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
    router_mac: str | None = None


_NO_EXT = _ExtInfo()


def _as_path(value: bytes, width: int) -> tuple[AsSegment, ...] | None:
    """AS_PATH segments (RFC 4271 section 4.3), or None if malformed (RFC 7606 section 7.2)."""
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
            router_mac = value[pos + 2 : pos + 8].hex(":")
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
        attrs.next_hop = IPv4Address(value)
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
        attrs.originator_id = IPv4Address(value)
    elif code == _CLUSTER_LIST:
        if length == 0 or length % 4:
            return "CLUSTER_LIST length is not a non-zero multiple of 4 (RFC 7606 section 7.10)"
        attrs.cluster_list = tuple(IPv4Address(value[p : p + 4]) for p in range(0, length, 4))
    elif code == _EXT_COMMUNITIES:
        if length % 8:
            return "EXTENDED_COMMUNITIES length is not a multiple of 8 (RFC 7606 section 7.14)"
        attrs.ext = _ext_info(value)
    return None


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
    # With 32 bytes (RFC 2545 section 3) the first 16 are the global address we tunnel to.
    address: Address = IPv4Address(next_hop) if nh_length == 4 else IPv6Address(next_hop[:16])
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
        if code != _MP_REACH and code != _MP_UNREACH:
            attrs.passthrough.append(raw)
        optional = _OPTIONAL_BIT.get(code)
        if optional is not None and bool(flags & 0x80) != optional:
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
        elif code == _ATOMIC_AGGREGATE or code == _AGGREGATOR:
            error = _check_discardable(negotiated, code, value, raw)
        else:
            reason = _read_attribute(negotiated, attrs, code, value)
            error = UpdateError(TREAT_AS_WITHDRAW, reason, raw.hex()) if reason else None
            if reason:
                attrs.withdraw_reason = reason
        if error is not None:
            errors.append(error)
    if attrs.as4_path is not None and attrs.as_path is not None:
        attrs.as_path = _merge_as4_path(attrs.as_path, attrs.as4_path)
    return attrs


def _read_as4_path(negotiated: Negotiated, attrs: _Attrs, value: bytes, raw: bytes) -> UpdateError | None:
    # RFC 6793 section 4.2.2: AS4_PATH matters only on a 2-octet session (a 4-octet speaker ignores
    # it); a malformed one is discarded (section 6), the AS_PATH then stands alone.
    if negotiated.four_octet:
        return None
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


# ---------------------------------------------------------------------- NLRI

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
        ip = IPv4Address(data[s + 30 : label_at])
    else:
        ip = IPv6Address(data[s + 30 : label_at])
    return (
        2,
        rd,
        ZERO_ESI if esi == ZERO_ESI else esi,
        int.from_bytes(data[s + 18 : s + 22], "big"),
        data[s + 23 : s + 29].hex(":"),
        ip,
        # RFC 8365 section 5.1.3: the 24-bit VSID is the whole label field (no shift).
        int.from_bytes(data[label_at : label_at + 3], "big"),
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


def _treat_as_withdraw(attrs: _Attrs, nlri: list, result: UpdateResult) -> None:
    """RFC 7606 section 2: every route the UPDATE announced is handled as withdrawn."""
    result.withdrawn.extend(UnicastKey(p) for p in nlri)
    if attrs.reach is not None:
        keys, ignored = _keys(attrs.reach[0], attrs.reach[2], result.errors)
        result.withdrawn.extend(keys)
        result.ignored += ignored


# ====================================================================== reference decoder (ExaBGP)


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
            rd=rd, mac=nlri.mac.pack().hex(":"), ip=nlri.ip.top() if nlri.ip else None, vsid=vsid,
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


# ====================================================================== raw UPDATEs for the route reflector
# A reflector forwards what it receives (RFC 4456 section 8) and needs only each route's key to run
# best-path selection; it never needs the per-route objects. These two functions split an UPDATE into
# raw attribute bytes + (key, raw NLRI bytes) pairs and rebuild UPDATEs from them.


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
        result.errors.append(reset.error)
    return result


def _decode_raw_update(negotiated: Negotiated, body: bytes, result: RawUpdate) -> None:
    withdrawn_end, attributes_start, attributes_end = _update_sections(body)
    result.withdrawn.extend(_raw_prefixes(body[2:withdrawn_end], Family.IPV4_UNICAST))
    attrs = _walk_attributes(negotiated, body, attributes_start, attributes_end, result.errors)
    if attrs.unreach is not None:
        family, data = attrs.unreach
        if not data and attrs.count == 1 and withdrawn_end == 2 and attributes_end == len(body):
            result.eor = family
            return
        result.withdrawn.extend(_raw_nlri(family, data, result.errors)[0])
    if withdrawn_end == 2 and attributes_start == attributes_end == len(body):
        result.eor = Family.IPV4_UNICAST
        return
    announced: list[RawNlri] = []
    if attributes_end < len(body) and Family.IPV4_UNICAST in negotiated.families:
        result.family = Family.IPV4_UNICAST
        announced = _raw_prefixes(body[attributes_end:], Family.IPV4_UNICAST)
    if attrs.reach is not None:
        result.family = attrs.reach[0]
        result.next_hop = attrs.reach_next_hop
        more, malformed = _raw_nlri(attrs.reach[0], attrs.reach[2], result.errors)
        announced.extend(more)
        if malformed:
            attrs.withdraw_reason = attrs.withdraw_reason or "malformed EVPN NLRI"
    if not announced:
        return
    if attrs.origin is None or attrs.as_path is None:
        attrs.withdraw_reason = attrs.withdraw_reason or "missing ORIGIN or AS_PATH (RFC 7606 section 3 d)"
        result.errors.append(UpdateError(TREAT_AS_WITHDRAW, attrs.withdraw_reason, ""))
    if attrs.withdraw_reason is not None:
        result.withdrawn.extend(announced)
        return
    result.announced = announced
    result.attributes = b"".join(attrs.passthrough)
    result.attrs = PathAttributes(
        origin=Origin(attrs.origin), as_path=attrs.as_path, med=attrs.med, local_pref=attrs.local_pref,
        originator_id=attrs.originator_id, cluster_list=attrs.cluster_list, communities=attrs.communities,
        tunnel_type=attrs.ext.tunnel_type,
    )


def _attribute(flags: int, code: int, value: bytes) -> bytes:
    if len(value) > 255:
        return struct.pack("!BBH", flags | 0x10, code, len(value)) + value
    return struct.pack("!BBB", flags & ~0x10, code, len(value)) + value


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

