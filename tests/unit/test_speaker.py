"""Our speakers and clients talking to each other over real TCP on loopback (interop with FRR and GoBGP is
in tests/integration). Every check looks at what a client delivers, never at internals being called."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from nvfabric.bgp import config, fsm, wire
from nvfabric.bgp.client import Client, RouteUpdate
from nvfabric.bgp.routes import Family, MacIpRoute
from nvfabric.bgp.speaker import PeerStatus

ROUTE = MacIpRoute(rd="198.51.100.1:1", mac="00:15:5d:01:02:03", ip="10.1.0.5", vsid=5001,
                   next_hop="198.51.100.1", route_targets=("65000:5001",), router_mac="02:00:5e:10:00:01",
                   mobility_seq=3)


def cfg(router_id: str, **extra: Any) -> config.SpeakerConfig:
    return config.parse({"asn": 65000, "router_id": router_id, "hold_time": 9, **extra})


async def next_event(client: Client, it, want, timeout: float = 10.0):
    async def find():
        async for event in it:
            if want(event):
                return event
    return await asyncio.wait_for(find(), timeout)


@pytest.fixture
async def server():
    """A passive client on 127.0.0.1 accepting 127.0.0.2 and 127.0.0.3 (configured) and 127.0.1.0/24 (dynamic)."""
    c = Client(cfg("198.51.100.100", listen={"address": "127.0.0.1", "port": 0},
                   neighbors=[{"address": "127.0.0.2", "asn": 65000, "passive": True},
                               {"address": "127.0.0.3", "asn": 65000, "passive": True}],
                   dynamic_neighbors=[{"prefix": "127.0.1.0/24", "asn": 65000}]))
    await c.start()
    yield c
    await c.stop()


def active(router_id: str, local: str, port: int, **extra: Any) -> Client:
    return Client(cfg(router_id, neighbors=[{"address": "127.0.0.1", "asn": 65000, "port": port,
                                              "local_address": local}], **extra))


async def test_route_goes_across_and_is_withdrawn(server: Client):
    a = active("198.51.100.1", "127.0.0.2", server.speaker.listen_port)
    await a.start()
    try:
        await a.announce([ROUTE])
        it = server.events()
        got = await next_event(server, it, lambda e: isinstance(e, RouteUpdate))
        assert got.route == ROUTE
        await a.withdraw([ROUTE])
        gone = await next_event(server, it, lambda e: isinstance(e, RouteUpdate))
        assert gone.key == ROUTE.key and gone.route is None
    finally:
        await a.stop()


async def test_same_route_from_two_peers_is_one_route_until_both_withdraw(server: Client):
    a = active("198.51.100.1", "127.0.0.2", server.speaker.listen_port)
    b = active("198.51.100.2", "127.0.0.3", server.speaker.listen_port)
    await a.start()
    await b.start()
    try:
        it = server.events()
        await a.announce([ROUTE])
        await next_event(server, it, lambda e: isinstance(e, RouteUpdate) and e.route == ROUTE)
        await b.announce([ROUTE])
        # b's copy arrives (seen by its End-of-RIB after it) without a second announce in the stream.
        await b.stop()
        await a.withdraw([ROUTE])
        gone = await next_event(server, it, lambda e: isinstance(e, RouteUpdate))
        assert gone.route is None
    finally:
        await a.stop()


async def test_dedup_across_peers_delivers_one_update(server: Client):
    a = active("198.51.100.1", "127.0.0.2", server.speaker.listen_port)
    b = active("198.51.100.2", "127.0.0.3", server.speaker.listen_port)
    await a.announce([ROUTE])
    await b.announce([ROUTE])
    await a.start()
    await b.start()
    try:
        it = server.events()
        eors = 0
        updates = []
        async def collect():
            nonlocal eors
            async for e in it:
                if isinstance(e, RouteUpdate):
                    updates.append(e)
                elif e.state == "end-of-rib":
                    eors += 1
                    if eors == 2:
                        return
        await asyncio.wait_for(collect(), 10)
        assert [u.route for u in updates] == [ROUTE]
        await a.withdraw([ROUTE])
        # b still has it: the stream is ordered, so the next update is b's marker, not a withdrawal.
        marker = MacIpRoute(rd="198.51.100.2:1", mac="00:15:5d:0f:0f:0f", ip=None, vsid=5001,
                            next_hop="198.51.100.2", route_targets=("65000:5001",))
        await b.announce([marker])
        nxt = await next_event(server, it, lambda e: isinstance(e, RouteUpdate))
        assert nxt.route == marker
        await b.withdraw([ROUTE])
        gone = await next_event(server, it, lambda e: isinstance(e, RouteUpdate))
        assert gone.route is None
    finally:
        await a.stop()
        await b.stop()


async def test_route_target_filter(server: Client):
    other = MacIpRoute(rd="198.51.100.1:2", mac="00:15:5d:09:09:09", ip="10.2.0.5", vsid=6001,
                       next_hop="198.51.100.1", route_targets=("65000:6001",))
    c = Client(cfg("198.51.100.3", neighbors=[{"address": "127.0.0.1", "asn": 65000,
                                                 "port": server.speaker.listen_port, "local_address": "127.0.0.2"}],
                   import_route_targets=["65000:5001"]))
    await c.start()
    try:
        await server.announce([other, ROUTE])
        it = c.events()
        got = await next_event(c, it, lambda e: isinstance(e, RouteUpdate))
        assert got.route == ROUTE
        await next_event(c, it, lambda e: isinstance(e, PeerStatus) and e.state == "end-of-rib")
        assert list(c.routes()) == [ROUTE.key]
    finally:
        await c.stop()


async def test_dynamic_neighbor_accepted(server: Client):
    d = active("198.51.100.7", "127.0.1.7", server.speaker.listen_port)
    await d.start()
    try:
        it = server.events()
        up = await next_event(server, it, lambda e: isinstance(e, PeerStatus) and e.state == "established")
        assert "127.0.1.7" in up.peer
    finally:
        await d.stop()


async def test_unknown_peer_gets_cease_connection_rejected(server: Client):
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.9", 0))
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", server.speaker.listen_port))
    data = await asyncio.wait_for(loop.sock_recv(sock, 100), 5)
    sock.close()
    (msg_type, body), = wire.split_messages(data)[0]
    assert msg_type == wire.MessageType.NOTIFICATION
    assert wire.decode_notification(body)[:2] == (fsm.ERR_CEASE, fsm.CEASE_CONNECTION_REJECTED)


async def raw_handshake(
    port: int, local: str, graceful: wire.GracefulRestart | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, wire.Negotiated]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    mine = wire.Capabilities(asn=65000, router_id="198.51.100.50", hold_time=30,
                             families=frozenset({Family.L2VPN_EVPN}), graceful_restart=graceful)
    writer.write(wire.encode_open(mine))
    (kind, body), = await read(reader, 1)
    negotiated = wire.negotiate(mine, wire.decode_open(body))
    writer.write(wire.encode_keepalive())
    return reader, writer, negotiated


async def read(reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
    buffer, out = b"", []
    while len(out) < count:
        messages, buffer = wire.split_messages(buffer + await asyncio.wait_for(reader.read(65536), 10))
        out += messages
    return out[:count]


async def test_route_refresh_resends_the_table(server: Client):
    await server.announce([ROUTE])
    reader, writer, negotiated = await raw_handshake(server.speaker.listen_port, "127.0.0.2")
    kinds = [k for k, _ in await read(reader, 3)]  # KEEPALIVE, the route, End-of-RIB
    assert kinds == [wire.MessageType.KEEPALIVE, wire.MessageType.UPDATE, wire.MessageType.UPDATE]
    writer.write(wire.encode_route_refresh(Family.L2VPN_EVPN))
    (kind, body), = await read(reader, 1)
    assert kind == wire.MessageType.UPDATE
    assert [p.route for p in wire.decode_update(negotiated, body).announced] == [ROUTE]
    writer.close()


async def test_connection_collision_leaves_one_session():
    """Both sides dial and listen (RFC 4271 6.8): one connection survives, the session is stable."""
    ports = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        s.close()
    def both_ways(router_id: str, me: str, my_port: int, other: str, other_port: int) -> Client:
        return Client(cfg(router_id, listen={"address": me, "port": my_port},
                          neighbors=[{"address": other, "asn": 65000, "port": other_port, "local_address": me}]))

    a = both_ways("198.51.100.1", "127.0.0.11", ports[0], "127.0.0.12", ports[1])
    b = both_ways("198.51.100.2", "127.0.0.12", ports[1], "127.0.0.11", ports[0])
    await a.start()
    await b.start()
    try:
        await b.announce([ROUTE])
        got = await next_event(a, a.events(), lambda e: isinstance(e, RouteUpdate))
        assert got.route == ROUTE
        await asyncio.sleep(1.0)  # a collision loser would be closed in this time
        peer_a, peer_b = a.speaker.peers["127.0.0.12"], b.speaker.peers["127.0.0.11"]
        assert peer_a.state is fsm.State.ESTABLISHED and peer_b.state is fsm.State.ESTABLISHED
        assert peer_a.establishments == 1 and peer_b.establishments == 1
        assert len(peer_a.connections) == 1 and len(peer_b.connections) == 1
    finally:
        await a.stop()
        await b.stop()


async def test_a_peer_reconnecting_replaces_its_old_session_and_keeps_routes_until_end_of_rib(server: Client):
    """RFC 4724 4.2: a new connection from a peer whose old session still looks Established is a restart:
    the old connection goes without a NOTIFICATION, its routes stay (stale) and End-of-RIB sweeps the
    ones not re-announced."""
    graceful = wire.GracefulRestart(60, restarting=True, families=frozenset({(Family.L2VPN_EVPN, True)}))
    kept = MacIpRoute(rd="198.51.100.50:1", mac="00:15:5d:00:00:01", ip="10.1.0.1", vsid=5001,
                      next_hop="198.51.100.50", route_targets=("65000:5001",))
    dropped = MacIpRoute(rd="198.51.100.50:1", mac="00:15:5d:00:00:02", ip="10.1.0.2", vsid=5001,
                         next_hop="198.51.100.50", route_targets=("65000:5001",))
    it = server.events()
    reader1, writer1, negotiated = await raw_handshake(server.speaker.listen_port, "127.0.0.2", graceful)
    writer1.write(b"".join(wire.encode_update(negotiated, [kept, dropped])))
    got = {(await next_event(server, it, lambda e: isinstance(e, RouteUpdate))).route for _ in range(2)}
    assert got == {kept, dropped}

    # The "restarted" peer dials again from the same address; the old connection is closed silently.
    reader2, writer2, negotiated = await raw_handshake(server.speaker.listen_port, "127.0.0.2", graceful)
    try:
        leftover = await asyncio.wait_for(reader1.read(), 10)  # until EOF
    except ConnectionResetError:
        leftover = b""  # aborted: a reset, and certainly no NOTIFICATION
    assert wire.MessageType.NOTIFICATION not in [k for k, _ in wire.split_messages(leftover)[0]]
    # Re-announce one route only, then End-of-RIB: the other is swept, the re-announced one never moved.
    writer2.write(b"".join(wire.encode_update(negotiated, [kept])) + wire.encode_eor(Family.L2VPN_EVPN))
    change = await next_event(server, it, lambda e: isinstance(e, RouteUpdate))
    assert change.key == dropped.key and change.route is None
    assert server.routes() == {kept.key: kept}
    writer1.close()
    writer2.close()


async def test_stale_routes_go_when_the_restart_time_passes(server: Client):
    graceful = wire.GracefulRestart(1, families=frozenset({(Family.L2VPN_EVPN, True)}))
    it = server.events()
    reader, writer, negotiated = await raw_handshake(server.speaker.listen_port, "127.0.0.2", graceful)
    writer.write(b"".join(wire.encode_update(negotiated, [ROUTE])))
    await next_event(server, it, lambda e: isinstance(e, RouteUpdate))
    writer.transport.abort()  # the peer vanishes without a NOTIFICATION
    down = await next_event(server, it, lambda e: isinstance(e, PeerStatus) and e.state == "down")
    lost_at = asyncio.get_running_loop().time()
    assert "connection lost" in down.reason and server.routes() == {ROUTE.key: ROUTE}
    gone = await next_event(server, it, lambda e: isinstance(e, RouteUpdate))
    assert gone.route is None
    assert asyncio.get_running_loop().time() - lost_at >= 0.9  # kept for the advertised restart time


async def test_a_notification_ends_the_session_without_graceful_restart(server: Client):
    graceful = wire.GracefulRestart(60, families=frozenset({(Family.L2VPN_EVPN, True)}))
    it = server.events()
    reader, writer, negotiated = await raw_handshake(server.speaker.listen_port, "127.0.0.2", graceful)
    writer.write(b"".join(wire.encode_update(negotiated, [ROUTE])))
    await next_event(server, it, lambda e: isinstance(e, RouteUpdate))
    writer.write(wire.encode_notification(fsm.ERR_CEASE, fsm.CEASE_ADMIN_SHUTDOWN))
    gone = await next_event(server, it, lambda e: isinstance(e, RouteUpdate))
    assert gone.route is None  # RFC 4724 4.2 applies only to sessions lost without a NOTIFICATION
    writer.close()


@pytest.mark.parametrize("notify", [True, False])
async def test_a_stop_without_notification_is_a_graceful_restart_for_the_peer(server: Client, notify: bool):
    """A client stopped for a restart (the agent) closes without a NOTIFICATION: the peer keeps its routes,
    stale, for the restart time; an administrative stop (a Cease) withdraws them at once."""
    a = active("198.51.100.1", "127.0.0.2", server.speaker.listen_port,
               graceful_restart={"enabled": True, "restart_time": 60})
    await a.start()
    it = server.events()
    try:
        await a.announce([ROUTE])
        assert (await next_event(server, it, lambda e: isinstance(e, RouteUpdate))).route == ROUTE
    finally:
        await a.stop(notify=notify)
    down = await next_event(server, it, lambda e: isinstance(e, PeerStatus) and e.state == "down")
    if notify:
        gone = await next_event(server, it, lambda e: isinstance(e, RouteUpdate))
        assert gone.key == ROUTE.key and gone.route is None
    else:
        assert "notification" not in down.reason.lower(), down.reason
        assert server.routes() == {ROUTE.key: ROUTE}
