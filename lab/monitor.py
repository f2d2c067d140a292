"""What changes in a namespace's routes and neighbours while something runs (`ip monitor`): for the tests and
benchmarks that must show that a daemon changed nothing, e.g. an agent restarting over its own state."""

from __future__ import annotations

import select
import subprocess

from nvfabric.lab import netns

MARKER = "192.0.2.254/32"  # a route of the monitor's own, to know it is listening
MARKER_TABLE = "4242"


class Monitor:
    """`ip monitor route neigh` in namespace `ns` from the construction until `stop()`."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.lines: list[str] = []
        self.proc = subprocess.Popen(["ip", "-n", ns, "monitor", "route", "neigh"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        # listening once it has printed a change of our own making (its lines are left out of `lines`)
        route = ["blackhole", MARKER, "table", MARKER_TABLE]
        for _ in range(100):
            netns.run(["ip", "-n", ns, "route", "add", *route])
            heard = select.select([self.proc.stdout], [], [], 0.2)[0]
            netns.run(["ip", "-n", ns, "route", "del", *route])
            if heard:
                break
        else:
            self.proc.kill()
            raise RuntimeError(f"ip monitor in {ns} printed nothing")

    def stop(self) -> list[str]:
        """Every event line seen (but the marker's)."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        self.lines = [ln for ln in out.splitlines() if MARKER.split("/")[0] not in ln]
        return self.lines

    def ours(self) -> list[str]:
        """The lines about objects of nvfabric's (vnet/kernel/objects.py): routes of protocol 78, permanent
        and proxy neighbour entries; the kernel's own neighbour resolution changes states all the time."""
        return [ln for ln in self.lines if "proto 78" in ln or "PERMANENT" in ln or "proxy" in ln]
