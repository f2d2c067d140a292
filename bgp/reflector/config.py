"""Typed route reflector configuration from YAML (docs/rr.md); every error names its field.

The readers are bgp/config.py's (`Reader` walks a mapping and names fields, `read_api` the API section);
this module adds what only a reflector has: the cluster, client flags, and per-neighbor route-target
filters, outbound (`route_targets`: what it is sent) and inbound (`announce_route_targets`: what it
may announce). Max-prefix and the session bounds are the speaker's (bgp/config.py).
`neighbors` is the spelling, `neighbours` accepted as an alias.
`speaker_config()` derives the `SpeakerConfig` the sessions run with.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from nvfabric.bgp.config import (
    DEFAULT_MAX_OPENING,
    DEFAULT_MAX_PREFIX,
    DEFAULT_OPEN_HOLD_TIME,
    DEFAULT_WRITE_BUFFER_LIMIT,
    FAMILY_NAMES,
    ConfigError,
    DynamicNeighbors,
    GracefulRestartConfig,
    Listen,
    MaxPrefix,
    MaxPrefixAction,
    Neighbor,
    SpeakerConfig,
    Reader,
    read_api,
    read_bfd,
    read_limits,
    read_max_connections,
    read_max_prefix,
    read_password,
    read_yaml,
)
from nvfabric.bgp.config import parse as parse_speaker
from nvfabric.bgp.errors import RouteValueError
from nvfabric.bgp.routes import Family, parse_admin_pair
from nvfabric.service.config import ApiConfig

DEFAULT_API_LISTEN = "127.0.0.1:8179"

ALL_FAMILIES = (Family.L2VPN_EVPN, Family.IPV4_UNICAST, Family.IPV6_UNICAST)


__all__ = ["MaxPrefix", "MaxPrefixAction", "PeerPolicy", "ReflectorConfig", "ReflectorNeighbor", "load", "parse"]


@dataclass(frozen=True)
class PeerPolicy:
    """What the reflector does with one neighbour (or every neighbour of a dynamic prefix)."""

    client: bool = True
    max_prefix: MaxPrefix = DEFAULT_MAX_PREFIX
    # EVPN routes sent to this peer must carry one of these route targets (8-byte extended community
    # values, RFC 4360 section 4); None sends everything. Unicast routes are not filtered.
    route_targets: frozenset[bytes] | None = None
    # EVPN routes this peer may announce: every route target they carry must be one of these (a route
    # with one foreign target would reach that tenant); others are treated as withdrawn and counted.
    # None accepts everything. Unicast routes are not filtered.
    announce_route_targets: frozenset[bytes] | None = None


@dataclass(frozen=True)
class ReflectorNeighbor:
    """A configured neighbour (`address`) or a dynamic prefix (`prefix`): exactly one of the two."""

    session: Neighbor | DynamicNeighbors
    policy: PeerPolicy

    @property
    def name(self) -> str:
        s = self.session
        return s.address if isinstance(s, Neighbor) else str(s.prefix)


@dataclass(frozen=True)
class ReflectorConfig:
    asn: int
    router_id: str
    cluster_id: str
    listen: Listen
    hold_time: int = 90
    families: tuple[Family, ...] = ALL_FAMILIES
    neighbors: tuple[ReflectorNeighbor, ...] = ()
    graceful_restart: GracefulRestartConfig = field(default_factory=GracefulRestartConfig)
    # no token, no API (as the agent's and the gateway's): the reflector runs from its configuration
    api: ApiConfig = field(default_factory=lambda: ApiConfig(DEFAULT_API_LISTEN))
    write_buffer_limit: int = DEFAULT_WRITE_BUFFER_LIMIT
    open_hold_time: int = DEFAULT_OPEN_HOLD_TIME
    max_opening: int = DEFAULT_MAX_OPENING

    def speaker_config(self) -> SpeakerConfig:
        return SpeakerConfig(
            asn=self.asn,
            router_id=self.router_id,
            hold_time=self.hold_time,
            families=self.families,
            listen=self.listen,
            neighbors=tuple(n.session for n in self.neighbors if isinstance(n.session, Neighbor)),
            dynamic_neighbors=tuple(n.session for n in self.neighbors if isinstance(n.session, DynamicNeighbors)),
            graceful_restart=self.graceful_restart,
            write_buffer_limit=self.write_buffer_limit,
            open_hold_time=self.open_hold_time,
            max_opening=self.max_opening,
        )

    def policy_for(self, address: str) -> PeerPolicy:
        """A configured address first, then the first dynamic prefix holding it (the listener's order)."""
        ip = ipaddress.ip_address(address)
        for n in self.neighbors:
            if isinstance(n.session, Neighbor) and n.session.address == str(ip):
                return n.policy
        for n in self.neighbors:
            if isinstance(n.session, DynamicNeighbors) and ip in n.session.prefix:
                return n.policy
        return PeerPolicy()


def route_target_bytes(text: str, field_name: str) -> bytes:
    """"65000:5001" -> the 8-byte route target extended community (RFC 4360 section 4, RFC 5668)."""
    try:
        kind, admin, number = parse_admin_pair(text, field_name)
    except RouteValueError as err:
        raise ConfigError(field_name, err.reason) from None
    if kind == 0:
        return bytes([0x00, 0x02]) + admin.to_bytes(2, "big") + number.to_bytes(4, "big")
    return bytes([kind, 0x02]) + admin.to_bytes(4, "big") + number.to_bytes(2, "big")


def parse(data: object) -> ReflectorConfig:
    top = Reader(data, "")
    asn = top.integer("asn", 1, 0xFFFFFFFF)
    router_id = top.address("router_id", version=4)
    cluster_id = top.address("cluster_id", router_id, version=4)
    hold_time = top.integer("hold_time", 0, 0xFFFF, 90)
    if hold_time in (1, 2):
        raise ConfigError("hold_time", "must be 0 or at least 3 seconds (RFC 4271 4.2)")
    families = []
    for path, name in top.items("families"):
        if name not in FAMILY_NAMES:
            raise ConfigError(path, f"unknown family {name!r}; known: {', '.join(FAMILY_NAMES)}")
        families.append(FAMILY_NAMES[name])
    r = Reader(top.get("listen", dict), "listen")
    listen = Listen(r.address("address"), r.integer("port", 0, 65535, 179))
    r.done()
    key = top.spelling("neighbors", "neighbours")
    neighbors = tuple(_neighbor(Reader(v, p), asn) for p, v in top.items(key))
    seen: set[str] = set()
    for i, n in enumerate(neighbors):
        if n.name in seen:
            raise ConfigError(f"{key}[{i}]", f"{n.name} is configured twice")
        seen.add(n.name)
    gr = GracefulRestartConfig()
    if top.get("graceful_restart", dict, None) is not None:
        # The speaker's own reader for the section (same fields, same errors, one definition).
        gr = parse_speaker({"asn": asn, "router_id": router_id,
                            "graceful_restart": top.data["graceful_restart"]}).graceful_restart
    api = read_api(top, DEFAULT_API_LISTEN)
    limits = read_limits(top)
    top.done()
    return ReflectorConfig(
        asn=asn, router_id=router_id, cluster_id=cluster_id, listen=listen, hold_time=hold_time,
        families=tuple(dict.fromkeys(families)) or ALL_FAMILIES, neighbors=neighbors, graceful_restart=gr,
        api=api, **limits,
    )


def load(path: str | Path) -> ReflectorConfig:
    return parse(read_yaml(path))


def _neighbor(r: Reader, local_asn: int) -> ReflectorNeighbor:
    if ("address" in r.data) == ("prefix" in r.data):
        raise ConfigError(r.path, "needs exactly one of `address` (a neighbour) or `prefix` (dynamic neighbours)")
    asn = r.integer("asn", 1, 0xFFFFFFFF)
    if asn != local_asn:
        # RFC 4456 reflects between iBGP peers; eBGP would need next-hop and AS_PATH rewriting.
        raise ConfigError(r.name("asn"), f"{asn} is not our AS {local_asn}: a route reflector has iBGP neighbours only")
    session: Neighbor | DynamicNeighbors
    max_prefix = read_max_prefix(r)
    if "prefix" in r.data:
        raw = r.get("prefix", str)
        try:
            prefix = ipaddress.ip_network(raw, strict=True)
        except ValueError as err:
            raise ConfigError(r.name("prefix"), str(err)) from None
        session = DynamicNeighbors(prefix, asn, read_password(r), max_prefix, read_max_connections(r), read_bfd(r))
    else:
        session = Neighbor(
            address=r.address("address"),
            asn=asn,
            port=r.integer("port", 1, 65535, 179),
            passive=r.get("passive", bool, False),
            md5_password=read_password(r),
            local_address=r.address("local_address", None),
            description=r.get("description", str, ""),
            max_prefix=max_prefix,
            bfd=read_bfd(r),
        )
    policy = PeerPolicy(client=r.get("client", bool, True), max_prefix=max_prefix,
                        route_targets=_route_targets(r, "route_targets"),
                        announce_route_targets=_route_targets(r, "announce_route_targets"))
    r.done()
    return ReflectorNeighbor(session, policy)


def _route_targets(r: Reader, key: str) -> frozenset[bytes] | None:
    if r.get(key, list, None) is None:
        return None
    return frozenset(route_target_bytes(v, p) if isinstance(v, str) else _bad_rt(p, v) for p, v in r.items(key))


def _bad_rt(path: str, value: object) -> bytes:
    raise ConfigError(path, f"expected 'ASN:NUMBER' or 'IPv4:NUMBER', got {value!r}")
