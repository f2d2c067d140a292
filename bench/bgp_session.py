"""Session-level benchmark: one of our speakers receiving N EVPN type-2 routes from GoBGP.

    sudo .venv/bin/python bench/bgp_session.py --routes 100000

Three namespaces on one bridge: `feed` (one of our speakers, which loads the routes into GoBGP over BGP:
the fastest way found, about as fast as GoBGP can take them, where `gobgp global rib add` runs one process
per route), `rr` (gobgpd, the sink is its route-reflector client) and `sink` (the speaker measured, a
separate process). Once GoBGP holds all N routes the sink starts; it reports the time from its session
reaching Established to the N-th route in its Loc-RIB, the time from process start, and its peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nvfabric.bgp import config as bgp_config  # noqa: E402
from nvfabric.bgp.routes import MacIpRoute  # noqa: E402
from nvfabric.bgp.speaker import PeerStatus, Speaker  # noqa: E402

RR, FEED, SINK = "198.51.100.254", "198.51.100.1", "198.51.100.2"


def routes(count: int) -> list[MacIpRoute]:
    # Spread over 100 VSIDs / RDs like a fabric of hosts would be.
    out = []
    for i in range(count):
        vsid = 5000 + i % 100
        out.append(MacIpRoute(
            rd=f"{FEED}:{vsid}", mac="02:00:" + i.to_bytes(4, "big").hex(":"),
            ip=f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", vsid=vsid, next_hop=FEED,
            route_targets=(f"65000:{vsid}",), router_mac="02:00:5e:10:00:01",
        ))
    return out


def speaker_config(router_id: str) -> bgp_config.SpeakerConfig:
    return bgp_config.parse({"asn": 65000, "router_id": router_id, "hold_time": 90,
                             "neighbours": [{"address": RR, "asn": 65000}]})


async def feed(count: int) -> None:
    speaker = Speaker(speaker_config(FEED))
    await speaker.announce(routes(count))
    await speaker.start()
    print("feeding", flush=True)
    await asyncio.Event().wait()  # until killed


async def sink(count: int) -> None:
    started = time.monotonic()
    speaker = Speaker(speaker_config(SINK))
    marks: dict[str, float] = {}
    done = asyncio.Event()

    def on_notices(notices) -> None:
        for notice in notices:
            if isinstance(notice, PeerStatus) and notice.state == "established":
                marks["established"] = time.monotonic()
        if len(speaker.rib.loc) >= count and not done.is_set():
            marks["all"] = time.monotonic()
            done.set()

    speaker.subscribe(on_notices)
    await speaker.start()
    await done.wait()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_kib = usage.ru_maxrss
    print(json.dumps({
        "routes": len(speaker.rib.loc),
        "seconds_from_established": round(marks["all"] - marks["established"], 2),
        "seconds_from_start": round(marks["all"] - started, 2),
        "routes_per_second": round(count / (marks["all"] - marks["established"])),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "updates_in": speaker.counters.updates_in,
        # CPU time of the whole process: close to the wall time means our speaker, not GoBGP, is the limit.
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
    }), flush=True)
    await speaker.stop()


def orchestrate(count: int) -> int:
    from nvfabric.lab.peers import GoBgp, Lab, segment, wait_for
    from nvfabric.lab.peers import gobgp_rr_toml

    with tempfile.TemporaryDirectory(prefix="nvfabric-bench-") as tmp:
        lab = Lab(tmp=Path(tmp), prefix=f"nvbench{os.getpid() % 10000}-")
        try:
            rr, feed_ns, sink_ns = lab.namespace("rr"), lab.namespace("feed"), lab.namespace("sink")
            segment(lab, rr, {rr: [f"{RR}/24"], feed_ns: [f"{FEED}/24"], sink_ns: [f"{SINK}/24"]})
            # The sink is a reflector client of the feeder's routes; hold timers are long for the bulk load.
            toml = gobgp_rr_toml([FEED, SINK]).replace("hold-time = 9", "hold-time = 90").replace(
                "keepalive-interval = 3", "keepalive-interval = 30")
            gobgp = GoBgp(lab, rr, "gobgp", toml)
            me = [sys.executable, str(Path(__file__).resolve())]
            t0 = time.monotonic()
            feeder = subprocess.Popen(["ip", "netns", "exec", feed_ns, *me, "--role", "feed", "--routes", str(count)],
                                      stdout=subprocess.DEVNULL)
            lab.processes.append(_Popen(feeder))

            def loaded() -> bool:
                summary = gobgp.json("global", "rib", "summary", "-a", "evpn")
                return int(summary.get("num_destination", 0)) >= count

            # GoBGP 3.10 checks MAC mobility against its whole EVPN table for every received type-2 route
            # (table_manager.go handleMacMobility), so loading N routes over BGP takes time in N^2:
            # about 25 minutes for 100,000 on the reference machine. Only the sink phase is measured.
            wait_for(loaded, 7200, interval=2.0, what=f"GoBGP holding {count} routes")
            print(f"GoBGP loaded {count} routes from our feeder in {time.monotonic() - t0:.1f} s", flush=True)
            result = subprocess.run(["ip", "netns", "exec", sink_ns, *me, "--role", "sink", "--routes", str(count)],
                                    stdout=subprocess.PIPE, text=True, timeout=1200, check=True)
            print(result.stdout.strip())
        finally:
            lab.close()
    return 0


class _Popen:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--role", choices=("orchestrate", "feed", "sink"), default="orchestrate")
    args = parser.parse_args()
    if args.role == "feed":
        asyncio.run(feed(args.routes))
        return 0
    if args.role == "sink":
        asyncio.run(sink(args.routes))
        return 0
    return orchestrate(args.routes)


if __name__ == "__main__":
    sys.exit(main())
