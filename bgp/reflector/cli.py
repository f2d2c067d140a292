"""`nvfabric rr --config FILE` runs the route reflector; `nvfabric rr status --api URL` shows its peers.

Run by service/daemon.py like the agent and the gateway. Logs are JSON lines on stderr, one per event,
with the peer when there is one:
    {"ts": "...", "level": "INFO", "event": "established", "peer": "198.51.100.11", "msg": "..."}
SIGHUP (or POST /v1/reload) re-reads the file; a bad file is refused, logged, and the running
configuration stays. SIGTERM/SIGINT close every session with Cease / Administrative Shutdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from typing import Any

from nvfabric.bgp.config import ConfigError
from nvfabric.bgp.reflector import api
from nvfabric.bgp.reflector import config as rr_config
from nvfabric.bgp.reflector.daemon import Reflector, ReloadResult
from nvfabric.service import ctl, daemon
from nvfabric.service.rest import ApiServer, serve_if_token

REFLECTOR = ctl.Daemon("reflector", "nvfabric rr", "nvfabric-rr", ("NVFABRIC_RR_API",), ("NVFABRIC_RR_TOKEN",),
                       f"http://{rr_config.DEFAULT_API_LISTEN}")

log = logging.getLogger("nvfabric.bgp.reflector")


def register(subparsers: argparse._SubParsersAction) -> None:
    rr = subparsers.add_parser("rr", help="BGP route reflector (RFC 4456) for l2vpn/evpn and unicast")
    rr.add_argument("--config", help="reflector configuration (see docs/rr.md)")
    rr.add_argument("--log-level", default="INFO", help="stderr log level (default INFO)")
    rr.set_defaults(func=_run)
    sub = rr.add_subparsers(dest="rr_command", metavar="RR_COMMAND")
    status = ctl.parser(sub, REFLECTOR, "status", help="print the reflector's neighbors as a table (-o json|yaml: "
                        "the API's body)", parents=[ctl.options(REFLECTOR, defaults=True)])
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
        return daemon.EXIT_CONFIG
    return daemon.run("nvfabric rr", args.config, rr_config.load, ConfigError, lambda cfg: serve(cfg, args.config),
                      log_level=args.log_level, formatter=JsonLines())


async def serve(cfg: rr_config.ReflectorConfig, path: str) -> int:
    reflector = Reflector(cfg)

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

    def started(server: ApiServer | None) -> None:
        log.info("reflector %s (cluster %s) listening on %s port %d, API %s", cfg.router_id, cfg.cluster_id,
                 cfg.listen.address, reflector.listen_port or 0, server.url if server else "off",
                 extra={"event": "started"})

    async def start_api() -> ApiServer | None:
        return await serve_if_token(lambda token: api.build_app(reflector, token, reload), cfg.api.listen,
                                    cfg.api.token, "reflector")

    return await daemon.serve(reflector, start_api, started, reload_quietly)


def _status(args: argparse.Namespace) -> int:
    return ctl.run(REFLECTOR, "nvfabric rr status", _neighbors, args)


def _neighbors(client: ctl.Client, args: argparse.Namespace) -> None:
    data = client.every_page("/v1/neighbors", "neighbors")
    ctl.show(args, data, lambda: ctl.table(
        f"route reflector {client.api}",
        ["neighbor", "state", "bfd", "client", "router id", "routes in", "updates in", "updates out",
         "route targets"],
        [[n["address"], n["state"], n.get("bfd") or "-", "yes" if n["client"] else "no", n.get("router_id") or "-",
          str(n["routes_received"]), str(n["updates_in"]), str(n["updates_out"]),
          ", ".join(n["route_targets"]) if n.get("route_targets") is not None else "all"] for n in data["neighbors"]]))
