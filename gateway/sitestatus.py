"""What the gateway says about its tenants' sites, from charon's SAs (gateway/strongswan.py `SiteSa`): their
Prometheus series and the trace of a packet from a tenant's CA to a site's prefix; and the series of the sites'
BGP sessions (gateway/sitepeers.py), what they learned judged (gateway/sitebgp.py). Pure: the SAs and the sessions
are read by the caller (one list-sas per scrape or trace).

Series carry the labels `tenant` and `site` only: at most 15 sites per tenant (sites.SLOT_MAX), so as many
series as the tenants' sites, whatever the SAs do. SPIs and addresses change at every rekey and failover: they
are in the API's status and the trace, never labels. Bytes and packets are the sum over the site's child SAs
that charon lists; a rekey starts a new child SA from zero, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from nvfabric.bgp.metrics import STATES
from nvfabric.gateway import sitebgp, sites as sitemodel
from nvfabric.gateway.config import External
from nvfabric.gateway.sites import Site
from nvfabric.gateway.strongswan import ChildSa, SiteSa
from nvfabric.gateway.tenants import Tenant
from nvfabric.vnet.desired import vrf_name
from nvfabric.vnet.model import Address, Network

UP_CHILD = "INSTALLED"
UP_IKE = "ESTABLISHED"


def installed(sa: SiteSa | None) -> tuple[ChildSa, ...]:
    """The child SAs that carry traffic (installed in the kernel), newest first."""
    if sa is None or sa.state != UP_IKE:
        return ()
    return tuple(sorted((c for c in sa.children if c.state == UP_CHILD), key=lambda c: -(c.installed_at or 0)))


# ---------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class SiteSample:
    tenant: str
    site: str
    sa: SiteSa | None


def samples(tenants: Iterable[Tenant], sas: Mapping[str, SiteSa]) -> list[SiteSample]:
    """Every configured IPsec site with its IKE SA (None: charon has none), in tenant and site order (a GRE site
    has no SA to report)."""
    return [SiteSample(t.name, s.name, sas.get(sitemodel.connection_name(t.name, s)))
            for t in sorted(tenants, key=lambda t: t.name) for s in sitemodel.ipsec_sites(t.sites)]


class SiteCollector:
    """The sites' series for /metrics, from one list-sas read at scrape time."""

    def __init__(self, found: list[SiteSample]) -> None:
        self.found = found

    def collect(self) -> Iterable[Any]:
        labels = ["tenant", "site"]
        ike = GaugeMetricFamily("nvfabric_gateway_site_ike_up", "1 when the site's IKE SA is established",
                                labels=labels)
        child = GaugeMetricFamily("nvfabric_gateway_site_tunnel_up", "1 when the site has a child SA installed "
                                  "(traffic passes the tunnel)", labels=labels)
        established = GaugeMetricFamily("nvfabric_gateway_site_ike_established_time_seconds", "wall clock (Unix "
                                        "seconds) the IKE SA was established, rekeyed or reauthenticated last",
                                        labels=labels)
        rekeyed = GaugeMetricFamily("nvfabric_gateway_site_child_installed_time_seconds", "wall clock (Unix "
                                    "seconds) the newest child SA was installed (its last rekey)", labels=labels)
        counters = {(d, unit): CounterMetricFamily(f"nvfabric_gateway_site_{d}_{unit}", f"{unit} {d} through "
                                                   "the site's child SAs (reset by a rekey)", labels=labels)
                    for d in ("received", "sent") for unit in ("bytes", "packets")}
        for s in self.found:
            key = [s.tenant, s.site]
            children = installed(s.sa)
            ike.add_metric(key, int(s.sa is not None and s.sa.state == UP_IKE))
            child.add_metric(key, int(bool(children)))
            if s.sa is not None and s.sa.established_at is not None and s.sa.state == UP_IKE:
                established.add_metric(key, round(s.sa.established_at))
            if children and children[0].installed_at is not None:
                rekeyed.add_metric(key, round(children[0].installed_at))
            every = s.sa.children if s.sa is not None else ()
            for (d, unit), family in counters.items():
                attr = f"{unit}_{'in' if d == 'received' else 'out'}"
                family.add_metric(key, sum(getattr(c, attr) for c in every))
        yield from (ike, child, established, rekeyed, *counters.values())


# ---------------------------------------------------------------------- metrics of the sites' BGP


@dataclass(frozen=True)
class SiteBgpSample:
    """One site's BGP session as a scrape sees it: `state` None when this gateway runs none (it stands by)."""

    tenant: str
    site: str
    state: str | None
    announced: int = 0  # routes the gateway announces to the site (the tenant's subnets)
    received: int = 0  # prefixes the site announces, accepted or not
    accepted: int = 0
    refused: int = 0


class SiteBgpCollector:
    """The BGP sites' series for /metrics. Every site with `bgp` has them whatever the role: on a standby (no
    session) the state is idle and the counts 0, so `nvfabric_gateway_site_bgp_session_state{state="established"}
    == 0 and on() nvfabric_gateway_serving == 1` is an alert without `absent()`."""

    def __init__(self, found: list[SiteBgpSample]) -> None:
        self.found = found

    def collect(self) -> Iterable[Any]:
        labels = ["tenant", "site"]
        state = GaugeMetricFamily("nvfabric_gateway_site_bgp_session_state", "the site's BGP session state: 1 for "
                                  "the state it is in, 0 for the others", labels=[*labels, "state"])
        gauges = {what: GaugeMetricFamily(f"nvfabric_gateway_site_bgp_{what}_prefixes", help_, labels=labels)
                  for what, help_ in (("announced", "routes announced to the site (the tenant's subnets)"),
                                      ("received", "prefixes the site announces now, accepted or not"),
                                      ("accepted", "prefixes the site announces that are routed into the tenant"),
                                      ("refused", "prefixes the site announces that are refused (the status says "
                                                  "why)"))}
        for s in self.found:
            key = [s.tenant, s.site]
            for name in STATES:
                state.add_metric([*key, name], 1 if name == (s.state or "idle") else 0)
            for what, family in gauges.items():
                family.add_metric(key, getattr(s, what))
        yield state
        yield from gauges.values()


def bgp_samples(tenants: Iterable[Tenant], learned: Callable[[str], Mapping[str, Iterable[Network]]],
                session: Callable[[str, str], Mapping[str, Any] | None]) -> list[SiteBgpSample]:
    """Every site with `bgp`, in tenant and site order: its session (`session(tenant, site)`: the state and the
    routes announced to it, None when there is none) and what it announces (`learned(tenant)`), judged."""
    out = []
    for t in sorted(tenants, key=lambda t: t.name):
        if not any(s.bgp is not None for s in t.sites):
            continue
        heard = {site: set(prefixes) for site, prefixes in learned(t.name).items()}
        verdicts = sitebgp.judge(t, heard)
        for site in t.sites:
            if site.bgp is None:
                continue
            found = session(t.name, site.name)
            verdict = verdicts.get(site.name, sitebgp.Verdict())
            out.append(SiteBgpSample(t.name, site.name, None if found is None else str(found["state"]),
                                     0 if found is None else int(found["announced"]), len(heard.get(site.name, ())),
                                     len(verdict.accepted), len(verdict.refused)))
    return out


# ---------------------------------------------------------------------- trace


@dataclass(frozen=True)
class SiteHop:
    """Where a tenant's packet to a site prefix goes: the tenant's VRF, the route to the site's tunnel, the child
    SA that encrypts it (its selectors and outbound SPI) and the outer addresses; `up` False says why not."""

    site: str
    vrf: str
    table: int
    prefix: str
    device: str
    if_id: int
    ike_state: str | None
    spi_out: str | None
    spi_in: str | None
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    outer_src: str | None
    outer_dst: str
    up: bool
    reason: str
    kind: str = "ipsec"
    gre_key: int | None = None  # a GRE site's key (None: keyless, or an IPsec site)

    def as_dict(self) -> dict[str, Any]:
        return {"site": self.site, "kind": self.kind, "vrf": self.vrf, "table": self.table, "prefix": self.prefix,
                "device": self.device, "if_id": self.if_id, "ike_state": self.ike_state, "spi_out": self.spi_out,
                "spi_in": self.spi_in, "local_ts": list(self.local_ts), "remote_ts": list(self.remote_ts),
                "outer": {"src": self.outer_src, "dst": self.outer_dst}, "key": self.gre_key, "up": self.up,
                "reason": self.reason}


def site_route(tenant: Tenant, dst: Address, learned: Mapping[str, sitebgp.Verdict] | None = None
               ) -> tuple[Site, Network] | None:
    """The site whose prefix the tenant's VRF routes `dst` to, None when none: its static prefixes, and what it
    announced over BGP that was accepted (`learned`: site name -> verdict, gateway/sitebgp.py `judge`); the most
    specific when several cover `dst` (a learned prefix inside another site's is refused, but one site may hold
    both a network and a part of it)."""
    learned = learned or {}
    found = [(s, p) for s in tenant.sites
             for p in (*s.prefixes, *(learned[s.name].accepted if s.name in learned else ()))
             if p.version == dst.version and dst in p]
    return max(found, key=lambda sp: sp[1].prefixlen, default=None)


def _covers(selectors: tuple[str, ...], address: Address) -> bool:
    for text in selectors:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:  # a range (a-b) or a port-qualified selector: charon's syntax, not a prefix
            continue
        if net.version == address.version and address in net:
            return True
    return False


def trace(tenant: Tenant, tid: int, src: Address, dst: Address, sas: Mapping[str, SiteSa],
          external: External, learned: Mapping[str, sitebgp.Verdict] | None = None) -> SiteHop | None:
    """The path of a packet from the tenant's `src` to `dst` when `dst` is a site's (None: no site routes it)."""
    found = site_route(tenant, dst, learned)
    if found is None:
        return None
    site, prefix = found
    if site.kind == "gre":
        return _gre_hop(tenant, tid, site, prefix, external)
    sa = sas.get(sitemodel.connection_name(tenant.name, site))
    children = installed(sa)
    local = external.address4 if dst.version == 4 else external.address6
    hop = SiteHop(site.name, vrf_name(tenant.name), tid, str(prefix), sitemodel.device_name(tid, site),
                  sitemodel.if_id(tid, site), None if sa is None else sa.state, None, None, (), (),
                  sa.local if sa is not None and sa.local else None if local is None else str(local),
                  str(site.remote_address), False, "")
    if not children:
        why = "no IKE SA with the site" if sa is None else f"the IKE SA is {sa.state} with no child SA installed"
        return replace(hop, reason=f"the SA is down ({why}): the tunnel drops the packet")
    child = children[0]
    hop = replace(hop, spi_out=child.spi_out, spi_in=child.spi_in, local_ts=child.local_ts, remote_ts=child.remote_ts)
    if child.local_ts and child.remote_ts and not (_covers(child.local_ts, src) and _covers(child.remote_ts, dst)):
        return replace(hop, reason=f"the child SA's selectors ({', '.join(child.local_ts)} <-> "
                       f"{', '.join(child.remote_ts)}) do not carry {src} -> {dst}: the tunnel drops it")
    return replace(hop, up=True, reason=f"routed by table {tid} to {hop.device}, encrypted with SPI 0x{child.spi_out} "
                   f"to {site.remote_address}; tenant-to-site traffic is never NATed")


def _gre_hop(tenant: Tenant, tid: int, site: Site, prefix: Network, external: External) -> SiteHop:
    """A GRE site's path: no SA to be down, no selectors (the tunnel carries whatever the VRF routes to it)."""
    local = external.gre_local(site.remote_address.version)
    key = "no key" if site.key is None else f"key {site.key}"
    return SiteHop(site.name, vrf_name(tenant.name), tid, str(prefix), sitemodel.device_name(tid, site),
                   sitemodel.if_id(tid, site), None, None, None, (), (), None if local is None else str(local),
                   str(site.remote_address), True,
                   f"routed by table {tid} to {sitemodel.device_name(tid, site)}, in GRE ({key}, not encrypted) from "
                   f"{local} to {site.remote_address}; tenant-to-site traffic is never NATed", "gre", site.key)


# ---------------------------------------------------------------------- certificates


class CertificateCollector:
    """When each site's certificates expire (the first of the gateway's and the site's CAs), for an alert ahead
    of it: `nvfabric_gateway_site_certificate_expiry_time_seconds - time() < 14 * 86400`. From the configuration
    alone: no charon read."""

    def __init__(self, tenants: Iterable[Tenant]) -> None:
        self.tenants = sorted(tenants, key=lambda t: t.name)

    def collect(self) -> Iterable[Any]:
        expiry = GaugeMetricFamily("nvfabric_gateway_site_certificate_expiry_time_seconds", "wall clock (Unix "
                                   "seconds) the first of a site's certificates expires (auth certificate)",
                                   labels=["tenant", "site"])
        for t in self.tenants:
            for s in t.sites:
                if s.certs is not None:
                    expiry.add_metric([t.name, s.name], round(s.certs.first_expiry.timestamp()))
        yield expiry
