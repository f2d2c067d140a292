"""Two gateways and their failover, for tests/kernel/test_gateway_failover.py and bench/gateway_failover.py:
the default topology with gw1 (active) and gw2 (standby), the fabric of lab/fabric.py (reflectors, host
agents on hv1-hv3, tenants blue and red), and FRR on `internet` as the upstream router (eBGP with both
gateways).

gw1 is killed during a transfer (both its links go down: no BGP NOTIFICATION, its sessions time out as after
a power loss). Measured: the gap in a 5 Hz ping from a blue VM to the internet server through the gateway,
when the standby took over, when every host's default route and the upstream's route had moved to gw2.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nvfabric.gateway.config import GatewayConfig
from nvfabric.lab import netns, runner
from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.daemons import GatewayThread
from nvfabric.lab.fabric import ASN, HV, RR, Fabric, wait_for
from nvfabric.lab.gateway_scene import PUBLIC_POOL, TENANTS, frr_upstream_conf
from nvfabric.lab.peers import Frr, Lab
from nvfabric.lab.probe import connect_retrying
from nvfabric.lab.topology import load

GW = {"gw1": ("198.51.100.21", "203.0.113.21"), "gw2": ("198.51.100.22", "203.0.113.22")}
SERVER = ("203.0.113.1", 8080)
REACTION = 21.0  # seconds after detection: the standby's decision, the reflectors, the agents, FRR (margin)

# FRR's default timers (keepalive 60 s, hold 180 s): the gateways' lower hold time is what is used
FRR_CONF = frr_upstream_conf("203.0.113.1", ASN, tuple(ext for _, ext in GW.values()))


def frr_next_hops(frr: Frr, prefix: str) -> list[str]:
    data = frr.json(f"show ip route {prefix}")
    return sorted(h.get("ip", "") for r in data.get(prefix, []) if r.get("selected")
                  for h in r.get("nexthops", []) if h.get("active"))


def default_pa(fab: Fabric, host: str) -> str:
    out = netns.run(["ip", "-n", fab.ns(host), "route", "show", "vrf", "nvf-blue", "default"], check=False).output
    found = re.search(r"encap ip id \d+ src \S+ dst (\S+)|dst (\S+)", out)
    return (found.group(1) or found.group(2)) if found else ""


@dataclass
class TwoGateways:
    fab: Fabric
    gws: dict[str, GatewayThread]
    frr: Frr
    hold_time: int | None  # the gateways' (None: the default, 90 s)


@contextmanager
def two_gateways(tmp: Path, hold_time: int | None, rr_hold_time: int | None = 90) -> Iterator[TwoGateways]:
    """The default topology with gw1 active, gw2 standby, FRR upstream; both gateways serving blue and red.
    `hold_time`: the gateways' BGP hold time (None: their default); `rr_hold_time`: the reflectors'."""
    topology = load(DEFAULT_TOPOLOGY)
    runner.up(topology)
    fab = Fabric(topology)
    lab = Lab(tmp=tmp, prefix="")
    gws: dict[str, GatewayThread] = {}
    try:
        frr = Frr(lab, fab.ns("internet"), "upstream", FRR_CONF)  # first: while the VM is idle (zebra: 10 s)
        fab.up(rr_hold_time)
        for name, (pa, ext) in GW.items():
            config = GatewayConfig.from_dict({
                "asn": ASN, "router_id": pa, "provider_addresses": [pa], "standby": name == "gw2",
                "route_reflectors": [{"address": a} for a in RR.values()],
                "external": {"interfaces": ["eth2"], "next_hop4": "203.0.113.1", "address4": ext},
                "upstream": [{"address": "203.0.113.1", "asn": 64496}], "netns": fab.ns(name),
                "public_prefixes": [PUBLIC_POOL],
                **({} if hold_time is None else {"hold_time": hold_time}),
                "tenants": [t.as_dict() for t in TENANTS]})
            gws[name] = GatewayThread(config, fab.ns(name))
            gws[name].call(lambda g: g.start(), timeout=120)
        for host in HV:
            wait_for(lambda h=host: default_pa(fab, h) == GW["gw1"][0], 90, f"default via gw1 on {host}")
        wait_for(lambda: frr_next_hops(frr, "203.0.113.131/32") == [GW["gw1"][1]], 60,
                          "the upstream routes the floating IP to gw1")
        yield TwoGateways(fab, gws, frr, hold_time)
    finally:
        for gw in gws.values():
            try:
                gw.stop()
            except Exception:  # noqa: BLE001 - teardown goes on
                pass
        lab.close()
        fab.close()
        runner.down(topology.name)


@dataclass(frozen=True)
class Failover:
    takeover: float  # seconds from the cut until the standby started announcing
    hosts: float  # ... until every host's default route pointed at gw2
    upstream: float  # ... until the upstream routed the floating IP to gw2
    gap: float  # the ping's longest silence (the outbound outage)
    lost: int  # pings without a reply


def kill_gw1_during_a_ping(two: TwoGateways, timeout: float) -> Failover:
    """gw1's links cut during a 5 Hz ping from b2 to the internet server (SERVER, running) through the gateway;
    polls (an `ip`/vtysh call each) until the hosts
    and the upstream follow to gw2 (each within `timeout` s of the cut), then measures the ping's gap."""
    fab, gws, frr = two.fab, two.gws, two.frr
    s, line = connect_retrying(fab.vm_ns["b2"], SERVER)
    s.close()
    assert line.startswith("203.0.113.140:")
    assert not gws["gw2"].gateway.serving
    ping = subprocess.Popen(netns.in_netns(fab.vm_ns["b2"], ["ping", "-D", "-i", "0.2", "-W", "1", "-c", "100000",
                                                             "203.0.113.1"]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        killed = time.time()
        for ifname in ("eth1", "eth2"):  # gw1 dies: no NOTIFICATION, its sessions time out
            netns.run(["ip", "-n", fab.ns("gw1"), "link", "set", ifname, "down"])
        for host in HV:
            wait_for(lambda h=host: default_pa(fab, h) == GW["gw2"][0], timeout - (time.time() - killed),
                              f"default via gw2 on {host}")
        hosts = time.time() - killed
        wait_for(lambda: frr_next_hops(frr, "203.0.113.131/32") == [GW["gw2"][1]],
                          timeout - (time.time() - killed), "the upstream routes the floating IP to gw2")
        upstream = time.time() - killed
        time.sleep(4)  # replies again: a little after the switch
    finally:
        ping.send_signal(signal.SIGINT)  # ping prints its summary (transmitted, received) on SIGINT
        out, _ = ping.communicate(timeout=10)
    sent = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    replies = [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)]
    before = [t for t in replies if t < killed]
    after = [t for t in replies if t > killed]
    assert before and after, out[-2000:]
    # the outage: the longest silence from the last reply before the kill on (the `ip link set down`
    # commands take a moment to run, so a few replies may still come after `killed`)
    window = [before[-1], *after]
    gap = max(b - a for a, b in zip(window, window[1:], strict=False))
    takeover = gws["gw2"].gateway._fabric.takeovers
    assert takeover, "the standby never took over"
    lost = int(sent.group(1)) - int(sent.group(2)) if sent else -1
    return Failover(takeover[-1] - killed, hosts, upstream, gap, lost)
