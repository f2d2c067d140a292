"""A tenant's site across gateway failovers: lab/failover.py's two gateways (BFD 300 ms x 3, conntrackd) and
lab/site_failover.py's site (its own charon on the internet side, accepting either gateway; only the serving
gateway holds the SA). The serving gateway is cut (`--cuts`, each `--runs` times, alternating gateways as the
role moves) while b2 pings every 50 ms the site's host (a static prefix of the site), the host of a network the
site's router (FRR) announces over eBGP across the tunnel, and the host behind blue's GRE site (a plain GRE tunnel
to the gateways' shared sites address, which moves by the upstream's route); reported per cut: each ping's
longest silence (the site's outage as the tenant sees it), pings lost, when every host's default route pointed at
the other gateway, when the other gateway's API showed its SA with the site and when it showed its BGP session with
the site's network accepted (polls: about 1 s of resolution under TCG). The cut gateway is restored and waited for
as a healthy standby before the next cut.

    flock /tmp/nvfabric-vm.lock .venv/bin/nvfabric lab kernel -- \
        .venv/bin/python bench/gateway_site_failover.py --runs 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvfabric.lab.failover import OTHER, REACTION, Options, restore, two_gateways  # noqa: E402
from nvfabric.lab.site_failover import put_blue, session_log, site, site_failover  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2, help="cuts of each kind (default 2)")
    p.add_argument("--cuts", default="link,kill", help="which kinds, comma-separated (default link,kill)")
    p.add_argument("--log", action="store_true", help="after each cut, the new serving gateway's log lines on its way "
                   "to the site's session, in seconds after the cut")
    args = p.parse_args()
    kinds = tuple(args.cuts.split(","))
    timeout = 10.0 + REACTION + 60
    gaps: dict[str, list[float]] = {k: [] for k in kinds}
    bgp_gaps: dict[str, list[float]] = {k: [] for k in kinds}
    gre_gaps: dict[str, list[float]] = {k: [] for k in kinds}
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="nvfabric-site-failover-") as tmp, \
            two_gateways(Path(tmp), Options(bfd=True, sync=True)) as two, site(two, Path(tmp)):
        print(f"<!-- scene and site up in {time.time() - start:.0f} s -->", flush=True)
        print("| cut | gateway cut | longest ping silence to the site (s) | pings lost | hosts switched (s) | "
              "other's site SA up (s) | longest silence to the BGP-learned network (s) | pings lost | other's session "
              "with the network (s) | longest silence to the GRE site (s) | pings lost |\n"
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
        for _ in range(args.runs):
            for kind in kinds:
                f = site_failover(two, kind, timeout)
                gaps[kind].append(f.gap)
                bgp_gaps[kind].append(f.bgp_gap)
                gre_gaps[kind].append(f.gre_gap)
                print(f"| {f.cut} | {f.gateway} | {f.gap:.2f} | {f.lost} | {f.hosts:.1f} | {f.sa:.1f} | "
                      f"{f.bgp_gap:.2f} | {f.bgp_lost} | {f.bgp:.1f} | {f.gre_gap:.2f} | {f.gre_lost} |", flush=True)
                if args.log:
                    for after, message in session_log(two, OTHER[f.gateway], f.at):
                        print(f"<!-- {OTHER[f.gateway]} +{after:.2f} s: {message} -->", flush=True)
                restore(two, f.gateway, kind, timeout=timeout + 180)
                # a restarted gateway has blue as its configuration file says (the file wins over what the API
                # put): blue's site again, as an operator would put it back
                put_blue(two, with_site=True)
    for what, table in (("static prefix", gaps), ("BGP-learned network", bgp_gaps), ("GRE site", gre_gaps)):
        for kind, values in table.items():
            print(f"{kind}, {what}: median longest silence {statistics.median(values):.2f} s of "
                  f"{', '.join(f'{v:.2f}' for v in values)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
