"""The daemon runner: what `nvfabric agent`, `nvfabric gateway`, `nvfabric rr` and `nvfabric bgp speak` do
around their own work, written once.

Logging on stderr (service/logs.py: JSON lines, or text at a terminal), the configuration read before
anything starts (default /etc/nvfabric/NAME.yaml; a bad or missing file: one line naming the path or the
field, exit 2, nothing touched), a fresh event loop, SIGTERM/SIGINT for a clean stop and SIGHUP for a
reload, and an unexpected failure as one line for the operator (exit 1) rather than a traceback.

Under systemd (Type=notify, $NOTIFY_SOCKET) the runner tells the manager READY=1 once the service and its
API are started, RELOADING=1 ... READY=1 around each reload (so `systemctl reload` waits for it), and
STOPPING=1 when asked to stop, each with a STATUS= line that `systemctl status` shows.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from nvfabric.service import logs, version
from nvfabric.service.notify import Notifier
from nvfabric.service.rest import ApiServer

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
LOG_FORMAT = logs.TEXT_FORMAT
CONFIG_DIR = "/etc/nvfabric"  # systemd's ConfigurationDirectory=nvfabric

log = logging.getLogger(__name__)

C = TypeVar("C")


class Service(Protocol):
    """What a daemon runs: the agent, the gateway, the reflector."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def default_config(name: str) -> str:
    """Where a daemon reads its configuration when not given --config: /etc/nvfabric/NAME.yaml."""
    return f"{CONFIG_DIR}/{name}.yaml"


def add_options(parser: argparse.ArgumentParser, name: str, doc: str) -> None:
    """The options every daemon takes: --config (default /etc/nvfabric/NAME.yaml), --log-level,
    --log-format, --version."""
    parser.add_argument("--config", metavar="FILE",
                        help=f"{doc} (default {default_config(name)})")
    parser.add_argument("--log-level", default="info", help="stderr log level (default info)")
    parser.add_argument("--log-format", choices=logs.FORMATS, default="auto",
                        help="stderr log lines: json, text, or auto (default: text at a terminal, JSON otherwise)")
    parser.add_argument("--version", action="version", version=f"nvfabric {version()}")


def setup_logging(level: str, formatter: logging.Formatter | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter or logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def run(command: str, path: str, load: Callable[[str], C], config_error: type[Exception],
        serve: Callable[[C], Awaitable[int]], *, log_level: str = "info", log_format: str = "auto",
        formatter: logging.Formatter | None = None, before_loop: Callable[[C], None] | None = None) -> int:
    """Set up logging, read `path` with `load` (a `config_error` is printed and exits 2), call `before_loop`
    (entering a network namespace must happen before any socket or thread exists), then run
    `serve(config)` in a fresh event loop and exit with what it returns. `command` prefixes every message
    ("nvfabric agent"). `formatter` overrides `log_format` (auto, json, text: service/logs.py)."""
    setup_logging(log_level, formatter or logs.formatter(log_format))
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


async def until_stopped(reload: Callable[[], Awaitable[object]] | None = None,
                        notifier: Notifier | None = None, ready: str | None = None) -> None:
    """Return on SIGTERM or SIGINT; meanwhile each SIGHUP runs `reload` (when given) in a task of its own,
    so a slow reload never delays a stop. Call it from the daemon's loop, after its start. With a
    `notifier`, each reload is framed by RELOADING=1 and READY=1 (STATUS: what `reload` returns when it is
    a string, else "running"), and a stop is announced with STOPPING=1; READY=1 (STATUS `ready`) is sent
    once the handlers are in place, so a SIGHUP right after it reloads rather than kills."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[object]] = set()
    one_at_a_time = asyncio.Lock()  # two quick SIGHUPs: the second re-reads after the first is done

    async def reloading() -> None:
        assert reload is not None
        async with one_at_a_time:
            if notifier is not None:
                notifier.reloading("reloading the configuration")
            try:
                outcome = await reload()
            except Exception as exc:  # noqa: BLE001 - a failed reload leaves the daemon running, said once
                log.exception("reload failed, the running configuration stays", extra={"event": "reload-failed"})
                outcome = f"running; reload failed: {type(exc).__name__}: {exc}"
            if notifier is not None:
                notifier.ready(outcome if isinstance(outcome, str) else "running")

    def hangup() -> None:
        task = loop.create_task(reloading())
        reloads.add(task)  # a reference until done: the loop keeps only weak ones
        task.add_done_callback(reloads.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, hangup)
    if notifier is not None and ready is not None:
        notifier.ready(ready)
    try:
        await stop.wait()
        if notifier is not None:
            notifier.stopping("stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def serve(service: Service, start_api: Callable[[], Awaitable[ApiServer | None]],
                started: Callable[[ApiServer | None], str | None],
                reload: Callable[[], Awaitable[object]] | None = None, *, notifier: Notifier | None = None) -> int:
    """Start `service`, then its API (`start_api`: None when it has none), say so (`started`, which may
    return the STATUS line for the service manager), tell the manager READY=1, run until SIGTERM/SIGINT
    (SIGHUP: `reload`, which may return the STATUS line after it), then stop the API before the service:
    requests in flight finish against a running service. The service is stopped also when its API fails
    to start."""
    notifier = Notifier() if notifier is None else notifier
    await service.start()
    try:
        api = await start_api()
        try:
            await until_stopped(reload, notifier, started(api) or "running")
        finally:
            if api is not None:
                await api.stop()
    finally:
        await service.stop()
    return EXIT_OK
