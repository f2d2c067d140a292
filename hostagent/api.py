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

from nvfabric.hostagent import state, views
from nvfabric.hostagent.agent import Agent
from nvfabric.hostagent.config import DEFAULT_LISTEN
from nvfabric.hostagent.trace import arriving, trace
from nvfabric.service import conditional, health, pages
from nvfabric.service.conditional import ETAG
from nvfabric.service.openapi import (ANY_OBJECT, BOOLEAN, INTEGER, STRING, Operation, Param, array, nullable, obj,
                                      register)
from nvfabric.service.rest import ApiError, ApiServer, application, json_body, query, serve_if_token
from nvfabric.vnet.errors import ModelError
from nvfabric.vnet.model import LookupRecord, Port, RoutingDomain, check_address, check_vsid
from nvfabric.vnet.refusals import REFUSALS

log = logging.getLogger(__name__)

AGENT = web.AppKey("agent", Agent)

__all__ = ["AGENT", "ApiError", "ApiServer", "make_app", "start_api"]



def state_refusal(exc: Exception) -> ApiError | None:
    """The state could not be saved (a full disk, say): the kernel was put back, nothing applied; 503 as
    the condition is the host's, and the same request succeeds once it is fixed."""
    if isinstance(exc, state.SaveError):
        return ApiError(503, "state-not-saved", f"{exc}; nothing was applied", path=str(exc.path))
    return None


def _spec(body: Any) -> Any:
    """The body without its read-only status and ETag (a GET's view PUT back unchanged is accepted)."""
    return conditional.without_read_only(body, views.STATUS)


def _tagged(view: dict[str, Any]) -> dict[str, Any]:
    """A routing domain's or port's view with its ETag: of what PUT takes, not of the read-only status (a
    port's drop counters must not fail a conditional update)."""
    return {**view, ETAG: conditional.etag({k: v for k, v in view.items() if k != views.STATUS})}


def _domain_tag(agent: Agent, name: str) -> str | None:
    domain = agent.catalog.routing_domains.get(name)
    return None if domain is None else conditional.etag(state.routing_domain_to_dict(domain))


def _port_tag(agent: Agent, name: str) -> str | None:
    port = agent.catalog.ports.get(name)
    return None if port is None else conditional.etag(state.port_to_dict(port))


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
    wanted = pages.page_request(query(request, ("limit", "after")))
    catalog = _agent(request).catalog
    found, after = pages.page(sorted(catalog.routing_domains.items()), wanted)
    return web.json_response({"routing_domains": [_tagged(views.routing_domain(d, catalog)) for d in found],
                              "next": after})


async def get_routing_domain(request: web.Request) -> web.StreamResponse:
    catalog = _agent(request).catalog
    domain = catalog.routing_domain(request.match_info["name"])
    return conditional.read(request, _tagged(views.routing_domain(domain, catalog)))


async def put_routing_domain(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    domain = RoutingDomain.from_dict(_spec(await json_body(request)), name=name)
    agent = _agent(request)
    async with conditional.write(request, lambda: _domain_tag(agent, name)):
        created = await agent.put_routing_domain(domain)
        body = _tagged(views.routing_domain(agent.catalog.routing_domain(domain.name), agent.catalog))
    return conditional.written(request, created, body)


async def delete_routing_domain(request: web.Request) -> web.Response:
    agent, name = _agent(request), request.match_info["name"]
    async with conditional.write(request, lambda: _domain_tag(agent, name)):
        await agent.delete_routing_domain(name)
    return web.Response(status=204)


async def list_ports(request: web.Request) -> web.Response:
    wanted = pages.page_request(query(request, ("limit", "after")))
    agent = _agent(request)
    drops = await agent.port_drops()
    catalog, records = agent.catalog, agent.lookup_records()
    found, after = pages.page(sorted(catalog.ports.items()), wanted)
    return web.json_response({"ports": [_tagged(views.port(p, catalog, records, drops)) for p in found],
                              "next": after})


async def get_port(request: web.Request) -> web.StreamResponse:
    agent = _agent(request)
    port = agent.catalog.port(request.match_info["name"])
    drops = await agent.port_drops()
    return conditional.read(request, _tagged(views.port(port, agent.catalog, agent.lookup_records(), drops)))


async def put_port(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    port = Port.from_dict(_spec(await json_body(request)), name=name)
    agent = _agent(request)
    async with conditional.write(request, lambda: _port_tag(agent, name)):
        created = await agent.put_port(port)  # returns once programmed and announced
        body = _tagged(views.port(agent.catalog.port(port.name), agent.catalog, agent.lookup_records()))
    return conditional.written(request, created, body)


async def delete_port(request: web.Request) -> web.Response:
    agent, name = _agent(request), request.match_info["name"]
    async with conditional.write(request, lambda: _port_tag(agent, name)):
        await agent.delete_port(name)
    return web.Response(status=204)


async def lookup_records(request: web.Request) -> web.Response:
    """Every CA this host knows, local and learned: HNV's Get-NetVirtualizationLookupRecord."""
    params = query(request, ("routing_domain", "vsid", "ca", "limit", "after"))
    wanted = pages.page_request(params)
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
    found, after = pages.page(sorted((_record_key(r), r) for r in records), wanted)
    return web.json_response({"lookup_records": [views.lookup_record(r) for r in found], "next": after})


def _record_key(r: LookupRecord) -> str:
    """A record's place in the pages: unique (a CA may be local and, for a moment, remote too)."""
    return f"{r.routing_domain}/{r.vsid:08d}/{r.ca}/{'local' if r.local else r.pa}"


async def customer_routes(request: web.Request) -> web.Response:
    """HNV's Get-NetVirtualizationCustomerRoute: each subnet on-link, the configured routes, and the prefixes
    learned by BGP, a page at a time."""
    params = query(request, ("routing_domain", "limit", "after"))
    wanted = pages.page_request(params)
    agent = _agent(request)
    catalog, prefixes = agent.catalog, agent.remote_prefixes()
    if "routing_domain" in params:
        domains = [catalog.routing_domain(params["routing_domain"])]
    else:
        domains = list(catalog.routing_domains.values())
    # sorted by the key alone: two routes are never compared (dicts have no order)
    found, after = pages.page(sorted(((_route_key(r), r) for domain in domains
                                      for r in views.customer_routes(domain, prefixes)), key=lambda kv: kv[0]), wanted)
    return web.json_response({"customer_routes": found, "next": after})


_ORIGINS = {"subnet": 0, "config": 1, "bgp": 2}  # a routing domain's routes in the order HNV lists them


def _route_key(route: dict[str, Any]) -> str:
    """A customer route's place in the pages: unique (a prefix may be learned from two hosts, by PA, and in
    two of a routing domain's VSIDs)."""
    return (f"{route['routing_domain']}/{_ORIGINS[route['origin']]}/{route['prefix']}/{route['pa'] or ''}/"
            f"{route['vsid'] if route['vsid'] is not None else ''}")


async def provider_addresses(request: web.Request) -> web.Response:
    """HNV's Get-NetVirtualizationProviderAddress: the underlay addresses this host sends and receives on, in
    the configuration's order (the first is the next hop it announces), a page at a time."""
    wanted = pages.page_request(query(request, ("limit", "after")))
    config = _agent(request).config
    found, after = pages.page(((f"{i:04d}", {"address": str(pa), "next_hop": i == 0})
                               for i, pa in enumerate(config.provider_addresses)), wanted)
    return web.json_response({"provider_addresses": found, "next": after})


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


def readiness(request: web.Request) -> tuple[str, ...]:
    return _agent(request).readiness()


async def status(request: web.Request) -> web.Response:
    await _agent(request).decap_counters()  # the kernel's counters, read now
    return web.json_response(_agent(request).status().as_dict())


async def metrics(request: web.Request) -> web.Response:
    agent = _agent(request)
    agent.metrics.port_security(await agent.port_drops())  # the kernel's counters, read at scrape time
    await agent.decap_counters()
    body = generate_latest(agent.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# ---------------------------------------------------------------------- schemas (the OpenAPI document's)

_ADDRESS = {**STRING, "description": "an IPv4 or IPv6 address"}
_PREFIX = {**STRING, "description": "an IPv4 or IPv6 prefix"}
_DHCP = obj([], True, enabled=BOOLEAN, dns_servers=array(_ADDRESS), search_domains=array(STRING),
            lease_time=INTEGER, routes=array(obj(["prefix", "next_hop"], True, prefix=_PREFIX, next_hop=_ADDRESS)))
_SUBNET = obj(["vsid", "prefixes"], True, vsid=INTEGER, prefixes=array(_PREFIX), gateways=array(_ADDRESS),
              dhcp=_DHCP)
_CUSTOMER_ROUTE = obj(["prefix"], True, prefix=_PREFIX, next_hop=STRING, metric=INTEGER)
_VIRTUAL_ADDRESS = obj(["address", "ports"], True, address=_ADDRESS, ports=array(STRING))
ROUTING_DOMAIN = obj(["route_targets", "subnets"], True, name=STRING, route_targets=array(STRING),
                     subnets=array(_SUBNET), customer_routes=array(_CUSTOMER_ROUTE),
                     virtual_addresses=array(_VIRTUAL_ADDRESS), status=ANY_OBJECT, etag=STRING)
PORT = obj(["interface", "mac", "vsid", "addresses"], True, name=STRING, interface=STRING, mac=STRING,
           vsid=INTEGER, addresses=array(_ADDRESS), mtu=nullable(INTEGER), port_security=BOOLEAN,
           allowed_addresses=array(_PREFIX), status=ANY_OBJECT, etag=STRING)
_ETAG = {**STRING, "description": "the ETag (read-only; ignored in a PUT body: send it as If-Match)"}
_ROUTING_DOMAIN_VIEW = obj(["name", "route_targets", "subnets", "status", "etag"], name=STRING,
                           route_targets=array(STRING), subnets=array(obj(["vsid", "prefixes", "gateways"])),
                           status=obj(["vrf", "ports"], vrf=STRING, ports=array(STRING)), etag=_ETAG)
_PORT_VIEW = obj(["name", "interface", "mac", "vsid", "addresses", "status", "etag"], name=STRING, interface=STRING,
                 mac=STRING, vsid=INTEGER, addresses=array(STRING),
                 status=obj(["routing_domain", "active", "port_security_drops"], routing_domain=nullable(STRING),
                            active=BOOLEAN, port_security_drops=nullable(ANY_OBJECT)), etag=_ETAG)
_LOOKUP_RECORD = obj(["routing_domain", "vsid", "ca", "mac", "pa", "local", "port"], routing_domain=STRING,
                     vsid=INTEGER, ca=STRING, mac=STRING, pa=nullable(STRING), local=BOOLEAN,
                     port=nullable(STRING))
_TRACE = obj(["routing_domain", "src", "dst", "verdict", "reason"], routing_domain=STRING, src=STRING,
             dst=STRING, verdict=STRING, reason=STRING, vsid=nullable(INTEGER), gre_key=nullable(INTEGER),
             pa=nullable(STRING), mac=nullable(STRING), device=nullable(STRING), route=nullable(STRING))
_ARRIVAL = obj(["pa", "gre_key", "vsid", "flow_id", "src", "dst", "verdict", "reason", "counter"], pa=STRING,
               gre_key=INTEGER, vsid=INTEGER, flow_id=INTEGER, src=STRING, dst=STRING, verdict=STRING,
               reason=STRING, counter=STRING, routing_domain=nullable(STRING), inner=nullable(_TRACE))
_STATUS = obj(["router_id", "reflectors", "synced", "headless"], router_id=STRING, reflectors=array(ANY_OBJECT),
              synced=BOOLEAN, headless=BOOLEAN, totals=ANY_OBJECT, decap=ANY_OBJECT,
              virtual_addresses=array(ANY_OBJECT), claims=ANY_OBJECT, guest_services=ANY_OBJECT,
              bfd=array(ANY_OBJECT), last_resync=nullable(ANY_OBJECT))
_VSID_PARAM = Param("vsid", {**STRING, "pattern": "^[0-9]+$"}, "a VSID")


def operations(metrics_token: bool = False) -> list[Operation]:
    """Every route of the API with its schemas: what make_app registers and /v1/openapi.json documents."""
    write = (409, 422, 503)
    return [
        Operation("GET", "/v1/routing-domains", list_routing_domains, "the routing domains, a page at a time",
                  {200: obj(["routing_domains", "next"], routing_domains=array(_ROUTING_DOMAIN_VIEW),
                            next=pages.NEXT)}, query=pages.PARAMS),
        Operation("GET", "/v1/routing-domains/{name}", get_routing_domain, "one routing domain",
                  {200: _ROUTING_DOMAIN_VIEW}, conditional=True),
        Operation("PUT", "/v1/routing-domains/{name}", put_routing_domain, "create or replace a routing domain",
                  {200: _ROUTING_DOMAIN_VIEW, 201: _ROUTING_DOMAIN_VIEW}, body=ROUTING_DOMAIN, errors=write,
                  conditional=True),
        Operation("DELETE", "/v1/routing-domains/{name}", delete_routing_domain, "delete a routing domain",
                  {204: None}, errors=write, conditional=True),
        Operation("GET", "/v1/ports", list_ports, "the ports, a page at a time",
                  {200: obj(["ports", "next"], ports=array(_PORT_VIEW), next=pages.NEXT)}, query=pages.PARAMS),
        Operation("GET", "/v1/ports/{name}", get_port, "one port", {200: _PORT_VIEW}, conditional=True),
        Operation("PUT", "/v1/ports/{name}", put_port, "create or replace a port (programmed and announced)",
                  {200: _PORT_VIEW, 201: _PORT_VIEW}, body=PORT, errors=write, conditional=True),
        Operation("DELETE", "/v1/ports/{name}", delete_port, "delete a port", {204: None}, errors=write,
                  conditional=True),
        Operation("GET", "/v1/lookup-records", lookup_records, "every CA this host knows, a page at a time",
                  {200: obj(["lookup_records", "next"], lookup_records=array(_LOOKUP_RECORD), next=pages.NEXT)},
                  query=(Param("routing_domain"), _VSID_PARAM, Param("ca", _ADDRESS), *pages.PARAMS), errors=(404,)),
        Operation("GET", "/v1/customer-routes", customer_routes, "customer routes, a page at a time",
                  {200: obj(["customer_routes", "next"], customer_routes=array(ANY_OBJECT), next=pages.NEXT)},
                  query=(Param("routing_domain"), *pages.PARAMS), errors=(404,)),
        Operation("GET", "/v1/provider-addresses", provider_addresses, "this host's provider addresses, a page at "
                  "a time", {200: obj(["provider_addresses", "next"], provider_addresses=array(
                      obj(["address", "next_hop"], address=STRING, next_hop=BOOLEAN)), next=pages.NEXT)},
                  query=pages.PARAMS),
        Operation("GET", "/v1/trace", trace_packet, "the path of a packet from a CA to a CA",
                  {200: _TRACE}, query=(Param("routing_domain", required=True), Param("src", _ADDRESS, required=True),
                                        Param("dst", _ADDRESS, required=True), Param("port")), errors=(404,)),
        Operation("GET", "/v1/trace/arrival", trace_arrival, "an NVGRE packet arriving from another host",
                  {200: _ARRIVAL}, query=(Param("pa", _ADDRESS, required=True), Param("vsid", required=True),
                                          Param("src", _ADDRESS, required=True), Param("dst", _ADDRESS, required=True),
                                          Param("flow_id"))),
        Operation("GET", "/v1/status", status, "the agent's sessions, reconciles and counters", {200: _STATUS}),
        Operation("GET", "/metrics", metrics, "Prometheus text", {200: STRING}, public=not metrics_token, text=True),
        *health.operations(readiness),
    ]


def make_app(agent: Agent, token: str, *, metrics_token: bool = False) -> web.Application:
    """`metrics_token`: /metrics needs the token too (by default Prometheus scrapes it without one)."""
    app = application(token, refusals=(*REFUSALS, state_refusal), metrics_token=metrics_token)
    app[AGENT] = agent
    register(app, "nvfabric host agent", "docs/agent.md#rest-api", operations(metrics_token))
    return app


async def start_api(agent: Agent, listen: str = DEFAULT_LISTEN, token: str | None = None, *,
                    metrics_token: bool = False) -> ApiServer | None:
    """Serve the API on `listen` ("127.0.0.1:8500", "[::1]:8500") in the running loop, which must be the
    agent's: handlers call the agent directly. No token, no API (None, logged)."""
    return await serve_if_token(lambda t: make_app(agent, t, metrics_token=metrics_token), listen, token, "agent")
