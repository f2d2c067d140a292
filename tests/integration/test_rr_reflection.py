"""`nvfabric rr` as the reflector between our speakers, GoBGP and FRR, each a process in its namespace."""

from __future__ import annotations

import yaml

from nvfabric.lab import netns
from tests.integration.conftest import need
from nvfabric.lab.peers import Frr, GoBgp, Lab, RouteReflector, Speaker, segment, wait_for
from tests.integration.test_bgp_frr import FRR_BINARIES
from tests.integration.test_bgp_gobgp import ROUTE

RR, H1, H2, GO, FR = "198.51.100.100", "198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4"
GOBGP_MAC = "02:00:00:00:00:77"


def rr_config(neighbors: list[dict], **extra) -> dict:
    return {"asn": 65000, "router_id": RR, "cluster_id": RR, "hold_time": 9,
            "listen": {"address": RR, "port": 179}, "neighbors": neighbors, **extra}


CLIENTS = [{"prefix": "198.51.100.0/24", "asn": 65000, "client": True}]


def client_config(router_id: str, routes: list[dict], rrs: tuple[str, ...] = (RR,)) -> dict:
    return {"asn": 65000, "router_id": router_id, "hold_time": 9, "routes": routes,
            "neighbours": [{"address": rr, "asn": 65000} for rr in rrs]}


def gobgp_client_toml() -> str:
    return f"""[global.config]
  as = 65000
  router-id = "{GO}"
  port = -1
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{RR}"
    peer-as = 65000
  [neighbors.timers.config]
    hold-time = 9
    keepalive-interval = 3
    connect-retry = 1
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "l2vpn-evpn"
"""


def frr_client_conf() -> str:
    return "\n".join([
        "hostname f1", "router bgp 65000", f" bgp router-id {FR}", " no bgp default ipv4-unicast",
        f" neighbor {RR} remote-as 65000", f" neighbor {RR} timers 3 9", f" neighbor {RR} timers connect 1",
        " address-family l2vpn evpn", f"  neighbor {RR} activate", " exit-address-family", ""])


def macs(speaker: Speaker) -> set[str]:
    return {route["mac"] for route in speaker.routes().values()}


def test_reflection_between_our_gobgp_and_frr_clients(lab: Lab):
    need("gobgpd", "gobgp", *FRR_BINARIES)
    rr_ns, h1_ns, h2_ns, go_ns, fr_ns = (lab.namespace(n) for n in ("rr", "h1", "h2", "go", "fr"))
    segment(lab, rr_ns, {rr_ns: [f"{RR}/24"], h1_ns: [f"{H1}/24"], h2_ns: [f"{H2}/24"], go_ns: [f"{GO}/24"],
                         fr_ns: [f"{FR}/24"]})
    rr = RouteReflector(lab, rr_ns, "rr", rr_config(CLIENTS))
    h1 = Speaker(lab, h1_ns, "h1", client_config(H1, [ROUTE])).start()
    h2 = Speaker(lab, h2_ns, "h2", client_config(H2, [])).start()
    gobgp = GoBgp(lab, go_ns, "gobgp", gobgp_client_toml())
    frr = Frr(lab, fr_ns, "f1", frr_client_conf())

    # Ours -> ours, GoBGP and FRR, with ORIGINATOR_ID and CLUSTER_LIST (RFC 4456 section 8).
    wait_for(lambda: macs(h2) == {ROUTE["mac"]}, 30, what="h1's route at h2")
    wait_for(lambda: any(ROUTE["mac"] in str(p) for p in gobgp.evpn_rib()), 30, what="h1's route at GoBGP")
    detail = wait_for(lambda: (lambda t: t if ROUTE["mac"] in t else "")(
        frr.vtysh("show bgp l2vpn evpn route detail")), 30, what="h1's route at FRR")
    assert f"Originator: {H1}" in detail and f"Cluster list: {RR}" in detail, detail
    assert "Encapsulation type: 9" in detail or "NVGRE" in detail or "ET:9" in detail, detail
    assert macs(h1) == set()  # never reflected back to its source

    # GoBGP -> ours and FRR.
    gobgp.cli("global", "rib", "-a", "evpn", "add", "macadv", GOBGP_MAC, "10.1.0.77", "etag", "0", "label", "5002",
              "rd", f"{GO}:5002", "rt", "65000:5002", "encap", "nvgre", "nexthop", GO)
    wait_for(lambda: GOBGP_MAC in macs(h1) and GOBGP_MAC in macs(h2), 20, what="GoBGP's route at h1 and h2")
    wait_for(lambda: GOBGP_MAC in frr.vtysh("show bgp l2vpn evpn route"), 20, what="GoBGP's route at FRR")
    got = next(r for r in h2.routes().values() if r["mac"] == GOBGP_MAC)
    assert got["vsid"] == 5002 and got["next_hop"] == GO and got["route_targets"] == ["65000:5002"]

    # The API and the status table see all four clients.
    assert rr.established(H1, H2, GO, FR)
    routes = rr.get("/v1/routes?vsid=5002")["routes"]
    assert [(r["mac"], r["source"]) for r in routes] == [(GOBGP_MAC, GO)]
    table = netns.run(netns.in_netns(rr_ns, [*rr.proc.argv[:3], "rr", "status", "--api", rr.api,
                                                  "--token", rr.token])).output
    for address in (H1, H2, GO, FR):
        assert address in table
    assert "established" in table

    # A withdrawal reaches everyone.
    config = yaml.safe_load(h1.config_path.read_text())
    h1.config_path.write_text(yaml.safe_dump({**config, "routes": []}))
    h1.reload()
    wait_for(lambda: macs(h2) == {GOBGP_MAC}, 20, what="the withdrawal at h2")
    wait_for(lambda: ROUTE["mac"] not in frr.vtysh("show bgp l2vpn evpn route"), 20, what="the withdrawal at FRR")
    wait_for(lambda: not any(ROUTE["mac"] in str(p) for p in gobgp.evpn_rib()), 20, what="the withdrawal at GoBGP")
