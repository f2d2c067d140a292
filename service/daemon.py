"""The daemon runner: what `nvfabric agent`, `nvfabric gateway`, `nvfabric rr` and `nvfabric bgp speak` do
around their own work, written once.

Logging on stderr, the configuration read before anything starts (a bad file: one line naming the field,
exit 2, nothing touched), a fresh event loop, SIGTERM/SIGINT for a clean stop and SIGHUP for a reload,
and an unexpected failure as one line for the operator (exit 1) rather than a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from nvfabric.service.rest import ApiServer

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

C = TypeVar("C")


class Service(Protocol):
    """What a daemon runs: the agent, the gateway, the reflector."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def setup_logging(level: str, formatter: logging.Formatter | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter or logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def run(command: str, path: str, load: Callable[[str], C], config_error: type[Exception],
        serve: Callable[[C], Awaitable[int]], *, log_level: str = "info", formatter: logging.Formatter | None = None,
        before_loop: Callable[[C], None] | None = None) -> int:
    """Set up logging, read `path` with `load` (a `config_error` is printed and exits 2), call `before_loop`
    (entering a network namespace must happen before any socket or thread exists), then run
    `serve(config)` in a fresh event loop and exit with what it returns. `command` prefixes every message
    ("nvfabric agent")."""
    setup_logging(log_level, formatter)
    try:
        config = load(path)
    except config_error as exc:
        print(f"{command}: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if before_loop is not None:
            before_loop(config)
        return asyncio.run(_serve(serve, config))
    except Exception as exc:  # noqa: BLE001 - a clear one-line reason, not a traceback, for the operator
        print(f"{command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def _serve(serve: Callable[[C], Awaitable[int]], config: C) -> int:
    return await serve(config)


async def until_stopped(reload: Callable[[], Awaitable[object]] | None = None) -> None:
    """Return on SIGTERM or SIGINT; meanwhile each SIGHUP runs `reload` (when given) in a task of its own,
    so a slow reload never delays a stop. Call it from the daemon's loop, after its start."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[object]] = set()

    def hangup() -> None:
        assert reload is not None
        task = loop.create_task(reload())  # type: ignore[arg-type]
        reloads.add(task)  # a reference until done: the loop keeps only weak ones
        task.add_done_callback(reloads.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, hangup)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def serve(service: Service, start_api: Callable[[], Awaitable[ApiServer | None]],
                started: Callable[[ApiServer | None], None],
                reload: Callable[[], Awaitable[object]] | None = None) -> int:
    """Start `service`, then its API (`start_api`: None when it has none), say so (`started`), run until
    SIGTERM/SIGINT (SIGHUP: `reload`), then stop the API before the service: requests in flight finish
    against a running service. The service is stopped also when its API fails to start."""
    await service.start()
    try:
        api = await start_api()
        try:
            started(api)
            await until_stopped(reload)
        finally:
            if api is not None:
                await api.stop()
    finally:
        await service.stop()
    return EXIT_OK
