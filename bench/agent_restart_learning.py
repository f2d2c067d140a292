"""A restart's learning without the kernel: the Python the agent spends per remote CA while the fabric's table
arrives over a kernel that already holds it.

    .venv/bin/python bench/agent_restart_learning.py [--cas 100000] [--batch 500] [--no-gc]

One routing domain with 10 local ports and N remote CAs (type-2 routes from 100 PAs, bench/agent_learning.py's).
The kernel as a previous run left it: every CA's encap route (the reconciler's observed state) and the whole
decapsulation table. The start: a full pass with an empty learned table, the hold on (every remote CA held).
Then the table arrives in batches of `--batch` routes, each as the agent's syncer takes it while End-of-RIB is
awaited: the learned table applies it (vnet/learned.py), MAC mobility follows its keys, its CAs' partitions are
computed (hostagent/compute.py), `Reconciler.update` + `plan` (deferring: nothing may be written; nothing is
planned, as the kernel is right), `Learned.swap`, the decapsulation index takes the new records
(vnet/decap.py: nothing to write). Then End-of-RIB's plan. CPU time of the thread (`time.thread_time`), by step.
`--no-gc`: the same with Python's cyclic garbage collector off. `--settle`: the heap settled as the agent does
(service/heap.py, after the batches that changed hostagent/agent.py's SETTLE_RECORDS lookup records), its
own time a step of its own. Printed too: Python's full collections meanwhile, their count, total and longest
(wall time: every thread waits for one).
"""

from __future__ import annotations

import argparse
import gc
import time

import agent_learning as al

from nvfabric.hostagent.agent import SETTLE_RECORDS
from nvfabric.hostagent.compute import Learned, compute, follow_remote
from nvfabric.service.heap import Heap
from nvfabric.hostagent.filters import served_vsids
from nvfabric.vnet import decap
from nvfabric.vnet.learned import EMPTY, LearnedTable
from nvfabric.vnet.reconcile import Reconciler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cas", type=int, default=100000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--no-gc", action="store_true")
    parser.add_argument("--settle", action="store_true", help="settle the heap as the agent does")
    args = parser.parse_args()
    view, routes, catalog = al.setup(args.cas)
    # the kernel as the previous run left it
    whole = LearnedTable(catalog, (al.OURS,), al.PROVIDER)
    whole.apply(routes.items())
    everything = compute(view, whole, al.HOST, Learned(), None, EMPTY)
    observed = {o.key: o for part in everything.partitions.values() for o in part}
    tables = dict(view.tables)
    vsids = served_vsids(catalog, tables)
    before = Learned()
    before.swap(everything)
    kernel_decap = decap.DecapInputs(before.every_record(), (), whole.next_hops(), {}, tables,
                                     vsids).filter(False, None)
    del whole, everything, before
    # the start: a full pass with nothing learned yet, the hold on
    table = LearnedTable(catalog, (al.OURS,), al.PROVIDER)
    learned = Learned()
    step = compute(view, table, al.HOST, learned, None, EMPTY)
    reconciler = Reconciler(None)  # type: ignore[arg-type]  (planning is pure)
    previous = reconciler.update(step.partitions)
    reconciler.observed = observed
    _, held = reconciler.plan(previous, True, True)
    learned.swap(step)
    index = decap.DecapIndex.build(decap.DecapInputs((), (), (), {}, tables, vsids), True, kernel_decap)
    items = list(routes.items())
    gc.collect()
    if args.no_gc:
        gc.disable()
    spent = dict.fromkeys(("learned table", "compute", "update + plan", "swap", "decapsulation index", "settle"),
                          0.0)
    full: list[float] = []  # the full collections' wall times
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                full.append(time.perf_counter() - started[0])

    gc.callbacks.append(on_gc)
    heap, unsettled = Heap(), 0
    began = time.thread_time()
    for i in range(0, len(items), args.batch):
        t0 = time.thread_time()
        change = table.apply(items[i:i + args.batch])
        follow_remote(view.mobility, table.macs(), al.OURS, 0.0, complete=False, keys=change.macs.keys())
        t1 = time.thread_time()
        step = compute(view, table, al.HOST, learned, set(), change)
        t2 = time.thread_time()
        previous = reconciler.update(step.partitions)
        plan, _ = reconciler.plan(previous, True, False)
        t3 = time.thread_time()
        learned.swap(step)
        t4 = time.thread_time()
        what = decap.change(((), [new for _, new in step.records.values() if new is not None]),
                            next_hops=((), tuple(change.next_hops_added)))
        delta = index.apply(what, True)
        t5 = time.thread_time()
        unsettled += len(step.records)
        if args.settle and unsettled >= SETTLE_RECORDS:
            heap.settle()
            unsettled = 0
        t6 = time.thread_time()
        assert not plan and not delta, "the kernel holds the table: nothing to write"
        for name, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
            spent[name] += seconds
    arrived = time.thread_time() - began
    t0 = time.thread_time()
    plan, held = reconciler.plan(reconciler.update({}), False, False)
    eor = time.thread_time() - t0
    gc.callbacks.remove(on_gc)
    print(f"{args.cas:,} remote CAs held at start ({len(items):,} routes, batches of {args.batch}, gc "
          f"{'off' if args.no_gc else 'on'}{', settled' if args.settle else ''}): "
          f"learned in {arrived:.3f} s, {arrived / args.cas * 1e6:.1f} us per CA; "
          + ", ".join(f"{k} {v:.3f} s" for k, v in spent.items()))
    print(f"full collections meanwhile: {len(full)}, {sum(full):.3f} s, the longest {max(full, default=0):.3f} s")
    print(f"End-of-RIB: plan {eor:.3f} s, {len(plan.ops)} ops, {held} still held")


if __name__ == "__main__":
    main()
