"""GoBGP as the route reflector between two of our speakers (`nvfabric bgp speak` processes)."""

from __future__ import annotations

import signal

from tests.integration.conftest import need
from nvfabric.lab.peers import GOBGP_RR, GoBgp, Lab, Speaker, gobgp_rr_toml, segment, wait_for

RR = GOBGP_RR
H1, H2 = "198.51.100.1", "198.51.100.2"

ROUTE = {
    "type": "mac-ip", "rd": f"{H1}:1", "mac": "00:15:5d:01:02:03", "ip": "10.1.0.5", "vsid": 5001,
    "next_hop": H1, "route_targets": ["65000:5001"], "router_mac": "02:00:5e:10:00:01", "mobility_seq": 3,
}


def speaker_config(router_id: str, routes: list[dict], rr: str = RR) -> dict:
    return {
        "asn": 65000, "router_id": router_id, "hold_time": 9,
        "neighbours": [{"address": rr, "asn": 65000}],
        "routes": routes,
    }


def rr_topology(lab: Lab) -> tuple[str, str, str]:
    rr, h1, h2 = lab.namespace("rr"), lab.namespace("h1"), lab.namespace("h2")
    segment(lab, rr, {rr: [f"{RR}/24"], h1: [f"{H1}/24"], h2: [f"{H2}/24"]})
    return rr, h1, h2


def test_gobgp_reflects_our_evpn_routes_intact(lab: Lab):
    need("gobgpd", "gobgp")
    rr_ns, h1_ns, h2_ns = rr_topology(lab)
    gobgp = GoBgp(lab, rr_ns, "gobgp", gobgp_rr_toml([H1, H2]))
    h1 = Speaker(lab, h1_ns, "h1", speaker_config(H1, [ROUTE])).start()
    h2 = Speaker(lab, h2_ns, "h2", speaker_config(H2, [])).start()

    # Routes arrive at h2 intact: every field of the route value, as h1 announced it.
    learned = wait_for(lambda: h2.routes(), 20, what="h2 learns h1's route")
    assert list(learned.values()) == [{**ROUTE, "ethernet_tag": 0, "esi": "00" * 10, "sticky": False}]

    # GoBGP's own view: NVGRE encapsulation, label = VSID, the router's MAC.
    paths = wait_for(lambda: gobgp.evpn_rib(), 10, what="gobgp RIB")
    (path,) = paths
    nlri = path["nlri"]["value"]
    assert nlri["mac"] == ROUTE["mac"] and nlri["ip"] == ROUTE["ip"] and nlri["labels"] == [5001]
    communities = {a["type"]: a for a in path["attrs"]}[16]["value"]
    kinds = {(c.get("type"), c.get("subtype")): c for c in communities}
    assert kinds[(3, 12)]["tunnel_type"] == 9  # Encapsulation: NVGRE
    assert kinds[(6, 3)]["mac"] == ROUTE["router_mac"]  # Router's MAC (RFC 9135)
    assert kinds[(6, 0)]["sequence"] == 3  # MAC mobility
    assert kinds[(0, 2)]["value"] == "65000:5001"  # route target
    text = gobgp.cli("global", "rib", "-a", "evpn")
    assert "[NVGRE]" in text or "NVGRE" in text, text

    # Withdrawals propagate: h1 drops the route from its file and reloads.
    h1.config_path.write_text(_without_routes(h1))
    h1.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: not h2.routes(), 20, what="h2 sees the withdrawal")
    assert h2.changes("withdraw")[-1]["key"].startswith("mac-ip 198.51.100.1:1")
    wait_for(lambda: not gobgp.evpn_rib(), 10, what="gobgp RIB empty")


def _without_routes(speaker: Speaker) -> str:
    import yaml

    data = yaml.safe_load(speaker.config_path.read_text())
    data["routes"] = []
    return yaml.safe_dump(data)


def test_our_speaker_tears_down_gobgp_over_max_prefix(lab: Lab):
    """GoBGP reflects three routes to h2, whose limit is two: h2 sends Cease / Maximum Number of Prefixes
    Reached (RFC 4486: 6/1) with AFI, SAFI and the limit, and drops them."""
    need("gobgpd", "gobgp")
    rr_ns, h1_ns, h2_ns = rr_topology(lab)
    gobgp = GoBgp(lab, rr_ns, "gobgp", gobgp_rr_toml([H1, H2]))
    routes = [{**ROUTE, "mac": f"00:15:5d:01:02:{i:02x}", "ip": f"10.1.0.{i}"} for i in range(3)]
    h1 = Speaker(lab, h1_ns, "h1", speaker_config(H1, routes)).start()
    config = speaker_config(H2, [])
    config["neighbours"][0]["max_prefix"] = {"limit": 2, "action": "teardown", "restart": 60}
    h2 = Speaker(lab, h2_ns, "h2", config).start()
    # GoBGP's own log: the NOTIFICATION it received, with AFI 25 / SAFI 70 and the limit 2 as data.
    line = wait_for(lambda: next((x for x in gobgp.log.read_text().splitlines()
                                  if "received notification" in x and f"Key={H2}" in x), None),
                    30, what="GoBGP receives the NOTIFICATION")
    assert "Code=6" in line and "Subcode=1" in line and 'Data="[0 25 70 0 0 0 2]"' in line, line
    assert not h2.routes()
    assert gobgp.neighbor_state(H1) == "established"
    assert not any(x.get("event") == "down" for x in h1.lines)
