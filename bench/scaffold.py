"""What the lab benchmarks share: the default topology up with a Fabric on it and both taken down again, and
a watch of the routes a namespace's kernel gets (`ip monitor route`, stamped as each line is read).

The benchmarks run as scripts (`python bench/X.py`): their folder is on the path, so `import scaffold`.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any, Protocol

from nvfabric.lab import runner
from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.fabric import Fabric
from nvfabric.lab.topology import load

Op = tuple[float, str, str, str | None]  # (when read, "create" or "delete", CA prefix, PA or None)


class Closable(Protocol):
    def close(self) -> None: ...


def fabric_up(**kwargs: Any) -> Fabric:
    """The lab's default topology up, and a Fabric on it (`kwargs`: Fabric's); `fabric_down` undoes both."""
    topology = load(DEFAULT_TOPOLOGY)
    runner.up(topology)
    return Fabric(topology, **kwargs)


def fabric_down(fabric: Fabric, *first: Closable | None) -> None:
    """`fabric` closed and its topology taken down; before them, each of `first` that is there (what runs
    on the fabric: an injector's loop, a watch), in order."""
    for thing in first:
        if thing is not None:
            thing.close()
    fabric.close()
    runner.down(fabric.topology.name)


def parse_route(line: str) -> tuple[str, str, str | None] | None:
    """Pure: one line of `ip -4 monitor route` -> (action, CA prefix, PA or None), for an encapsulated route
    (a remote CA's or prefix's); None for any other line. The PA of a deleted route is not kept."""
    words = line.split()
    if not words or "encap" not in words:
        return None
    deleted = words[0] == "Deleted"
    if deleted:
        words = words[1:]
    pa = words[words.index("dst") + 1] if "dst" in words and not deleted else None
    prefix = words[0] if "/" in words[0] else words[0] + "/32"
    return ("delete" if deleted else "create", prefix, pa)


class RouteWatch:
    """`ip -4 monitor route` in a namespace, read by a thread: each encapsulated route's change as an Op,
    stamped when its line is read (time.monotonic()), and when each CA prefix first appeared. `overflows`:
    how often the monitor's netlink socket overflowed (ip says so and goes on: the routes changed meanwhile
    are not seen); `rcvbuf` asks for a larger socket buffer (capped by net.core.rmem_max)."""

    def __init__(self, ns: str, rcvbuf: int | None = None) -> None:
        self.ops: list[Op] = []
        self.overflows = 0
        self._first: dict[str, float] = {}
        self._cond = threading.Condition()
        size = ["-rcvbuf", str(rcvbuf)] if rcvbuf is not None else []
        self.proc = subprocess.Popen(["ip", "-n", ns, *size, "-4", "monitor", "route"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            if line.startswith("netlink receive error"):  # ENOBUFS: lines were lost
                self.overflows += 1
                continue
            op = parse_route(line)
            if op is None:
                continue
            with self._cond:
                self.ops.append((now, *op))
                if op[0] == "create":
                    self._first.setdefault(op[1], now)
                self._cond.notify_all()

    def take(self) -> list[Op]:
        """The ops read since the last take."""
        with self._cond:
            ops, self.ops = self.ops, []
        return ops

    def wait(self, ca: str, timeout: float) -> float:
        """When the route of `ca` (an address or a prefix) first appeared (TimeoutError after `timeout`)."""
        prefix = ca if "/" in ca else ca + "/32"
        with self._cond:
            if not self._cond.wait_for(lambda: prefix in self._first, timeout):
                raise TimeoutError(f"no route to {prefix} within {timeout} s")
            return self._first[prefix]

    def close(self) -> None:
        self.proc.terminate()
