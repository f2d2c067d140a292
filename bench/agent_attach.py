"""Attach latency: `Agent.put_port` on hv1 until the CA's route is in hv3's kernel.

Run inside the VM (the host kernel has no VRF/GRE):
    nvfabric lab kernel --vm always -- .venv/bin/python bench/agent_attach.py [--count 50]

The default topology with the two tenants of lab/fabric.py (`nvfabric rr` reflectors on rr1/rr2, agents
on hv1-hv3 in this process). Then, one at a time, a new port on hv1 (a fresh veth, CA 10.0.0.100+i in
blue's VSID 5001): t0 before `put_port`, t1 when it returns (kernel programmed on hv1 and the route
handed to BGP), t2 when `ip monitor route` in hv3 prints the CA's route (a reader thread stamps each
line as it arrives). Path: hv1 agent -> rr1/rr2 -> hv3 agent -> hv3 kernel.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import ipaddress
import statistics
import time

from nvfabric.lab import netns
from nvfabric.vnet.model import Port
from scaffold import RouteWatch, fabric_down, fabric_up


def ms(xs: list[float]) -> str:
    p90 = sorted(xs)[int(len(xs) * 0.9)]
    return (f"median {statistics.median(xs) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, "
            f"min {min(xs) * 1000:.0f} ms, max {max(xs) * 1000:.0f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile hv1's agent thread during the attaches (slows it: timings are not comparable)")
    args = parser.parse_args()
    fabric = fabric_up()
    watch = None
    try:
        fabric.up()
        hv1 = fabric.ns("hv1")
        netns.ip_batch([f"link add tap-a{i} type veth peer name vm-a{i}" for i in range(args.count)]
                       + [f"link set vm-a{i} up" for i in range(args.count)], hv1)
        watch = RouteWatch(fabric.ns("hv3"))
        time.sleep(1.0)
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            # enabled from inside hv1's event-loop thread: cProfile profiles the thread that enables it
            fabric.agents["hv1"].read(lambda a: profiler.enable())
        put, total = [], []
        parts: dict[str, list[float]] = {"seconds": [], "plan_seconds": [], "apply_seconds": [], "kernel_seconds": []}
        for i in range(args.count):
            ca = str(ipaddress.ip_address("10.0.0.100") + i)
            port = Port(f"a{i}", f"tap-a{i}", f"02:00:00:01:00:{i:02x}", 5001, (ipaddress.ip_address(ca),))
            t0 = time.monotonic()
            fabric.agents["hv1"].call(lambda a, port=port: a.put_port(port))
            t1 = time.monotonic()
            last = fabric.agents["hv1"].read(lambda a: a.status().last_reconcile) or {}
            for key, values in parts.items():
                values.append(float(last.get(key, 0.0)))
            t2 = watch.wait(ca, 30)
            put.append(t1 - t0)
            total.append(t2 - t0)
        if profiler is not None:
            fabric.agents["hv1"].read(lambda a: profiler.disable())
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
            print(out.getvalue())
        print(f"ports attached: {args.count}")
        print(f"put_port on hv1 returns (hv1 kernel programmed, route handed to BGP): {ms(put)}")
        print(f"put_port on hv1 -> route in hv3's kernel: {ms(total)}")
        # hv1's reconcile of each put_port (vnet.reconcile.Outcome): read + plan in Python, apply, of which
        # the kernel (sendmsg and acks)
        for key, values in parts.items():
            print(f"hv1 reconcile {key}: {ms(values)}")
        return 0
    finally:
        fabric_down(fabric, watch)


if __name__ == "__main__":
    raise SystemExit(main())
