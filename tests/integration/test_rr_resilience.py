"""`nvfabric rr` under trouble, real processes in namespaces: a client restarting gracefully, a client
sending garbage, a client over its max-prefix, route-target filtering, and configuration reloads."""

from __future__ import annotations

import yaml

from nvfabric.bgp import wire
from nvfabric.bgp.routes import MacIpRoute
from nvfabric.lab.peers import Lab, RouteReflector, Speaker, segment, wait_for
from tests.integration.test_bgp_gobgp import ROUTE
from tests.integration.test_bgp_sessions import (
    _try,
    announce_marker,
    assert_no_storm,
    gr_config,
    malformed_evpn_update,
    raw_session,
    read_messages,
)
from tests.integration.test_rr_reflection import CLIENTS, client_config, macs, rr_config

RR, H1, H2, H3, RAW = "198.51.100.100", "198.51.100.1", "198.51.100.2", "198.51.100.5", "198.51.100.3"


def lab_with(lab: Lab, *names: str) -> dict[str, str]:
    spaces = {name: lab.namespace(name) for name in ("rr", *names)}
    addresses = {"rr": RR, "h1": H1, "h2": H2, "h3": H3, "raw": RAW}
    segment(lab, spaces["rr"], {ns: [f"{addresses[name]}/24"] for name, ns in spaces.items()})
    return spaces


def test_client_graceful_restart_through_our_reflector(lab: Lab):
    """h1 is SIGKILLed and restarted: the reflector keeps its routes (stale) and, when h1 re-announces the
    same routes before End-of-RIB, sends h2 nothing at all."""
    ns = lab_with(lab, "h1", "h2")
    rr = RouteReflector(lab, ns["rr"], "rr", rr_config(CLIENTS))
    h1 = Speaker(lab, ns["h1"], "h1", gr_config(H1, [{"address": RR, "asn": 65000}], [ROUTE])).start()
    h2 = Speaker(lab, ns["h2"], "h2", gr_config(H2, [{"address": RR, "asn": 65000}], [])).start()
    wait_for(lambda: h2.routes(), 20, what="h2 learns the route")
    mark = len(h2.lines)
    sent_to_h2 = rr.neighbor(H2)["updates_out"]

    h1.kill()
    wait_for(lambda: rr.neighbor(H1).get("state") != "established", 10, what="the reflector notices")
    assert rr.get("/v1/summary")["routes"]["l2vpn-evpn"] == 1  # kept, stale (RFC 4724 4.2)
    h1.start()
    wait_for(lambda: rr.neighbor(H1).get("established_count") == 2, 20, what="h1 back")
    announce_marker(h1, h2)
    assert_no_storm(h2, mark)
    assert rr.neighbor(H2)["updates_out"] == sent_to_h2 + 1  # only the marker


def test_a_client_sending_garbage_does_not_disturb_the_others(lab: Lab):
    ns = lab_with(lab, "h1", "h2", "raw")
    rr = RouteReflector(lab, ns["rr"], "rr", rr_config(CLIENTS))
    h1 = Speaker(lab, ns["h1"], "h1", client_config(H1, [ROUTE])).start()
    h2 = Speaker(lab, ns["h2"], "h2", client_config(H2, [])).start()
    wait_for(lambda: h2.routes(), 20, what="h2 learns h1's route")

    # A malformed EVPN route (RFC 7606: treat-as-withdraw, the session stays), then a good one.
    sock, negotiated = wait_for(lambda: _try(lambda: raw_session(ns["raw"], RAW, RR)), 15, what="raw session")
    good = MacIpRoute(rd=f"{RAW}:1", mac="00:15:5d:0a:0b:01", ip="10.9.0.1", vsid=5001, next_hop=RAW,
                      route_targets=("65000:5001",))
    sock.sendall(malformed_evpn_update() + b"".join(wire.encode_update(negotiated, [good])))
    wait_for(lambda: good.mac in macs(h2), 10, what="the good route after the malformed one")
    # Then bytes that are not BGP at all: that session is reset with a NOTIFICATION, nobody else notices.
    sock.sendall(b"\x00" * 16 + b"\x00\x13\x04")
    kinds = [kind for kind, _ in read_messages(sock, 10, timeout=10)]
    assert wire.MessageType.NOTIFICATION in kinds
    sock.close()
    wait_for(lambda: good.mac not in macs(h2), 10, what="the garbage peer's routes withdrawn")
    assert ROUTE["mac"] in macs(h2)
    for speaker in (h1, h2):
        assert not any(line.get("event") == "down" for line in speaker.lines), speaker.lines
    assert rr.neighbor(H1)["established_count"] == 1 and rr.neighbor(H2)["established_count"] == 1
    log = rr.log.read_text()
    assert '"event": "malformed-update"' in log and f'"peer": "{RAW}' in log


def test_route_target_filter_and_max_prefix(lab: Lab):
    ns = lab_with(lab, "h1", "h2", "h3")
    neighbors = [
        {"address": H2, "asn": 65000, "passive": True, "route_targets": ["65000:5002"]},
        {"address": H3, "asn": 65000, "passive": True, "max_prefix": {"limit": 2, "action": "teardown"}},
        *CLIENTS,
    ]
    rr = RouteReflector(lab, ns["rr"], "rr", rr_config(neighbors))
    tenants = [{**ROUTE, "mac": f"00:15:5d:01:00:{i:02x}", "ip": f"10.1.1.{i}", "vsid": 5001 + i % 2,
                "route_targets": [f"65000:{5001 + i % 2}"]} for i in range(6)]
    h1 = Speaker(lab, ns["h1"], "h1", client_config(H1, tenants)).start()
    h2 = Speaker(lab, ns["h2"], "h2", client_config(H2, [])).start()
    h3 = Speaker(lab, ns["h3"], "h3", client_config(H3, [])).start()
    # h2 hosts only VSID 5002: it gets those three routes; h3 (unfiltered) gets all six.
    wait_for(lambda: len(h3.routes()) == 6 and len(h2.routes()) == 3, 20, what="filtered tables")
    assert {r["vsid"] for r in h2.routes().values()} == {5002}
    assert rr.neighbor(H2)["bytes_out"] < rr.neighbor(H3)["bytes_out"]

    # h3 announces three routes, over its limit of two: torn down (Cease 6/1, RFC 4486), routes dropped.
    extra = [{**ROUTE, "rd": f"{H3}:1", "mac": f"00:15:5d:03:00:{i:02x}", "ip": f"10.3.0.{i}", "next_hop": H3}
             for i in range(3)]
    h3.config_path.write_text(yaml.safe_dump({**yaml.safe_load(h3.config_path.read_text()), "routes": extra}))
    h3.reload()
    wait_for(lambda: any(line.get("event") == "down" for line in h3.lines), 15, what="h3 torn down")
    wait_for(lambda: not any(r["rd"] == f"{H3}:1" for r in h1.routes().values()), 10, what="h3's routes gone")
    assert rr.get("/v1/summary")["max_prefix_events"] >= 1
    assert not any(line.get("event") == "down" for line in h1.lines + h2.lines)


def test_reload_adds_removes_and_refuses_a_bad_file(lab: Lab):
    ns = lab_with(lab, "h1", "h2", "h3")
    first = [{"address": address, "asn": 65000, "passive": True} for address in (H1, H2)]
    rr = RouteReflector(lab, ns["rr"], "rr", rr_config(first))
    h1 = Speaker(lab, ns["h1"], "h1", client_config(H1, [ROUTE])).start()
    h2 = Speaker(lab, ns["h2"], "h2", client_config(H2, [])).start()
    h3 = Speaker(lab, ns["h3"], "h3", client_config(H3, [])).start()
    wait_for(lambda: h2.routes(), 20, what="h2 learns h1's route")
    assert not h3.routes() and not rr.neighbor(H3)  # not configured: refused

    rr.write_config({**rr.config, "neighbors": [first[0], {"address": H3, "asn": 65000, "passive": True}]})
    rr.reload()
    wait_for(lambda: h3.routes(), 20, what="the added neighbour gets the table")
    wait_for(lambda: any(line.get("event") == "down" for line in h2.lines), 10, what="the removed one closed")
    assert not any(line.get("event") == "down" for line in h1.lines)  # undisturbed
    assert rr.neighbor(H1)["established_count"] == 1

    good = rr.config
    rr.write_config({**good, "neighbors": [{**first[0], "asn": "sixty-five thousand"}]})
    rr.reload()
    wait_for(lambda: "reload-refused" in rr.log.read_text(), 10, what="the refusal in the log")
    assert "neighbors[0].asn" in rr.log.read_text()
    assert rr.established(H1, H3) and rr.get("/v1/summary")["reloads"] == 1
    rr.write_config(good)
