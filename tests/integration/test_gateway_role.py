"""Which gateway serves, over real BGP: two gateways' fabric sides (gateway/evpn.py Fabric, each on its own
loop inside its namespace) and `nvfabric rr` between them; the reflector's table is what is checked (the
type-5 default routes it holds and reflects to the hosts), not the gateways' own word.

gw1 (configured active) and gw2 (standby) start together: gw1 serves. gw1's link is cut: the reflector
drops gw1's routes when the session's hold time expires and gw2 takes over; gw1, without a reflector
session, stops serving. gw1's link comes back: gw1 reconnects, waits until the reflector's table can be
trusted, finds gw2 serving and stands by: the role is never taken back. The NAT and VRF side is not
needed for any of this (no VRF on this kernel), nor the upstream.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.evpn import Fabric
from nvfabric.gateway.role import DEPREFERRED, HOLD_WAIT, WITHDRAWN
from nvfabric.lab import netns
from nvfabric.lab.daemons import LoopThread
from nvfabric.lab.peers import Lab, RouteReflector, segment, wait_for

RR, GW1, GW2 = "198.51.100.100", "198.51.100.21", "198.51.100.22"
HOLD = 3  # the gateways': a cut is noticed within 3 s on both sides


def config(pa: str, standby: bool) -> GatewayConfig:
    return GatewayConfig.from_dict({
        "asn": 65000, "router_id": pa, "provider_addresses": [pa], "provider_prefixes": ["198.51.100.0/24"],
        "standby": standby, "route_reflectors": [{"address": RR}], "hold_time": HOLD,
        "external": {"interfaces": ["ext"]},
        "tenants": [{"name": "blue", "route_targets": ["65000:1"],
                     "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}], "snat": ["203.0.113.140"]}]})


class Side:
    """One gateway's fabric side on its own loop in its namespace."""

    def __init__(self, ns: str, pa: str, standby: bool) -> None:
        self.thread = LoopThread(ns)
        self.fabric = Fabric(config(pa, standby), on_records=self._records)
        self.fabric_config = self.fabric.config

    async def _records(self, records) -> None:
        return None

    def start(self) -> None:
        self.thread.run(self.fabric.start({t.name: t for t in self.fabric_config.tenants}))

    def close(self) -> None:
        try:
            self.thread.run(self.fabric.stop())
        finally:
            self.thread.close()


@pytest.fixture
def scene(lab: Lab) -> Iterator[tuple[Lab, RouteReflector, dict[str, Side], dict[str, str]]]:
    ns = {n: lab.namespace(n) for n in ("rr", "gw1", "gw2")}
    segment(lab, ns["rr"], {ns["rr"]: [f"{RR}/24"], ns["gw1"]: [f"{GW1}/24"], ns["gw2"]: [f"{GW2}/24"]})
    rr = RouteReflector(lab, ns["rr"], "rr", {
        "asn": 65000, "router_id": RR, "cluster_id": RR, "hold_time": 9, "listen": {"address": RR, "port": 179},
        "neighbors": [{"prefix": "198.51.100.0/24", "asn": 65000, "client": True}]})
    sides = {"gw1": Side(ns["gw1"], GW1, False), "gw2": Side(ns["gw2"], GW2, True)}
    try:
        for side in sides.values():
            side.start()
        yield lab, rr, sides, ns
    finally:
        for side in sides.values():
            side.close()


def defaults(rr: RouteReflector) -> set[str] | None:
    """The next hops of the default routes the reflector holds (None: its API did not answer)."""
    body = rr.get("/v1/routes")
    if body is None:
        return None
    return {r["next_hop"] for r in body["routes"] if r.get("prefix") in ("0.0.0.0/0", "::/0")}


def test_the_old_active_does_not_take_the_role_back(scene) -> None:
    _, rr, sides, ns = scene
    gw1, gw2 = sides["gw1"].fabric, sides["gw2"].fabric
    wait_for(lambda: defaults(rr) == {GW1}, 30, what="gw1 (configured active) serves")
    wait_for(lambda: gw2.role.reason == f"standing by: gateway {GW1} serves", 10, what="gw2 stands by")
    assert gw1.role_change_count == 1
    assert not gw2.serving and gw2.takeovers == []

    netns.run(["ip", "-n", ns["gw1"], "link", "set", "eth0", "down"])  # gw1's fabric side is gone
    cut = time.monotonic()
    wait_for(lambda: defaults(rr) == {GW2}, 30, what="gw2 takes over")
    took = time.monotonic() - cut
    wait_for(lambda: not gw1.serving and gw1.upstream == DEPREFERRED, 15, what="gw1 isolated")
    assert gw2.serving and len(gw2.takeovers) == 1

    netns.run(["ip", "-n", ns["gw1"], "link", "set", "eth0", "up"])
    back = time.monotonic()
    seen: set[str] = set()

    def settled() -> bool:
        seen.update(defaults(rr) or ())
        return gw1.role.reason == f"standing by: gateway {GW2} serves" and gw1.upstream == WITHDRAWN
    wait_for(settled, HOLD_WAIT + 30, what="gw1 back, standing by")
    waited = time.monotonic() - back
    assert seen == {GW2}, "gw1 announced again"
    assert not gw1.serving and gw1.upstream == WITHDRAWN and gw2.serving and len(gw2.takeovers) == 1
    assert gw1.role_change_count == 2 and gw2.role_change_count == 1
    print(f"\n[gateway-role] gw2 took over {took:.1f} s after gw1's link was cut (hold time {HOLD} s); "
          f"gw1 back, judged and standing by {waited:.1f} s after its link came up")
