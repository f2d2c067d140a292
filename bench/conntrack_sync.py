"""Connection state replication (gateway/conntrackd.py): how fast conntrackd brings a gateway's NAT entries
into the other gateway's kernel.

Two namespaces joined by a veth (the sync link), each running conntrackd through `ConntrackSync` (the
gateway's own configuration and supervision). In `a`, UDP flows from a tenant-like source are marked,
zoned and SNATed as the gateway's NAT does (zone = mark = 1000, SNAT to 203.0.113.140) and leave by a veth
to nowhere; `b` is the standby. Measured, for N flows:
- one flow: from its first packet in `a` to its entry in `b`'s kernel (b's conntrack event; median of 20),
- a burst of N new flows: until all are in `b`,
- `b` restarted with an empty table (as after a reboot): until conntrackd's StartupResync brought all N back,
- on `b`, holding N replicas: `conntrackd -R` then `-B` (what becoming active runs), and `-n`.

    .venv/bin/python bench/conntrack_sync.py 1000 10000          # here (needs root; no VRF)
    .venv/bin/nvfabric lab kernel --vm always -- .venv/bin/python bench/conntrack_sync.py 1000 10000
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvfabric.gateway.config import SyncConfig  # noqa: E402
from nvfabric.gateway.conntrackd import ConntrackSync, SyncFiles  # noqa: E402
from nvfabric.lab.daemons import in_ns  # noqa: E402
from nvfabric.lab.netns import run  # noqa: E402

ZONE = 1000
NFT = f"""table inet bench {{
  chain raw {{ type filter hook output priority -300; ip saddr 10.9.0.0/24 ct zone set {ZONE}; }}
  chain mangle {{ type route hook output priority -150; ip saddr 10.9.0.0/24 ct mark set {ZONE} meta mark set {ZONE}; }}
  chain postrouting {{ type nat hook postrouting priority 100;
    oifname "out" ip saddr 10.9.0.0/24 snat ip to 203.0.113.140; }}
}}
"""

def count(ns: str) -> int:
    """The entries in a namespace's kernel (`conntrack -C`: b holds only replicas; pyroute2's Conntrack cannot
    run beside our event loop)."""
    return int(run(["ip", "netns", "exec", ns, "conntrack", "-C"]).output.split()[0])


def send_flows(ns: str, first_port: int, n: int) -> None:
    """n UDP flows (one datagram each, one source port each) from 10.9.0.5 in namespace ns."""
    def go() -> None:
        for port in range(first_port, first_port + n):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("10.9.0.5", port))
                s.sendto(b"x", ("198.18.0.1", 9))
    in_ns(ns, go, timeout=600)


def wait_count(ns: str, want: int, timeout: float) -> float | None:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if count(ns) >= want:
            return time.monotonic() - began
        time.sleep(0.01)  # a dump of the table each time: not too often
    return None


async def timed(sync: ConntrackSync, *args: str) -> float:
    began = time.monotonic()
    ok = await sync.command(*args)
    assert ok, sync.status().last_error
    return time.monotonic() - began


async def measure(ns: dict[str, str], sizes: list[int]) -> None:
    addr = {"a": ipaddress.ip_address("192.0.2.21"), "b": ipaddress.ip_address("192.0.2.22")}
    syncs = {n: ConntrackSync(SyncConfig("sync0", addr[n], addr["b" if n == "a" else "a"]), ns[n],
                              [addr["a"], addr["b"]], SyncFiles(Path(f"/run/nvfabric/bench-conntrackd-{n}")))
             for n in ("a", "b")}
    for s in syncs.values():
        await s.start()
    try:
        await asyncio.sleep(1.5)  # both daemons up and hearing each other
        # b's kernel tells when each replica is made (`conntrack -E`, timestamps of its own): no poll in the way
        events = subprocess.Popen(["ip", "netns", "exec", ns["b"], "conntrack", "-E", "-e", "NEW", "-o", "timestamp",
                                   "-p", "udp"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            await asyncio.sleep(0.5)
            delays = []
            for port in range(10000, 10020):
                began = time.time()
                send_flows(ns["a"], port, 1)
                while True:
                    line = await asyncio.wait_for(asyncio.to_thread(events.stdout.readline), 10)  # type: ignore[union-attr]
                    stamp = re.match(r"\[(\d+\.\d+)\]", line)
                    if stamp and f"sport={port} " in line:
                        delays.append(float(stamp.group(1)) - began)
                        break
        finally:
            events.terminate()
            events.wait()
        print(f"one flow into b's kernel: median {statistics.median(delays) * 1000:.1f} ms "
              f"(min {min(delays) * 1000:.1f}, max {max(delays) * 1000:.1f}; 20 flows; from sending its packet "
              "to b's conntrack event)", flush=True)
        for n in sizes:
            for x in ns.values():
                run(["ip", "netns", "exec", x, "conntrack", "-F"], check=False)
            await asyncio.sleep(1)
            began = time.monotonic()
            await asyncio.to_thread(send_flows, ns["a"], 20000, n)
            sent = time.monotonic() - began
            took = await asyncio.to_thread(wait_count, ns["b"], n, 120)
            total = time.monotonic() - began
            print(f"N={n}: {n} new flows sent in {sent:.2f} s; all in b {total:.2f} s after the first "
                  f"({'not all' if took is None else f'{took:.2f} s after the last was sent'})", flush=True)
            # b restarted with an empty table: StartupResync asks a for everything
            await syncs["b"].stop()
            run(["ip", "netns", "exec", ns["b"], "conntrack", "-F"], check=False)
            empty = count(ns["b"])
            began = time.monotonic()
            await syncs["b"].start()
            took = await asyncio.to_thread(wait_count, ns["b"], n, 120)
            print(f"N={n}: b restarted with {empty} entries, all {n} back in "
                  f"{'-' if took is None else f'{took:.2f}'} s (daemon start included)", flush=True)
            r = await timed(syncs["b"], "-R")
            b = await timed(syncs["b"], "-B")
            f = await timed(syncs["b"], "-f", "internal")
            nn = await timed(syncs["b"], "-n")
            print(f"N={n}: on b, -R {r:.3f} s, -B {b:.3f} s, -f internal {f:.3f} s, -n {nn:.3f} s (command "
                  f"round trips)", flush=True)
            await syncs["a"].sample()
            await syncs["b"].sample()
            for name, s in syncs.items():
                st = s.status().stats
                print(f"    {name}: internal {st.internal}, sent {st.sent}, received {st.received}, lost {st.lost}, "
                      f"injected created {st.injected_created} updated {st.injected_updated} "
                      f"failed {st.inject_failed}", flush=True)
    finally:
        for s in syncs.values():
            await s.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[1000, 10000])
    args = parser.parse_args()
    p = f"ctb{os.getpid() % 10000}-"
    ns = {n: p + n for n in ("a", "b")}
    try:
        for n in ns.values():
            run(["ip", "netns", "add", n])
            run(["ip", "-n", n, "link", "set", "lo", "up"])
        run(["ip", "link", "add", "sync0", "netns", ns["a"], "type", "veth", "peer", "name", "sync0", "netns", ns["b"]])
        for n, address in (("a", "192.0.2.21"), ("b", "192.0.2.22")):
            run(["ip", "-n", ns[n], "addr", "add", f"{address}/24", "dev", "sync0"])
            run(["ip", "-n", ns[n], "link", "set", "sync0", "up"])
            run(["ip", "-n", ns[n], "link", "add", "out", "type", "veth", "peer", "name", "sink"])  # no dummy module
            for dev in ("out", "sink"):
                run(["ip", "-n", ns[n], "link", "set", dev, "up"])
            run(["ip", "-n", ns[n], "addr", "add", "10.9.0.5/24", "dev", "out"])
            run(["ip", "-n", ns[n], "route", "add", "198.18.0.0/16", "dev", "out"])
        Path("/tmp/conntrack-sync-bench.nft").write_text(NFT)
        run(["ip", "netns", "exec", ns["a"], "nft", "-f", "/tmp/conntrack-sync-bench.nft"])
        run(["ip", "netns", "exec", ns["a"], "sysctl", "-qw", "net.netfilter.nf_conntrack_max=262144"], check=False)
        # the flows are one datagram each: they must not expire (30 s) while a slow machine still replicates them
        for n in ns.values():
            run(["ip", "netns", "exec", n, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=3600"])
        asyncio.run(measure(ns, args.sizes))
    finally:
        for n in ns.values():
            run(["ip", "netns", "del", n], check=False)


if __name__ == "__main__":
    main()
