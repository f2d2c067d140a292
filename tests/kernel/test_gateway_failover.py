"""Two gateways and their failover (VM phase): the default topology with gw1 (configured active) and gw2
(standby) as `nvfabric gateway` processes, the reflectors, host agents on hv1-hv3 and tenants of
lab/fabric.py, FRR with bfdd on `internet` as the upstream router; BFD 300 ms x 3 on every gateway session
and conntrackd between the gateways over their sync link (lab/failover.py).

The serving gateway is cut during a 20 Hz ping from b2 and two TCP connections exchanging a line every
100 ms (b2 -> the internet server through blue's SNAT; the internet -> b1's floating IP): first gw1's
links (no NOTIFICATION, no FIN: only BFD notices), then, with gw2 serving, gw2's process and its
conntrackd by SIGKILL. Checked each time: the other gateway took over, the hosts and the upstream moved to
it, the outage stayed under a generous bound (the target is under 2 s; TCG is noisy), both connections
kept working on the same sockets (their conntrack entries were replicated), new flows and the floating IP
work through the new gateway; the restored gateway does not take the role back.
`bench/gateway_failover.py` measures the same cuts (and SIGSTOP) against BGP's default timers.

Then blue's site (lab/site_failover.py: a namespace with its own charon on the internet side, accepting either
gateway, and its router, FRR, announcing a network over eBGP across the tunnel): only the serving gateway holds
its SA and its BGP session; its links are cut during 20 Hz pings from b2 to the site's host and to the host of the
network learned over BGP, and the other gateway initiates the site's SA, learns the network on its own session
(the site's router takes it as the same neighbour restarting) and carries the site's traffic (unNATed); the site's
router learns blue's subnet from it; its trace and metrics show the real tunnel, and the restored gateway holds
neither SA nor session. In the same cut, blue's GRE site (a plain `ip link add type gre` whose remote is the
gateways' shared sites address, routed by the upstream to the serving gateway): reached unNATed through the
serving gateway's tunnel before, through the other's after, and never through the restored one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvfabric.lab import netns
from nvfabric.lab.failover import FLOATING, GW, OTHER, SERVER, SITES_ADDRESS, SNAT_BLUE, Failover, Options, \
    TwoGateways, cut_during_traffic, restore, two_gateways
from nvfabric.lab.fabric import wait_for
from nvfabric.lab.probe import connect_retrying
from nvfabric.lab.site_failover import BGP_HOST, GRE_ADDRESS, GRE_HOST, GRE_KEY, SITE_ADDRESS, SITE_HOST, \
    gre_packets, request, site, site_bgp, site_failover, site_sa

pytestmark = pytest.mark.kernel

OUTAGE = 10.0  # s: the bound asserted (the target, 2 s, is the benchmark's: the emulated CPU is noisy)
TIMEOUT = 60.0  # s after the cut for the hosts and the upstream to follow
SITE_OUTAGE = 20.0  # s: the bound asserted for a site (an IKE exchange more than the hosts' switch; TCG is slow)


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoGateways]:
    with two_gateways(Path(tmp_path_factory.mktemp("failover")), Options(bfd=True, sync=True)) as two:
        yield two


def check(two: TwoGateways, f: Failover, cut: str, now_serving: str) -> None:
    print(f"[gateway-failover] {cut} of {f.gateway}: {now_serving} took over {f.takeover} s after the cut, hosts "
          f"switched {f.hosts:.1f} s, upstream {f.upstream:.1f} s; longest ping silence {f.gap:.2f} s, {f.lost} "
          f"pings lost; TCP via SNAT {f.outbound}, via the floating IP {f.inbound}; replicated {f.replicated}",
          flush=True)
    assert f.replicated, "the two flows never appeared in the standby's conntrack"
    assert f.takeover is not None and f.takeover < OUTAGE
    assert f.gap < OUTAGE and f.hosts < OUTAGE and f.upstream < OUTAGE
    assert f.outbound.survived, f.outbound
    assert f.inbound.survived, f.inbound
    assert two.serving() == now_serving
    # new flows leave by the new gateway with the tenant's SNAT address; the floating IP is reached through it
    s, line = connect_retrying(two.fab.vm_ns["b2"], SERVER)
    s.close()
    assert line.startswith(f"{SNAT_BLUE}:")
    s, line = connect_retrying(two.fab.ns("internet"), FLOATING)
    s.close()
    assert line.startswith("b1 203.0.113.1:")


def stays_with(two: TwoGateways, name: str, seconds: float) -> None:
    """The role stays with `name` (every host and the upstream route to it) for `seconds`: the restored
    gateway has judged by then (End-of-RIB from the reflectors comes within a second of its sessions)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert two.routed_to(name), f"the role left {name}"
        time.sleep(0.5)  # a negative needs a window: checked every half second of it


def test_link_cut_of_gw1_then_sigkill_of_gw2_keep_connections(two: TwoGateways) -> None:
    assert two.serving() == "gw1"
    f = cut_during_traffic(two, "link", TIMEOUT)
    check(two, f, "link cut", "gw2")
    restore(two, "gw1", "link")
    stays_with(two, "gw2", 5)
    assert not (two.gws["gw1"].status() or {}).get("role", {}).get("serving", False)

    f = cut_during_traffic(two, "kill", TIMEOUT)
    check(two, f, "SIGKILL", "gw1")
    restore(two, "gw2", "kill")
    stays_with(two, "gw1", 5)


def value(text: str, series: str) -> float | None:
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def reaches_gre_site_through(two: TwoGateways, serving: str) -> None:
    """b2 reaches the GRE site's host unNATed, its packets through `serving`'s tunnel and not the other's; the
    upstream routes the sites address to `serving`."""
    def routed() -> bool:
        route = netns.run(["ip", "-n", two.fab.ns("internet"), "route", "get", SITES_ADDRESS]).output
        return f"via {GW[serving][1]} " in route

    wait_for(routed, 30, f"the upstream's route to the sites address via {serving}")
    before = {name: gre_packets(two, name) for name in GW}
    s, line = connect_retrying(two.fab.vm_ns["b2"], GRE_HOST)
    s.close()
    assert line.startswith("gre 10.0.0.12:"), line  # never NATed
    after = {name: gre_packets(two, name) for name in GW}
    rx, tx = (a - b for a, b in zip(after[serving], before[serving], strict=True))
    assert rx > 0 and tx > 0, (before, after)
    assert after[OTHER[serving]][0] == before[OTHER[serving]][0], "the site's packets reached the other gateway"


def no_arp_answer_for_the_sites_address(two: TwoGateways) -> None:
    """Both gateways hold the sites address, but neither answers ARP for it on the external link (it is on a dummy
    device, arp_ignore=1 on the link): the upstream asking on the link itself (`ping -r`: no route, straight to
    the link) gets no answer, so only its BGP route can send the sites' packets, to the serving gateway."""
    internet = two.fab.ns("internet")
    netns.run(["ip", "-n", internet, "neigh", "flush", "to", SITES_ADDRESS], check=False)
    netns.run(netns.in_netns(internet, ["ping", "-r", "-I", "br0", "-c", "1", "-W", "4", SITES_ADDRESS]), check=False)
    neigh = netns.run(["ip", "-n", internet, "neigh", "show", "to", SITES_ADDRESS]).output
    assert "lladdr" not in neigh, neigh


def test_a_site_follows_the_failover(two: TwoGateways, tmp_path: Path) -> None:
    b2 = two.fab.vm_ns["b2"]
    with site(two, tmp_path) as office:
        first = two.serving()
        other = OTHER[first]
        assert site_sa(two, other) is None, "the standby holds no SA"
        assert site_bgp(two, other) == {}, "the standby runs no session with the site"
        for host, banner in ((SITE_HOST, "site"), (BGP_HOST, "site-bgp")):
            s, line = connect_retrying(b2, host)
            s.close()
            assert line.startswith(f"{banner} 10.0.0.12:"), line  # never NATed
        reaches_gre_site_through(two, first)
        no_arp_answer_for_the_sites_address(two)
        f = site_failover(two, "link", TIMEOUT)
        print(f"[gateway-failover] site: {f.describe()}", flush=True)
        assert f.sa < SITE_OUTAGE and f.gap < SITE_OUTAGE and f.bgp_gap < SITE_OUTAGE and f.gre_gap < SITE_OUTAGE
        assert two.serving() == other
        for host, banner in ((SITE_HOST, "site"), (BGP_HOST, "site-bgp")):
            s, line = connect_retrying(b2, host)
            s.close()
            assert line.startswith(f"{banner} 10.0.0.12:"), line
        reaches_gre_site_through(two, other)
        # the site's router has blue's subnet from the new serving gateway (its router id), no longer stale
        seen: list[dict] = []

        def from_other() -> bool:
            seen.append(office.learned_from_gateway())
            return (seen[-1]["state"], seen[-1]["router_id"], seen[-1]["prefixes"].get("10.0.0.0/24")) == \
                ("Established", GW[other][0], False)

        try:
            wait_for(from_other, 30, f"the site's router learns blue's subnet from {other}")
        except TimeoutError:
            print(f"[gateway-failover] the site's router: {seen[-1]}", flush=True)
            raise
        # the new serving gateway's trace follows b2's packet into its tunnel, by the SPI the kernel has; its
        # metrics count the site's traffic
        sa = site_sa(two, other)
        assert sa is not None and sa["local"] == GW[other][1] and sa["remote"] == SITE_ADDRESS
        traced = two.gws[other].api(f"/v1/trace?tenant=blue&proto=tcp&src=10.0.0.12&dst={SITE_HOST[0]}&dport=9000")
        hop = traced["site"]
        assert (traced["action"], hop["up"]) == ("route", True), traced
        assert hop["outer"] == {"src": GW[other][1], "dst": SITE_ADDRESS}
        assert hop["spi_out"] in [c["spi_out"] for c in sa["children"]], (hop, sa)
        assert f"spi 0x{hop['spi_out']}" in netns.run(["ip", "-n", two.gws[other].ns, "xfrm", "state"]).output
        # the network the site announced over BGP is traced into the same SA; the GRE site's into its tunnel from
        # the sites address
        traced = two.gws[other].api(f"/v1/trace?tenant=blue&proto=tcp&src=10.0.0.12&dst={BGP_HOST[0]}&dport=9000")
        assert (traced["action"], traced["site"]["site"], traced["site"]["up"]) == ("route", "office", True), traced
        traced = two.gws[other].api(f"/v1/trace?tenant=blue&proto=tcp&src=10.0.0.12&dst={GRE_HOST[0]}&dport=9000")
        hop = traced["site"]
        assert (traced["action"], hop["kind"], hop["key"], hop["up"]) == ("route", "gre", GRE_KEY, True), traced
        assert hop["outer"] == {"src": SITES_ADDRESS, "dst": GRE_ADDRESS}, hop
        _, text = request(two, other, "GET", "/metrics")
        labels = '{site="office",tenant="blue"}'
        assert value(text.decode(), f"nvfabric_gateway_site_tunnel_up{labels}") == 1
        assert (value(text.decode(), f"nvfabric_gateway_site_sent_packets_total{labels}") or 0) > 0
        # the cut gateway back: a standby, without an SA; the site still reached through the serving one
        restore(two, first, "link")
        wait_for(lambda: site_sa(two, first) is None and site_bgp(two, first) == {}, 30,
                 f"{first} without a site SA or session")
        s, line = connect_retrying(b2, SITE_HOST)
        s.close()
        assert line.startswith("site 10.0.0.12:"), line
        reaches_gre_site_through(two, other)  # the restored gateway holds the sites address but gets no packet
