"""KEEPALIVEs under back-pressure both ways, over real TCP on loopback: a host learning a large table from a
reflector falls behind (its inbox full, its reading paused) while the reflector's writing to it is paused
(the host does not read). The sessions must outlive three hold times: the host's KEEPALIVEs reach the
reflector, and the reflector's wait in the host's socket. And the case that expired the 100,000-CA first
start in the VM (docs/benchmarks.md): a host that keeps up with its inbox but whose socket is readable at
every turn of its loop must still send its KEEPALIVEs."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from nvfabric.bgp import config as bgp_config
from nvfabric.bgp import fsm
from nvfabric.bgp.reflector.daemon import Reflector
from nvfabric.bgp.routes import Family
from nvfabric.bgp.session import Peer, PeerEvent
from nvfabric.bgp.speaker import Speaker
from tests.unit.test_bgp_bounds import started  # noqa: F401 - fixture
from tests.unit.test_reflector_daemon import held, route, rr_cfg, speaker, until

ROUTES = 20000


def host(router_id: str, local: str, port: int) -> Speaker:
    """The agent's speaker, hold time 3 s, a small inbox: it falls behind at once."""
    return Speaker(bgp_config.parse({
        "asn": 65000, "router_id": router_id, "hold_time": 3, "families": ["l2vpn-evpn"],
        "neighbours": [{"address": "127.0.0.1", "asn": 65000, "port": port, "local_address": local}]}),
        inbox_size=2)


def slowed(s: Speaker, delay: float, after_established: bool = True) -> asyncio.Event:
    """The owner of `s` takes one event per `delay` seconds (from its first Established on, if asked): a
    host busy learning. Set the returned event to let it run at full speed again."""
    take = s.inbox.get
    fast = asyncio.Event()
    behind = [not after_established]

    async def get() -> Any:
        if behind[0] and not fast.is_set():
            await asyncio.sleep(delay)
        item = await take()
        if isinstance(item, PeerEvent) and isinstance(item.event, fsm.Established):
            behind[0] = True
        return item

    s.inbox.get = get  # type: ignore[method-assign]
    return fast


def small_send_buffers(monkeypatch: Any) -> None:
    """The reflector's kernel send buffers at 4 KiB: its writes back up, and pause, fast."""
    accept = Peer.accept

    def accept_small(peer: Peer, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        accept(peer, sock)

    monkeypatch.setattr(Peer, "accept", accept_small)


def small_receive_buffers(monkeypatch: Any) -> None:
    """The dialling speakers' kernel receive buffers at 16 KiB: a turn of the loop reads a few UPDATEs, so
    turns are short and many, and the reflector's writing pauses for a short time at each (not for a hold
    time, which would reset the session by design: bgp/session.py `_write_stalled`)."""
    connect = Peer._connect_socket

    async def connect_small(peer: Peer) -> socket.socket:
        sock = await connect(peer)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        return sock

    monkeypatch.setattr(Peer, "_connect_socket", connect_small)


async def test_a_host_behind_on_a_large_table_keeps_its_session_and_its_keepalives_reach_the_reflector(
        started, monkeypatch):  # noqa: F811
    """The host's owner takes one event per 50 ms from Established on (inbox of 2: its reading paused), the
    reflector's writes to it paused (small buffers): for three hold times the reflector hears from it."""
    small_send_buffers(monkeypatch)
    small_receive_buffers(monkeypatch)
    loop = asyncio.get_running_loop()
    rr = await started(Reflector(rr_cfg([{"prefix": "127.0.1.0/24", "asn": 65000}], hold_time=3,
                                        write_buffer_limit=65536)))
    source = await started(speaker("198.51.100.1", "127.0.1.1", rr.listen_port))
    await source.announce([route(i) for i in range(ROUTES)])
    await until(lambda: len(rr.rib.best[Family.L2VPN_EVPN]) == ROUTES, 60, what="the table at the reflector")

    agent = host("198.51.100.40", "127.0.1.40", rr.listen_port)
    await agent.announce([route(0, rd="198.51.100.40:1")])  # its own table, sent with End-of-RIB
    fast = slowed(agent, 0.05)
    await started(agent)
    await until(lambda: rr.peers.get("127.0.1.40") and rr.peers["127.0.1.40"].established, what="the session up")
    at_rr = rr.peers["127.0.1.40"]
    at_agent = agent.peers["127.0.0.1"]
    await until(lambda: agent.inbox.producer_pauses > 0 and at_rr.write_pauses > 0, 20,
                what="the agent's reading and the reflector's writing paused")
    conn = at_rr.established
    assert conn is not None and conn.fsm is not None
    start = loop.time()
    seen = conn.fsm.counters.messages_in
    heard = 0
    while loop.time() - start < 9 and at_rr.established is conn:
        await until(lambda seen=seen: conn.fsm.counters.messages_in > seen or at_rr.established is not conn, 5,
                    what="a message from the agent at the reflector")
        seen = conn.fsm.counters.messages_in
        heard += 1
    assert at_rr.established is conn and at_agent.establishments == 1, conn.fsm.close_reason
    assert heard >= 3
    fast.set()
    await until(lambda: len(held(agent)) == ROUTES, 60, what="every route at the agent")
    assert at_rr.establishments == 1 and at_agent.establishments == 1


async def test_the_reflector_behind_when_the_hosts_end_of_rib_arrives_keeps_the_session(started, monkeypatch):  # noqa: F811
    """The reverse: the reflector's own inbox is full (another client's churn) when the host's End-of-RIB
    arrives, and the host is behind on the table. Neither side expires the other in three hold times."""
    small_send_buffers(monkeypatch)
    small_receive_buffers(monkeypatch)
    loop = asyncio.get_running_loop()
    rr = await started(Reflector(rr_cfg([{"prefix": "127.0.1.0/24", "asn": 65000}], hold_time=3,
                                        write_buffer_limit=65536), inbox_size=2))
    source = await started(speaker("198.51.100.1", "127.0.1.1", rr.listen_port))
    await source.announce([route(i) for i in range(ROUTES)])
    await until(lambda: len(rr.rib.best[Family.L2VPN_EVPN]) == ROUTES, 60, what="the table at the reflector")

    rr_fast = slowed(rr, 0.02, after_established=False)
    churn = [route(i, rd="198.51.100.1:2") for i in range(ROUTES)]
    churning = asyncio.get_running_loop().create_task(source.announce(churn))
    await until(lambda: rr.inbox.producer_pauses > 0, 20, what="the reflector's inbox full")
    agent = host("198.51.100.40", "127.0.1.40", rr.listen_port)
    await agent.announce([route(0, rd="198.51.100.40:1")])
    fast = slowed(agent, 0.05)
    await started(agent)
    await until(lambda: rr.peers.get("127.0.1.40") and rr.peers["127.0.1.40"].established, 20,
                what="the session up")
    at_rr = rr.peers["127.0.1.40"]
    at_agent = agent.peers["127.0.0.1"]
    conn = at_rr.established
    assert conn is not None and conn.fsm is not None
    start = loop.time()
    while loop.time() - start < 9 and at_rr.established is conn and at_agent.established is not None:
        await asyncio.sleep(0.1)
    assert at_rr.established is conn, conn.fsm.close_reason
    assert at_agent.established is not None and at_agent.establishments == 1
    assert rr.inbox.producer_pauses > 0 and agent.inbox.producer_pauses > 0
    rr_fast.set()
    fast.set()
    await churning
    await until(lambda: len(held(agent)) == 2 * ROUTES, 60, what="every route at the agent")
    assert at_rr.establishments == 1 and at_agent.establishments == 1


async def test_a_host_reading_a_table_without_pause_still_sends_its_keepalives(started, monkeypatch):  # noqa: F811
    """The host keeps up with its inbox but each UPDATE costs it CPU (decoding under a slow CPU), so its
    socket from the reflector is readable at every turn of its loop for longer than three hold times. Its
    KEEPALIVE timer must still fire: the reflector hears from it and keeps the session."""
    small_receive_buffers(monkeypatch)  # (and there is always more to read)
    loop = asyncio.get_running_loop()
    rr = await started(Reflector(rr_cfg([{"prefix": "127.0.1.0/24", "asn": 65000}], hold_time=3)))
    source = await started(speaker("198.51.100.1", "127.0.1.1", rr.listen_port))
    await source.announce([route(i) for i in range(ROUTES)])
    await until(lambda: len(rr.rib.best[Family.L2VPN_EVPN]) == ROUTES, 60, what="the table at the reflector")

    busy = [True]

    def costly(negotiated: Any, body: bytes, ref: Any) -> Any:
        if busy[0]:
            time.sleep(0.06)  # (the CPU a slow host spends on an UPDATE: the loop is busy, not waiting)
        return fsm.typed_decoder(negotiated, body, ref)

    agent = Speaker(bgp_config.parse({
        "asn": 65000, "router_id": "198.51.100.40", "hold_time": 3, "families": ["l2vpn-evpn"],
        "neighbours": [{"address": "127.0.0.1", "asn": 65000, "port": rr.listen_port,
                        "local_address": "127.0.1.40"}]}), decoder=costly)
    await agent.announce([route(0, rd="198.51.100.40:1")])
    await started(agent)
    await until(lambda: rr.peers.get("127.0.1.40") and rr.peers["127.0.1.40"].established, what="the session up")
    at_rr = rr.peers["127.0.1.40"]
    conn = at_rr.established
    assert conn is not None and conn.fsm is not None
    start = loop.time()
    before = conn.fsm.counters.messages_in
    await until(lambda: loop.time() - start > 9 or at_rr.established is not conn
                or len(held(agent)) == ROUTES, 20, what="three hold times or the table in")
    assert at_rr.established is conn, conn.fsm.close_reason
    assert loop.time() - start > 9, "the table came in before three hold times: the test proves nothing"
    # (nothing but KEEPALIVEs: its route and End-of-RIB went with its OPEN's answer, one is due every second)
    assert conn.fsm.counters.messages_in - before >= 3
    busy[0] = False
    await until(lambda: len(held(agent)) == ROUTES, 60, what="every route at the agent")
    assert at_rr.establishments == 1 and agent.peers["127.0.0.1"].establishments == 1
