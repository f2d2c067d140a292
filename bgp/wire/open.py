"""OPEN (RFC 4271 section 4.2) and capabilities (RFC 5492): what each side offers (Capabilities),
encoding ours (built by ExaBGP), decoding the peer's with the RFC 4271 section 6.2 error subcodes, and
what the session then supports (negotiate -> Negotiated).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from nvfabric.bgp.errors import OpenError, RouteValueError
from nvfabric.bgp.routes import Family
from nvfabric.bgp.wire import exa

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
    _exa: object = field(repr=False, compare=False)  # exa.negotiated_state

    @property
    def ibgp(self) -> bool:
        return self.local.asn == self.remote.asn

    @property
    def peer_asn(self) -> int:
        return self.remote.asn

    @property
    def peer_router_id(self) -> IPv4Address:
        return self.remote.router_id


def encode_open(caps: Capabilities) -> bytes:
    """The whole OPEN message (with header). A 4-octet AS is sent as AS_TRANS (RFC 6793 section 4.1)."""
    my_as = caps.asn if caps.asn <= 0xFFFF else AS_TRANS
    return exa.open_message(caps, my_as)


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
    graceful = remote.graceful_restart if local.graceful_restart is not None else None
    return Negotiated(
        local=local,
        remote=remote,
        families=families,
        four_octet=four_octet,
        hold_time=hold_time,
        route_refresh=local.route_refresh and remote.route_refresh,
        graceful_restart=graceful,
        _exa=exa.negotiated_state(local.asn, remote.asn, four_octet, families, hold_time),
    )

