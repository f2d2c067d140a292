"""Two of our reflectors (rr1, rr2 of the lab topology) serving the same clients: every client peers with
both, the reflectors peer with each other as non-clients in one cluster; losing one loses nothing."""

from __future__ import annotations

import yaml

from nvfabric.lab.peers import Lab, RouteReflector, Speaker, segment, wait_for
from tests.integration.test_bgp_gobgp import ROUTE
from tests.integration.test_rr_reflection import client_config, macs

RR1, RR2, H1, H2 = "198.51.100.100", "198.51.100.101", "198.51.100.1", "198.51.100.2"
CLUSTER = "198.51.100.100"
OTHER = {**ROUTE, "mac": "00:15:5d:01:02:99", "ip": "10.1.0.99", "rd": f"{H2}:1", "next_hop": H2}


def reflector(router_id: str, other: str) -> dict:
    return {"asn": 65000, "router_id": router_id, "cluster_id": CLUSTER, "hold_time": 9,
            "listen": {"address": router_id, "port": 179},
            # The other reflector first: a configured address wins over the dynamic prefix holding it.
            "neighbors": [{"address": other, "asn": 65000, "client": False},
                          {"prefix": "198.51.100.0/24", "asn": 65000, "client": True}]}


def test_two_reflectors_loop_prevention_and_losing_one(lab: Lab):
    rr1_ns, rr2_ns, h1_ns, h2_ns = (lab.namespace(n) for n in ("rr1", "rr2", "h1", "h2"))
    segment(lab, rr1_ns, {rr1_ns: [f"{RR1}/24"], rr2_ns: [f"{RR2}/24"], h1_ns: [f"{H1}/24"], h2_ns: [f"{H2}/24"]})
    rr1 = RouteReflector(lab, rr1_ns, "rr1", reflector(RR1, RR2))
    rr2 = RouteReflector(lab, rr2_ns, "rr2", reflector(RR2, RR1))
    h1 = Speaker(lab, h1_ns, "h1", client_config(H1, [ROUTE], (RR1, RR2))).start()
    h2 = Speaker(lab, h2_ns, "h2", client_config(H2, [OTHER], (RR1, RR2))).start()

    wait_for(lambda: rr1.established(RR2, H1, H2) and rr2.established(RR1, H1, H2), 30, what="all sessions")
    wait_for(lambda: macs(h2) == {ROUTE["mac"]} and macs(h1) == {OTHER["mac"]}, 20, what="routes both ways")
    # Each reflector sent its clients' routes to the other (a non-client), which found its own CLUSTER_ID in
    # CLUSTER_LIST and ignored them (RFC 4456 section 8): every route is held once, from its origin.
    wait_for(lambda: rr1.get("/v1/summary")["loops_ignored"] >= 2 and rr2.get("/v1/summary")["loops_ignored"] >= 2,
             10, what="looped copies ignored by both")
    for rr in (rr1, rr2):
        held = rr.get("/v1/routes")["routes"]
        assert sorted((r["mac"], r["source"], r["cluster_list"]) for r in held) == sorted(
            [(ROUTE["mac"], H1, []), (OTHER["mac"], H2, [])]), held
    assert len(h2.changes("announce")) == 1  # the copies from both reflectors are one route

    # rr1 goes away: nothing is withdrawn at the clients, rr2 carries on.
    next(p for p in lab.processes if p is rr1.proc).stop()
    wait_for(lambda: sum(line.get("event") == "down" for line in h2.lines) >= 1, 15, what="h2 loses rr1")
    assert h2.changes("withdraw") == [] and macs(h2) == {ROUTE["mac"]}
    # A change after the loss still flows, through rr2 alone.
    config = yaml.safe_load(h1.config_path.read_text())
    h1.config_path.write_text(yaml.safe_dump({**config, "routes": []}))
    h1.reload()
    wait_for(lambda: macs(h2) == set(), 15, what="the withdrawal through rr2")
    assert len(h2.changes("withdraw")) == 1
