"""The gateway in the default topology (VM phase): `nvfabric rr` reflectors on rr1/rr2, host agents on hv1-hv3 with
the two tenants of lab/fabric.py (blue and red overlap: b2 and r1 are both 10.0.0.12), and the
gateway on gw1, all in this process. The gateway learns the tenants' CAs from the reflectors and announces
each tenant's default route (EVPN type 5); the hosts install it. `internet` routes the public pool
203.0.113.128/25 to gw1, as the upstream router does after the gateway's announcements.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from nvfabric.lab.gateway_scene import GW1, PUBLIC_POOL, SERVER, default_via, gateway_config
from nvfabric.lab.fabric import Fabric, HV, wait_for
from nvfabric.lab import netns, runner
from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.topology import load
from nvfabric.lab.daemons import GatewayThread
from nvfabric.lab.probe import Server, connect_retrying
from tests.kernel.test_agent_tenants import Capture
from tests.nvgre import gre, inner, send_gre

pytestmark = pytest.mark.kernel

@pytest.fixture(scope="module")
def fabric() -> Iterator[tuple[Fabric, GatewayThread]]:
    topology = load(DEFAULT_TOPOLOGY)
    runner.up(topology)
    fab = Fabric(topology)
    gw = None
    try:
        fab.up()
        netns.run(["ip", "-n", fab.ns("internet"), "route", "add", PUBLIC_POOL, "via", "203.0.113.21"])
        config = gateway_config(fab)
        gw = GatewayThread(config, fab.ns("gw1"))
        started = time.monotonic()
        gw.call(lambda g: g.start(), timeout=120)
        # the hosts have the gateway's default route, the gateway every CA
        for host in HV:
            wait_for(lambda h=host: default_via(fab, h), 60, f"blue's default route on {host}")
        wait_for(lambda: len(gw.gateway.records) >= 6, 60, "the gateway learns the CAs")
        print(f"[gateway-fabric] gateway up, defaults on every host, CAs learned in "
              f"{time.monotonic() - started:.1f} s", flush=True)
        yield fab, gw
    finally:
        if gw is not None:
            gw.stop()
        fab.close()
        runner.down(topology.name)


def test_tenants_reach_the_internet_through_the_gateway(fabric) -> None:
    fab, gw = fabric
    server = Server(fab.ns("internet"), SERVER)
    vm_servers = [Server(fab.vm_ns["b1"], ("10.0.0.11", 9000), "b1 "),
                  Server(fab.vm_ns["r1"], ("10.0.0.12", 9000), "r1 "),
                  Server(fab.vm_ns["r3"], ("10.0.0.13", 9000), "r3 ")]
    try:
        # b2 (blue, hv2) and r1 (red, hv1) share 10.0.0.12 and the source port: b2 leaves with blue's SNAT
        # address, r1 with red's floating IP (it is the floating IP's CA); r3 with red's SNAT address
        s, line = connect_retrying(fab.vm_ns["b2"], SERVER, ("10.0.0.12", 41000))
        s.close()
        assert line == "203.0.113.140:41000"
        s, line = connect_retrying(fab.vm_ns["r1"], SERVER, ("10.0.0.12", 41000))
        s.close()
        assert line == "203.0.113.132:41000"
        s, line = connect_retrying(fab.vm_ns["r3"], SERVER, ("10.0.0.13", 41000))
        s.close()
        assert line == "203.0.113.141:41000"
        # b3 in blue's other subnet (VSID 5002, hv3)
        s, line = connect_retrying(fab.vm_ns["b3"], SERVER)
        s.close()
        assert line.startswith("203.0.113.140:")
        # floating IPs from outside reach the right tenant's VM
        for public, banner in (("203.0.113.131", "b1 "), ("203.0.113.132", "r1 ")):
            s, line = connect_retrying(fab.ns("internet"), (public, 9000))
            s.close()
            assert line.startswith(banner + "203.0.113.1:"), line
        # b1 leaves with its floating IP
        s, line = connect_retrying(fab.vm_ns["b1"], SERVER, ("10.0.0.11", 0))
        s.close()
        assert line.startswith("203.0.113.131:")
        # tenants cannot reach each other through the gateway: blue b1 -> red r3's 10.0.0.13
        with pytest.raises(ConnectionError, match="cannot reach"):
            connect_retrying(fab.vm_ns["b1"], ("10.0.0.13", 9000), tries=1)
        assert vm_servers[2].seen == []
    finally:
        for v in (server, *vm_servers):
            v.close()


def test_gre_to_the_gateway_from_the_internet_never_enters_a_tenant(fabric) -> None:
    """The internet node sends NVGRE for blue's VSID to gw1 (its external address and its PA), inner packets
    for b1: captured at b1, nothing arrives; gw1 counts them from an unknown PA. The tenants' own traffic
    through gw1 (the test above) is what its decapsulation table lets through."""
    fab, gw = fabric
    before = gw.call(lambda g: g.decap_counters())
    cap = Capture(fab.ns("hv1"), "tap-b1", "/tmp/decap-gw-b1.pcap")
    for dst in ("203.0.113.21", GW1):
        send_gre(fab.ns("internet"), SERVER[0], dst,
                 gre(5001 << 8) + inner(SERVER[0], "10.0.0.11", b"nvf-attack-from-internet"), count=5)
    after = wait_for(lambda: (c := gw.call(lambda g: g.decap_counters()))["unknown_pa"] - before["unknown_pa"] >= 10
                     and c, 10, "gw1 counts GRE from the internet")
    assert b"nvf-attack-from-internet" not in cap.stop()
    assert after["vouched"] - before["vouched"] == 0
    rules = netns.run(["ip", "netns", "exec", fab.ns("gw1"), "nft", "list", "table", "inet", "nvfabric"]).output
    assert all(pa in rules for pa in HV.values()) and SERVER[0] not in rules, rules


def test_the_gateway_with_its_fabric_is_ready_once_its_role_is_decided(fabric) -> None:
    """GET /readyz of the gateway's API, without a token, from inside gw1: ready, as it serves (its role was
    judged after End-of-RIB) and its dataplane is programmed; the role says so in GET /v1/status."""
    import json
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from nvfabric.gateway.api import start_api
    from nvfabric.vnet.kernel.netns import enter_namespace

    fab, gw = fabric
    assert gw.gateway.readiness() == ()
    server = gw.run(start_api(gw.gateway, "127.0.0.1:0", "gw-token"))
    assert server is not None

    def get(path: str, token: str | None = None) -> tuple[int, object]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with urllib.request.urlopen(urllib.request.Request(server.url + path, headers=headers), timeout=30) as r:
            return r.status, json.load(r)

    try:
        with ThreadPoolExecutor(1, initializer=enter_namespace, initargs=(fab.ns("gw1"),)) as client:
            assert client.submit(get, "/readyz").result(60) == (200, {"status": "ready"})
            assert client.submit(get, "/healthz").result(60) == (200, {"status": "ok"})
            status = client.submit(get, "/v1/status", "gw-token").result(60)[1]
            assert isinstance(status, dict) and status["role"]["serving"] is True, status
    finally:
        gw.run(server.stop())
