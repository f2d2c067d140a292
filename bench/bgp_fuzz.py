"""BGP fuzzing, the long run: `nvfabric rr` and `nvfabric bgp speak` (the speaker agent and gateway are built
on) as real processes on loopback, each fuzzed over real sessions by lab/fuzz (the host-phase test runs
the same campaign briefly, in-process; tests/kernel/test_bgp_fuzz.py fuzzes an agent and the gateway with
their kernel).

    .venv/bin/python bench/bgp_fuzz.py --seed 7 --messages 20000
    .venv/bin/python bench/bgp_fuzz.py --seed 7 --messages 5000 --target rr-2octet --json

Per target: messages sent (by kind), sessions opened, resets by NOTIFICATION code, fuzzed OPENs the
target accepted, findings (an exception escaping, a connection dropped without NOTIFICATION, a code RFC
4271 does not allow, a wedge, the well-behaved session reset or fed a malformed UPDATE, a well-formed
route not going through at the end), tracebacks in the daemon's log, and its resident memory before
and after. A finding prints the seed and the message index: the same seed replays the same messages.
Exit status 1 if there was any finding.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nvfabric.bgp.routes import MacIpRoute  # noqa: E402
from nvfabric.lab.fuzz.targets import DYNAMIC_PREFIX, fuzz_listener, route  # noqa: E402

TARGETS = ("rr", "rr-2octet", "speaker")
NVFABRIC = [str(Path(sys.executable).with_name("nvfabric"))]  # the console script of the same environment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Daemon:
    """One target process: its configuration in a temporary file, stdout and stderr captured to files."""

    def __init__(self, name: str, argv: list[str], config: dict[str, Any], tmp: Path) -> None:
        self.name = name
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.stdout_path, self.stderr_path = tmp / f"{name}.out", tmp / f"{name}.err"
        self.proc = subprocess.Popen([*argv, "--config", str(path), "--log-level", "WARNING"],
                                     stdout=self.stdout_path.open("w"), stderr=self.stderr_path.open("w"), cwd=REPO)

    async def listening(self, port: int) -> None:
        for _ in range(300):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.stderr_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} does not listen on {port}")

    def tracebacks(self) -> list[str]:
        text = self.stderr_path.read_text()
        return [line for line in text.splitlines() if "Traceback" in line or "Exception in callback" in line]

    def stop(self) -> int | None:
        self.proc.terminate()
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


async def run_target(target: str, seed: int, messages: int, seconds: float, tmp: Path) -> dict[str, Any]:
    port = free_port()
    if target.startswith("rr"):
        config = {"asn": 65000, "router_id": "198.51.100.100", "cluster_id": "192.0.2.100", "hold_time": 9,
                  "listen": {"address": "127.0.0.1", "port": port}, "api": {"listen": f"127.0.0.1:{free_port()}"},
                  "neighbors": [{"prefix": DYNAMIC_PREFIX, "asn": 65000, "client": True}]}
        daemon = Daemon("rr", [*NVFABRIC, "rr"], config, tmp)
    else:
        config = {"asn": 65000, "router_id": "198.51.100.11", "hold_time": 9,
                  "families": ["l2vpn-evpn", "ipv4-unicast", "ipv6-unicast"],
                  "listen": {"address": "127.0.0.1", "port": port},
                  "dynamic_neighbors": [{"prefix": DYNAMIC_PREFIX, "asn": 65000}],
                  "routes": [_route_yaml(route(11, "198.51.100.11"))]}
        daemon = Daemon("speaker", [*NVFABRIC, "bgp", "speak"], config, tmp)

    async def learned(good: MacIpRoute) -> bool:
        # `nvfabric bgp speak` prints every learned route as a JSON line.
        return str(good.mac) in daemon.stdout_path.read_text()

    try:
        await daemon.listening(port)
        rss_before = rss_kib(daemon.proc.pid)
        report = await fuzz_listener(f"nvfabric {'rr' if target.startswith('rr') else 'bgp speak'} ({target})",
                                     "127.0.0.1", port, seed, messages, seconds, reflects=target.startswith("rr"),
                                     learned=learned, four_octet=target != "rr-2octet",
                                     log=lambda line: print(f"  {target}: {line}", flush=True))
        alive = daemon.proc.poll() is None
        rss_after = rss_kib(daemon.proc.pid) if alive else 0
    finally:
        status = daemon.stop()
    out = report.as_dict()
    out.update(alive_at_end=alive, exit_status=status, tracebacks=daemon.tracebacks(),
               rss_kib_before=rss_before, rss_kib_after=rss_after)
    print(report.summary())
    print(f"  alive at the end: {alive}; tracebacks in its log: {len(out['tracebacks'])}; "
          f"RSS {rss_before} KiB -> {rss_after} KiB")
    return out


def _route_yaml(r: MacIpRoute) -> dict[str, Any]:
    return {"type": "mac-ip", "rd": r.rd, "mac": str(r.mac), "ip": str(r.ip), "vsid": r.vsid,
            "next_hop": str(r.next_hop), "route_targets": list(r.route_targets)}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    parser.add_argument("--messages", type=int, default=10000, help="per target")
    parser.add_argument("--seconds", type=float, default=1800.0, help="per target, at most")
    parser.add_argument("--target", choices=(*TARGETS, "all"), default="all",
                        help="rr-2octet: the reflector fuzzed from a 2-octet AS session")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document at the end")
    args = parser.parse_args()
    print(f"seed {args.seed} (replay with --seed {args.seed})", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="nvfabric-fuzz-") as tmp:
        for i, target in enumerate(TARGETS if args.target == "all" else (args.target,)):
            results.append(await run_target(target, args.seed + i, args.messages, args.seconds, Path(tmp)))
    if args.json:
        print(json.dumps(results, indent=2))
    bad = any(r["findings"] or r["tracebacks"] or not r["alive_at_end"] for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
