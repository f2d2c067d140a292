"""The gateway's tenants: a routing domain (vnet.model, the same one hosts use) plus its NAT.

A tenant reaches the internet through the gateway with
- one SNAT address per family (IPv4 NAPT; IPv6 only as NAT66 when the tenant has no public prefix),
  optionally restricted to a port range,
- floating IPs: a public address bound to one private customer address (CA), both directions,
- public IPv6 prefixes routed without NAT.

Values are frozen and validated on construction; every error is a vnet.errors.ModelError naming the field
(`tenants[1].floating_ips[0].public`). Checks across tenants (an address used twice, a VSID in two
tenants) are in `Claims` (an index: one tenant is checked in the time of what it holds) and `check_tenants`,
so a refused change is refused before anything is computed or applied.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nvfabric.gateway.sites import Site, check_sites
from nvfabric.vnet.errors import ConflictError, ModelError
from nvfabric.vnet.model import (
    IFNAME_RE,
    Address,
    Network,
    RoutingDomain,
    field_path,
    check_list,
    check_object,
    reject_unknown,
    check_address,
    check_name,
    check_network,
    first_repeat,
)

PORT_MIN, PORT_MAX = 1024, 65535  # below 1024: the gateway's own services would compete for the ports


@dataclass(frozen=True)
class Snat:
    """Source NAT for one family: every new flow of the tenant leaves with `address`, a port from the range."""

    address: Address
    ports: tuple[int, int] = (PORT_MIN, PORT_MAX)

    def __post_init__(self) -> None:
        lo, hi = self.ports
        if not PORT_MIN <= lo <= hi <= PORT_MAX:
            raise ModelError("ports", f"{lo}-{hi}", f"must be a range within {PORT_MIN}-{PORT_MAX}, low <= high")

    @classmethod
    def from_dict(cls, body: Any, where: str) -> Snat:
        if isinstance(body, str):  # the short form: just the address
            body = {"address": body}
        body = check_object(body, where)
        reject_unknown(body, {"address", "ports"}, where)
        address = check_address(body.get("address"), field_path(where, "address"))
        ports = body.get("ports", f"{PORT_MIN}-{PORT_MAX}")
        lo_hi = str(ports).split("-")
        try:
            lo, hi = (int(lo_hi[0]), int(lo_hi[-1]))
        except ValueError:
            raise ModelError(field_path(where, "ports"), ports, "must be 'LOW-HIGH' or one port number") from None
        try:
            return cls(address, (lo, hi))
        except ModelError as exc:
            raise exc.within(where) from None


@dataclass(frozen=True)
class FloatingIp:
    """A public address owned by one customer address: inbound DNAT to it, its outbound leaves with it."""

    public: Address
    private: Address

    def __post_init__(self) -> None:
        if self.public.version != self.private.version:
            raise ModelError("private", str(self.private), f"is not of the same family as {self.public}")

    @classmethod
    def from_dict(cls, body: Any, where: str) -> FloatingIp:
        body = check_object(body, where)
        reject_unknown(body, {"public", "private"}, where)
        public = check_address(body.get("public"), field_path(where, "public"))
        private = check_address(body.get("private"), field_path(where, "private"))
        try:
            return cls(public, private)
        except ModelError as exc:
            raise exc.within(where) from None


@dataclass(frozen=True)
class Tenant:
    routing_domain: RoutingDomain
    snat: tuple[Snat, ...] = ()  # at most one per family
    floating_ips: tuple[FloatingIp, ...] = ()
    public_prefixes: tuple[Network, ...] = ()  # IPv6 prefixes of the tenant routed as they are (no NAT66)
    # Interfaces that attach the tenant directly (a VLAN, a veth in tests) instead of NVGRE: traffic from
    # them is the tenant's. NVGRE-attached traffic is marked per VSID before netfilter (tc, gateway/dataplane.py).
    interfaces: tuple[str, ...] = ()
    sites: tuple[Site, ...] = ()  # the tenant's own sites, reached by tunnels (gateway/sites.py)

    @property
    def name(self) -> str:
        return self.routing_domain.name

    @property
    def prefixes(self) -> tuple[Network, ...]:
        return tuple(p for s in self.routing_domain.subnets for p in s.prefixes)

    @property
    def vsids(self) -> tuple[int, ...]:
        return tuple(s.vsid for s in self.routing_domain.subnets)

    def snat_for(self, version: int) -> Snat | None:
        return next((s for s in self.snat if s.address.version == version), None)

    @property
    def public_addresses(self) -> tuple[Address, ...]:
        """What the upstream router must route to the gateway serving this tenant."""
        return tuple(s.address for s in self.snat) + tuple(f.public for f in self.floating_ips)

    def __post_init__(self) -> None:
        versions = [s.address.version for s in self.snat]
        if len(set(versions)) != len(versions):
            raise ModelError("snat", [str(s.address) for s in self.snat], "at most one SNAT address per family")
        own = self.prefixes
        if (repeat := first_repeat(f.public for f in self.floating_ips)) is not None:
            i, j = repeat
            raise ModelError(f"floating_ips[{i}].public", str(self.floating_ips[i].public),
                             f"already used by floating_ips[{j}]")
        for i, fip in enumerate(self.floating_ips):
            if not any(fip.private in p for p in own):
                raise ModelError(f"floating_ips[{i}].private", str(fip.private),
                                 "is not inside any subnet of the tenant's routing domain")
            if any(fip.public in p for p in own):
                raise ModelError(f"floating_ips[{i}].public", str(fip.public), "is inside the tenant's own subnets")
        if (repeat := first_repeat(f.private for f in self.floating_ips)) is not None:
            # two public addresses for one CA: which one its outbound leaves with would be arbitrary
            i, j = repeat
            raise ModelError(f"floating_ips[{i}].private", str(self.floating_ips[i].private),
                             f"already has floating_ips[{j}]")
        seen = {f.public: i for i, f in enumerate(self.floating_ips)}
        for i, snat in enumerate(self.snat):
            if snat.address in seen:
                raise ModelError(f"snat[{i}].address", str(snat.address),
                                 f"is also floating_ips[{seen[snat.address]}].public")
        for i, prefix in enumerate(self.public_prefixes):
            if prefix.version != 6:
                raise ModelError(f"public_prefixes[{i}]", str(prefix), "public prefixes are IPv6 (IPv4 uses SNAT)")
            if not any(prefix.subnet_of(p) or p.subnet_of(prefix) for p in own if p.version == 6):
                raise ModelError(f"public_prefixes[{i}]", str(prefix), "overlaps none of the tenant's IPv6 subnets")
        if self.public_prefixes and self.snat_for(6) is not None:
            raise ModelError("snat", str(self.snat_for(6).address),  # type: ignore[union-attr]
                             "NAT66 and public IPv6 prefixes exclude each other: choose one")
        if len(set(self.interfaces)) != len(self.interfaces):
            raise ModelError("interfaces", list(self.interfaces), "contains a duplicate")
        check_sites(self.sites, own)

    @classmethod
    def from_dict(cls, body: Any, name: str | None = None, where: str = "") -> Tenant:
        body = check_object(body, where)
        known = {"name", "route_targets", "subnets", "snat", "floating_ips", "public_prefixes", "interfaces", "sites"}
        reject_unknown(body, known, where)
        domain = RoutingDomain.from_dict({k: body[k] for k in ("name", "route_targets", "subnets") if k in body},
                                     name=name, where=where)
        snat = tuple(Snat.from_dict(s, f"{field_path(where, 'snat')}[{i}]")
                     for i, s in enumerate(check_list(body.get("snat"), field_path(where, "snat"))))
        fips = tuple(FloatingIp.from_dict(f, f"{field_path(where, 'floating_ips')}[{i}]")
                     for i, f in enumerate(check_list(body.get("floating_ips"), field_path(where, "floating_ips"))))
        public = tuple(check_network(p, f"{field_path(where, 'public_prefixes')}[{i}]")
                       for i, p in enumerate(check_list(body.get("public_prefixes"),
                                                        field_path(where, "public_prefixes"))))
        ifaces = tuple(check_name(x, f"{field_path(where, 'interfaces')}[{i}]", IFNAME_RE)
                       for i, x in enumerate(check_list(body.get("interfaces"), field_path(where, "interfaces"))))
        sites = tuple(Site.from_dict(x, f"{field_path(where, 'sites')}[{i}]", i)
                      for i, x in enumerate(check_list(body.get("sites"), field_path(where, "sites"))))
        try:
            return cls(domain, snat, fips, public, ifaces, sites)
        except ModelError as exc:
            raise exc.within(where) from None

    def as_dict(self, secrets: bool = True) -> dict[str, Any]:
        """The body a PUT takes: GET returns what PUT accepts (`secrets=False`: the sites' keys hidden)."""
        domain = self.routing_domain
        return {
            "name": domain.name,
            "route_targets": list(domain.route_targets),
            # (a subnet's `dhcp` options are the hosts' business, kept so that GET returns what PUT accepted)
            "subnets": [s.to_dict() for s in domain.subnets],
            "snat": [{"address": str(s.address), "ports": f"{s.ports[0]}-{s.ports[1]}"} for s in self.snat],
            "floating_ips": [{"public": str(f.public), "private": str(f.private)} for f in self.floating_ips],
            "public_prefixes": [str(p) for p in self.public_prefixes],
            "interfaces": list(self.interfaces),
            "sites": [s.as_dict(secrets) for s in self.sites],
        }


class Claims:
    """What each tenant holds that no other tenant may: its public addresses (SNAT and floating), its VSIDs,
    its attaching interfaces, its sites' remote addresses, its public IPv6 prefixes (which may not overlap
    another tenant's).

    An index, so that checking one tenant costs what that tenant holds, not the number of tenants (a
    one-tenant change at 1,000 tenants must not rescan the others). Prefix overlap: prefixes are nested or
    disjoint, so q overlaps p when q contains p (one dict lookup per prefix length of p) or q starts inside
    p (one bisection in the sorted starts)."""

    def __init__(self) -> None:
        self._owner: dict[object, tuple[str, str]] = {}  # key -> (tenant, field)
        self._held: dict[str, list[object]] = {}  # tenant -> its keys
        self._starts: list[tuple[int, int]] = []  # sorted (start, prefix length) of every claimed v6 prefix

    @classmethod
    def of(cls, tenants: Mapping[str, Tenant]) -> Claims:
        claims = cls()
        for name in sorted(tenants):
            claims.put(tenants[name])
        return claims

    @staticmethod
    def _keys(t: Tenant) -> list[tuple[object, str, object]]:
        out: list[tuple[object, str, object]] = []
        for i, s in enumerate(t.snat):
            out.append((("public", s.address), f"snat[{i}].address", s.address))
        for i, f in enumerate(t.floating_ips):
            out.append((("public", f.public), f"floating_ips[{i}].public", f.public))
        for i, subnet in enumerate(t.routing_domain.subnets):
            out.append((("vsid", subnet.vsid), f"subnets[{i}].vsid", subnet.vsid))
        for i, ifname in enumerate(t.interfaces):
            out.append((("if", ifname), f"interfaces[{i}]", ifname))
        for i, site in enumerate(t.sites):  # one IKE peer (one GRE remote and key), one tenant
            out.append((site.claim, f"sites[{i}].remote_address", site.remote_address))
        return out

    @staticmethod
    def _prefix_key(start: int, length: int) -> tuple[str, int, int]:
        return ("public6", start >> (128 - length) if length else 0, length)

    def check(self, tenant: Tenant, where: str = "") -> None:
        """Raise ConflictError (the field as `where.field`) if another tenant holds what `tenant` claims."""
        name = tenant.name

        def path(field: str) -> str:
            return f"{where}.{field}".lstrip(".")

        for key, field, shown in self._keys(tenant):
            owner = self._owner.get(key)
            if owner is not None and owner[0] != name:
                raise ConflictError(path(field), str(shown), f"already used by tenant {owner[0]!r} ({owner[1]})")
        for i, p in enumerate(tenant.public_prefixes):
            start, end = int(p.network_address), int(p.broadcast_address)
            found = [self._owner.get(self._prefix_key(start, length)) for length in range(p.prefixlen + 1)]
            at = bisect.bisect_left(self._starts, (start, -1))
            while at < len(self._starts) and self._starts[at][0] <= end:
                found.append(self._owner.get(self._prefix_key(*self._starts[at])))
                at += 1
            for owner in found:
                if owner is not None and owner[0] != name:
                    raise ConflictError(path(f"public_prefixes[{i}]"), str(p),
                                        f"overlaps tenant {owner[0]!r} ({owner[1]})")

    def put(self, tenant: Tenant) -> None:
        """Record what `tenant` holds (replacing what it held before). Check first: this does not."""
        self.remove(tenant.name)
        keys: list[object] = []
        for key, field, _ in self._keys(tenant):
            self._owner.setdefault(key, (tenant.name, field))
            keys.append(key)
        for i, p in enumerate(tenant.public_prefixes):
            start = int(p.network_address)
            key = self._prefix_key(start, p.prefixlen)
            if key not in self._owner:
                self._owner[key] = (tenant.name, f"public_prefixes[{i}]")
                bisect.insort(self._starts, (start, p.prefixlen))
            keys.append(key)
        self._held[tenant.name] = keys

    def remove(self, name: str) -> None:
        for key in self._held.pop(name, ()):
            if self._owner.get(key, ("",))[0] == name:
                del self._owner[key]
                if isinstance(key, tuple) and key[0] == "public6":
                    length = key[2]
                    start = key[1] << (128 - length) if length else 0
                    at = bisect.bisect_left(self._starts, (start, length))
                    if at < len(self._starts) and self._starts[at] == (start, length):
                        del self._starts[at]


def check_tenants(tenants: Mapping[str, Tenant], where: Mapping[str, str] | None = None) -> None:
    """Refuse what two tenants cannot share: a public address (SNAT or floating), a VSID, an interface, an
    overlapping public IPv6 prefix. `where` maps a tenant name to the path its errors should carry (e.g.
    `tenants[3]`); in name order, the later of two claimants is the one refused."""
    where = where or {}
    claims = Claims()
    for name in sorted(tenants):
        claims.check(tenants[name], where.get(name, ""))
        claims.put(tenants[name])


def tenants_by_name(tenants: Iterable[Tenant]) -> dict[str, Tenant]:
    out: dict[str, Tenant] = {}
    for i, t in enumerate(tenants):
        if t.name in out:
            raise ConflictError(f"tenants[{i}].name", t.name, "a tenant of that name is already defined")
        out[t.name] = t
    return out
