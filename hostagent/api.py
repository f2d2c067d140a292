"""The host agent's REST API (docs/agent.md#rest-api): aiohttp, JSON, a bearer token, 127.0.0.1 by default.

Every request body and query is parsed here into vnet.model values (their from_dict names the field of any
error) before the agent sees it. Errors are typed and each has its status: an invalid value 400, an unknown
name 404, a conflict with existing state 409, malformed JSON 400, a wrong content type 415, no or a wrong
token 401, an unknown path 404, a wrong method 405; a valid change the kernel refused (and the agent
reverted) 422, a change while the agent is not running 503. BaGPipe answered bad requests with HTTP 500
(shared/notes/anchors.md); here a 500 means a bug, and the outermost middleware turns any unexpected
exception into a logged 500 with a JSON body that names the log entry.
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hostagent import views
from hostagent.agent import Agent, AgentNotStarted, KernelError
from hostagent.config import DEFAULT_LISTEN, ApiConfig
from hostagent.trace import trace
from vnet.catalog import NotFound
from vnet.errors import ConflictError, ModelError
from vnet.model import Address, Port, RoutingDomain, check_address, check_vsid

log = logging.getLogger(__name__)

AGENT = web.AppKey("agent", Agent)
MAX_BODY = 1 << 20  # a routing domain or port is a few hundred bytes; 1 MiB leaves room and bounds memory
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A refusal decided by the API layer itself (not by the model): status, kind and what is wrong."""

    def __init__(self, status: int, error: str, problem: str, **extra: Any) -> None:
        super().__init__(problem)
        self.status, self.body = status, {"error": error, "problem": problem, **extra}


# ---------------------------------------------------------------------- middlewares


def _json_error(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(dict(body), status=status, headers=headers)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Typed errors -> their 4xx; aiohttp's own (404, 405, 413) -> JSON; anything else -> a logged 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _json_error(exc.status, exc.body)
    except ConflictError as exc:  # before ModelError: a ConflictError is a ModelError
        return _json_error(409, {**exc.as_dict(), "error": "conflict"})
    except ModelError as exc:
        return _json_error(400, exc.as_dict())
    except NotFound as exc:
        return _json_error(404, {"error": "not-found", "kind": exc.kind, "name": exc.name, "problem": str(exc)})
    except AgentNotStarted as exc:
        return _json_error(503, {"error": "not-running", "problem": str(exc)})
    except KernelError as exc:
        # Valid, but the kernel would not have it (lo as a port, say); the change was reverted. 422, not 500:
        # 500 is reserved for our bugs, and a 5xx invites a blind retry that would be refused the same way.
        return _json_error(422, {"error": "kernel-refused", "problem": str(exc), "messages": list(exc.messages)})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = exc.headers.get("Allow")
        body: dict[str, Any] = {"error": _slug(exc.reason), "problem": f"{request.method} {request.path}: {exc.reason}"}
        if allow is not None:
            body["allowed"] = sorted(m for m in allow.split(",") if m)
        return _json_error(exc.status, body, {"Allow": allow} if allow is not None else None)
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception("API %s %s failed (incident %s)", request.method, request.path, incident)
        return _json_error(500, {"error": "internal", "problem": f"internal error, logged as incident {incident}",
                                 "incident": incident})


def _slug(reason: str) -> str:
    return reason.lower().replace(" ", "-")


def _auth(token: str, public: frozenset[str]) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in public:
            return await handler(request)
        given = request.headers.get("Authorization")
        if given is None:
            raise _unauthorized("missing bearer token (header Authorization: Bearer <token>)")
        # constant time: the comparison must not tell how many leading bytes were right
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
            raise _unauthorized("wrong bearer token")
        return await handler(request)

    return auth


def _unauthorized(problem: str) -> ApiError:
    # WWW-Authenticate is added by the response hook below; ApiError carries the body only
    return ApiError(401, "unauthorized", problem)


async def _www_authenticate(request: web.Request, response: web.StreamResponse) -> None:
    if response.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="nvfabric"'


# ---------------------------------------------------------------------- parsing at the boundary


async def _json_body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported-media-type",
                       f"the body must be JSON with Content-Type: application/json (got {request.content_type!r})")
    raw = await request.read()  # bounded by client_max_size (413 beyond)
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise ApiError(400, "malformed-json", "the body nests too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed-json", f"the body is not JSON: {exc}") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # json.loads would keep the last silently: one of the two values is a setting silently lost
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _spec(body: Any) -> Any:
    """The body without its read-only status (a GET's view PUT back unchanged is accepted)."""
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k != views.STATUS}
    return body


def _query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    # a misspelt filter silently ignored would answer a different question
    for key in request.query:
        if key not in allowed:
            raise ModelError(key, request.query[key], f"unknown query parameter (known: {', '.join(allowed)})")
    for key in set(request.query):
        if len(request.query.getall(key)) > 1:
            raise ModelError(key, request.query.getall(key), "given more than once")
    return {k: request.query[k] for k in allowed if k in request.query}


def _vsid(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise ModelError("vsid", text, "must be an integer") from None
    return check_vsid(value, "vsid")


def _address(text: str, name: str) -> Address:
    return check_address(text, name)


def _agent(request: web.Request) -> Agent:
    return request.app[AGENT]


# ---------------------------------------------------------------------- handlers


async def list_routing_domains(request: web.Request) -> web.Response:
    catalog = _agent(request).catalog
    return web.json_response({"routing_domains": [views.routing_domain(rd, catalog)
                                                  for _, rd in sorted(catalog.routing_domains.items())]})


async def get_routing_domain(request: web.Request) -> web.Response:
    catalog = _agent(request).catalog
    return web.json_response(views.routing_domain(catalog.routing_domain(request.match_info["name"]), catalog))


async def put_routing_domain(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    rd = RoutingDomain.from_dict(_spec(await _json_body(request)), name=name)
    agent = _agent(request)
    created = await agent.put_routing_domain(rd)
    body = views.routing_domain(agent.catalog.routing_domain(rd.name), agent.catalog)
    return _put_response(request, created, body)


async def delete_routing_domain(request: web.Request) -> web.Response:
    await _agent(request).delete_routing_domain(request.match_info["name"])
    return web.Response(status=204)


async def list_ports(request: web.Request) -> web.Response:
    agent = _agent(request)
    catalog, records = agent.catalog, agent.lookup_records()
    return web.json_response({"ports": [views.port(p, catalog, records) for _, p in sorted(catalog.ports.items())]})


async def get_port(request: web.Request) -> web.Response:
    agent = _agent(request)
    port = agent.catalog.port(request.match_info["name"])
    return web.json_response(views.port(port, agent.catalog, agent.lookup_records()))


async def put_port(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    port = Port.from_dict(_spec(await _json_body(request)), name=name)
    agent = _agent(request)
    created = await agent.put_port(port)  # returns once programmed and announced
    return _put_response(request, created, views.port(agent.catalog.port(port.name), agent.catalog,
                                                      agent.lookup_records()))


async def delete_port(request: web.Request) -> web.Response:
    await _agent(request).delete_port(request.match_info["name"])
    return web.Response(status=204)


def _put_response(request: web.Request, created: bool, body: dict[str, Any]) -> web.Response:
    if created:
        return web.json_response(body, status=201, headers={"Location": request.path})
    return web.json_response(body, status=200)


async def lookup_records(request: web.Request) -> web.Response:
    """Every CA this host knows, local and learned: HNV's Get-NetVirtualizationLookupRecord."""
    query = _query(request, ("routing_domain", "vsid", "ca"))
    agent = _agent(request)
    records = agent.lookup_records()
    if "routing_domain" in query:
        agent.catalog.routing_domain(query["routing_domain"])  # 404 for a routing domain this host lacks
        records = [r for r in records if r.routing_domain == query["routing_domain"]]
    if "vsid" in query:
        vsid = _vsid(query["vsid"])
        records = [r for r in records if r.vsid == vsid]
    if "ca" in query:
        ca = _address(query["ca"], "ca")
        records = [r for r in records if r.ca == ca]
    return web.json_response({"lookup_records": [views.lookup_record(r) for r in records]})


async def customer_routes(request: web.Request) -> web.Response:
    """HNV's Get-NetVirtualizationCustomerRoute: each subnet on-link, and the prefixes learned by BGP."""
    query = _query(request, ("routing_domain",))
    agent = _agent(request)
    catalog, prefixes = agent.catalog, agent.remote_prefixes()
    if "routing_domain" in query:
        rds = [catalog.routing_domain(query["routing_domain"])]
    else:
        rds = [rd for _, rd in sorted(catalog.routing_domains.items())]
    return web.json_response({"customer_routes": [r for rd in rds for r in views.customer_routes(rd, prefixes)]})


async def provider_addresses(request: web.Request) -> web.Response:
    """HNV's Get-NetVirtualizationProviderAddress: the underlay addresses this host sends and receives on."""
    config = _agent(request).config
    return web.json_response({"provider_addresses": [
        {"address": str(pa), "next_hop": i == 0} for i, pa in enumerate(config.provider_addresses)]})


async def trace_packet(request: web.Request) -> web.Response:
    """HNV's Select-NetVirtualizationNextHop, with the reason when the packet is dropped."""
    query = _query(request, ("routing_domain", "src", "dst"))
    for required in ("routing_domain", "src", "dst"):
        if required not in query:
            raise ModelError(required, None, "required query parameter")
    src, dst = _address(query["src"], "src"), _address(query["dst"], "dst")
    agent = _agent(request)
    families = {pa.version for pa in agent.config.provider_addresses}
    result = trace(agent.catalog, agent.lookup_records(), agent.remote_prefixes(), query["routing_domain"], src, dst,
                   families)
    return web.json_response(views.trace(result))


async def status(request: web.Request) -> web.Response:
    return web.json_response(_agent(request).status().as_dict())


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(_agent(request).registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# ---------------------------------------------------------------------- the app and its runner


def make_app(agent: Agent, token: str, *, metrics_token: bool = False) -> web.Application:
    """`metrics_token`: /metrics needs the token too (by default Prometheus scrapes it without one)."""
    if not token:
        raise ValueError("api.token: the API needs a bearer token (an empty one would let every local user in)")
    public = frozenset() if metrics_token else frozenset({"/metrics"})
    app = web.Application(middlewares=[errors, _auth(token, public)], client_max_size=MAX_BODY)
    app[AGENT] = agent
    app.on_response_prepare.append(_www_authenticate)
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
    app.router.add_get("/v1/status", status)
    app.router.add_get("/metrics", metrics)
    return app


@dataclass
class ApiServer:
    runner: web.AppRunner
    url: str  # e.g. http://127.0.0.1:8500, with the port actually bound (listen port 0 picks one)

    async def stop(self) -> None:
        await self.runner.cleanup()  # stops listening, then waits for requests in flight


async def start_api(agent: Agent, listen: str = DEFAULT_LISTEN, token: str | None = None, *,
                    metrics_token: bool = False) -> ApiServer | None:
    """Serve the API on `listen` ("127.0.0.1:8500", "[::1]:8500") in the running loop, which must be the
    agent's: handlers call the agent directly. Without a token there is no API (None, logged): an open API
    on 127.0.0.1 would still be open to every local user, and the agent can run from its configuration."""
    if not token:
        log.warning("api.token is not set: the REST API is disabled (the agent runs from its configuration)")
        return None
    app = make_app(agent, token, metrics_token=metrics_token)
    host, port = ApiConfig(listen=listen).host_port
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    log.info("API listening on %s:%d", shown, bound_port)
    return ApiServer(runner, f"http://{shown}:{bound_port}")
