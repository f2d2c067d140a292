"""Python's cyclic garbage collector in a daemon that holds a fabric's table.

Python collects its oldest generation when what survived into it since the last such (full) collection
reaches a quarter of what is there. A full collection walks every object the collector tracks, with every
thread of the process stopped (it holds the GIL): an agent holding 100,000 remote CAs tracks millions of
long-lived objects (routes, lookup records, partitions, kernel objects), and while such a table arrives the
full collections come one after another, each walking all that was learned so far: 2 to 3.6 s each in the
lab's TCG VM at 100,000 remote CAs, none of which found anything to collect (docs/benchmarks.md, "Agent
restart at scale").

`Heap.settle()`, called by a daemon after a step that leaves a lot of long-lived state (a sync pass of the
agent), collects what is not settled yet (only that: what survived since the last settle) and then moves
the survivors out of the collector's sight (`gc.freeze()`). A full collection then walks only what was
allocated since: its pause is bounded by a step's allocation, not by the table.

The price: a settled object is freed by its reference count alone. Plain data (the table's routes and
records hold no reference cycles) is freed as before when dropped; an object in a reference cycle that was
alive at a settle and dropped later stays allocated (a closed session's connection objects, a few KiB per
session that goes down). `settles` and `settled` (the objects out of sight) are for the daemon's metrics.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass


@dataclass
class Heap:
    settles: int = 0

    def settle(self) -> int:
        """Collect what is not settled yet, then settle the survivors; returns the objects collected."""
        collected = gc.collect()
        gc.freeze()
        self.settles += 1
        return collected

    @staticmethod
    def settled() -> int:
        """Objects the collector no longer walks (frozen by any settle of this process)."""
        return gc.get_freeze_count()
