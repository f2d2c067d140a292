"""The REST plumbing every nvfabric daemon shares: host agent (hostagent/api.py), gateway (gateway/api.py),
route reflector (bgp/reflector/api.py).

aiohttp, JSON, a bearer token. What is decided here is the same for every daemon, so an operator meets the
same answers everywhere: JSON bodies only (415 otherwise), malformed JSON and duplicate keys 400, a
refused token 401, aiohttp's own 404/405/413 as JSON, and any unexpected exception a logged 500 whose body
names the log entry and nothing else (a bad request answered with 500 invites blind retries). A handler
refuses by raising ApiError; a daemon's typed errors (vnet's ModelError as 400, say) become ApiErrors
through the `refusals` it gives `application`: this module knows no daemon's types.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from nvfabric.service.config import split_listen

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # a routing domain, port or tenant is a few hundred bytes; 1 MiB bounds memory
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
# served without the token: a load balancer's or orchestrator's probe holds none, and the answers tell only
# "ok" or why not ready (service/health.py)
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
WRITES = web.AppKey("writes", asyncio.Lock)  # one PUT or DELETE at a time: service/conditional.py


class ApiError(Exception):
    """A refusal with its status, kind (`error`) and sentence (`problem`); extra keys go into the body."""

    def __init__(self, status: int, error: str, problem: str, **extra: Any) -> None:
        super().__init__(problem)
        self.status, self.body = status, {"error": error, "problem": problem, **extra}

    @classmethod
    def invalid(cls, field: str, value: Any, problem: str) -> ApiError:
        """400 for one bad value, in the body vnet's ModelError has (field, problem, value)."""
        return cls(400, "invalid", problem, field=field, value=repr(value))


# A daemon's translation of its own typed errors: the ApiError an exception means, None when not its own.
Refusal = Callable[[Exception], "ApiError | None"]


def _json_error(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(dict(body), status=status, headers=headers)


def error_middleware(refusals: Sequence[Refusal] = ()) -> Middleware:
    """The outermost middleware: ApiError and the daemon's `refusals` -> their 4xx/5xx; aiohttp's own (404,
    405, 413) -> JSON; anything else -> a logged 500."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return _json_error(exc.status, exc.body)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            allow = exc.headers.get("Allow")
            body: dict[str, Any] = {"error": exc.reason.lower().replace(" ", "-"),
                                    "problem": f"{request.method} {request.path}: {exc.reason}"}
            if allow is not None:
                body["allowed"] = sorted(m for m in allow.split(",") if m)
            return _json_error(exc.status, body, {"Allow": allow} if allow is not None else None)
        except Exception as exc:
            for refusal in refusals:
                refused = refusal(exc)
                if refused is not None:
                    return _json_error(refused.status, refused.body)
            incident = uuid.uuid4().hex[:12]
            log.exception("API %s %s failed (incident %s)", request.method, request.path, incident)
            return _json_error(500, {"error": "internal", "problem": f"internal error, logged as incident {incident}",
                                     "incident": incident})

    return errors


def auth(token: str, public: frozenset[str] = frozenset()) -> Middleware:
    """Every path but `public` needs `Authorization: Bearer <token>`."""
    if not token:
        raise ValueError("api.token: the API needs a bearer token (an empty one would let every local user in)")
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in public:
            return await handler(request)
        given = request.headers.get("Authorization")
        if given is None:
            raise ApiError(401, "unauthorized", "missing bearer token (header Authorization: Bearer <token>)")
        # constant time: the comparison must not tell how many leading bytes were right
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
            raise ApiError(401, "unauthorized", "wrong bearer token")
        return await handler(request)

    return check


async def www_authenticate(request: web.Request, response: web.StreamResponse) -> None:
    """An on_response_prepare hook: every 401 says which scheme it wants (RFC 6750)."""
    if response.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="nvfabric"'


def application(token: str, *, refusals: Sequence[Refusal] = (), metrics_token: bool = False) -> web.Application:
    """The app every daemon serves: errors outermost (with the daemon's `refusals`), then the token, which
    every path needs but the health probes and /metrics (Prometheus scrapes it without one, unless
    `metrics_token`)."""
    public = HEALTH_PATHS if metrics_token else HEALTH_PATHS | {"/metrics"}
    app = web.Application(middlewares=[error_middleware(refusals), auth(token, public)], client_max_size=MAX_BODY)
    app.on_response_prepare.append(www_authenticate)
    app[WRITES] = asyncio.Lock()
    return app


async def json_body(request: web.Request) -> Any:
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


def query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each at most once; an unknown one is refused (a misspelt filter silently
    ignored would answer a different question)."""
    for key in request.query:
        if key not in allowed:
            raise ApiError.invalid(key, request.query[key], f"unknown query parameter (known: {', '.join(allowed)})")
        if len(request.query.getall(key)) > 1:
            raise ApiError.invalid(key, request.query.getall(key), "given more than once")
    return {k: request.query[k] for k in allowed if k in request.query}


@dataclass
class ApiServer:
    runner: web.AppRunner
    url: str  # e.g. http://127.0.0.1:8500, with the port actually bound (listen port 0 picks one)

    async def stop(self) -> None:
        await self.runner.cleanup()  # stops listening, then waits for requests in flight


async def serve_if_token(make_app: Callable[[str], web.Application], listen: str, token: str | None,
                         daemon: str) -> ApiServer | None:
    """Serve `make_app(token)` on `listen`; without a token there is no API (None, logged): an open API on
    127.0.0.1 would still be open to every local user, and every daemon can run from its configuration."""
    if not token:
        log.warning("api.token is not set: the REST API is disabled (the %s runs from its configuration)", daemon)
        return None
    return await serve(make_app(token), listen)


async def serve(app: web.Application, listen: str) -> ApiServer:
    """Serve `app` on `listen` in the running loop; the runner is cleaned up if binding fails."""
    host, port = split_listen(listen)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    log.info("API listening on %s:%d", shown, bound_port)
    return ApiServer(runner, f"http://{shown}:{bound_port}")
