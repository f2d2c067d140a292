"""BFD on BGP sessions, BGP hold time 90 s: a silent neighbour must take the BGP session and its routes down
in about the detection time (300 ms x 3), far below the hold time.

With FRR (bgpd + bfdd, `neighbor X bfd profile`): our reflector (`nvfabric rr`) in one namespace, FRR in
another, one veth between them; FRR frozen (SIGSTOP of bgpd and bfdd) is seen by us, our packets dropped
(nft, our namespace) are seen by FRR. Between our own: two hosts' speakers and our reflector."""

from __future__ import annotations

import os
import signal
import time
import urllib.request

import pytest

from tests.integration.conftest import need
from tests.unit.test_metrics import assert_conventional
from nvfabric.lab import netns
from nvfabric.lab.peers import Frr, Lab, RouteReflector, Speaker, segment, wait_for
from nvfabric.vnet.kernel.netns import inside

OURS, THEIRS = "10.78.0.1", "10.78.0.2"
PREFIX = "192.0.2.0/24"  # announced by FRR
FRR_BINARIES = ("/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "/usr/lib/frr/bfdd", "vtysh")
HOLD = 90
BOUND = 5.0  # seconds: ~0.9 s of detection plus scheduling; the hold time would be 90
RR, H1, H2 = "10.79.0.1", "10.79.0.2", "10.79.0.3"  # our reflector and two hosts
HOST_ROUTE = {"type": "mac-ip", "rd": f"{H1}:1", "mac": "00:15:5d:01:02:03", "ip": "10.1.0.5", "vsid": 5001,
              "next_hop": H1, "route_targets": ["65000:5001"]}


def frr_bgpd_conf() -> str:
    return "\n".join([
        "hostname frr", "router bgp 65000", f" bgp router-id {THEIRS}", " no bgp network import-check",
        f" neighbor {OURS} remote-as 65000", f" neighbor {OURS} timers {HOLD // 3} {HOLD}",
        f" neighbor {OURS} timers connect 2", f" neighbor {OURS} bfd profile fast",
        " address-family ipv4 unicast", f"  network {PREFIX}", " exit-address-family", ""])


FRR_BFDD_CONF = "\n".join(["bfd", " profile fast", "  transmit-interval 300", "  receive-interval 300",
                           "  detect-multiplier 3", " !", "!", ""])


def setup(lab: Lab, dynamic: bool = False) -> tuple[Frr, RouteReflector, str]:
    """Both sides Established with BFD Up, FRR's route at our reflector; returns our namespace too. FRR is
    a configured neighbour of ours, or (`dynamic`) inside a dynamic-neighbour prefix: then FRR dials, and our
    BFD session is passive and made when the BGP session is Established."""
    need(*FRR_BINARIES)
    ours, theirs = lab.namespace("o"), lab.namespace("f")
    lab.link(ours, [f"{OURS}/24"], theirs, [f"{THEIRS}/24"])
    frr = Frr(lab, theirs, "bgpbfd", frr_bgpd_conf(), FRR_BFDD_CONF)
    neighbor = {"prefix": "10.78.0.0/24"} if dynamic else {"address": THEIRS}
    rr = RouteReflector(lab, ours, "rr", {
        "asn": 65000, "router_id": OURS, "hold_time": HOLD, "listen": {"address": OURS},
        "neighbors": [{**neighbor, "asn": 65000, "bfd": True}]})
    wait_for(lambda: frr.neighbor_state(OURS) == "Established" and rr.established(THEIRS), 30,
             what="BGP established both ways")
    wait_for(lambda: settled(rr, THEIRS), 15, what="our BFD session up at 300 ms x 3")
    wait_for(lambda: frr.json(f"show bgp neighbors {OURS}")[OURS].get("peerBfdInfo", {}).get("status") == "Up",
             15, what="FRR's BFD session up")
    wait_for(lambda: routes(rr) == [PREFIX], 15, what="FRR's route at our reflector")
    return frr, rr, ours


def settled(rr: RouteReflector, *peers: str) -> bool:
    """Our BFD sessions to `peers` are Up at 300 ms x 3: until the Poll Sequence after Up has settled them,
    they run at 1 s (RFC 5880 6.8.3), a 3 s detection time."""
    sessions = {b["peer"]: b for b in (rr.get("/v1/summary") or {}).get("bfd", [])}
    return all(sessions.get(p, {}).get("state") == "up" and sessions[p]["detect_time_ms"] == 900 for p in peers)


def scrape(rr: RouteReflector) -> str:
    with inside(rr.ns), urllib.request.urlopen(rr.api + "/metrics", timeout=5) as response:
        return response.read().decode()


def routes(rr: RouteReflector) -> list[str] | None:
    page = rr.get("/v1/routes?family=ipv4-unicast")
    return None if page is None else [r["prefix"] for r in page["routes"]]


@pytest.mark.parametrize("dynamic", [False, True], ids=["configured", "dynamic"])
def test_frr_frozen_takes_our_bgp_session_and_its_routes_down_within_the_detection_time(lab: Lab, dynamic: bool):
    frr, rr, _ = setup(lab, dynamic)
    daemons = [frr.bgpd.proc, frr.bfdd.proc]  # type: ignore[union-attr]
    frozen = time.monotonic()
    for proc in daemons:
        os.killpg(proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: rr.neighbor(THEIRS).get("state") != "established" and routes(rr) == [], BOUND,
                 interval=0.02, what="our session and FRR's route gone")
        took = time.monotonic() - frozen
        summary = rr.get("/v1/summary")
        assert summary["bfd_teardowns"] == 1
        metrics = scrape(rr)
        assert_conventional(metrics)  # promtool check metrics, of a running `nvfabric rr`'s scrape
        if dynamic:
            # The dynamic peer is forgotten with its last connection, and its BFD session with it.
            assert summary["bfd"] == [] and f'peer="{THEIRS}"' not in metrics
        else:
            (bfd,) = summary["bfd"]
            assert (bfd["peer"], bfd["state"], bfd["diagnostic"], bfd["downs"]) == (
                THEIRS, "down", "control_detection_time_expired", 1)
            assert f'nvfabric_bfd_session_up{{peer="{THEIRS}"}} 0.0' in metrics
            assert f'nvfabric_bfd_session_downs_total{{peer="{THEIRS}"}} 1.0' in metrics
        print(f"FRR frozen ({'dynamic' if dynamic else 'configured'} neighbour): our BGP session and its route "
              f"gone after {took:.2f} s (hold time {HOLD} s)")
    finally:
        for proc in daemons:
            os.killpg(proc.pid, signal.SIGCONT)
    # Thawed, FRR reads our Cease / BFD Down (RFC 9384); both come back by themselves.
    wait_for(lambda: rr.neighbor(THEIRS).get("bfd") == "up" and routes(rr) == [PREFIX], 60,
             what="BFD, BGP and the route back")


def test_our_packets_dropped_take_frrs_bgp_session_down_within_the_detection_time(lab: Lab):
    frr, rr, ours = setup(lab)
    # Everything we send on the link (BGP and BFD) is dropped; our API on loopback still answers.
    nft = 'table inet cut { chain out { type filter hook output priority 0; oifname != "lo" drop; }; }'
    cut = time.monotonic()
    netns.run(netns.in_netns(ours, ["nft", nft]))
    wait_for(lambda: frr.neighbor_state(OURS) != "Established", BOUND, interval=0.02, what="FRR's session down")
    took = time.monotonic() - cut
    neighbor = frr.json(f"show bgp neighbors {OURS}")[OURS]
    # FRR closed it for BFD, with the NOTIFICATION of RFC 9384 (and not for the hold time: 90 s).
    assert (neighbor["lastNotificationReason"], neighbor["lastErrorCodeSubcode"]) == ("Cease/BFD Down", "060A")
    assert neighbor["peerBfdInfo"]["status"] == "Down"
    print(f"our packets dropped: FRR's BGP session down after {took:.2f} s (hold time {HOLD} s)")
    # FRR's bfdd signals Down to us (its packets still reach us): ours closes too, and drops the route.
    wait_for(lambda: rr.neighbor(THEIRS).get("state") != "established" and routes(rr) == [], BOUND,
             what="our session and FRR's route gone")
    netns.run(netns.in_netns(ours, ["nft", "delete table inet cut"]))
    wait_for(lambda: frr.neighbor_state(OURS) == "Established" and routes(rr) == [PREFIX], 60,
             what="BGP and the route back")


def test_between_our_own_a_frozen_host_is_withdrawn_from_the_others_within_the_detection_time(lab: Lab):
    """Ours at both ends, as the fabric runs them: two hosts (`nvfabric bgp speak`, as the agent's and the
    gateway's BGP client) with `bfd` to our reflector, hold time 90 s. A frozen host's route is gone from
    the other host in about the detection time; a frozen reflector is seen by the hosts' own BFD."""
    rr_ns, h1_ns, h2_ns = lab.namespace("r"), lab.namespace("a"), lab.namespace("b")
    segment(lab, rr_ns, {rr_ns: [f"{RR}/24"], h1_ns: [f"{H1}/24"], h2_ns: [f"{H2}/24"]})
    rr = RouteReflector(lab, rr_ns, "rr", {
        "asn": 65000, "router_id": RR, "hold_time": HOLD, "listen": {"address": RR},
        "neighbors": [{"prefix": "10.79.0.0/24", "asn": 65000, "bfd": True}]})

    def host(ns: str, name: str, address: str, routes: list[dict]) -> Speaker:
        return Speaker(lab, ns, name, {"asn": 65000, "router_id": address, "hold_time": HOLD, "routes": routes,
                                       "neighbors": [{"address": RR, "asn": 65000, "bfd": True}]}).start()

    h1 = host(h1_ns, "h1", H1, [HOST_ROUTE])
    h2 = host(h2_ns, "h2", H2, [])
    wait_for(lambda: len(h2.routes()) == 1, 30, what="h1's route at h2 through the reflector")
    wait_for(lambda: settled(rr, H1, H2), 15, what="the reflector's BFD sessions up at 300 ms x 3")
    assert h1.proc is not None
    frozen = time.monotonic()
    os.killpg(h1.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: not h2.routes(), BOUND, interval=0.02, what="h1's route withdrawn at h2")
        took = time.monotonic() - frozen
        print(f"host frozen: its route withdrawn at the other host after {took:.2f} s (hold time {HOLD} s)")
    finally:
        os.killpg(h1.proc.pid, signal.SIGCONT)
    wait_for(lambda: len(h2.routes()) == 1, 60, what="h1 back, its route at h2 again")
    wait_for(lambda: settled(rr, H1, H2), 15, what="BFD to h1 up again at 300 ms x 3")

    # The reflector frozen: each host's own BFD session closes its BGP session with Cease / BFD Down.
    frozen = time.monotonic()
    os.killpg(rr.proc.proc.pid, signal.SIGSTOP)
    try:
        down = wait_for(lambda: [line for line in h2.lines if line.get("event") == "down"], BOUND, interval=0.02,
                        what="h2's session down")
        took = time.monotonic() - frozen
        assert "notification-sent 6/10" in down[-1]["reason"] and "BFD down" in down[-1]["reason"], down
        print(f"reflector frozen: the host's session down after {took:.2f} s (hold time {HOLD} s)")
    finally:
        os.killpg(rr.proc.proc.pid, signal.SIGCONT)
