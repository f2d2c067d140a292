"""Install N remote CAs through vnet's netlink layer vs `ip -batch` of the same routes, in one kernel.

Run inside the VM (the host kernel has no VRF/GRE):
    nvfabric lab kernel --vm always -- .venv/bin/python bench/netlink_install.py [--count 100000]

Each remote CA is ONE object: an LWT encap route `CA/32 encap ip id VSID<<8 dst PA ttl 64 key via
169.254.0.1 dev nvf-gre4 onlink` in the routing domain's VRF table. The issue says "route + neighbour";
with the collect-md design (docs/dataplane.md) there is no per-CA neighbour: the single permanent
neighbour of 169.254.0.1 (the router MAC) serves every CA, so it is created once in the setup.
Two fresh namespaces with the same setup; each method fills one; both are verified by counting.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import subprocess
import tempfile
import time

from nvfabric.vnet.kernel.apply import apply
from nvfabric.vnet.kernel.diff import diff
from nvfabric.vnet.kernel.netns import RtnlSocket
from nvfabric.vnet.kernel.objects import PROTO, EncapRoute, NvgreDevice, PermanentNeighbour, Vrf
from nvfabric.vnet.kernel.observe import observe

TABLE = 100
VSID = 5001
RMAC = "02:00:5e:10:00:01"


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout


def entries(count: int) -> list[tuple[str, str]]:
    """(CA, PA): CAs from 10.0.0.1 upwards, spread over 250 hosts' PAs."""
    base = int(ipaddress.IPv4Address("10.0.0.1"))
    return [(str(ipaddress.IPv4Address(base + n)), f"198.51.100.{n % 250 + 1}") for n in range(count)]


def base_state() -> set:
    return {Vrf("nvf-rd1", TABLE), NvgreDevice("nvf-gre4", 4, RMAC),
            PermanentNeighbour("nvf-gre4", "169.254.0.1", RMAC)}


def setup(ns: str) -> None:
    sh(f"ip netns del {ns} 2>/dev/null; ip netns add {ns}; ip -n {ns} link set lo up")


def count_routes(ns: str) -> int:
    return int(sh(f"ip -n {ns} route show table {TABLE} proto {PROTO} | wc -l"))


async def ours(ns: str, pairs: list[tuple[str, str]], reobserve: bool) -> dict[str, float]:
    with RtnlSocket(ns) as sock:
        base = base_state()
        report = await apply(sock, diff(base, await observe(sock)))
        assert report.ok, report.errors
        t0 = time.perf_counter()
        routes = {EncapRoute(TABLE, f"{ca}/32", VSID, pa, "nvf-gre4") for ca, pa in pairs}
        t1 = time.perf_counter()
        actual = await observe(sock)
        t2 = time.perf_counter()
        plan = diff(base | routes, actual)
        t3 = time.perf_counter()
        report = await apply(sock, plan)
        t4 = time.perf_counter()
        assert report.ok, report.errors[:3]
        assert len(plan) == len(pairs)
        times = {"build": t1 - t0, "observe": t2 - t1, "diff": t3 - t2, "apply": t4 - t3,
                 "encode": report.encode_seconds, "kernel": report.kernel_seconds}
        if reobserve:
            again = diff(base | routes, await observe(sock))
            times["reobserve+diff"] = time.perf_counter() - t4
            assert len(again) == 0, again.counts()
    return times


def ip_batch(ns: str, pairs: list[tuple[str, str]]) -> float:
    sh(f"ip -n {ns} link add nvf-rd1 type vrf table {TABLE}; ip -n {ns} link set nvf-rd1 up; "
       f"ip -n {ns} link add nvf-gre4 type gretap external; ip -n {ns} link set nvf-gre4 address {RMAC} up; "
       f"ip -n {ns} neigh add 169.254.0.1 lladdr {RMAC} dev nvf-gre4 nud permanent")
    with tempfile.NamedTemporaryFile("w", suffix=".batch", delete=False) as f:
        for ca, pa in pairs:
            f.write(f"route add {ca}/32 encap ip id {VSID << 8} dst {pa} ttl 64 key via 169.254.0.1 dev nvf-gre4 "
                    f"onlink table {TABLE} proto {PROTO} metric 1024\n")
    try:
        t0 = time.perf_counter()
        sh(f"ip -n {ns} -batch {f.name}")
        return time.perf_counter() - t0
    finally:
        os.unlink(f.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, nargs="+", default=[100_000])
    parser.add_argument("--ours-first", action="store_true", help="run vnet before ip -batch (default: after)")
    parser.add_argument("--no-reobserve", action="store_true", help="skip reading the routes back")
    args = parser.parse_args()
    subprocess.run("modprobe vrf; modprobe ip_gre", shell=True, check=False)
    print(f"kernel {os.uname().release}; one LWT encap route per remote CA (no per-CA neighbour)")
    for count in args.count:
        pairs = entries(count)
        a, b = "nvbench-ours", "nvbench-ip"
        setup(a)
        setup(b)
        try:
            if args.ours_first:
                times = asyncio.run(ours(a, pairs, not args.no_reobserve))
            t_ip = ip_batch(b, pairs)
            assert count_routes(b) == count
            if not args.ours_first:
                times = asyncio.run(ours(a, pairs, not args.no_reobserve))
            assert count_routes(a) == count
        finally:
            sh(f"ip netns del {a}; ip netns del {b}")
        layer = times["observe"] + times["diff"] + times["apply"]
        print(f"{count} routes: ip -batch {t_ip:.2f} s ({count / t_ip:,.0f}/s)")
        print(f"  vnet apply (netlink writer only) {times['apply']:.2f} s ({count / times['apply']:,.0f}/s), "
              f"ratio {times['apply'] / t_ip:.2f}x (encoding {times['encode']:.2f} s, "
              f"sendmsg + acks {times['kernel']:.2f} s)")
        print(f"  vnet observe+diff+apply {layer:.2f} s, ratio {layer / t_ip:.2f}x "
              f"(observe {times['observe']:.2f} s, diff {times['diff']:.2f} s)")
        print(f"  building the {count} EncapRoute values {times['build']:.2f} s")
        if "reobserve+diff" in times:
            print(f"  re-observe (reading back {count} routes) + diff = 0 changes: {times['reobserve+diff']:.2f} s")


if __name__ == "__main__":
    main()
