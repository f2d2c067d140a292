"""The multi-tenant gateway: tenants (gateway/tenants.py) -> per-tenant NAT tables (gateway/nat.py) in nftables.

One asyncio owner: every change runs under one lock and follows the same steps: validate the new set of
tenants as values (tenants.check_tenants) -> allocate its id -> ONE nftables transaction that replaces only
the changed tenant's table -> swap. A refused change (invalid value, conflict, nft refusal) raises before
the swap, and nft transactions are atomic: nothing is half-applied.

Not built yet (docs/gateway.md "Status"): the VRF/NVGRE dataplane through vnet (per-tenant VRF, tun_id
rules, tc marks per VSID, fwmark rules, the leaked default route), the EVPN type-5 default routes into the
tenants, the eBGP upstream session, and two-gateway failover. This module is the NAT core they build on;
tenants attached by interface (`Tenant.interfaces`) are fully served by it.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gateway import nat
from gateway.config import GatewayConfig
from gateway.tenants import Tenant, check_tenants
from gateway.upstream import Upstream
from vnet.catalog import NotFound
from gateway.evpn import Fabric
from gateway.dataplane import Dataplane, Plumbing, PlumbingError, removal_plumbing, tenant_plumbing
from vnet.desired import HostIdentity, allocate_tables
from vnet.model import LookupRecord
# the host agent's error types: the REST layer (hostagent/api.py's middleware) maps them to 503 and 500
from hostagent.agent import AgentNotStarted, KernelError
from hostagent.thread import CLONE_NEWNET
from vnet.nftables import Nft, NftError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TenantStatus:
    name: str
    tid: int  # mark = conntrack zone = routing table
    vsids: tuple[int, ...]
    snat: tuple[str, ...]
    floating_ips: int
    counters: nat.TenantCounters
    sessions: int

    def as_dict(self) -> dict[str, Any]:
        c = self.counters
        return {"name": self.name, "id": self.tid, "vsids": list(self.vsids), "snat": list(self.snat),
                "floating_ips": self.floating_ips, "packets_out": c.packets_out, "bytes_out": c.bytes_out,
                "packets_in": c.packets_in, "bytes_in": c.bytes_in, "drops": c.drops, "nat_sessions": self.sessions}


async def _load(nft: Nft, what: str, doc: dict) -> None:
    # vnet.nftables.Nft has no generic transaction yet (requested in .coordination-agent.md, 08:28): its
    # runner is used as is, so the gateway has no nftables talker of its own.
    await nft._run(what, json.dumps(doc).encode(), "-j", "-f", "-")


async def _list(nft: Nft, *args: str) -> dict:
    return json.loads(await nft._run("list", None, "-j", "list", *args))


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._tenants: Mapping[str, Tenant] = MappingProxyType({t.name: t for t in config.tenants})
        self._ids: Mapping[str, int] = MappingProxyType(allocate_tables(self._tenants, {}))
        self._nft = Nft(config.netns)
        # NVGRE-attached tenants need the vnet dataplane; a gateway without provider addresses serves only
        # tenants attached by interface (and the host tests, which have no VRF or GRE)
        self._dp = None if not config.provider_addresses else Dataplane(
            config.netns, HostIdentity(config.router_mac, config.provider_addresses), config.external)
        self._records: tuple[LookupRecord, ...] = ()
        self._upstream = Upstream(config) if config.upstream else None
        # the reflectors: learn tenant CAs, announce the tenants' default routes (needs the NVGRE side)
        self._fabric = Fabric(config, self.set_records, self._serving_changed) \
            if config.route_reflectors and self._dp else None
        self._lock = asyncio.Lock()
        self._started = False
        self.last_change: dict[str, Any] | None = None

    # ------------------------------------------------------------------ reading

    @property
    def tenants(self) -> Mapping[str, Tenant]:
        return self._tenants

    def tenant(self, name: str) -> Tenant:
        try:
            return self._tenants[name]
        except KeyError:
            raise NotFound("tenant", name) from None

    def tenant_id(self, name: str) -> int:
        self.tenant(name)
        return self._ids[name]

    @property
    def records(self) -> tuple[LookupRecord, ...]:
        """The tenant CAs (and their hosts' PAs) the return routes are installed for."""
        return self._records

    def nat_view(self) -> list[nat.TenantNat]:
        return [nat.TenantNat(t, self._ids[n]) for n, t in sorted(self._tenants.items())]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Replace the gateway's table with every configured tenant in one transaction (adopt, not flush:
        conntrack state, i.e. established flows and their NAT bindings, survives a restart)."""
        async with self._lock:
            doc = nat.full_document(self.nat_view(), self.config.external.interfaces)
            await self._load("start", doc)
            if self._dp is not None:
                await self._dp.start()
                await self._dp.reconcile(self._tenants, self._ids, self._records)
                await self._dp.ensure_clsact()
                # every tenant in one ip and one tc batch: a process start costs ~0.3 s in the VM
                await self._dp.plumb(Plumbing.join(
                    tenant_plumbing(t, self._ids[name], self.config.external, self._dp.devices)
                    for name, t in self._tenants.items()))
            if self._upstream is not None:
                await self._upstream.start()
                await self._upstream.sync(self._public())
            self._started = True
        if self._fabric is not None:
            await self._fabric.start(self._tenants)  # outside the lock: learned records take it

    async def stop(self) -> None:
        # The tables, VRFs and routes stay: forwarding and NAT keep working while the daemon restarts.
        self._started = False
        if self._fabric is not None:
            await self._fabric.stop()
        if self._upstream is not None:
            await self._upstream.stop()
        if self._dp is not None:
            self._dp.close()

    @property
    def serving(self) -> bool:
        """False while this is a standby gateway and another one is active: nothing is announced."""
        return self._fabric is None or self._fabric.serving

    def _public(self) -> list[Tenant]:
        return list(self._tenants.values()) if self.serving else []

    async def _serving_changed(self, serving: bool) -> None:
        async with self._lock:
            if self._upstream is not None:
                await self._upstream.sync(self._public())

    async def set_records(self, records: tuple[LookupRecord, ...]) -> None:
        """The tenant CAs and the PAs of their hosts (from the reflectors, like a host learns them):
        the return routes of every tenant."""
        async with self._lock:
            self._records = records
            if self._dp is not None and self._started:
                await self._dp.reconcile(self._tenants, self._ids, self._records)

    async def _load(self, what: str, doc: dict) -> None:
        began = time.monotonic()
        try:
            await _load(self._nft, what, doc)
        except NftError as exc:
            raise KernelError(what, (exc.message.strip(),)) from None
        self.last_change = {"what": what, "rules": nat.rule_count(doc),
                            "seconds": round(time.monotonic() - began, 4)}

    # ------------------------------------------------------------------ changes

    async def put_tenant(self, tenant: Tenant) -> bool:
        """Create or replace one tenant. True when it was created."""
        async with self._lock:
            proposed = {**self._tenants, tenant.name: tenant}
            check_tenants(proposed)  # raises ConflictError naming the field, before anything is applied
            if not self._started:
                raise AgentNotStarted("the gateway is not running")
            ids = allocate_tables(proposed, self._ids)
            created = tenant.name not in self._tenants
            if not created and self._tenants[tenant.name] == tenant:
                return False
            if self._dp is not None:
                try:
                    await self._dp.reconcile(proposed, ids, self._records)
                    await self._dp.plumb(tenant_plumbing(tenant, ids[tenant.name], self.config.external,
                                                         self._dp.devices))
                except PlumbingError as exc:
                    await self._dp.reconcile(self._tenants, self._ids, self._records)  # revert the VRF side
                    raise KernelError(f"put tenant {tenant.name}", (str(exc),)) from None
            old = None if created else nat.TenantNat(self._tenants[tenant.name], self._ids[tenant.name])
            await self._load(f"put tenant {tenant.name}", nat.transaction(
                {tenant.name: (nat.TenantNat(tenant, ids[tenant.name]), old)}))
            self._tenants, self._ids = MappingProxyType(proposed), MappingProxyType(ids)
            if self._upstream is not None:
                await self._upstream.sync(self._public())  # after NAT is in place, not before
            if self._fabric is not None:
                await self._fabric.sync(self._tenants)
            return created

    async def delete_tenant(self, name: str) -> None:
        async with self._lock:
            self.tenant(name)
            if not self._started:
                raise AgentNotStarted("the gateway is not running")
            old = nat.TenantNat(self._tenants[name], self._ids[name])
            await self._load(f"delete tenant {name}", nat.transaction({name: (None, old)}))
            if self._dp is not None:
                remaining = {n: t for n, t in self._tenants.items() if n != name}
                await self._dp.plumb(removal_plumbing(self._tenants[name], self._ids[name], self.config.external,
                                                      self._dp.devices))
                await self._dp.reconcile(remaining, {n: self._ids[n] for n in remaining}, self._records)
            self._tenants = MappingProxyType({n: t for n, t in self._tenants.items() if n != name})
            self._ids = MappingProxyType({n: i for n, i in self._ids.items() if n != name})
            if self._upstream is not None:
                await self._upstream.sync(self._public())
            if self._fabric is not None:
                await self._fabric.sync(self._tenants)

    # ------------------------------------------------------------------ observing

    async def counters(self) -> dict[str, nat.TenantCounters]:
        return nat.parse_counters(await _list(self._nft, "counters", "table", nat.FAMILY, nat.TABLE))

    async def status(self) -> list[TenantStatus]:
        counters = await self.counters()
        sessions = await _sessions_by_mark()
        out = []
        for name, t in sorted(self._tenants.items()):
            tid = self._ids[name]
            out.append(TenantStatus(name, tid, t.vsids, tuple(str(s.address) for s in t.snat),
                                    len(t.floating_ips), counters.get(name, nat.TenantCounters()),
                                    sessions.get(tid, 0)))
        return out


async def _sessions_by_mark() -> dict[int, int]:
    """Conntrack entries per ct mark (= tenant id), in the calling thread's network namespace.

    pyroute2's Conntrack is synchronous and runs its own event loop, so it cannot run on ours: it runs in a
    fresh thread that first joins our thread's namespace (setns is per thread; a pooled worker would not be
    in it, and would stay in it afterwards)."""
    ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[dict[int, int]] = loop.create_future()

    def count() -> None:
        try:
            from pyroute2 import Conntrack

            # os.setns arrives in Python 3.12; hostagent.thread does the same by namespace name
            if ctypes.CDLL(None, use_errno=True).setns(ns_fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the gateway's namespace")
            counts: dict[int, int] = {}
            with Conntrack() as ct:
                for entry in ct.dump_entries():
                    mark = entry.mark or 0
                    if mark:
                        counts[mark] = counts.get(mark, 0) + 1
            loop.call_soon_threadsafe(done.set_result, counts)
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(done.set_exception, exc)

    try:
        threading.Thread(target=count, name="conntrack-count", daemon=True).start()
        return await asyncio.wait_for(done, 10)
    finally:
        os.close(ns_fd)
