"""The gateway's NVGRE side: the same dataplane as a host (vnet.desired + vnet.reconcile), plus
what only a gateway needs.

Through vnet (pure desired state, observed and diffed, nothing flushed): per tenant a VRF whose table is the
tenant id, `tun_id` rules from the NVGRE devices into it, `unreachable default`, and one encap route per
tenant CA (records: learned from the reflectors like a host does, gateway/evpn.py). One partition per
tenant: a one-tenant change computes and plans only that tenant's objects.

Not vnet object kinds (yet), so applied here as one `ip -batch` and one
`tc -batch` per change, not per packet or route:
- `ip rule fwmark <id> iif <external> lookup <id>` (IPv4 and IPv6), before the l3mdev rule (1000) and the
  tun_id rules (900): replies and floating-IP traffic, marked by nat.py from the conntrack mark, are routed
  into the tenant;
- the tenant's default route leaked to the external side, `default via <next hop> dev <external> metric 1`,
  which wins over vnet's `unreachable default` (metric UNREACHABLE_METRIC) in the same table;
- tc on each NVGRE device: `flower enc_key_id VSID<<8 action skbedit mark <id>`, one filter per VSID with
  handle = VSID, so a tenant change replaces only its own filters. Every tenant's traffic arrives on the same
  flow-based device; the mark is what tells tenants apart in nftables (zones) before routing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.config import External
from gateway.tenants import Tenant
from vnet.catalog import Catalog
from vnet.desired import NVGRE_DEVICES, HostIdentity, desired_state
from vnet.kernel.netns import RtnlSocket
from vnet.kernel.objects import KernelObject
from vnet.model import LookupRecord
from vnet.reconcile import Outcome, Reconciler

log = logging.getLogger(__name__)

FWMARK_PRIORITY = 899  # before the tun_id rules (900) and the l3mdev rule (1000)
LEAK_METRIC = 1
TC_PREF = 10


class PlumbingError(RuntimeError):
    def __init__(self, what: str, output: str) -> None:
        super().__init__(f"{what}: {output.strip()}")
        self.output = output


@dataclass(frozen=True)
class Plumbing:
    """The per-tenant extras, as command lines (pure, so tests and the benchmark can count them)."""

    ip: tuple[tuple[int, str], ...]  # (family, line): `ip -batch` takes no -4/-6 per line
    tc: tuple[str, ...]

    @staticmethod
    def join(parts: Iterable[Plumbing]) -> Plumbing:
        parts = list(parts)
        return Plumbing(tuple(x for p in parts for x in p.ip), tuple(x for p in parts for x in p.tc))


def tenant_plumbing(tenant: Tenant, tid: int, external: External, devices: Iterable[str]) -> Plumbing:
    ip: list[tuple[int, str]] = []
    ext = external.interfaces[0]
    for family, nh in ((4, external.next_hop4), (6, external.next_hop6)):
        for iif in external.interfaces:
            # delete first: `ip rule add` is not idempotent (a second add makes a duplicate); -force ignores a
            # miss. `iif`: only what arrives from outside; the NVGRE packets the gateway itself encapsulates
            # inherit the inner packet's mark and must find the underlay in the main table, not the tenant's
            # (seen in the VM: replies left by the external side with its address as outer source)
            ip.append((family, f"rule del fwmark {tid} iif {iif} lookup {tid} pref {FWMARK_PRIORITY}"))
            ip.append((family, f"rule add fwmark {tid} iif {iif} lookup {tid} pref {FWMARK_PRIORITY}"))
        if nh is not None:
            ip.append((family, f"route replace default via {nh} dev {ext} table {tid} metric {LEAK_METRIC}"))
    tc: list[str] = []
    for dev in devices:
        for vsid in tenant.vsids:
            tc.append(f"filter replace dev {dev} ingress pref {TC_PREF} handle {vsid} protocol all flower "
                      f"enc_key_id {vsid << 8} action skbedit mark {tid}")
    return Plumbing(tuple(ip), tuple(tc))


def removal_plumbing(tenant: Tenant, tid: int, external: External, devices: Iterable[str]) -> Plumbing:
    ip = tuple((f, f"rule del fwmark {tid} iif {iif} lookup {tid} pref {FWMARK_PRIORITY}")
               for f in (4, 6) for iif in external.interfaces)
    tc = tuple(f"filter del dev {dev} ingress pref {TC_PREF} handle {vsid} protocol all flower"
               for dev in devices for vsid in tenant.vsids)
    return Plumbing(ip, tc)  # the VRF, its table and routes go with vnet's desired state


def _vsid_gone_plumbing(new: Tenant | None, old: Tenant | None, tid: int, external: External,
                        devices: Iterable[str]) -> Plumbing:
    """What goes when `old` becomes `new`: all of old's plumbing for a deleted tenant, else the tc filters of
    the VSIDs it no longer has (the fwmark rules and the leaked default are replaced in place)."""
    if old is None:
        return Plumbing((), ())
    if new is None:
        return removal_plumbing(old, tid, external, devices)
    gone = tuple(v for v in old.vsids if v not in new.vsids)
    return Plumbing((), tuple(f"filter del dev {dev} ingress pref {TC_PREF} handle {vsid} protocol all flower"
                              for dev in devices for vsid in gone))


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
        """The tc hook on each NVGRE device (after vnet created the devices)."""
        await self._batch("tc", [f"qdisc replace dev {d} clsact" for d in self.devices])

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
        if only is None:
            return desired.partitions
        return {n: desired.partitions[n] for n in names}

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
        gone = _vsid_gone_plumbing(new, old, tid, self.external, self.devices)
        if new is None:
            await self.plumb(gone)
            try:
                await self._reconcile(part)
            except PlumbingError:
                if old is not None:  # the VRF side is back (_reconcile): so is the plumbing
                    await self.plumb(tenant_plumbing(old, tid, self.external, self.devices))
                raise
            return
        await self._reconcile(part)
        try:
            await self.plumb(Plumbing.join([gone, tenant_plumbing(new, tid, self.external, self.devices)]))
        except PlumbingError:
            try:  # the VRF side back as it was
                await self._reconcile(self.parts({} if old is None else {name: old}, ids, records, only=[name]))
                if old is not None:
                    await self.plumb(tenant_plumbing(old, tid, self.external, self.devices))
            except PlumbingError as exc:  # logged; the next change or the restart's full pass retries
                log.error("tenant %s: putting back the VRF side failed: %s", name, exc)
            raise

    async def plumb(self, plumbing: Plumbing) -> None:
        for family in (4, 6):
            await self._batch("ip", [line for f, line in plumbing.ip if f == family], f"-{family}")
        await self._batch("tc", plumbing.tc)

    async def _batch(self, tool: str, lines: Iterable[str], *options: str) -> None:
        lines = list(lines)
        if not lines:
            return
        argv = [tool, *options, "-force", "-batch", "-"]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate("\n".join(lines).encode() + b"\n")
        text = out.decode(errors="replace")
        # -force keeps going past errors; only the deletes of absent objects are expected to fail
        real = [ln for ln in text.splitlines() if ln.strip() and not _expected_miss(ln)]
        if proc.returncode != 0 and real:
            raise PlumbingError(f"{tool} -batch", "\n".join(real[:5]))


def _expected_miss(line: str) -> bool:
    return any(s in line for s in ("No such file or directory", "Command failed -:", "Cannot find specified filter",
                                   "RTNETLINK answers: No such", "Filter with specified priority/protocol not found"))
