"""Keyed, frozen value types for every kernel object vnet owns (docs/dataplane.md).

Each object has a `key` (its identity in the kernel: what a `replace` overwrites) and is otherwise a
plain value, so desired and observed states are sets that `diff` can compare. Ownership tags, so that a
restarted agent adopts its own objects and never touches anyone else's:
- routes, neighbours and rules carry protocol `PROTO` (RTPROT / NDA_PROTOCOL / FRA_PROTOCOL);
- devices we create are named with `DEVICE_PREFIX`; ports are ours while enslaved to one of our VRFs;
- rules use priorities in `RULE_PRIORITIES`;
- an address is ours on one of our VRF devices (the subnet gateways);
- a clsact qdisc is ours on one of our devices, a flower filter on the ingress block of one of those
  clsacts at preference `TC_PREF`.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import ClassVar

from nvfabric.bgp.mac import Mac

# 0x4e ('N'): unassigned in iproute2's rt_protos (0-4 kernel, 8-19 routing daemons/bagpipe, 42 babel,
# 186-192 FRR, 99 keepalived's default is configurable); documented in docs/dataplane.md.
PROTO = 0x4E
DEVICE_PREFIX = "nvf-"
RULE_PRIORITIES = range(890, 1000)  # before the l3mdev rule (1000) so tun_id steering wins
UNREACHABLE_RULE_PRIORITY = 999  # after every tun_id rule: what none claimed goes nowhere
LOCAL_RULE_PRIORITY = 1100  # the local table, moved after the l3mdev rule (1000) from preference 0
ROUTER_NEXTHOP = {4: "169.254.0.1", 6: "fe80::1"}  # the fixed on-link next hop of every encap route
DEFAULT_METRIC = 1024  # IPv6 turns metric 0 into 1024; use it for both families so dumps read back equal
UNREACHABLE_METRIC = 4278198272  # the VRF documentation's value: below every real default route
# RFC 7637 over IPv4: outer IPv4 20 + GRE with key 8 + inner Ethernet 14 = 42; over IPv6: 40 + 8 + 14 = 62.
OVERHEAD = {4: 42, 6: 62}
UNDERLAY_MTU = 1500
TC_PREF = 10  # the preference (priority) of our flower filters on a shared block


def _check_priority(priority: int) -> None:
    if priority not in RULE_PRIORITIES:
        raise ValueError(f"rule priority {priority} outside {RULE_PRIORITIES}")


def _owned_name(name: str) -> None:
    if not name.startswith(DEVICE_PREFIX) or len(name) > 15:
        raise ValueError(f"device name {name!r} must start with {DEVICE_PREFIX!r} and fit 15 characters")


@dataclass(frozen=True, slots=True)
class Vrf:
    """One routing domain: a VRF device bound to its table."""

    name: str
    table: int
    order: ClassVar[int] = 0

    def __post_init__(self) -> None:
        _owned_name(self.name)

    @property
    def key(self) -> tuple:
        return ("vrf", self.name)


@dataclass(frozen=True, slots=True)
class XfrmInterface:
    """A route-based IPsec tunnel of a tenant's site: `ip link add <name> type xfrm if_id <if_id>`, enslaved to
    the tenant's VRF. Packets routed to it are encrypted by the SAs and policies with the same if_id (made by
    charon, gateway/strongswan.py); what those SAs decrypt arrives on it, in the VRF. No underlying device:
    the outer packets are routed by the main table."""

    name: str
    if_id: int
    vrf: str
    order: ClassVar[int] = 1  # after the VRF it is enslaved to

    def __post_init__(self) -> None:
        _owned_name(self.name)
        if not 0 < self.if_id < 1 << 32:
            raise ValueError(f"if_id {self.if_id} is not a non-zero 32-bit value")

    @property
    def key(self) -> tuple:
        return ("xfrm", self.name)


@dataclass(frozen=True, slots=True)
class GreTunnel:
    """A plain GRE tunnel of a tenant's site: `ip link add <name> type gre|ip6gre local <local> remote <remote>
    [key <gre_key>] ttl 64`, enslaved to the tenant's VRF. IP in GRE (not Ethernet: the NVGRE devices keep
    protocol 0x6558): the kernel delivers on it the GRE packets from `remote` to `local` with its key (no key:
    keyless ones only), in the VRF; what the VRF routes to it leaves encapsulated, the outer packet routed by
    the main table (no underlying device)."""

    name: str
    vrf: str
    local: str
    remote: str
    gre_key: int | None = None
    order: ClassVar[int] = 1  # after the VRF it is enslaved to

    def __post_init__(self) -> None:
        _owned_name(self.name)
        if ip_address(self.local).version != ip_address(self.remote).version:
            raise ValueError(f"GRE tunnel {self.name}: local {self.local} and remote {self.remote} differ in family")
        if self.gre_key is not None and not 0 <= self.gre_key < 1 << 32:
            raise ValueError(f"GRE key {self.gre_key} is not a 32-bit value")

    @property
    def key(self) -> tuple:
        return ("gre", self.name)

    @property
    def kind(self) -> str:
        return "gre" if ip_address(self.local).version == 4 else "ip6gre"


@dataclass(frozen=True, slots=True)
class DummyDevice:
    """A device for the gateway's own addresses that belong to no link: `ip link add <name> type dummy`, up,
    outside every VRF. An address on it (a TunnelAddress) is local in the main table, so the kernel takes
    packets to it (GRE to a site's tunnel end) from any interface; no link is the address's own, so with
    `arp_ignore=1` on the external interfaces no ARP for it is answered there (IPv6 answers neighbour
    solicitations only for the receiving device's own addresses)."""

    name: str
    order: ClassVar[int] = 0

    def __post_init__(self) -> None:
        _owned_name(self.name)

    @property
    def key(self) -> tuple:
        return ("dummy", self.name)


@dataclass(frozen=True, slots=True)
class NvgreDevice:
    """The host's flow-based NVGRE device for one underlay family: `gretap|ip6gretap external`,
    outside every VRF, its MAC the fabric-wide router MAC (every inner frame is addressed to it)."""

    name: str
    family: int  # 4: gretap (IPv4 PAs), 6: ip6gretap (IPv6 PAs)
    router_mac: Mac
    # always True when desired; observe reports False for a device with our name that is not flow-based
    # (made by hand, say), so that diff plans a replace (delete + create) instead of trusting it
    external: bool = True
    # The largest inner IP packet: underlay MTU - OVERHEAD[family]. The kernel's own default (1462 for
    # gretap) leaves out the 4-byte key and the inner Ethernet header's share, so DF packets of 1459-1462
    # bytes would leave fragmented instead of the VM getting "fragmentation needed" (seen in the VM).
    mtu: int | None = None  # None: for a 1500-byte underlay
    order: ClassVar[int] = 0

    def __post_init__(self) -> None:
        _owned_name(self.name)
        object.__setattr__(self, "router_mac", Mac(self.router_mac))
        if self.mtu is None:
            object.__setattr__(self, "mtu", UNDERLAY_MTU - OVERHEAD[self.family])

    @property
    def key(self) -> tuple:
        return ("nvgre", self.name)

    @property
    def kind(self) -> str:
        return "gretap" if self.family == 4 else "ip6gretap"


@dataclass(frozen=True, slots=True)
class VrfPort:
    """A local VM port (tap/veth created by the VM manager, not by us) as a routed port in the VRF,
    with an MTU that leaves room for the encapsulation (42 bytes IPv4 outer, 62 IPv6 outer)."""

    name: str
    vrf: str
    mtu: int
    order: ClassVar[int] = 1

    @property
    def key(self) -> tuple:
        return ("port", self.name)


@dataclass(frozen=True, slots=True)
class Sysctl:
    """A sysctl under /proc/sys/net in the namespace: forwarding, proxy_arp, proxy_ndp, proxy_delay."""

    path: str  # relative to /proc/sys, e.g. "net/ipv4/conf/tap1/proxy_arp"
    value: str
    order: ClassVar[int] = 2

    @property
    def key(self) -> tuple:
        return ("sysctl", self.path)


@dataclass(frozen=True, slots=True)
class TunIdRule:
    """Receive steering: `ip rule iif <nvgre dev> tun_id VSID<<8 lookup <routing domain table>`."""

    family: int  # the rule table's family (CA family), not the PA's
    iif: str
    tun_id: int
    table: int
    priority: int
    order: ClassVar[int] = 3

    def __post_init__(self) -> None:
        _check_priority(self.priority)

    @property
    def key(self) -> tuple:
        return ("rule", self.family, self.iif, self.tun_id)


@dataclass(frozen=True, slots=True)
class FwmarkRule:
    """Marked traffic into a routing domain's table: `ip rule fwmark <mark> [iif <dev>] [ipproto <n>] lookup
    <table> pref <priority>`. Host: the ICMPv6 errors the host itself sends about a VM's packet (iif lo,
    ipproto ipv6-icmp, the VM packet's mark reflected: docs/dataplane.md, "Packet Too Big"). Gateway:
    replies and floating-IP traffic from the external interface."""

    family: int
    fwmark: int
    table: int
    priority: int
    iif: str | None = None
    ip_proto: int | None = None
    order: ClassVar[int] = 3

    def __post_init__(self) -> None:
        _check_priority(self.priority)
        if not 0 < self.fwmark < 1 << 32:
            raise ValueError(f"fwmark {self.fwmark} is not a non-zero 32-bit value")

    @property
    def key(self) -> tuple:
        return ("fwmark-rule", self.family, self.priority, self.fwmark, self.iif or "", self.ip_proto or 0)


@dataclass(frozen=True, slots=True)
class UnreachableIifRule:
    """`ip rule add iif <nvgre dev> unreachable pref 999`: after the tun_id rules, so a decapsulated packet
    that no VSID's rule claimed never reaches the main (or local) table."""

    family: int
    iif: str
    priority: int = UNREACHABLE_RULE_PRIORITY
    order: ClassVar[int] = 3

    def __post_init__(self) -> None:
        _check_priority(self.priority)

    @property
    def key(self) -> tuple:
        return ("unreachable-rule", self.family, self.iif)


@dataclass(frozen=True, slots=True)
class LocalTableRule:
    """The local table after the tun_id rules and the l3mdev rule: `ip rule add pref 1100 lookup local` (ours),
    then the kernel's `pref 0 lookup local` deleted (the usual VRF practice). Without it an inner packet for
    one of the host's own addresses would be delivered to the host before any tun_id rule. Deleting it puts
    `pref 0 lookup local` back FIRST: a host without a local rule receives nothing, itself included.
    `zero`: the kernel still has the preference 0 rule (observe says; desired never), so diff plans a
    replace that deletes it."""

    family: int
    zero: bool = False
    priority: int = LOCAL_RULE_PRIORITY
    order: ClassVar[int] = 3

    @property
    def key(self) -> tuple:
        return ("local-rule", self.family)


@dataclass(frozen=True, slots=True)
class PermanentNeighbour:
    """The fixed on-link next hop (169.254.0.1 / fe80::1) -> router MAC on an NVGRE device."""

    dev: str
    address: str
    lladdr: Mac
    order: ClassVar[int] = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "lladdr", Mac(self.lladdr))

    @property
    def key(self) -> tuple:
        return ("neigh", self.dev, self.address)


@dataclass(frozen=True, slots=True)
class ProxyNeighbour:
    """An IPv6 proxy NDP entry: the port answers neighbour solicitations for this (remote or gateway) CA."""

    dev: str
    address: str
    order: ClassVar[int] = 3

    @property
    def key(self) -> tuple:
        return ("proxy", self.dev, self.address)


@dataclass(frozen=True, slots=True)
class VrfAddress:
    """A subnet gateway as a local address of its routing domain's VRF device: `ip addr add 10.1.0.1/32 dev
    nvf-rd1` (IPv6: `fd00:b::1/128 nodad`). The kernel then puts a local route in the VRF's table, so the
    gateway answers ARP and neighbour solicitations on every port of the VRF (NA with the router flag: the
    VRF forwards) and ICMP echo, and is the source of the host's ICMP errors into the routing domain. A host
    prefix: a shorter one would add a connected route beside the unreachable default. `prefixlen`: what
    observe found (another length on our device is replaced)."""

    vrf: str
    address: str
    prefixlen: int | None = None  # None: the host prefix (/32, /128)
    family: int = field(init=False, repr=False, compare=False)
    order: ClassVar[int] = 1  # after the VRF, before the routes that may name it as their source

    def __post_init__(self) -> None:
        _owned_name(self.vrf)
        address, family = normal_address(self.address)
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "family", family)
        if self.prefixlen is None:
            object.__setattr__(self, "prefixlen", 32 if family == 4 else 128)

    @property
    def key(self) -> tuple:
        return ("address", self.vrf, self.address)


@dataclass(frozen=True, slots=True)
class TunnelAddress:
    """The gateway's own address inside a site's tunnel, on the tunnel's device (an XfrmInterface or GreTunnel):
    `ip addr add 10.255.0.1/30 dev nvf-s11`. The kernel adds the connected route of its prefix to the table of
    the VRF the device is enslaved to, so the site's router (the BGP peer) is reached through the tunnel. Or the
    GRE sites' tunnel end, a host address on the gateway's DummyDevice (in no VRF: local in the main table). A
    replace of another prefix length deletes the old one first (as VrfAddress)."""

    dev: str
    address: str
    prefixlen: int
    family: int = field(init=False, repr=False, compare=False)
    order: ClassVar[int] = 2  # after the tunnel device it is on

    def __post_init__(self) -> None:
        _owned_name(self.dev)
        address, family = normal_address(self.address)
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "family", family)
        if not 0 < self.prefixlen <= (32 if family == 4 else 128):
            raise ValueError(f"prefix length {self.prefixlen} of {address}")

    @property
    def key(self) -> tuple:
        return ("tunnel-address", self.dev, self.address)


@dataclass(frozen=True, slots=True)
class Clsact:
    """The tc hook on one of our devices, bound to a shared ingress block: `tc qdisc add dev <dev>
    ingress_block <block> clsact`. Filters then name the block, not a device, so one filter serves every
    device bound to it."""

    dev: str
    block: int  # observe reports 0 for a clsact without a shared block: replaced (a qdisc's block cannot change)
    order: ClassVar[int] = 1  # after the devices

    def __post_init__(self) -> None:
        _owned_name(self.dev)

    @property
    def key(self) -> tuple:
        return ("clsact", self.dev)


@dataclass(frozen=True, slots=True)
class FlowerMark:
    """Marks one VSID's packets on arrival, before netfilter: `tc filter replace block <block> pref TC_PREF
    handle <VSID> protocol all flower enc_key_id VSID<<8 action skbedit mark <mark>` (the whole GRE key, so
    FlowID 0, as the tun_id rules). The handle is the VSID: one filter per VSID, replaced in place."""

    block: int
    vsid: int
    mark: int
    key_id: int | None = None  # the matched tunnel key; None: VSID << 8 (observe reports what the kernel has)
    order: ClassVar[int] = 3  # after the clsact that makes the block

    def __post_init__(self) -> None:
        if not 0 < self.vsid < 1 << 24:
            raise ValueError(f"VSID {self.vsid} is not a 24-bit value")
        if not 0 <= self.mark < 1 << 32:
            raise ValueError(f"mark {self.mark} is not a 32-bit value")
        if self.key_id is None:
            object.__setattr__(self, "key_id", self.vsid << 8)

    @property
    def key(self) -> tuple:
        return ("flower", self.block, self.vsid)


def _address(text: str) -> tuple[bytes, int]:
    # inet_pton instead of ipaddress: building 100k routes is ~10x cheaper, which matters in the VM
    family = 6 if ":" in text else 4
    try:
        return socket.inet_pton(socket.AF_INET6 if family == 6 else socket.AF_INET, text), family
    except OSError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None


def normal_address(text: str) -> tuple[str, int]:
    packed, family = _address(text)
    return socket.inet_ntop(socket.AF_INET6 if family == 6 else socket.AF_INET, packed), family


def _set_prefix(obj: LocalPortRoute | EncapRoute | ViaRoute) -> None:
    """Normalise the prefix once (canonical text, host bits must be zero) and derive the family."""
    text, _, length = obj.prefix.partition("/")
    packed, family = _address(text)
    bits = len(packed) * 8
    plen = int(length) if length else bits
    if not 0 <= plen <= bits or int.from_bytes(packed, "big") & ((1 << (bits - plen)) - 1):
        raise ValueError(f"{obj.prefix!r} is not a prefix (length out of range or host bits set)")
    address = socket.inet_ntop(socket.AF_INET6 if family == 6 else socket.AF_INET, packed)
    object.__setattr__(obj, "prefix", f"{address}/{plen}")
    object.__setattr__(obj, "family", family)


@dataclass(frozen=True, slots=True)
class LocalPortRoute:
    """CA/32 (/128) -> the local port, in the routing domain's table. `src`: the preferred source of what the
    host itself sends the CA (`src <its subnet's gateway>`, a VrfAddress): its ICMP errors (TTL exceeded,
    unreachable) come from the VM's own gateway, not from whichever address of the VRF comes first."""

    table: int
    prefix: str
    dev: str
    metric: int = DEFAULT_METRIC
    src: str | None = None
    family: int = field(init=False, repr=False, compare=False)  # derived from the prefix
    order: ClassVar[int] = 4

    def __post_init__(self) -> None:
        _set_prefix(self)
        if self.src is not None:
            src, family = normal_address(self.src)
            if family != self.family:
                raise ValueError(f"source {self.src} is not of the family of {self.prefix}")
            object.__setattr__(self, "src", src)

    @property
    def key(self) -> tuple:
        return ("route", self.family, self.table, self.prefix, self.metric)


@dataclass(frozen=True, slots=True)
class EncapRoute:
    """A remote CA: `CA/32 encap ip|ip6 id VSID<<8 dst PA ttl 64 key via <fixed next hop> dev <nvgre of
    the PA's family> onlink` in the routing domain's table. No per-CA neighbour: the next hop's
    permanent neighbour (router MAC) serves every CA of every tenant."""

    table: int
    prefix: str
    vsid: int
    pa: str
    dev: str  # the NvgreDevice of the PA's family
    ttl: int = 64
    metric: int = DEFAULT_METRIC
    family: int = field(init=False, repr=False, compare=False)  # of the CA prefix
    pa_family: int = field(init=False, repr=False, compare=False)  # of the underlay
    # one per remote CA, held by the desired and the observed state alike: the key is built once, so that
    # every index of it holds the same tuple, and the PA's text is one string per PA, not per route
    _key: tuple = field(init=False, repr=False, compare=False)
    order: ClassVar[int] = 4

    def __post_init__(self) -> None:
        _set_prefix(self)
        pa, pa_family = normal_address(self.pa)
        object.__setattr__(self, "pa", sys.intern(pa))
        object.__setattr__(self, "pa_family", pa_family)
        if not 0 < self.vsid < 1 << 24:
            raise ValueError(f"VSID {self.vsid} is not a 24-bit value")
        object.__setattr__(self, "_key", ("route", self.family, self.table, self.prefix, self.metric))

    @property
    def tun_id(self) -> int:
        return self.vsid << 8  # RFC 7637: key = VSID << 8 | FlowID; we send FlowID 0

    @property
    def via(self) -> str:
        return ROUTER_NEXTHOP[self.family]

    @property
    def key(self) -> tuple:
        return self._key


def encap_route(table: int, ca: IPv4Address | IPv6Address, vsid: int, pa: IPv4Address | IPv6Address,
                dev: str) -> EncapRoute:
    """A remote CA's EncapRoute from address values (ipaddress), equal to `EncapRoute(table, f"{ca}/32",
    vsid, str(pa), dev)`: their text is taken from their packed form directly, not formatted and parsed
    again. A start at 100,000 remote CAs builds one per CA, and that round trip was most of the cost."""
    return _encap(table, f"{address_text(ca)}/{32 if ca.version == 4 else 128}", ca.version, vsid, address_text(pa),
                  pa.version, dev, 64, DEFAULT_METRIC)


def encap_route_read(table: int, prefix: str, family: int, vsid: int, pa: str, dev: str | None, ttl: int,
                     metric: int) -> EncapRoute:
    """An EncapRoute as the kernel lists it (vnet/kernel/observe.py): its addresses are inet_ntop's text
    already, canonical, so they are not parsed again (100,000 of them at a restart)."""
    return _encap(table, prefix, family, vsid, pa, 6 if ":" in pa else 4, dev, ttl, metric)


def _encap(table: int, prefix: str, family: int, vsid: int, pa: str, pa_family: int, dev: str | None, ttl: int,
           metric: int) -> EncapRoute:
    if not 0 < vsid < 1 << 24:
        raise ValueError(f"VSID {vsid} is not a 24-bit value")
    route = object.__new__(EncapRoute)
    put = object.__setattr__
    put(route, "table", table)
    put(route, "prefix", prefix)
    put(route, "vsid", vsid)
    put(route, "pa", sys.intern(pa))
    put(route, "dev", dev)
    put(route, "ttl", ttl)
    put(route, "metric", metric)
    put(route, "family", family)
    put(route, "pa_family", pa_family)
    put(route, "_key", ("route", family, table, prefix, metric))
    return route


def address_text(address: IPv4Address | IPv6Address) -> str:
    """An address's canonical text (inet_ntop: what `normal_address` gives a parsed one), from its integer:
    a fifth of what ipaddress's own formatting costs, once per remote CA at a restart."""
    if address.version == 4:
        return socket.inet_ntoa(int(address).to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, int(address).to_bytes(16, "big"))


@dataclass(frozen=True, slots=True)
class ViaRoute:
    """A prefix via a next hop on a device, in a table: `prefix via <address> dev <dev> table T metric M`.
    Host: a customer route whose next hop is a VM on this host (`via CA dev <its port>`). Gateway: the
    tenant's default route leaked to the external side (`default via <next hop> dev <external> metric 1`)."""

    table: int
    prefix: str
    via: str
    dev: str
    metric: int = DEFAULT_METRIC
    family: int = field(init=False, repr=False, compare=False)
    order: ClassVar[int] = 5  # after the routes that may resolve its next hop (a local CA's /32)

    def __post_init__(self) -> None:
        _set_prefix(self)
        via, family = normal_address(self.via)
        if family != self.family:
            raise ValueError(f"next hop {self.via} is not of the family of {self.prefix}")
        object.__setattr__(self, "via", via)

    @property
    def key(self) -> tuple:
        return ("route", self.family, self.table, self.prefix, self.metric)


@dataclass(frozen=True, slots=True)
class UnreachableRoute:
    """Everything else in the routing domain is dropped with an ICMP unreachable: `unreachable default`."""

    table: int
    family: int
    metric: int = UNREACHABLE_METRIC
    order: ClassVar[int] = 4

    @property
    def prefix(self) -> str:
        return "0.0.0.0/0" if self.family == 4 else "::/0"

    @property
    def key(self) -> tuple:
        return ("route", self.family, self.table, self.prefix, self.metric)


KernelObject = Vrf | NvgreDevice | VrfPort | Sysctl | TunIdRule | FwmarkRule | PermanentNeighbour | ProxyNeighbour | \
    XfrmInterface | GreTunnel | LocalPortRoute | EncapRoute | ViaRoute | UnreachableRoute | Clsact | FlowerMark | \
    UnreachableIifRule | LocalTableRule | VrfAddress | TunnelAddress | DummyDevice
