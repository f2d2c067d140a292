"""service/: the daemon runner (exit statuses, signals) and the app factory's refusals, as a daemon sees them."""

from __future__ import annotations

import asyncio
import os
import signal

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from nvfabric.service import daemon
from nvfabric.service.rest import ApiError, application


class BadFile(ValueError):
    pass


def test_a_bad_configuration_exits_2_with_one_line_and_nothing_runs(capsys):
    def load(path: str) -> object:
        raise BadFile(f"{path}: asn: is required")

    async def serve(config: object) -> int:
        raise AssertionError("must not run")

    assert daemon.run("nvfabric test", "x.yaml", load, BadFile, serve) == daemon.EXIT_CONFIG
    assert capsys.readouterr().err == "nvfabric test: config error: x.yaml: asn: is required\n"


def test_a_failure_exits_1_with_one_line(capsys):
    entered: list[object] = []

    async def serve(config: object) -> int:
        raise OSError("address already in use")

    status = daemon.run("nvfabric test", "x.yaml", lambda path: {"path": path}, BadFile, serve,
                        before_loop=entered.append)
    assert status == daemon.EXIT_FAILED and entered == [{"path": "x.yaml"}]
    assert capsys.readouterr().err == "nvfabric test: OSError: address already in use\n"


async def test_sighup_reloads_and_sigterm_stops():
    reloads = asyncio.Queue[str]()

    async def reload() -> None:
        await reloads.put("reloaded")

    default = signal.getsignal(signal.SIGHUP)
    waiting = asyncio.ensure_future(daemon.until_stopped(reload))
    while signal.getsignal(signal.SIGHUP) is default:  # yield until the task has installed its handlers
        await asyncio.sleep(0)
    os.kill(os.getpid(), signal.SIGHUP)
    assert await asyncio.wait_for(reloads.get(), 5) == "reloaded"
    assert not waiting.done()
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(waiting, 5)


class Busy(Exception):
    pass


def busy_refusal(exc: Exception) -> ApiError | None:
    return ApiError(503, "busy", str(exc)) if isinstance(exc, Busy) else None


async def test_refusals_answer_with_the_shared_body_and_the_rest_is_a_500():
    async def busy(request: web.Request) -> web.Response:
        raise Busy("try later")

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app = application("t", refusals=(busy_refusal,))
    app.router.add_get("/busy", busy)
    app.router.add_get("/broken", broken)
    async with TestClient(TestServer(app), headers={"Authorization": "Bearer t"}) as http:
        answer = await http.get("/busy")
        assert answer.status == 503 and await answer.json() == {"error": "busy", "problem": "try later"}
        answer = await http.get("/broken")
        assert answer.status == 500 and (await answer.json())["error"] == "internal"
