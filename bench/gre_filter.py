"""The decapsulation table's GRE source filter (vnet/decap.py) with N provider addresses: the first write
(the whole table) against one host coming and one going (two set elements), on this machine's nftables, in
a scratch namespace, through libnftables in this process and through the `nft` command.

    sudo .venv/bin/python bench/gre_filter.py --pas 100,1000,10000 --runs 11

Prints, per N and way: the transaction's size in bytes and the median wall time of `Nft.apply` for the
whole table and for the one-host change (the command's time includes its process start).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import statistics
import time

from nvfabric.lab import netns
from nvfabric.vnet.decap import DecapFilter, DecapTable, changes, ruleset
from nvfabric.vnet.nftables import Nft


def pas(n: int, start: int = 0) -> frozenset:
    base = int(ipaddress.ip_address("10.128.0.0"))
    return frozenset(ipaddress.ip_address(base + start + i) for i in range(n))


async def one(ns: str, n: int, runs: int, in_process: bool) -> dict[str, float]:
    full_t, delta_t = [], []
    old = DecapFilter(pas(n))
    new = DecapFilter(pas(n, 1))  # 10.128.0.0 leaves, the address after the last comes
    for _ in range(runs):
        table = DecapTable(Nft(ns, in_process=in_process))
        await table.delete()
        started = time.perf_counter()
        await table.apply(old)
        full_t.append(time.perf_counter() - started)
        started = time.perf_counter()
        await table.apply(new)
        delta_t.append(time.perf_counter() - started)
        assert (await table.read()) == new
    return {"n": n, "full_bytes": len(ruleset(old)), "full_ms": statistics.median(full_t) * 1000,
            "change_bytes": len(changes(old, new) or ""), "change_ms": statistics.median(delta_t) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pas", default="100,1000,10000")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    ns = f"nvf-grebench-{os.getpid()}"
    netns.create(ns)
    try:
        print("| provider addresses | through | whole table: bytes, ms | one host comes, one goes: bytes, ms |")
        print("| ---: | --- | ---: | ---: |")
        for n in (int(x) for x in args.pas.split(",")):
            for in_process, way in ((True, "libnftables"), (False, "`nft` command")):
                r = asyncio.run(one(ns, n, args.runs, in_process))
                print(f"| {n:,} | {way} | {r['full_bytes']:,} B, {r['full_ms']:.1f} ms | "
                      f"{r['change_bytes']:,} B, {r['change_ms']:.2f} ms |")
    finally:
        netns.destroy(ns)


if __name__ == "__main__":
    main()
