"""Conntrack, read over netlink: how many tracked connections each ct mark has (the gateway marks a
tenant's flows with its tenant id).

Counted by a sampler, not per request: one dump every `interval` seconds in one thread of its own, which
stops with its owner. A scrape or a status call reads the last count and never walks the table itself,
so the cost of observing is one dump per period whatever the number of readers."""

from __future__ import annotations

import logging
import threading
import time

from pyroute2 import Conntrack

from nvfabric.vnet.kernel.netns import inside

log = logging.getLogger(__name__)


class SessionSampler:
    """Conntrack entries per ct mark (= tenant id) in a network namespace, counted every `interval` seconds.

    pyroute2's Conntrack is synchronous and runs its own event loop, so it cannot run on ours: it runs in
    this sampler's thread (which starts in the namespace of the thread that creates it, ours) and enters
    the configured namespace by name when there is one. `stop()` ends the thread: a dump in progress is
    abandoned at the next entry."""

    def __init__(self, netns: str | None, interval: float) -> None:
        self.netns = netns
        self.interval = interval
        self.counts: dict[int, int] = {}  # replaced whole by the thread: a reader sees one sample
        self.sampled_at: float | None = None  # time.monotonic() of the last complete count
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="conntrack-sessions", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and wait for the thread (at most `timeout`: it sees the stop at its next entry)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("conntrack sampler: still in a dump %.0f s after stop", timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                counts = self._count()
            except Exception as exc:  # noqa: BLE001 - a failed sample is logged; the next one may work
                log.warning("conntrack sampler: %s", exc)
            else:
                if counts is not None:
                    self.counts, self.sampled_at = counts, time.monotonic()
                    self.samples += 1
            self._stop.wait(self.interval)

    def _count(self) -> dict[int, int] | None:
        counts: dict[int, int] = {}
        with inside(self.netns), Conntrack() as ct:
            for entry in ct.dump_entries():
                if self._stop.is_set():
                    return None
                mark = entry.mark or 0
                if mark:
                    counts[mark] = counts.get(mark, 0) + 1
        return counts
