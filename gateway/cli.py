"""`nvfabric gateway --config gateway.yaml`: the multi-tenant gateway daemon (docs/gateway.md);
`nvfabric gateway status|tenants|tenant|trace ...`: its operator client (gateway/ctl.py)."""

from __future__ import annotations

import argparse
import sys

from nvfabric.gateway import ctl
from nvfabric.gateway.config import ConfigError, GatewayConfig, load
from nvfabric.service import daemon


def register(sub: argparse._SubParsersAction) -> None:
    common = ctl.common_options()
    p = ctl.register(sub, common)
    p.description = "Run the gateway (--config FILE), or talk to a running one (status, tenants, tenant, trace)."
    p.add_argument("--config", help="gateway.yaml (docs/gateway.md#configuration): run the daemon")
    p.add_argument("--log-level", default="info")
    # the daemon is `nvfabric gateway --config FILE`: no subcommand then
    for action in p._subparsers._group_actions:  # type: ignore[union-attr]
        action.required = False
    p.set_defaults(func=main)


async def serve(config: GatewayConfig) -> int:
    from nvfabric.gateway.api import start_api  # noqa: PLC0415 - keep `nvfabric --help` fast
    from nvfabric.gateway.gateway import Gateway  # noqa: PLC0415

    gateway = Gateway(config)
    return await daemon.serve(gateway, lambda: start_api(gateway, config.api.listen, config.api.token),
                              lambda api: print(f"nvfabric gateway {config.router_id}: running, "
                                                f"{len(gateway.tenants)} tenants" + (f", API {api.url}" if api else ""),
                                                flush=True))


def _enter_namespace(config: GatewayConfig) -> None:
    if config.netns:
        from nvfabric.vnet.kernel.netns import enter_namespace  # noqa: PLC0415

        enter_namespace(config.netns)  # before any socket exists: all are created inside


def main(args: argparse.Namespace) -> int:
    if getattr(args, "gateway_command", None):
        return ctl.run(args)
    if not args.config:
        print("nvfabric gateway: --config FILE (run the daemon) or a command: status, tenants, tenant, trace",
              file=sys.stderr)
        return daemon.EXIT_CONFIG
    return daemon.run("nvfabric gateway", args.config, load, ConfigError, serve, log_level=args.log_level,
                      before_loop=_enter_namespace)
