"""The reflector in-process with our speakers as clients, over real TCP on loopback: what each client's RIB
holds is the observable (routes, ORIGINATOR_ID, CLUSTER_LIST). Namespaced runs with FRR and GoBGP are in
tests/integration/test_rr_*.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from nvfabric.bgp import config as bgp_config
from nvfabric.bgp.config import ConfigError
from nvfabric.bgp.reflector import api
from nvfabric.bgp.reflector import config as rr_config
from nvfabric.bgp.reflector.daemon import Reflector
from nvfabric.bgp.routes import MacIpRoute, Path, PathAttributes, UnicastRoute
from nvfabric.bgp.speaker import Speaker
from nvfabric.service.config import ApiConfig
from tests.waits import until

TOKEN = "rr-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

RR_ID = "198.51.100.100"


def route(n: int, vsid: int = 5001, rd: str = "198.51.100.1:1", **extra: Any) -> MacIpRoute:
    return MacIpRoute(rd=rd, mac=f"02:00:00:00:{n // 256:02x}:{n % 256:02x}", ip=f"10.1.{n // 256}.{n % 256}",
                      vsid=vsid, next_hop="198.51.100.1", route_targets=(f"65000:{vsid}",), **extra)


def rr_cfg(neighbors: list[dict[str, Any]], **extra: Any) -> rr_config.ReflectorConfig:
    return rr_config.parse({"asn": 65000, "router_id": RR_ID, "cluster_id": "192.0.2.100", "hold_time": 9,
                            "listen": {"address": "127.0.0.1", "port": 0}, "neighbors": neighbors, **extra})


def speaker(router_id: str, local: str, port: int) -> Speaker:
    return Speaker(bgp_config.parse({
        "asn": 65000, "router_id": router_id, "hold_time": 9, "families": ["l2vpn-evpn", "ipv4-unicast"],
        "neighbours": [{"address": "127.0.0.1", "asn": 65000, "port": port, "local_address": local}]}))


def held(s: Speaker) -> dict:
    return {p.key: p for p in s.rib.loc.best_paths()}


@pytest.fixture
async def lab() -> AsyncIterator[Callable[..., Any]]:
    started: list[Any] = []

    async def make(kind: str, *args: Any) -> Any:
        obj = Reflector(*args) if kind == "rr" else speaker(*args)
        await obj.start()
        started.append(obj)
        return obj

    yield make
    for obj in reversed(started):
        await obj.stop()


DYNAMIC = [{"prefix": "127.0.1.0/24", "asn": 65000, "client": True}]


async def test_client_routes_reach_every_other_client_with_originator_and_cluster_list(lab):
    rr = await lab("rr", rr_cfg(DYNAMIC))
    a = await lab("speaker", "198.51.100.1", "127.0.1.1", rr.listen_port)
    b = await lab("speaker", "198.51.100.2", "127.0.1.2", rr.listen_port)
    c = await lab("speaker", "198.51.100.3", "127.0.1.3", rr.listen_port)
    routes = [route(i) for i in range(300)] + [UnicastRoute(prefix="203.0.113.0/24", next_hop="198.51.100.1")]
    await a.announce(routes)
    for s in (b, c):
        await until(lambda s=s: len(held(s)) == 301, what="all routes at both other clients")
    path = held(b)[routes[0].key]
    assert path.route == routes[0]
    # RFC 4456 section 8: ORIGINATOR_ID = the client's identifier, CLUSTER_LIST = our cluster.
    assert path.attrs.originator_id == IPv4Address("198.51.100.1")
    assert path.attrs.cluster_list == (IPv4Address("192.0.2.100"),)
    # Not echoed back to the source.
    assert held(a) == {}
    await a.withdraw(routes[:100])
    await until(lambda: len(held(b)) == 201 and len(held(c)) == 201, what="withdrawals reflected")


async def test_non_client_routes_go_to_clients_only(lab):
    rr = await lab("rr", rr_cfg([{"address": "127.0.0.5", "asn": 65000, "client": False, "passive": True},
                                 {"address": "127.0.0.6", "asn": 65000, "client": False, "passive": True},
                                 *DYNAMIC]))
    n1 = await lab("speaker", "198.51.100.5", "127.0.0.5", rr.listen_port)
    n2 = await lab("speaker", "198.51.100.6", "127.0.0.6", rr.listen_port)
    c1 = await lab("speaker", "198.51.100.7", "127.0.1.7", rr.listen_port)
    await until(lambda: all(s.peers["127.0.0.1"].established for s in (n1, n2, c1)), what="sessions")
    await n1.announce([route(1, rd="198.51.100.5:1")])
    await c1.announce([route(2, rd="198.51.100.7:1")])
    await until(lambda: len(held(c1)) == 1 and len(held(n2)) == 1 and len(held(n1)) == 1, what="reflection")
    # n2 (non-client) got the client's route but not the other non-client's (RFC 4456 section 6).
    assert set(held(n2)) == {route(2, rd="198.51.100.7:1").key}
    assert set(held(c1)) == {route(1, rd="198.51.100.5:1").key}


async def test_looped_routes_are_ignored(lab):
    rr = await lab("rr", rr_cfg(DYNAMIC))
    a = await lab("speaker", "198.51.100.1", "127.0.1.1", rr.listen_port)
    b = await lab("speaker", "198.51.100.2", "127.0.1.2", rr.listen_port)
    ours = PathAttributes(cluster_list=(IPv4Address("192.0.2.100"),))
    mine = PathAttributes(originator_id=IPv4Address(RR_ID))
    await a.announce([Path(route(1), ours), Path(route(2), mine), route(3)])
    await until(lambda: len(held(b)) == 1, what="the clean route")
    assert set(held(b)) == {route(3).key}
    assert rr.stats.loops == 2


async def test_route_target_filter_sends_only_the_hosted_domains(lab):
    rr = await lab("rr", rr_cfg([{"address": "127.0.1.2", "asn": 65000, "passive": True,
                                  "route_targets": ["65000:5002"]}, *DYNAMIC]))
    a = await lab("speaker", "198.51.100.1", "127.0.1.1", rr.listen_port)
    b = await lab("speaker", "198.51.100.2", "127.0.1.2", rr.listen_port)
    c = await lab("speaker", "198.51.100.3", "127.0.1.3", rr.listen_port)
    await a.announce([route(i, vsid=5001 + i % 4) for i in range(40)])
    await until(lambda: len(held(c)) == 40 and len(held(b)) == 10, what="filtered and unfiltered tables")
    assert {p.route.vsid for p in held(b).values()} == {5002}
    # The filtered host was sent about a quarter of the bytes.
    assert rr.stats.per_peer["127.0.1.2"].bytes_out < rr.stats.per_peer["127.0.1.3"].bytes_out / 2


async def test_max_prefix_teardown_closes_the_session_and_drops_its_routes(lab):
    rr = await lab("rr", rr_cfg([{"prefix": "127.0.1.0/24", "asn": 65000,
                                  "max_prefix": {"limit": 50, "action": "teardown"}}]))
    a = await lab("speaker", "198.51.100.1", "127.0.1.1", rr.listen_port)
    b = await lab("speaker", "198.51.100.2", "127.0.1.2", rr.listen_port)
    await a.announce([route(i) for i in range(40)])
    await until(lambda: len(held(b)) == 40, what="routes under the limit")
    await a.announce([route(i) for i in range(40, 60)])
    await until(lambda: rr.stats.max_prefix_events == 1, what="max-prefix event")
    await until(lambda: len(held(b)) == 0, what="the offender's routes gone")
    assert b.peers["127.0.0.1"].established is not None  # the others keep their session


async def test_max_prefix_warn_keeps_the_session(lab):
    rr = await lab("rr", rr_cfg([{"prefix": "127.0.1.0/24", "asn": 65000, "max_prefix": 10}]))
    a = await lab("speaker", "198.51.100.1", "127.0.1.1", rr.listen_port)
    b = await lab("speaker", "198.51.100.2", "127.0.1.2", rr.listen_port)
    await a.announce([route(i) for i in range(20)])
    await until(lambda: len(held(b)) == 20, what="all routes, over the limit")
    assert rr.stats.max_prefix_events == 1 and a.peers["127.0.0.1"].establishments == 1


async def test_reload_adds_and_removes_neighbors_and_refuses_bad_changes(lab):
    first = [{"address": "127.0.0.2", "asn": 65000, "passive": True},
             {"address": "127.0.0.3", "asn": 65000, "passive": True}]
    rr = await lab("rr", rr_cfg(first))
    a = await lab("speaker", "198.51.100.2", "127.0.0.2", rr.listen_port)
    b = await lab("speaker", "198.51.100.3", "127.0.0.3", rr.listen_port)
    c = await lab("speaker", "198.51.100.4", "127.0.0.4", rr.listen_port)
    await a.announce([route(1)])
    await until(lambda: len(held(b)) == 1, what="a's route at b")
    assert c.peers["127.0.0.1"].established is None  # not configured yet: refused
    with pytest.raises(ConfigError) as bad:
        await rr.reload(rr_cfg(first, cluster_id="192.0.2.1"))
    assert bad.value.field == "cluster_id"
    result = await rr.reload(rr_cfg([first[0], {"address": "127.0.0.4", "asn": 65000, "passive": True}]))
    assert result.added == ("127.0.0.4",) and result.removed == ("127.0.0.3",)
    await until(lambda: len(held(c)) == 1, 15, what="the new neighbour gets the table")
    await until(lambda: b.peers["127.0.0.1"].established is None, what="the removed neighbour closed")
    assert a.peers["127.0.0.1"].establishments == 1  # undisturbed


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError) as err:
        rr_cfg([{"address": "127.0.0.2", "asn": 65001}])
    assert err.value.field == "neighbors[0].asn"
    with pytest.raises(ConfigError) as err:
        rr_cfg([{"prefix": "127.0.1.0/24", "asn": 65000, "max_prefix": {"limit": 5, "action": "explode"}}])
    assert err.value.field == "neighbors[0].max_prefix.action"
    with pytest.raises(ConfigError) as err:
        rr_cfg([{"address": "127.0.0.2", "prefix": "127.0.1.0/24", "asn": 65000}])
    assert err.value.field == "neighbors[0]"
    with pytest.raises(ConfigError) as err:
        rr_cfg([], api={"listen": "localhost"})
    assert err.value.field == "api.listen"
    with pytest.raises(ConfigError) as err:
        rr_cfg([{"address": "127.0.0.2", "asn": 65000, "route_targets": ["x"]}])
    assert err.value.field == "neighbors[0].route_targets[0]"


def test_the_issue_example_parses():
    cfg = rr_config.parse({
        "asn": 65000, "router_id": "198.51.100.100", "cluster_id": "198.51.100.100",
        "listen": {"address": "198.51.100.100", "port": 179},
        "neighbors": [{"prefix": "198.51.100.0/24", "asn": 65000, "client": True},
                      {"address": "198.51.100.101", "asn": 65000, "client": False, "md5_password": "s3cret"}],
        "api": {"listen": "127.0.0.1:8179", "token": "t"}})
    assert cfg.policy_for("198.51.100.101").client is False
    assert cfg.policy_for("198.51.100.7").client is True
    assert cfg.api == ApiConfig("127.0.0.1:8179", "t")
    assert len(cfg.speaker_config().dynamic_neighbors) == 1


async def test_api_summary_neighbors_routes_and_metrics(lab):
    rr = await lab("rr", rr_cfg(DYNAMIC))
    a = await lab("speaker", "198.51.100.1", "127.0.1.1", rr.listen_port)
    b = await lab("speaker", "198.51.100.2", "127.0.1.2", rr.listen_port)
    await a.announce([route(i, vsid=5001 + i % 2) for i in range(10)])
    await until(lambda: len(held(b)) == 10, what="reflection")
    async with TestClient(TestServer(api.build_app(rr, TOKEN)), headers=AUTH) as http:
        summary = await (await http.get("/v1/summary")).json()
        assert summary["routes"]["l2vpn-evpn"] == 10 and summary["sessions"] == {"established": 2}
        neighbors = await (await http.get("/v1/neighbors")).json()
        by_address = {n["address"]: n for n in neighbors["neighbors"]}
        assert by_address["127.0.1.1"]["routes_received"] == 10 and by_address["127.0.1.2"]["updates_out"] >= 1
        found = (await (await http.get("/v1/routes", params={"vsid": "5002"})).json())["routes"]
        assert len(found) == 5 and {r["vsid"] for r in found} == {5002}
        one = (await (await http.get("/v1/routes", params={"mac": "02:00:00:00:00:03"})).json())["routes"]
        assert one == [dict(one[0], ip="10.1.0.3", rd="198.51.100.1:1", route_targets=["65000:5002"],
                            source="127.0.1.1", originator_id="198.51.100.1")]
        dotted = (await (await http.get("/v1/routes", params={"mac": "0200.0000.0003"})).json())["routes"]
        assert dotted == one  # any common MAC notation filters the same
        assert (await http.get("/v1/routes", params={"mac": "02:00"})).status == 400
        assert len((await (await http.get("/v1/routes", params={"rt": "65000:5001"})).json())["routes"]) == 5
        refused = await http.get("/v1/routes", params={"vsid": "x"})
        assert refused.status == 400 and (await refused.json())["error"] == "invalid"
        refused = await http.get("/v1/routes", params={"rt": "x"})
        assert refused.status == 400 and (await refused.json())["field"] == "rt"
        metrics = await (await http.get("/metrics")).text()
        assert 'nvfabric_rr_sessions{state="established"} 2.0' in metrics
        assert 'nvfabric_rr_routes{family="l2vpn-evpn"} 10.0' in metrics
        assert 'nvfabric_rr_neighbor_routes{neighbor="127.0.1.1"} 10.0' in metrics
        assert "nvfabric_rr_reflection_latency_seconds_count" in metrics
    assert isinstance(aiohttp.__version__, str)


async def test_api_reload_answers_with_the_difference_or_the_bad_field(lab):
    first = [{"address": "127.0.0.2", "asn": 65000, "passive": True}]
    rr = await lab("rr", rr_cfg(first))
    wanted: list[rr_config.ReflectorConfig] = []

    async def reload():
        return await rr.reload(wanted[-1])

    async with TestClient(TestServer(api.build_app(rr, TOKEN, reload)), headers=AUTH) as http:
        wanted.append(rr_cfg([*first, {"address": "127.0.0.3", "asn": 65000, "passive": True}]))
        answer = await http.post("/v1/reload")
        assert answer.status == 200 and await answer.json() == {"added": ["127.0.0.3"], "removed": []}
        wanted.append(rr_cfg(first, router_id="198.51.100.99"))
        answer = await http.post("/v1/reload")
        assert answer.status == 400 and (await answer.json())["field"] == "router_id"
    assert set(rr.peers) == {"127.0.0.2", "127.0.0.3"}


async def test_api_needs_the_token_but_metrics_do_not(lab):
    """The reflector's API is served like the agent's and the gateway's: a bearer token on every path but
    /metrics, and the same JSON error body."""
    rr = await lab("rr", rr_cfg([]))
    async with TestClient(TestServer(api.build_app(rr, TOKEN))) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            answer = await http.get("/v1/neighbors", headers=headers)
            assert answer.status == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await answer.json())["error"] == "unauthorized"
        assert (await http.post("/v1/reload", headers=AUTH)).status == 409
        assert (await http.get("/metrics")).status == 200
        assert (await http.get("/v1/neighbors", headers=AUTH)).status == 200
        unknown = await http.get("/v1/nothing", headers=AUTH)
        assert unknown.status == 404 and set(await unknown.json()) >= {"error", "problem"}
    async with TestClient(TestServer(api.build_app(rr, TOKEN, metrics_token=True))) as http:
        assert (await http.get("/metrics")).status == 401


async def test_routes_come_in_bounded_pages_with_a_cursor(lab):
    rr = await lab("rr", rr_cfg(DYNAMIC))
    a = await lab("speaker", "198.51.100.1", "127.0.1.1", rr.listen_port)
    await a.announce([route(i, vsid=5001 + i % 2) for i in range(25)])
    await until(lambda: len(rr.rib) == 25, what="routes in the reflector")
    async with TestClient(TestServer(api.build_app(rr, TOKEN)), headers=AUTH) as http:
        seen: list[str] = []
        params = {"limit": "10"}
        while True:
            answer = await http.get("/v1/routes", params=params)
            assert answer.status == 200
            body = await answer.json()
            assert len(body["routes"]) <= 10 and body["truncated"] == (body["next"] is not None)
            seen += [r["mac"] for r in body["routes"]]
            if body["next"] is None:
                break
            params["after"] = body["next"]
        assert len(seen) == 25 == len(set(seen))  # every route once, none twice
        odd = (await (await http.get("/v1/routes", params={"vsid": "5002", "limit": "3"})).json())
        assert [r["vsid"] for r in odd["routes"]] == [5002] * 3 and odd["next"]
        rest = (await (await http.get("/v1/routes", params={"vsid": "5002", "after": odd["next"]})).json())
        assert len(rest["routes"]) == 9 and rest["next"] is None
        for params, field in [({"limit": "1001"}, "limit"), ({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"),
                              ({"after": "nope/zz"}, "after"), ({"colour": "red"}, "colour"),
                              ({"family": "ipv5"}, "family"), ({"mac": "02:00"}, "mac"), ({"vsid": "²"}, "vsid"),
                              ({"rt": "65000:²"}, "rt"), ({"ip": "10.0.0"}, "ip")]:
            refused = await http.get("/v1/routes", params=params)
            assert refused.status == 400, params
            assert (await refused.json())["field"] == field
