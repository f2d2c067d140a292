"""The host agent's Python per learned change, without the kernel: how it grows with the fabric.

    .venv/bin/python bench/agent_learning.py [--sizes 1000,10000,100000] [--changes 2000] [--before-changes 20]

One routing domain with 10 local ports and N remote CAs (type-2 routes from 100 PAs), learned and reconciled
in full first. Then one change at a time (a move: the CA announced from another PA with a higher sequence,
then the old route withdrawn; a new CA; a CA withdrawn), each timed from the route update to the kernel ops
planned, as the agent's syncer does it:

- after (this tree): the learned table applies the change (vnet/learned.py), MAC mobility and held
  addresses follow the changed keys, the touched partitions are computed (hostagent/compute.py: the CA's
  own partition), `Reconciler.update` + `plan` against a cached observed state (the ops are taken as
  acknowledged, as the reconciler does after apply);
- before (main's path, with the same functions): the import policy screens every route (`policy.screen`),
  `learn.remote_macs` and `learn.remote_cas` over all of them, `learn.lookup_records` + `remote_prefixes`,
  the touched routing domain's `desired_state` whole, then `update` + `plan` of that one partition.

No kernel, no BGP, no asyncio: the Python the agent spends per change, as CPU time of the thread
(`time.thread_time`: other processes on a shared machine do not count; their cache misses still do).
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

from nvfabric.bgp.routes import HashedIPv4Address, MacIpRoute
from nvfabric.hostagent.compute import View, follow_remote, follow_remote_holders
from nvfabric.vnet import learn
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import HostIdentity, allocate_tables, desired_state
from nvfabric.vnet.kernel.diff import Action
from nvfabric.vnet.model import Port, RoutingDomain, VirtualSubnet
from nvfabric.vnet.policy import screen
from nvfabric.vnet.reconcile import Reconciler

OURS = ipaddress.ip_address("198.51.0.1")
PROVIDER = (ipaddress.ip_network("198.51.0.0/16"),)
PAS = [HashedIPv4Address(f"198.51.1.{i}") for i in range(1, 101)]
HOST = HostIdentity("02:00:5e:10:00:01", (OURS,))
DOMAIN = RoutingDomain("blue", ("65001:1",), (
    VirtualSubnet(5001, (ipaddress.ip_network("10.0.0.0/8"),), (ipaddress.ip_address("10.0.0.1"),)),))


def ca(i: int) -> ipaddress.IPv4Address:
    # 10.1.0.0 onwards, away from the local ports; of the kind the BGP decoder makes
    return HashedIPv4Address(0x0A010000 + i)


def route(i: int, pa: ipaddress.IPv4Address, seq: int = 0) -> MacIpRoute:
    mac = f"02:10:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:01"
    return MacIpRoute(rd=f"{pa}:5001", mac=mac, ip=ca(i), vsid=5001, next_hop=pa, route_targets=("65001:1",),
                      router_mac="02:00:5e:10:00:02", mobility_seq=seq)


def setup(size: int) -> tuple[View, dict, Catalog]:
    ports = {f"p{i}": Port(f"p{i}", f"tap-p{i}", f"02:00:00:00:00:{i:02x}", 5001,
                           (ipaddress.ip_address(f"10.0.0.{10 + i}"),)) for i in range(10)}
    catalog = Catalog.build({"blue": DOMAIN}, ports)
    view = View(catalog, allocate_tables(catalog.routing_domains, {}))
    routes = {}
    for i in range(size):
        r = route(i, PAS[i % len(PAS)])
        routes[r.key] = r
    return view, routes, catalog


def changes(size: int, count: int, seed: int = 1) -> list[list[tuple]]:
    """Batches of one logical change each: a move (new route, then the old one withdrawn: two updates, as
    BGP delivers them), an add, a withdrawal."""
    rng = random.Random(seed)
    where = {i: (PAS[i % len(PAS)], 0) for i in range(size)}
    out: list[list[tuple]] = []
    next_ca = size
    while len(out) < count:
        kind = rng.random()
        if kind < 0.6:
            i = rng.randrange(next_ca)
            if i not in where:
                continue
            pa, seq = where[i]
            new_pa = rng.choice([p for p in PAS[:5] if p != pa])
            new = route(i, new_pa, seq + 1)
            out.append([(new.key, new)])
            out.append([(route(i, pa, seq).key, None)])
            where[i] = (new_pa, seq + 1)
        elif kind < 0.8:
            r = route(next_ca, PAS[next_ca % len(PAS)])
            where[next_ca] = (r.next_hop, 0)
            next_ca += 1
            out.append([(r.key, r)])
        else:
            i = rng.randrange(next_ca)
            if i not in where:
                continue
            pa, seq = where.pop(i)
            out.append([(route(i, pa, seq).key, None)])
    return out[:count]


def acknowledge(reconciler: Reconciler, plan) -> None:
    assert reconciler.observed is not None
    for op in plan.ops:
        if op.action is Action.DELETE:
            reconciler.observed.pop(op.obj.key, None)
        else:
            reconciler.observed[op.obj.key] = op.obj


def after(size: int, count: int) -> list[float]:
    # (imported here: `--only before` also runs on main's tree, which has none of them)
    from nvfabric.hostagent.compute import Learned, compute
    from nvfabric.vnet.learned import EMPTY, LearnedTable

    view, routes, catalog = setup(size)
    table = LearnedTable(catalog, (OURS,), PROVIDER)
    table.apply(routes.items())
    learned = Learned()
    step = compute(view, table, HOST, learned, None, EMPTY)
    reconciler = Reconciler(None)  # type: ignore[arg-type]  (planning is pure)
    reconciler.update(step.partitions)
    reconciler.observed = {o.key: o for part in reconciler.desired.values() for o in part}
    learned.swap(step)
    times = []
    gc.collect()
    for batch in changes(size, count):
        t0 = time.thread_time()
        change = table.apply(batch)
        now = time.monotonic()
        mobility = follow_remote(view.mobility, table.macs(), OURS, now, keys=change.macs.keys())
        holders = follow_remote_holders(view.holders, table.cas(), OURS, now)
        if mobility is not view.mobility or holders is not view.holders:
            view = replace(view, mobility=mobility, holders=holders)
        step = compute(view, table, HOST, learned, set(), change)
        previous = reconciler.update(step.partitions)
        plan, _ = reconciler.plan(previous, hold=False, full=False)
        acknowledge(reconciler, plan)
        learned.swap(step)
        times.append(time.thread_time() - t0)
    return times


def before(size: int, count: int) -> list[float]:
    view, routes, catalog = setup(size)
    ours = (OURS,)
    reconciler = Reconciler(None)  # type: ignore[arg-type]

    def desired(routes: dict) -> tuple[dict, float]:
        t0 = time.thread_time()
        accepted = list(screen(catalog, list(routes.values()), ours, PROVIDER).accepted)
        remote = learn.remote_macs(accepted, ours)
        follow_remote(view.mobility, remote, OURS, time.monotonic())
        follow_remote_holders(view.holders, learn.remote_cas(catalog, accepted, ours), OURS, time.monotonic())
        records = learn.lookup_records(catalog, accepted, ours, view.mobility.inactive(), view.held())
        prefixes = learn.remote_prefixes(catalog, accepted, ours)
        customer = {name: d.customer_routes for name, d in catalog.routing_domains.items()}
        d = desired_state(catalog, records, prefixes, customer, HOST, view.tables, {"blue"})
        return d.partitions, t0

    parts, _ = desired(routes)
    reconciler.update(parts)
    reconciler.observed = {o.key: o for part in reconciler.desired.values() for o in part}
    times = []
    gc.collect()
    for batch in changes(size, count):
        for key, r in batch:  # (the client's delivered table)
            if r is None:
                routes.pop(key, None)
            else:
                routes[key] = r
        parts, t0 = desired(dict(routes))
        previous = reconciler.update(parts)
        plan, _ = reconciler.plan(previous, hold=False, full=False)
        acknowledge(reconciler, plan)
        times.append(time.thread_time() - t0)
    return times


def report(name: str, size: int, times: list[float]) -> None:
    us = sorted(t * 1e6 for t in times)
    p99 = us[min(len(us) - 1, int(len(us) * 0.99))]
    print(f"{name:6} {size:>7,} CAs  {len(us):>5} changes  median {statistics.median(us):>10,.0f} us  "
          f"mean {statistics.fmean(us):>10,.0f} us  p99 {p99:>10,.0f} us", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--changes", type=int, default=2000)
    parser.add_argument("--before-changes", type=int, default=20, help="main's path costs O(CAs): fewer of them")
    parser.add_argument("--only", choices=("before", "after"), default=None)
    args = parser.parse_args()
    runs: list[tuple[str, Callable[[int, int], list[float]], int]] = []
    if args.only != "after":
        runs.append(("before", before, args.before_changes))
    if args.only != "before":
        runs.append(("after", after, args.changes))
    for size in (int(s) for s in args.sizes.split(",")):
        for name, run, count in runs:
            report(name, size, run(size, count))


if __name__ == "__main__":
    main()
