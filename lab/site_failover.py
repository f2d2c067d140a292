"""A tenant's site across a gateway failover, on lab/failover.py's two gateways: for
tests/kernel/test_gateway_failover.py.

The site is a namespace on the internet side (`SITE_ADDRESS`, its network `SITE_PREFIX` with the host
`SITE_HOST` and a TCP server on it) running its own charon, configured with swanctl.conf as the site's
administrator would: policy-based (its prefix to blue's 10.0.0.0/24), accepting either gateway (both external
addresses and both identities, one key). Blue gets the site on both gateways over their REST APIs; only the
serving one holds the SA (gateway/strongswan.py `Charon.serve`).

Measured during a cut of the serving gateway (`site_failover`): the longest silence of a 20 Hz ping from b2 to
the site's host (the site's outage as the tenant sees it) and when the other gateway had its SA with the site.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nvfabric.gateway.strongswan import Charon, CharonFiles
from nvfabric.lab import netns
from nvfabric.lab.daemons import LoopThread, in_ns
from nvfabric.lab.failover import API, API_TOKEN, GW, HV, OTHER, Ping, TwoGateways, cut, default_pa
from nvfabric.lab.fabric import wait_for
from nvfabric.lab.gateway_scene import TENANTS
from nvfabric.lab.probe import Server

SITE_ADDRESS = "203.0.113.50"
SITE_PREFIX = "10.20.0.0/24"
SITE_HOST = ("10.20.0.10", 9000)
SITE_KEY = "blue-site-key-0123456789"
SITE_NS = "nvf-ha-site"
TENANT = TENANTS[0]  # blue; b2 (10.0.0.12) probes


def swanctl_conf() -> str:
    """The site's own configuration: either gateway may be its peer (the one that serves initiates)."""
    (_, ext1, _), (_, ext2, _) = GW["gw1"], GW["gw2"]
    return f"""connections {{
    gateway {{
        version = 2
        local_addrs = {SITE_ADDRESS}
        remote_addrs = {ext1}, {ext2}
        proposals = aes256gcm16-prfsha384-ecp384
        dpd_delay = 10s
        local {{
            auth = psk
            id = {SITE_ADDRESS}
        }}
        remote {{
            auth = psk
            id = %any
        }}
        children {{
            gateway {{
                local_ts = {SITE_PREFIX}
                remote_ts = 10.0.0.0/24
                esp_proposals = aes256gcm16
                dpd_action = clear
            }}
        }}
    }}
}}
secrets {{
    ike-gateways {{
        id-1 = {ext1}
        id-2 = {ext2}
        secret = {SITE_KEY}
    }}
}}
"""


def request(two: TwoGateways, name: str, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    """One request to a gateway's REST API from inside its namespace: (status, body)."""
    def go() -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{API[0]}:{API[1]}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {API_TOKEN}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
    return in_ns(two.gws[name].ns, go, timeout=90)


def put_blue(two: TwoGateways, with_site: bool) -> None:
    body = TENANT.as_dict()
    if with_site:
        body["sites"] = [{"name": "office", "remote_address": SITE_ADDRESS, "psk": SITE_KEY,
                          "prefixes": [SITE_PREFIX]}]
    for name in GW:
        status, said = request(two, name, "PUT", f"/v1/tenants/{TENANT.name}", body)
        if status not in (200, 201):
            raise RuntimeError(f"{name} refused blue's site: {status} {said.decode(errors='replace')}")


def site_sa(two: TwoGateways, name: str) -> dict[str, Any] | None:
    """Blue's site's IKE SA on gateway `name` when it is established with a child SA installed, else None."""
    tenant = two.gws[name].api(f"/v1/tenants/{TENANT.name}") or {}
    for site in (tenant.get("status") or {}).get("sites") or []:
        sa = site.get("sa")
        if sa and sa["state"] == "ESTABLISHED" and any(c["state"] == "INSTALLED" for c in sa["children"]):
            return sa
    return None


@dataclass
class Site:
    two: TwoGateways
    charon: Charon
    thread: LoopThread
    server: Server

    def sas(self) -> dict[str, Any]:
        return self.thread.run(self.charon.sas(), timeout=60)


@contextmanager
def site(two: TwoGateways, tmp: Path) -> Iterator[Site]:
    """The site up beside the two gateways and blue's site on both, its SA up with the serving gateway."""
    internet = two.fab.ns("internet")
    thread: LoopThread | None = None
    charon = Charon(SITE_NS, CharonFiles.named(SITE_NS))
    server: Server | None = None
    netns.create(SITE_NS)
    try:
        netns.ip_batch([netns.veth_line(internet, "site0", SITE_NS, "e0")])
        netns.ip_batch(["link set lo up", f"addr add {SITE_HOST[0]}/32 dev lo", f"addr add {SITE_ADDRESS}/32 dev e0",
                        "link set e0 up", "route add 203.0.113.1/32 dev e0", "route add default via 203.0.113.1"],
                       SITE_NS)
        netns.ip_batch(["link set site0 up", f"route add {SITE_ADDRESS}/32 dev site0"], internet)
        # the site's address is in the external link's prefix but not on it: the internet router answers ARP for
        # it (a route on the gateways instead would go with a link cut's flap)
        netns.run(["ip", "netns", "exec", internet, "sysctl", "-qw", "net.ipv4.ip_forward=1",
                   "net.ipv4.conf.br0.proxy_arp=1"])
        thread = LoopThread(SITE_NS)
        thread.run(charon.start(), timeout=60)
        conf = tmp / "site-swanctl.conf"
        conf.write_text(swanctl_conf())
        netns.run(["ip", "netns", "exec", SITE_NS, "swanctl", "--load-all", "--noprompt", "--file", str(conf),
                   "--uri", f"unix://{charon.files.socket}"])
        server = Server(SITE_NS, SITE_HOST, "site ")
        put_blue(two, with_site=True)
        wait_for(two.serving, 60, "one gateway serving every host")  # ('' while the hosts' routes disagree)
        serving = two.serving()
        wait_for(lambda: site_sa(two, serving) is not None, 120, f"{serving}'s SA with the site")
        yield Site(two, charon, thread, server)
    finally:
        try:
            put_blue(two, with_site=False)
        except Exception:  # noqa: BLE001 - teardown goes on (a gateway may be the failure)
            pass
        if server is not None:
            server.close()
        if thread is not None:
            try:
                thread.run(charon.stop(), timeout=30)
            finally:
                thread.close()
        netns.run(["ip", "netns", "exec", internet, "sysctl", "-qw", "net.ipv4.conf.br0.proxy_arp=0"], check=False)
        netns.destroy(SITE_NS)


@dataclass(frozen=True)
class SiteFailover:
    cut: str
    gateway: str  # the one cut (it was serving)
    gap: float  # the ping's longest silence to the site's host (s): the site's outage as the tenant sees it
    lost: int  # pings without a reply
    hosts: float  # s from the cut until every host's default route pointed at the other gateway
    sa: float  # s from the cut until the other gateway had its SA with the site (seen by its API)

    def describe(self) -> str:
        return (f"{self.cut} of {self.gateway}: hosts switched {self.hosts:.1f} s, the other's site SA up "
                f"{self.sa:.1f} s after the cut; longest ping silence to the site {self.gap:.2f} s, {self.lost} "
                "pings lost")


def site_failover(two: TwoGateways, kind: str, timeout: float) -> SiteFailover:
    """Cut the serving gateway (`kind` as lab/failover.py's `cut`) during a 20 Hz ping from b2 to the site's host;
    wait (within `timeout` s) until the hosts and the site's SA are with the other gateway and the ping answered
    for a second again. The cut gateway is left cut: lab/failover.py's `restore` it."""
    name = two.serving()
    assert name, "no gateway serves every host"
    other = OTHER[name]
    ping = Ping(two.fab.vm_ns["b2"], SITE_HOST[0])
    try:
        wait_for(lambda: len(ping.replies) >= 20, 30, "the ping to the site answered")
        t0 = time.time()
        cut(two, name, kind)
        pa = GW[other][0]
        for host in HV:
            wait_for(lambda h=host: default_pa(two.fab, h) == pa, timeout - (time.time() - t0),
                     f"default via {other} on {host}")
        hosts = time.time() - t0
        wait_for(lambda: site_sa(two, other) is not None, timeout - (time.time() - t0), f"{other}'s SA with the site")
        sa = time.time() - t0
        switched = time.time()
        wait_for(lambda: sum(1 for r in ping.replies if r > switched) >= 20, max(30.0, timeout - (time.time() - t0)),
                 "the ping to the site answered again")
    finally:
        lost = ping.stop()
    return SiteFailover(kind, name, ping.longest_silence(t0), lost, hosts, sa)
