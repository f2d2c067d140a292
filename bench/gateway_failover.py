"""Gateway failover time: gw1 (active) loses both links during a 5 Hz ping from a blue VM through
it; gw2 (standby) takes over. The same scene and measurement as tests/kernel/test_gateway_failover.py, with
BGP's DEFAULT timers unless told otherwise: the gateways propose hold 90 s, the reflectors (`nvfabric rr`)
hold 90 s, FRR (the upstream) its default keepalive 60 s / hold 180 s, so every session runs with 90 s.

Reported: when the standby took over, when every host's default route and the upstream's route for a
floating IP pointed at gw2 (seconds after the cut; each probe is an `ip`/vtysh call, so about 1 s of
resolution in the VM), the ping's longest silence and the pings lost.

    .venv/bin/nvfabric lab kernel -- .venv/bin/python bench/gateway_failover.py                 # defaults
    .venv/bin/nvfabric lab kernel -- .venv/bin/python bench/gateway_failover.py --hold 9        # shortened
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvfabric.lab.probe import Server  # noqa: E402
from nvfabric.lab.failover import REACTION, SERVER, kill_gw1_during_a_ping, two_gateways  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--hold", type=int, default=None, help="the gateways' hold_time (default: their default, 90)")
    p.add_argument("--rr-hold", type=int, default=90, help="the reflectors' hold_time (default 90)")
    p.add_argument("--runs", type=int, default=1, help="repeat (each run builds the scene anew)")
    args = p.parse_args()
    hold = 90 if args.hold is None else args.hold
    negotiated = min(hold, args.rr_hold)
    print(f"gateways' hold_time {hold} s, reflectors' {args.rr_hold} s, FRR default (180 s): sessions with the "
          f"reflectors run with {negotiated} s, with the upstream {min(hold, 180)} s", flush=True)
    print("| run | standby took over (s) | hosts switched (s) | upstream switched (s) | outbound outage (s) | "
          "pings lost |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="nvfabric-failover-") as tmp, \
                two_gateways(Path(tmp), args.hold, args.rr_hold) as two:
            server = Server(two.fab.ns("internet"), SERVER)
            try:
                f = kill_gw1_during_a_ping(two, timeout=max(negotiated, min(hold, 180)) + REACTION + 60)
            finally:
                server.close()
        print(f"| {run} | {f.takeover:.1f} | {f.hosts:.1f} | {f.upstream:.1f} | {f.gap:.1f} | {f.lost} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
