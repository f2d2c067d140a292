"""Session behaviour against real peers in namespaces: graceful restart after SIGKILL, a malformed EVPN
NLRI from a hand-driven peer, dynamic neighbours and refused peers."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address

import yaml

from nvfabric.bgp import wire
from nvfabric.bgp.routes import Family, MacIpRoute
from tests.integration.conftest import need
from nvfabric.lab.peers import GoBgp, Lab, Speaker, gobgp_rr_toml, segment, wait_for
from nvfabric.vnet.kernel.netns import inside
from tests.integration.test_bgp_gobgp import ROUTE

RR, H1, H2, RAW, OUTSIDER = "198.51.100.254", "198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.200"


def gr_config(router_id: str, neighbors: list[dict], routes: list[dict], listen: str | None = None) -> dict:
    cfg = {"asn": 65000, "router_id": router_id, "hold_time": 9, "neighbours": neighbors, "routes": routes,
           "graceful_restart": {"restart_time": 30, "forwarding_preserved": True}}
    if listen:
        cfg["listen"] = {"address": listen, "port": 179}
    return cfg


MARKER = {**ROUTE, "mac": "00:15:5d:0f:0f:0f", "ip": "10.1.0.99"}


def announce_marker(origin: Speaker, observer: Speaker) -> None:
    """Have `origin` announce one more route and wait until `observer` has it. Streams are ordered, so
    whatever the restart caused at the observer is in its lines before the marker: no sleeping needed."""
    config = yaml.safe_load(origin.config_path.read_text())
    config["routes"].append(MARKER)
    origin.config_path.write_text(yaml.safe_dump(config))
    origin.reload()
    wait_for(lambda: any(r["mac"] == MARKER["mac"] for r in observer.routes().values()), 20, what="the marker route")


def assert_no_storm(speaker: Speaker, since: int) -> None:
    """Between `since` and the marker, no route was withdrawn or announced again."""
    later = [line for line in speaker.lines[since:] if "action" in line]
    assert [line["route"]["mac"] for line in later] == [MARKER["mac"]], later


def test_graceful_restart_with_our_speaker_as_helper(lab: Lab):
    """h1 is SIGKILLed and restarted; h2 (ours, the helper) keeps h1's route throughout."""
    h1_ns, h2_ns = lab.namespace("h1"), lab.namespace("h2")
    lab.link(h1_ns, [f"{H1}/24"], h2_ns, [f"{H2}/24"])
    h2 = Speaker(lab, h2_ns, "h2", gr_config(H2, [{"address": H1, "asn": 65000, "passive": True}], [], listen=H2))
    h2.start()
    h1 = Speaker(lab, h1_ns, "h1", gr_config(H1, [{"address": H2, "asn": 65000}], [ROUTE])).start()
    wait_for(lambda: h2.routes(), 20, what="h2 learns the route")
    mark = len(h2.lines)

    h1.kill()
    wait_for(lambda: any(line.get("event") == "down" for line in h2.lines[mark:]), 10, what="h2 notices h1 is gone")
    assert h2.routes(), "the helper must keep the restarting peer's routes"

    h1.start()
    wait_for(lambda: any(line.get("event") == "end-of-rib" for line in h2.lines[mark:]), 20, what="h1 back, End-of-RIB")
    announce_marker(h1, h2)
    assert len(h2.routes()) == 2
    assert_no_storm(h2, mark)


def test_graceful_restart_through_gobgp_helper(lab: Lab):
    """h1 (restarting speaker) is SIGKILLed; GoBGP keeps its routes (stale), h2 sees no withdrawal; when h1
    comes back with the R bit the session re-forms and nothing is withdrawn or re-announced at h2."""
    need("gobgpd", "gobgp")
    rr, h1_ns, h2_ns = lab.namespace("rr"), lab.namespace("h1"), lab.namespace("h2")
    segment(lab, rr, {rr: [f"{RR}/24"], h1_ns: [f"{H1}/24"], h2_ns: [f"{H2}/24"]})
    gobgp = GoBgp(lab, rr, "gobgp", gobgp_rr_toml([H1, H2], graceful=True))
    h1 = Speaker(lab, h1_ns, "h1", gr_config(H1, [{"address": RR, "asn": 65000}], [ROUTE])).start()
    h2 = Speaker(lab, h2_ns, "h2", gr_config(H2, [{"address": RR, "asn": 65000}], [])).start()
    wait_for(lambda: h2.routes(), 20, what="h2 learns the route")
    mark = len(h2.lines)
    updates_to_h2 = gobgp_updates_sent(gobgp, H2)

    h1.kill()
    wait_for(lambda: gobgp.neighbor_state(H1) != "established", 15, what="gobgp notices h1 is gone")
    (path,) = gobgp.evpn_rib()
    assert path.get("stale") is True, path  # kept by the helper, marked stale

    h1.start()
    wait_for(lambda: gobgp.neighbor_state(H1) == "established", 20, what="h1 re-established")
    wait_for(lambda: not gobgp.evpn_rib()[0].get("stale"), 20, what="stale mark cleared by End-of-RIB")
    announce_marker(h1, h2)
    assert len(h2.routes()) == 2
    assert_no_storm(h2, mark)
    # Nothing went from the reflector to h2 while h1 restarted: the marker is the only UPDATE since.
    assert gobgp_updates_sent(gobgp, H2) == updates_to_h2 + 1


def gobgp_updates_sent(gobgp: GoBgp, neighbor: str) -> int:
    return int(gobgp.json("neighbor", neighbor)["state"]["messages"]["sent"].get("update", 0))


# ------------------------------------------------------------------ a peer speaking BGP by hand


def raw_session(ns: str, local: str, remote: str) -> tuple[socket.socket, wire.Negotiated]:
    """Connect from `local` in `ns` to our speaker, exchange OPEN/KEEPALIVE by hand."""
    with inside(ns):
        sock = socket.create_connection((remote, 179), timeout=10, source_address=(local, 0))
    mine = wire.Capabilities(asn=65000, router_id=IPv4Address(local), hold_time=30,
                             families=frozenset({Family.L2VPN_EVPN}))
    sock.sendall(wire.encode_open(mine))
    messages = read_messages(sock, 2)  # its OPEN and KEEPALIVE
    assert messages[0][0] == wire.MessageType.OPEN, messages
    theirs = wire.decode_open(messages[0][1])
    sock.sendall(wire.encode_keepalive())
    return sock, wire.negotiate(mine, theirs)


def read_messages(sock: socket.socket, count: int, timeout: float = 10) -> list[tuple[int, bytes]]:
    buffer, out = b"", []
    sock.settimeout(timeout)
    while len(out) < count:
        data = sock.recv(65536)
        if not data:
            break
        messages, buffer = wire.split_messages(buffer + data)
        out += messages
    return out


def malformed_evpn_update() -> bytes:
    """An UPDATE whose MP_REACH_NLRI carries a type-2 route with a 47-bit MAC length (RFC 7432 7.2 says 48),
    built byte by byte."""
    rd = struct.pack("!H", 1) + IPv4Address(RAW).packed + struct.pack("!H", 9)
    body = rd + bytes(10) + bytes(4) + bytes([47]) + bytes.fromhex("00155d0a0b0c") + bytes([32])
    body += IPv4Address("10.9.0.9").packed + (5001).to_bytes(3, "big")
    nlri = bytes([2, len(body)]) + body
    mp_reach = struct.pack("!HBB", 25, 70, 4) + IPv4Address(RAW).packed + b"\x00" + nlri
    attrs = bytes.fromhex("40010100" "400200" "40050400000064")
    attrs += bytes([0x90, 14]) + struct.pack("!H", len(mp_reach)) + mp_reach
    attrs += bytes.fromhex("c01008" "0002fde800001389")
    update = b"\x00\x00" + struct.pack("!H", len(attrs)) + attrs
    return b"\xff" * 16 + struct.pack("!HB", 19 + len(update), 2) + update


def test_malformed_evpn_nlri_does_not_bring_the_session_down(lab: Lab):
    h1_ns, raw_ns = lab.namespace("h1"), lab.namespace("raw")
    lab.link(h1_ns, [f"{H1}/24"], raw_ns, [f"{RAW}/24"])
    h1 = Speaker(lab, h1_ns, "h1", gr_config(H1, [{"address": RAW, "asn": 65000, "passive": True}], [], listen=H1))
    h1.start()
    sock, negotiated = wait_for(lambda: _try(lambda: raw_session(raw_ns, RAW, H1)), 15, what="raw session up")
    good = MacIpRoute(rd=f"{RAW}:1", mac="00:15:5d:0a:0b:01", ip="10.9.0.1", vsid=5001, next_hop=RAW,
                      route_targets=("65000:5001",))
    later = MacIpRoute(rd=f"{RAW}:1", mac="00:15:5d:0a:0b:02", ip="10.9.0.2", vsid=5001, next_hop=RAW,
                       route_targets=("65000:5001",))
    sock.sendall(b"".join(wire.encode_update(negotiated, [good])))
    wait_for(lambda: len(h1.routes()) == 1, 10, what="the good route")
    sock.sendall(malformed_evpn_update())
    sock.sendall(b"".join(wire.encode_update(negotiated, [later])))
    wait_for(lambda: len(h1.routes()) == 2, 10, what="the route sent after the malformed one")
    # The session is still up: our speaker keeps talking (no NOTIFICATION, keepalives keep coming).
    for kind, _ in read_messages(sock, 3, timeout=15):
        assert kind != wire.MessageType.NOTIFICATION
    assert not any(line.get("event") == "down" for line in h1.lines)
    log = h1.log.read_text()
    assert "malformed UPDATE" in log and RAW in log and malformed_evpn_update()[19:].hex() in log
    sock.close()


def _try(fn):
    try:
        return fn()
    except OSError:
        return None


def test_dynamic_neighbor_accepted_and_outsider_gets_notification(lab: Lab):
    h1_ns, h2_ns, out_ns = lab.namespace("h1"), lab.namespace("h2"), lab.namespace("out")
    segment(lab, h1_ns, {h1_ns: [f"{H1}/24"], h2_ns: [f"{H2}/24"], out_ns: [f"{OUTSIDER}/24"]})
    cfg = gr_config(H1, [], [], listen=H1)
    cfg["dynamic_neighbours"] = [{"prefix": "198.51.100.0/25", "asn": 65000}]
    h1 = Speaker(lab, h1_ns, "h1", cfg).start()
    h2 = Speaker(lab, h2_ns, "h2", gr_config(H2, [{"address": H1, "asn": 65000}], [ROUTE])).start()
    wait_for(lambda: h1.routes(), 20, what="route from the dynamic neighbour")
    assert any(line.get("event") == "established" and H2 in line["peer"] for line in h1.lines)

    def refused() -> tuple[int, bytes] | None:
        try:
            with inside(out_ns):
                sock = socket.create_connection((H1, 179), timeout=5, source_address=(OUTSIDER, 0))
        except OSError:
            return None
        with sock:
            messages = read_messages(sock, 1)
        return messages[0] if messages else None

    kind, body = wait_for(refused, 10, what="a NOTIFICATION for the outsider")
    assert kind == wire.MessageType.NOTIFICATION
    assert wire.decode_notification(body)[:2] == (6, 5)  # Cease / Connection Rejected (RFC 4486)
    assert h2.lines  # untouched
