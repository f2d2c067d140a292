"""`nvfabric rr --config FILE` runs the route reflector; `nvfabric rr status --api URL` shows its peers.

Logs are JSON lines on stderr, one per event, with the peer when there is one:
    {"ts": "...", "level": "INFO", "event": "established", "peer": "198.51.100.11", "msg": "..."}
SIGHUP (or POST /v1/reload) re-reads the file; a bad file is refused, logged, and the running
configuration stays. SIGTERM/SIGINT close every session with Cease / Administrative Shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from aiohttp import web

from nvfabric.bgp.config import ConfigError
from nvfabric.bgp.reflector import api
from nvfabric.bgp.reflector import config as rr_config
from nvfabric.bgp.reflector.daemon import Reflector, ReloadResult

log = logging.getLogger("nvfabric.bgp.reflector")


def register(subparsers: argparse._SubParsersAction) -> None:
    rr = subparsers.add_parser("rr", help="BGP route reflector (RFC 4456) for l2vpn/evpn and unicast")
    rr.add_argument("--config", help="reflector configuration (see docs/rr.md)")
    rr.add_argument("--log-level", default="INFO", help="stderr log level (default INFO)")
    rr.set_defaults(func=_run)
    sub = rr.add_subparsers(dest="rr_command", metavar="RR_COMMAND")
    status = sub.add_parser("status", help="print the reflector's neighbours as a table")
    status.add_argument("--api", default="http://127.0.0.1:8179", help="the reflector's API base URL")
    status.add_argument("--json", action="store_true", help="print the raw JSON instead of a table")
    status.set_defaults(func=_status)


# bgp/speaker.py and bgp/session.py say "peer ADDRESS[ (dynamic PREFIX)]: what happened".
_SPEAKER_PEER = re.compile(r"^peer (\S+?)(?: \([^)]*\))?: ")


class JsonLines(logging.Formatter):
    """One JSON object per log record: time, level, logger, message, and the `extra` event fields."""

    FIELDS = ("event", "peer", "family")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        for name in self.FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        message = record.getMessage()
        found = _SPEAKER_PEER.match(message) if "peer" not in out else None
        if found:
            out["peer"] = found.group(1)
        out["msg"] = message
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _run(args: argparse.Namespace) -> int:
    if not args.config:
        print("nvfabric rr: --config FILE is required", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    try:
        cfg = rr_config.load(args.config)
    except ConfigError as err:
        print(f"nvfabric rr: {args.config}: {err}", file=sys.stderr)
        return 2
    return asyncio.run(serve(cfg, args.config))


async def serve(cfg: rr_config.ReflectorConfig, path: str) -> int:
    reflector = Reflector(cfg)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def reload() -> ReloadResult:
        try:
            return await reflector.reload(rr_config.load(path))
        except ConfigError as err:
            log.error("reload of %s refused, keeping the running configuration: %s", path, err,
                      extra={"event": "reload-refused"})
            raise

    async def reload_quietly() -> None:
        try:
            await reload()
        except ConfigError:
            pass

    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload_quietly()))
    await reflector.start()
    runner = None
    if cfg.api is not None:
        runner = web.AppRunner(api.build_app(reflector, reload), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, cfg.api.host, cfg.api.port).start()
    log.info("reflector %s (cluster %s) listening on %s port %d, API %s", cfg.router_id, cfg.cluster_id,
             cfg.listen.address, reflector.listen_port or 0,
             f"{cfg.api.host}:{cfg.api.port}" if cfg.api else "off", extra={"event": "started"})
    await stop.wait()
    if runner is not None:
        await runner.cleanup()
    await reflector.stop()
    return 0


def _status(args: argparse.Namespace) -> int:
    url = args.api.rstrip("/") + "/v1/neighbors"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            data = json.load(response)
    except (urllib.error.URLError, OSError) as err:
        print(f"nvfabric rr status: {url}: {getattr(err, 'reason', err)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"route reflector {args.api}")
    for column in ("neighbour", "state", "client", "router id", "routes in", "updates in", "updates out",
                   "route targets"):
        table.add_column(column)
    for n in data:
        rts = n.get("route_targets")
        table.add_row(n["address"], n["state"], "yes" if n["client"] else "no", n.get("router_id") or "-",
                      str(n["routes_received"]), str(n["updates_in"]), str(n["updates_out"]),
                      ", ".join(rts) if rts is not None else "all")
    Console(width=160, emoji=False).print(table)  # ':b:' in an IPv6 address is not an emoji
    return 0
