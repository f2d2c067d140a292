"""Typed, immutable BGP route values: EVPN type 2 and 5 for NVGRE, IPv4/IPv6 unicast.

Nothing here knows the wire format (that is bgp/wire/). Constructors validate and normalise their
input and raise RouteValueError naming the field. Each route has a `.key`: the NLRI identity used for
announce/withdraw and RIB indexing. What is not part of the key (label/VSID, next hop, ESI, gateway,
communities) is a route attribute: a new value under the same key replaces the old one.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import NamedTuple

from nvfabric.bgp.errors import RouteValueError
from nvfabric.bgp.mac import Mac, MacError

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

VSID_MAX = (1 << 24) - 1  # RFC 7637 section 3.2 / RFC 8365 5.1.3: the VSID is 24 bits
ZERO_ESI = bytes(10)  # RFC 7432 section 5: ESI 0 means single-homed
IPV4_ANY = IPv4Address(0)
IPV6_ANY = IPv6Address(0)


class _KeepsHash:
    """An address that computes its hash once. ipaddress hashes the hex text of the integer at every call,
    and a received route's addresses are looked up many times on their way to the kernel (in the agent, some 60
    hashes per remote change); equal to and hashed as the plain kind, so either finds the other in a dict, and
    shown as the plain kind."""

    __slots__ = ()

    def __init__(self, address: object) -> None:
        super().__init__(address)  # type: ignore[call-arg]
        self._hash = super().__hash__()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined, no-any-return]

    def __repr__(self) -> str:
        return f"{type(self).__mro__[2].__name__}('{self}')"


class HashedIPv4Address(_KeepsHash, IPv4Address):
    __slots__ = ("_hash",)


class HashedIPv6Address(_KeepsHash, IPv6Address):
    __slots__ = ("_hash",)


class Family(enum.Enum):
    """Address families we speak (RFC 4760 AFI/SAFI numbers)."""

    IPV4_UNICAST = (1, 1)
    IPV6_UNICAST = (2, 1)
    L2VPN_EVPN = (25, 70)  # RFC 7432 section 7

    @property
    def afi(self) -> int:
        return self.value[0]

    @property
    def safi(self) -> int:
        return self.value[1]

    @classmethod
    def from_afi_safi(cls, afi: int, safi: int) -> Family | None:
        """The family for an (AFI, SAFI) pair, or None if we do not speak it."""
        return _FAMILIES.get((afi, safi))


_FAMILIES = {f.value: f for f in Family}


class Origin(enum.IntEnum):
    """ORIGIN attribute values (RFC 4271 section 5.1.1); lower is preferred."""

    IGP = 0
    EGP = 1
    INCOMPLETE = 2


# ---------------------------------------------------------------- parsing of the textual forms


class AdminPair(NamedTuple):
    """A parsed "administrator:assigned number" value, as used by RDs and route targets.

    kind is the RD type / extended community type (RFC 4364 section 4.2, RFC 4360 section 3):
    0 = 2-octet AS : 4-octet number, 1 = IPv4 address : 2-octet number, 2 = 4-octet AS : 2-octet number.
    """

    kind: int
    admin: int
    number: int


def parse_admin_pair(text: str, field_name: str) -> AdminPair:
    """Parse "65000:5001", "198.51.100.11:5001" or "4200000000:7"; raise RouteValueError naming field_name."""
    if not isinstance(text, str) or text.count(":") != 1:
        raise RouteValueError(field_name, text, "expected 'ASN:number' or 'IPv4:number'")
    admin_text, number_text = text.split(":")
    if not (number_text.isascii() and number_text.isdigit()):  # (isdigit alone takes '²', which int() refuses)
        raise RouteValueError(field_name, text, "assigned number must be a decimal integer")
    number = int(number_text)
    if "." in admin_text:
        try:
            admin = int(IPv4Address(admin_text))
        except ValueError:
            raise RouteValueError(field_name, text, "administrator is not an IPv4 address") from None
        kind, number_max = 1, 0xFFFF
    elif admin_text.isascii() and admin_text.isdigit():
        admin = int(admin_text)
        if admin > 0xFFFFFFFF:
            raise RouteValueError(field_name, text, "AS number exceeds 32 bits")
        kind, number_max = (0, 0xFFFFFFFF) if admin <= 0xFFFF else (2, 0xFFFF)
    else:
        raise RouteValueError(field_name, text, "administrator must be an AS number or an IPv4 address")
    if number > number_max:
        raise RouteValueError(field_name, text, f"assigned number exceeds {number_max} for this form")
    return AdminPair(kind, admin, number)


def format_admin_pair(kind: int, admin: int, number: int) -> str:
    """Inverse of parse_admin_pair."""
    if kind == 1:
        return f"{IPv4Address(admin)}:{number}"
    return f"{admin}:{number}"


def _mac(value: object, field_name: str = "mac") -> Mac:
    try:
        return Mac(value)
    except MacError as exc:
        raise RouteValueError(field_name, value, exc.problem) from None


def _address(value: object, field_name: str, allow_none: bool = False) -> Address | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (IPv4Address, IPv6Address)):
        return value
    try:
        address = ipaddress.ip_address(value)  # type: ignore[arg-type]
    except ValueError:
        raise RouteValueError(field_name, value, "expected an IPv4 or IPv6 address") from None
    if address.version == 4:
        return HashedIPv4Address(address._ip)
    return address if address.scope_id else HashedIPv6Address(address._ip)


def _network(value: object) -> Network:
    if isinstance(value, (IPv4Network, IPv6Network)):
        return value
    try:
        return ipaddress.ip_network(value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise RouteValueError("prefix", value, "expected an IP network with no host bits") from None


def _uint(value: object, field_name: str, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise RouteValueError(field_name, value, f"expected an integer 0..{maximum}")
    return value


def _route_targets(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        raise RouteValueError("route_targets", value, "expected a sequence of 'ASN:number' strings")
    # Route targets are a set (RFC 4360 section 4, RFC 4364 section 4.3.1); a canonical order, the
    # one the decoder produces, keeps equal routes equal whatever order a peer sent them in.
    pairs = {parse_admin_pair(target, "route_targets") for target in value}  # type: ignore[union-attr]
    return canonical_route_targets(pairs)


def canonical_route_targets(pairs: Iterable[tuple[int, int, int]]) -> tuple[str, ...]:
    """(kind, administrator, number) triples -> route target strings, sorted and without repeats."""
    return tuple(format_admin_pair(*pair) for pair in sorted(set(pairs)))


def _set(obj: object, name: str, value: object) -> None:
    """Normalise a field of a frozen dataclass during __post_init__."""
    object.__setattr__(obj, name, value)


def _check_evpn_common(route: MacIpRoute | PrefixRoute) -> None:
    parse_admin_pair(route.rd, "rd")
    _uint(route.vsid, "vsid", VSID_MAX)
    _uint(route.ethernet_tag, "ethernet_tag", 0xFFFFFFFF)
    _set(route, "next_hop", _address(route.next_hop, "next_hop"))
    _set(route, "route_targets", _route_targets(route.route_targets))
    if route.router_mac is not None:
        _set(route, "router_mac", _mac(route.router_mac, "router_mac"))
    if not isinstance(route.esi, bytes) or len(route.esi) != 10:
        raise RouteValueError("esi", route.esi, "expected 10 bytes (RFC 7432 section 5)")


# ---------------------------------------------------------------- keys


class MacIpKey(NamedTuple):
    """NLRI identity of a type-2 route. RFC 7432 section 7.2: only the Ethernet Tag, MAC and IP (with
    the RD) are part of the route key; ESI and labels (our VSID) are route attributes."""

    rd: str
    ethernet_tag: int
    mac: Mac
    ip: Address | None

    @property
    def family(self) -> Family:
        return Family.L2VPN_EVPN


class PrefixKey(NamedTuple):
    """NLRI identity of a type-5 route. RFC 9136 section 3.2: RD, Ethernet Tag, prefix length and prefix
    form the key; ESI, gateway IP and label are attributes."""

    rd: str
    ethernet_tag: int
    prefix: Network

    @property
    def family(self) -> Family:
        return Family.L2VPN_EVPN


class UnicastKey(NamedTuple):
    """NLRI identity of an IPv4/IPv6 unicast route: the prefix (RFC 4271 section 9.1)."""

    prefix: Network

    @property
    def family(self) -> Family:
        return Family.IPV4_UNICAST if self.prefix.version == 4 else Family.IPV6_UNICAST


class OpaqueEvpnKey(NamedTuple):
    """NLRI identity of an EVPN route type we do not model (1, 3, 4, 6, ...), so a route reflector can
    forward and withdraw it. value is the route's bytes without its label where RFC 7432 makes the
    label an attribute (type 1, section 7.1); for other types the whole route."""

    route_type: int
    value: bytes

    @property
    def family(self) -> Family:
        return Family.L2VPN_EVPN


RouteKey = MacIpKey | PrefixKey | UnicastKey | OpaqueEvpnKey


# ---------------------------------------------------------------- routes


@dataclass(frozen=True, slots=True)
class MacIpRoute:
    """EVPN type 2, MAC/IP Advertisement (RFC 7432 section 7.2) for NVGRE (RFC 8365 section 5.1.3).

    vsid travels in the 24-bit MPLS Label1 field as a raw value; next_hop is the host's provider
    address; mobility_seq 0 with sticky False means no MAC Mobility community (RFC 7432 section 7.7).
    """

    rd: str
    mac: Mac
    ip: Address | None
    vsid: int
    next_hop: Address
    route_targets: tuple[str, ...] = ()
    router_mac: Mac | None = None
    mobility_seq: int = 0
    sticky: bool = False
    ethernet_tag: int = 0
    esi: bytes = ZERO_ESI

    def __post_init__(self) -> None:
        _set(self, "mac", _mac(self.mac))
        _set(self, "ip", _address(self.ip, "ip", allow_none=True))
        _check_evpn_common(self)
        _uint(self.mobility_seq, "mobility_seq", 0xFFFFFFFF)
        if not isinstance(self.sticky, bool):
            raise RouteValueError("sticky", self.sticky, "expected a bool")

    @property
    def family(self) -> Family:
        return Family.L2VPN_EVPN

    @property
    def key(self) -> MacIpKey:
        return MacIpKey(self.rd, self.ethernet_tag, self.mac, self.ip)


@dataclass(frozen=True, slots=True)
class PrefixRoute:
    """EVPN type 5, IP Prefix (RFC 9136 section 3) with the VSID in the label field.

    gateway_ip defaults to 0.0.0.0 or :: (the prefix is reached via next_hop and router_mac,
    RFC 9136 section 4.4.1 interface-less model).
    """

    rd: str
    prefix: Network
    vsid: int
    next_hop: Address
    route_targets: tuple[str, ...] = ()
    router_mac: Mac | None = None
    gateway_ip: Address | None = None
    ethernet_tag: int = 0
    esi: bytes = ZERO_ESI

    def __post_init__(self) -> None:
        _set(self, "prefix", _network(self.prefix))
        gateway = self.gateway_ip
        if gateway is None:
            gateway = IPV4_ANY if self.prefix.version == 4 else IPV6_ANY
        gateway = _address(gateway, "gateway_ip")
        if gateway.version != self.prefix.version:
            # RFC 9136 section 3.1: the GW IP has the same family (and length) as the prefix.
            raise RouteValueError("gateway_ip", gateway, "must be of the same IP version as prefix")
        _set(self, "gateway_ip", gateway)
        _check_evpn_common(self)

    @property
    def family(self) -> Family:
        return Family.L2VPN_EVPN

    @property
    def key(self) -> PrefixKey:
        return PrefixKey(self.rd, self.ethernet_tag, self.prefix)


@dataclass(frozen=True, slots=True)
class UnicastRoute:
    """An IPv4 or IPv6 unicast route (gateway upstream). An IPv4 prefix may have an IPv6 next hop
    only via RFC 8950, which we do not negotiate, so the versions must match."""

    prefix: Network
    next_hop: Address

    def __post_init__(self) -> None:
        _set(self, "prefix", _network(self.prefix))
        next_hop = _address(self.next_hop, "next_hop")
        if next_hop.version != self.prefix.version:
            raise RouteValueError("next_hop", next_hop, "must be of the same IP version as prefix")
        _set(self, "next_hop", next_hop)

    @property
    def family(self) -> Family:
        return Family.IPV4_UNICAST if self.prefix.version == 4 else Family.IPV6_UNICAST

    @property
    def key(self) -> UnicastKey:
        return UnicastKey(self.prefix)


Route = MacIpRoute | PrefixRoute | UnicastRoute


def _unchecked_constructor(cls):
    """A positional constructor that skips validation, for the decoder: its byte parser already
    guarantees each field's range and normal form, and validation would cost more than the parse.
    Generated source (as dataclasses does for __init__): a loop over the fields costs a third more."""
    names = [f.name for f in fields(cls)]
    source = (
        f"def unchecked({', '.join(names)}):\n    obj = new(cls)\n"
        + "".join(f"    setter(obj, {name!r}, {name})\n" for name in names)
        + "    return obj\n"
    )
    namespace = {"new": object.__new__, "setter": object.__setattr__, "cls": cls}
    exec(source, namespace)  # noqa: S102 - the source is built from our own field names only
    return staticmethod(namespace["unchecked"])


MacIpRoute.unchecked = _unchecked_constructor(MacIpRoute)
PrefixRoute.unchecked = _unchecked_constructor(PrefixRoute)
UnicastRoute.unchecked = _unchecked_constructor(UnicastRoute)


# ---------------------------------------------------------------- path attributes and paths


class AsSegment(NamedTuple):
    """One AS_PATH segment (RFC 4271 section 4.3): kind 1 = AS_SET, 2 = AS_SEQUENCE."""

    kind: int
    asns: tuple[int, ...]


AS_SET = 1
AS_SEQUENCE = 2


@dataclass(frozen=True, slots=True)
class PathAttributes:
    """The attributes best-path selection compares, shared by all routes of one UPDATE.

    local_pref None means absent (compared as 100, the usual default); med None means absent,
    compared as 0 (RFC 4271 section 9.1.2.2 c). communities are RFC 1997 32-bit values.
    tunnel_type is the received BGP Encapsulation tunnel type (RFC 9012; 9 = NVGRE), not compared;
    None on an EVPN route we send means NVGRE.
    """

    origin: Origin = Origin.IGP
    as_path: tuple[AsSegment, ...] = ()
    med: int | None = None
    local_pref: int | None = None
    originator_id: IPv4Address | None = None
    cluster_list: tuple[IPv4Address, ...] = ()
    communities: tuple[int, ...] = ()
    tunnel_type: int | None = None

    def __post_init__(self) -> None:
        _set(self, "origin", Origin(self.origin))
        if self.med is not None:
            _uint(self.med, "med", 0xFFFFFFFF)
        if self.local_pref is not None:
            _uint(self.local_pref, "local_pref", 0xFFFFFFFF)
        for segment in self.as_path:
            if not isinstance(segment, AsSegment) or segment.kind not in (AS_SET, AS_SEQUENCE):
                raise RouteValueError("as_path", segment, "expected AsSegment(kind 1 or 2, asns)")
            for asn in segment.asns:
                _uint(asn, "as_path", 0xFFFFFFFF)

    @property
    def as_path_length(self) -> int:
        """RFC 4271 section 9.1.2.2 a: an AS_SET counts as 1, each AS in a sequence as 1."""
        return sum(len(s.asns) if s.kind == AS_SEQUENCE else 1 for s in self.as_path)

    @property
    def neighbor_as(self) -> int | None:
        """The AS that sent us the route (first AS of the path), for the MED comparison rule."""
        if self.as_path and self.as_path[0].kind == AS_SEQUENCE and self.as_path[0].asns:
            return self.as_path[0].asns[0]
        return None


DEFAULT_ATTRIBUTES = PathAttributes()


@dataclass(frozen=True, slots=True)
class PeerRef:
    """Where a path came from: the peer's transport address, BGP identifier and AS."""

    address: Address
    router_id: IPv4Address
    asn: int
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A PeerRef keys every candidate path in the RIB; ipaddress hashes in Python, so hash once.
        _set(self, "_hash", hash((self.address, self.router_id, self.asn)))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True)
class Path:
    """A route with its path attributes and source; source None means locally originated."""

    route: Route
    attrs: PathAttributes = DEFAULT_ATTRIBUTES
    source: PeerRef | None = None

    @property
    def key(self) -> RouteKey:
        return self.route.key

    @property
    def family(self) -> Family:
        return self.route.family


Path.unchecked = _unchecked_constructor(Path)


__all__ = [
    "AS_SEQUENCE",
    "AS_SET",
    "Address",
    "AdminPair",
    "AsSegment",
    "DEFAULT_ATTRIBUTES",
    "Family",
    "MacIpKey",
    "MacIpRoute",
    "Network",
    "OpaqueEvpnKey",
    "Origin",
    "Path",
    "PathAttributes",
    "PeerRef",
    "PrefixKey",
    "PrefixRoute",
    "Route",
    "RouteKey",
    "RouteValueError",
    "UnicastKey",
    "UnicastRoute",
    "VSID_MAX",
    "ZERO_ESI",
    "canonical_route_targets",
    "format_admin_pair",
    "parse_admin_pair",
]
