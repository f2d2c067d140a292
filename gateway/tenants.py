"""The gateway's tenants: a routing domain (vnet.model, the same one hosts use) plus its NAT.

A tenant reaches the internet through the gateway with
- one SNAT address per family (IPv4 NAPT; IPv6 only as NAT66 when the tenant has no public prefix),
  optionally restricted to a port range,
- floating IPs: a public address bound to one private customer address (CA), both directions,
- public IPv6 prefixes routed without NAT.

Values are frozen and validated on construction; every error is a vnet.errors.ModelError naming the field
(`tenants[1].floating_ips[0].public`). Checks across tenants (an address used twice, a VSID in two
tenants) are in `check_tenants`, so a refused change is refused before anything is computed or applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vnet.errors import ConflictError, ModelError
from vnet.model import (
    IFNAME_RE,
    Address,
    Network,
    RoutingDomain,
    _at,
    _list,
    _mapping,
    _reject_unknown,
    check_address,
    check_name,
    check_network,
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
        body = _mapping(body, where)
        _reject_unknown(body, {"address", "ports"}, where)
        address = check_address(body.get("address"), _at(where, "address"))
        ports = body.get("ports", f"{PORT_MIN}-{PORT_MAX}")
        lo_hi = str(ports).split("-")
        try:
            lo, hi = (int(lo_hi[0]), int(lo_hi[-1]))
        except ValueError:
            raise ModelError(_at(where, "ports"), ports, "must be 'LOW-HIGH' or one port number") from None
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
        body = _mapping(body, where)
        _reject_unknown(body, {"public", "private"}, where)
        public = check_address(body.get("public"), _at(where, "public"))
        private = check_address(body.get("private"), _at(where, "private"))
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
    # them is the tenant's. NVGRE-attached traffic is marked per VSID before netfilter (gateway/mark.py).
    interfaces: tuple[str, ...] = ()

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
        seen: dict[Address, int] = {}
        for i, fip in enumerate(self.floating_ips):
            if fip.public in seen:
                raise ModelError(f"floating_ips[{i}].public", str(fip.public),
                                 f"already used by floating_ips[{seen[fip.public]}]")
            seen[fip.public] = i
            if not any(fip.private in p for p in own):
                raise ModelError(f"floating_ips[{i}].private", str(fip.private),
                                 "is not inside any subnet of the tenant's routing domain")
            if any(fip.public in p for p in own):
                raise ModelError(f"floating_ips[{i}].public", str(fip.public), "is inside the tenant's own subnets")
        privates = [f.private for f in self.floating_ips]
        for i, fip in enumerate(self.floating_ips):
            if privates.index(fip.private) != i:
                # two public addresses for one CA: which one its outbound leaves with would be arbitrary
                raise ModelError(f"floating_ips[{i}].private", str(fip.private),
                                 f"already has floating_ips[{privates.index(fip.private)}]")
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

    @classmethod
    def from_dict(cls, body: Any, name: str | None = None, where: str = "") -> Tenant:
        body = _mapping(body, where)
        known = {"name", "route_targets", "subnets", "snat", "floating_ips", "public_prefixes", "interfaces"}
        _reject_unknown(body, known, where)
        rd = RoutingDomain.from_dict({k: body[k] for k in ("name", "route_targets", "subnets") if k in body},
                                     name=name, where=where)
        snat = tuple(Snat.from_dict(s, f"{_at(where, 'snat')}[{i}]")
                     for i, s in enumerate(_list(body.get("snat"), _at(where, "snat"))))
        fips = tuple(FloatingIp.from_dict(f, f"{_at(where, 'floating_ips')}[{i}]")
                     for i, f in enumerate(_list(body.get("floating_ips"), _at(where, "floating_ips"))))
        public = tuple(check_network(p, f"{_at(where, 'public_prefixes')}[{i}]")
                       for i, p in enumerate(_list(body.get("public_prefixes"), _at(where, "public_prefixes"))))
        ifaces = tuple(check_name(x, f"{_at(where, 'interfaces')}[{i}]", IFNAME_RE)
                       for i, x in enumerate(_list(body.get("interfaces"), _at(where, "interfaces"))))
        try:
            return cls(rd, snat, fips, public, ifaces)
        except ModelError as exc:
            raise exc.within(where) from None

    def as_dict(self) -> dict[str, Any]:
        """The body a PUT takes: GET returns what PUT accepts."""
        rd = self.routing_domain
        return {
            "name": rd.name,
            "route_targets": list(rd.route_targets),
            "subnets": [{"vsid": s.vsid, "prefixes": [str(p) for p in s.prefixes],
                         "gateways": [str(g) for g in s.gateways]} for s in rd.subnets],
            "snat": [{"address": str(s.address), "ports": f"{s.ports[0]}-{s.ports[1]}"} for s in self.snat],
            "floating_ips": [{"public": str(f.public), "private": str(f.private)} for f in self.floating_ips],
            "public_prefixes": [str(p) for p in self.public_prefixes],
            "interfaces": list(self.interfaces),
        }


def check_tenants(tenants: Mapping[str, Tenant], where: Mapping[str, str] | None = None) -> None:
    """Refuse what two tenants cannot share: a public address (SNAT or floating), a VSID, an interface.
    `where` maps a tenant name to the path its errors should carry (e.g. `tenants[3]`)."""
    where = where or {}
    owners: dict[object, tuple[str, str]] = {}

    def claim(key: object, tenant: str, field: str, shown: object) -> None:
        if key in owners and owners[key][0] != tenant:
            other, other_field = owners[key]
            path = f"{where.get(tenant, '')}.{field}".lstrip(".")
            raise ConflictError(path, str(shown), f"already used by tenant {other!r} ({other_field})")
        owners.setdefault(key, (tenant, field))

    for name in sorted(tenants):
        t = tenants[name]
        for i, s in enumerate(t.snat):
            claim(("public", s.address), name, f"snat[{i}].address", s.address)
        for i, f in enumerate(t.floating_ips):
            claim(("public", f.public), name, f"floating_ips[{i}].public", f.public)
        for i, subnet in enumerate(t.routing_domain.subnets):
            claim(("vsid", subnet.vsid), name, f"subnets[{i}].vsid", subnet.vsid)
        for i, p in enumerate(t.public_prefixes):
            for key, (other, field) in list(owners.items()):
                if (isinstance(key, tuple) and key[0] == "public6" and other != name
                        and key[1].overlaps(p)):
                    raise ConflictError(f"{where.get(name, '')}.public_prefixes[{i}]".lstrip("."), str(p),
                                        f"overlaps tenant {other!r} ({field})")
            owners[("public6", p)] = (name, f"public_prefixes[{i}]")
        for i, ifname in enumerate(t.interfaces):
            claim(("if", ifname), name, f"interfaces[{i}]", ifname)


def tenants_by_name(tenants: Iterable[Tenant]) -> dict[str, Tenant]:
    out: dict[str, Tenant] = {}
    for i, t in enumerate(tenants):
        if t.name in out:
            raise ConflictError(f"tenants[{i}].name", t.name, "a tenant of that name is already defined")
        out[t.name] = t
    return out
