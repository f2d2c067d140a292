"""Route reflector benchmark: one injector, N EVPN type-2 routes, K clients, three reflectors side by side.

    sudo .venv/bin/python bench/rr_reflect.py --routes 100000 --clients 10 --runs 3
    sudo .venv/bin/python bench/rr_reflect.py --impl gobgp --routes 10000 --runs 3

Two namespaces on one veth pair: `rr` (the reflector measured: ours `nvfabric rr`, FRR 8.4 bgpd + zebra,
or gobgpd 3.10) and `load` (ONE light asyncio process holding the injector's session and the K client
sessions, each from its own address). The sessions run bgp/fsm.py (OPEN, KEEPALIVE, hold timer) with an
UPDATE "decoder" that only counts the NLRI in MP_REACH/MP_UNREACH by walking their length bytes, so the
clients cost about 0.1 us per route and are not the bottleneck. The injector's UPDATEs are packed by our
encoder (wire.encode_update: routes with equal attributes share an UPDATE of at most 4096 bytes) before
the clock starts; then they are written at once.

Figures per run: time from the injector's first byte to the moment every client has counted N
announced routes; the same for a full withdrawal; the reflector's peak RSS (VmHWM of bgpd / gobgpd / our
process; for FRR zebra's is reported apart) and its CPU seconds. A fresh reflector per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nvfabric.bgp import wire  # noqa: E402
from nvfabric.bgp.routes import MacIpRoute  # noqa: E402
from nvfabric.lab import inject  # noqa: E402

RR = "198.51.100.100"
INJECTOR = "198.51.100.1"
VSIDS = 10


def client_address(i: int) -> str:
    return f"198.51.100.{11 + i}"


def routes(count: int) -> list[MacIpRoute]:
    """Distinct MACs and IPv4 addresses over VSIDS virtual subnets, one RD and RT per VSID, NVGRE."""
    out = []
    for i in range(count):
        vsid = 5001 + i % VSIDS
        out.append(MacIpRoute(
            rd=f"{INJECTOR}:{vsid}", mac="02:00:" + i.to_bytes(4, "big").hex(":"),
            ip=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", vsid=vsid, next_hop=INJECTOR,
            route_targets=(f"65000:{vsid}",), router_mac="02:00:5e:10:00:01",
        ))
    return out


# ------------------------------------------------------------------------------------------ load process


class BenchPeer(inject.Session):
    """The injector's session (lab/inject.py) that counts the NLRI in the UPDATEs it receives."""

    def __init__(self, router_id: str, asn: int, peer: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(router_id, asn, peer, loop)
        self.local = router_id
        self.announced = 0
        self.withdrawn = 0
        self.update_bytes = 0
        self.want_announced = -1
        self.want_withdrawn = -1
        self.reached = asyncio.Event()

    def _decode(self, negotiated: wire.Negotiated, body: bytes, source: Any) -> Any:
        self.update_bytes += len(body) + wire.HEADER_LENGTH
        attr_start = 4 + int.from_bytes(body[0:2], "big")
        end = attr_start + int.from_bytes(body[attr_start - 2 : attr_start], "big")
        pos = attr_start
        while pos < end:
            flags, code = body[pos], body[pos + 1]
            if flags & 0x10:
                length, head = int.from_bytes(body[pos + 2 : pos + 4], "big"), 4
            else:
                length, head = body[pos + 2], 3
            start, stop = pos + head, pos + head + length
            if code == 14:  # MP_REACH_NLRI: AFI, SAFI, next hop, reserved, NLRI
                n, p = 0, start + 5 + body[start + 3]
                while p < stop:
                    p += body[p + 1] + 2
                    n += 1
                self.announced += n
            elif code == 15:  # MP_UNREACH_NLRI: AFI, SAFI, NLRI
                n, p = 0, start + 3
                while p < stop:
                    p += body[p + 1] + 2
                    n += 1
                self.withdrawn += n
            pos = stop
        if (self.want_announced >= 0 and self.announced >= self.want_announced) or (
                self.want_withdrawn >= 0 and self.withdrawn >= self.want_withdrawn):
            self.reached.set()
        return super()._decode(negotiated, body, source)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        print(json.dumps({"lost": self.local, "error": str(exc)}), file=sys.stderr, flush=True)


async def connect(local: str, router_id: str, deadline: float) -> BenchPeer:
    """A counting session to the reflector from `local` (also its router ID: `router_id` must equal it)."""
    assert local == router_id, (local, router_id)
    return await inject.connect(RR, local, timeout=max(1.0, deadline - time.monotonic()), session_type=BenchPeer)


async def wait_all(peers: list[BenchPeer], attribute: str, count: int,
                   timeout: float) -> tuple[float | None, list[int]]:
    start = time.monotonic()
    for p in peers:
        setattr(p, "want_" + attribute, count)
        if getattr(p, attribute) >= count:
            p.reached.set()
    try:
        await asyncio.wait_for(asyncio.gather(*(p.reached.wait() for p in peers)), timeout)
        elapsed: float | None = time.monotonic() - start
    except TimeoutError:
        elapsed = None
    for p in peers:
        setattr(p, "want_" + attribute, -1)
        p.reached.clear()
    return elapsed, [getattr(p, attribute) for p in peers]


async def load(count: int, clients: int, timeout: float, filtered: bool) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    sinks = await asyncio.gather(*(connect(client_address(i), client_address(i), deadline) for i in range(clients)))
    injector = await connect(INJECTOR, INJECTOR, deadline)
    assert injector.negotiated is not None
    table = routes(count)
    announce = b"".join(wire.encode_update(injector.negotiated, table, []))
    withdraw = b"".join(wire.encode_update(injector.negotiated, [], [r.key for r in table]))
    await asyncio.sleep(0)
    # With the route-target filter each client hosts one VSID of VSIDS: it should get count / VSIDS routes.
    expected = count // VSIDS if filtered else count
    t0 = time.monotonic()
    injector.send(announce)
    announce_s, got = await wait_all(sinks, "announced", expected, timeout)
    announce_s = None if announce_s is None else time.monotonic() - t0
    result: dict[str, Any] = {"announce_s": announce_s, "announced_at_clients": got,
                              "announce_bytes": len(announce),
                              "bytes_per_client": round(statistics.mean(p.update_bytes for p in sinks))}
    if announce_s is None:
        return result
    t1 = time.monotonic()
    injector.send(withdraw)
    withdraw_s, got = await wait_all(sinks, "withdrawn", expected, timeout)
    result.update(withdraw_s=None if withdraw_s is None else time.monotonic() - t1, withdrawn_at_clients=got)
    return result


# ------------------------------------------------------------------------------------------ reflectors


def ours_config(clients: int, filtered: bool) -> dict[str, Any]:
    # Filtered: each client is a configured neighbor hosting one VSID (route target) of VSIDS.
    hosts = [{"address": client_address(i), "asn": 65000, "passive": True,
              "route_targets": [f"65000:{5001 + i % VSIDS}"]} for i in range(clients)] if filtered else []
    return {"asn": 65000, "router_id": RR, "cluster_id": RR, "hold_time": 180,
            "listen": {"address": RR, "port": 179},
            "neighbors": [*hosts, {"prefix": "198.51.100.0/24", "asn": 65000, "client": True}]}


def frr_config(clients: int, coalesce_ms: int | None = None) -> str:
    lines = ["hostname rr", "router bgp 65000", f" bgp router-id {RR}", f" bgp cluster-id {RR}",
             " no bgp default ipv4-unicast", " no bgp ebgp-requires-policy"]
    if coalesce_ms is not None:
        # Update-group coalescing (FRR's default waits before the first UPDATEs of a new subgroup).
        lines.append(f" coalesce-time {coalesce_ms}")
    peers = [INJECTOR] + [client_address(i) for i in range(clients)]
    for address in peers:
        lines += [f" neighbor {address} remote-as 65000", f" neighbor {address} timers 60 180",
                  f" neighbor {address} passive"]
    lines.append(" address-family l2vpn evpn")
    for address in peers:
        lines += [f"  neighbor {address} activate", f"  neighbor {address} route-reflector-client"]
    return "\n".join(lines + [" exit-address-family", ""])


def gobgp_config(clients: int) -> str:
    from nvfabric.lab.peers import gobgp_rr_toml

    toml = gobgp_rr_toml([INJECTOR] + [client_address(i) for i in range(clients)], rr=RR)
    return toml.replace("hold-time = 9", "hold-time = 180").replace("keepalive-interval = 3", "keepalive-interval = 60")


def proc_status(pid: int) -> dict[str, Any]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"peak_rss_mib": round(int(fields["VmHWM"].split()[0]) / 1024, 1),
            "cpu_s": round((int(stat[11]) + int(stat[12])) / ticks, 2)}


def one_run(impl: str, count: int, clients: int, timeout: float, filtered: bool = False,
            frr_coalesce_ms: int | None = None) -> dict[str, Any]:
    from nvfabric.lab.peers import Frr, GoBgp, Lab, Process, segment

    with tempfile.TemporaryDirectory(prefix="nvfabric-rrbench-") as tmp:
        lab = Lab(tmp=Path(tmp), prefix=f"nvrr{os.getpid() % 10000}-")
        try:
            rr_ns, load_ns = lab.namespace("rr"), lab.namespace("load")
            addresses = [f"{INJECTOR}/24"] + [f"{client_address(i)}/24" for i in range(clients)]
            segment(lab, rr_ns, {rr_ns: [f"{RR}/24"], load_ns: addresses})
            extra: dict[str, Any] = {}
            if impl == "ours":
                conf = Path(tmp) / "rr.yaml"
                conf.write_text(yaml.safe_dump(ours_config(clients, filtered)))
                proc = Process(rr_ns, [sys.executable, "-m", "nvfabric.cli", "rr", "--config", str(conf),
                                       "--log-level", "WARNING"], Path(tmp) / "rr.log",
                               env={**os.environ, "PYTHONPATH": str(REPO)})
                lab.processes.append(proc)
                pid = proc.proc.pid
            elif impl == "frr":
                frr = Frr(lab, rr_ns, "rr", frr_config(clients, frr_coalesce_ms))
                pid = frr.bgpd.proc.pid
                extra["zebra_pid"] = frr.zebra.proc.pid
            else:
                gobgp = GoBgp(lab, rr_ns, "gobgp", gobgp_config(clients))
                pid = next(p for p in lab.processes if getattr(p, "argv", [""])[0] == "gobgpd").proc.pid
                del gobgp
            out = subprocess.run(
                ["ip", "netns", "exec", load_ns, sys.executable, str(Path(__file__).resolve()), "--role", "load",
                 "--routes", str(count), "--clients", str(clients), "--timeout", str(timeout),
                 *(["--rt-filter"] if filtered else [])],
                capture_output=True, text=True, timeout=timeout * 2 + 120, cwd=REPO)
            if out.returncode != 0:
                raise RuntimeError(f"load process failed: {out.stderr[-2000:]}\n{lab.logs()[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result.update(proc_status(pid))
            if "zebra_pid" in extra:
                result["zebra_peak_rss_mib"] = proc_status(extra["zebra_pid"])["peak_rss_mib"]
            return result
        finally:
            lab.close()


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if len(present) == len(values) and present else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["orchestrate", "load"], default="orchestrate")
    parser.add_argument("--impl", default="ours,frr,gobgp", help="comma-separated: ours, frr, gobgp")
    parser.add_argument("--routes", type=int, default=100000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="per phase, seconds")
    parser.add_argument("--rt-filter", action="store_true",
                        help="ours only: each client hosts one VSID and gets only its routes (route-target filter)")
    parser.add_argument("--frr-coalesce-ms", type=int, default=None,
                        help="FRR's update-group coalesce-time (default: FRR's own default)")
    args = parser.parse_args()
    if args.role == "load":
        print(json.dumps(asyncio.run(load(args.routes, args.clients, args.timeout, args.rt_filter))), flush=True)
        return 0
    summary = {}
    for impl in args.impl.split(","):
        runs = []
        for i in range(args.runs):
            result = one_run(impl, args.routes, args.clients, args.timeout, args.rt_filter and impl == "ours",
                             args.frr_coalesce_ms)
            print(json.dumps({"impl": impl, "run": i + 1, "routes": args.routes, "clients": args.clients, **result}),
                  flush=True)
            runs.append(result)
            if result.get("announce_s") is None:
                break  # did not finish within the timeout: one such run says it
        summary[impl] = {
            "announce_s": median([r.get("announce_s") for r in runs]),
            "withdraw_s": median([r.get("withdraw_s") for r in runs]),
            "peak_rss_mib": median([r["peak_rss_mib"] for r in runs]),
            "cpu_s": median([r["cpu_s"] for r in runs]),
            "bytes_per_client": median([r.get("bytes_per_client") for r in runs]),
            "runs": len(runs),
        }
    print(json.dumps({"summary": summary, "routes": args.routes, "clients": args.clients}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
