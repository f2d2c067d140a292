"""`nvfabric gateway --config gateway.yaml`: the multi-tenant gateway daemon (docs/gateway.md);
`nvfabric gateway tenants|tenant|trace ...`: its operator client (gateway/ctl.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from nvfabric.gateway import ctl
from nvfabric.gateway.config import ConfigError, GatewayConfig, load


def register(sub: argparse._SubParsersAction) -> None:
    common = ctl.common_options()
    p = ctl.register(sub, common)
    p.description = "Run the gateway (--config FILE), or talk to a running one (tenants, tenant, trace)."
    p.add_argument("--config", help="gateway.yaml (docs/gateway.md#configuration): run the daemon")
    p.add_argument("--log-level", default="info")
    # the daemon is `nvfabric gateway --config FILE`: no subcommand then
    for action in p._subparsers._group_actions:  # type: ignore[union-attr]
        action.required = False
    p.set_defaults(func=main)


async def _run(config: GatewayConfig) -> int:
    from nvfabric.gateway.api import start_api  # noqa: PLC0415 - keep `nvfabric --help` fast
    from nvfabric.gateway.gateway import Gateway  # noqa: PLC0415

    gateway = Gateway(config)
    await gateway.start()
    server = await start_api(gateway, config.api.listen, config.api.token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"nvfabric gateway {config.router_id}: running, {len(config.tenants)} tenants"
          + (f", API {server.url}" if server else ""), flush=True)
    await stop.wait()
    if server is not None:
        await server.stop()
    await gateway.stop()
    return 0


def main(args: argparse.Namespace) -> int:
    if getattr(args, "gateway_command", None):
        return ctl.run(args)
    if not args.config:
        print("nvfabric gateway: --config FILE (run the daemon) or a command: tenants, tenant, trace", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"nvfabric gateway: config error: {exc}", file=sys.stderr)
        return 2
    if config.netns:
        from nvfabric.hostagent.thread import enter_namespace  # noqa: PLC0415

        enter_namespace(config.netns)  # before any socket exists: all are created inside
    try:
        return asyncio.run(_run(config))
    except Exception as exc:  # noqa: BLE001 - a one-line reason for the operator
        print(f"nvfabric gateway: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
