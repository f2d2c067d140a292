"""FRR (zebra + bgpd) as the route reflector between two of our speakers; TCP-MD5 with FRR."""

from __future__ import annotations

import json
import time

from tests.integration.conftest import need
from nvfabric.lab.peers import Frr, Lab, Speaker, segment, wait_for

RR, RR6 = "198.51.100.254", "2001:db8::254"
H1, H2 = "198.51.100.1", "198.51.100.2"
H1_6, H2_6 = "2001:db8::1", "2001:db8::2"
FRR_BINARIES = ("/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "vtysh")

V4_ROUTE = {
    "type": "mac-ip", "rd": f"{H1}:1", "mac": "00:15:5d:01:02:03", "ip": "10.1.0.5", "vsid": 5001,
    "next_hop": H1, "route_targets": ["65000:5001"], "router_mac": "02:00:5e:10:00:01", "mobility_seq": 2,
}
# An IPv6 customer address announced with an IPv6 provider address as next hop.
V6_ROUTE = {
    "type": "mac-ip", "rd": f"{H1}:1", "mac": "00:15:5d:01:02:04", "ip": "fd00:b::10", "vsid": 5001,
    "next_hop": H1_6, "route_targets": ["65000:5001"], "router_mac": "02:00:5e:10:00:01",
}
PREFIX_ROUTE = {
    "type": "prefix", "rd": f"{H1}:1", "prefix": "fd00:c::/64", "vsid": 5001, "next_hop": H1_6,
    "route_targets": ["65000:5001"], "router_mac": "02:00:5e:10:00:01",
}


def frr_rr_conf(clients: dict[str, str | None]) -> str:
    """bgpd.conf for a reflector; `clients` maps each client address to its TCP-MD5 password (or None)."""
    lines = [
        "hostname rr", "router bgp 65000", f" bgp router-id {RR}", f" bgp cluster-id {RR}",
        " no bgp default ipv4-unicast", " bgp graceful-restart",
    ]
    for address, password in clients.items():
        lines += [f" neighbor {address} remote-as 65000", f" neighbor {address} timers 3 9",
                  f" neighbor {address} timers connect 2"]
        if password:
            lines.append(f" neighbor {address} password {password}")
    lines.append(" address-family l2vpn evpn")
    for address in clients:
        lines += [f"  neighbor {address} activate", f"  neighbor {address} route-reflector-client"]
    lines += [" exit-address-family", ""]
    return "\n".join(lines)


def speaker_config(router_id: str, rr: str, routes: list[dict], password: str | None = None,
                   listen: bool = False, passive: bool = False) -> dict:
    neighbor = {"address": rr, "asn": 65000, "passive": passive}
    if password:
        neighbor["md5_password"] = password
    cfg = {"asn": 65000, "router_id": router_id, "hold_time": 9, "neighbours": [neighbor], "routes": routes,
           "graceful_restart": {"restart_time": 30}}
    if listen:
        # FRR dials us: the key must be on our listening socket too.
        cfg["listen"] = {"address": router_id}
    return cfg


def frr_lab(lab: Lab, clients: dict[str, str | None]) -> tuple[Frr, str, str]:
    need(*FRR_BINARIES)
    rr, h1, h2 = lab.namespace("rr"), lab.namespace("h1"), lab.namespace("h2")
    segment(lab, rr, {rr: [f"{RR}/24", f"{RR6}/64"], h1: [f"{H1}/24", f"{H1_6}/64"], h2: [f"{H2}/24", f"{H2_6}/64"]})
    return Frr(lab, rr, "rr", frr_rr_conf(clients)), h1, h2


def full(route: dict) -> dict:
    """The route as `speak` prints it: the file's fields plus the defaults."""
    defaults = {"ethernet_tag": 0, "esi": "00" * 10, "router_mac": None}
    if route["type"] == "mac-ip":
        defaults |= {"sticky": False, "mobility_seq": 0}
    else:
        defaults |= {"gateway_ip": "::" if ":" in route["prefix"] else "0.0.0.0"}
    return {**defaults, **route}


def test_frr_reflects_ipv4_and_ipv6_routes_with_ipv6_next_hops(lab: Lab):
    frr, h1_ns, h2_ns = frr_lab(lab, {H1: None, H2_6: None})
    h1 = Speaker(lab, h1_ns, "h1", speaker_config(H1, RR, [V4_ROUTE, V6_ROUTE, PREFIX_ROUTE])).start()
    # h2 talks to the reflector over IPv6.
    h2 = Speaker(lab, h2_ns, "h2", speaker_config(H2, RR6, [])).start()

    learned = wait_for(lambda: len(h2.routes()) == 3 and h2.routes(), 30, what="h2 learns 3 routes via FRR")
    canonical = lambda routes: sorted(json.dumps(r, sort_keys=True) for r in routes)  # noqa: E731
    assert canonical(learned.values()) == canonical([full(V4_ROUTE), full(V6_ROUTE), full(PREFIX_ROUTE)])

    # FRR's view: label = VSID, the IPv6 next hop kept.
    # FRR's view: VNI (label) = VSID, NVGRE encapsulation (ET:9), router's MAC, MAC mobility. (FRR 8.4
    # prints an IPv6 EVPN next hop as 0.0.0.0; that it kept it is shown by what h2 received above.)
    rib = frr.json("show bgp l2vpn evpn route detail")[f"{H1}:1"]
    by_ip = {entry["ip"]: entry["paths"][0][0] for key, entry in rib.items() if key != "rd"}
    assert set(by_ip) == {"10.1.0.5", "fd00:b::10", "fd00:c::"}
    for path in by_ip.values():
        assert path["vni"] == "5001"
        assert {"RT:65000:5001", "ET:9", "Rmac:02:00:5e:10:00:01"} <= set(path["extendedCommunity"]["string"].split())
    assert "MM:2" in by_ip["10.1.0.5"]["extendedCommunity"]["string"]

    # Withdrawal through FRR.
    h1.config_path.write_text(h1.config_path.read_text().split("routes:")[0] + "routes: []\n")
    h1.reload()
    wait_for(lambda: not h2.routes(), 20, what="h2 sees the withdrawals")


def test_tcp_md5_with_frr_and_a_wrong_password_never_establishes(lab: Lab):
    frr, h1_ns, h2_ns = frr_lab(lab, {H1: "s3cret-h1", H2: "s3cret-h2"})
    # h1 only listens (FRR must dial it through the key on our listening socket); h2 dials with a wrong key.
    good = Speaker(lab, h1_ns, "h1", speaker_config(H1, RR, [V4_ROUTE], password="s3cret-h1", listen=True,
                                                    passive=True)).start()
    bad = Speaker(lab, h2_ns, "h2", speaker_config(H2, RR, [], password="wrong", listen=True)).start()
    wait_for(lambda: frr.neighbor_state(H1) == "Established", 30, what="MD5 session with the right key")
    wait_for(lambda: any(line.get("event") == "established" for line in good.lines), 10, what="h1 established")
    # h1's route arrives over the MD5 session (its UPDATE follows Established: waited for, not assumed)
    wait_for(lambda: frr.json("show bgp l2vpn evpn route")["numPrefix"] == 1, 10, what="h1's route at FRR")
    # A negative needs a window: several connect retries of both sides (FRR retries every 2 s).
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        assert frr.neighbor_state(H2) != "Established"
        assert not any(line.get("event") == "established" for line in bad.lines)
        time.sleep(0.5)
