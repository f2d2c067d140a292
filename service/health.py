"""Health probes, the same on every daemon: `GET /healthz` (the process answers) and `GET /readyz` (it does
its job now, or why not), for systemd watchers, load balancers and orchestrators.

Both are served without the token (service/rest.py HEALTH_PATHS): a probe holds no secret, and all they
reveal is "ok", "ready" or the reasons a daemon is not ready yet (waiting for End-of-RIB, the role not
decided), which /metrics already shows to anyone who can reach the port.

What "ready" means is each daemon's own decision, a function returning the reasons it is not (none: ready).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiohttp import web

from nvfabric.service.openapi import STRING, Operation, array, obj

Readiness = Callable[[web.Request], Sequence[str]]  # why the daemon is not ready; empty when it is

OK = obj(["status"], status={"type": "string", "enum": ["ok"]})
READY = obj(["status"], status={"type": "string", "enum": ["ready"]})
NOT_READY = obj(["status", "reasons"], status={"type": "string", "enum": ["not-ready"]}, reasons=array(STRING))
_NO_STORE = {"Cache-Control": "no-store"}  # a probe's answer is about now


def operations(readiness: Readiness) -> list[Operation]:
    """GET /healthz and GET /readyz, for the daemon's list of operations."""

    async def healthz(request: web.Request) -> web.Response:
        # answered by the event loop itself: a loop stuck in a callback does not answer at all
        return web.json_response({"status": "ok"}, headers=_NO_STORE)

    async def readyz(request: web.Request) -> web.Response:
        reasons = list(readiness(request))
        if reasons:
            return web.json_response({"status": "not-ready", "reasons": reasons}, status=503, headers=_NO_STORE)
        return web.json_response({"status": "ready"}, headers=_NO_STORE)

    return [
        Operation("GET", "/healthz", healthz, "the daemon's event loop answers (no token)", {200: OK}, public=True),
        Operation("GET", "/readyz", readyz, "ready, or why not (no token)", {200: READY, 503: NOT_READY},
                  public=True, describe={200: "ready", 503: "not ready: the reasons are in the body"}),
    ]
