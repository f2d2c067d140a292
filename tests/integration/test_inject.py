"""The injector (lab/inject.py) through a real `nvfabric rr` to a real BGP receiver (`nvfabric bgp speak`): a
few hundred routes, then a short churn; the receiver ends with exactly the injector's table."""

from __future__ import annotations

import json
import sys
from ipaddress import IPv4Network

from nvfabric.lab import inject
from nvfabric.lab.peers import Lab, Process, RouteReflector, Speaker, segment, wait_for

RR, INJECTOR, RECEIVER = "198.51.100.100", "198.51.100.1", "198.51.100.2"
SUBNETS = ("5001,65001:1,10.64.0.0/16", "5002,65001:1,10.65.0.0/16")
COUNT, RATE, SECONDS = 300, 200, 1.0


def test_injector_table_and_churn_reach_a_receiver_through_the_reflector(lab: Lab):
    rr_ns, inj_ns, rx_ns = lab.namespace("rr"), lab.namespace("inj"), lab.namespace("rx")
    segment(lab, rr_ns, {rr_ns: [f"{RR}/24"], inj_ns: [f"{INJECTOR}/24"], rx_ns: [f"{RECEIVER}/24"]})
    RouteReflector(lab, rr_ns, "rr", {"asn": 65000, "router_id": RR, "cluster_id": RR, "hold_time": 9,
                                      "listen": {"address": RR, "port": 179},
                                      "neighbors": [{"prefix": "198.51.100.0/24", "asn": 65000, "client": True}]})
    receiver = Speaker(lab, rx_ns, "rx", {"asn": 65000, "router_id": RECEIVER, "hold_time": 9, "routes": [],
                                          "neighbours": [{"address": RR, "asn": 65000}]}).start()
    stamps = lab.tmp / "stamps.jsonl"
    argv = [sys.executable, "-m", "nvfabric.lab.inject", "--reflector", RR, "--local", INJECTOR,
            *(f"--subnet={s}" for s in SUBNETS), "--count", str(COUNT), "--rate", str(RATE),
            "--seconds", str(SECONDS), "--stamps", str(stamps), "--hold", "60"]
    injector = Process(inj_ns, argv, lab.tmp / "inject.log")
    lab.processes.append(injector)

    # The same seed gives the same table and changes: what the receiver must end with.
    spec = inject.Spec(inject.parse_subnets(SUBNETS), IPv4Network("198.51.96.0/20"), 1000)
    churn = inject.Churn.initial(spec, COUNT)
    expected_changes = sum(len(t.changes) for t in churn.schedule(RATE, SECONDS))
    want = {(r.vsid, str(r.ip)): (str(r.next_hop), r.mobility_seq) for r in churn.routes()}

    def table() -> dict[tuple[int, str], tuple[str, int]]:
        return {(r["vsid"], r["ip"]): (r["next_hop"], r["mobility_seq"]) for r in receiver.routes().values()}

    wait_for(lambda: table() == want, 60, what="the receiver holds the injector's final table")
    wait_for(lambda: stamps.exists() and len(stamps.read_text().splitlines()) == expected_changes, 10,
             what="the injector's stamps")
    changes = [json.loads(line) for line in stamps.read_text().splitlines()]
    kinds = {c["kind"] for c in changes}
    assert kinds == {"move", "add", "withdraw"}
    assert all(c["sent"] > 0 for c in changes)
    # a move carries the CA to another PA with a higher sequence
    assert all(c["seq"] > 0 and c["pa"] for c in changes if c["kind"] == "move")
    assert all(c["pa"] is None for c in changes if c["kind"] == "withdraw")
