"""`nvfabric rr [--config FILE]` runs the route reflector (default /etc/nvfabric/rr.yaml);
`nvfabric rr status --api URL` shows its peers.

Run by service/daemon.py like the agent and the gateway. Logs are JSON lines on stderr (service/logs.py;
text at a terminal), one per event, with the peer when there is one:
    {"ts": "...", "level": "INFO", "event": "established", "peer": "198.51.100.11", "msg": "..."}
SIGHUP (or POST /v1/reload) re-reads the file; a bad file is refused, logged, and the running
configuration stays. SIGTERM/SIGINT close every session with Cease / Administrative Shutdown.
"""

from __future__ import annotations

import argparse
import logging

from nvfabric.bgp.config import ConfigError
from nvfabric.bgp.reflector import api
from nvfabric.bgp.reflector import config as rr_config
from nvfabric.bgp.reflector.daemon import Reflector, ReloadResult
from nvfabric.service import ctl, daemon
from nvfabric.service.rest import ApiServer, serve_if_token

REFLECTOR = ctl.Daemon("reflector", "nvfabric rr", "NVFABRIC_RR_API", f"http://{rr_config.DEFAULT_API_LISTEN}")

log = logging.getLogger("nvfabric.bgp.reflector")


def register(subparsers: argparse._SubParsersAction) -> None:
    rr = subparsers.add_parser("rr", help="BGP route reflector (RFC 4456) for l2vpn/evpn and unicast")
    daemon.add_options(rr, "rr", "reflector configuration (see docs/rr.md)")
    rr.set_defaults(func=_run)
    sub = rr.add_subparsers(dest="rr_command", metavar="RR_COMMAND")
    status = sub.add_parser("status", help="print the reflector's neighbors as a table (-o json: the API's JSON)",
                            parents=[ctl.options(REFLECTOR, defaults=True)])
    status.set_defaults(func=_status)


def _run(args: argparse.Namespace) -> int:
    path = args.config or daemon.default_config("rr")
    return daemon.run("nvfabric rr", path, rr_config.load, ConfigError, lambda cfg: serve(cfg, path),
                      log_level=args.log_level, log_format=args.log_format)


async def serve(cfg: rr_config.ReflectorConfig, path: str) -> int:
    reflector = Reflector(cfg)

    async def reload() -> ReloadResult:
        try:
            return await reflector.reload(rr_config.load(path))
        except ConfigError as err:
            log.error("reload of %s refused, keeping the running configuration: %s", path, err,
                      extra={"event": "reload-refused"})
            raise

    async def reload_quietly() -> str:
        try:
            result = await reload()
        except ConfigError as err:
            return f"running; reload refused: {err}"
        return f"running; reloaded: {len(result.added)} neighbors added, {len(result.removed)} removed"

    def started(server: ApiServer | None) -> str:
        log.info("reflector %s (cluster %s) listening on %s port %d, API %s", cfg.router_id, cfg.cluster_id,
                 cfg.listen.address, reflector.listen_port or 0, server.url if server else "off",
                 extra={"event": "started"})
        return f"reflector {cfg.router_id}: listening on port {reflector.listen_port or 0}"

    async def start_api() -> ApiServer | None:
        return await serve_if_token(lambda token: api.build_app(reflector, token, reload), cfg.api.listen,
                                    cfg.api.token, "reflector")

    return await daemon.serve(reflector, start_api, started, reload_quietly)


def _status(args: argparse.Namespace) -> int:
    return ctl.run(REFLECTOR, "nvfabric rr status", _neighbors, args)


def _neighbors(client: ctl.Client, args: argparse.Namespace) -> None:
    _, data = client.request("GET", "/v1/neighbors")
    ctl.show(args, data, lambda: ctl.table(
        f"route reflector {client.api}",
        ["neighbor", "state", "bfd", "client", "router id", "routes in", "updates in", "updates out",
         "route targets"],
        [[n["address"], n["state"], n.get("bfd") or "-", "yes" if n["client"] else "no", n.get("router_id") or "-",
          str(n["routes_received"]), str(n["updates_in"]), str(n["updates_out"]),
          ", ".join(n["route_targets"]) if n.get("route_targets") is not None else "all"] for n in data]))
