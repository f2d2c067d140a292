"""The client's deduplicated stream against two real reflectors at once: GoBGP and FRR."""

from __future__ import annotations

import time

from tests.integration.conftest import need
from nvfabric.lab.peers import Frr, GoBgp, Lab, Speaker, gobgp_rr_toml, segment, wait_for
from tests.integration.test_bgp_frr import FRR_BINARIES
from tests.integration.test_bgp_gobgp import ROUTE

GOBGP_RR, FRR_RR = "198.51.100.254", "198.51.100.253"
H1, H2 = "198.51.100.1", "198.51.100.2"


def frr_conf() -> str:
    lines = ["hostname rr2", "router bgp 65000", f" bgp router-id {FRR_RR}", f" bgp cluster-id {FRR_RR}",
             " no bgp default ipv4-unicast"]
    for client in (H1, H2):
        lines += [f" neighbor {client} remote-as 65000", f" neighbor {client} timers 3 9",
                  f" neighbor {client} timers connect 2"]
    lines.append(" address-family l2vpn evpn")
    for client in (H1, H2):
        lines += [f"  neighbor {client} activate", f"  neighbor {client} route-reflector-client"]
    return "\n".join(lines + [" exit-address-family", ""])


def client_config(router_id: str, routes: list[dict]) -> dict:
    return {"asn": 65000, "router_id": router_id, "hold_time": 9, "routes": routes,
            "neighbours": [{"address": GOBGP_RR, "asn": 65000}, {"address": FRR_RR, "asn": 65000}]}


def test_route_from_two_reflectors_is_one_route_until_both_withdraw(lab: Lab):
    need("gobgpd", "gobgp", *FRR_BINARIES)
    rr1, rr2, h1_ns, h2_ns = lab.namespace("rr1"), lab.namespace("rr2"), lab.namespace("h1"), lab.namespace("h2")
    segment(lab, rr1, {rr1: [f"{GOBGP_RR}/24"], rr2: [f"{FRR_RR}/24"], h1_ns: [f"{H1}/24"], h2_ns: [f"{H2}/24"]})
    gobgp = GoBgp(lab, rr1, "gobgp", gobgp_rr_toml([H1, H2]))
    frr = Frr(lab, rr2, "rr2", frr_conf())
    h1 = Speaker(lab, h1_ns, "h1", client_config(H1, [ROUTE])).start()
    h2 = Speaker(lab, h2_ns, "h2", client_config(H2, [])).start()

    # Both reflectors send the route to h2; the stream has it once.
    wait_for(lambda: h2.routes(), 30, what="the route at h2")
    wait_for(lambda: gobgp.json("neighbor", H2, "adj-out", "-a", "evpn"), 10, what="GoBGP sent it to h2")
    wait_for(lambda: H2 in str(frr.json("show bgp l2vpn evpn route detail")), 10, what="FRR sent it to h2")
    time.sleep(0.5)  # both copies are on the wire to h2: let them land
    assert len(h2.changes("announce")) == 1

    # One reflector goes away: the route stays (the other still has it).
    gobgp_proc = next(p for p in lab.processes if getattr(p, "argv", [""])[0] == "gobgpd")
    gobgp_proc.stop()
    wait_for(lambda: any(line.get("event") == "down" for line in h2.lines), 15, what="h2 loses the GoBGP session")
    assert h2.routes() and h2.changes("withdraw") == []

    # The origin withdraws: the remaining reflector carries it, the stream says so once.
    h1.config_path.write_text(h1.config_path.read_text().split("routes:")[0] + "routes: []\n")
    h1.reload()
    wait_for(lambda: not h2.routes(), 20, what="the withdrawal via FRR")
    assert len(h2.changes("withdraw")) == 1
