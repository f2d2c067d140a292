"""A tenant's site across a gateway failover, on lab/failover.py's two gateways: for
tests/kernel/test_gateway_failover.py.

The site is a namespace on the internet side (`SITE_ADDRESS`, its network `SITE_PREFIX` with the host
`SITE_HOST` and a TCP server on it) running its own charon, configured with swanctl.conf as the site's
administrator would: policy-based (its prefix to blue's 10.0.0.0/24), accepting either gateway (both external
addresses and both identities, one key). Its router (FRR, as shipped: graceful restart helper, default timers)
runs eBGP with the gateway across the tunnel and announces a second network, `BGP_LAN` with the host `BGP_HOST`,
over BGP only. Blue gets the site on both gateways over their REST APIs; only the serving one holds the SA
(gateway/strongswan.py `Charon.serve`).

Beside it blue has a GRE site (`GRE_NS`, the provider's router as a plain `ip link add type gre` with the GRE
site's network `GRE_LAN` behind it) whose tunnel's remote end is the gateways' shared `SITES_ADDRESS`: the site
knows one address, which the upstream (FRR on `internet`) routes to whichever gateway announces it.

Measured during a cut of the serving gateway (`site_failover`): the longest silence of a 20 Hz ping from b2 to
the site's host (the site's outage as the tenant sees it), of another to the host of the network learned over
BGP and of a third to the GRE site's host, when the other gateway had its SA with the site and when its session
had the site's network accepted.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nvfabric.gateway.strongswan import Charon, CharonFiles
from nvfabric.lab import netns
from nvfabric.lab.daemons import LoopThread, in_ns
from nvfabric.lab.failover import API, API_TOKEN, GW, HV, OTHER, SITES_ADDRESS, Ping, TwoGateways, cut, default_pa
from nvfabric.lab.fabric import ASN, wait_for
from nvfabric.lab.gateway_scene import TENANTS
from nvfabric.lab.peers import Frr, Lab
from nvfabric.lab.probe import Server

SITE_ADDRESS = "203.0.113.50"
SITE_PREFIX = "10.20.0.0/24"
SITE_HOST = ("10.20.0.10", 9000)
SITE_KEY = "blue-site-key-0123456789"
SITE_NS = "nvf-ha-site"
TENANT = TENANTS[0]  # blue; b2 (10.0.0.12) probes
# eBGP across the tunnel: the gateway's end and the site router's inside it (the same on both gateways: the site
# has one neighbour), and the site's network known by BGP only
BGP_LOCAL, BGP_PEER, BGP_AS = "10.255.0.1", "10.255.0.2", 65020
BGP_LAN, BGP_HOST = "10.30.0.0/24", ("10.30.0.10", 9000)
# the GRE site: its router's address, the tunnel's key, its network and a host on it
GRE_NS = "nvf-ha-gre"
GRE_ADDRESS, GRE_KEY = "203.0.113.60", 4711
GRE_LAN, GRE_HOST = "10.40.0.0/24", ("10.40.0.10", 9000)


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
                local_ts = {SITE_PREFIX}, {BGP_LAN}, {BGP_PEER}/32
                remote_ts = 10.0.0.0/24, {BGP_LOCAL}/32
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


def frr_site_conf() -> str:
    """bgpd.conf of the site's router: one neighbour, the gateway's inside address (whichever gateway serves),
    FRR's default timers and graceful restart mode (helper); its network announced. The gateway is not on a
    connected prefix of a policy-based site: its next hop resolves over the default route, into the policy."""
    return "\n".join([
        "hostname site", "ip nht resolve-via-default", f"router bgp {BGP_AS}", f" bgp router-id {BGP_PEER}",
        " no bgp ebgp-requires-policy", " no bgp network import-check",
        f" neighbor {BGP_LOCAL} remote-as {ASN}", f" neighbor {BGP_LOCAL} update-source {BGP_PEER}",
        f" neighbor {BGP_LOCAL} disable-connected-check",
        " address-family ipv4 unicast", f"  network {BGP_LAN}", " exit-address-family", ""])


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
                          "prefixes": [SITE_PREFIX],
                          "bgp": {"peer_address": BGP_PEER, "peer_as": BGP_AS, "local_address": f"{BGP_LOCAL}/30"}},
                         {"name": "depot", "kind": "gre", "remote_address": GRE_ADDRESS, "key": GRE_KEY,
                          "prefixes": [GRE_LAN]}]
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


def site_bgp(two: TwoGateways, name: str) -> dict[str, Any]:
    """Blue's site's BGP session on gateway `name` as its API shows it ({} when it has none)."""
    tenant = two.gws[name].api(f"/v1/tenants/{TENANT.name}") or {}
    for site in (tenant.get("status") or {}).get("sites") or []:
        return site.get("bgp") or {}
    return {}


def gre_packets(two: TwoGateways, name: str) -> tuple[int, int]:
    """(received, sent) packets of blue's GRE site's tunnel device on gateway `name` (`nvf-g...`, its only one)."""
    out = netns.run(["ip", "-n", two.gws[name].ns, "-s", "-j", "link", "show"]).output
    rx = tx = 0
    for link in json.loads(out):
        if link["ifname"].startswith("nvf-g"):
            rx += link["stats64"]["rx"]["packets"]
            tx += link["stats64"]["tx"]["packets"]
    return rx, tx


def bgp_learned(two: TwoGateways, name: str) -> bool:
    """Gateway `name`'s session with the site is up and has the site's network accepted."""
    session = site_bgp(two, name)
    return session.get("state") == "established" and BGP_LAN in session.get("accepted", [])


@dataclass
class Site:
    two: TwoGateways
    charon: Charon
    thread: LoopThread
    server: Server
    frr: Frr

    def learned_from_gateway(self) -> dict[str, Any]:
        """The site router's session with the gateway: its state, the router id of the gateway on the other end,
        and the tenant's prefixes it has from it (prefix -> stale)."""
        neighbor = self.frr.json(f"show bgp neighbors {BGP_LOCAL}").get(BGP_LOCAL, {})
        routes = self.frr.json("show bgp ipv4 unicast").get("routes", {})
        learned = {p: any(h.get("stale", False) for h in paths) for p, paths in routes.items()
                   if any(h.get("peerId") == BGP_LOCAL for h in paths)}
        return {"state": neighbor.get("bgpState", ""), "router_id": neighbor.get("remoteRouterId", ""),
                "prefixes": learned}

    def sas(self) -> dict[str, Any]:
        return self.thread.run(self.charon.sas(), timeout=60)


@contextmanager
def site(two: TwoGateways, tmp: Path) -> Iterator[Site]:
    """The site up beside the two gateways and blue's site on both, its SA up with the serving gateway."""
    internet = two.fab.ns("internet")
    thread: LoopThread | None = None
    charon = Charon(SITE_NS, CharonFiles.named(SITE_NS))
    server: Server | None = None
    bgp_server: Server | None = None
    gre_server: Server | None = None
    peers = Lab(tmp=tmp, prefix="")
    netns.create(SITE_NS)
    netns.create(GRE_NS)
    try:
        netns.ip_batch([netns.veth_line(internet, "site0", SITE_NS, "e0")])
        netns.ip_batch(["link set lo up", f"addr add {SITE_HOST[0]}/32 dev lo", f"addr add {BGP_HOST[0]}/32 dev lo",
                        f"addr add {BGP_PEER}/32 dev lo", f"addr add {SITE_ADDRESS}/32 dev e0",
                        "link set e0 up", "route add 203.0.113.1/32 dev e0", "route add default via 203.0.113.1"],
                       SITE_NS)
        netns.ip_batch(["link set site0 up", f"route add {SITE_ADDRESS}/32 dev site0"], internet)
        # the GRE site: a plain GRE tunnel to the gateways' shared address (no `gre0` veth name: that is the GRE
        # module's fallback device in every namespace)
        netns.ip_batch([netns.veth_line(internet, "site1", GRE_NS, "e0")])
        netns.ip_batch(["link set lo up", f"addr add {GRE_HOST[0]}/32 dev lo", f"addr add {GRE_ADDRESS}/32 dev e0",
                        "link set e0 up", "route add 203.0.113.1/32 dev e0", "route add default via 203.0.113.1",
                        f"link add gt type gre local {GRE_ADDRESS} remote {SITES_ADDRESS} key {GRE_KEY} ttl 64",
                        "link set gt up", "route add 10.0.0.0/24 dev gt"], GRE_NS)
        netns.ip_batch(["link set site1 up", f"route add {GRE_ADDRESS}/32 dev site1"], internet)
        # the site's address is in the external link's prefix but not on it: the internet router answers ARP for
        # it (a route on the gateways instead would go with a link cut's flap)
        # (answered at once: the kernel's default delays a proxy answer by up to 0.8 s, which a real upstream, routing
        # the sites itself, does not add to a gateway's first packet towards a site)
        netns.run(["ip", "netns", "exec", internet, "sysctl", "-qw", "net.ipv4.ip_forward=1",
                   "net.ipv4.conf.br0.proxy_arp=1", "net.ipv4.neigh.br0.proxy_delay=0"])
        thread = LoopThread(SITE_NS)
        thread.run(charon.start(), timeout=60)
        conf = tmp / "site-swanctl.conf"
        conf.write_text(swanctl_conf())
        netns.run(["ip", "netns", "exec", SITE_NS, "swanctl", "--load-all", "--noprompt", "--file", str(conf),
                   "--uri", f"unix://{charon.files.socket}"])
        server = Server(SITE_NS, SITE_HOST, "site ")
        bgp_server = Server(SITE_NS, BGP_HOST, "site-bgp ")
        gre_server = Server(GRE_NS, GRE_HOST, "gre ")
        frr = Frr(peers, SITE_NS, "site", frr_site_conf())
        put_blue(two, with_site=True)
        wait_for(two.serving, 60, "one gateway serving every host")  # ('' while the hosts' routes disagree)
        serving = two.serving()
        wait_for(lambda: site_sa(two, serving) is not None, 120, f"{serving}'s SA with the site")
        wait_for(lambda: bgp_learned(two, serving), 120, f"{serving}'s session with the site's router")
        yield Site(two, charon, thread, server, frr)
    finally:
        try:
            put_blue(two, with_site=False)
        except Exception:  # noqa: BLE001 - teardown goes on (a gateway may be the failure)
            pass
        for s in (server, bgp_server, gre_server):
            if s is not None:
                s.close()
        peers.close()
        if thread is not None:
            try:
                thread.run(charon.stop(), timeout=30)
            finally:
                thread.close()
        netns.run(["ip", "netns", "exec", internet, "sysctl", "-qw", "net.ipv4.conf.br0.proxy_arp=0",
                   "net.ipv4.neigh.br0.proxy_delay=80"], check=False)
        netns.destroy(SITE_NS)
        netns.destroy(GRE_NS)


@dataclass(frozen=True)
class SiteFailover:
    cut: str
    gateway: str  # the one cut (it was serving)
    gap: float  # the ping's longest silence to the site's host (s): the site's outage as the tenant sees it
    lost: int  # pings without a reply
    hosts: float  # s from the cut until every host's default route pointed at the other gateway
    sa: float  # s from the cut until the other gateway had its SA with the site (seen by its API)
    bgp_gap: float  # the longest silence of the ping to the host of the network learned over BGP
    bgp_lost: int
    bgp: float  # s from the cut until the other gateway's session had the site's network accepted (its API)
    at: float = 0.0  # wall clock of the cut
    gre_gap: float = 0.0  # the longest silence of the ping to the GRE site's host
    gre_lost: int = 0

    def describe(self) -> str:
        return (f"{self.cut} of {self.gateway}: hosts switched {self.hosts:.1f} s, the other's site SA up "
                f"{self.sa:.1f} s and its BGP session with the site's network {self.bgp:.1f} s after the cut; "
                f"longest ping silence to the site's static prefix {self.gap:.2f} s ({self.lost} pings lost), to "
                f"its prefix learned over BGP {self.bgp_gap:.2f} s ({self.bgp_lost} lost), to the GRE site's host "
                f"{self.gre_gap:.2f} s ({self.gre_lost} lost)")


def site_failover(two: TwoGateways, kind: str, timeout: float, bgp_timeout: float = 240.0) -> SiteFailover:
    """Cut the serving gateway (`kind` as lab/failover.py's `cut`) during two 20 Hz pings from b2, to the site's
    host and to the host of its network learned over BGP; wait (within `timeout` s) until the hosts and the site's
    SA are with the other gateway and the ping answered for a second again, and (within `bgp_timeout` s of the
    cut) until the other's session has the site's network and that ping answered for a second again too. The cut
    gateway is left cut: lab/failover.py's `restore` it."""
    name = two.serving()
    assert name, "no gateway serves every host"
    other = OTHER[name]
    ping = Ping(two.fab.vm_ns["b2"], SITE_HOST[0])
    bgp_ping = Ping(two.fab.vm_ns["b2"], BGP_HOST[0])
    gre_ping = Ping(two.fab.vm_ns["b2"], GRE_HOST[0])
    try:
        wait_for(lambda: len(ping.replies) >= 20, 30, "the ping to the site answered")
        wait_for(lambda: len(bgp_ping.replies) >= 20, 30, "the ping to the site's network known by BGP answered")
        wait_for(lambda: len(gre_ping.replies) >= 20, 30, "the ping to the GRE site answered")
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
        wait_for(lambda: sum(1 for r in gre_ping.replies if r > switched) >= 20,
                 max(30.0, timeout - (time.time() - t0)), "the ping to the GRE site answered again")
        wait_for(lambda: bgp_learned(two, other), bgp_timeout - (time.time() - t0),
                 f"{other}'s session with the site's network")
        bgp = time.time() - t0
        learned = time.time()
        wait_for(lambda: sum(1 for r in bgp_ping.replies if r > learned) >= 20,
                 max(30.0, bgp_timeout - (time.time() - t0)), "the ping to the site's network known by BGP answered")
    finally:
        lost = ping.stop()
        bgp_lost = bgp_ping.stop()
        gre_lost = gre_ping.stop()
    return SiteFailover(kind, name, ping.longest_silence(t0), lost, hosts, sa, bgp_ping.longest_silence(t0),
                        bgp_lost, bgp, t0, gre_ping.longest_silence(t0), gre_lost)


# what a gateway logs on the way to its session with the site (gateway/sitepeers.py, bgp/session.py, bgp/speaker.py)
SESSION_EVENTS = ("took over", "its SA is up", f"peer {BGP_PEER}")


def session_log(two: TwoGateways, name: str, since: float) -> list[tuple[float, str]]:
    """Gateway `name`'s log lines about its session with the site from `since` (wall clock) on: (seconds after
    `since`, message). The gateways log JSON lines (not a terminal)."""
    out = []
    for line in two.gws[name].log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
            stamp = datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        message = str(entry.get("msg", ""))
        if stamp >= since and any(e in message for e in SESSION_EVENTS):
            out.append((stamp - since, message))
    return out
