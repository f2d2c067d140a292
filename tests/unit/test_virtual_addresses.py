"""Virtual addresses that move between VMs: the model, who may hold one, the holding state (hostagent.holders),
what is learned, announced and guarded, the state file, and which frames claim one (hostagent.guest.vip)."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import replace
from types import MappingProxyType

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from nvfabric.bgp.routes import MacIpRoute
from nvfabric.hostagent import state
from nvfabric.cli import main
from nvfabric.hostagent.agent import Agent
from nvfabric.hostagent.api import make_app, start_api
from nvfabric.hostagent.compute import View, follow_remote_holders
from nvfabric.hostagent.config import AgentConfig
from nvfabric.hostagent.guest import frames, vip
from nvfabric.hostagent.guest.offer import PortService, port_services
from nvfabric.hostagent.guest.responder import Responder
from nvfabric.hostagent.holders import (INACTIVE, NOT_ALLOWED, NOT_VIRTUAL, OTHER_SUBNET, UNKNOWN_PORT, Holders,
                                        Holding, judge)
from nvfabric.hostagent.mobility import FREEZE, MAX_MOVES, SEQ_MAX
from nvfabric.vnet import announce, portsecurity
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import HostIdentity
from nvfabric.vnet.errors import ConflictError, ModelError
from nvfabric.vnet.learn import lookup_records, remote_cas
from nvfabric.vnet.model import Port, RoutingDomain
from tests.unit.agent_fixtures import PA1, PA2, PA3, RED, ip, net

VIP = ip("10.0.0.100")
VIP6 = ip("fd00:b::100")
KEY = ("blue", VIP)
MAC_A = "02:00:00:00:aa:01"
MAC_B = "02:00:00:00:bb:01"
MAC_C = "02:00:00:00:cc:01"

BODY = {"name": "blue", "route_targets": ["65001:1"],
        "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24", "fd00:b::/64"]},
                    {"vsid": 5002, "prefixes": ["10.0.1.0/24"]}],
        "virtual_addresses": [{"address": "10.0.0.100", "ports": ["ka", "kb", "other-subnet"]},
                              {"address": "fd00:b::100", "ports": ["ka"]}]}
BLUE = RoutingDomain.from_dict(BODY)
KA = Port("ka", "tap-ka", MAC_A, 5001, (ip("10.0.0.11"),))
KB = Port("kb", "tap-kb", MAC_B, 5001, (ip("10.0.0.12"),))
KC = Port("kc", "tap-kc", MAC_C, 5001, (ip("10.0.0.13"),))  # not allowed to hold anything
OTHER = Port("other-subnet", "tap-os", "02:00:00:00:dd:01", 5002, (ip("10.0.1.14"),))


def catalog(*ports: Port, blue: RoutingDomain = BLUE) -> Catalog:
    return Catalog.build({"blue": blue, "red": RED}, {p.name: p for p in ports})


def t2(address, pa, mac=MAC_B, seq=0, vsid=5001):
    return MacIpRoute(rd=f"{pa}:{vsid}", mac=mac, ip=ip(address), vsid=vsid, next_hop=pa, route_targets=("65001:1",),
                      router_mac="02:00:5e:10:00:01", mobility_seq=seq)


# ------------------------------------------------------------------------------------------ the model


def test_virtual_addresses_round_trip_and_ports_that_do_not_exist_yet_are_allowed():
    assert state.routing_domain_to_dict(BLUE)["virtual_addresses"] == BODY["virtual_addresses"]
    assert RoutingDomain.from_dict(state.routing_domain_to_dict(BLUE)) == BLUE
    assert catalog().routing_domain("blue").virtual_address(VIP).ports == ("ka", "kb", "other-subnet")


@pytest.mark.parametrize(("virtual", "field", "problem"), [
    ([{"address": "10.9.0.1", "ports": ["ka"]}], "virtual_addresses[0].address", "not in any virtual subnet"),
    ([{"address": "10.0.0.1", "ports": ["ka"]}], "virtual_addresses[0].address", "gateway of virtual subnet 5001"),
    ([{"address": "10.0.0.0", "ports": ["ka"]}], "virtual_addresses[0].address", "network address"),
    ([{"address": "10.0.0.255", "ports": ["ka"]}], "virtual_addresses[0].address", "broadcast address"),
    ([{"address": "fd00:b::", "ports": ["ka"]}], "virtual_addresses[0].address", "network address"),
    ([{"address": "10.0.0.100", "ports": ["ka"]}, {"address": "10.0.0.100", "ports": ["kb"]}],
     "virtual_addresses[1].address", "duplicates virtual_addresses[0]"),
    ([{"address": "10.0.0.100", "ports": ["bad name!"]}], "virtual_addresses[0].ports[0]", "must match"),
    ([{"address": "10.0.0.100", "ports": ["ka", "ka"]}], "virtual_addresses[0].ports[1]", "duplicates ports[0]"),
    ([{"address": "10.0.0.100", "ports": []}], "virtual_addresses[0].ports", "at least one port"),
    ([{"address": "10.0.0.100"}], "virtual_addresses[0].ports", "at least one port"),
    ([{"address": "nope", "ports": ["ka"]}], "virtual_addresses[0].address", "not an IPv4 or IPv6 address"),
    ([{"address": "10.0.0.100", "ports": ["ka"], "port": "x"}], "virtual_addresses[0].port", "unknown field"),
    ({"address": "10.0.0.100"}, "virtual_addresses", "must be a list"),
    (["10.0.0.100"], "virtual_addresses[0]", "must be an object"),
])
def test_bad_virtual_addresses_are_refused_naming_the_field(virtual, field, problem):
    with pytest.raises(ModelError) as err:
        RoutingDomain.from_dict({**BODY, "virtual_addresses": virtual})
    assert err.value.field == field and problem in err.value.problem


def test_a_virtual_address_is_nobodys_ca():
    with pytest.raises(ConflictError) as err:
        catalog(replace(KA, addresses=(VIP,)))
    assert err.value.field == "addresses[0]" and "virtual address of routing domain blue" in err.value.problem
    # nor can a routing domain declare a CA as virtual
    with pytest.raises(ConflictError):
        catalog(KA).with_routing_domain(RoutingDomain.from_dict(
            {**BODY, "virtual_addresses": [{"address": "10.0.0.11", "ports": ["kb"]}]}))


def test_which_ports_may_hold_which_address():
    c = catalog(KA, KB, KC, OTHER)
    assert c.may_hold(KA) == (VIP, VIP6) and c.may_hold(KB) == (VIP,)
    assert c.may_hold(KC) == () and c.may_hold(OTHER) == ()  # not listed; listed but in another subnet
    inactive = {(KB.vsid, KB.mac)}
    assert judge(c, (), "ka", VIP) == ("blue", None)
    assert judge(c, (), "kc", VIP) == ("blue", NOT_ALLOWED)
    assert judge(c, (), "ka", ip("10.0.0.12")) == ("blue", NOT_VIRTUAL)
    assert judge(c, (), "other-subnet", VIP) == ("blue", OTHER_SUBNET)
    assert judge(c, (), "nope", VIP) == (None, UNKNOWN_PORT)
    assert judge(c, inactive, "kb", VIP) == ("blue", INACTIVE)


# ------------------------------------------------------------------------------------------ holding


def test_a_claim_outbids_the_fabric_and_repeats_do_not_bump():
    h = Holders().claim(KEY, "ka", None, 0)
    assert h.holding() == {KEY: ("ka", 1)}
    assert h.claim(KEY, "ka", 7, 0) is h  # keepalived repeats its gratuitous ARPs: not a move
    h = Holders().claim(KEY, "ka", 7, 0)
    assert h.holding() == {KEY: ("ka", 8)}
    # another local port takes it over (both VMs on this host): a move, one above what we announced
    assert h.claim(KEY, "kb", 3, 0).holding() == {KEY: ("kb", 9)}


def test_a_higher_remote_sequence_or_a_tie_from_a_lower_pa_takes_the_address_away():
    h = Holders().claim(KEY, "ka", 4, 0)  # seq 5
    assert h.remote(KEY, 4, remote_wins_tie=True, now=0) is h  # stale
    assert h.remote(KEY, 5, remote_wins_tie=False, now=0) is h  # a tie: our PA is lower
    gone = h.remote(KEY, 5, remote_wins_tie=True, now=0)
    assert gone.holding() == {} and (gone.held[KEY].port, gone.held[KEY].seq) == (None, 5)
    later = h.remote(KEY, 9, remote_wins_tie=False, now=0)
    assert (later.held[KEY].port, later.held[KEY].seq) == (None, 9)
    # keepalived moves it back here: one above everything seen
    assert later.claim(KEY, "ka", 9, 0).holding() == {KEY: ("ka", 10)}


def test_the_sequence_stops_at_the_32_bit_maximum():
    h = Holders().claim(KEY, "ka", SEQ_MAX, 0)
    assert h.holding() == {KEY: ("ka", SEQ_MAX)}
    assert h.remote(KEY, SEQ_MAX, remote_wins_tie=True, now=0).holding() == {}
    assert h.remote(KEY, SEQ_MAX, remote_wins_tie=False, now=0) is h


def test_follow_remote_holders_uses_the_best_remote_route_for_the_address():
    c = catalog(KA, KB)
    h = Holders().claim(KEY, "ka", None, 0)  # seq 1
    routes = [t2("10.0.0.100", PA2, mac=MAC_C, seq=1), t2("10.0.0.100", PA3, mac=MAC_C, seq=0)]
    assert follow_remote_holders(h, remote_cas(c, routes, [PA1]), PA1, 0) is h  # a tie, and PA1 is the lowest
    routes.append(t2("10.0.0.100", PA3, mac=MAC_C, seq=2))
    assert follow_remote_holders(h, remote_cas(c, routes, [PA1]), PA1, 0).holding() == {}
    assert follow_remote_holders(h, remote_cas(c, routes[:1], [PA3]), PA3, 0).holding() == {}  # PA2 < PA3


def test_prune_stops_holders_no_longer_allowed_and_forgets_undeclared_addresses():
    h = Holders().claim(KEY, "kb", 2, 0).claim(("blue", VIP6), "ka", None, 0)
    c = catalog(KA, KB)
    assert h.prune(c, ()) is h
    assert h.prune(c, {(KB.vsid, KB.mac)}).held[KEY] == Holding(None, 3)  # kb's VM moved to another host
    assert h.prune(catalog(KA), ()).held[KEY] == Holding(None, 3)  # kb deleted
    fewer = RoutingDomain.from_dict({**BODY, "virtual_addresses": [{"address": "10.0.0.100", "ports": ["ka"]}]})
    pruned = h.prune(catalog(KA, KB, blue=fewer), ())
    assert pruned.held == {KEY: Holding(None, 3)}  # kb no longer listed; fd00:b::100 no longer declared


def test_an_address_that_moves_too_often_is_frozen_where_it_is():
    h, now, seq = Holders().claim(KEY, "ka", None, 0.0), 0.0, 1  # a first claim is not a move
    for _ in range(MAX_MOVES // 2):
        now += 10
        seq += 1
        h = h.remote(KEY, seq, remote_wins_tie=False, now=now)  # taken by another host: a move
        now += 10
        h = h.claim(KEY, "ka", seq, now)  # and back: a move
        seq += 1
    now += 10
    h = h.remote(KEY, seq + 1, remote_wins_tie=False, now=now)  # the fifth move: frozen, held elsewhere
    assert h.frozen(KEY, now) and h.holding() == {}
    assert h.claim(KEY, "ka", seq + 1, now) is h  # a claim here changes nothing
    assert not h.frozen(KEY, now + FREEZE) and h.claim(KEY, "ka", seq + 1, now + FREEZE).holding() == {
        KEY: ("ka", seq + 2)}
    # while frozen, a takeover elsewhere is still followed: never two holders
    frozen_holder = Holders(MappingProxyType({KEY: Holding("ka", 5, (40.0,), frozen_until=100.0)}))
    assert frozen_holder.remote(KEY, 6, remote_wins_tie=False, now=50.0).holding() == {}


# ------------------------------------------------------------------------------------------ learned, announced


def test_a_held_address_is_a_local_ca_and_elsewhere_the_highest_sequence_wins_per_address():
    c = catalog(KA, KB)
    routes = [t2("10.0.0.100", PA2, mac=MAC_C, seq=3), t2("10.0.0.100", PA3, mac="02:00:00:00:ee:01", seq=4)]
    here = {(r.routing_domain, r.ca): r for r in lookup_records(c, routes, [PA1], (), {KEY: "ka"})}
    assert here[KEY].local and here[KEY].port == "ka" and here[KEY].mac == MAC_A
    there = {(r.routing_domain, r.ca): r for r in lookup_records(c, routes, [PA1])}
    assert there[KEY].pa == PA3 and there[KEY].mac == "02:00:00:00:ee:01"  # per CA, not per MAC
    # a holder whose VM moved away holds nothing here
    gone = {(r.routing_domain, r.ca): r for r in lookup_records(c, routes, [PA1], {(KA.vsid, KA.mac)}, {KEY: "ka"})}
    assert gone[KEY].pa == PA3


def test_a_held_address_is_announced_with_the_holders_mac_and_its_own_sequence():
    identity = announce.Identity("198.51.100.11", (PA1,), "02:00:5e:10:00:01")
    routes = announce.local_routes(catalog(KA, KB), identity, {(5001, MAC_A): 2}, (), {KEY: ("ka", 6)})
    by_ip = {r.ip: r for r in routes.values()}
    assert by_ip[VIP].mac == MAC_A and by_ip[VIP].mobility_seq == 6 and by_ip[VIP].vsid == 5001
    assert by_ip[ip("10.0.0.11")].mobility_seq == 2 and by_ip[VIP].route_targets == ("65001:1",)
    assert VIP not in {r.ip for r in announce.local_routes(catalog(KA, KB), identity, {}, {(5001, MAC_A)},
                                                            {KEY: ("ka", 6)}).values()}


def test_port_security_lets_every_allowed_port_send_from_and_announce_the_address():
    guarded = {p.name: p for p in portsecurity.guarded(catalog(KA, KB, KC))}
    exact4 = portsecurity.elements(guarded.values()).sets[("arp", "arp4_exact")]
    nd6 = portsecurity.elements(guarded.values()).sets[("inet", "nd6_exact")]
    nets = {(k[0], str(k[2])) for k in exact4}
    assert {("tap-ka", "10.0.0.100/32"), ("tap-kb", "10.0.0.100/32")} <= nets
    assert ("tap-kc", "10.0.0.100/32") not in nets  # not allowed: its gratuitous ARP is dropped and counted
    assert ("tap-ka", "fd00:b::100/128") in {(k[0], str(k[2])) for k in nd6}
    # the orchestrator's own allowed_addresses are kept, without a duplicate
    both = replace(KB, allowed_addresses=(net("10.0.0.100/32"),))
    assert [p for p in portsecurity.guarded(catalog(both)) if p.name == "kb"][0] == both


# ------------------------------------------------------------------------------------------ the state file


def test_holders_survive_a_restart_with_their_sequences(tmp_path):
    c = catalog(KA, KB)
    holders = {KEY: Holding("ka", 7), ("blue", VIP6): Holding(None, 3)}
    state.save(tmp_path, state.SavedState(c, {"blue": 1000, "red": 1001}, {}, holders))
    back = state.load(tmp_path)
    assert back.holders == holders
    view = View.first((), back)
    assert view.holders.holding() == {KEY: ("ka", 7)} and view.saved().holders == holders
    # a state file from before virtual addresses
    state.save(tmp_path, state.SavedState(c, {"blue": 1000, "red": 1001}, {}))
    assert state.load(tmp_path).holders == {}


async def test_claims_are_judged_and_counted_before_anything_is_applied(tmp_path):
    config = AgentConfig.from_dict({
        "asn": 65001, "router_id": "198.51.100.11", "provider_addresses": ["198.51.100.11"],
        "route_reflectors": [{"address": "198.51.100.100"}], "state_dir": str(tmp_path),
        "routing_domains": [BODY]})
    agent = Agent(config)
    assert await agent.claim_virtual_address("kc", VIP) is False  # no such port yet
    assert await agent.claim_virtual_address("ka", VIP) is False
    assert agent._claims == {"unknown_port": 2}
    assert not (tmp_path / state.FILE).exists()


# ------------------------------------------------------------------------------------------ frames that claim


HOST = bytes.fromhex("020000000001")
SERVICE = PortService(port="ka", interface="tap-ka", routing_domain="blue", vsid=5001, mac=MAC_A,
                      ipv4=None, ipv6=None, gateway4=ip("10.0.0.1"), gateway6=None, mtu=1450,
                      virtual_addresses=(VIP, VIP6))
SRC = frames.mac_bytes(MAC_A)


def arp(op, sender_ip, target_ip, sender_mac=SRC, dst=frames.BROADCAST):
    payload = struct.pack("!HHBBH", 1, frames.ETH_P_IP, 6, 4, op) + sender_mac + ip(sender_ip).packed + \
        b"\0" * 6 + ip(target_ip).packed
    return frames.parse_ethernet(frames.ethernet(dst, SRC, frames.ETH_P_ARP, payload))


def na(target, flags, link_layer=SRC, hop_limit=255):
    body = bytes([flags, 0, 0, 0]) + ip(target).packed + (b"\x02\x01" + link_layer if link_layer else b"")
    packet = frames.icmp6(frames.link_local(MAC_A), ip("ff02::1"), 136, 0, body, hop_limit)
    return frames.parse_ethernet(frames.ethernet(b"\x33\x33\0\0\0\1", SRC, frames.ETH_P_IPV6, packet))


def test_gratuitous_arp_and_arp_replies_claim_a_virtual_address():
    assert vip.claimed(arp(1, "10.0.0.100", "10.0.0.100"), SERVICE) == VIP  # keepalived's gratuitous ARP
    assert vip.claimed(arp(2, "10.0.0.100", "10.0.0.100"), SERVICE) == VIP
    assert vip.claimed(arp(2, "10.0.0.100", "10.0.0.11"), SERVICE) == VIP  # an ARP reply from it
    assert vip.claimed(arp(1, "10.0.0.100", "10.0.0.12"), SERVICE) is None  # asking is not announcing
    assert vip.claimed(arp(1, "10.0.0.11", "10.0.0.11"), SERVICE) is None  # its own CA: not virtual
    assert vip.claimed(arp(1, "10.0.0.100", "10.0.0.100", sender_mac=bytes(6)), SERVICE) is None
    assert vip.claimed(arp(1, "10.0.0.100", "10.0.0.100"), replace(SERVICE, virtual_addresses=())) is None


def test_unsolicited_or_override_neighbour_advertisements_claim_a_virtual_address():
    assert vip.claimed(na("fd00:b::100", 0x20), SERVICE) == VIP6  # unsolicited, override
    assert vip.claimed(na("fd00:b::100", 0x00, link_layer=None), SERVICE) == VIP6
    assert vip.claimed(na("fd00:b::100", 0x60), SERVICE) == VIP6  # solicited with override
    assert vip.claimed(na("fd00:b::100", 0x40), SERVICE) is None  # solicited, no override
    assert vip.claimed(na("fd00:b::100", 0x20, hop_limit=64), SERVICE) is None  # not from the link
    assert vip.claimed(na("fd00:b::100", 0x20, link_layer=bytes(6)), SERVICE) is None  # another MAC's
    assert vip.claimed(na("fd00:b::10", 0x20), SERVICE) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([frames.ETH_P_ARP, frames.ETH_P_IPV6, frames.ETH_P_IP]))
def test_hostile_frames_never_raise(payload, ethertype):
    eth = frames.Ethernet(frames.BROADCAST, SRC, ethertype, payload)
    assert vip.claimed(eth, SERVICE) in (None, VIP, VIP6)


class FakeWire:
    def __init__(self) -> None:
        self.receive = None

    def start(self, receive) -> None:
        self.receive = receive

    def close(self) -> None: ...

    def send(self, interface: str, frame: bytes) -> bool:
        return True

    def host_mac(self, interface: str) -> bytes | None:
        return HOST

    def forget(self) -> None: ...


def raw_arp(op, sender_ip, target_ip, src=SRC):
    payload = struct.pack("!HHBBH", 1, frames.ETH_P_IP, 6, 4, op) + src + ip(sender_ip).packed + b"\0" * 6 + \
        ip(target_ip).packed
    return frames.ethernet(frames.BROADCAST, src, frames.ETH_P_ARP, payload)


async def test_the_responder_hands_claims_from_a_port_to_the_agent():
    claims: list[tuple[str, object]] = []
    arrived = asyncio.Event()

    async def on_claim(port, address):
        claims.append((port, address))
        arrived.set()

    wire = FakeWire()
    responder = Responder(wire, on_claim)
    responder.start()
    responder.update({"tap-ka": SERVICE})
    wire.receive("tap-ka", raw_arp(1, "10.0.0.11", "10.0.0.12"))  # a plain request: no claim
    wire.receive("tap-other", raw_arp(1, "10.0.0.100", "10.0.0.100"))  # not a port
    wire.receive("tap-ka", raw_arp(1, "10.0.0.100", "10.0.0.100", src=bytes.fromhex("020000000099")))  # not its MAC
    wire.receive("tap-ka", raw_arp(1, "10.0.0.100", "10.0.0.100"))
    await asyncio.wait_for(arrived.wait(), 5)
    await responder.close()
    assert claims == [("ka", VIP)]
    counts = responder.counters.as_dict()["arp"]
    assert counts == {"claimed": 1, "ignored": 1, "unknown_port": 1, "wrong_mac": 1}


def test_ports_of_a_domain_with_virtual_addresses_are_watched_even_without_dhcp():
    host = HostIdentity("02:00:5e:10:00:01", (PA1,))
    body = {**BODY, "subnets": [{**s, "dhcp": {"enabled": False}} for s in BODY["subnets"]]}
    services = port_services(catalog(KA, KB, blue=RoutingDomain.from_dict(body)), host)
    assert services["tap-ka"].virtual_addresses == (VIP, VIP6) and services["tap-ka"].ipv4 is None
    assert port_services(catalog(KA), host)["tap-ka"].ipv4 is not None  # DHCP on: offered as before


# ------------------------------------------------------------------------------------------ API and ctl


def agent_with_a_holder(tmp_path) -> Agent:
    """An agent (not started: no kernel here) restarting from a state where ka holds 10.0.0.100."""
    config = AgentConfig.from_dict({
        "asn": 65001, "router_id": "198.51.100.11", "provider_addresses": ["198.51.100.11"],
        "route_reflectors": [{"address": "198.51.100.100"}], "state_dir": str(tmp_path)})
    state.save(tmp_path, state.SavedState(catalog(KA, KB), {"blue": 1000, "red": 1001}, {},
                                          {KEY: Holding("ka", 4)}))
    return Agent(config)


async def test_the_api_shows_and_refuses_virtual_addresses_and_ctl_prints_the_holders(tmp_path, capsys,
                                                                                       monkeypatch):
    agent = agent_with_a_holder(tmp_path)
    auth = {"Authorization": "Bearer t0ken"}
    async with TestClient(TestServer(make_app(agent, "t0ken"))) as client:
        body = await (await client.get("/v1/routing-domains/blue", headers=auth)).json()
        assert body["virtual_addresses"] == BODY["virtual_addresses"]
        bad = {**BODY, "virtual_addresses": [{"address": "10.0.0.1", "ports": ["ka"]}]}
        response = await client.put("/v1/routing-domains/blue", json=bad, headers=auth)
        assert response.status == 400
        assert (await response.json())["field"] == "virtual_addresses[0].address"
        status = await (await client.get("/v1/status", headers=auth)).json()
        held = {v["address"]: v for v in status["virtual_addresses"]}
        assert held["10.0.0.100"]["holder"] == "ka" and held["10.0.0.100"]["seq"] == 4
        assert held["fd00:b::100"]["holder"] is None and held["fd00:b::100"]["seq"] is None
    monkeypatch.delenv("NVFABRIC_TOKEN", raising=False)
    monkeypatch.delenv("NVFABRIC_API", raising=False)
    server = await start_api(agent, "127.0.0.1:0", "t0ken")
    try:
        code = await asyncio.to_thread(main, ["ctl", "--api", server.url, "--token", "t0ken", "status"])
    finally:
        await server.stop()
    out = capsys.readouterr().out
    assert code == 0 and "virtual addresses" in out
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.splitlines() if "│" in line]
    assert ["blue", "10.0.0.100", "ka", "4"] in rows and ["blue", "fd00:b::100", "-", ""] in rows, out


async def test_metrics_count_claims_by_outcome_and_the_addresses_held(tmp_path):
    agent = agent_with_a_holder(tmp_path)
    assert await agent.claim_virtual_address("kb", VIP6) is False  # fd00:b::100 lists ka only
    assert await agent.claim_virtual_address("ka", VIP) is True  # the holder repeating itself
    for _ in range(2):  # (every announcement sets the gauge: one series, however often)
        agent.metrics.held_addresses(len(agent._view.holders.holding()))
    text = generate_latest(agent.registry).decode()
    assert 'nvfabric_agent_virtual_address_claims_total{outcome="not_allowed"} 1.0' in text
    assert 'nvfabric_agent_virtual_address_claims_total{outcome="repeated"} 1.0' in text
    assert text.count("nvfabric_agent_virtual_addresses_held 1.0") == 1
    assert text.count("# TYPE nvfabric_agent_guest_frames") <= 1
