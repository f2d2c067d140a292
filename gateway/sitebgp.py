"""eBGP with a tenant's site across its tunnel: the model of a site's `bgp:` and the pure decisions on it.

```yaml
    sites:
      - name: paris
        remote_address: 203.0.113.50
        psk: "..."
        prefixes: []                    # static prefixes stay allowed beside BGP (both are routed in)
        bgp:
          peer_address: 10.255.0.2      # the site's router, inside the tunnel
          peer_as: 65020
          local_address: 10.255.0.1/30  # the gateway's end, put on the tunnel's device (its prefix: connected)
          local_as: 65000               # default: the gateway's own AS (`asn`)
          hold_time: 90                 # default: the gateway's hold_time
          max_prefixes: 1000            # more routes than this from the site: the session is torn down
          accept: [10.30.0.0/16]        # default: the site's remote_ts
```

What the site announces is judged per prefix (`judge`): never a default route, never a prefix overlapping the
tenant's own subnets (a hostile site must not take the tenant's subnets or its way out), only inside `accept`
(else the remote traffic selectors: what the tunnel carries), never the tunnel's own addresses nor another
site's prefixes (static, or learned first by a site of a lower slot). What is accepted becomes routes in the
tenant's VRF to the tunnel (`vrf_routes`) and EVPN type-5 routes into the tenant with the gateway's PA as next
hop (`prefix_routes`, with the site's static prefixes); the tenant's own subnets are announced to the site
(`to_site`). The sessions themselves: gateway/sitepeers.py.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nvfabric.bgp.config import MaxPrefix, MaxPrefixAction, Neighbor
from nvfabric.bgp.routes import PrefixKey, PrefixRoute, UnicastKey, UnicastRoute
from nvfabric.vnet.announce import route_distinguisher
from nvfabric.vnet.errors import ModelError
from nvfabric.vnet.kernel.objects import LocalPortRoute, TunnelAddress
from nvfabric.vnet.model import Network, check_address, check_list, check_network, check_object, field_path, \
    reject_unknown

if TYPE_CHECKING:
    from nvfabric.gateway.sites import Site
    from nvfabric.gateway.tenants import Tenant

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
AS_MAX = 0xFFFFFFFF
AS_TRANS = 23456  # RFC 6793: a placeholder, never a real AS
DEFAULT_MAX_PREFIXES = 1000
MAX_PREFIXES_LIMIT = 100_000
MAX_PREFIX_RESTART = 60  # seconds a site torn down for too many routes waits before it is dialled again


def _as_number(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= AS_MAX or value == AS_TRANS:
        raise ModelError(where, value, f"must be an AS number 1..{AS_MAX} (not {AS_TRANS}, AS_TRANS)")
    return value


@dataclass(frozen=True)
class SiteBgp:
    peer_address: ipaddress.IPv4Address | ipaddress.IPv6Address
    peer_as: int
    local_address: Interface
    local_as: int | None = None  # None: the gateway's own AS
    hold_time: int | None = None  # None: the gateway's hold_time
    max_prefixes: int = DEFAULT_MAX_PREFIXES
    accept: tuple[Network, ...] = ()  # empty: the site's remote_ts

    def __post_init__(self) -> None:
        _as_number(self.peer_as, "peer_as")
        if self.local_as is not None:
            _as_number(self.local_as, "local_as")
            if self.local_as == self.peer_as:
                raise ModelError("peer_as", self.peer_as, "is local_as: the session with a site is eBGP")
        local, peer = self.local_address, self.peer_address
        if peer.version != local.version:
            raise ModelError("peer_address", str(peer), f"is not of local_address's family (IPv{local.version})")
        if local.network.prefixlen >= local.max_prefixlen:
            raise ModelError("local_address", str(local), "needs a prefix length that holds the peer too "
                             "(e.g. /30 or /31, /126 or /127)")
        if peer not in local.network:
            raise ModelError("peer_address", str(peer), f"is outside local_address's prefix {local.network}: "
                             "the peer is reached through the tunnel's connected prefix")
        if peer == local.ip:
            raise ModelError("peer_address", str(peer), "is local_address itself")
        if local.version == 4 and local.network.prefixlen < 31:
            for name, a in (("local_address", local.ip), ("peer_address", peer)):
                if a in (local.network.network_address, local.network.broadcast_address):
                    raise ModelError(name, str(a), f"is the network or broadcast address of {local.network}")
        if self.hold_time is not None and (isinstance(self.hold_time, bool) or not isinstance(self.hold_time, int)
                                           or not (self.hold_time == 0 or 3 <= self.hold_time <= 0xFFFF)):
            raise ModelError("hold_time", self.hold_time, "must be 0 or 3..65535 seconds (RFC 4271 4.2)")
        if isinstance(self.max_prefixes, bool) or not isinstance(self.max_prefixes, int) \
                or not 1 <= self.max_prefixes <= MAX_PREFIXES_LIMIT:
            raise ModelError("max_prefixes", self.max_prefixes, f"must be 1..{MAX_PREFIXES_LIMIT}")

    @classmethod
    def from_dict(cls, body: Any, where: str) -> SiteBgp:
        body = check_object(body, where)
        reject_unknown(body, {"peer_address", "peer_as", "local_address", "local_as", "hold_time", "max_prefixes",
                              "accept"}, where)
        for key in ("peer_address", "peer_as", "local_address"):
            if key not in body:
                raise ModelError(field_path(where, key), None, "required with bgp")
        try:
            local = ipaddress.ip_interface(body["local_address"])
            if "/" not in str(body["local_address"]):
                raise ValueError("no prefix length")
        except (ValueError, TypeError) as exc:
            raise ModelError(field_path(where, "local_address"), body["local_address"],
                             f"is not an address with its prefix length, e.g. 10.255.0.1/30 ({exc})") from None
        accept = tuple(check_network(v, f"{field_path(where, 'accept')}[{i}]")
                       for i, v in enumerate(check_list(body.get("accept"), field_path(where, "accept"))))
        try:
            return cls(peer_address=check_address(body["peer_address"], field_path(where, "peer_address")),
                       peer_as=body["peer_as"], local_address=local, local_as=body.get("local_as"),
                       hold_time=body.get("hold_time"), max_prefixes=body.get("max_prefixes", DEFAULT_MAX_PREFIXES),
                       accept=accept)
        except ModelError as exc:
            raise exc.within(where) from None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"peer_address": str(self.peer_address), "peer_as": self.peer_as,
                               "local_address": str(self.local_address), "max_prefixes": self.max_prefixes,
                               "accept": [str(p) for p in self.accept]}
        if self.local_as is not None:
            out["local_as"] = self.local_as
        if self.hold_time is not None:
            out["hold_time"] = self.hold_time
        return out

    def check_selectors(self, local_ts: Iterable[Network], remote_ts: Iterable[Network]) -> None:
        """The tunnel must carry the session and what is accepted: local_address inside a local traffic
        selector, the peer and every `accept` prefix inside a remote one."""
        def inside(p: Network, selectors: Iterable[Network]) -> bool:
            return any(p.version == ts.version and p.subnet_of(ts) for ts in selectors)  # type: ignore[arg-type]

        local_ts, remote_ts = tuple(local_ts), tuple(remote_ts)
        if not inside(ipaddress.ip_network(self.local_address.ip), local_ts):
            raise ModelError("bgp.local_address", str(self.local_address), "is outside every local_ts: the tunnel "
                             "would not carry the session")
        if not inside(ipaddress.ip_network(self.peer_address), remote_ts):
            raise ModelError("bgp.peer_address", str(self.peer_address), "is outside every remote_ts: the tunnel "
                             "would not carry the session")
        for i, p in enumerate(self.accept):
            if not inside(p, remote_ts):
                raise ModelError(f"bgp.accept[{i}]", str(p), "is outside every remote_ts: the tunnel would not "
                                 "carry it")


def check_tenant(sites: Iterable[Site], own: Iterable[Network]) -> None:
    """A tenant's sites' BGP together: a tunnel's inside prefix overlaps neither the tenant's subnets, nor a
    site's static prefixes, nor another tunnel's inside prefix."""
    sites, own = tuple(sites), tuple(own)
    taken: list[tuple[Network, str]] = [(p, "the tenant's subnet") for p in own]
    taken += [(p, f"sites[{i}].prefixes[{k}]") for i, s in enumerate(sites) for k, p in enumerate(s.prefixes)]
    for i, site in enumerate(sites):
        if site.bgp is None:
            continue
        inside = site.bgp.local_address.network
        for p, what in taken:
            if p.version == inside.version and p.overlaps(inside):  # type: ignore[arg-type]
                raise ModelError(f"sites[{i}].bgp.local_address", str(site.bgp.local_address),
                                 f"its prefix overlaps {what} ({p})")
        taken.append((inside, f"sites[{i}].bgp.local_address"))


def check_asn(sites: Iterable[Site], asn: int, where: str = "") -> None:
    """The gateway's own AS is the default local_as: a site in that AS would be iBGP."""
    for i, site in enumerate(sites):
        if site.bgp is not None and site.bgp.local_as is None and site.bgp.peer_as == asn:
            raise ModelError(field_path(where, f"sites[{i}].bgp.peer_as"), site.bgp.peer_as, "is the gateway's own "
                             "AS (asn): the session with a site is eBGP (set local_as to another AS)")


# ---------------------------------------------------------------------- pure: what is learned, what it becomes


@dataclass(frozen=True)
class Verdict:
    """One site's learned prefixes judged: what is accepted (routed in) and what is refused, with why."""

    accepted: tuple[Network, ...] = ()
    refused: tuple[tuple[Network, str], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": [str(p) for p in self.accepted],
                "refused": [{"prefix": str(p), "reason": r} for p, r in self.refused]}


def _order(p: Network) -> tuple[int, int, int]:
    return (p.version, int(p.network_address), p.prefixlen)


def judge(tenant: Tenant, learned: Mapping[str, Iterable[Network]]) -> dict[str, Verdict]:
    """Pure: each BGP site's learned prefixes (site name -> prefixes) judged against the tenant (module
    docstring). Sites in slot order: of two sites announcing overlapping prefixes, the lower slot keeps its own."""
    own = tenant.prefixes
    statics = [(p, s.name) for s in tenant.sites for p in s.prefixes]
    tunnels = [(s.bgp.local_address.network, s.name) for s in tenant.sites if s.bgp is not None]
    earlier: list[tuple[Network, str]] = []
    out: dict[str, Verdict] = {}
    for site in sorted((s for s in tenant.sites if s.bgp is not None), key=lambda s: s.slot):
        assert site.bgp is not None
        allowed = site.bgp.accept or site.remote_ts
        accepted: list[Network] = []
        refused: list[tuple[Network, str]] = []
        for p in sorted(set(learned.get(site.name, ())), key=_order):
            reason = _refusal(p, site.name, own, allowed, statics, tunnels, earlier)
            if reason is None:
                accepted.append(p)
            else:
                refused.append((p, reason))
        earlier += [(p, site.name) for p in accepted]
        out[site.name] = Verdict(tuple(accepted), tuple(refused))
    return out


def _refusal(p: Network, site: str, own: Iterable[Network], allowed: Iterable[Network],
             statics: Iterable[tuple[Network, str]], tunnels: Iterable[tuple[Network, str]],
             earlier: Iterable[tuple[Network, str]]) -> str | None:
    def overlapping(q: Network) -> bool:
        return q.version == p.version and q.overlaps(p)  # type: ignore[arg-type]

    if p.prefixlen == 0:
        return "a default route: the tenant's way out is the gateway's"
    for q in own:
        if overlapping(q):
            return f"overlaps the tenant's subnet {q}"
    if not any(p.version == a.version and p.subnet_of(a) for a in allowed):  # type: ignore[arg-type]
        return "outside the site's accept (or remote_ts)"
    for q, name in tunnels:
        if overlapping(q):
            return f"overlaps the tunnel addresses of site {name} ({q})"
    for q, name in statics:
        if overlapping(q) and not (name == site and q == p):
            return f"overlaps the prefix {q} of site {name}"
    for q, name in earlier:
        if overlapping(q):
            return f"overlaps {q}, learned from site {name}"
    return None


def tunnel_address(site: Site, dev: str) -> TunnelAddress | None:
    if site.bgp is None:
        return None
    local = site.bgp.local_address
    return TunnelAddress(dev, str(local.ip), local.network.prefixlen)


def vrf_routes(tenant: Tenant, tid: int, verdicts: Mapping[str, Verdict], device: Any) -> frozenset[LocalPortRoute]:
    """Pure: the accepted learned prefixes routed to their site's tunnel in the tenant's table (`device(site)`
    names it); a prefix that is also the site's static one is that route already."""
    out = set()
    for site in tenant.sites:
        verdict = verdicts.get(site.name)
        if verdict is not None:
            out.update(LocalPortRoute(tid, str(p), device(site)) for p in verdict.accepted if p not in site.prefixes)
    return frozenset(out)


def prefix_routes(tenant: Tenant, verdicts: Mapping[str, Verdict], router_id: str, pa: object,
                  router_mac: object) -> dict[PrefixKey, PrefixRoute]:
    """Pure: the sites' prefixes (static and accepted learned ones) as EVPN type-5 routes into the tenant, the
    gateway's PA as next hop, in the tenant's first VSID, as the gateway's default route (gateway/evpn.py): the
    hosts route them to the gateway, which routes them into the tunnels."""
    if not tenant.vsids:
        return {}
    vsid = tenant.vsids[0]
    families = {p.version for p in tenant.prefixes}
    prefixes = {p for s in tenant.sites for p in s.prefixes}
    prefixes.update(p for v in verdicts.values() for p in v.accepted)
    out: dict[PrefixKey, PrefixRoute] = {}
    for p in sorted(prefixes, key=_order):
        if p.version not in families:
            continue
        route = PrefixRoute(rd=route_distinguisher(router_id, vsid), prefix=p, vsid=vsid, next_hop=pa,
                            route_targets=tenant.routing_domain.route_targets, router_mac=router_mac)
        out[route.key] = route
    return out


def to_site(tenant: Tenant, site: Site) -> dict[UnicastKey, UnicastRoute]:
    """Pure: what the gateway announces to the site: the tenant's own subnets of the session's family, with
    the gateway's tunnel address as next hop."""
    if site.bgp is None:
        return {}
    nh = site.bgp.local_address.ip
    routes = (UnicastRoute(prefix=p, next_hop=nh) for p in tenant.prefixes if p.version == nh.version)
    return {r.key: r for r in routes}


def neighbor(site: Site, vrf: str) -> Neighbor:
    """The speaker's neighbour for the site's router: dialled from the tunnel address, its socket bound to the
    tenant's VRF device (so it is routed by the tenant's table, into the tunnel); torn down when it sends more
    than max_prefixes routes."""
    assert site.bgp is not None
    return Neighbor(address=str(site.bgp.peer_address), asn=site.bgp.peer_as,
                    local_address=str(site.bgp.local_address.ip), bind_device=vrf, description=f"site {site.name}",
                    max_prefix=MaxPrefix(site.bgp.max_prefixes, MaxPrefixAction.TEARDOWN, MAX_PREFIX_RESTART))
