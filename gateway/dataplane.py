"""The gateway's NVGRE side: the same dataplane as a host (vnet.desired + vnet.reconcile), plus what only a
gateway needs.

Through vnet (pure desired state, observed and diffed, nothing flushed), one partition per tenant, so a
one-tenant change computes and plans only that tenant's objects: a VRF whose table is the tenant id, `tun_id`
rules from the NVGRE devices into it, `unreachable default`, one encap route per tenant CA (records: learned
from the reflectors like a host does, gateway/evpn.py), and the gateway's own (`tenant_extras`):
- `ip rule fwmark <id> iif <external> lookup <id>` (IPv4 and IPv6), before the l3mdev rule (1000) and the
  tun_id rules (900): replies and floating-IP traffic, marked by nat.py from the conntrack mark, are routed
  into the tenant;
- the tenant's default route leaked to the external side, `default via <next hop> dev <external> metric 1`,
  which wins over vnet's `unreachable default` (metric UNREACHABLE_METRIC) in the same table;
- on the NVGRE devices' shared ingress block (TC_BLOCK), `flower enc_key_id VSID<<8 action skbedit mark <id>`,
  one filter per VSID with handle = VSID (vnet's FlowerMark), so a tenant change replaces only its own
  filters. Every tenant's traffic arrives on the same flow-based device; the mark is what tells tenants
  apart in nftables (zones) before routing;
- each site's tunnel (an XFRM interface or a GRE tunnel in the VRF) and its prefixes routed to it
  (`site_objects`).
And in GLOBAL, the tc hook on each NVGRE device: clsact bound to that shared block (vnet's Clsact).
All of it is vnet kernel objects, applied over netlink: no process is started for a change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from nvfabric.gateway import sitebgp, sites
from nvfabric.gateway.config import External
from nvfabric.gateway.tenants import Tenant
from nvfabric.vnet import decap
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import GLOBAL, NVGRE_DEVICES, HostIdentity, desired_state, vrf_name
from nvfabric.vnet.kernel.netns import RtnlSocket
from nvfabric.vnet.kernel.diff import Action
from nvfabric.vnet.kernel.objects import (Clsact, DummyDevice, FlowerMark, FwmarkRule, GreTunnel, KernelObject,
                                          LocalPortRoute, Sysctl, TunnelAddress, ViaRoute, XfrmInterface)
from nvfabric.vnet.model import LookupRecord, Network
from nvfabric.vnet.reconcile import Outcome, Reconciler

log = logging.getLogger(__name__)

FWMARK_PRIORITY = 899  # before the tun_id rules (900) and the l3mdev rule (1000)
LEAK_METRIC = 1
# One shared tc block for the NVGRE devices' ingress: one filter per VSID serves both devices, and a filter
# names the block, not a device (no ifindex to look up).
TC_BLOCK = 7637
SITES_DEVICE = "nvf-sites"  # the dummy device of the GRE sites' moving tunnel end (sites_objects)


class PlumbingError(RuntimeError):
    """The kernel refused part of a change (what the vnet reconcile reported); the change was put back."""

    def __init__(self, what: str, output: str) -> None:
        super().__init__(f"{what}: {output.strip()}")
        self.output = output


def tenant_extras(tenant: Tenant, tid: int, external: External) -> frozenset[KernelObject]:
    """Pure: what a gateway tenant has beyond a host's routing domain, as vnet objects in its partition:
    its VSIDs' packets marked with its id on arrival (a flower filter per VSID on the shared block);
    `ip rule fwmark <id> iif <external> lookup <id>` per family (before the tun_id rules and the l3mdev rule):
    replies and floating-IP traffic, marked from the conntrack mark by nat.py, are routed into the tenant;
    `iif`, because the NVGRE packets the gateway itself encapsulates inherit the inner packet's mark and must
    find the underlay in the main table (seen in the VM: replies left by the external side with its address
    as outer source). And the tenant's default route leaked to the external side, `default via <next hop>
    dev <external> metric 1`, which wins over vnet's `unreachable default` in the same table."""
    out: set[KernelObject] = {FwmarkRule(family, tid, tid, FWMARK_PRIORITY, iif=iif)
                              for family in (4, 6) for iif in external.interfaces}
    out.update(FlowerMark(TC_BLOCK, vsid, tid) for vsid in tenant.vsids)
    out.update(site_objects(tenant, tid, external))
    for prefix, nh in (("0.0.0.0/0", external.next_hop4), ("::/0", external.next_hop6)):
        if nh is not None:
            out.add(ViaRoute(tid, prefix, str(nh), external.interfaces[0], LEAK_METRIC))
    return frozenset(out)


def site_objects(tenant: Tenant, tid: int, external: External) -> frozenset[KernelObject]:
    """Pure: each site's tunnel in the tenant's VRF, and the site's prefixes routed to it in the tenant's table:
    an IPsec site's is an XFRM interface with the site's if_id (charon's SAs for the site carry the same,
    gateway/strongswan.py), a GRE site's a GRE tunnel from the gateway's external address to the site's, with
    the site's key. It is no external interface: nothing to a site is NATed."""
    out: set[KernelObject] = set()
    for site in tenant.sites:
        dev = sites.device_name(tid, site)
        if site.kind == "gre":
            local = external.gre_local(site.remote_address.version)
            # (gateway/reserved.py refused a site whose family has no external address before it came here)
            assert local is not None, "a GRE site without the gateway's end: Reserved.check first"
            out.add(GreTunnel(dev, vrf_name(tenant.name), str(local), str(site.remote_address), site.key))
        else:
            out.add(XfrmInterface(dev, sites.if_id(tid, site), vrf_name(tenant.name)))
        out.update(LocalPortRoute(tid, str(p), dev) for p in site.prefixes)
        if (address := sitebgp.tunnel_address(site, dev)) is not None:
            out.add(address)
    return frozenset(out)


def learned_routes(tenant: Tenant, tid: int, learned: Mapping[str, Iterable[Network]]) -> frozenset[KernelObject]:
    """Pure: what the tenant's sites announced over BGP (site name -> prefixes), judged (sitebgp.judge), as
    routes to their tunnels in the tenant's table."""
    return sitebgp.vrf_routes(tenant, tid, sitebgp.judge(tenant, learned), lambda s: sites.device_name(tid, s))


def gateway_globals(devices: Iterable[str], external: External | None = None) -> frozenset[KernelObject]:
    """Pure: what the gateway adds to GLOBAL: the tc hook on each NVGRE device, bound to the shared block; and
    the GRE sites' moving tunnel end (`sites_objects`)."""
    out: set[KernelObject] = {Clsact(dev, TC_BLOCK) for dev in devices}
    if external is not None:
        out.update(sites_objects(external))
    return frozenset(out)


def sites_objects(external: External) -> frozenset[KernelObject]:
    """Pure: the sites addresses (external.sites_address4/6) on a dummy device of their own, held by every gateway
    whatever its role: the upstream routes them to the serving one only (gateway/upstream.py), so a standby's
    kernel is ready without drawing the sites' packets. IPv4: the external interfaces answer ARP only for their
    own addresses (`arp_ignore=1`) and name their own address in their requests (`arp_announce=2`), so no ARP on
    the external link can tie the sites address to a standby (IPv6 answers neighbour solicitations for the
    receiving device's own addresses only)."""
    if not external.sites_addresses:
        return frozenset()
    out: set[KernelObject] = {DummyDevice(SITES_DEVICE)}
    out.update(TunnelAddress(SITES_DEVICE, str(a), a.max_prefixlen) for a in external.sites_addresses)
    if external.sites_address4 is not None:
        for dev in external.interfaces:
            out.add(Sysctl(f"net/ipv4/conf/{dev}/arp_ignore", "1"))
            out.add(Sysctl(f"net/ipv4/conf/{dev}/arp_announce", "2"))
    return frozenset(out)


def site_tunnels(tenants: Iterable[Tenant], external: External) -> set[decap.SiteTunnel]:
    """Pure: the GRE sites' tunnels as the decapsulation table lets their packets through (remote, local, key)."""
    out = set()
    for t in tenants:
        for s in t.sites:
            local = external.gre_local(s.remote_address.version)
            if s.kind == "gre" and local is not None:
                out.add(decap.SiteTunnel(s.remote_address, local, s.key))
    return out


def decap_filter(tenants: Mapping[str, Tenant], ids: Mapping[str, int],
                 records: Mapping[str, Iterable[LookupRecord]], holding: bool,
                 before: decap.DecapFilter | None, external: External | None = None) -> decap.DecapFilter:
    """Pure: the gateway's decapsulation table (vnet/decap.py, the hosts' own): GRE only from the PAs of the
    hosts that have the tenants' CAs, only for the tenants' VSIDs (marked with the tenant's id, the mark its
    flower filter gives the inner packet too), and only from the inner sources their lookup records and
    customer routes vouch for. GRE from the external side or an unknown PA never enters a tenant by the NVGRE
    devices; IP in GRE is let through only as exactly one GRE site's tunnel takes it (from its remote, to its
    local address, with its key)."""
    served = {n: t for n, t in tenants.items() if n in ids}
    learned = [r for n in served for r in records.get(n, ())]
    customer = {n: t.routing_domain.customer_routes for n, t in served.items()}
    vsids = {vsid: ids[n] for n, t in served.items() for vsid in t.vsids}
    pas = {r.pa for r in learned if r.pa is not None}
    elements = decap.vouched(learned, (), customer, {n: ids[n] for n in served})
    sites = site_tunnels(served.values(), external) if external is not None else ()
    return decap.decap_filter(pas, vsids, elements, holding, before, sites)


class Dataplane:
    """The gateway's VRF side on vnet's partitioned dataplane: one partition per tenant (its VRF, unreachable
    defaults, tun_id rules, its CAs' encap routes, its tc filters) plus vnet's GLOBAL one (NVGRE devices,
    their neighbours and tc hooks, sysctls). A one-tenant change computes and plans only that tenant's
    partition (vnet.reconcile)."""

    def __init__(self, netns: str | None, identity: HostIdentity, external: External) -> None:
        self.netns = netns
        self.identity = identity
        self.external = external
        self.devices = tuple(NVGRE_DEVICES[f] for f in identity.pa_families)
        self._sock: RtnlSocket | None = None
        self._reconciler: Reconciler | None = None
        # what each tenant's sites announce over BGP now (tenant -> site -> prefixes: gateway/sitepeers.py)
        self.site_learned: Callable[[str], Mapping[str, Iterable[Network]]] = lambda name: {}

    async def start(self) -> None:
        self._sock = RtnlSocket(self.netns)
        self._reconciler = Reconciler(self._sock)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()

    def parts(self, tenants: Mapping[str, Tenant], ids: Mapping[str, int],
              records: Mapping[str, Iterable[LookupRecord]], only: Iterable[str] | None = None,
              ) -> Mapping[str, frozenset[KernelObject]]:
        """Pure: vnet's partitions for these tenants (`only`: just those, an absent one empty; None: every
        tenant and GLOBAL, with the NVGRE devices' tc hooks)."""
        names = list(tenants) if only is None else list(only)
        present = {n: tenants[n] for n in names if n in tenants}
        catalog = Catalog.build({n: t.routing_domain for n, t in present.items()}, {})
        desired = desired_state(catalog, (r for n in present for r in records.get(n, ())), (), {}, self.identity,
                                {n: ids[n] for n in present}, domains=None if only is None else names)
        parts = {n: desired.partitions[n] | tenant_extras(present[n], ids[n], self.external)
                 | learned_routes(present[n], ids[n], self.site_learned(n)) if n in present
                 else desired.partitions[n] for n in (desired.partitions if only is None else names)}
        if only is None:
            parts[GLOBAL] = parts[GLOBAL] | gateway_globals(self.devices, self.external)
        return parts

    async def _reconcile(self, parts: Mapping[str, Iterable[KernelObject]]) -> Outcome:
        """Apply these partitions; a refusal is undone (acknowledged ops reverted, the partitions' previous
        objects reconciled again) and raised as PlumbingError."""
        assert self._reconciler is not None, "start() first"
        previous = {n: self._reconciler.desired.get(n, frozenset()) for n in parts}
        outcome = await self._reconciler.reconcile(parts, hold=False)
        if not outcome.ok:
            errors = await self._reconciler.revert(outcome.applied)
            back = await self._reconciler.reconcile(previous, hold=False)
            if errors or not back.ok:
                log.error("putting back %s failed: %s", ", ".join(parts), [*map(str, errors), *back.errors][:3])
            raise PlumbingError("vnet reconcile", "; ".join(outcome.errors[:3]))
        if any(isinstance(op.obj, TunnelAddress) and op.obj.family == 4 and op.action is not Action.CREATE
               for op in outcome.applied):
            # the kernel deletes a device's IPv4 routes with its last IPv4 address (a tunnel address deleted, or
            # replaced by another length: a delete first): the site's prefixes routed to the tunnel went with
            # it. Read the kernel back and put them back (rare: a site's bgp removed or readdressed).
            self._reconciler.invalidate()
            again = await self._reconciler.reconcile({}, hold=False)
            if not again.ok:  # the change itself is in effect: logged, the next pass puts back what is missing
                log.error("putting back routes after a tunnel address went: %s", "; ".join(again.errors[:3]))
        return outcome

    async def reconcile(self, tenants: Mapping[str, Tenant], ids: Mapping[str, int],
                        records: Mapping[str, Iterable[LookupRecord]]) -> Outcome:
        """Every tenant (start): a full pass, which also removes what no tenant wants any more."""
        return await self._reconcile(self.parts(tenants, ids, records))

    async def repair(self, tenants: Mapping[str, Tenant], ids: Mapping[str, int],
                     records: Mapping[str, Iterable[LookupRecord]]) -> Outcome:
        """A full pass with the kernel read back first: what changed behind our back is put back (an
        interface that went down took its routes with it: the tenants' default routes leaked to the
        external side are gone when it comes back up)."""
        assert self._reconciler is not None, "start() first"
        self._reconciler.invalidate()
        return await self.reconcile(tenants, ids, records)

    async def records_changed(self, names: Iterable[str], tenants: Mapping[str, Tenant], ids: Mapping[str, int],
                              records: Mapping[str, Iterable[LookupRecord]]) -> Outcome:
        """The learned CAs of these tenants changed: only their partitions."""
        return await self._reconcile(self.parts(tenants, ids, records, only=names))

    async def put_tenant(self, name: str, new: Tenant | None, ids: Mapping[str, int],
                         records: Mapping[str, Iterable[LookupRecord]]) -> None:
        """One tenant to `new` (None: absent): its partition of vnet's state (VRF, rules, routes, tc filters,
        fwmark rules, leaked default). A refusal puts back what was there and raises PlumbingError. `ids`
        holds this tenant's id."""
        await self._reconcile(self.parts({} if new is None else {name: new}, ids, records, only=[name]))
