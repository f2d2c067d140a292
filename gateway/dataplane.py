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
  which wins over vnet's `unreachable default` (metric UNREACHABLE_METRIC) in the same table.

Not a vnet kind (pyroute2 and vnet.kernel have no flower), so one `tc -batch` per change: on the NVGRE
devices' shared ingress block (TC_BLOCK), `flower enc_key_id VSID<<8 action skbedit mark <id>`, one filter
per VSID with handle = VSID, so a tenant change replaces only its own filters. Every tenant's traffic
arrives on the same flow-based device; the mark is what tells tenants apart in nftables (zones) before
routing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nvfabric.gateway.config import External
from nvfabric.gateway.tenants import Tenant
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import NVGRE_DEVICES, HostIdentity, desired_state
from nvfabric.vnet.kernel.netns import RtnlSocket
from nvfabric.vnet.kernel.objects import FwmarkRule, KernelObject, ViaRoute
from nvfabric.vnet.model import LookupRecord
from nvfabric.vnet.reconcile import Outcome, Reconciler

log = logging.getLogger(__name__)

FWMARK_PRIORITY = 899  # before the tun_id rules (900) and the l3mdev rule (1000)
LEAK_METRIC = 1
TC_PREF = 10
# One shared tc block for the NVGRE devices' ingress: filters name the block, not a device, so `tc` does not
# resolve a device name (which dumps every link first: O(tenants) with a VRF each) and one filter per VSID
# serves both devices.
TC_BLOCK = 7637


class PlumbingError(RuntimeError):
    def __init__(self, what: str, output: str) -> None:
        super().__init__(f"{what}: {output.strip()}")
        self.output = output


@dataclass(frozen=True)
class Plumbing:
    """The per-tenant tc filters, as `tc -batch` lines (pure, so tests and the benchmark can count them)."""

    tc: tuple[str, ...]

    @staticmethod
    def join(parts: Iterable[Plumbing]) -> Plumbing:
        return Plumbing(tuple(x for p in parts for x in p.tc))


def _filter(verb: str, vsid: int, tid: int | None = None) -> str:
    line = f"filter {verb} block {TC_BLOCK} pref {TC_PREF} handle {vsid} protocol all flower"
    return line if tid is None else f"{line} enc_key_id {vsid << 8} action skbedit mark {tid}"


def tenant_plumbing(tenant: Tenant, tid: int) -> Plumbing:
    return Plumbing(tuple(_filter("replace", vsid, tid) for vsid in tenant.vsids))


def removal_plumbing(tenant: Tenant) -> Plumbing:
    return Plumbing(tuple(_filter("del", vsid) for vsid in tenant.vsids))


def _vsid_gone_plumbing(new: Tenant | None, old: Tenant | None) -> Plumbing:
    """What goes when `old` becomes `new`: all of old's filters for a deleted tenant, else the filters of the
    VSIDs it no longer has."""
    if old is None:
        return Plumbing(())
    if new is None:
        return removal_plumbing(old)
    return Plumbing(tuple(_filter("del", v) for v in old.vsids if v not in new.vsids))


def tenant_extras(tid: int, external: External) -> frozenset[KernelObject]:
    """Pure: what a gateway tenant has beyond a host's routing domain, as vnet objects in its partition:
    `ip rule fwmark <id> iif <external> lookup <id>` per family (before the tun_id rules and the l3mdev rule):
    replies and floating-IP traffic, marked from the conntrack mark by nat.py, are routed into the tenant;
    `iif`, because the NVGRE packets the gateway itself encapsulates inherit the inner packet's mark and must
    find the underlay in the main table (seen in the VM: replies left by the external side with its address
    as outer source). And the tenant's default route leaked to the external side, `default via <next hop>
    dev <external> metric 1`, which wins over vnet's `unreachable default` in the same table."""
    out: set[KernelObject] = {FwmarkRule(family, tid, tid, FWMARK_PRIORITY, iif=iif)
                              for family in (4, 6) for iif in external.interfaces}
    for prefix, nh in (("0.0.0.0/0", external.next_hop4), ("::/0", external.next_hop6)):
        if nh is not None:
            out.add(ViaRoute(tid, prefix, str(nh), external.interfaces[0], LEAK_METRIC))
    return frozenset(out)


class Dataplane:
    """The gateway's VRF side on vnet's partitioned dataplane: one partition per tenant (its VRF, unreachable
    defaults, tun_id rules, its CAs' encap routes) plus vnet's GLOBAL one (NVGRE devices, their neighbours,
    sysctls). A one-tenant change computes and plans only that tenant's partition (vnet.reconcile)."""

    def __init__(self, netns: str | None, identity: HostIdentity, external: External) -> None:
        self.netns = netns
        self.identity = identity
        self.external = external
        self.devices = tuple(NVGRE_DEVICES[f] for f in identity.pa_families)
        self._sock: RtnlSocket | None = None
        self._reconciler: Reconciler | None = None

    async def start(self) -> None:
        self._sock = RtnlSocket(self.netns)
        self._reconciler = Reconciler(self._sock)

    async def ensure_clsact(self) -> None:
        """The tc hook on each NVGRE device (after vnet created the devices): clsact with the shared ingress
        block. A clsact without it (an earlier version's) is replaced: the block of a qdisc cannot change."""
        lines = []
        for dev in self.devices:
            have = await self._run(["tc", "qdisc", "show", "dev", dev, "clsact"], b"")
            if f"ingress_block {TC_BLOCK} " not in have + " ":
                if "clsact" in have:
                    lines.append(f"qdisc del dev {dev} clsact")
                lines.append(f"qdisc add dev {dev} ingress_block {TC_BLOCK} clsact")
        await self._batch("tc", lines)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()

    def parts(self, tenants: Mapping[str, Tenant], ids: Mapping[str, int],
              records: Mapping[str, Iterable[LookupRecord]], only: Iterable[str] | None = None,
              ) -> Mapping[str, frozenset[KernelObject]]:
        """Pure: vnet's partitions for these tenants (`only`: just those, an absent one empty; None: every
        tenant and GLOBAL)."""
        names = list(tenants) if only is None else list(only)
        present = {n: tenants[n] for n in names if n in tenants}
        catalog = Catalog.build({n: t.routing_domain for n, t in present.items()}, {})
        desired = desired_state(catalog, (r for n in present for r in records.get(n, ())), (), {}, self.identity,
                                {n: ids[n] for n in present}, domains=None if only is None else names)
        parts = {n: desired.partitions[n] | tenant_extras(ids[n], self.external) if n in present
                 else desired.partitions[n] for n in (desired.partitions if only is None else names)}
        return parts

    async def _reconcile(self, parts: Mapping[str, Iterable[KernelObject]]) -> Outcome:
        """Apply these partitions; a refusal is undone (acknowledged ops reverted, the partitions' previous
        objects reconciled again) and raised as PlumbingError."""
        assert self._reconciler is not None, "start() first"
        previous = {n: tuple(self._reconciler.desired.get(n, {}).values()) for n in parts}
        outcome = await self._reconciler.reconcile(parts, hold=False)
        if not outcome.ok:
            errors = await self._reconciler.revert(outcome.applied)
            back = await self._reconciler.reconcile(previous, hold=False)
            if errors or not back.ok:
                log.error("putting back %s failed: %s", ", ".join(parts), [*map(str, errors), *back.errors][:3])
            raise PlumbingError("vnet reconcile", "; ".join(outcome.errors[:3]))
        return outcome

    async def reconcile(self, tenants: Mapping[str, Tenant], ids: Mapping[str, int],
                        records: Mapping[str, Iterable[LookupRecord]]) -> Outcome:
        """Every tenant (start): a full pass, which also removes what no tenant wants any more."""
        return await self._reconcile(self.parts(tenants, ids, records))

    async def records_changed(self, names: Iterable[str], tenants: Mapping[str, Tenant], ids: Mapping[str, int],
                              records: Mapping[str, Iterable[LookupRecord]]) -> Outcome:
        """The learned CAs of these tenants changed: only their partitions."""
        return await self._reconcile(self.parts(tenants, ids, records, only=names))

    async def put_tenant(self, name: str, new: Tenant | None, old: Tenant | None, ids: Mapping[str, int],
                         records: Mapping[str, Iterable[LookupRecord]]) -> None:
        """One tenant from `old` to `new` (None: absent): its partition of vnet's state, its tc filters,
        fwmark rules and leaked default. A refusal puts back what was there and raises PlumbingError. `ids`
        holds this tenant's id."""
        tid = ids[name]
        part = self.parts({} if new is None else {name: new}, ids, records, only=[name])
        gone = _vsid_gone_plumbing(new, old)
        if new is None:
            await self.plumb(gone)
            try:
                await self._reconcile(part)
            except PlumbingError:
                if old is not None:  # the VRF side is back (_reconcile): so is the plumbing
                    await self.plumb(tenant_plumbing(old, tid))
                raise
            return
        await self._reconcile(part)
        try:
            await self.plumb(Plumbing.join([gone, tenant_plumbing(new, tid)]))
        except PlumbingError:
            try:  # the VRF side back as it was
                await self._reconcile(self.parts({} if old is None else {name: old}, ids, records, only=[name]))
                if old is not None:
                    await self.plumb(tenant_plumbing(old, tid))
            except PlumbingError as exc:  # logged; the next change or the restart's full pass retries
                log.error("tenant %s: putting back the VRF side failed: %s", name, exc)
            raise

    async def plumb(self, plumbing: Plumbing) -> None:
        await self._batch("tc", plumbing.tc)

    async def _batch(self, tool: str, lines: Iterable[str], *options: str) -> None:
        lines = list(lines)
        if not lines:
            return
        text, status = await self._exec([tool, *options, "-force", "-batch", "-"], "\n".join(lines).encode() + b"\n")
        # -force keeps going past errors; only the deletes of absent objects are expected to fail
        real = [ln for ln in text.splitlines() if ln.strip() and not _expected_miss(ln)]
        if status != 0 and real:
            raise PlumbingError(f"{tool} -batch", "\n".join(real[:5]))

    async def _run(self, argv: list[str], stdin: bytes) -> str:
        text, status = await self._exec(argv, stdin)
        if status != 0:
            raise PlumbingError(" ".join(argv[:3]), text)
        return text

    async def _exec(self, argv: list[str], stdin: bytes) -> tuple[str, int]:
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate(stdin)
        return out.decode(errors="replace"), proc.returncode or 0


def _expected_miss(line: str) -> bool:
    return any(s in line for s in ("No such file or directory", "Command failed -:", "Cannot find specified filter",
                                   "RTNETLINK answers: No such", "Filter with specified priority/protocol not found",
                                   "Cannot find specified qdisc"))
