"""Two gateways and their failover (VM phase): the default topology with gw1 (active) and gw2 (standby),
GoBGP reflectors, host agents on hv1-hv3 (hostagent/scenario.py's tenants), and FRR on `internet` as the
upstream router (eBGP with both gateways, `timers 3 9`; the reflectors' hold time is 9 s too).

gw1 is killed during a transfer (both its links go down: no BGP NOTIFICATION, sessions time out as after a
power loss). Measured: the gap in a 5 Hz ping from a blue VM to the internet server through the gateway.
Checked: the hosts' default route and the upstream's routes follow to gw2, and a floating IP is reached
from outside through gw2.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from hostagent import scenario
from hostagent.scenario import BLUE, HV, RED, RR, Fabric
from lab import netns, runner
from lab.cli import DEFAULT_TOPOLOGY
from lab.topology import load
from tests.gateway_net import GatewayThread, Server
from tests.integration.peers import Frr, Lab
from gateway.scene import start_fabric, tenant
from tests.kernel.test_gateway_fabric import _connect

pytestmark = pytest.mark.kernel

GW = {"gw1": ("198.51.100.21", "203.0.113.21"), "gw2": ("198.51.100.22", "203.0.113.22")}
SERVER = ("203.0.113.1", 8080)
BOUND = 30.0  # seconds: the reflectors' and the upstream's hold time (9 s) plus reaction, with margin

FRR_CONF = """hostname upstream
router bgp 64496
 bgp router-id 203.0.113.1
 no bgp ebgp-requires-policy
 neighbor 203.0.113.21 remote-as 65000
 neighbor 203.0.113.21 timers 3 9
 neighbor 203.0.113.22 remote-as 65000
 neighbor 203.0.113.22 timers 3 9
"""


def frr_next_hops(frr: Frr, prefix: str) -> list[str]:
    data = frr.json(f"show ip route {prefix}")
    return sorted(h.get("ip", "") for r in data.get(prefix, []) if r.get("selected")
                  for h in r.get("nexthops", []) if h.get("active"))


def default_pa(fab: Fabric, host: str) -> str:
    out = netns.run(["ip", "-n", fab.ns(host), "route", "show", "vrf", "nvf-blue", "default"], check=False).output
    found = re.search(r"encap ip id \d+ src \S+ dst (\S+)|dst (\S+)", out)
    return (found.group(1) or found.group(2)) if found else ""


@pytest.fixture(scope="module")
def two_gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fabric, dict[str, GatewayThread], Frr]]:
    topology = load(DEFAULT_TOPOLOGY)
    runner.up(topology)
    fab = Fabric(topology)
    lab = Lab(tmp=Path(tmp_path_factory.mktemp("frr")), prefix="")
    gws: dict[str, GatewayThread] = {}
    try:
        start_fabric(fab, tuple(pa for pa, _ in GW.values()))
        frr = Frr(lab, fab.ns("internet"), "upstream", FRR_CONF)
        for name, (pa, ext) in GW.items():
            config = GatewayConfig.from_dict({
                "asn": scenario.ASN, "router_id": pa, "provider_addresses": [pa], "standby": name == "gw2",
                "route_reflectors": [{"address": a} for a in RR.values()],
                "external": {"interfaces": ["eth2"], "next_hop4": "203.0.113.1", "address4": ext},
                "upstream": [{"address": "203.0.113.1", "asn": 64496}], "netns": fab.ns(name),
                "tenants": [tenant(BLUE, "203.0.113.140", "203.0.113.131", "10.0.0.11").as_dict(),
                            tenant(RED, "203.0.113.141", "203.0.113.132", "10.0.0.12").as_dict()]})
            gws[name] = GatewayThread(config, fab.ns(name))
            gws[name].call(lambda g: g.start(), timeout=120)
        for host in HV:
            scenario.wait_for(lambda h=host: default_pa(fab, h) == GW["gw1"][0], 90, f"default via gw1 on {host}")
        scenario.wait_for(lambda: frr_next_hops(frr, "203.0.113.131/32") == [GW["gw1"][1]], 60,
                          "the upstream routes the floating IP to gw1")
        yield fab, gws, frr
    finally:
        for gw in gws.values():
            try:
                gw.call(lambda g: g.stop(), timeout=30)
            except Exception:  # noqa: BLE001 - teardown goes on
                pass
            gw.close()
        lab.close()
        fab.close()
        runner.down(topology.name)


def test_outbound_and_floating_ips_move_to_gw2_when_gw1_dies(two_gateways) -> None:
    fab, gws, frr = two_gateways
    server = Server(fab.ns("internet"), SERVER)
    vm = Server(fab.vm_ns["b1"], ("10.0.0.11", 9000), "b1 ")
    try:
        s, line = _connect(fab.vm_ns["b2"], SERVER)
        s.close()
        assert line.startswith("203.0.113.140:")
        assert not gws["gw2"].gateway.serving
        # the transfer: 5 pings a second from b2 through the gateway, with kernel timestamps
        ping = subprocess.Popen(netns.in_netns(fab.vm_ns["b2"], ["ping", "-D", "-i", "0.2", "-W", "1", "-c", "400",
                                                                 "203.0.113.1"]),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(3)
        killed = time.time()
        for ifname in ("eth1", "eth2"):  # gw1 dies: no NOTIFICATION, its sessions time out
            netns.run(["ip", "-n", fab.ns("gw1"), "link", "set", ifname, "down"])
        for host in HV:
            scenario.wait_for(lambda h=host: default_pa(fab, h) == GW["gw2"][0], 60, f"default via gw2 on {host}")
        scenario.wait_for(lambda: frr_next_hops(frr, "203.0.113.131/32") == [GW["gw2"][1]], 60,
                          "the upstream routes the floating IP to gw2")
        # replies again: wait a little after the switch, then stop the ping
        time.sleep(4)
        ping.terminate()
        out, _ = ping.communicate(10)
        replies = [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)]
        before = [t for t in replies if t < killed]
        after = [t for t in replies if t > killed]
        assert before and after, out[-2000:]
        # the outage: the longest silence from the last reply before the kill on (the `ip link set down`
        # commands take a moment to run, so a few replies may still come after `killed`)
        window = [before[-1], *after]
        gap = max(b - a for a, b in zip(window, window[1:], strict=False))
        takeover = gws["gw2"].gateway._fabric.takeovers
        print(f"[gateway-failover] outbound outage {gap:.1f} s with hold time 9 s; the standby took over "
              f"{takeover[-1] - killed:.1f} s after the kill", flush=True)
        assert gws["gw2"].gateway.serving
        assert gap < BOUND
        # new flows leave by gw2 with the tenant's SNAT address; the floating IP is reached through gw2
        s, line = _connect(fab.vm_ns["b2"], SERVER)
        s.close()
        assert line.startswith("203.0.113.140:")
        s, line = _connect(fab.ns("internet"), ("203.0.113.131", 9000))
        s.close()
        assert line.startswith("b1 203.0.113.1:")
    finally:
        server.close()
        vm.close()
