"""hostagent/api.py in the host phase: the real Agent, not started (no kernel here), behind the real app.

Every refusal class is decided before any kernel work, so each is checked here: 401, 400 (malformed JSON,
invalid values naming the field, bad queries), 404 (names, paths), 405, 409, 413, 415, and never 500 for
any of them. A valid change reaches the agent, which answers 503 (not running) without a kernel; the
kernel phase (tests/kernel/test_api_agent.py) runs the same API over a started agent.
"""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp.test_utils import TestClient, TestServer

from nvfabric.hostagent import state
from nvfabric.hostagent.agent import Agent
from nvfabric.vnet.errors import KernelError, NotStarted
from nvfabric.hostagent.api import make_app, start_api
from nvfabric.hostagent.config import AgentConfig
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.model import Port, RoutingDomain

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BLUE = {"name": "blue", "route_targets": ["65001:1"],
        "subnets": [{"vsid": 5001, "prefixes": ["10.1.0.0/24", "fd00:b::/64"]}]}
RED = {"name": "red", "route_targets": ["65001:2"], "subnets": [{"vsid": 6001, "prefixes": ["10.9.0.0/24"]}]}
VM1 = {"name": "vm1", "interface": "tap1", "mac": "02:00:00:00:01:01", "vsid": 5001, "addresses": ["10.1.0.10"]}
VM2 = {"name": "vm2", "interface": "tap2", "mac": "02:00:00:00:01:02", "vsid": 5001, "addresses": ["10.1.0.20"]}


def make_agent(tmp_path) -> Agent:
    config = AgentConfig.from_dict({
        "asn": 65001, "router_id": "198.51.100.11", "provider_addresses": ["198.51.100.11", "2001:db8::11"],
        "route_reflectors": [{"address": "198.51.100.100"}], "state_dir": str(tmp_path),
    })
    # The agent restarts from its state directory: two routing domains, a port in blue.
    catalog = Catalog.build({"blue": RoutingDomain.from_dict(BLUE), "red": RoutingDomain.from_dict(RED)},
                            {"vm1": Port.from_dict(VM1)})
    state.save(tmp_path, state.SavedState(catalog, {"blue": 1000, "red": 1001}, {}))
    return Agent(config)


@pytest.fixture
def agent(tmp_path) -> Agent:
    return make_agent(tmp_path)


@pytest.fixture
async def client(agent):
    async with TestClient(TestServer(make_app(agent, TOKEN))) as c:
        yield c


async def expect(response, status: int, error: str | None = None) -> dict:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    if error is not None:
        assert body["error"] == error, body
    return body


# ---------------------------------------------------------------- 401


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN},
    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"bearer{TOKEN}"}, {"Authorization": "Bearer"},
])
async def test_no_or_a_wrong_token_is_401(client, headers):
    for method, path in [("GET", "/v1/ports"), ("PUT", "/v1/ports/vm1"), ("DELETE", "/v1/routing-domains/blue"),
                         ("GET", "/v1/status"), ("GET", "/v1/nowhere")]:
        r = await client.request(method, path, headers=headers, json=VM1)
        body = await expect(r, 401, "unauthorized")
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="nvfabric"'
        assert "token" in body["problem"]


async def test_a_refused_token_changes_nothing(client, agent):
    before = agent.catalog
    r = await client.delete("/v1/routing-domains/red", headers={"Authorization": "Bearer nope"})
    await expect(r, 401)
    assert agent.catalog is before


async def test_metrics_need_no_token_unless_configured(agent, client):
    r = await client.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=")
    assert "nvfabric_agent_ports" in await r.text()
    async with TestClient(TestServer(make_app(agent, TOKEN, metrics_token=True))) as locked:
        await expect(await locked.get("/metrics"), 401)
        assert (await locked.get("/metrics", headers=AUTH)).status == 200


def test_the_api_refuses_to_run_without_a_token(agent):
    with pytest.raises(ValueError, match="api.token"):
        make_app(agent, "")


# ---------------------------------------------------------------- 404, 405


async def test_unknown_paths_are_404_in_json(client):
    for path in ["/", "/v1", "/v2/ports", "/v1/ports/vm1/extra", "/v1/lookup-records/x"]:
        body = await expect(await client.get(path, headers=AUTH), 404, "not-found")
        assert path in body["problem"]


async def test_unknown_names_are_404(client):
    for method, path, kind in [("GET", "/v1/ports/nope", "port"), ("DELETE", "/v1/ports/nope", "port"),
                               ("GET", "/v1/routing-domains/green", "routing domain"),
                               ("DELETE", "/v1/routing-domains/green", "routing domain"),
                               ("GET", "/v1/lookup-records?routing_domain=green", "routing domain"),
                               ("GET", "/v1/customer-routes?routing_domain=green", "routing domain"),
                               ("GET", "/v1/trace?routing_domain=green&src=10.1.0.10&dst=10.1.0.20",
                                "routing domain")]:
        body = await expect(await client.request(method, path, headers=AUTH), 404, "not-found")
        assert body["kind"] == kind


async def test_wrong_methods_are_405_with_allow(client):
    r = await client.post("/v1/ports/vm1", headers=AUTH, json=VM1)
    body = await expect(r, 405, "method-not-allowed")
    assert {"GET", "PUT", "DELETE"} <= set(body["allowed"])
    assert "PUT" in r.headers["Allow"]
    await expect(await client.put("/v1/ports", headers=AUTH, json={}), 405)
    await expect(await client.delete("/v1/lookup-records", headers=AUTH), 405)
    await expect(await client.post("/v1/trace", headers=AUTH), 405)


# ---------------------------------------------------------------- 415, malformed JSON, 413


async def test_a_body_that_is_not_json_typed_is_415(client):
    for headers in [{"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}, {}]:
        r = await client.put("/v1/ports/vm9", headers={**AUTH, **headers}, data=json.dumps(VM1).encode())
        body = await expect(r, 415, "unsupported-media-type")
        assert "application/json" in body["problem"]


@pytest.mark.parametrize("raw", [b"", b"{", b"{'name': 'vm9'}", b'{"name": "vm9",}', b"\xff\xfe\x00",
                                 b"[" * 100_000 + b"]" * 100_000, b'{"vsid": 5001, "vsid": 5002}', b"NaN x"])
async def test_malformed_json_is_400(client, raw):
    r = await client.put("/v1/ports/vm9", headers={**AUTH, "Content-Type": "application/json"}, data=raw)
    await expect(r, 400, "malformed-json")


async def test_duplicate_keys_are_refused_not_silently_merged(client):
    r = await client.put("/v1/routing-domains/blue", headers={**AUTH, "Content-Type": "application/json"},
                         data=b'{"name": "blue", "route_targets": ["65001:1"], "route_targets": ["65001:9"]}')
    body = await expect(r, 400, "malformed-json")
    assert "route_targets" in body["problem"]


async def test_a_body_too_large_is_413_in_json(client):
    r = await client.put("/v1/ports/vm9", headers={**AUTH, "Content-Type": "application/json"},
                         data=b" " * (2 << 20))
    await expect(r, 413)


# ---------------------------------------------------------------- 400: invalid values name the field


@pytest.mark.parametrize("change, field, words", [
    ({"vsid": 12}, "vsid", "RFC 7637"),
    ({"vsid": "5001"}, "vsid", "integer"),
    ({"mac": "ff:ff:ff:ff:ff:ff"}, "mac", "unicast"),
    ({"mac": "nope"}, "mac", "MAC"),
    ({"mac": "00:00:00:00:00:00"}, "mac", "all-zero"),
    ({"mac": "00155d01020"}, "mac", "MAC"),  # one digit short
    ({"mac": 17}, "mac", "string"),
    ({"addresses": ["10.1.0.300"]}, "addresses[0]", "IPv4 or IPv6"),
    ({"addresses": []}, "addresses", "at least one"),
    ({"addresses": "10.1.0.30"}, "addresses", "list"),
    ({"addresses": ["10.2.0.30"]}, "addresses[0]", "outside virtual subnet 5001"),  # decided by the catalog
    ({"addresses": ["10.1.0.1"]}, "addresses[0]", "gateway"),
    ({"interface": "a-very-long-interface-name"}, "interface", "must match"),
    ({"mtu": 100}, "mtu", "1280"),
    ({"vsdi": 5001}, "vsdi", "unknown field"),
    ({"name": "vm8"}, "name", "does not match the name in the path"),
])
async def test_invalid_ports_are_400_naming_the_field(client, agent, change, field, words):
    before = agent.catalog
    r = await client.put("/v1/ports/vm9", headers=AUTH, json={**VM1, "name": "vm9", "interface": "tap9",
                                                                "addresses": ["10.1.0.30"], **change})
    body = await expect(r, 400, "invalid")
    assert body["field"] == field and words in body["problem"], body
    assert agent.catalog is before


@pytest.mark.parametrize("body, field", [
    ([], "body"), ("blue", "body"), (17, "body"),
    ({**BLUE, "route_targets": []}, "route_targets"),
    ({**BLUE, "route_targets": ["blue"]}, "route_targets[0]"),
    ({**BLUE, "subnets": [{"vsid": 5001, "prefixes": ["10.1.0.1/24"]}]}, "subnets[0].prefixes[0]"),
    ({**BLUE, "subnets": [{"vsid": 5001}]}, "subnets[0].prefixes"),
    ({**BLUE, "colour": "blue"}, "colour"),
])
async def test_invalid_routing_domains_are_400_naming_the_field(client, body, field):
    body = await expect(await client.put("/v1/routing-domains/blue", headers=AUTH, json=body), 400, "invalid")
    assert body["field"] == field


async def test_json_null_is_400_not_a_crash(client):
    r = await client.put("/v1/ports/vm9", headers={**AUTH, "Content-Type": "application/json"}, data=b"null")
    assert (await expect(r, 400, "invalid"))["field"] == "body"


async def test_an_invalid_name_in_the_path_is_400(client):
    body = await expect(await client.put("/v1/routing-domains/Blue!", headers=AUTH, json={**BLUE, "name": "Blue!"}),
                        400, "invalid")
    assert body["field"] == "name"


@pytest.mark.parametrize("query, field", [
    ("vsid=abc", "vsid"), ("vsid=12", "vsid"), ("vsid=", "vsid"), ("ca=10.1.0", "ca"), ("vsdi=5001", "vsdi"),
    ("vsid=5001&vsid=5002", "vsid"),
])
async def test_bad_lookup_record_filters_are_400(client, query, field):
    body = await expect(await client.get(f"/v1/lookup-records?{query}", headers=AUTH), 400, "invalid")
    assert body["field"] == field


@pytest.mark.parametrize("query, field", [
    ("src=10.1.0.10&dst=10.1.0.20", "routing_domain"), ("routing_domain=blue&dst=10.1.0.20", "src"),
    ("routing_domain=blue&src=10.1.0.10", "dst"), ("routing_domain=blue&src=x&dst=10.1.0.20", "src"),
    ("routing_domain=blue&src=10.1.0.10&dst=10.1.0.20&via=x", "via"),
])
async def test_bad_trace_queries_are_400(client, query, field):
    body = await expect(await client.get(f"/v1/trace?{query}", headers=AUTH), 400, "invalid")
    assert body["field"] == field


# ---------------------------------------------------------------- 409


async def test_conflicts_with_existing_state_are_409(client, agent):
    before = agent.catalog
    # vm1 already has 10.1.0.10 in blue
    body = await expect(await client.put("/v1/ports/vm2", headers=AUTH, json={**VM2, "addresses": ["10.1.0.10"]}),
                        409, "conflict")
    assert body["field"] == "addresses[0]" and "vm1" in body["problem"]
    body = await expect(await client.put("/v1/ports/vm2", headers=AUTH, json={**VM2, "interface": "tap1"}),
                        409, "conflict")
    assert body["field"] == "interface"
    body = await expect(await client.put("/v1/ports/vm2", headers=AUTH, json={**VM2, "vsid": 7001}), 409, "conflict")
    assert body["field"] == "vsid"
    # 5001 belongs to blue
    body = await expect(await client.put("/v1/routing-domains/green", headers=AUTH,
                                         json={**BLUE, "name": "green"}), 409, "conflict")
    assert "blue" in body["problem"]
    # blue still has vm1
    body = await expect(await client.delete("/v1/routing-domains/blue", headers=AUTH), 409, "conflict")
    assert "vm1" in body["problem"]
    # replacing blue without the subnet vm1 is in would orphan it
    await expect(await client.put("/v1/routing-domains/blue", headers=AUTH, json={**BLUE, "subnets": []}), 409)
    assert agent.catalog is before


# ---------------------------------------------------------------- valid requests


async def test_a_valid_change_reaches_the_agent_which_is_not_running_here(client, agent):
    # parsed and accepted by the catalog, then refused by the agent only because it has no kernel (503)
    body = await expect(await client.put("/v1/ports/vm2", headers=AUTH, json=VM2), 503, "not-running")
    assert "not running" in body["problem"]
    await expect(await client.delete("/v1/ports/vm1", headers=AUTH), 503)
    assert "vm2" not in agent.catalog.ports and "vm1" in agent.catalog.ports


@pytest.mark.parametrize("mac", ["00-15-5D-01-02-03", "0015.5d01.0203", "00:15:5D:01:02:03"])
async def test_a_port_mac_in_any_common_notation_reaches_the_agent_canonical(client, agent, monkeypatch, mac):
    received = []

    async def put_port(port):
        received.append(port)
        raise NotStarted("not running")

    monkeypatch.setattr(agent, "put_port", put_port)
    await expect(await client.put("/v1/ports/vm2", headers=AUTH, json={**VM2, "mac": mac}), 503)
    assert [p.mac for p in received] == ["00:15:5d:01:02:03"]


async def test_a_port_stored_with_a_dashed_mac_reads_back_canonical(tmp_path):
    config = AgentConfig.from_dict({
        "asn": 65001, "router_id": "198.51.100.11", "provider_addresses": ["198.51.100.11"],
        "route_reflectors": [{"address": "198.51.100.100"}], "state_dir": str(tmp_path),
    })
    vm1 = Port.from_dict({**VM1, "mac": "00-15-5D-01-02-03"})
    state.save(tmp_path, state.SavedState(Catalog.build({"blue": RoutingDomain.from_dict(BLUE)}, {"vm1": vm1}),
                                          {"blue": 1000}, {(5001, vm1.mac): 3}))
    assert '"00:15:5d:01:02:03"' in (tmp_path / state.FILE).read_text()
    async with TestClient(TestServer(make_app(Agent(config), TOKEN))) as c:
        port = await expect(await c.get("/v1/ports/vm1", headers=AUTH), 200)
    assert port["mac"] == "00:15:5d:01:02:03"


async def test_reads(client):
    rds = await expect(await client.get("/v1/routing-domains", headers=AUTH), 200)
    assert [rd["name"] for rd in rds["routing_domains"]] == ["blue", "red"]
    blue = await expect(await client.get("/v1/routing-domains/blue", headers=AUTH), 200)
    assert blue["subnets"] == [{"vsid": 5001, "prefixes": ["10.1.0.0/24", "fd00:b::/64"],
                                "gateways": ["10.1.0.1", "fd00:b::1"]}]
    assert blue["status"] == {"vrf": "nvf-blue", "ports": ["vm1"]}
    port = await expect(await client.get("/v1/ports/vm1", headers=AUTH), 200)
    assert {k: v for k, v in port.items() if k not in ("status", "etag")} == {**VM1, "port_security": True,
                                                                             "allowed_addresses": []}
    # no local record before start(), nor port-security counters
    assert port["status"] == {"routing_domain": "blue", "active": False, "port_security_drops": None}
    ports = await expect(await client.get("/v1/ports", headers=AUTH), 200)
    assert [p["name"] for p in ports["ports"]] == ["vm1"]
    records = await expect(await client.get("/v1/lookup-records?routing_domain=blue&vsid=5001&ca=10.1.0.10",
                                            headers=AUTH), 200)
    assert records == {"lookup_records": [], "next": None}
    routes = await expect(await client.get("/v1/customer-routes?routing_domain=blue", headers=AUTH), 200)
    assert [(r["prefix"], r["next_hop"]) for r in routes["customer_routes"]] == [("10.1.0.0/24", "on-link"),
                                                                                 ("fd00:b::/64", "on-link")]
    pas = await expect(await client.get("/v1/provider-addresses", headers=AUTH), 200)
    assert pas == {"provider_addresses": [{"address": "198.51.100.11", "next_hop": True},
                                          {"address": "2001:db8::11", "next_hop": False}], "next": None}
    status = await expect(await client.get("/v1/status", headers=AUTH), 200)
    assert status["router_id"] == "198.51.100.11" and status["synced"] is False


async def test_a_get_view_put_back_parses_as_the_same_value(client):
    # the read-only status is ignored on PUT; the rest is the same body (503: the agent is not running)
    blue = await expect(await client.get("/v1/routing-domains/blue", headers=AUTH), 200)
    await expect(await client.put("/v1/routing-domains/blue", headers=AUTH, json=blue), 503)
    port = await expect(await client.get("/v1/ports/vm1", headers=AUTH), 200)
    await expect(await client.put("/v1/ports/vm1", headers=AUTH, json=port), 503)


async def test_trace_answers_even_when_the_packet_is_dropped(client):
    body = await expect(await client.get("/v1/trace?routing_domain=blue&src=10.1.0.99&dst=10.1.0.10",
                                         headers=AUTH), 200)
    assert body["verdict"] == "dropped" and body["reason"].startswith("source not a CA of routing domain blue")
    assert set(body) >= {"vsid", "pa", "mac", "device", "route", "gre_key"}


async def test_trace_from_a_port_with_a_source_not_its_own_is_dropped_by_port_security(client, agent, monkeypatch):
    async def drops():
        return {"vm1": {"spoofed_source": 6}}

    monkeypatch.setattr(agent, "port_drops", drops)
    body = await expect(await client.get("/v1/trace?routing_domain=blue&src=10.1.0.99&dst=10.1.0.10&port=vm1",
                                         headers=AUTH), 200)
    assert body["verdict"] == "dropped" and body["reason"].startswith("port security, spoofed source")
    assert (body["ingress"], body["drops"]) == ("tap1", 6)
    await expect(await client.get("/v1/trace?routing_domain=blue&src=10.1.0.99&dst=10.1.0.10&port=vm9",
                                  headers=AUTH), 404, "not-found")
    metrics = await (await client.get("/metrics")).text()
    assert 'nvfabric_port_security_drops_total{port="vm1",reason="spoofed_source"} 6.0' in metrics
    port = await expect(await client.get("/v1/ports/vm1", headers=AUTH), 200)
    assert port["status"]["port_security_drops"] == {"spoofed_source": 6}


async def test_a_change_the_kernel_refused_is_422_with_the_kernel_words(client, agent, monkeypatch):
    # a real refusal needs a kernel (tests/kernel/test_agent_tenants.py: an MTU a macvlan cannot take);
    # here the error path
    async def refused(port):
        raise KernelError(f"port {port.name}", ("Device does not allow enslaving to a master device",))

    monkeypatch.setattr(agent, "put_port", refused)
    body = await expect(await client.put("/v1/ports/vm2", headers=AUTH, json=VM2), 422, "kernel-refused")
    assert body["messages"] == ["Device does not allow enslaving to a master device"]
    assert "change reverted" in body["problem"]


# ---------------------------------------------------------------- 500 only for bugs


async def test_an_unexpected_exception_is_a_logged_500_with_a_json_body(client, agent, monkeypatch, caplog):
    def broken():
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(agent, "status", broken)
    with caplog.at_level(logging.ERROR, logger="nvfabric.service.rest"):
        body = await expect(await client.get("/v1/status", headers=AUTH), 500, "internal")
    assert body["incident"] in body["problem"]
    assert any(body["incident"] in rec.getMessage() and rec.exc_info for rec in caplog.records)
    assert "a bug" not in json.dumps(body)  # internals stay in the log


# ---------------------------------------------------------------- the runner


async def test_start_api_binds_loopback_and_stops(agent):
    server = await start_api(agent, "127.0.0.1:0", TOKEN)
    assert server is not None
    try:
        assert server.url.startswith("http://127.0.0.1:") and not server.url.endswith(":0")
        from aiohttp import ClientSession

        async with ClientSession() as session:
            async with session.get(f"{server.url}/v1/status", headers=AUTH) as r:
                assert r.status == 200
    finally:
        await server.stop()

async def test_a_listen_address_in_use_is_an_error_and_leaves_nothing_behind(agent):
    first = await start_api(agent, "127.0.0.1:0", TOKEN)
    assert first is not None
    try:
        with pytest.raises(OSError):
            await start_api(agent, first.url.removeprefix("http://"), TOKEN)
    finally:
        await first.stop()
    again = await start_api(agent, first.url.removeprefix("http://"), TOKEN)  # the port was really freed
    assert again is not None
    await again.stop()


async def test_without_a_token_there_is_no_api(agent, caplog):
    with caplog.at_level(logging.WARNING, logger="nvfabric.service.rest"):
        assert await start_api(agent, "127.0.0.1:0", None) is None
    assert "REST API is disabled" in caplog.text


async def test_decapsulation_counters_and_the_trace_of_an_arriving_packet(client):
    text = await (await client.get("/metrics")).text()
    assert 'nvfabric_decap_drops_total{reason="not_vouched"}' in text and "nvfabric_decap_vouched_total" in text
    status = await expect(await client.get("/v1/status", headers=AUTH), 200)
    assert "decap" in status
    # before its first write the agent vouches for nothing: dropped, and why
    body = await expect(await client.get("/v1/trace/arrival?pa=198.51.100.12&vsid=5001&flow_id=7&src=10.1.0.20"
                                         "&dst=10.1.0.10", headers=AUTH), 200)
    assert (body["verdict"], body["counter"], body["vsid"], body["flow_id"]) == ("dropped", "unknown_pa", 5001, 7)
    for query, field in (("pa=x&vsid=5001&src=10.1.0.20&dst=10.1.0.10", "pa"),
                         ("pa=198.51.100.12&vsid=1&flow_id=256&src=10.1.0.20&dst=10.1.0.10", "vsid"),
                         ("pa=198.51.100.12&src=10.1.0.20&dst=10.1.0.10", "vsid")):
        body = await expect(await client.get(f"/v1/trace/arrival?{query}", headers=AUTH), 400, "invalid")
        assert body["field"] == field, body


async def test_a_change_whose_state_cannot_be_saved_is_503_and_not_applied(client, agent, monkeypatch):
    # the agent puts the kernel back before raising (tests/kernel/test_api_agent.py runs it on a kernel)
    async def unsaved(port):
        raise state.SaveError(agent.config.state_dir / state.FILE, "No space left on device")

    monkeypatch.setattr(agent, "put_port", unsaved)
    body = await expect(await client.put("/v1/ports/vm2", headers=AUTH, json=VM2), 503, "state-not-saved")
    assert "No space left on device" in body["problem"] and "nothing was applied" in body["problem"]
    assert "vm2" not in agent.catalog.ports


async def test_ports_come_in_bounded_pages(tmp_path):
    ports = {f"vm{n}": Port.from_dict({**VM1, "name": f"vm{n}", "interface": f"tap{n}",
                                       "mac": f"02:00:00:00:01:{n:02x}", "addresses": [f"10.1.0.{10 + n}"]})
             for n in range(1, 6)}
    state.save(tmp_path, state.SavedState(Catalog.build({"blue": RoutingDomain.from_dict(BLUE)}, ports), {"blue": 1000},
                                          {}))
    config = AgentConfig.from_dict({"asn": 65001, "router_id": "198.51.100.11", "provider_addresses": ["198.51.100.11"],
                                    "route_reflectors": [{"address": "198.51.100.100"}], "state_dir": str(tmp_path)})
    async with TestClient(TestServer(make_app(Agent(config), TOKEN))) as c:
        first = await expect(await c.get("/v1/ports?limit=2", headers=AUTH), 200)
        assert [p["name"] for p in first["ports"]] == ["vm1", "vm2"] and first["next"] == "vm2"
        rest = await expect(await c.get(f"/v1/ports?after={first['next']}", headers=AUTH), 200)
        assert [p["name"] for p in rest["ports"]] == ["vm3", "vm4", "vm5"] and rest["next"] is None
        for bad, field in [("limit=0", "limit"), ("limit=1001", "limit"), ("limit=two", "limit"), ("after=", "after"),
                           ("page=2", "page")]:
            body = await expect(await c.get(f"/v1/ports?{bad}", headers=AUTH), 400, "invalid")
            assert body["field"] == field
