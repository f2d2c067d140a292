"""The host agent's REST API (docs/agent.md#rest-api): aiohttp, JSON, a bearer token, 127.0.0.1 by default.

Every request body and query is parsed here into vnet.model values (their from_dict names the field of any
error) before the agent sees it. Each refusal has its status: an invalid value 400, an unknown name 404, a
conflict with existing state 409, a valid change the kernel refused (and the agent reverted) 422, a change
while the agent is not running 503; the rest (401, 415, malformed JSON, unknown paths and methods, and a
logged 500 for anything unexpected) is service/rest.py, shared with the gateway and the reflector; vnet's
errors are refused as vnet/refusals.py says.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nvfabric.hostagent import views
from nvfabric.hostagent.agent import Agent
from nvfabric.hostagent.config import DEFAULT_LISTEN
from nvfabric.hostagent.trace import arriving, trace
from nvfabric.service.rest import ApiError, ApiServer, application, json_body, put_response, query, serve_if_token
from nvfabric.vnet.errors import ModelError
from nvfabric.vnet.model import Port, RoutingDomain, check_address, check_vsid
from nvfabric.vnet.refusals import REFUSALS

log = logging.getLogger(__name__)

AGENT = web.AppKey("agent", Agent)

__all__ = ["AGENT", "ApiError", "ApiServer", "make_app", "start_api"]



def _spec(body: Any) -> Any:
    """The body without its read-only status (a GET's view PUT back unchanged is accepted)."""
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k != views.STATUS}
    return body


def _vsid(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise ModelError("vsid", text, "must be an integer") from None
    return check_vsid(value, "vsid")


def _agent(request: web.Request) -> Agent:
    return request.app[AGENT]


# ---------------------------------------------------------------------- handlers


async def list_routing_domains(request: web.Request) -> web.Response:
    catalog = _agent(request).catalog
    return web.json_response({"routing_domains": [views.routing_domain(domain, catalog)
                                                  for _, domain in sorted(catalog.routing_domains.items())]})


async def get_routing_domain(request: web.Request) -> web.Response:
    catalog = _agent(request).catalog
    return web.json_response(views.routing_domain(catalog.routing_domain(request.match_info["name"]), catalog))


async def put_routing_domain(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    domain = RoutingDomain.from_dict(_spec(await json_body(request)), name=name)
    agent = _agent(request)
    created = await agent.put_routing_domain(domain)
    body = views.routing_domain(agent.catalog.routing_domain(domain.name), agent.catalog)
    return put_response(request, created, body)


async def delete_routing_domain(request: web.Request) -> web.Response:
    await _agent(request).delete_routing_domain(request.match_info["name"])
    return web.Response(status=204)


async def list_ports(request: web.Request) -> web.Response:
    agent = _agent(request)
    drops = await agent.port_drops()
    catalog, records = agent.catalog, agent.lookup_records()
    return web.json_response({"ports": [views.port(p, catalog, records, drops)
                                        for _, p in sorted(catalog.ports.items())]})


async def get_port(request: web.Request) -> web.Response:
    agent = _agent(request)
    port = agent.catalog.port(request.match_info["name"])
    drops = await agent.port_drops()
    return web.json_response(views.port(port, agent.catalog, agent.lookup_records(), drops))


async def put_port(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    port = Port.from_dict(_spec(await json_body(request)), name=name)
    agent = _agent(request)
    created = await agent.put_port(port)  # returns once programmed and announced
    return put_response(request, created, views.port(agent.catalog.port(port.name), agent.catalog,
                                                      agent.lookup_records()))


async def delete_port(request: web.Request) -> web.Response:
    await _agent(request).delete_port(request.match_info["name"])
    return web.Response(status=204)


async def lookup_records(request: web.Request) -> web.Response:
    """Every CA this host knows, local and learned: HNV's Get-NetVirtualizationLookupRecord."""
    params = query(request, ("routing_domain", "vsid", "ca"))
    agent = _agent(request)
    records = agent.lookup_records()
    if "routing_domain" in params:
        agent.catalog.routing_domain(params["routing_domain"])  # 404 for a routing domain this host lacks
        records = [r for r in records if r.routing_domain == params["routing_domain"]]
    if "vsid" in params:
        vsid = _vsid(params["vsid"])
        records = [r for r in records if r.vsid == vsid]
    if "ca" in params:
        ca = check_address(params["ca"], "ca")
        records = [r for r in records if r.ca == ca]
    return web.json_response({"lookup_records": [views.lookup_record(r) for r in records]})


async def customer_routes(request: web.Request) -> web.Response:
    """HNV's Get-NetVirtualizationCustomerRoute: each subnet on-link, and the prefixes learned by BGP."""
    params = query(request, ("routing_domain",))
    agent = _agent(request)
    catalog, prefixes = agent.catalog, agent.remote_prefixes()
    if "routing_domain" in params:
        domains = [catalog.routing_domain(params["routing_domain"])]
    else:
        domains = [d for _, d in sorted(catalog.routing_domains.items())]
    return web.json_response({"customer_routes": [r for domain in domains
                                                  for r in views.customer_routes(domain, prefixes)]})


async def provider_addresses(request: web.Request) -> web.Response:
    """HNV's Get-NetVirtualizationProviderAddress: the underlay addresses this host sends and receives on."""
    config = _agent(request).config
    return web.json_response({"provider_addresses": [
        {"address": str(pa), "next_hop": i == 0} for i, pa in enumerate(config.provider_addresses)]})


async def trace_packet(request: web.Request) -> web.Response:
    """HNV's Select-NetVirtualizationNextHop, with the reason when the packet is dropped."""
    params = query(request, ("routing_domain", "src", "dst", "port"))
    for required in ("routing_domain", "src", "dst"):
        if required not in params:
            raise ModelError(required, None, "required query parameter")
    src, dst = check_address(params["src"], "src"), check_address(params["dst"], "dst")
    agent = _agent(request)
    # `port`: the packet enters by this local port (what its VM sends, whatever its source): port security
    # decides first
    drops = await agent.port_drops() if "port" in params else None
    result = trace(agent.catalog, agent.lookup_records(), agent.desired, params["routing_domain"], src, dst,
                   port=params.get("port"), drops=drops)
    return web.json_response(views.trace(result))


async def trace_arrival(request: web.Request) -> web.Response:
    """An NVGRE packet arriving from PA with VSID (and FlowID), inner SRC -> DST: delivered or dropped, why."""
    params = request.query
    for required in ("pa", "vsid", "src", "dst"):
        if required not in params:
            raise ModelError(required, None, "required query parameter")
    pa, src, dst = (check_address(params[k], k) for k in ("pa", "src", "dst"))
    try:
        vsid, flow_id = int(params["vsid"]), int(params.get("flow_id", "0"))
    except ValueError:
        raise ModelError("vsid", params["vsid"], "must be an integer (and flow_id too)") from None
    if not 0 <= vsid < 1 << 24 or not 0 <= flow_id < 256:
        raise ModelError("vsid", vsid, "must fit 24 bits (and flow_id 8)")
    agent = _agent(request)
    result = arriving(agent.decap, agent.catalog, agent.lookup_records(), agent.desired, pa, vsid << 8 | flow_id,
                      src, dst)
    return web.json_response(views.arrival(result))


async def status(request: web.Request) -> web.Response:
    await _agent(request).decap_counters()  # the kernel's counters, read now
    return web.json_response(_agent(request).status().as_dict())


async def metrics(request: web.Request) -> web.Response:
    agent = _agent(request)
    agent.metrics.port_security(await agent.port_drops())  # the kernel's counters, read at scrape time
    await agent.decap_counters()
    body = generate_latest(agent.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# ---------------------------------------------------------------------- the app and its runner


def make_app(agent: Agent, token: str, *, metrics_token: bool = False) -> web.Application:
    """`metrics_token`: /metrics needs the token too (by default Prometheus scrapes it without one)."""
    app = application(token, refusals=REFUSALS, metrics_token=metrics_token)
    app[AGENT] = agent
    app.router.add_get("/v1/routing-domains", list_routing_domains)
    app.router.add_get("/v1/routing-domains/{name}", get_routing_domain)
    app.router.add_put("/v1/routing-domains/{name}", put_routing_domain)
    app.router.add_delete("/v1/routing-domains/{name}", delete_routing_domain)
    app.router.add_get("/v1/ports", list_ports)
    app.router.add_get("/v1/ports/{name}", get_port)
    app.router.add_put("/v1/ports/{name}", put_port)
    app.router.add_delete("/v1/ports/{name}", delete_port)
    app.router.add_get("/v1/lookup-records", lookup_records)
    app.router.add_get("/v1/customer-routes", customer_routes)
    app.router.add_get("/v1/provider-addresses", provider_addresses)
    app.router.add_get("/v1/trace", trace_packet)
    app.router.add_get("/v1/trace/arrival", trace_arrival)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/metrics", metrics)
    return app


async def start_api(agent: Agent, listen: str = DEFAULT_LISTEN, token: str | None = None, *,
                    metrics_token: bool = False) -> ApiServer | None:
    """Serve the API on `listen` ("127.0.0.1:8500", "[::1]:8500") in the running loop, which must be the
    agent's: handlers call the agent directly. No token, no API (None, logged)."""
    return await serve_if_token(lambda t: make_app(agent, t, metrics_token=metrics_token), listen, token, "agent")
