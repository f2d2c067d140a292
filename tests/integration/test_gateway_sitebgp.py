"""The gateway's eBGP session with a tenant's site router (gateway/sitepeers.py) against FRR, on this machine's
kernel. This kernel has no VRF nor XFRM interface: the tenant's VRF device is stood in for by a veth of its name
(`nvf-blue`, the device the session's socket is bound to) and the tunnel by that veth to the site's namespace
(the VM test, tests/kernel/test_gateway_sites.py, has both). What the site announces is learned and judged,
the tenant's subnet is announced to it, a site over max_prefixes is torn down, and a site without bgp has no
session; and the fabric side announces what is accepted as type-5 routes to a reflector.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from ipaddress import ip_network
from typing import Any

from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.evpn import Fabric
from nvfabric.gateway.sitebgp import Verdict, judge
from nvfabric.gateway.sitepeers import SitePeers
from nvfabric.gateway.tenants import Tenant
from nvfabric.lab import netns
from nvfabric.lab.daemons import LoopThread
from nvfabric.lab.peers import Frr, Lab, RouteReflector, add_veth, segment, wait_for

LOCAL, PEER = "10.255.0.1", "10.255.0.2"
KEY = "a-site-key-of-24-chars!!"
SITE = {"name": "office", "remote_address": "203.0.113.50", "psk": KEY, "prefixes": ["10.20.0.0/24"],
        "bgp": {"peer_address": PEER, "peer_as": 65020, "local_address": f"{LOCAL}/30", "hold_time": 9,
                "max_prefixes": 3}}
BLUE = {"name": "blue", "route_targets": ["65000:1"], "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}]}
FRR_CONF = "\n".join([
    "hostname site", "router bgp 65020", f" bgp router-id {PEER}", " no bgp ebgp-requires-policy",
    " no bgp network import-check", f" neighbor {LOCAL} remote-as 65000", f" neighbor {LOCAL} timers 3 9",
    f" neighbor {LOCAL} timers connect 2",
    # its own network, and two it must not be believed on: the tenant's subnet and a default route
    " address-family ipv4 unicast", "  network 10.30.0.0/24", "  network 10.0.0.0/24", "  network 0.0.0.0/0",
    " exit-address-family", ""])


def from_gateway(frr: Frr) -> set[str]:
    routes = frr.json("show bgp ipv4 unicast").get("routes", {})
    return {p for p, paths in routes.items() if any(h.get("peerId") == LOCAL for h in paths)}


def test_a_site_router_is_learned_judged_and_told_the_tenants_subnets(lab: Lab) -> None:
    gw, site = lab.namespace("gw"), lab.namespace("site")
    add_veth(gw, "nvf-blue", site, "e0")
    netns.run(["ip", "-n", gw, "addr", "add", f"{LOCAL}/30", "dev", "nvf-blue"])
    netns.run(["ip", "-n", site, "addr", "add", f"{PEER}/30", "dev", "e0"])
    frr = Frr(lab, site, "site", FRR_CONF)
    tenant = Tenant.from_dict({**BLUE, "sites": [SITE]})
    changes: list[str] = []
    thread = LoopThread(gw)
    peers = SitePeers(65000, "198.51.100.21", 90, changes.append)

    async def learned() -> dict:
        return peers.learned("blue")

    async def status() -> dict | None:
        return peers.status("blue", "office")

    try:
        thread.run(peers.put("blue", tenant))
        verdict = lambda: judge(tenant, thread.run(learned()))["office"]  # noqa: E731
        wait_for(lambda: len(verdict().accepted) + len(verdict().refused) == 3, 30, what="the site's three routes")
        assert [str(p) for p in verdict().accepted] == ["10.30.0.0/24"]
        assert sorted(str(p) for p, _ in verdict().refused) == ["0.0.0.0/0", "10.0.0.0/24"]
        assert changes and set(changes) == {"blue"}
        assert thread.run(status()) == {"peer": PEER, "peer_as": 65020, "local_as": 65000, "state": "established",
                                        "announced": 1}
        wait_for(lambda: from_gateway(frr) == {"10.0.0.0/24"}, 30, what="FRR learns the tenant's subnet")
        frr_path = frr.json("show bgp ipv4 unicast 10.0.0.0/24")["paths"]
        assert any(p.get("aspath", {}).get("string") == "65000" and p.get("nexthops", [{}])[0].get("ip") == LOCAL
                   for p in frr_path), frr_path
        # a fourth route: over max_prefixes (3), the gateway tears the session down and forgets the site's routes
        netns.run(netns.in_netns(site, ["vtysh", "--vty_socket", str(frr.dir), "-c", "configure terminal",
                                        "-c", "router bgp 65020", "-c", "address-family ipv4 unicast",
                                        "-c", "network 10.31.0.0/24"]))
        wait_for(lambda: thread.run(learned()) == {"office": ()}, 30, what="the site's routes dropped")
        assert thread.run(status())["state"] != "established"
        # bgp taken off the site: no session (nor routes) any more
        thread.run(peers.put("blue", Tenant.from_dict({**BLUE, "sites": [{**SITE, "bgp": None}]})))
        assert thread.run(status()) is None and thread.run(learned()) == {}
    finally:
        thread.run(peers.stop())
        thread.close()


RR, GW = "198.51.100.100", "198.51.100.21"


def type5(rr: RouteReflector) -> dict[str, str] | None:
    """The prefixes of blue's VSID the reflector holds, and their next hops (None: its API did not answer)."""
    body = rr.get("/v1/routes")
    if body is None:
        return None
    return {r["prefix"]: r["next_hop"] for r in body["routes"] if r.get("vsid") == 5001 and "prefix" in r}


def test_the_accepted_prefixes_reach_the_fabric_as_type5_routes_to_the_gateway(lab: Lab) -> None:
    """The gateway's fabric side (gateway/evpn.py) with `nvfabric rr`: what the site announces, judged, is in the
    reflector's table as type-5 routes with the gateway's PA as next hop, beside the tenant's default route and
    the site's static prefix; the hostile ones are not; a prefix the site withdraws is withdrawn."""
    rr_ns, gw_ns = lab.namespace("rr"), lab.namespace("gw")
    segment(lab, rr_ns, {rr_ns: [f"{RR}/24"], gw_ns: [f"{GW}/24"]})
    rr = RouteReflector(lab, rr_ns, "rr", {
        "asn": 65000, "router_id": RR, "cluster_id": RR, "hold_time": 9, "listen": {"address": RR, "port": 179},
        "neighbors": [{"prefix": "198.51.100.0/24", "asn": 65000, "client": True}]})
    config = GatewayConfig.from_dict({
        "asn": 65000, "router_id": GW, "provider_addresses": [GW], "provider_prefixes": ["198.51.100.0/24"],
        "route_reflectors": [{"address": RR}], "external": {"interfaces": ["ext"], "address4": "203.0.113.2"},
        "tenants": [{**BLUE, "snat": ["203.0.113.140"], "sites": [SITE]}]})
    tenant = config.tenants[0]
    announced = {"office": (ip_network("10.30.0.0/24"), ip_network("10.0.0.0/24"), ip_network("0.0.0.0/0"),
                            ip_network("10.0.0.0/8"))}

    async def no_records(records: object) -> None:
        del records

    thread = LoopThread(gw_ns)
    fabric = Fabric(config, on_records=no_records)
    fabric.site_learned = lambda name: announced if name == "blue" else {}
    try:
        thread.run(fabric.start({"blue": tenant}))
        want = {"0.0.0.0/0": GW, "10.20.0.0/24": GW, "10.30.0.0/24": GW}
        wait_for(lambda: type5(rr) == want, 30, what="the site's prefixes in the fabric")
        announced["office"] = (ip_network("0.0.0.0/0"),)  # the site withdrew 10.30.0.0/24
        thread.run(fabric.update({"blue": tenant}, {"blue": tenant}))
        wait_for(lambda: type5(rr) == {"0.0.0.0/0": GW, "10.20.0.0/24": GW}, 30, what="10.30.0.0/24 withdrawn")
    finally:
        thread.run(fabric.stop())
        thread.close()


# ------------------------------------------------------------------------------------- across a failover
# Two gateways with the same tunnel address, each a SitePeers on its own veth to the site (standing in for its
# tunnel); the site's router (FRR as shipped: default timers, graceful restart helper) has one neighbour, routed
# to gw1 first, then to gw2, as a site's SA moves to the gateway that serves.
GW_ROUTER_ID = {"gw1": "198.51.100.21", "gw2": "198.51.100.22"}
FRR_FAILOVER_CONF = "\n".join([
    "hostname site", "router bgp 65020", f" bgp router-id {PEER}", " no bgp ebgp-requires-policy",
    " no bgp network import-check", f" neighbor {LOCAL} remote-as 65000", f" neighbor {LOCAL} update-source {PEER}",
    f" neighbor {LOCAL} disable-connected-check",
    " address-family ipv4 unicast", "  network 10.30.0.0/24", " exit-address-family", ""])


def frr_session(frr: Frr) -> tuple[str, str, dict[str, bool]]:
    """The site router's session with the gateway address: its state, the router id on the other end, and the
    prefixes it has from it (prefix -> stale)."""
    neighbor = frr.json(f"show bgp neighbors {LOCAL}").get(LOCAL, {})
    routes = frr.json("show bgp ipv4 unicast").get("routes", {})
    learned = {p: any(h.get("stale", False) for h in paths) for p, paths in routes.items()
               if any(h.get("peerId") == LOCAL for h in paths)}
    return neighbor.get("bgpState", ""), neighbor.get("remoteRouterId", ""), learned


def test_the_sites_router_takes_the_new_serving_gateways_session_at_once(lab: Lab) -> None:
    """Only the serving gateway runs the site's session. gw1's link is cut (no FIN, no NOTIFICATION: the site's
    router still holds its session Established) and gw2 starts serving: the site's router takes gw2's connection
    as gw1 restarting (graceful restart), long before its hold timer (90 s) would have let it, and keeps the
    tenant's prefix meanwhile; gw2 learns the site's network."""
    site = lab.namespace("site")
    gws = {name: lab.namespace(name) for name in GW_ROUTER_ID}
    netns.run(["ip", "-n", site, "addr", "add", f"{PEER}/32", "dev", "lo"])
    for i, ns in enumerate(gws.values(), 1):
        add_veth(ns, "nvf-blue", site, f"e{i}")
        netns.run(["ip", "-n", ns, "addr", "add", f"{LOCAL}/30", "dev", "nvf-blue"])
    netns.run(["ip", "-n", site, "route", "add", f"{LOCAL}/32", "dev", "e1"])
    frr = Frr(lab, site, "site", FRR_FAILOVER_CONF)
    tenant = Tenant.from_dict({**BLUE, "sites": [{**SITE, "bgp": {**SITE["bgp"], "hold_time": None,
                                                                  "max_prefixes": 10}}]})
    threads = {name: LoopThread(ns) for name, ns in gws.items()}
    peers = {name: SitePeers(65000, rid, 90, lambda _: None, serving=name == "gw1")
             for name, rid in GW_ROUTER_ID.items()}

    def on(name: str, fn: Callable[[SitePeers], Any]) -> Any:
        """fn(gateway's SitePeers) on its loop; awaited when it is a coroutine."""
        async def call() -> Any:
            result = fn(peers[name])
            return await result if asyncio.iscoroutine(result) else result
        return threads[name].run(call())

    def accepted(name: str) -> list:
        """What gateway `name` learned from the site, judged (the site's router also sends back what it learned)."""
        return list(judge(tenant, on(name, lambda p: p.learned("blue"))).get("office", Verdict()).accepted)

    try:
        for name in gws:
            on(name, lambda p: p.put("blue", tenant))
        assert on("gw2", lambda p: p.status("blue", "office")) is None, "the standby runs no session"
        wait_for(lambda: frr_session(frr) == ("Established", GW_ROUTER_ID["gw1"], {"10.0.0.0/24": False}), 60,
                 what="the site's router learns blue's subnet from gw1")
        wait_for(lambda: accepted("gw1") == [ip_network("10.30.0.0/24")], 30, what="gw1 learns the site's network")
        # gw1 cut: its link goes (the site's router notices nothing), the site's route moves to gw2, gw2 serves and
        # its SA comes up
        netns.run(["ip", "-n", gws["gw1"], "link", "set", "nvf-blue", "down"])
        netns.run(["ip", "-n", site, "route", "replace", f"{LOCAL}/32", "dev", "e2"])
        assert frr_session(frr)[:2] == ("Established", GW_ROUTER_ID["gw1"])
        on("gw2", lambda p: p.serve(True))
        on("gw2", lambda p: p.sa_up("blue.office"))
        wait_for(lambda: frr_session(frr) == ("Established", GW_ROUTER_ID["gw2"], {"10.0.0.0/24": False}), 30,
                 what="the site's router takes gw2's session and blue's subnet from it")
        wait_for(lambda: accepted("gw2") == [ip_network("10.30.0.0/24")], 30, what="gw2 learns the site's network")
        # gw1, restored, stands by: no session
        on("gw1", lambda p: p.serve(False))
        assert on("gw1", lambda p: p.status("blue", "office")) is None and on("gw1", lambda p: p.learned("blue")) == {}
    finally:
        for name in gws:
            on(name, lambda p: p.stop())
            threads[name].close()
