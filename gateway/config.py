"""`nvfabric gateway --config gateway.yaml`: the gateway's configuration, typed, every error naming its field.

```yaml
asn: 65001
router_id: 198.51.100.21
provider_addresses: [198.51.100.21, "2001:db8::21"]   # the PA announced with each tenant's default route
provider_prefixes: [198.51.100.0/24, "2001:db8::/64"] # optional: learned next hops inside (default: PAs' interfaces)
router_mac: "02:00:5e:10:00:01"
route_reflectors: [{address: 198.51.100.100}, {address: 198.51.100.101}]
external: {interfaces: [eth2], next_hop4: 203.0.113.1, address4: 203.0.113.21,
           sites_address4: 203.0.113.250}              # optional: GRE sites' end, moves with the serving role
upstream: [{address: 203.0.113.1, asn: 64496}]          # eBGP, IPv4 + IPv6 unicast
public_prefixes: [203.0.113.0/24, "2001:db8:b00::/40"]   # the provider's ranges tenants may use and announce
state_dir: /var/lib/nvfabric/gateway                    # API tenants and tenant ids survive a restart
api: {listen: "127.0.0.1:8510", token: change-me}
tenants:
  - name: blue
    route_targets: ["65001:1"]
    subnets: [{vsid: 5001, prefixes: [10.0.0.0/24]}]
    snat: [{address: 203.0.113.11, ports: 1024-65535}]
    floating_ips: [{public: 203.0.113.31, private: 10.0.0.5}]
hold_time: 90       # BGP hold time proposed to reflectors and upstream (failover detection bound)
sessions_interval: 15   # seconds between two counts of the conntrack table (nat_sessions)
netns: gw1          # optional: lab and tests only
sync: {interface: eth3, local_address: 192.0.2.21, peer_address: 192.0.2.22, port: 3780}  # optional: conntrackd
```
The tenants' own fields are gateway/tenants.py's; a tenant error carries its path (`tenants[1].snat[0].address`).
A tenant may not claim the gateway's own interfaces and addresses, nor public space outside `public_prefixes`
(gateway/reserved.py).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from nvfabric.bgp.config import ConfigError, Peer, Reader, read_api, read_peers, read_yaml
from nvfabric.gateway.reserved import Reserved, within
from nvfabric.gateway.sitebgp import check_asn
from nvfabric.gateway.tenants import Tenant, check_tenants
from nvfabric.service.config import ApiConfig
from nvfabric.vnet.config import DEFAULT_ROUTER_MAC, read_provider_addresses, read_provider_prefixes, read_router_mac
from nvfabric.vnet.errors import ModelError
from nvfabric.vnet.model import IFNAME_RE, Address, Network

DEFAULT_LISTEN = "127.0.0.1:8510"  # the host agent's is :8500; both may run on one machine in a lab
DEFAULT_SESSIONS_INTERVAL = 15.0  # seconds: how stale nat_sessions may be, against one conntrack dump per period

DEFAULT_SYNC_PORT = 3780  # conntrackd's own default

__all__ = ["ConfigError", "External", "GatewayConfig", "SyncConfig", "load", "parse"]


@dataclass(frozen=True)
class External:
    interfaces: tuple[str, ...]
    next_hop4: Address | None = None  # the upstream router: the tenants' default route leaks to it
    next_hop6: Address | None = None
    address4: Address | None = None  # ours on the external link: the next hop announced upstream
    address6: Address | None = None
    # The GRE sites' tunnel end that follows the serving role: the same in both gateways' files, inside
    # public_prefixes, held by both (on a dummy device) and announced upstream like the public addresses.
    sites_address4: Address | None = None
    sites_address6: Address | None = None

    def gre_local(self, version: int) -> Address | None:
        """The gateway's end of a GRE site's tunnel of this family: the sites address if set, else the external
        address (then the site reaches this gateway only)."""
        if version == 4:
            return self.sites_address4 or self.address4
        return self.sites_address6 or self.address6

    @property
    def sites_addresses(self) -> tuple[Address, ...]:
        return tuple(a for a in (self.sites_address4, self.sites_address6) if a is not None)


@dataclass(frozen=True)
class SyncConfig:
    """Connection state replication with the other gateway (gateway/conntrackd.py): conntrackd's messages
    over UDP unicast on a dedicated link, from `local_address` (on `interface`) to `peer_address`."""

    interface: str
    local_address: Address
    peer_address: Address
    port: int = DEFAULT_SYNC_PORT


@dataclass(frozen=True)
class GatewayConfig:
    asn: int
    router_id: str
    external: External
    provider_addresses: tuple[Address, ...] = ()
    router_mac: str = DEFAULT_ROUTER_MAC
    route_reflectors: tuple[Peer, ...] = ()
    upstream: tuple[Peer, ...] = ()  # the same peer type: address, asn, md5_password
    api: ApiConfig = field(default_factory=lambda: ApiConfig(listen=DEFAULT_LISTEN))
    tenants: tuple[Tenant, ...] = ()
    netns: str | None = None
    # Every gateway carries the same tenants (NAT, VRFs, learned CAs all ready); which one announces is
    # gateway/role.py's (non-preemptive). `standby` only says who goes first at a cold start when no gateway
    # serves: not a standby (docs/gateway.md "Failover").
    standby: bool = False
    # BGP hold time proposed on every session (reflectors and upstream); the session uses the lower of the
    # two sides' values (RFC 4271 4.2), keepalives every third of it. What bounds failover detection: a dead
    # gateway's sessions expire at most this long after its last keepalive (docs/gateway.md "Failover").
    hold_time: int = 90
    # The provider's public ranges this gateway may use and announce: every tenant public address and prefix
    # lies inside one of them (gateway/reserved.py: unset, single addresses only, no tenant prefixes).
    public_prefixes: tuple[Network, ...] = ()
    # where the fabric's PAs are: a learned route's next hop must be inside (None: the PAs' own interfaces')
    provider_prefixes: tuple[Network, ...] | None = None
    # Where the tenants created through the API and every tenant's id are kept (gateway/state.py). Unset:
    # API tenants last until the daemon stops; ids are still adopted from the kernel's NAT table.
    state_dir: Path | None = None
    sessions_interval: float = DEFAULT_SESSIONS_INTERVAL
    sync: SyncConfig | None = None  # None: conntrack entries are not replicated

    def own_addresses(self) -> list[tuple[str, Address | None]]:
        """The gateway's own addresses but the sites addresses, each with the field that names it."""
        ext = self.external
        return [("router_id", ipaddress.ip_address(self.router_id)),
                *((f"provider_addresses[{i}]", a) for i, a in enumerate(self.provider_addresses)),
                ("external.address4", ext.address4), ("external.address6", ext.address6),
                ("external.next_hop4", ext.next_hop4), ("external.next_hop6", ext.next_hop6),
                *((f"upstream[{i}].address", ipaddress.ip_address(u.address)) for i, u in enumerate(self.upstream)),
                *((f"route_reflectors[{i}].address", ipaddress.ip_address(r.address))
                  for i, r in enumerate(self.route_reflectors)),
                *(() if self.sync is None else (("sync.local_address", self.sync.local_address),
                                                ("sync.peer_address", self.sync.peer_address)))]

    @property
    def reserved(self) -> Reserved:
        """What no tenant may claim: the gateway's interfaces and addresses; the public space it may announce."""
        ext = self.external
        addresses = [*self.own_addresses(), ("external.sites_address4", ext.sites_address4),
                     ("external.sites_address6", ext.sites_address6)]
        own = {} if self.sync is None else {self.sync.interface: "the gateway's sync link (sync.interface)"}
        return Reserved.build(ext.interfaces, addresses, self.public_prefixes, own, (ext.address4, ext.address6),
                              None if self.provider_addresses else "without provider_addresses it has no VRFs")

    @classmethod
    def from_dict(cls, data: Any) -> GatewayConfig:
        return parse(data)


def _address(value: Any, where: str, version: int | None = None) -> Address:
    try:
        address = ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise ConfigError(where, f"{value!r} is not an IP address") from None
    if version is not None and address.version != version:
        raise ConfigError(where, f"{value!r} is not an IPv{version} address")
    return address


def parse(data: Any) -> GatewayConfig:
    top = Reader(data, "")
    asn = top.integer("asn", 1, 0xFFFFFFFF)
    router_id = top.address("router_id", version=4)
    pas = read_provider_addresses(top)  # none: a gateway of interface-attached tenants only
    provider_prefixes = read_provider_prefixes(top)
    router_mac = read_router_mac(top)
    reflectors = read_peers(top, "route_reflectors", asn)
    ext = Reader(top.get("external", dict), "external")
    ifaces = []
    for where, value in ext.items("interfaces"):
        if not isinstance(value, str) or not IFNAME_RE.match(value):
            raise ConfigError(where, f"{value!r} is not an interface name")
        ifaces.append(value)
    if not ifaces:
        raise ConfigError("external.interfaces", "at least one external interface is required (SNAT leaves by it)")
    nh4 = ext.get("next_hop4", str, None)
    nh6 = ext.get("next_hop6", str, None)
    a4 = ext.get("address4", str, None)
    a6 = ext.get("address6", str, None)
    s4 = ext.get("sites_address4", str, None)
    s6 = ext.get("sites_address6", str, None)
    external = External(tuple(ifaces), None if nh4 is None else _address(nh4, "external.next_hop4", 4),
                        None if nh6 is None else _address(nh6, "external.next_hop6", 6),
                        None if a4 is None else _address(a4, "external.address4", 4),
                        None if a6 is None else _address(a6, "external.address6", 6),
                        None if s4 is None else _address(s4, "external.sites_address4", 4),
                        None if s6 is None else _address(s6, "external.sites_address6", 6))
    ext.done()
    upstream = read_peers(top, "upstream", None)
    for i, peer in enumerate(upstream):
        family = ipaddress.ip_address(peer.address).version
        if (external.address4 if family == 4 else external.address6) is None:
            raise ConfigError(f"external.address{family}", f"required with an IPv{family} upstream (upstream[{i}]): "
                              "the next hop announced for the tenants' public addresses")
    api = read_api(top, DEFAULT_LISTEN)
    public = _public_prefixes(top)
    tenants: list[Tenant] = []
    paths: dict[str, str] = {}
    for where, value in top.items("tenants"):
        try:
            tenant = Tenant.from_dict(value, where=where)
        except ModelError as exc:
            raise ConfigError(exc.within(where).field, f"{exc.problem} (got {exc.value!r})") from None
        if tenant.name in paths:
            raise ConfigError(f"{where}.name", f"tenant {tenant.name!r} is already {paths[tenant.name]}")
        paths[tenant.name] = where
        tenants.append(tenant)
    try:
        check_tenants({t.name: t for t in tenants}, paths)
    except ModelError as exc:
        raise ConfigError(exc.field, f"{exc.problem} (got {exc.value!r})") from None
    netns = top.get("netns", str, None)
    state_dir = top.get("state_dir", str, None)
    sessions_interval = top.get("sessions_interval", (int, float), DEFAULT_SESSIONS_INTERVAL)
    if isinstance(sessions_interval, bool) or not 1 <= sessions_interval <= 3600:
        raise ConfigError("sessions_interval", f"must be 1..3600 seconds (got {sessions_interval!r})")
    sync = _sync(top, external)
    standby = top.get("standby", bool, False)
    hold_time = top.integer("hold_time", 0, 0xFFFF, 90)
    if hold_time in (1, 2):
        raise ConfigError("hold_time", "must be 0 or at least 3 seconds (RFC 4271 4.2)")
    if standby and not reflectors:
        raise ConfigError("standby", "a standby gateway needs route_reflectors (it watches the active one there)")
    top.done()
    config = GatewayConfig(asn=asn, router_id=router_id, external=external, provider_addresses=tuple(pas),
                         router_mac=router_mac, route_reflectors=reflectors, upstream=upstream,
                         api=api, tenants=tuple(tenants), netns=netns, standby=standby,
                         hold_time=hold_time, public_prefixes=public, provider_prefixes=provider_prefixes,
                         state_dir=None if state_dir is None else Path(state_dir),
                         sessions_interval=float(sessions_interval), sync=sync)
    _check_sites_addresses(config)
    reserved = config.reserved
    for i, tenant in enumerate(tenants):
        try:
            reserved.check(tenant, f"tenants[{i}]")
            check_asn(tenant.sites, asn, f"tenants[{i}]")
        except ModelError as exc:
            raise ConfigError(exc.field, f"{exc.problem} (got {exc.value!r})") from None
    return config


def _check_sites_addresses(config: GatewayConfig) -> None:
    """The GRE sites' moving tunnel end: what cannot work is refused by its field. It moves only by being
    announced upstream (gateway/upstream.py) with the family's external address as next hop, inside the public
    space the gateway may announce, and it is the gateway's alone (no other own address; tenants are refused it
    by Reserved)."""
    ext = config.external
    own = {a: where for where, a in reversed(config.own_addresses()) if a is not None}
    for version, address in ((4, ext.sites_address4), (6, ext.sites_address6)):
        if address is None:
            continue
        where = f"external.sites_address{version}"
        if address.is_multicast or address.is_unspecified or address.is_loopback or address.is_link_local:
            raise ConfigError(where, f"{address} is not a unicast address the upstream can route")
        if not config.provider_addresses:
            raise ConfigError(where, "a gateway without provider_addresses has no VRFs, so no sites")
        if (ext.address4 if version == 4 else ext.address6) is None:
            raise ConfigError(where, f"needs external.address{version}: the next hop it is announced upstream with")
        if not config.upstream:
            raise ConfigError(where, "needs an upstream: the address follows the serving gateway by being "
                              "announced to it")
        if address in own:
            raise ConfigError(where, f"{address} is {own[address]}: the sites address is one of its own, the same "
                              "on both gateways")
        if not within(address, config.public_prefixes):
            raise ConfigError(where, f"{address} is outside public_prefixes "
                              f"({', '.join(map(str, config.public_prefixes)) or 'none set'}): it is announced "
                              "upstream")


def _sync(top: Reader, external: External) -> SyncConfig | None:
    data = top.get("sync", dict, None)
    if data is None:
        return None
    r = Reader(data, "sync")
    interface = r.get("interface", str)
    if not IFNAME_RE.match(interface):
        raise ConfigError("sync.interface", f"{interface!r} is not an interface name")
    if interface in external.interfaces:
        raise ConfigError("sync.interface", f"{interface!r} is an external interface: the sync link is a "
                          "dedicated one, apart from the tenants' traffic")
    local = _address(r.get("local_address", str), "sync.local_address")
    peer = _address(r.get("peer_address", str), "sync.peer_address")
    if peer.version != local.version:
        raise ConfigError("sync.peer_address", f"{peer} is IPv{peer.version}, sync.local_address {local} is "
                          f"IPv{local.version}: one link, one family")
    if peer == local:
        raise ConfigError("sync.peer_address", f"{peer} is sync.local_address: the other gateway's address")
    for where, address in (("sync.local_address", local), ("sync.peer_address", peer)):
        if address.is_multicast or address.is_unspecified:
            raise ConfigError(where, f"{address} is not a unicast address")
    port = r.integer("port", 1, 65534, DEFAULT_SYNC_PORT)  # and port + 1: the tenant ids (gateway/peerids.py)
    r.done()
    return SyncConfig(interface, local, peer, port)


def _public_prefixes(top: Reader) -> tuple[Network, ...]:
    out: list[Network] = []
    for where, value in top.items("public_prefixes"):
        try:
            prefix = ipaddress.ip_network(value, strict=True)
        except (ValueError, TypeError) as exc:
            raise ConfigError(where, f"{value!r} is not a network prefix ({exc})") from None
        if prefix.prefixlen == 0:
            raise ConfigError(where, f"{value!r}: a default route is never announced upstream")
        out.append(prefix)
    return tuple(out)


def load(path: str | Path) -> GatewayConfig:
    return parse(read_yaml(path))
