"""The decapsulation table (vnet/decap.py) per remote change, with N remote CAs vouched for: the Python of
one change (a CA arriving, moving to another host, leaving) the way it was done before (the whole table from
every input, compared with the applied one, `changes()` diffing the two) against the index by difference
(`DecapIndex.apply` + the transaction's text); and, with `--nft`, the kernel's side: one element change
written into a table of N elements, in a scratch namespace of this machine.

    .venv/bin/python bench/decap_change.py --cas 1000,10000,100000 --runs 30
    .venv/bin/nvfabric lab kernel -- .venv/bin/python bench/decap_change.py --cas 100000 --nft --runs 30

The fabric: N CAs behind N/50 hosts (50 per host), in 10 routing domains, two gateways announcing a default
route in each (vouched, covering nothing of a host's), a customer route through a CA in each domain.
Prints a markdown table (median and p99 in microseconds; the nft part in milliseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import statistics
import time

from nvfabric.vnet import decap
from nvfabric.vnet.decap import DecapIndex, DecapInputs, DecapTable, changes, delta_text
from nvfabric.vnet.model import CustomerRoute, LookupRecord, RemotePrefix
from nvfabric.vnet.nftables import Nft

MAC = "02:00:00:00:00:01"
DOMAINS = tuple(f"t{i}" for i in range(10))
TABLES = {d: 1000 + i for i, d in enumerate(DOMAINS)}
VSIDS = {5000 + i: 1000 + i for i in range(10)}
PER_HOST = 50


def host_pa(i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ipaddress.ip_address("10.200.0.0")) + i)


def fabric(n: int) -> DecapInputs:
    """N remote CAs, in vnet/learn.py lookup_records' order (routing domain, family, CA)."""
    per_domain = n // len(DOMAINS)
    records = []
    for d, domain in enumerate(DOMAINS):
        for i in range(per_domain):
            k = d * per_domain + i
            ca = ipaddress.IPv4Address(int(ipaddress.ip_address("10.0.0.0")) + i + 1)
            records.append(LookupRecord(domain, 5000 + d, ca, MAC, host_pa(k // PER_HOST)))
    gateways = (ipaddress.ip_address("10.199.0.1"), ipaddress.ip_address("10.199.0.2"))
    prefixes = tuple(RemotePrefix(domain, ipaddress.ip_network("0.0.0.0/0"), 5000 + d, gw)
                     for d, domain in enumerate(DOMAINS) for gw in gateways)
    customer = {domain: (CustomerRoute(ipaddress.ip_network("172.16.0.0/16"), ipaddress.IPv4Address("10.0.0.1")),)
                for domain in DOMAINS}
    hosts = {r.pa for r in records}
    next_hops = {pa: PER_HOST for pa in hosts} | {gw: len(DOMAINS) for gw in gateways}
    return DecapInputs(tuple(records), prefixes, next_hops, customer, TABLES, VSIDS)


def steps(base: DecapInputs, runs: int) \
        -> list[tuple[str, DecapInputs, DecapInputs, list[LookupRecord], list[LookupRecord]]]:
    """(kind, before, after, records gone, records come) per change, in a cycle: a CA arrives (the last of
    the last domain), one moves to the next host, the one that arrived leaves. The change is given as data,
    as the agent's learned state (vnet/learned.py) reports it."""
    out = []
    records = list(base.records)
    last = records[-1]
    was = base
    for i in range(runs):
        kind = ("arrives", "moves", "leaves")[i % 3]
        gone: list[LookupRecord] = []
        come: list[LookupRecord] = []
        if kind == "arrives":
            come.append(LookupRecord(last.routing_domain, last.vsid, last.ca + 1 + i, MAC, last.pa))
            records.append(come[0])
        elif kind == "moves":
            k = (i * 7919) % (len(records) - 1)
            r = records[k]
            gone.append(r)
            come.append(LookupRecord(r.routing_domain, r.vsid, r.ca, MAC, host_pa(int(r.pa) - int(host_pa(0)) + 1)))
            records[k] = come[0]
        else:
            gone.append(records.pop())
        now = DecapInputs(tuple(records), base.prefixes, base.next_hops, base.customer_routes, base.tables,
                          base.vsids)
        out.append((kind, was, now, gone, come))
        was = now
    return out


def python(n: int, runs: int) -> dict[str, list[float]]:
    """Each way in a loop of its own (the whole-table way allocates enough to leave the next one's caches
    cold); the transactions both ways write are compared."""
    base = fabric(n)
    changes_ = [(was, now, gone, come) for _kind, was, now, gone, come in steps(base, runs)]
    out: dict[str, list[float]] = {"whole": [], "index": []}
    # after: the change as data (what changed; the mappings compared per routing domain), applied
    index = DecapIndex.build(base)
    texts: list[str | None] = []
    for was, now, gone, come in changes_:
        started = time.perf_counter()
        what = decap.change((gone, come), ((), ()), ((), ()), (was.customer_routes, now.customer_routes),
                            (was.tables, now.tables), (was.vsids, now.vsids))
        texts.append(delta_text(index.apply(what, False)))
        out["index"].append((time.perf_counter() - started) * 1e6)
    # before: the whole table from every input, compared with the applied one, the two diffed
    applied = base.filter(False, None)
    for i, (_was, now, _gone, _come) in enumerate(changes_):
        started = time.perf_counter()
        want = now.filter(False, applied)
        text = changes(applied, want) if want != applied else None
        out["whole"].append((time.perf_counter() - started) * 1e6)
        assert text == texts[i], (text, texts[i])
        applied = want
    assert index.filter() == applied
    return out


async def nft(n: int, runs: int) -> dict[str, list[float]]:
    ns = f"nvf-decapbench-{os.getpid()}"
    from nvfabric.lab import netns
    netns.create(ns)
    try:
        base = fabric(n)
        table = DecapTable(Nft(ns))
        await table.read()
        started = time.perf_counter()
        await table.apply(base.filter(False, None))
        whole = time.perf_counter() - started
        index = DecapIndex.build(base)
        out: dict[str, list[float]] = {"whole table": [whole * 1e3], "one change": []}
        for _kind, _was, _now, gone, come in steps(base, runs):
            delta = index.apply(decap.change((gone, come)), False)
            started = time.perf_counter()
            await table.apply_delta(delta)
            out["one change"].append((time.perf_counter() - started) * 1e3)
        assert await DecapTable(Nft(ns)).read() == index.filter()
        return out
    finally:
        netns.destroy(ns)


def p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cas", default="1000,10000,100000")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--nft", action="store_true", help="the kernel's side (root; a scratch namespace)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.cas.split(",")]
    if args.nft:
        print("| remote CAs | whole table (ms) | one element change: median / p99 (ms) |")
        print("| ---: | ---: | ---: |")
        for n in sizes:
            r = asyncio.run(nft(n, args.runs))
            print(f"| {n:,} | {r['whole table'][0]:,.0f} | {statistics.median(r['one change']):.2f} / "
                  f"{p99(r['one change']):.2f} |")
        return
    print("| remote CAs | before: whole table + changes() (us) | index.apply + text (us) |")
    print("| ---: | ---: | ---: |")
    for n in sizes:
        r = python(n, args.runs)
        cells = " | ".join(f"{statistics.median(r[k]):,.0f} / {p99(r[k]):,.0f}" for k in ("whole", "index"))
        print(f"| {n:,} | {cells} |")


if __name__ == "__main__":
    main()
