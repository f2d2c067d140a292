"""The virtual-network model shared by the host agent and the gateway, in HNV's terms.

- routing domain: a tenant's isolated address space (HNV's RDID); a VRF on every host that has a port in it.
- virtual subnet: a VSID (24 bits, 4096..16,777,214) with its IPv4 and/or IPv6 prefix and gateway address.
- port: a VM's interface on a host (tap/veth), with its MAC and customer addresses (CAs).
- customer route: a prefix in a routing domain, to a next-hop CA or on-link (HNV's customer route).
- lookup record: CA + VSID -> MAC and provider address (PA) of the host that has it (HNV's lookup record).

Values are frozen and validated on construction; a bad value raises ModelError naming the field. Checks
that involve several objects (an address inside its subnet, a CA unique in its routing domain) live in
vnet/catalog.py.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nvfabric.bgp.mac import Mac, MacError
from nvfabric.bgp.errors import RouteValueError
from nvfabric.bgp.routes import format_admin_pair, parse_admin_pair
from nvfabric.vnet.errors import ModelError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 7637 section 3.2: VSIDs 0-4095 are reserved, 0xFFFFFF is reserved for vendor use.
VSID_MIN = 4096
VSID_MAX = 16_777_214
# Routing-domain names become kernel device names: the VRF is "nvf-<name>" (vnet/kernel/objects.py owns
# the "nvf-" prefix), and a Linux device name has at most 15 bytes.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,10}$")
PORT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")


def check_vsid(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(where, value, "must be an integer")
    if not VSID_MIN <= value <= VSID_MAX:
        raise ModelError(where, value, f"a VSID must be in {VSID_MIN}..{VSID_MAX} (RFC 7637: 0-4095 reserved)")
    return value


def check_route_target(value: Any, where: str) -> str:
    """A route target the wire can carry (RFC 4360, RFC 5668): 2-byte ASN:4-byte number, 4-byte ASN (above
    65535):2-byte number or IPv4:2-byte number, in its canonical text (what routes decoded from the wire carry,
    so the import policy compares like with like)."""
    try:
        return format_admin_pair(*parse_admin_pair(value, where))
    except RouteValueError as exc:
        raise ModelError(where, value, exc.reason) from None


def check_mac(value: Any, where: str) -> Mac:
    """A unicast MAC in any common notation (colon, dash, Cisco dotted, bare hex; any case), canonical."""
    try:
        return Mac.unicast(value)
    except MacError as exc:
        raise ModelError(where, value, exc.problem) from None


def check_address(value: Any, where: str) -> Address:
    try:
        return ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise ModelError(where, value, "is not an IPv4 or IPv6 address") from None


def check_network(value: Any, where: str) -> Network:
    try:
        return ipaddress.ip_network(value, strict=True)
    except (ValueError, TypeError) as exc:
        raise ModelError(where, value, f"is not a network prefix ({exc})") from None


def check_name(value: Any, where: str, pattern: re.Pattern[str] = NAME_RE) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ModelError(where, value, f"must match {pattern.pattern}")
    return value


def check_list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ModelError(where, value, "must be a list")
    return value


def reject_unknown(body: Mapping[str, Any], known: set[str], where: str) -> None:
    # A misspelt key silently ignored is a setting silently lost.
    unknown = sorted(set(body) - known)
    if unknown:
        first = unknown[0]
        raise ModelError(field_path(where, first), body[first], f"unknown field (known: {', '.join(sorted(known))})")


def check_object(body: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise ModelError(where or "body", body, "must be an object")
    return body


def first_repeat(values: Iterable[Hashable]) -> tuple[int, int] | None:
    """(i, j): values[i] is the first value equal to an earlier one, values[j]; None when all differ."""
    seen: dict[Hashable, int] = {}
    for i, value in enumerate(values):
        if value in seen:
            return i, seen[value]
        seen[value] = i
    return None


def field_path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# RFC 1035 section 2.3.1 (with RFC 1123's leading digit): letters, digits, inner hyphens; 63 bytes a label.
DNS_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
LEASE_MIN, LEASE_MAX = 60, 2**31 - 1  # 2^32-1 is "infinite" on the wire (RFC 2131): never offered
DEFAULT_LEASE = 86400


def check_dns_name(value: Any, where: str) -> str:
    """A DNS domain name (RFC 1035: labels of 1..63 letters, digits and inner hyphens, 253 bytes at most),
    lower-cased, without a trailing dot."""
    if not isinstance(value, str) or not value.strip("."):
        raise ModelError(where, value, "must be a DNS domain name")
    name = value[:-1] if value.endswith(".") else value
    if len(name) > 253:
        raise ModelError(where, value, "is longer than 253 bytes (RFC 1035)")
    for label in name.split("."):
        if not DNS_LABEL_RE.match(label):
            raise ModelError(where, value, f"label {label!r}: 1..63 letters, digits and inner hyphens (RFC 1035)")
    return name.lower()


@dataclass(frozen=True)
class DhcpRoute:
    """An extra route a guest is offered (DHCP option 121): prefix via a next hop inside the subnet."""

    prefix: Network
    next_hop: Address

    @classmethod
    def from_dict(cls, body: Any, where: str = "") -> DhcpRoute:
        body = check_object(body, where)
        reject_unknown(body, {"prefix", "next_hop"}, where)
        prefix = check_network(body.get("prefix"), field_path(where, "prefix"))
        next_hop = check_address(body.get("next_hop"), field_path(where, "next_hop"))
        if prefix.version != 4 or next_hop.version != 4:
            raise ModelError(where or "route", f"{prefix} via {next_hop}",
                             "DHCPv4 routes are IPv4 (IPv6 guests learn routes from router advertisements)")
        return cls(prefix, next_hop)

    def to_dict(self) -> dict[str, Any]:
        return {"prefix": str(self.prefix), "next_hop": str(self.next_hop)}


@dataclass(frozen=True)
class DhcpOptions:
    """What the hosts offer the guests of one virtual subnet (DHCPv4, and DNS in router advertisements and
    DHCPv6): per subnet, like Neutron's subnet and OVN's DHCP_Options."""

    enabled: bool = True
    dns_servers: tuple[Address, ...] = ()
    search_domains: tuple[str, ...] = ()
    lease_time: int = DEFAULT_LEASE  # seconds
    routes: tuple[DhcpRoute, ...] = ()  # besides the default route and the routing domain's customer routes

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ModelError("enabled", self.enabled, "must be true or false")
        if isinstance(self.lease_time, bool) or not isinstance(self.lease_time, int):
            raise ModelError("lease_time", self.lease_time, "must be an integer")
        if not LEASE_MIN <= self.lease_time <= LEASE_MAX:
            raise ModelError("lease_time", self.lease_time, f"must be in {LEASE_MIN}..{LEASE_MAX} seconds")
        if (repeat := first_repeat(self.dns_servers)) is not None:
            raise ModelError(f"dns_servers[{repeat[0]}]", str(self.dns_servers[repeat[0]]), "is a duplicate")
        if (repeat := first_repeat(r.prefix for r in self.routes)) is not None:
            raise ModelError(f"routes[{repeat[0]}].prefix", str(self.routes[repeat[0]].prefix), "is a duplicate")
        # what the wire carries: one DHCP option is at most 255 bytes (long options split, RFC 3396, which
        # not every client reassembles): bounded here so that every offer fits
        if len(self.dns_servers) > 8:
            raise ModelError("dns_servers", len(self.dns_servers), "at most 8 DNS servers")
        if len(self.search_domains) > 8:
            raise ModelError("search_domains", len(self.search_domains), "at most 8 search domains")
        if len(self.routes) > 16:
            raise ModelError("routes", len(self.routes), "at most 16 routes")

    @classmethod
    def from_dict(cls, body: Any, where: str = "") -> DhcpOptions:
        body = check_object(body, where)
        reject_unknown(body, {"enabled", "dns_servers", "search_domains", "lease_time", "routes"}, where)
        servers = tuple(check_address(a, f"{field_path(where, 'dns_servers')}[{i}]")
                        for i, a in enumerate(check_list(body.get("dns_servers"), field_path(where, "dns_servers"))))
        search = tuple(check_dns_name(d, f"{field_path(where, 'search_domains')}[{i}]") for i, d in
                       enumerate(check_list(body.get("search_domains"), field_path(where, "search_domains"))))
        routes = tuple(DhcpRoute.from_dict(r, f"{field_path(where, 'routes')}[{i}]")
                       for i, r in enumerate(check_list(body.get("routes"), field_path(where, "routes"))))
        try:
            return cls(enabled=body.get("enabled", True), dns_servers=servers, search_domains=search,
                       lease_time=body.get("lease_time", DEFAULT_LEASE), routes=routes)
        except ModelError as exc:
            raise exc.within(where) from None

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "dns_servers": [str(a) for a in self.dns_servers],
                "search_domains": list(self.search_domains), "lease_time": self.lease_time,
                "routes": [r.to_dict() for r in self.routes]}


@dataclass(frozen=True)
class VirtualSubnet:
    vsid: int
    prefixes: tuple[Network, ...]  # at most one IPv4 and one IPv6
    gateways: tuple[Address, ...]  # one per prefix, in the same order
    dhcp: DhcpOptions = DhcpOptions()

    def __post_init__(self) -> None:
        check_vsid(self.vsid, "vsid")
        versions = [p.version for p in self.prefixes]
        if not self.prefixes:
            raise ModelError("prefixes", [], "a virtual subnet needs an IPv4 and/or an IPv6 prefix")
        if len(set(versions)) != len(versions):
            raise ModelError("prefixes", [str(p) for p in self.prefixes], "at most one IPv4 and one IPv6 prefix")
        for i, (prefix, gateway) in enumerate(zip(self.prefixes, self.gateways, strict=True)):
            if gateway not in prefix or gateway in (prefix.network_address, prefix.broadcast_address):
                raise ModelError(f"gateways[{i}]", str(gateway), f"is not a host address of {prefix}")
        v4 = next((p for p in self.prefixes if p.version == 4), None)
        for i, route in enumerate(self.dhcp.routes):
            if v4 is None or route.next_hop not in v4:
                raise ModelError(f"dhcp.routes[{i}].next_hop", str(route.next_hop),
                                 f"is not inside the subnet's IPv4 prefix ({v4 or 'none'}): a guest reaches it on-link")

    def prefix_of(self, address: Address) -> Network | None:
        return next((p for p in self.prefixes if address in p), None)

    @classmethod
    def from_dict(cls, body: Any, where: str = "") -> VirtualSubnet:
        body = check_object(body, where)
        reject_unknown(body, {"vsid", "prefixes", "gateways", "dhcp"}, where)
        vsid = check_vsid(body.get("vsid"), field_path(where, "vsid"))
        prefixes = tuple(
            check_network(p, f"{field_path(where, 'prefixes')}[{i}]")
            for i, p in enumerate(check_list(body.get("prefixes"), where))
        )
        given = {}
        for i, g in enumerate(check_list(body.get("gateways"), field_path(where, "gateways"))):
            address = check_address(g, f"{field_path(where, 'gateways')}[{i}]")
            given[address.version] = address
        # HNV's default: the subnet's first host address is the gateway every host answers for.
        gateways = tuple(given.get(p.version, p.network_address + 1) for p in prefixes)
        dhcp = DhcpOptions.from_dict(body["dhcp"], field_path(where, "dhcp")) if "dhcp" in body else DhcpOptions()
        try:
            return cls(vsid=vsid, prefixes=prefixes, gateways=gateways, dhcp=dhcp)
        except ModelError as exc:
            raise exc.within(where) from None

    def to_dict(self) -> dict[str, Any]:
        """The body from_dict accepts; `dhcp` only when it is not the default (older readers ignore nothing)."""
        body: dict[str, Any] = {"vsid": self.vsid, "prefixes": [str(p) for p in self.prefixes],
                                "gateways": [str(g) for g in self.gateways]}
        if self.dhcp != DhcpOptions():
            body["dhcp"] = self.dhcp.to_dict()
        return body


@dataclass(frozen=True)
class CustomerRoute:
    """A prefix routed inside a routing domain: to a next-hop CA, or on-link when next_hop is None."""

    prefix: Network
    next_hop: Address | None = None
    metric: int = 0

    def __post_init__(self) -> None:
        if self.next_hop is not None and self.next_hop.version != self.prefix.version:
            raise ModelError("next_hop", str(self.next_hop), f"is not of the same family as {self.prefix}")
        if not 0 <= self.metric <= 0xFFFFFFFF:
            raise ModelError("metric", self.metric, "must be in 0..4294967295")

    @classmethod
    def from_dict(cls, body: Any, where: str = "") -> CustomerRoute:
        body = check_object(body, where)
        reject_unknown(body, {"prefix", "next_hop", "metric"}, where)
        prefix = check_network(body.get("prefix"), field_path(where, "prefix"))
        # HNV writes an on-link route's next hop as 0.0.0.0 / ::; here it is "on-link" or absent
        raw = body.get("next_hop", "on-link")
        next_hop = None if raw in ("on-link", None) else check_address(raw, field_path(where, "next_hop"))
        metric = body.get("metric", 0)
        if isinstance(metric, bool) or not isinstance(metric, int):
            raise ModelError(field_path(where, "metric"), metric, "must be an integer")
        try:
            return cls(prefix=prefix, next_hop=next_hop, metric=metric)
        except ModelError as exc:
            raise exc.within(where) from None

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"prefix": str(self.prefix),
                                "next_hop": str(self.next_hop) if self.next_hop is not None else "on-link"}
        if self.metric:
            body["metric"] = self.metric
        return body


@dataclass(frozen=True)
class VirtualAddress:
    """An address that moves between VMs (a keepalived VIP): whichever of `ports` announces it (gratuitous
    ARP, ARP reply, unsolicited NA) holds it fabric-wide (hostagent/holders.py). A port named here may not
    exist yet (orchestrators create in any order); it may hold the address once it is in the subnet."""

    address: Address
    ports: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise ModelError("address", self.address, "is not an IPv4 or IPv6 address")
        if not self.ports:
            raise ModelError("ports", [], "a virtual address needs at least one port that may hold it")
        for i, name in enumerate(self.ports):
            check_name(name, f"ports[{i}]", PORT_NAME_RE)
        if (repeat := first_repeat(self.ports)) is not None:
            i, j = repeat
            raise ModelError(f"ports[{i}]", self.ports[i], f"duplicates ports[{j}]")

    @classmethod
    def from_dict(cls, body: Any, where: str = "") -> VirtualAddress:
        body = check_object(body, where)
        reject_unknown(body, {"address", "ports"}, where)
        address = check_address(body.get("address"), field_path(where, "address"))
        names = check_list(body.get("ports"), field_path(where, "ports"))
        for i, name in enumerate(names):
            check_name(name, f"{field_path(where, 'ports')}[{i}]", PORT_NAME_RE)
        try:
            return cls(address=address, ports=tuple(names))
        except ModelError as exc:
            raise exc.within(where) from None

    def to_dict(self) -> dict[str, Any]:
        return {"address": str(self.address), "ports": list(self.ports)}


@dataclass(frozen=True)
class RoutingDomain:
    name: str
    route_targets: tuple[str, ...]
    subnets: tuple[VirtualSubnet, ...] = ()
    # HNV's New-NetVirtualizationCustomerRoute: e.g. a prefix behind a virtual appliance (next hop: its CA)
    customer_routes: tuple[CustomerRoute, ...] = ()
    # addresses that move between the VMs of listed ports (OVN's virtual port with virtual-parents)
    virtual_addresses: tuple[VirtualAddress, ...] = ()

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        if not self.route_targets:
            raise ModelError("route_targets", [], "a routing domain needs at least one route target")
        # checked here, not when announced: a value the wire cannot carry must be refused before the kernel
        # and the state file are written
        object.__setattr__(self, "route_targets", tuple(
            check_route_target(rt, f"route_targets[{i}]") for i, rt in enumerate(self.route_targets)))
        seen: dict[int, int] = {}
        for i, subnet in enumerate(self.subnets):
            if subnet.vsid in seen:
                raise ModelError(f"subnets[{i}].vsid", subnet.vsid, f"already used by subnets[{seen[subnet.vsid]}]")
            seen[subnet.vsid] = i
        for i, a in enumerate(self.subnets):
            for j, b in enumerate(self.subnets[:i]):
                for pa in a.prefixes:
                    for pb in b.prefixes:
                        if pa.overlaps(pb):
                            raise ModelError(f"subnets[{i}].prefixes", str(pa), f"overlaps subnets[{j}] ({pb})")
        if (repeat := first_repeat(r.prefix for r in self.customer_routes)) is not None:
            i, j = repeat
            raise ModelError(f"customer_routes[{i}].prefix", str(self.customer_routes[i].prefix),
                             f"already routed by customer_routes[{j}]")
        for i, route in enumerate(self.customer_routes):
            if route.next_hop is not None and not any(
                    route.next_hop in p for s in self.subnets for p in s.prefixes):
                raise ModelError(f"customer_routes[{i}].next_hop", str(route.next_hop),
                                 "is not in any virtual subnet of the routing domain (the next hop is a CA)")
        if (repeat := first_repeat(v.address for v in self.virtual_addresses)) is not None:
            i, j = repeat
            raise ModelError(f"virtual_addresses[{i}].address", str(self.virtual_addresses[i].address),
                             f"duplicates virtual_addresses[{j}]")
        for i, virtual in enumerate(self.virtual_addresses):
            problem = self._reserved(virtual.address)
            if problem is not None:
                raise ModelError(f"virtual_addresses[{i}].address", str(virtual.address), problem)

    def _reserved(self, address: Address) -> str | None:
        """Why `address` cannot be a virtual address of this domain (None: it can)."""
        found = next(((s, p) for s in self.subnets for p in s.prefixes if address in p), None)
        if found is None:
            return "is not in any virtual subnet of the routing domain"
        subnet, prefix = found
        if address in subnet.gateways:
            return f"is the gateway of virtual subnet {subnet.vsid}"
        if address == prefix.network_address:
            return f"is the network address of {prefix}"
        if address.version == 4 and prefix.prefixlen < 31 and address == prefix.broadcast_address:
            return f"is the broadcast address of {prefix}"
        return None

    def subnet_of(self, address: Address) -> VirtualSubnet | None:
        """The virtual subnet whose prefix contains `address`."""
        return next((s for s in self.subnets if s.prefix_of(address) is not None), None)

    def virtual_address(self, address: Address) -> VirtualAddress | None:
        return next((v for v in self.virtual_addresses if v.address == address), None)

    def subnet(self, vsid: int) -> VirtualSubnet | None:
        return next((s for s in self.subnets if s.vsid == vsid), None)

    @classmethod
    def from_dict(cls, body: Any, name: str | None = None, where: str = "") -> RoutingDomain:
        body = check_object(body, where)
        reject_unknown(body, {"name", "route_targets", "subnets", "customer_routes", "virtual_addresses"}, where)
        if name is not None and body.get("name", name) != name:
            raise ModelError(field_path(where, "name"), body.get("name"),
                             f"does not match the name in the path ({name})")
        rd_name = check_name(body.get("name", name), field_path(where, "name"))
        rts = check_list(body.get("route_targets"), field_path(where, "route_targets"))
        if not all(isinstance(rt, str) for rt in rts):
            raise ModelError(field_path(where, "route_targets"), rts, "must be a list of strings")
        subnets = tuple(
            VirtualSubnet.from_dict(s, f"{field_path(where, 'subnets')}[{i}]")
            for i, s in enumerate(check_list(body.get("subnets"), field_path(where, "subnets")))
        )
        routes = tuple(
            CustomerRoute.from_dict(r, f"{field_path(where, 'customer_routes')}[{i}]")
            for i, r in enumerate(check_list(body.get("customer_routes", []), field_path(where, "customer_routes")))
        )
        virtual = tuple(
            VirtualAddress.from_dict(v, f"{field_path(where, 'virtual_addresses')}[{i}]")
            for i, v in enumerate(check_list(body.get("virtual_addresses", []),
                                             field_path(where, "virtual_addresses")))
        )
        try:
            return cls(name=rd_name, route_targets=tuple(rts), subnets=subnets, customer_routes=routes,
                       virtual_addresses=virtual)
        except ModelError as exc:
            raise exc.within(where) from None


@dataclass(frozen=True)
class Port:
    name: str
    interface: str  # the host side of the VM's interface (tap or veth)
    mac: Mac
    vsid: int
    addresses: tuple[Address, ...]  # the VM's customer addresses (CAs)
    mtu: int | None = None  # None: derived from the underlay MTU and the encapsulation overhead
    # Port security (vnet/portsecurity.py): the VM may send only from its MAC and its CAs (and its IPv6
    # link-local), ARP/ND only for them, no DHCP server replies and no router advertisements. False turns
    # every check off for this port, as OVN's port_security does.
    port_security: bool = True
    # More sources the VM may send from (and answer ARP/ND for): e.g. an appliance behind a customer route,
    # or a virtual IP moving between VMs (OVN's allowed-address pairs)
    allowed_addresses: tuple[Network, ...] = ()

    def __post_init__(self) -> None:
        check_name(self.name, "name", PORT_NAME_RE)
        check_name(self.interface, "interface", IFNAME_RE)
        # built in code with another notation, a port still holds (and compares by) the canonical MAC
        object.__setattr__(self, "mac", check_mac(self.mac, "mac"))
        check_vsid(self.vsid, "vsid")
        if not self.addresses:
            raise ModelError("addresses", [], "a port needs at least one customer address")
        if len(set(self.addresses)) != len(self.addresses):
            raise ModelError("addresses", [str(a) for a in self.addresses], "contains a duplicate")
        if self.mtu is not None and not 1280 <= self.mtu <= 9000:
            raise ModelError("mtu", self.mtu, "must be in 1280..9000 (1280: the IPv6 minimum)")
        if not isinstance(self.port_security, bool):
            raise ModelError("port_security", self.port_security, "must be true or false")
        for i, prefix in enumerate(self.allowed_addresses):
            if not isinstance(prefix, ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise ModelError(f"allowed_addresses[{i}]", prefix, "is not a network prefix")
        if (repeat := first_repeat(self.allowed_addresses)) is not None:
            i, j = repeat
            raise ModelError(f"allowed_addresses[{i}]", str(self.allowed_addresses[i]),
                             f"duplicates allowed_addresses[{j}]")

    @classmethod
    def from_dict(cls, body: Any, name: str | None = None, where: str = "") -> Port:
        body = check_object(body, where)
        reject_unknown(body, {"name", "interface", "mac", "vsid", "addresses", "mtu", "port_security",
                              "allowed_addresses"}, where)
        if name is not None and body.get("name", name) != name:
            raise ModelError(field_path(where, "name"), body.get("name"),
                             f"does not match the name in the path ({name})")
        port_name = check_name(body.get("name", name), field_path(where, "name"), PORT_NAME_RE)
        addresses = tuple(
            check_address(a, f"{field_path(where, 'addresses')}[{i}]")
            for i, a in enumerate(check_list(body.get("addresses"), field_path(where, "addresses")))
        )
        mtu = body.get("mtu")
        if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int)):
            raise ModelError(field_path(where, "mtu"), mtu, "must be an integer")
        port_security = body.get("port_security", True)
        if not isinstance(port_security, bool):
            raise ModelError(field_path(where, "port_security"), port_security, "must be true or false")
        allowed = tuple(
            check_network(a, f"{field_path(where, 'allowed_addresses')}[{i}]")
            for i, a in enumerate(check_list(body.get("allowed_addresses"), field_path(where, "allowed_addresses")))
        )
        try:
            return cls(
                name=port_name,
                interface=check_name(body.get("interface"), field_path(where, "interface"), IFNAME_RE),
                mac=check_mac(body.get("mac"), field_path(where, "mac")),
                vsid=check_vsid(body.get("vsid"), field_path(where, "vsid")),
                addresses=addresses,
                mtu=mtu,
                port_security=port_security,
                allowed_addresses=allowed,
            )
        except ModelError as exc:
            raise exc.within(where) from None

    def to_dict(self) -> dict[str, Any]:
        """The body from_dict accepts (the API's and the state file's encoding)."""
        body: dict[str, Any] = {"name": self.name, "interface": self.interface, "mac": self.mac, "vsid": self.vsid,
                                "addresses": [str(a) for a in self.addresses]}
        if self.mtu is not None:
            body["mtu"] = self.mtu
        body["port_security"] = self.port_security
        body["allowed_addresses"] = [str(p) for p in self.allowed_addresses]
        return body


@dataclass(frozen=True, slots=True)
class LookupRecord:
    """What a host knows about one customer address: HNV's Get-NetVirtualizationLookupRecord row."""

    routing_domain: str
    vsid: int
    ca: Address
    mac: Mac
    pa: Address | None = None  # the provider address of the host that has the CA; None for local ports
    local: bool = False
    port: str | None = None  # the local port's name, for local records


@dataclass(frozen=True, slots=True)
class RemotePrefix:
    """A prefix learned from another host or gateway (EVPN type 5, RFC 9136), e.g. the gateway's default
    route: routed inside `routing_domain` to the host with provider address `pa`, in virtual subnet `vsid`."""

    routing_domain: str
    prefix: Network
    vsid: int
    pa: Address
    router_mac: Mac | None = None
    gateway_ip: Address | None = None
