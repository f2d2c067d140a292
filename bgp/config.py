"""Typed BGP speaker configuration from YAML; every error names the field (`neighbors[1].asn: ...`).

Parsed once at the boundary into frozen dataclasses; nothing downstream reads a dict. The file format is
documented in docs/bgp.md ("Configuration"). The readers every daemon's configuration shares live here
too: `Reader` (walk a mapping, name each field), `read_peers` (configured BGP peers), `read_api` (the
REST API section), `read_yaml`.

Spelling: `neighbors` and `dynamic_neighbors`; the British `neighbours` and `dynamic_neighbours` are
accepted as aliases (one or the other in a file, not both).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from nvfabric.bgp.bfd import BfdAuth, BfdConfig
from nvfabric.bgp.errors import RouteValueError
from nvfabric.bgp.routes import Family, MacIpRoute, PrefixRoute, Route, UnicastRoute
from nvfabric.service.config import ApiConfig, check_listen

FAMILY_NAMES = {
    "l2vpn-evpn": Family.L2VPN_EVPN,
    "ipv4-unicast": Family.IPV4_UNICAST,
    "ipv6-unicast": Family.IPV6_UNICAST,
}


class ConfigError(ValueError):
    """A configuration value is missing or wrong; `field` is its path in the file."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# Bounds every daemon applies to its sessions unless configured otherwise (documented in docs/bgp.md).
DEFAULT_MAX_PREFIX_LIMIT = 500_000  # routes from one peer: a whole fabric's table, far below memory trouble
DEFAULT_MAX_PREFIX_RESTART = 30  # seconds before a peer torn down for max-prefix may come back
DEFAULT_WRITE_BUFFER_LIMIT = 1 << 20  # bytes queued for one peer before writing pauses
DEFAULT_OPEN_HOLD_TIME = 30  # seconds a new connection may take to send its OPEN
DEFAULT_MAX_OPENING = 64  # connections in OpenSent/OpenConfirm at once (accepted ones beyond are refused)
DEFAULT_MAX_CONNECTIONS = 256  # connections from one dynamic-neighbour prefix


class MaxPrefixAction(Enum):
    WARN = "warn"  # log and count, keep the session
    TEARDOWN = "teardown"  # NOTIFICATION Cease / Maximum Number of Prefixes Reached (RFC 4486 section 4)


@dataclass(frozen=True)
class MaxPrefix:
    """How many routes one peer may send us. On TEARDOWN the peer is not dialled nor accepted again for
    `restart` seconds (0: at once)."""

    limit: int = DEFAULT_MAX_PREFIX_LIMIT
    action: MaxPrefixAction = MaxPrefixAction.TEARDOWN
    restart: int = DEFAULT_MAX_PREFIX_RESTART


DEFAULT_MAX_PREFIX = MaxPrefix()


@dataclass(frozen=True)
class GracefulRestartConfig:
    """RFC 4724. `restart_time` is what we ask peers to wait for us; `forwarding_preserved` sets the F bit
    (our dataplane keeps forwarding across a restart). `stale_time` caps how long we, as helper, keep a
    restarted peer's stale routes while waiting for its End-of-RIB."""

    enabled: bool = True
    restart_time: int = 120
    forwarding_preserved: bool = True
    stale_time: int = 360


@dataclass(frozen=True)
class Neighbor:
    address: str
    asn: int
    port: int = 179
    passive: bool = False
    md5_password: str | None = None
    local_address: str | None = None
    description: str = ""
    max_prefix: MaxPrefix = DEFAULT_MAX_PREFIX
    bfd: BfdConfig | None = None
    # the device the session's socket is bound to (SO_BINDTODEVICE): a VRF's, for a peer in its routing table
    bind_device: str | None = None


@dataclass(frozen=True)
class DynamicNeighbors:
    """Accept any peer inside `prefix` (passive only; RFC 4271 leaves who may connect to configuration),
    at most `max_connections` connections from the prefix at once."""

    prefix: ipaddress.IPv4Network | ipaddress.IPv6Network
    asn: int
    md5_password: str | None = None
    max_prefix: MaxPrefix = DEFAULT_MAX_PREFIX
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # A BFD session per peer of the prefix, from its first Established until the peer is forgotten.
    bfd: BfdConfig | None = None


@dataclass(frozen=True)
class Listen:
    address: str
    port: int = 179


@dataclass(frozen=True)
class SpeakerConfig:
    asn: int
    router_id: str
    hold_time: int = 90
    families: tuple[Family, ...] = (Family.L2VPN_EVPN,)
    listen: Listen | None = None
    neighbors: tuple[Neighbor, ...] = ()
    dynamic_neighbors: tuple[DynamicNeighbors, ...] = ()
    graceful_restart: GracefulRestartConfig = field(default_factory=GracefulRestartConfig)
    # Route targets to import, as "ASN:NN" strings; empty imports everything.
    import_route_targets: frozenset[str] = frozenset()
    # Locally originated routes (what `nvfabric bgp speak` announces).
    routes: tuple[Route, ...] = ()
    # False: routes received are counted and dropped, never stored (a session we only announce on).
    accept_routes: bool = True
    write_buffer_limit: int = DEFAULT_WRITE_BUFFER_LIMIT
    open_hold_time: int = DEFAULT_OPEN_HOLD_TIME
    max_opening: int = DEFAULT_MAX_OPENING


class Reader:
    """Reads one mapping and remembers the path, so each error names its field."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path or "(top level)", f"expected a mapping, got {type(data).__name__}")
        self.data: dict[str, Any] = data
        self.path = path
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if default is ...:
                raise ConfigError(self.name(key), "is required")
            return default
        value = self.data[key]
        if isinstance(value, bool) and kind in (int, (int,)):
            raise ConfigError(self.name(key), f"expected an integer, got {value!r}")
        if not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ConfigError(self.name(key), f"expected {want}, got {value!r}")
        return value

    def integer(self, key: str, low: int, high: int, default: Any = ...) -> int:
        value = self.get(key, int, default)
        if not low <= value <= high:
            raise ConfigError(self.name(key), f"{value} is outside {low}..{high}")
        return value

    def seconds(self, key: str, low: float, high: float, default: Any = ...) -> float:
        """A duration in seconds (an integer or a decimal number) within low..high."""
        value = self.get(key, (int, float), default)
        if isinstance(value, bool) or not low <= value <= high:  # (NaN fails the comparison too)
            raise ConfigError(self.name(key), f"{value!r} is outside {low:g}..{high:g} seconds")
        return float(value)

    def address(self, key: str, default: Any = ..., version: int | None = None) -> Any:
        value = self.get(key, str, default)
        if value is None or value is default:
            return value
        try:
            parsed = ipaddress.ip_address(value)
        except ValueError:
            raise ConfigError(self.name(key), f"{value!r} is not an IP address") from None
        if version is not None and parsed.version != version:
            raise ConfigError(self.name(key), f"{value!r} is not an IPv{version} address")
        return str(parsed)

    def spelling(self, key: str, alias: str) -> str:
        """Which of two spellings of one key the mapping uses (`key` when neither); both is an error."""
        if key in self.data and alias in self.data:
            raise ConfigError(self.name(alias), f"the same as `{key}`: give one of the two")
        return alias if alias in self.data else key

    def items(self, key: str) -> list[tuple[str, Any]]:
        values = self.get(key, list, [])
        return [(f"{self.name(key)}[{i}]", v) for i, v in enumerate(values)]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(self.name(unknown[0]), "unknown field")


def parse(data: object) -> SpeakerConfig:
    top = Reader(data, "")
    asn = top.integer("asn", 1, 0xFFFFFFFF)
    router_id = top.address("router_id", version=4)
    hold_time = top.integer("hold_time", 0, 0xFFFF, 90)
    if hold_time in (1, 2):
        raise ConfigError("hold_time", "must be 0 or at least 3 seconds (RFC 4271 4.2)")
    families = []
    for path, name in top.items("families") or [("families[0]", "l2vpn-evpn")]:
        if name not in FAMILY_NAMES:
            raise ConfigError(path, f"unknown family {name!r}; known: {', '.join(FAMILY_NAMES)}")
        families.append(FAMILY_NAMES[name])
    listen = None
    if top.get("listen", dict, None) is not None:
        r = Reader(top.data["listen"], "listen")
        listen = Listen(r.address("address"), r.integer("port", 0, 65535, 179))
        r.done()
    key = top.spelling("neighbors", "neighbours")
    neighbors = tuple(_neighbor(Reader(v, p)) for p, v in top.items(key))
    seen: set[str] = set()
    for i, n in enumerate(neighbors):
        if n.address in seen:
            raise ConfigError(f"{key}[{i}].address", f"{n.address} is configured twice")
        seen.add(n.address)
    dynamic_key = top.spelling("dynamic_neighbors", "dynamic_neighbours")
    dynamic = tuple(_dynamic(Reader(v, p)) for p, v in top.items(dynamic_key))
    if dynamic and listen is None:
        raise ConfigError(dynamic_key, "needs `listen` (dynamic neighbors only connect to us)")
    gr = GracefulRestartConfig()
    if top.get("graceful_restart", dict, None) is not None:
        r = Reader(top.data["graceful_restart"], "graceful_restart")
        gr = GracefulRestartConfig(
            enabled=r.get("enabled", bool, True),
            # RFC 4724 3: the Restart Time field has 12 bits.
            restart_time=r.integer("restart_time", 0, 4095, 120),
            forwarding_preserved=r.get("forwarding_preserved", bool, True),
            stale_time=r.integer("stale_time", 1, 86400, 360),
        )
        r.done()
    rts = []
    for path, rt in top.items("import_route_targets"):
        rts.append(_route_target(path, rt))
    routes = []
    for path, entry in top.items("routes"):
        routes.append(parse_route(Reader(entry, path)))
    limits = read_limits(top)
    top.done()
    return SpeakerConfig(
        asn=asn,
        router_id=router_id,
        hold_time=hold_time,
        families=tuple(dict.fromkeys(families)),
        listen=listen,
        neighbors=neighbors,
        dynamic_neighbors=dynamic,
        graceful_restart=gr,
        import_route_targets=frozenset(rts),
        routes=tuple(routes),
        **limits,
    )


def read_yaml(path: str | Path) -> object:
    """A config file's YAML document; an unreadable or malformed file is a ConfigError naming the file.

    Every daemon's `load()` (speaker, reflector, agent, gateway) reads its file through this."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(str(path), f"cannot read: {err.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(str(path), f"not valid YAML: {err}") from None


def load(path: str | Path) -> SpeakerConfig:
    return parse(read_yaml(path))


def _neighbor(r: Reader) -> Neighbor:
    n = Neighbor(
        address=r.address("address"),
        asn=r.integer("asn", 1, 0xFFFFFFFF),
        port=r.integer("port", 1, 65535, 179),
        passive=r.get("passive", bool, False),
        md5_password=read_password(r),
        local_address=r.address("local_address", None),
        description=r.get("description", str, ""),
        max_prefix=read_max_prefix(r),
        bfd=read_bfd(r),
    )
    r.done()
    return n


def _dynamic(r: Reader) -> DynamicNeighbors:
    raw = r.get("prefix", str)
    try:
        prefix = ipaddress.ip_network(raw, strict=True)
    except ValueError as err:
        raise ConfigError(r.name("prefix"), str(err)) from None
    d = DynamicNeighbors(prefix, r.integer("asn", 1, 0xFFFFFFFF), read_password(r), read_max_prefix(r),
                         read_max_connections(r), read_bfd(r))
    r.done()
    return d


def read_max_connections(r: Reader) -> int:
    return r.integer("max_connections", 1, 65535, DEFAULT_MAX_CONNECTIONS)


def read_limits(top: Reader) -> dict[str, int]:
    """The session bounds a speaker's top level may set (as SpeakerConfig keyword arguments)."""
    return {
        "write_buffer_limit": top.integer("write_buffer_limit", 65536, 1 << 30, DEFAULT_WRITE_BUFFER_LIMIT),
        "open_hold_time": top.integer("open_hold_time", 3, 240, DEFAULT_OPEN_HOLD_TIME),
        "max_opening": top.integer("max_opening", 1, 65535, DEFAULT_MAX_OPENING),
    }


def read_max_prefix(r: Reader, default: MaxPrefix = DEFAULT_MAX_PREFIX) -> MaxPrefix:
    """`max_prefix`: a number (a warning limit: log and count, keep the session) or {limit, action: warn |
    teardown, restart: seconds}; absent, `default`."""
    value = r.get("max_prefix", (int, dict), None)
    if value is None:
        return default
    if isinstance(value, int):
        return MaxPrefix(r.integer("max_prefix", 1, 2**32 - 1), MaxPrefixAction.WARN)
    m = Reader(value, r.name("max_prefix"))
    action = m.get("action", str, "teardown")
    try:
        parsed = MaxPrefixAction(action)
    except ValueError:
        raise ConfigError(m.name("action"), f"expected warn or teardown, got {action!r}") from None
    out = MaxPrefix(m.integer("limit", 1, 2**32 - 1), parsed,
                    m.integer("restart", 0, 86400, DEFAULT_MAX_PREFIX_RESTART))
    m.done()
    return out


# RFC 5880 6.7: the password lengths each authentication type carries.
BFD_AUTH_PASSWORD = {"simple": 16, "keyed-sha1": 20, "meticulous-keyed-sha1": 20}
BFD_INTERVAL = (10, 60000)  # ms: FRR's bounds for its transmit and receive intervals


def read_bfd(r: Reader) -> BfdConfig | None:
    """`bfd`: true (the defaults, 300 ms x 3), false or absent (none), or {transmit_interval,
    receive_interval (ms), multiplier, passive, auth: {type, key_id, password}}."""
    value = r.get("bfd", (bool, dict), None)
    if value is None or value is False:
        return None
    if value is True:
        return BfdConfig()
    b = Reader(value, r.name("bfd"))
    defaults = BfdConfig()
    auth = None
    if b.get("auth", dict, None) is not None:
        a = Reader(b.data["auth"], b.name("auth"))
        kind = a.get("type", str)
        if kind not in BFD_AUTH_PASSWORD:
            raise ConfigError(a.name("type"), f"expected one of {', '.join(BFD_AUTH_PASSWORD)}, got {kind!r}")
        key_id = a.integer("key_id", 0, 255)
        password = a.get("password", str)
        longest = BFD_AUTH_PASSWORD[kind]
        if not 1 <= len(password.encode()) <= longest:
            raise ConfigError(a.name("password"), f"must be 1..{longest} bytes for {kind} (RFC 5880 4.2, 4.4)")
        a.done()
        auth = BfdAuth(kind, key_id, password)
    out = BfdConfig(
        transmit_interval=b.integer("transmit_interval", *BFD_INTERVAL, defaults.transmit_interval),
        receive_interval=b.integer("receive_interval", *BFD_INTERVAL, defaults.receive_interval),
        multiplier=b.integer("multiplier", 1, 255, defaults.multiplier),
        passive=b.get("passive", bool, defaults.passive),
        auth=auth,
    )
    b.done()
    return out


def read_password(r: Reader) -> str | None:
    value = r.get("md5_password", str, None)
    if value is not None and not 1 <= len(value.encode()) <= 80:
        raise ConfigError(r.name("md5_password"), "must be 1..80 bytes (Linux TCP_MD5SIG_MAXKEYLEN)")
    return value


@dataclass(frozen=True)
class Peer:
    """A configured BGP peer of the agent or the gateway (a route reflector, an upstream router)."""

    address: str
    asn: int
    md5_password: str | None = None
    max_prefix: MaxPrefix = DEFAULT_MAX_PREFIX
    bfd: BfdConfig | None = None

    def neighbor(self, description: str = "") -> Neighbor:
        """The speaker's neighbour for this peer (we dial it)."""
        return Neighbor(address=self.address, asn=self.asn, md5_password=self.md5_password,
                        description=description, max_prefix=self.max_prefix, bfd=self.bfd)


def read_peers(top: Reader, key: str, default_asn: int | None) -> tuple[Peer, ...]:
    """The peers listed under `key`: address, asn (defaults to `default_asn`; required when that is None),
    md5_password, max_prefix, bfd."""
    out: list[Peer] = []
    for where, value in top.items(key):
        r = Reader(value, where)
        asn = r.integer("asn", 1, 0xFFFFFFFF) if default_asn is None else r.integer("asn", 1, 0xFFFFFFFF, default_asn)
        out.append(Peer(address=r.address("address"), asn=asn, md5_password=read_password(r),
                        max_prefix=read_max_prefix(r), bfd=read_bfd(r)))
        r.done()
    return tuple(out)


def read_api(top: Reader, default_listen: str) -> ApiConfig:
    """The `api` section: {listen: "ADDRESS:PORT", token: ...}; absent, the default address and no token."""
    a = Reader(top.get("api", dict, {}), "api")
    try:
        listen = check_listen(a.get("listen", str, default_listen), default_listen)
    except ValueError as exc:
        raise ConfigError("api.listen", str(exc)) from None
    api = ApiConfig(listen=listen, token=a.get("token", str, None))
    a.done()
    return api


def _route_target(path: str, value: object) -> str:
    if not isinstance(value, str) or value.count(":") != 1:
        raise ConfigError(path, f"expected 'ASN:NUMBER', got {value!r}")
    asn, number = value.split(":")
    if not (asn.isdigit() and number.isdigit()):
        raise ConfigError(path, f"expected 'ASN:NUMBER', got {value!r}")
    return f"{int(asn)}:{int(number)}"


def parse_route(r: Reader) -> Route:
    """One `routes[i]` entry; the route constructors validate, we translate their errors to field paths."""
    kind = r.get("type", str)
    try:
        if kind == "mac-ip":
            route: Route = MacIpRoute(
                rd=r.get("rd", str),
                mac=r.get("mac", str),
                ip=r.get("ip", str, None),
                vsid=r.get("vsid", int),
                next_hop=r.get("next_hop", str),
                route_targets=tuple(_route_target(p, v) for p, v in r.items("route_targets")),
                router_mac=r.get("router_mac", str, None),
                mobility_seq=r.get("mobility_seq", int, 0),
                sticky=r.get("sticky", bool, False),
                ethernet_tag=r.get("ethernet_tag", int, 0),
            )
        elif kind == "prefix":
            route = PrefixRoute(
                rd=r.get("rd", str),
                prefix=r.get("prefix", str),
                vsid=r.get("vsid", int),
                next_hop=r.get("next_hop", str),
                route_targets=tuple(_route_target(p, v) for p, v in r.items("route_targets")),
                router_mac=r.get("router_mac", str, None),
                gateway_ip=r.get("gateway_ip", str, None),
                ethernet_tag=r.get("ethernet_tag", int, 0),
            )
        elif kind == "unicast":
            route = UnicastRoute(prefix=r.get("prefix", str), next_hop=r.get("next_hop", str))
        else:
            raise ConfigError(r.name("type"), f"unknown route type {kind!r}; known: mac-ip, prefix, unicast")
    except RouteValueError as err:
        raise ConfigError(r.name(err.field), err.reason) from None
    r.done()
    return route
