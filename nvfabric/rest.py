"""The REST plumbing every nvfabric daemon shares (host agent: hostagent/api.py, gateway: gateway/api.py).

aiohttp, JSON, a bearer token. What is decided here is the same for every daemon, so an operator meets the
same answers everywhere: JSON bodies only (415 otherwise), malformed JSON and duplicate keys 400, a
refused token 401, aiohttp's own 404/405/413 as JSON, vnet's typed errors as 400/404/409, and any
unexpected exception a logged 500 whose body names the log entry and nothing else (BaGPipe answered bad
requests with HTTP 500: shared/notes/anchors.md). A daemon adds its own errors by raising ApiError.
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

from nvfabric.vnet.catalog import NotFound
from nvfabric.vnet.errors import ConflictError, ModelError

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # a routing domain, port or tenant is a few hundred bytes; 1 MiB bounds memory
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A refusal with its status, kind (`error`) and sentence (`problem`); extra keys go into the body."""

    def __init__(self, status: int, error: str, problem: str, **extra: Any) -> None:
        super().__init__(problem)
        self.status, self.body = status, {"error": error, "problem": problem, **extra}


def _json_error(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(dict(body), status=status, headers=headers)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The outermost middleware: typed errors -> their 4xx; aiohttp's own (404, 405, 413) -> JSON;
    anything else -> a logged 500."""
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
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = exc.headers.get("Allow")
        body: dict[str, Any] = {"error": exc.reason.lower().replace(" ", "-"),
                                "problem": f"{request.method} {request.path}: {exc.reason}"}
        if allow is not None:
            body["allowed"] = sorted(m for m in allow.split(",") if m)
        return _json_error(exc.status, body, {"Allow": allow} if allow is not None else None)
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception("API %s %s failed (incident %s)", request.method, request.path, incident)
        return _json_error(500, {"error": "internal", "problem": f"internal error, logged as incident {incident}",
                                 "incident": incident})


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


def application(token: str, public: frozenset[str] = frozenset(), *inner: Middleware) -> web.Application:
    """An app with the shared middlewares (errors outermost, then the token, then the daemon's `inner`)."""
    app = web.Application(middlewares=[errors, auth(token, public), *inner], client_max_size=MAX_BODY)
    app.on_response_prepare.append(www_authenticate)
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
            raise ModelError(key, request.query[key], f"unknown query parameter (known: {', '.join(allowed)})")
        if len(request.query.getall(key)) > 1:
            raise ModelError(key, request.query.getall(key), "given more than once")
    return {k: request.query[k] for k in allowed if k in request.query}


def put_response(request: web.Request, created: bool, body: dict[str, Any]) -> web.Response:
    if created:
        return web.json_response(body, status=201, headers={"Location": request.path})
    return web.json_response(body, status=200)


@dataclass
class ApiServer:
    runner: web.AppRunner
    url: str  # e.g. http://127.0.0.1:8500, with the port actually bound (listen port 0 picks one)

    async def stop(self) -> None:
        await self.runner.cleanup()  # stops listening, then waits for requests in flight


def split_listen(listen: str) -> tuple[str, int]:
    """"127.0.0.1:8500" or "[::1]:8500" -> (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


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
