"""REST fuzzing: schemathesis generates requests from each API's own OpenAPI document (/v1/openapi.json),
valid ones and ones that break the schema, and every answer must be in the document (status, content type,
body schema) and never a 500. Seeded and bounded: EXAMPLES per operation (and the explicit, boundary and
negative cases schemathesis adds).

The host agent runs here without a kernel (not started, as tests/unit/test_api.py's), so a valid change
answers 503 not-running, which its document lists; 500 is never acceptable. The reflector runs started,
with a table of reflected routes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, seed, settings
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from nvfabric.hostagent import api as agent_api
from nvfabric.service.rest import ApiServer, serve
from tests.unit.test_api import TOKEN, make_agent

# a short run in `make test`; NVFABRIC_FUZZ_EXAMPLES=1000 (and NVFABRIC_FUZZ_SEED) for a long one
EXAMPLES = int(os.environ.get("NVFABRIC_FUZZ_EXAMPLES", "50"))
SEED = int(os.environ.get("NVFABRIC_FUZZ_SEED", "20261202"))
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SENT: Counter[str] = Counter()  # requests per API, reported at the end of the module


def no_internal_error(ctx: Any, response: Any, case: Any) -> bool:
    """A 500 is a bug; the 503 of a daemon that is not running is an answer its document lists."""
    if response.status_code == 500 or response.status_code > 503:
        raise AssertionError(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}")
    return True


CHECKS = [no_internal_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


class Served:
    """An aiohttp app served from its own event loop in a thread (schemathesis's client is synchronous)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: ApiServer = self.run(make())

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def schema(self) -> Any:
        doc = requests.get(f"{self.server.url}/v1/openapi.json", headers=AUTH, timeout=30).json()
        return schemathesis.openapi.from_dict(doc)

    def close(self, *cleanups: Any) -> None:
        self.run(self.server.stop())
        for cleanup in cleanups:
            self.run(cleanup)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


def fuzz(served: Served, name: str, case: Any, checks: list[Any] = CHECKS) -> Any:
    """One generated request, checked; the response (its status, for a tally)."""
    SENT[name] += 1
    return case.call_and_validate(base_url=served.server.url, headers=AUTH, checks=checks, timeout=30)


# ---------------------------------------------------------------- the host agent


@pytest.fixture(scope="module")
def agent_served(tmp_path_factory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("agent")

    async def up() -> ApiServer:
        return await serve(agent_api.make_app(make_agent(directory), TOKEN), "127.0.0.1:0")

    served = Served(up)
    yield served
    served.close()
    print(f"\nREST fuzzing, host agent: {SENT['agent']} requests")


@pytest.fixture(scope="module")
def agent_schema(agent_served: Served) -> Any:
    return agent_served.schema()


agent_schema_lazy = schemathesis.pytest.from_fixture("agent_schema")


@agent_schema_lazy.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@seed(SEED)
def test_agent_api_answers_as_documented(case, agent_served):
    fuzz(agent_served, "agent", case)


# ---------------------------------------------------------------- the route reflector


@pytest.fixture(scope="module")
def rr_served() -> Iterator[Served]:
    from nvfabric.bgp.reflector import api as rr_api
    from nvfabric.bgp.reflector.daemon import Reflector
    from tests.unit.test_reflector_daemon import DYNAMIC, route, rr_cfg, speaker, until

    started: list[Any] = []

    async def up() -> ApiServer:
        rr = Reflector(rr_cfg(DYNAMIC))
        await rr.start()
        client = speaker("198.51.100.1", "127.0.1.1", rr.listen_port)
        await client.start()
        started.extend([client, rr])
        await client.announce([route(i, vsid=5001 + i % 3) for i in range(40)])
        await until(lambda: len(rr.rib) == 40, what="a table to page through and filter")
        return await serve(rr_api.build_app(rr, TOKEN), "127.0.0.1:0")

    served = Served(up)
    yield served
    served.close(*(s.stop() for s in started))
    print(f"\nREST fuzzing, route reflector: {SENT['rr']} requests")


@pytest.fixture(scope="module")
def rr_schema(rr_served: Served) -> Any:
    return rr_served.schema()


rr_schema_lazy = schemathesis.pytest.from_fixture("rr_schema")


@rr_schema_lazy.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@seed(SEED)
def test_reflector_api_answers_as_documented(case, rr_served):
    fuzz(rr_served, "rr", case)


# ---------------------------------------------------------------- the gateway


@pytest.fixture(scope="module")
def gw_served() -> Iterator[Served]:
    """A started gateway in a scratch namespace (nftables and conntrack; tenants attached by interface, no
    NVGRE side, so no VRF or GRE is needed), its API on the host's loopback."""
    from nvfabric.gateway import api as gw_api
    from nvfabric.gateway.config import GatewayConfig
    from nvfabric.gateway.gateway import Gateway

    ns = f"nvf-fuzz-gw-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "add", "ext", "type", "veth", "peer", "name", "ext-peer"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "add", "t-blue", "type", "veth", "peer", "name", "t-blue-vm"], check=True)
    blue = {"name": "blue", "route_targets": ["65001:1"], "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}],
            "snat": [{"address": "203.0.113.140"}], "floating_ips": [{"public": "203.0.113.131",
                                                                     "private": "10.0.0.5"}],
            "interfaces": ["t-blue"]}
    config = GatewayConfig.from_dict({"asn": 65001, "router_id": "198.51.100.21", "netns": ns,
                                      "external": {"interfaces": ["ext"]}, "tenants": [blue]})
    gateway = Gateway(config)

    async def up() -> ApiServer:
        await gateway.start()
        return await serve(gw_api.make_app(gateway, TOKEN), "127.0.0.1:0")

    try:
        served = Served(up)
        yield served
        served.close(gateway.stop())
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print(f"\nREST fuzzing, gateway: {SENT['gw']} requests")


@pytest.fixture(scope="module")
def gw_schema(gw_served: Served) -> Any:
    return gw_served.schema()


gw_schema_lazy = schemathesis.pytest.from_fixture("gw_schema")


@gw_schema_lazy.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@seed(SEED)
def test_gateway_api_answers_as_documented(case, gw_served):
    fuzz(gw_served, "gw", case)


# ---------------------------------------------------------------- what fuzzing found, kept as tests


@pytest.mark.parametrize("method, path, body, field", [
    ("POST", "/v1/trace", {"src": "10.0.0.5", "dst": "192.0.2.1", "tenant": {}}, "tenant"),  # was a 500
    ("GET", "/v1/trace?src=10.0.0.5&dst=192.0.2.1&sport=%C2%B2", None, "sport"),  # '²': a digit to isdigit only
])
def test_gateway_findings_are_400_naming_the_field(gw_served, method, path, body, field):
    answer = requests.request(method, gw_served.server.url + path, json=body, headers=AUTH, timeout=30)
    assert answer.status_code == 400 and answer.json()["field"] == field, answer.text
