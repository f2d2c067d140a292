"""The speaker's side of BFD (bgp/speaker.py): which BFD sessions it asks for, and what a BFD session going
down does to a real Established BGP session between two of our speakers on loopback. The BFD endpoint is
an in-memory stand-in whose state changes the test delivers; the wire protocol and the endpoint against
FRR's bfdd are in tests/integration/test_bgp_bfd_frr.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from nvfabric.bgp import config
from nvfabric.bgp.bfd import BfdConfig, BfdState, BfdStatus, Diagnostic
from nvfabric.bgp.client import Client, RouteUpdate
from nvfabric.bgp.reflector import config as rr_config
from nvfabric.bgp.reflector.daemon import Reflector
from nvfabric.bgp.routes import MacIpRoute
from nvfabric.bgp.speaker import PeerStatus, Speaker
from tests.waits import until

ROUTE = MacIpRoute(rd="198.51.100.1:1", mac="00:15:5d:01:02:03", ip="10.1.0.5", vsid=5001,
                   next_hop="198.51.100.1", route_targets=("65000:5001",))


class FakeBfd:
    """The endpoint's contract (bgp/bfd/endpoint.py), in memory: `change()` delivers a state change."""

    def __init__(self) -> None:
        self.sessions: dict[str, tuple[BfdConfig, Callable[[BfdStatus], None], str | None]] = {}
        self.added: list[tuple[str, BfdConfig, str | None]] = []
        self.removed: list[str] = []
        self.started = self.stopped = False
        self.states: dict[str, BfdState] = {}
        self.downs: dict[str, int] = {}

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def add(self, peer: str, cfg: BfdConfig, on_change: Callable[[BfdStatus], None],
            local_address: str | None = None) -> None:
        self.sessions[peer] = (cfg, on_change, local_address)
        self.added.append((peer, cfg, local_address))
        self.states.setdefault(peer, BfdState.DOWN)

    def remove(self, peer: str) -> None:
        del self.sessions[peer]
        self.states.pop(peer, None)
        self.removed.append(peer)

    def _status(self, peer: str, state: BfdState, diagnostic: Diagnostic = Diagnostic.NONE,
                remote_state: BfdState | None = None) -> BfdStatus:
        return BfdStatus(peer, self.sessions[peer][2], state, remote_state or state, 1, 2, diagnostic,
                         Diagnostic.NONE, 0.3, 0.9, None, 0, self.downs.get(peer, 0), 0, 0, 0)

    def status(self) -> list[BfdStatus]:
        return [self._status(p, self.states[p]) for p in sorted(self.sessions)]

    def change(self, peer: str, state: BfdState, diagnostic: Diagnostic = Diagnostic.NONE,
               remote_state: BfdState | None = None) -> None:
        if self.states.get(peer) is BfdState.UP and state is not BfdState.UP:
            self.downs[peer] = self.downs.get(peer, 0) + 1
        self.states[peer] = state
        self.sessions[peer][1](self._status(peer, state, diagnostic, remote_state))


def cfg(router_id: str, **extra: Any) -> config.SpeakerConfig:
    return config.parse({"asn": 65000, "router_id": router_id, "hold_time": 9, **extra})


class Watcher:
    """Every event a client delivers, collected in the background."""

    def __init__(self, client: Client) -> None:
        self.events: list[Any] = []
        self.task = asyncio.get_running_loop().create_task(self._run(client))

    async def _run(self, client: Client) -> None:
        async for event in client.events():
            self.events.append(event)

    def statuses(self, state: str) -> list[PeerStatus]:
        return [e for e in self.events if isinstance(e, PeerStatus) and e.state == state]

    def routes(self) -> dict[Any, Any]:
        table: dict[Any, Any] = {}
        for e in self.events:
            if isinstance(e, RouteUpdate):
                table[e.key] = e.route
        return {k: v for k, v in table.items() if v is not None}


@pytest.fixture
async def pair():
    """`server` (127.0.0.1, bfd to 127.0.0.2, passive BGP) and `client` (127.0.0.2, dials, announces ROUTE),
    both with graceful restart (its stale period is what a BFD teardown must not give)."""
    fake = FakeBfd()
    server = Client(cfg("198.51.100.100", listen={"address": "127.0.0.1", "port": 0},
                        neighbors=[{"address": "127.0.0.2", "asn": 65000, "passive": True, "bfd": True}]))
    server.speaker = Speaker(server.config, bfd=fake)
    server.speaker.subscribe(server._on_notices)
    await fake.start()  # a given endpoint is its maker's to start and stop
    await server.start()
    client = Client(cfg("198.51.100.1", neighbors=[{"address": "127.0.0.1", "asn": 65000, "local_address": "127.0.0.2",
                                                    "port": server.speaker.listen_port}]))
    await client.start()
    await client.announce([ROUTE])
    watch_server, watch_client = Watcher(server), Watcher(client)
    await until(lambda: ROUTE.key in watch_server.routes(), what="the route at the server")
    yield fake, server, client, watch_server, watch_client
    for c in (client, server):
        await c.stop()
    for w in (watch_server, watch_client):
        w.task.cancel()


async def test_configured_neighbour_gets_an_active_bfd_session_at_start_removed_at_stop(pair):
    fake, server, *_ = pair
    assert fake.added == [("127.0.0.2", BfdConfig(), None)]
    assert [s.peer for s in server.speaker.bfd_status()] == ["127.0.0.2"]
    await server.stop()
    # The endpoint is shared (given): the speaker takes its own sessions away and leaves it running.
    assert fake.removed == ["127.0.0.2"] and not fake.stopped


async def test_bfd_down_closes_the_session_with_cease_bfd_down_and_its_routes_go_at_once(pair):
    fake, server, client, watch_server, watch_client = pair
    fake.change("127.0.0.2", BfdState.INIT)
    fake.change("127.0.0.2", BfdState.UP)
    await asyncio.sleep(0)  # nothing happens on Up
    fake.change("127.0.0.2", BfdState.DOWN, Diagnostic.CONTROL_DETECTION_TIME_EXPIRED)
    # The client (the other side) is told why: NOTIFICATION Cease (6) / BFD Down (10), RFC 9384.
    down = await until(lambda: watch_client.statuses("down"), what="the client's session down")
    assert down[0].reason.startswith("notification-received 6/10"), down[0].reason
    mine = await until(lambda: watch_server.statuses("down"), what="the server's session down")
    assert "BFD down" in mine[0].reason
    # Gone at once, although both sides have graceful restart: no stale period.
    await until(lambda: ROUTE.key not in watch_server.routes(), 2, what="the route withdrawn at the server")
    assert server.speaker.counters.bfd_teardowns == 1
    # The BGP session is not held down: it comes back on its own (BFD will have to come Up again before
    # another Down counts).
    await until(lambda: len(watch_server.statuses("established")) == 2, 15, what="the session back")
    await until(lambda: ROUTE.key in watch_server.routes(), what="the route back")


async def test_bfd_down_that_never_was_up_or_taken_down_by_the_peer_keeps_the_session(pair):
    fake, server, client, watch_server, watch_client = pair
    fake.change("127.0.0.2", BfdState.DOWN, Diagnostic.CONTROL_DETECTION_TIME_EXPIRED)  # never Up
    fake.change("127.0.0.2", BfdState.UP)
    fake.change("127.0.0.2", BfdState.DOWN, Diagnostic.NEIGHBOR_SIGNALED_SESSION_DOWN,
                remote_state=BfdState.ADMIN_DOWN)  # RFC 5882 3.2: not a failure
    # The owner task has handled the changes (twice: they reach its queue behind the first call)
    await server.speaker.call(lambda: None)
    await server.speaker.call(lambda: None)
    assert not watch_server.statuses("down") and not watch_client.statuses("down")
    assert server.speaker.peers["127.0.0.2"].established is not None
    assert server.speaker.counters.bfd_teardowns == 0


async def test_dynamic_neighbour_gets_a_session_when_established_removed_when_forgotten():
    fake = FakeBfd()
    server = Speaker(cfg("198.51.100.100", listen={"address": "127.0.0.1", "port": 0},
                         dynamic_neighbors=[{"prefix": "127.0.1.0/24", "asn": 65000,
                                             "bfd": {"transmit_interval": 100, "receive_interval": 100}}]), bfd=fake)
    await server.start()
    assert not fake.added
    client = Speaker(cfg("198.51.100.1", neighbors=[{"address": "127.0.0.1", "asn": 65000, "local_address": "127.0.1.7",
                                                     "port": server.listen_port}]))
    await client.start()
    try:
        await until(lambda: fake.added, what="a BFD session for the dynamic peer")
        assert fake.added == [("127.0.1.7", BfdConfig(100, 100, 3), "127.0.0.1")]
        fake.change("127.0.1.7", BfdState.UP)
        fake.change("127.0.1.7", BfdState.DOWN, Diagnostic.CONTROL_DETECTION_TIME_EXPIRED)
        await until(lambda: fake.removed == ["127.0.1.7"], what="the session removed with the forgotten peer")
        assert server.counters.bfd_teardowns == 1
        # It dials again: a new session for the new Peer.
        await until(lambda: len(fake.added) == 2, 15, what="a new BFD session")
    finally:
        await client.stop()
        await server.stop()


async def test_reflector_reload_adds_changes_and_removes_bfd_without_resetting_bgp():
    fake = FakeBfd()

    def rr_cfg(bfd: Any) -> rr_config.ReflectorConfig:
        neighbor = {"address": "127.0.0.2", "asn": 65000, "passive": True}
        return rr_config.parse({"asn": 65000, "router_id": "198.51.100.100", "hold_time": 9,
                                "listen": {"address": "127.0.0.1", "port": 0},
                                "neighbors": [neighbor if bfd is None else {**neighbor, "bfd": bfd}]})

    rr = Reflector(rr_cfg(None))
    rr.bfd = fake  # in place of the one it would make on the first reload that brings `bfd`
    await rr.start()
    client = Speaker(cfg("198.51.100.1", neighbors=[{"address": "127.0.0.1", "asn": 65000, "local_address": "127.0.0.2",
                                                     "port": rr.listen_port}]))
    await client.start()
    try:
        peer = await until(lambda: rr.peers["127.0.0.2"].established and rr.peers["127.0.0.2"], what="established")
        assert not fake.added
        await rr.reload(rr_cfg(True))
        await rr.reload(rr_cfg({"multiplier": 5}))
        assert fake.added == [("127.0.0.2", BfdConfig(), None), ("127.0.0.2", BfdConfig(multiplier=5), None)]
        await rr.reload(rr_cfg(False))
        assert fake.removed == ["127.0.0.2"] and rr.bfd_status() == []
        assert rr.peers["127.0.0.2"] is peer and peer.establishments == 1  # BGP untouched throughout
        with pytest.raises(config.ConfigError) as err:
            rr_cfg({"transmit_interval": 5})
        assert err.value.field == "neighbors[0].bfd.transmit_interval"
    finally:
        await client.stop()
        await rr.stop()


async def test_reflector_reports_bfd_in_its_summary_neighbors_status_and_metrics_until_removed(capsys):
    from aiohttp.test_utils import TestClient, TestServer

    from nvfabric.bgp.reflector import api
    from nvfabric.cli import main

    fake = FakeBfd()

    def rr_cfg(bfd: bool) -> rr_config.ReflectorConfig:
        return rr_config.parse({"asn": 65000, "router_id": "198.51.100.100",
                                "listen": {"address": "127.0.0.1", "port": 0},
                                "neighbors": [{"address": "127.0.0.2", "asn": 65000, "passive": True, "bfd": bfd}]})

    rr = Reflector(rr_cfg(True))
    rr.bfd = fake
    await rr.start()
    try:
        fake.change("127.0.0.2", BfdState.UP)
        fake.change("127.0.0.2", BfdState.DOWN, Diagnostic.CONTROL_DETECTION_TIME_EXPIRED)
        fake.change("127.0.0.2", BfdState.UP)
        async with TestClient(TestServer(api.build_app(rr, "t")), headers={"Authorization": "Bearer t"}) as http:
            summary = await (await http.get("/v1/summary")).json()
            assert [(b["peer"], b["state"]) for b in summary["bfd"]] == [("127.0.0.2", "up")]
            (neighbor,) = (await (await http.get("/v1/neighbors")).json())["neighbors"]
            assert neighbor["bfd"] == "up"
            code = await asyncio.to_thread(main, ["rr", "status", "--api", str(http.make_url("")).rstrip("/"),
                                                  "--token", "t"])
            header, row = [line.split() for line in capsys.readouterr().out.splitlines() if "127.0.0.2" in line
                           or "neighbor" in line][:2]
            assert code == 0 and row[header.index("bfd")] == "up"
            metrics = await (await http.get("/metrics")).text()
            assert 'nvfabric_bfd_session_up{peer="127.0.0.2"} 1.0' in metrics
            assert 'nvfabric_bfd_session_downs_total{peer="127.0.0.2"} 1.0' in metrics
            await rr.reload(rr_cfg(False))
            assert (await (await http.get("/v1/summary")).json())["bfd"] == []
            assert (await (await http.get("/v1/neighbors")).json())["neighbors"][0]["bfd"] is None
            assert 'nvfabric_bfd_session_up{peer="127.0.0.2"}' not in await (await http.get("/metrics")).text()
    finally:
        await rr.stop()


def test_the_agent_and_the_gateway_read_bfd_on_their_peers_and_the_gateway_shares_one_endpoint():
    from nvfabric.gateway.config import GatewayConfig
    from nvfabric.gateway.gateway import Gateway
    from nvfabric.hostagent.config import AgentConfig

    agent = {"asn": 65001, "router_id": "198.51.100.11", "provider_addresses": ["198.51.100.11"],
             "route_reflectors": [{"address": "198.51.100.100", "bfd": True},
                                  {"address": "198.51.100.101", "bfd": {"multiplier": 0}}],
             "state_dir": "/tmp/x"}
    with pytest.raises(config.ConfigError) as err:
        AgentConfig.from_dict(agent)
    assert err.value.field == "route_reflectors[1].bfd.multiplier"
    agent["route_reflectors"] = agent["route_reflectors"][:1]
    assert AgentConfig.from_dict(agent).route_reflectors[0].neighbor().bfd == BfdConfig()

    gw = GatewayConfig.from_dict({
        "asn": 65001, "router_id": "198.51.100.21", "provider_addresses": ["198.51.100.21"],
        "external": {"interfaces": ["eth2"], "address4": "203.0.113.2"},
        "route_reflectors": [{"address": "198.51.100.100", "bfd": True}],
        "upstream": [{"address": "203.0.113.1", "asn": 64496, "bfd": {"transmit_interval": 100}}]})
    assert gw.upstream[0].bfd == BfdConfig(transmit_interval=100)
    gateway = Gateway(gw)
    speakers = [gateway._upstream.client.speaker, gateway._fabric.client.speaker]  # type: ignore[union-attr]
    # One UDP port 3784 per namespace: both speakers use the gateway's one endpoint.
    assert speakers[0].bfd is speakers[1].bfd is not None
    assert gateway.bfd_status() == []
