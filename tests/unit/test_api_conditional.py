"""Conditional requests (service/conditional.py) and the health probes (service/health.py) on the three APIs,
in the host phase: the host agent not started (as tests/unit/test_api.py's: its preconditions are decided
before it is asked), the gateway started in a scratch network namespace (tenants attached by interface: no
VRF or GRE), so that two orchestrators really write one tenant, and the reflector started with two
speakers. The kernel phase (tests/kernel/test_api_agent.py) does the same with a port of a started agent.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from nvfabric.gateway import api as gw_api
from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.gateway import Gateway
from nvfabric.gateway.role import Role
from nvfabric.gateway.status import readiness as gateway_readiness
from nvfabric.hostagent.api import make_app
from nvfabric.hostagent.status import readiness as agent_readiness
from nvfabric.service.conditional import Preconditions, decide, etag
from nvfabric.vnet.hold import Hold, Policy
from tests.unit.test_api import AUTH, TOKEN, VM1, VM2, expect, make_agent

BLUE = {"name": "blue", "route_targets": ["65001:1"], "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}],
        "snat": [{"address": "203.0.113.140"}], "interfaces": ["t-blue"]}


# ---------------------------------------------------------------- the decision (pure)


@pytest.mark.parametrize("if_match, if_none_match, current, read, verdict", [
    (None, None, '"a"', False, None),
    (None, None, None, False, None),
    (('"a"',), None, '"a"', False, None),
    (('"b"', '"a"'), None, '"a"', False, None),  # any of a list
    (('"b"',), None, '"a"', False, 412),
    (('W/"a"',), None, '"a"', False, 412),  # If-Match compares strongly: a weak tag never matches
    (("*",), None, '"a"', False, None),
    (("*",), None, None, False, 412),  # "*": only if it exists
    (('"a"',), None, None, False, 412),
    (None, ("*",), None, False, None),  # create only
    (None, ("*",), '"a"', False, 412),
    (None, ('"a"',), '"a"', True, 304),
    (None, ('W/"a"',), '"a"', True, 304),  # If-None-Match compares weakly
    (None, ('"b"',), '"a"', True, None),
    (None, ('"a"',), '"a"', False, 412),
    (('"b"',), ('"a"',), '"a"', True, 412),  # If-Match first
])
def test_the_decision_follows_rfc_9110(if_match, if_none_match, current, read, verdict):
    assert decide(Preconditions(if_match, if_none_match), current, read) == verdict


def test_an_etag_is_a_hash_of_the_content_not_of_its_spelling():
    assert etag({"a": 1, "b": [1, 2]}) == etag({"b": [1, 2], "a": 1})
    assert etag({"a": 1}) != etag({"a": 2}) and etag({"a": [1, 2]}) != etag({"a": [2, 1]})
    assert etag({"a": 1}).startswith('"') and etag({"a": 1}).endswith('"') and "W/" not in etag({"a": 1})


# ---------------------------------------------------------------- the host agent (not started)


@pytest.fixture
async def agent_client(tmp_path) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(make_app(make_agent(tmp_path), TOKEN))) as c:
        yield c


async def test_objects_carry_their_etag_in_the_header_the_body_and_the_lists(agent_client, tmp_path):
    r = await agent_client.get("/v1/ports/vm1", headers=AUTH)
    port = await expect(r, 200)
    assert r.headers["ETag"] == port["etag"]
    listed = await expect(await agent_client.get("/v1/ports", headers=AUTH), 200)
    assert [p["etag"] for p in listed["ports"]] == [port["etag"]]
    r = await agent_client.get("/v1/routing-domains/blue", headers=AUTH)
    blue = await expect(r, 200)
    domains = await expect(await agent_client.get("/v1/routing-domains", headers=AUTH), 200)
    assert r.headers["ETag"] == blue["etag"] == domains["routing_domains"][0]["etag"]
    assert len({blue["etag"], port["etag"], domains["routing_domains"][1]["etag"]}) == 3
    # a restarted agent (a new process reading the same state) gives the same ETags: content, not a counter
    async with TestClient(TestServer(make_app(make_agent(tmp_path), TOKEN))) as again:
        assert (await again.get("/v1/ports/vm1", headers=AUTH)).headers["ETag"] == port["etag"]


async def test_a_client_holding_the_current_version_gets_304(agent_client):
    tag = (await agent_client.get("/v1/ports/vm1", headers=AUTH)).headers["ETag"]
    r = await agent_client.get("/v1/ports/vm1", headers={**AUTH, "If-None-Match": tag})
    assert r.status == 304 and r.headers["ETag"] == tag and await r.read() == b""
    r = await agent_client.get("/v1/ports/vm1", headers={**AUTH, "If-None-Match": '"older"'})
    assert r.status == 200
    body = await expect(await agent_client.get("/v1/ports/vm1", headers={**AUTH, "If-Match": '"older"'}), 412,
                        "precondition-failed")
    assert body["etag"] == tag


async def test_preconditions_are_decided_before_the_agent_is_asked(agent_client):
    tag = (await agent_client.get("/v1/ports/vm1", headers=AUTH)).headers["ETag"]
    for method, path, headers, body in [
        ("PUT", "/v1/ports/vm1", {"If-Match": '"stale"'}, VM1),
        ("PUT", "/v1/ports/vm1", {"If-None-Match": "*"}, VM1),  # create only, and vm1 exists
        ("DELETE", "/v1/ports/vm1", {"If-Match": '"stale"'}, None),
        ("DELETE", "/v1/routing-domains/red", {"If-Match": f'"x", W/{tag}'}, None),
    ]:
        answer = await expect(await agent_client.request(method, path, headers={**AUTH, **headers}, json=body), 412,
                              "precondition-failed")
        assert answer["etag"] is not None and answer["etag"] in answer["problem"]
    for method, path in [("PUT", "/v1/ports/vm2"), ("DELETE", "/v1/ports/vm2")]:  # "*": must exist
        answer = await expect(await agent_client.request(method, path, headers={**AUTH, "If-Match": "*"}, json=VM2),
                              412, "precondition-failed")
        assert answer["etag"] is None and "does not exist" in answer["problem"]
    # satisfied, the change reaches the agent, which is not running here
    await expect(await agent_client.put("/v1/ports/vm1", headers={**AUTH, "If-Match": tag}, json=VM1), 503,
                 "not-running")
    await expect(await agent_client.put("/v1/ports/vm2", headers={**AUTH, "If-None-Match": "*"}, json=VM2), 503)
    await expect(await agent_client.delete("/v1/ports/vm1", headers={**AUTH, "If-Match": "*"}), 503)


async def test_a_precondition_that_is_not_an_entity_tag_is_400_naming_the_header(agent_client):
    for header in ("If-Match", "If-None-Match"):
        body = await expect(await agent_client.put("/v1/ports/vm1", headers={**AUTH, header: "unquoted"}, json=VM1),
                            400, "invalid")
        assert body["field"] == header


async def test_a_get_view_with_its_etag_put_back_parses(agent_client):
    port = await expect(await agent_client.get("/v1/ports/vm1", headers=AUTH), 200)
    await expect(await agent_client.put("/v1/ports/vm1", headers={**AUTH, "If-Match": port["etag"]}, json=port), 503)


async def test_every_list_answers_a_page(agent_client):
    for path, key in [("/v1/routing-domains", "routing_domains"), ("/v1/ports", "ports"),
                      ("/v1/lookup-records", "lookup_records"), ("/v1/customer-routes", "customer_routes"),
                      ("/v1/provider-addresses", "provider_addresses")]:
        first = await expect(await agent_client.get(path, headers=AUTH, params={"limit": "1"}), 200)
        seen = list(first[key])
        after = first["next"]
        while after is not None:
            more = await expect(await agent_client.get(path, headers=AUTH, params={"limit": "1", "after": after}), 200)
            assert len(more[key]) == 1
            seen += more[key]
            after = more["next"]
        everything = await expect(await agent_client.get(path, headers=AUTH), 200)
        assert seen == everything[key] and everything["next"] is None, path


# ---------------------------------------------------------------- health: the agent


async def test_health_probes_need_no_token_and_the_agent_not_started_is_not_ready(tmp_path):
    async with TestClient(TestServer(make_app(make_agent(tmp_path), TOKEN, metrics_token=True))) as c:
        r = await c.get("/healthz")
        assert r.status == 200 and await r.json() == {"status": "ok"} and r.headers["Cache-Control"] == "no-store"
        body = await expect(await c.get("/readyz"), 503)
        assert body == {"status": "not-ready", "reasons": ["starting: the kernel is not programmed yet"]}
        await expect(await c.get("/metrics"), 401)  # the probes are public, the rest is not


def test_the_agent_is_ready_with_the_fabric_table_or_headless_after_its_grace():
    policy = Policy(timeout=60.0)
    hold = Hold.start(policy, ["198.51.100.100", "198.51.100.101"], now=0.0)
    assert agent_readiness(False, hold, 1.0) == ("starting: the kernel is not programmed yet",)
    assert "waiting for a reflector session" in agent_readiness(True, hold, 1.0)[0]
    assert agent_readiness(True, hold, 60.0) == ()  # nobody answered: headless from the saved state
    up = hold.on_session("198.51.100.100", "established", 2.0)
    assert agent_readiness(True, up, 3.0) == ("waiting for End-of-RIB from reflector 198.51.100.100 "
                                              "(at most eor_timeout)",)
    synced = up.on_session("198.51.100.100", "end-of-rib", 4.0)
    assert agent_readiness(True, synced, 5.0) == ()
    # End-of-RIB in, the table not yet compared with the kernel (a restart with 100,000 remote CAs)
    assert agent_readiness(True, synced, 5.0, programmed=False) == (
        "programming the fabric's table into the kernel (End-of-RIB received)",)
    # a reflector outage later does not make it unready: it forwards and takes changes meanwhile
    assert agent_readiness(True, synced.on_session("198.51.100.100", "down", 9.0), 10.0) == ()


# ---------------------------------------------------------------- the gateway, started in a namespace


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    ns = f"nvf-cond-gw-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "ext", "type", "veth", "peer", "name", "ext-peer"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "add", "t-blue", "type", "veth", "peer", "name", "t-vm"], check=True)
        gw = Gateway(GatewayConfig.from_dict({"asn": 65001, "router_id": "198.51.100.21", "netns": ns,
                                              "external": {"interfaces": ["ext"]}, "tenants": [BLUE]}))
        await gw.start()
        try:
            yield gw
        finally:
            await gw.stop()
            gw.close()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


async def test_two_orchestrators_updating_one_tenant_the_stale_one_gets_412(gateway):
    async with TestClient(TestServer(gw_api.make_app(gateway, TOKEN))) as first, \
            TestClient(TestServer(gw_api.make_app(gateway, TOKEN))) as second:
        # both read the same version
        one = await expect(await first.get("/v1/tenants/blue", headers=AUTH), 200)
        two = await expect(await second.get("/v1/tenants/blue", headers=AUTH), 200)
        assert one["etag"] == two["etag"]
        mine = {**one, "snat": [{"address": "203.0.113.141"}]}
        theirs = {**two, "floating_ips": [{"public": "203.0.113.131", "private": "10.0.0.5"}]}
        r = await first.put("/v1/tenants/blue", headers={**AUTH, "If-Match": one["etag"]}, json=mine)
        written = await expect(r, 200)
        assert r.headers["ETag"] == written["etag"] != one["etag"]
        refused = await expect(await second.put("/v1/tenants/blue", headers={**AUTH, "If-Match": two["etag"]},
                                                json=theirs), 412, "precondition-failed")
        assert refused["etag"] == written["etag"]
        now = await expect(await second.get("/v1/tenants/blue", headers=AUTH), 200)
        assert now["snat"][0]["address"] == "203.0.113.141" and now["floating_ips"] == []
        assert gateway.tenant("blue").snat[0].address.exploded == "203.0.113.141"


async def test_concurrent_conditional_writes_check_and_write_as_one_step(gateway):
    """Both send the same If-Match at once: exactly one wins whatever the order, and the tenant is its."""
    async with TestClient(TestServer(gw_api.make_app(gateway, TOKEN))) as c:
        blue = await expect(await c.get("/v1/tenants/blue", headers=AUTH), 200)
        bodies = [{**blue, "snat": [{"address": f"203.0.113.{150 + i}"}]} for i in range(2)]
        answers = await asyncio.gather(*(c.put("/v1/tenants/blue", headers={**AUTH, "If-Match": blue["etag"]},
                                               json=body) for body in bodies))
        assert sorted(a.status for a in answers) == [200, 412]
        winner = bodies[[a.status for a in answers].index(200)]
        assert (await expect(await c.get("/v1/tenants/blue", headers=AUTH), 200))["snat"][0]["address"] == \
            winner["snat"][0]["address"]


async def test_create_only_and_delete_if_unchanged(gateway):
    red = {**BLUE, "name": "red", "subnets": [{"vsid": 6001, "prefixes": ["10.9.0.0/24"]}],
           "snat": [{"address": "203.0.113.160"}], "interfaces": []}
    async with TestClient(TestServer(gw_api.make_app(gateway, TOKEN))) as c:
        r = await c.put("/v1/tenants/red", headers={**AUTH, "If-None-Match": "*"}, json=red)
        created = await expect(r, 201)
        assert r.headers["ETag"] == created["etag"] and r.headers["Location"] == "/v1/tenants/red"
        await expect(await c.put("/v1/tenants/red", headers={**AUTH, "If-None-Match": "*"}, json=red), 412)
        await expect(await c.delete("/v1/tenants/red", headers={**AUTH, "If-Match": '"stale"'}), 412)
        assert "red" in gateway.tenants
        assert (await c.delete("/v1/tenants/red", headers={**AUTH, "If-Match": created["etag"]})).status == 204
        assert "red" not in gateway.tenants


async def test_the_gateway_is_ready_once_started_and_not_before(gateway):
    async with TestClient(TestServer(gw_api.make_app(gateway, TOKEN))) as c:
        assert await expect(await c.get("/readyz"), 200) == {"status": "ready"}
        assert await expect(await c.get("/healthz"), 200) == {"status": "ok"}
    idle = Gateway(GatewayConfig.from_dict({"asn": 65001, "router_id": "198.51.100.22",
                                            "external": {"interfaces": ["ext"]}}))
    async with TestClient(TestServer(gw_api.make_app(idle, TOKEN))) as c:
        body = await expect(await c.get("/readyz"), 503)
        assert body["reasons"] == ["starting: the dataplane is not programmed yet"]


def test_a_gateway_is_ready_once_its_role_is_decided():
    role = Role.start(False, "198.51.100.21", ["198.51.100.100"], 0.0)
    assert gateway_readiness(True, role, False) == ("role not decided yet: starting: waiting for a reflector "
                                                    "session",)
    role = role.on_session("198.51.100.100", "established", 1.0).on_session("198.51.100.100", "end-of-rib", 2.0)
    assert role.serving and gateway_readiness(True, role, False) == ()
    assert gateway_readiness(True, role, True) == ("became active: the dataplane is being read back and repaired",)
    standby = Role.start(True, "198.51.100.22", ["198.51.100.100"], 0.0)
    standby = standby.on_session("198.51.100.100", "established", 1.0).on_routes(["198.51.100.21"], 1.5)
    standby = standby.on_session("198.51.100.100", "end-of-rib", 2.0)
    assert not standby.serving and gateway_readiness(True, standby, False) == ()  # standing by is its job
    assert gateway_readiness(True, None, False) == ()  # no reflectors: nothing to decide


# ---------------------------------------------------------------- the reflector


async def test_the_reflector_neighbour_has_an_etag_and_the_probes_follow_its_life():
    from nvfabric.bgp.reflector import api as rr_api
    from nvfabric.bgp.reflector.daemon import Reflector
    from tests.unit.test_reflector_daemon import DYNAMIC, rr_cfg, speaker, until

    rr = Reflector(rr_cfg(DYNAMIC))
    app: Any = rr_api.build_app(rr, TOKEN)
    async with TestClient(TestServer(app)) as c:
        body = await expect(await c.get("/readyz"), 503)
        assert body["status"] == "not-ready" and "not running" in body["reasons"][0]
        await rr.start()
        client = speaker("198.51.100.1", "127.0.1.1", rr.listen_port)
        await client.start()
        try:
            assert await expect(await c.get("/readyz"), 200) == {"status": "ready"}
            await until(lambda: any(p.established for p in rr.peers.values()), what="a session")
            listed = await expect(await c.get("/v1/neighbors", headers=AUTH), 200)
            (one,) = listed["neighbors"]
            r = await c.get(f"/v1/neighbors/{one['address']}", headers=AUTH)
            single = await expect(r, 200)
            assert r.headers["ETag"] == single["etag"]
            again = await c.get(f"/v1/neighbors/{one['address']}", headers={**AUTH, "If-None-Match": single["etag"]})
            assert again.status in (200, 304)  # 200 when a counter moved meanwhile (keepalives do not count)
            await expect(await c.get("/v1/neighbors/192.0.2.99", headers=AUTH), 404, "not-found")
        finally:
            await client.stop()
            await rr.stop()
        body = await expect(await c.get("/readyz"), 503)
        assert "not running" in body["reasons"][0]
        assert (await c.get("/healthz")).status == 200
