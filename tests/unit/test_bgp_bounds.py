"""Bounded resources per peer, over real TCP on loopback: a peer that stops reading, a flood of dynamic
neighbours, a peer over its max-prefix, a client announcing route targets that are not its own.

Raw peers are sockets driven by hand (OPEN, KEEPALIVE, UPDATE bytes), so what they see on the wire
(the NOTIFICATION code, subcode and data) is the observable."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any

import pytest

from nvfabric.bgp import config as bgp_config
from nvfabric.bgp import fsm, wire
from nvfabric.bgp.config import ConfigError
from nvfabric.bgp.reflector.daemon import Reflector
from nvfabric.bgp.routes import Family, MacIpRoute
from nvfabric.bgp.session import Peer
from nvfabric.bgp.speaker import Speaker
from tests.unit.test_reflector_daemon import held, route, rr_cfg, speaker, until

EVPN = frozenset({Family.L2VPN_EVPN})


@pytest.fixture
async def started() -> AsyncIterator[Callable[[Any], Any]]:
    objs: list[Any] = []

    async def start(obj: Any) -> Any:
        await obj.start()
        objs.append(obj)
        return obj

    yield start
    for obj in reversed(objs):
        await obj.stop()


class RawPeer:
    """A BGP peer made of a non-blocking socket: what it reads is the test's observable."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.negotiated: wire.Negotiated | None = None
        self._keepalives: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, local: str, port: int, rcvbuf: int | None = None) -> RawPeer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so the advertised window stays small: the reflector's writes back up fast.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((local, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        return cls(sock)

    async def open(self, router_id: str, hold_time: int = 30, asn: int = 65000) -> wire.Negotiated:
        mine = wire.Capabilities(asn=asn, router_id=IPv4Address(router_id), hold_time=hold_time, families=EVPN)
        await self.send(wire.encode_open(mine))
        (kind, body), = await self.messages(1)
        assert kind == wire.MessageType.OPEN
        await self.send(wire.encode_keepalive())
        self.negotiated = wire.negotiate(mine, wire.decode_open(body))
        return self.negotiated

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def messages(self, count: int | None = None, timeout: float = 15.0) -> list[tuple[int, bytes]]:
        """`count` messages, or (None) every message until the reflector closes the connection."""
        out: list[tuple[int, bytes]] = []
        loop = asyncio.get_running_loop()
        while count is None or len(out) < count:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 16), timeout)
            if not data:
                break
            messages, self.buffer = wire.split_messages(self.buffer + data)
            out += messages
        return out

    def keep_alive(self, every: float = 1.0) -> None:
        async def loop() -> None:
            try:
                while True:
                    await self.send(wire.encode_keepalive())
                    await asyncio.sleep(every)
            except OSError:  # the reflector reset the session: what some tests wait for
                pass

        self._keepalives = asyncio.get_running_loop().create_task(loop())

    async def close(self) -> None:
        if self._keepalives is not None:
            self._keepalives.cancel()
        self.sock.close()


def shrink_send_buffer(conn: Any) -> None:
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


def notifications(messages: list[tuple[int, bytes]]) -> list[wire.Notification]:
    return [wire.decode_notification(body) for kind, body in messages if kind == wire.MessageType.NOTIFICATION]


# -- write back-pressure ----------------------------------------------------------------------------------


async def test_a_peer_that_stops_reading_is_fed_at_its_pace_then_reset_after_its_hold_time(started):
    """The stalled peer keeps its session alive with KEEPALIVEs but reads nothing while 30,000 routes
    arrive: its write buffer stays at the limit (the rest is owed as routes), it is reset with Cease / Out
    of Resources after its hold time, and the other client never notices."""
    limit = 65536
    rr = await started(Reflector(rr_cfg([{"prefix": "127.0.1.0/24", "asn": 65000}], hold_time=3,
                                        write_buffer_limit=limit)))
    source = await started(speaker("198.51.100.1", "127.0.1.1", rr.listen_port))
    reader = await started(speaker("198.51.100.2", "127.0.1.2", rr.listen_port))
    stalled = await RawPeer.connect("127.0.1.3", rr.listen_port, rcvbuf=4096)
    await stalled.open("198.51.100.3", hold_time=3)
    stalled.keep_alive()
    await until(lambda: "127.0.1.3" in rr.peers and rr.peers["127.0.1.3"].established, what="stalled peer up")
    conn = rr.peers["127.0.1.3"].established
    # Loopback autotunes the kernel's send buffer to megabytes: keep it small, so the test needs few routes
    # to reach the transport's own buffer (what the reflector bounds).
    shrink_send_buffer(conn)

    routes = [route(i) for i in range(30000)]
    await source.announce(routes)
    await until(lambda: conn.writing_paused, 60, what="the stalled peer's transport paused")
    await until(lambda: len(held(reader)) == len(routes), 60, what="the reading client gets every route")
    # Bounded: at the limit plus at most one chunk, however many routes are owed.
    assert conn.transport.get_write_buffer_size() <= limit + 256 * 1024
    assert rr.stats.owed_peak > 0

    await until(lambda: rr.peers.get("127.0.1.3") is None or not rr.peers["127.0.1.3"].established, 15,
                what="the stalled peer reset")
    assert "127.0.1.3" not in rr.peers or rr.peers["127.0.1.3"].write_stall_resets == 1
    # What it was sent ends with the NOTIFICATION, once it reads.
    seen = notifications(await stalled.messages(None, timeout=15))
    assert [(n.code, n.subcode) for n in seen] == [(fsm.ERR_CEASE, fsm.CEASE_OUT_OF_RESOURCES)]
    await stalled.close()
    assert reader.peers["127.0.0.1"].establishments == 1 and source.peers["127.0.0.1"].establishments == 1
    assert rr.peers["127.0.1.2"].write_stall_resets == 0


async def test_the_initial_table_is_streamed_and_a_slow_reader_still_gets_all_of_it(started, monkeypatch):
    """A client that connects after 20,000 routes are in and reads slowly receives every one of them
    and End-of-RIB, and the reflector's buffer for it stays at the limit."""
    limit = 65536
    accept = Peer.accept

    def small_send_buffer(peer: Peer, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # as shrink_send_buffer, from the start
        accept(peer, sock)

    monkeypatch.setattr(Peer, "accept", small_send_buffer)
    rr = await started(Reflector(rr_cfg([{"prefix": "127.0.1.0/24", "asn": 65000}], write_buffer_limit=limit)))
    source = await started(speaker("198.51.100.1", "127.0.1.1", rr.listen_port))
    routes = [route(i) for i in range(20000)]
    await source.announce(routes)
    await until(lambda: len(rr.rib.best[Family.L2VPN_EVPN]) == len(routes), 30, what="the table at the reflector")

    slow = await RawPeer.connect("127.0.1.4", rr.listen_port, rcvbuf=4096)
    negotiated = await slow.open("198.51.100.4", hold_time=30)
    conn = None
    keys: set[Any] = set()
    peak = 0
    eor = False
    loop = asyncio.get_running_loop()
    while not eor:
        data = await asyncio.wait_for(loop.sock_recv(slow.sock, 4096), 15)
        assert data
        messages, slow.buffer = wire.split_messages(slow.buffer + data)
        for kind, body in messages:
            if kind != wire.MessageType.UPDATE:
                continue
            result = wire.decode_update(negotiated, body)
            eor = eor or result.eor is Family.L2VPN_EVPN
            keys.update(p.route.key for p in result.announced)
        conn = conn or rr.peers["127.0.1.4"].established
        if conn is not None and conn.transport is not None:
            peak = max(peak, conn.transport.get_write_buffer_size())
        await asyncio.sleep(0)
    assert keys == {r.key for r in routes}
    assert peak <= limit + 256 * 1024
    assert rr.peers["127.0.1.4"].write_pauses > 0  # it was fed at its pace, not all at once
    await slow.close()


# -- read back-pressure -----------------------------------------------------------------------------------


def hold3(router_id: str, **extra: Any) -> Speaker:
    return Speaker(bgp_config.parse({"asn": 65000, "router_id": router_id, "hold_time": 3,
                                     "families": ["l2vpn-evpn"], **extra}), inbox_size=2)


async def test_an_owner_that_falls_behind_pauses_reading_but_keeps_the_session(started):
    """The receiving speaker's owner stops taking events, as a host busy learning a large table on a loaded
    CPU: its inbox fills, its socket is no longer read, the sender's UPDATEs and KEEPALIVEs wait unread. The
    session outlives three hold times (the peer is not silent: we are slow), and every route arrives once
    the owner goes on."""
    loop = asyncio.get_running_loop()
    receiver = await started(hold3("198.51.100.2", listen={"address": "127.0.0.1", "port": 0},
                                   neighbours=[{"address": "127.0.1.40", "asn": 65000, "passive": True}]))
    sender = await started(hold3("198.51.100.1", neighbours=[{"address": "127.0.0.1", "asn": 65000,
                                                              "port": receiver.listen_port,
                                                              "local_address": "127.0.1.40"}]))
    await until(lambda: sender.peers["127.0.0.1"].established and receiver.peers["127.0.1.40"].established,
                what="the session up")
    peer = receiver.peers["127.0.1.40"]
    gate = asyncio.Event()
    take = receiver.inbox.get

    async def stalled() -> Any:
        await gate.wait()
        return await take()

    receiver.inbox.get = stalled  # type: ignore[method-assign]
    for i in range(40):  # (one UPDATE each: more events than the inbox holds)
        await sender.announce([route(i)])
    await until(lambda: receiver.inbox.producer_pauses > 0, what="the receiver pausing its reading")
    paused_at = loop.time()
    # (the subject is time passing with reading paused: three hold times, each long enough to expire it)
    await until(lambda: loop.time() - paused_at > 9 or peer.established is None, 15, what="three hold times")
    assert peer.established is not None and sender.peers["127.0.0.1"].established is not None
    gate.set()
    await until(lambda: len(held(receiver)) == 40, what="every route taken in")
    assert peer.establishments == 1 and sender.peers["127.0.0.1"].establishments == 1


# -- dynamic neighbours -----------------------------------------------------------------------------------


async def test_dynamic_prefix_connections_are_bounded_and_idle_peers_forgotten(started):
    rr = await started(Reflector(rr_cfg([{"prefix": "127.0.1.0/24", "asn": 65000, "max_connections": 3}],
                                        open_hold_time=60)))
    # Three connections that never send an OPEN hold the prefix's three slots.
    holders = [await RawPeer.connect(f"127.0.1.{i}", rr.listen_port) for i in (11, 12, 13)]
    await until(lambda: sum(len(p.connections) for p in rr.peers.values()) == 3, what="three connections")
    for i in (14, 15):
        extra = await RawPeer.connect(f"127.0.1.{i}", rr.listen_port)
        refused = notifications(await extra.messages(None))
        assert [(n.code, n.subcode) for n in refused] == [(fsm.ERR_CEASE, fsm.CEASE_CONNECTION_REJECTED)]
        await extra.close()
    assert rr.counters.refused_prefix_full == 2
    assert sorted(rr.peers) == ["127.0.1.11", "127.0.1.12", "127.0.1.13"]

    # They go: so do their Peer objects, and a real client gets in.
    for holder in holders:
        await holder.close()
    await until(lambda: not rr.peers, what="the idle dynamic peers forgotten")
    client = await started(speaker("198.51.100.9", "127.0.1.9", rr.listen_port))
    await until(lambda: client.peers["127.0.0.1"].established, 20, what="a client after the flood")


async def test_connections_in_open_sent_are_bounded_and_held_briefly(started):
    rr = await started(Reflector(rr_cfg([{"prefix": "127.0.1.0/24", "asn": 65000}], max_opening=2,
                                        open_hold_time=3)))
    silent = [await RawPeer.connect(f"127.0.1.{i}", rr.listen_port) for i in (21, 22)]
    await until(lambda: sum(p.opening() for p in rr.peers.values()) == 2, what="two in OpenSent")
    third = await RawPeer.connect("127.0.1.23", rr.listen_port)
    assert [(n.code, n.subcode) for n in notifications(await third.messages(None))] == [
        (fsm.ERR_CEASE, fsm.CEASE_CONNECTION_REJECTED)]
    assert rr.counters.refused_opening == 1
    # open_hold_time: a connection that never sends its OPEN gets the hold timer's NOTIFICATION (RFC 4271
    # 6.5) after 3 s, not 240.
    for peer in silent:
        assert [n.code for n in notifications(await peer.messages(None, timeout=10))] == [fsm.ERR_HOLD_TIMER]
        await peer.close()
    await until(lambda: not rr.peers, what="the silent peers forgotten")


# -- max-prefix -------------------------------------------------------------------------------------------


def evpn_update(negotiated: wire.Negotiated, count: int, rd: str = "198.51.100.30:1") -> bytes:
    routes = [MacIpRoute(rd=rd, mac=f"02:00:00:01:{i // 256:02x}:{i % 256:02x}", ip=f"10.3.{i // 256}.{i % 256}",
                         vsid=5001, next_hop="198.51.100.30", route_targets=("65000:5001",)) for i in range(count)]
    return b"".join(wire.encode_update(negotiated, routes))


def agent_speaker(**neighbor: Any) -> Speaker:
    """A speaker as the agent runs it (typed RIB), listening for one passive neighbour."""
    return Speaker(bgp_config.parse({
        "asn": 65000, "router_id": "198.51.100.40", "hold_time": 9,
        "listen": {"address": "127.0.0.1", "port": 0},
        "neighbours": [{"address": "127.0.1.30", "asn": 65000, "passive": True, **neighbor}]}))


async def test_max_prefix_teardown_sends_cease_1_with_the_limit_and_holds_the_peer_down(started):
    s = await started(agent_speaker(max_prefix={"limit": 5, "action": "teardown", "restart": 60}))
    peer = await RawPeer.connect("127.0.1.30", s.listen_port)
    negotiated = await peer.open("198.51.100.30")
    await peer.send(evpn_update(negotiated, 6))
    seen = [m for m in await peer.messages(None) if m[0] == wire.MessageType.NOTIFICATION]
    (code, subcode, data), = [wire.decode_notification(body) for _, body in seen]
    # RFC 4486 section 4: AFI, SAFI and the upper bound.
    assert (code, subcode) == (fsm.ERR_CEASE, fsm.CEASE_MAX_PREFIX)
    assert data == struct.pack("!HBI", 25, 70, 5)
    await peer.close()
    await until(lambda: not s.rib.loc.best_paths(), what="its routes dropped")
    assert s.counters.max_prefix_events == 1
    # Within the restart time, it is refused.
    again = await RawPeer.connect("127.0.1.30", s.listen_port)
    assert [(n.code, n.subcode) for n in notifications(await again.messages(None))] == [
        (fsm.ERR_CEASE, fsm.CEASE_CONNECTION_REJECTED)]
    await again.close()


async def test_max_prefix_warn_and_a_speaker_that_keeps_no_routes(started):
    s = await started(agent_speaker(max_prefix=5))
    peer = await RawPeer.connect("127.0.1.30", s.listen_port)
    negotiated = await peer.open("198.51.100.30")
    await peer.send(evpn_update(negotiated, 8))
    await until(lambda: len(s.rib.loc.best_paths()) == 8, what="the routes kept (warning only)")
    assert s.counters.max_prefix_events == 1 and s.peers["127.0.1.30"].established
    await peer.close()

    # The gateway's upstream session only announces: what the peer sends is counted, never stored.
    config = bgp_config.parse({"asn": 65000, "router_id": "198.51.100.41", "listen": {"address": "127.0.0.1",
                               "port": 0}, "neighbours": [{"address": "127.0.1.31", "asn": 65000, "passive": True}]})
    upstream = await started(Speaker(replace(config, accept_routes=False)))
    peer = await RawPeer.connect("127.0.1.31", upstream.listen_port)
    negotiated = await peer.open("198.51.100.31")
    await peer.send(evpn_update(negotiated, 50, rd="198.51.100.31:1"))
    await until(lambda: upstream.counters.routes_ignored == 50, what="the routes counted")
    assert not upstream.rib.loc.best_paths()
    await peer.close()


def test_max_prefix_and_limits_config_errors_name_the_field():
    with pytest.raises(ConfigError) as err:
        bgp_config.parse({"asn": 65000, "router_id": "198.51.100.1",
                          "neighbors": [{"address": "192.0.2.1", "asn": 65000, "max_prefix": {"limit": 0}}]})
    assert err.value.field == "neighbors[0].max_prefix.limit"
    with pytest.raises(ConfigError) as err:
        rr_cfg([{"prefix": "127.0.1.0/24", "asn": 65000, "max_connections": 0}])
    assert err.value.field == "neighbors[0].max_connections"
    with pytest.raises(ConfigError) as err:
        rr_cfg([{"prefix": "127.0.1.0/24", "asn": 65000, "announce_route_targets": ["65000"]}])
    assert err.value.field == "neighbors[0].announce_route_targets[0]"
    with pytest.raises(ConfigError) as err:
        rr_cfg([], write_buffer_limit=10)
    assert err.value.field == "write_buffer_limit"
    # Defaults: every session has a max-prefix.
    default = bgp_config.parse({"asn": 65000, "router_id": "198.51.100.1",
                                "neighbors": [{"address": "192.0.2.1", "asn": 65000}]})
    assert default.neighbors[0].max_prefix == bgp_config.MaxPrefix(bgp_config.DEFAULT_MAX_PREFIX_LIMIT)


# -- reflector inbound policy -----------------------------------------------------------------------------


async def test_a_client_may_announce_only_its_route_targets(started):
    rr = await started(Reflector(rr_cfg([
        {"address": "127.0.1.1", "asn": 65000, "passive": True, "announce_route_targets": ["65000:5001"]},
        {"prefix": "127.0.1.0/24", "asn": 65000}])))
    a = await started(speaker("198.51.100.1", "127.0.1.1", rr.listen_port))
    b = await started(speaker("198.51.100.2", "127.0.1.2", rr.listen_port))
    own = route(1, vsid=5001)
    foreign = route(2, vsid=5002)
    both = MacIpRoute(rd="198.51.100.1:1", mac="02:00:00:00:00:03", ip="10.1.0.3", vsid=5001,
                      next_hop="198.51.100.1", route_targets=("65000:5001", "65000:5002"))
    await a.announce([foreign, both, own])
    await until(lambda: set(held(b)) == {own.key}, what="the authorised route reflected")
    assert rr.stats.policy_dropped == 2 and rr.stats.per_peer["127.0.1.1"].policy_dropped == 2
    # An authorised route re-announced with a foreign target is withdrawn (treat-as-withdraw).
    await a.announce([MacIpRoute(rd=own.rd, mac=own.mac, ip=own.ip, vsid=5002, next_hop=own.next_hop,
                                 route_targets=("65000:5002",))])
    await until(lambda: not held(b), what="the route withdrawn at the other client")
    # Other clients are not filtered.
    await b.announce([route(4, vsid=5002, rd="198.51.100.2:1")])
    await until(lambda: len(held(a)) == 1, what="b's route at a")


def test_the_agent_and_gateway_peers_carry_max_prefix_to_their_sessions():
    top = bgp_config.Reader({"route_reflectors": [
        {"address": "192.0.2.1", "max_prefix": {"limit": 1000, "action": "warn"}}, {"address": "192.0.2.2"}]}, "")
    first, second = bgp_config.read_peers(top, "route_reflectors", 65000)
    assert first.neighbor().max_prefix == bgp_config.MaxPrefix(1000, bgp_config.MaxPrefixAction.WARN)
    assert second.neighbor().max_prefix == bgp_config.DEFAULT_MAX_PREFIX
    with pytest.raises(ConfigError) as err:
        bgp_config.read_peers(bgp_config.Reader({"upstream": [{"address": "192.0.2.1", "asn": 64496,
                                                             "max_prefix": {"limit": 5, "restart": -1}}]}, ""),
                              "upstream", None)
    assert err.value.field == "upstream[0].max_prefix.restart"
