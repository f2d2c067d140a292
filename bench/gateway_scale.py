"""Gateway scale: one gateway with N tenants (VRF, one VSID, SNAT, 2 floating IPs each).

For each N: bring-up from config (Gateway.start: one nftables transaction with every tenant's table, vnet's
VRFs, rules, routes, tc hooks and filters through netlink (vnet)),
then five one-tenant changes (a floating IP moved; the median is reported), then one tenant added.
Reported: wall time of each, the Python part (building the documents and desired state) against the kernel
part (the rest), ruleset size (rules, bytes of `nft list ruleset`), the process's RSS growth, and the
kernel's slab growth (Slab in /proc/meminfo) as the kernel side of memory.

    .venv/bin/nvfabric lab kernel -- .venv/bin/python bench/gateway_scale.py 10 100 1000      # in the VM (VRF)
    .venv/bin/python bench/gateway_scale.py --nat-only 10 100 1000                            # here: NAT only

`--phases` also prints where the one-tenant change spends its time (vnet reconcile, tc filters included; the
nft transaction; the rest) and `--profile` the change's cProfile (cumulative, top 25): Python against the
time spent waiting for processes and netlink.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import pstats
import ipaddress
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvfabric.gateway import nat  # noqa: E402
from nvfabric.gateway.config import GatewayConfig  # noqa: E402
from nvfabric.gateway.dataplane import gateway_globals, tenant_extras  # noqa: E402
from nvfabric.gateway.gateway import Gateway  # noqa: E402
from nvfabric.gateway.tenants import Tenant  # noqa: E402
from nvfabric.vnet.kernel.netns import enter_namespace  # noqa: E402
from nvfabric.vnet.catalog import Catalog  # noqa: E402
from nvfabric.vnet.desired import HostIdentity, allocate_tables, desired_state  # noqa: E402

CHANGES = 5
PUBLIC = ipaddress.ip_network("100.64.0.0/10")  # room for 3 public addresses x 1000s of tenants in a bench


def tenant_body(i: int, fip_shift: int = 0) -> dict:
    base = int(PUBLIC.network_address) + 4 * i
    return {"name": f"t{i}", "route_targets": [f"65000:{i + 1}"],
            "subnets": [{"vsid": 10000 + i, "prefixes": ["10.0.0.0/24"]}],
            "snat": [str(ipaddress.ip_address(base))],
            "floating_ips": [{"public": str(ipaddress.ip_address(base + 1 + fip_shift)), "private": "10.0.0.5"},
                             {"public": str(ipaddress.ip_address(base + 2 + fip_shift)), "private": "10.0.0.6"}]}


def slab_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Slab:"):
            return int(line.split()[1])
    return 0


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Phases:
    """Wall time per awaited step of a change (the methods of the gateway's dataplane and NAT loader)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.on = False

    def wrap(self, obj: object, attr: str, name: str) -> None:
        inner = getattr(obj, attr)

        @functools.wraps(inner)
        async def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return await inner(*args, **kwargs)
            finally:
                if self.on:
                    self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        setattr(obj, attr, timed)


async def one(n: int, ns: str, nat_only: bool, phases: bool = False, profile: bool = False) -> dict:
    bodies = [tenant_body(i) for i in range(n)]
    config = GatewayConfig.from_dict({
        "asn": 65000, "router_id": "198.51.100.21", "external": {"interfaces": ["ext"], "next_hop4": "203.0.113.1"},
        **({} if nat_only else {"provider_addresses": ["198.51.100.21"]}), "tenants": bodies})
    tenants = {t.name: t for t in config.tenants}
    ids = allocate_tables(tenants, {})
    # the Python part, timed alone: the documents and the desired state the gateway computes
    t0 = time.perf_counter()
    doc = nat.full_document([nat.TenantNat(t, ids[n_]) for n_, t in tenants.items()], ["ext"])
    py_nat = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not nat_only:
        catalog = Catalog.build({n_: t.routing_domain for n_, t in tenants.items()}, {})
        objects = desired_state(catalog, [], [], {}, HostIdentity("02:00:5e:10:00:01",
                                (ipaddress.ip_address("198.51.100.21"),)), ids).objects | gateway_globals(["nvf-gre4"])
        for n_, t in tenants.items():
            objects |= tenant_extras(t, ids[n_], config.external)
    py_vnet = time.perf_counter() - t0
    rss0, slab0 = rss_kib(), slab_kib()
    gw = Gateway(config)
    t0 = time.perf_counter()
    await gw.start()
    bring_up = time.perf_counter() - t0
    rss1, slab1 = rss_kib(), slab_kib()
    timer = Phases()
    if phases:
        timer.wrap(gw, "_load", "nft transaction")
        if gw._dp is not None:
            for attr in vars(type(gw._dp)):
                if attr == "_reconcile":
                    timer.wrap(gw._dp, attr, f"dataplane.{attr}")
    prof = cProfile.Profile() if profile else None
    # CHANGES one-tenant changes (a floating IP moved, each on another tenant): the median is reported, the
    # phases are their means (a TCG VM shares 2 CPUs with whatever else runs: single runs are noisy)
    times = []
    timer.on = True
    for k in range(CHANGES):
        changed = Tenant.from_dict(tenant_body((n // 2 + k * 7) % n, fip_shift=1_000_000))
        t0 = time.perf_counter()
        if prof is not None and k == 0:
            prof.enable()
        await gw.put_tenant(changed)
        if prof is not None and k == 0:
            prof.disable()
        times.append(time.perf_counter() - t0)
    timer.on = False
    change = statistics.median(times)
    if phases:
        rest = (sum(times) - sum(timer.seconds.values())) / CHANGES
        means = ", ".join(f"{k} {v / CHANGES:.3f}" for k, v in sorted(timer.seconds.items()))
        print(f"  {n} tenants, {CHANGES} one-tenant changes, median {change:.3f} s (min {min(times):.3f}, max "
              f"{max(times):.3f}), means: {means}, the rest {rest:.3f}", flush=True)
    if prof is not None:
        print(f"  cProfile of the first one-tenant change at {n} tenants:", flush=True)
        pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(25)
    timer.seconds = {}
    timer.on = True
    t0 = time.perf_counter()
    await gw.put_tenant(Tenant.from_dict(tenant_body(n)))
    add = time.perf_counter() - t0
    timer.on = False
    if phases:
        means = ", ".join(f"{k} {v:.3f}" for k, v in sorted(timer.seconds.items()))
        print(f"  {n} tenants, one tenant added {add:.3f} s: {means}, the rest {add - sum(timer.seconds.values()):.3f}",
              flush=True)
    ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    out = {"tenants": n, "bring_up_s": bring_up, "python_s": py_nat + py_vnet, "kernel_s": bring_up - py_nat - py_vnet,
           "change_s": change, "add_s": add, "rules": nat.rule_count(doc), "ruleset_bytes": len(ruleset),
           "vnet_objects": 0 if nat_only else len(objects), "rss_mib": (rss1 - rss0) / 1024,
           "slab_mib": (slab1 - slab0) / 1024}
    # clean up for the next N: delete every tenant table (one transaction) and the VRFs
    subprocess.run(["nft", "flush", "ruleset"], check=True)
    if not nat_only:
        subprocess.run(["sh", "-c", "ip -br link show type vrf | awk '{print \"link del \" $1}' | ip -force -batch -"],
                       check=False)
    await gw.stop()
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("sizes", nargs="+", type=int)
    p.add_argument("--nat-only", action="store_true", help="no VRF/NVGRE (this machine's kernel)")
    p.add_argument("--phases", action="store_true", help="print where the one-tenant change spends its time")
    p.add_argument("--profile", action="store_true", help="print the one-tenant change's cProfile")
    args = p.parse_args()
    ns = f"gwbench{time.time_ns() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "ext", "type", "veth", "peer", "name", "ext-peer"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "ext", "up"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", "203.0.113.2/24", "dev", "ext"], check=True)
        for m in ("vrf", "ip_gre", "cls_flower", "act_skbedit"):
            subprocess.run(["modprobe", m], check=False, capture_output=True)
        enter_namespace(ns)
        print("| tenants | bring-up (s) | of which Python (s) | kernel + tools (s) | one-tenant change (s) | "
              "one tenant added (s) | NAT rules | `nft list ruleset` (KiB) | vnet objects | RSS growth (MiB) | "
              "kernel slab growth (MiB) |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for n in args.sizes:
            r = asyncio.run(one(n, ns, args.nat_only, args.phases, args.profile))
            print(f"| {r['tenants']} | {r['bring_up_s']:.2f} | {r['python_s']:.2f} | {r['kernel_s']:.2f} | "
                  f"{r['change_s']:.3f} | {r['add_s']:.3f} | {r['rules']} | {r['ruleset_bytes'] / 1024:.0f} | "
                  f"{r['vnet_objects']} | {r['rss_mib']:.1f} | {r['slab_mib']:.1f} |", flush=True)
        print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
