"""The OpenAPI documents of the three APIs stay in step with what each app serves: every route registered in
the aiohttp router is in the document with the same method, and every documented operation is routed."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from nvfabric.bgp.reflector import api as rr_api
from nvfabric.bgp.reflector.daemon import Reflector
from nvfabric.gateway import api as gw_api
from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.gateway import Gateway
from nvfabric.hostagent import api as agent_api
from nvfabric.service.openapi import DOCUMENT_PATH
from tests.unit.test_api import TOKEN, make_agent
from tests.unit.test_reflector_daemon import rr_cfg

METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def apps(tmp_path) -> dict[str, web.Application]:
    gateway = Gateway(GatewayConfig.from_dict({"asn": 65001, "router_id": "198.51.100.21",
                                               "external": {"interfaces": ["ext"]}}))
    return {"agent": agent_api.make_app(make_agent(tmp_path), TOKEN),
            "gateway": gw_api.make_app(gateway, TOKEN),
            "reflector": rr_api.build_app(Reflector(rr_cfg([])), TOKEN)}


def routed(app: web.Application) -> set[tuple[str, str]]:
    return {(route.method.lower(), route.resource.canonical) for route in app.router.routes()
            if route.resource is not None}


@pytest.mark.parametrize("daemon", ["agent", "gateway", "reflector"])
async def test_every_route_is_documented_and_every_documented_operation_routed(tmp_path, daemon):
    app = apps(tmp_path)[daemon]
    async with TestClient(TestServer(app)) as client:
        answer = await client.get(DOCUMENT_PATH, headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status == 200
        doc = await answer.json()
        assert (await client.get(DOCUMENT_PATH)).status == 401  # behind the token like the rest
    documented = {(method, path) for path, item in doc["paths"].items() for method in item if method in METHODS}
    assert routed(app) == documented
    assert doc["openapi"].startswith("3.") and doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert "500" in op["responses"], (method, path)  # the error model is documented everywhere
            names = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            assert names == [part[1:-1] for part in path.split("/") if part.startswith("{")], (method, path)
            if path in ("/metrics", "/healthz", "/readyz"):
                assert op.get("security") == [] and "401" not in op["responses"], (method, path)
            else:
                assert "401" in op["responses"], (method, path)


CONDITIONAL = {"agent": ["/v1/routing-domains/{name}", "/v1/ports/{name}"], "gateway": ["/v1/tenants/{name}"],
               "reflector": ["/v1/neighbors/{address}"]}


@pytest.mark.parametrize("daemon", ["agent", "gateway", "reflector"])
async def test_the_documents_describe_preconditions_pages_and_probes(tmp_path, daemon):
    app = apps(tmp_path)[daemon]
    async with TestClient(TestServer(app)) as client:
        doc = await (await client.get(DOCUMENT_PATH, headers={"Authorization": f"Bearer {TOKEN}"})).json()
    for path in CONDITIONAL[daemon]:
        for method, op in doc["paths"][path].items():
            headers = {p["name"] for p in op["parameters"] if p["in"] == "header"}
            assert "If-Match" in headers and "412" in op["responses"], (method, path)
            assert ("If-None-Match" in headers) == (method in ("get", "put")), (method, path)
            assert ("304" in op["responses"]) == (method == "get"), (method, path)
            for status in ("200", "201"):
                if status in op["responses"]:
                    assert op["responses"][status]["headers"]["ETag"]["required"] is True, (method, path)
    for path in ("/healthz", "/readyz"):
        assert doc["paths"][path]["get"]["security"] == []
    assert set(doc["paths"]["/readyz"]["get"]["responses"]) >= {"200", "503"}
    # every list (a collection named by its path: /v1/ports -> "ports") answers a page: limit and after in,
    # next out; and no answer is a bare array
    lists = 0
    for path, item in doc["paths"].items():
        answer = item.get("get", {}).get("responses", {}).get("200", {}).get("content", {}).get("application/json")
        schema = answer["schema"] if answer else {}
        assert schema.get("type") != "array", path
        items = schema.get("properties", {}).get(path.rsplit("/", 1)[-1].replace("-", "_"), {})
        if items.get("type") == "array":
            lists += 1
            params = {p["name"] for p in item["get"].get("parameters", [])}
            assert {"limit", "after"} <= params and "next" in schema["required"], path
    assert lists == {"agent": 5, "gateway": 1, "reflector": 2}[daemon]
