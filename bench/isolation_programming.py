"""Programming cost of port security and decapsulation validation: ports attached one by one through the
agent, remote CAs learned from a reflector; time, latency and the nftables set elements written per change.

Run inside the VM (the host kernel has no VRF/GRE):
    nvfabric lab kernel --vm always -- .venv/bin/python bench/isolation_programming.py [--ports 1000] \
        [--remote-cas 100000]

The default topology, `nvfabric rr` on rr1 and rr2, ONE agent (hv1, a thread of this process) with one
routing domain `scale` (VSID 7001, 10.64.0.0/14).
1. Ports: `--ports` new ports on hv1, each a fresh veth with 2 CAs (10.64.x.y, consecutive), attached one at a
   time with `Agent.put_port` (as bench/agent_attach.py does). "with" and "without" alternate port by port
   (even ports port_security on, odd ports off: bench/isolation_switch.py `port_with_security`), so both
   see the same growth of the host. Per mode: total time of the attaches, p50/p99 of `put_port`, and what
   each attach wrote to nftables (set elements added + deleted, rules, whole tables, transactions).
2. Remote CAs: an injector (a BGP session from hv2's address; no agent runs on hv2) announces
   `--remote-cas` EVPN type-2 routes in VSID 7001 (10.65.0.0 onwards) from `--pas` provider addresses to rr1,
   packed before the clock starts; time from the first byte until hv1's agent holds them all as lookup
   records and is idle (its reconcile done, nothing pending), and the elements written; then the same for
   withdrawing them all. There is no switch for decapsulation validation: its "without" is this command on
   the tree before it (figures in docs/benchmarks.md).
Counting: every transaction of `vnet.nftables.Nft` in this process is parsed (bench/isolation_switch.py
`NftCount`); the set sizes of our tables are read from the kernel before and after each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rr_reflect  # noqa: E402  (its counting BGP session and connect())
from isolation_switch import NftCount, delta, has_port_security, machine, port_with_security, set_sizes  # noqa: E402
from scaffold import fabric_down, fabric_up  # noqa: E402

from nvfabric.bgp import wire  # noqa: E402
from nvfabric.bgp.routes import MacIpRoute  # noqa: E402
from nvfabric.lab import netns  # noqa: E402
from nvfabric.lab.daemons import LoopThread  # noqa: E402
from nvfabric.lab.fabric import HV, Fabric  # noqa: E402
from nvfabric.vnet.model import Port, RoutingDomain  # noqa: E402

VSID = 7001
RT = "65000:9"
SCALE = RoutingDomain.from_dict({"name": "scale", "route_targets": [RT], "subnets": [
    {"vsid": VSID, "prefixes": ["10.64.0.0/14"]}]})
PORT_BASE = int(ipaddress.IPv4Address("10.64.0.0"))
REMOTE_BASE = int(ipaddress.IPv4Address("10.65.0.0"))
INJECTOR = HV["hv2"]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))]


def port(i: int) -> Port:
    cas = (ipaddress.IPv4Address(PORT_BASE + 2 * i + 2), ipaddress.IPv4Address(PORT_BASE + 2 * i + 3))
    return Port(f"p{i}", f"tap-p{i}", "02:00:00:02:" + (i + 1).to_bytes(2, "big").hex(":"), VSID, cas)


def remote_routes(count: int, pas: int) -> list[MacIpRoute]:
    """Distinct MACs and CAs in VSID 7001, spread over `pas` provider addresses 198.51.100.150 onwards."""
    out = []
    for j in range(count):
        pa = f"198.51.100.{150 + j % pas}"
        out.append(MacIpRoute(rd=f"{pa}:{VSID}", mac="02:01:" + j.to_bytes(4, "big").hex(":"),
                              ip=str(ipaddress.IPv4Address(REMOTE_BASE + j)), vsid=VSID, next_hop=pa,
                              route_targets=(RT,), router_mac="02:00:5e:10:00:01"))
    return out


class Injector(LoopThread):
    """One BGP session to rr1 from hv2's namespace (rr_reflect's counting session), on its own loop thread."""

    def __init__(self, ns: str) -> None:
        super().__init__(ns)
        self.peer = self.run(rr_reflect.connect(INJECTOR, INJECTOR, time.monotonic() + 60), 90)

    def updates(self, announce: list[MacIpRoute], withdraw: list[MacIpRoute]) -> bytes:
        return b"".join(wire.encode_update(self.peer.negotiated, announce, [r.key for r in withdraw]))

    def send(self, data: bytes) -> None:
        self.loop.call_soon_threadsafe(self.peer.send, data)

    def close(self) -> None:
        if self.peer.transport is not None:
            self.loop.call_soon_threadsafe(self.peer.transport.close)
        super().close()


def idle_with(fabric: Fabric, remote: int, timeout: float) -> float:
    """Until hv1's agent holds `remote` remote lookup records of `scale` and is idle; returns when."""
    agent = fabric.agents["hv1"]

    def probe(a: Any) -> bool:
        records = sum(1 for r in a.lookup_records() if r.routing_domain == "scale" and not r.local)
        return records == remote and not a._lock.locked() and not a._dirty.is_set()  # bench-only peek

    end = time.monotonic() + timeout
    # the probe runs on the agent's loop, which a large reconcile keeps busy for long stretches
    while not agent.read(probe, timeout=max(1.0, end - time.monotonic())):
        if time.monotonic() > end:
            raise TimeoutError(f"hv1 did not settle on {remote} remote CAs within {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic()


def elements(d: dict[str, int]) -> int:
    return d.get("elements+", 0) + d.get("elements-", 0)


def sizes(fabric: Fabric) -> dict[str, int]:
    return asyncio.run(set_sizes(fabric.ns("hv1")))


def attach_ports(fabric: Fabric, count: int, count_nft: NftCount) -> dict[str, Any]:
    hv1 = fabric.ns("hv1")
    lines = [f"link add tap-p{i} type veth peer name vm-p{i}" for i in range(count)]
    netns.ip_batch(lines + [f"link set vm-p{i} up" for i in range(count)], hv1)
    per: dict[str, dict[str, list[float]]] = {m: {"put_s": [], "elements": [], "transactions": [], "rules": [],
                                                  "tables": [], "counters": [], "kernel_ops": []}
                                              for m in ("with", "without")}
    started = time.monotonic()
    for i in range(count):
        mode = "with" if i % 2 == 0 else "without"
        p = port_with_security(port(i), mode == "with")
        before = count_nft.snapshot()
        t0 = time.monotonic()
        fabric.agents["hv1"].call(lambda a, p=p: a.put_port(p))
        put = time.monotonic() - t0
        d = delta(before, count_nft.snapshot())
        last = fabric.agents["hv1"].read(lambda a: a.status().last_reconcile) or {}
        row = per[mode]
        row["put_s"].append(put)
        row["elements"].append(elements(d))
        for key in ("transactions", "rules", "tables", "counters"):
            row[key].append(d.get(key, 0))
        row["kernel_ops"].append(sum(v for k, v in (last.get("ops") or {}).items()))
        if (i + 1) % 100 == 0:
            print(json.dumps({"ports": i + 1, "elapsed_s": round(time.monotonic() - started, 1),
                              "put_ms": round(put * 1000)}), flush=True)
    return {"wall_s": time.monotonic() - started, "per": per}


def learn_remote(fabric: Fabric, injector: Injector, routes: list[MacIpRoute], withdraw: bool,
                 count_nft: NftCount, timeout: float) -> dict[str, Any]:
    data = injector.updates([] if withdraw else routes, routes if withdraw else [])
    before, sets_before = count_nft.snapshot(), sizes(fabric)
    t0 = time.monotonic()
    injector.send(data)
    done = idle_with(fabric, 0 if withdraw else len(routes), timeout)
    d = delta(before, count_nft.snapshot())
    return {"seconds": done - t0, "bytes": len(data), "nft": d, "sets_before": sets_before, "sets_after": sizes(fabric)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=1000, help="ports attached (half with, half without)")
    parser.add_argument("--remote-cas", type=int, default=100000)
    parser.add_argument("--pas", type=int, default=100, help="provider addresses the remote CAs are spread over")
    parser.add_argument("--timeout", type=float, default=1800, help="per remote phase, seconds")
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    print(f"port security in this tree: {'yes' if has_port_security() else 'no (Port has no port_security)'}")
    count_nft = NftCount().install()
    fabric = fabric_up()
    injector = None
    try:
        # BGP's usual hold time, not the lab's 9 s: under TCG, one process holding the agent, the injector and
        # this loop misses 9 s keepalive deadlines while it programs thousands of objects, and a session reset
        # would be measured as programming time
        fabric.start_reflectors(hold_time=90)
        fabric.start_agent("hv1")
        fabric.agents["hv1"].call(lambda a: a.put_routing_domain(SCALE))
        result: dict[str, Any] = {"sets_start": sizes(fabric)}
        if args.ports:
            ports = attach_ports(fabric, args.ports, count_nft)
            result["ports"] = ports
            result["sets_after_ports"] = sizes(fabric)
            print(f"\n{args.ports} ports x 2 CAs attached one by one on hv1 (alternating), "
                  f"{ports['wall_s']:.1f} s in all")
            print("| port_security | ports | attach total (s) | put_port p50 / p99 (ms) | nft elements per attach "
                  "(mean / max) | named counters per attach | nft transactions per attach | rules written | "
                  "whole-table writes | kernel objects per attach (mean) |")
            print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for mode, row in ports["per"].items():
                put = row["put_s"]
                print(f"| {mode} | {len(put)} | {sum(put):.1f} | {pct(put, 0.5) * 1000:.0f} / "
                      f"{pct(put, 0.99) * 1000:.0f} | {statistics.mean(row['elements']):.2f} / "
                      f"{max(row['elements']):.0f} | {statistics.mean(row['counters']):.2f} | "
                      f"{statistics.mean(row['transactions']):.2f} | "
                      f"{sum(row['rules']):.0f} | {sum(row['tables']):.0f} | "
                      f"{statistics.mean(row['kernel_ops']):.1f} |", flush=True)
            print(f"set sizes after the ports: {json.dumps(result['sets_after_ports'])}")
        if args.remote_cas:
            routes = remote_routes(args.remote_cas, args.pas)
            injector = Injector(fabric.ns("hv2"))
            learned = learn_remote(fabric, injector, routes, False, count_nft, args.timeout)
            gone = learn_remote(fabric, injector, routes, True, count_nft, args.timeout)
            result.update(learned=learned, withdrawn=gone)
            print(f"\n{args.remote_cas:,} remote CAs (EVPN type-2, VSID {VSID}, {args.pas} PAs) through rr1 "
                  "into hv1's agent")
            print("| phase | seconds | CAs/s | nft elements written | per CA | transactions | rules | "
                  "whole-table writes |")
            print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for phase, r in (("learned", learned), ("withdrawn", gone)):
                n = elements(r["nft"])
                print(f"| {phase} | {r['seconds']:.1f} | {args.remote_cas / r['seconds']:,.0f} | {n:,} | "
                      f"{n / args.remote_cas:.2f} | {r['nft']['transactions']} | {r['nft'].get('rules', 0)} | "
                      f"{r['nft'].get('tables', 0)} |", flush=True)
            print(f"set sizes after learning: {json.dumps(learned['sets_after'])}")
        print("\nraw: " + json.dumps({k: v for k, v in result.items() if k != "ports"}
                                     | {"ports_wall_s": result.get("ports", {}).get("wall_s")}))
        return 0
    finally:
        count_nft.uninstall()
        fabric_down(fabric, injector)


if __name__ == "__main__":
    raise SystemExit(main())
