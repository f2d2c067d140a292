"""Attach and detach in the agent's Python, without a kernel: what `Agent.put_port` / `delete_port` cost
beside the kernel, as the number of ports already on the host grows.

    .venv/bin/python bench/agent_attach_local.py [--ports 100,1000,5000] [--count 50] [--saves 100,1000,10000]

The real Agent with its kernel-facing parts replaced by stand-ins that do nothing (the reconciler answers
"applied", nft accepts every script, the BGP client takes every route): what is left is the Python of a
change (catalog, desired state of the port's routing domain, port security's elements, announcements, guest
services) and the state directory in a temporary directory (a real fsync on this machine's disk). For each
size: N ports in the state directory at start, one attach (not timed: the first write of port
security's tables is whole), then `--count` attaches and `--count` detaches one at a time,
each timed, and within them the state saves. `--saves`: the state save of one attach alone, the whole
state (as every save was before the journal) against one journal line.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from nvfabric.hostagent import state
from nvfabric.hostagent.agent import Agent
from nvfabric.lab import standins
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.model import Port, RoutingDomain, VirtualSubnet

# IPv4 only: an IPv6 CA adds a proxy NDP entry on every other port of its subnet (vnet/desired.py), which
# at thousands of ports in one subnet is the desired state's cost, not the attach path's measured here
DOMAIN = RoutingDomain("blue", ("65001:1",), (
    VirtualSubnet(5001, (ipaddress.ip_network("10.0.0.0/8"),), (ipaddress.ip_address("10.0.0.1"),)),))


def port(i: int) -> Port:
    return Port(f"vm{i}", f"tap{i}", f"02:00:{(i >> 24) & 0xff:02x}:{(i >> 16) & 0xff:02x}:"
                f"{(i >> 8) & 0xff:02x}:{i & 0xff:02x}", 5001,
                (ipaddress.ip_address(0x0A000000 + 0x100 + i),),
                port_security=True)


def agent(directory: Path) -> Agent:
    """The real agent, its kernel, nft and BGP client stand-ins (lab/standins.py): the Python measured."""
    return standins.agent(directory, [{"name": "blue", "route_targets": ["65001:1"],
                                       "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/8"]}]}])[0]


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    return (f"median {statistics.median(xs) * 1000:7.2f} ms  p90 {xs[int(len(xs) * 0.9)] * 1000:7.2f} ms  "
            f"max {xs[-1] * 1000:7.2f} ms")


async def run(size: int, count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # the N ports as a restart finds them in the state directory
        catalog = Catalog.build({DOMAIN.name: DOMAIN}, {p.name: p for p in map(port, range(size))})
        state.save(Path(tmp), state.SavedState(catalog, {DOMAIN.name: 1000}, {}))
        a = agent(Path(tmp))
        await a.put_port(port(size + count))  # (a first change: port security's tables written whole)
        saves: list[float] = []
        computes: list[float] = []
        timed_save(a, saves)
        timed(a, "_compute", computes)
        attach, detach = [], []
        for i in range(size, size + count):
            t0 = time.perf_counter()
            await a.put_port(port(i))
            attach.append(time.perf_counter() - t0)
        for i in range(size, size + count):
            t0 = time.perf_counter()
            await a.delete_port(f"vm{i}")
            detach.append(time.perf_counter() - t0)
        print(f"{size:6d} ports  attach {summary(attach)}")
        print(f"{'':6s}        detach {summary(detach)}")
        print(f"{'':6s}        of which the state saved {summary(saves)}")
        print(f"{'':6s}        of which the desired state {summary(computes)}  (Agent._compute)")
        rest = [t - c - v for t, c, v in zip(attach + detach, computes, saves, strict=True)]
        print(f"{'':6s}        the rest       {summary(rest)}  (catalog, guard, announce, guest...)")


def timed_save(a: Agent, out: list[float]) -> None:
    """Time every state save of `a` (the journal's when it has one, else the whole file's)."""
    store = getattr(a, "_store", None)
    timed(store if store is not None else state, "save", out)


def timed(owner: Any, name: str, out: list[float]) -> None:
    """Time every call of `owner.name` (a save, the desired state's computation) into `out`."""
    real = getattr(owner, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            out.append(time.perf_counter() - t0)

    setattr(owner, name, call)


def saves(size: int, count: int) -> None:
    """The state save of one attach alone, with `size` ports: the whole state written (a snapshot: what
    every save was before the journal) against one journal line."""
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog.build({DOMAIN.name: DOMAIN}, {p.name: p for p in map(port, range(size))})
        store = state.Store(Path(tmp))
        store.save(state.SavedState(catalog, {DOMAIN.name: 1000}, {}))
        whole, line = [], []
        for i in range(size, size + count):
            catalog = catalog.with_port(port(i))
            new = state.SavedState(catalog, {DOMAIN.name: 1000}, {})
            t0 = time.perf_counter()
            state.save(Path(tmp) / "whole", new)
            whole.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            store.save(new, {f"vm{i}"}, ())
            line.append(time.perf_counter() - t0)
        print(f"{size:6d} ports  save whole  {summary(whole)}")
        print(f"{'':6s}        save change {summary(line)}  ({store.snapshots - 1} compactions)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ports", default="100,1000,5000")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--saves", default="", help="sizes to time the state save alone at (e.g. 100,1000,10000)")
    args = parser.parse_args()
    for size in (int(s) for s in args.ports.split(",") if s):
        asyncio.run(run(size, args.count))
    for size in (int(s) for s in args.saves.split(",") if s):
        saves(size, args.count)


if __name__ == "__main__":
    main()
