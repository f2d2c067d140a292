"""TCP throughput between two VMs on different hosts, with and without port security and decapsulation checks.

Run inside the VM (the host kernel has no VRF/GRE):
    nvfabric lab kernel --vm always -- .venv/bin/python bench/isolation_throughput.py [--runs 5] [--seconds 10]

The default topology with the two tenants of lab/fabric.py; iperf3 (Debian's) from b1 (hv1) to b2 (hv2), both
in blue's VSID 5001: b1 -> hv1 port -> VRF -> NVGRE -> underlay -> hv2 -> VRF -> port -> b2. The two modes
alternate in ONE run (with, without, with, without, ...; `--first without` swaps them), each run `--seconds`
long after one second left out (`-O 1`, slow start). Printed: each run's received throughput, the median of
each mode and the ratio with/without (target >= 0.95).

"with" is the tree as it is. "without" is `enforcement(fabric, False)`, the one function that switches:
- port security: both ports put again through the agent's API with `port_security: false` (where Port has
  no such field, the tree has no port security and nothing is switched: said in the output);
- decapsulation checks: no configuration switch exists, so the baseline is made explicitly: a first rule
  `accept` for GRE and for what arrives on the NVGRE devices in every base chain of the agent's table
  `inet nvfabric` on hv1 and hv2 (bench/isolation_switch.py), removed again before the next "with" run. Its
  counter is read after each "without" run: packets it accepted, and the rules still there, prove the
  baseline path was taken.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from isolation_switch import (  # noqa: E402
    bypass_state, decap_bypass, has_port_security, machine, port_with_security)
from scaffold import fabric_down, fabric_up  # noqa: E402

from nvfabric.lab import netns  # noqa: E402
from nvfabric.lab.fabric import VMS, Fabric, wait_for  # noqa: E402

SENDER, RECEIVER = "b1", "b2"
VM = {vm.name: vm for vm in VMS}


def enforcement(fabric: Fabric, on: bool) -> str:
    """THE switch: port security and decapsulation checks on (the tree as it is) or off (the baseline), on
    the two hosts and ports of the measured path. Returns what it did, for the output."""
    done = []
    for name in (SENDER, RECEIVER):
        vm = VM[name]
        port = port_with_security(vm.port(), on)
        fabric.agents[vm.host].call(lambda a, port=port: a.put_port(port))
    done.append(f"port_security {'on' if on else 'off'} on {SENDER}, {RECEIVER} (agent API)"
                if has_port_security() else "no port security in this tree (Port has no port_security)")
    rules = {VM[n].host: asyncio.run(decap_bypass(fabric.ns(VM[n].host), not on)) for n in (SENDER, RECEIVER)}
    if not on and not all(rules.values()):
        raise RuntimeError(f"the baseline rule could not be inserted (table inet nvfabric missing?): {rules}")
    done.append(f"decapsulation bypass rules: {', '.join(f'{h} {n}' for h, n in rules.items())}")
    return "; ".join(done)


def bypassed(fabric: Fabric) -> tuple[int, int]:
    """(baseline rules, packets they accepted) on the two hosts."""
    states = [asyncio.run(bypass_state(fabric.ns(VM[n].host))) for n in (SENDER, RECEIVER)]
    return sum(r for r, _ in states), sum(p for _, p in states)


def iperf(fabric: Fabric, seconds: int) -> dict[str, float]:
    dst = VM[RECEIVER].cas[0]
    out = subprocess.run(netns.in_netns(fabric.vm_ns[SENDER], [
        "iperf3", "-c", dst, "-t", str(seconds), "-O", "1", "-J", "--connect-timeout", "5000"]),
        capture_output=True, text=True, timeout=seconds + 60, check=False)
    try:
        result = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"iperf3 exited {out.returncode}: {out.stdout[-500:]} {out.stderr[-500:]}") from None
    if "error" in result:
        raise RuntimeError(f"iperf3: {result['error']}")
    end = result["end"]
    return {"mbit_s": end["sum_received"]["bits_per_second"] / 1e6,
            "retransmits": end["sum_sent"].get("retransmits", 0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per mode")
    parser.add_argument("--seconds", type=int, default=10, help="length of each iperf3 run")
    parser.add_argument("--first", choices=["with", "without"], default="with")
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    fabric = fabric_up()
    server = None
    try:
        fabric.up()
        fabric.wait_converged(180)
        log = fabric.dir / "iperf3-server.log"
        server = subprocess.Popen(netns.in_netns(fabric.vm_ns[RECEIVER], [
            "iperf3", "-s", "--forceflush", "--logfile", str(log)]))
        wait_for(lambda: server.poll() is not None or (log.exists() and "listening" in log.read_text()), 30,
                 "the iperf3 server")
        if server.poll() is not None:
            raise RuntimeError(f"iperf3 server exited {server.returncode}: {log.read_text() if log.exists() else ''}")
        if not fabric.ping(SENDER, VM[RECEIVER].cas[0], count=3):
            raise RuntimeError(f"{SENDER} cannot reach {RECEIVER}")
        order = ["with", "without"] if args.first == "with" else ["without", "with"]
        results: dict[str, list[float]] = {"with": [], "without": []}
        for i in range(args.runs):
            for mode in order:
                what = enforcement(fabric, mode == "with")
                rules, before = bypassed(fabric)
                started = time.monotonic()
                r = iperf(fabric, args.seconds)
                rules_after, after = bypassed(fabric)
                through = after - before
                if mode == "without" and (through <= 0 or rules_after != rules):
                    raise RuntimeError(f"the baseline rules ({rules} before the run, {rules_after} after) accepted "
                                       f"{through} packets: the baseline was not measured")
                results[mode].append(r["mbit_s"])
                print(json.dumps({"run": i + 1, "mode": mode, "mbit_s": round(r["mbit_s"], 1),
                                  "retransmits": r["retransmits"], "bypass_packets": through,
                                  "wall_s": round(time.monotonic() - started, 1), "switch": what}), flush=True)
        enforcement(fabric, True)
        med = {m: statistics.median(v) for m, v in results.items()}
        print(f"\nTCP {SENDER} (hv1) -> {RECEIVER} (hv2), iperf3 {args.runs} x {args.seconds} s per mode, "
              f"alternating, {order[0]} first")
        print("| mode | runs (Mbit/s) | median (Mbit/s) |")
        print("| --- | --- | ---: |")
        for mode in order:
            print(f"| {mode} | {', '.join(f'{v:.0f}' for v in results[mode])} | {med[mode]:.0f} |")
        print(f"ratio with / without: {med['with'] / med['without']:.3f} (target >= 0.95)")
        # each "with" against the "without" run next to it: the machine's drift cancels within a pair
        pairs = [w / o for w, o in zip(results["with"], results["without"], strict=True)]
        print(f"per adjacent pair: {', '.join(f'{p:.2f}' for p in pairs)}; median {statistics.median(pairs):.3f}")
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        fabric_down(fabric)


if __name__ == "__main__":
    raise SystemExit(main())
