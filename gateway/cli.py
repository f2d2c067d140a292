"""`nvfabric gateway [--config FILE]`: the multi-tenant gateway daemon (docs/gateway.md), configured by
/etc/nvfabric/gateway.yaml unless --config says otherwise;
`nvfabric gateway status|tenants|tenant|trace ...`: its operator client (gateway/ctl.py).

SIGHUP re-reads the file: its tenants are applied as a difference (gateway/reload.py); a bad file, or a
change that needs a restart, is refused and logged, and the running configuration stays."""

from __future__ import annotations

import argparse
import logging

from nvfabric.gateway import ctl
from nvfabric.gateway.config import ConfigError, GatewayConfig, load
from nvfabric.service import daemon
from nvfabric.vnet.errors import KernelError, ModelError

log = logging.getLogger("nvfabric.gateway")


def register(sub: argparse._SubParsersAction) -> None:
    common = ctl.common_options()
    p = ctl.register(sub, common)
    p.description = ("Run the gateway daemon (no command: --config FILE, default "
                     f"{daemon.default_config('gateway')}), or talk to a running one (status, tenants, tenant, "
                     "trace).")
    daemon.add_options(p, "gateway", "gateway.yaml (docs/gateway.md#configuration): run the daemon")
    # the daemon is `nvfabric gateway [--config FILE]`: no subcommand then
    for action in p._subparsers._group_actions:  # type: ignore[union-attr]
        action.required = False
    p.set_defaults(func=main)


async def serve(config: GatewayConfig, path: str | None = None) -> int:
    from nvfabric.gateway.api import start_api  # noqa: PLC0415 - keep `nvfabric --help` fast
    from nvfabric.gateway.gateway import Gateway  # noqa: PLC0415

    gateway = Gateway(config)

    async def reload() -> str:
        from nvfabric.gateway.reload import plan  # noqa: PLC0415
        from nvfabric.gateway.state import StateSaveError  # noqa: PLC0415

        assert path is not None
        try:
            change = plan(gateway.config, load(path))
            await gateway.reconfigure(change)
        except (ConfigError, ModelError) as err:
            log.error("reload of %s refused, the running configuration stays: %s", path, err,
                      extra={"event": "reload-refused"})
            return f"running; reload refused: {err}"
        except (KernelError, StateSaveError) as err:  # that tenant was put back; those before it stand
            log.error("reload of %s stopped at a tenant the gateway could not apply (the same reload again "
                      "applies what is left): %s", path, err, extra={"event": "reload-failed"})
            return f"running; reload partly applied: {err}"
        log.info("reloaded %s: %s", path, change.summary, extra={"event": "reloaded"})
        return f"running; reloaded: {change.summary}"

    def started(api: object) -> str:
        status = f"nvfabric gateway {config.router_id}: running, {len(gateway.tenants)} tenants"
        log.info(status + (f", API {api.url}" if api else ""), extra={"event": "started"})  # type: ignore[attr-defined]
        return status

    return await daemon.serve(gateway, lambda: start_api(gateway, config.api.listen, config.api.token), started,
                              reload if path else None)


def _enter_namespace(config: GatewayConfig) -> None:
    if config.netns:
        from nvfabric.vnet.kernel.netns import enter_namespace  # noqa: PLC0415

        enter_namespace(config.netns)  # before any socket exists: all are created inside


def main(args: argparse.Namespace) -> int:
    if getattr(args, "gateway_command", None):
        return ctl.run(args)
    path = args.config or daemon.default_config("gateway")
    return daemon.run("nvfabric gateway", path, load, ConfigError, lambda config: serve(config, path),
                      log_level=args.log_level, log_format=args.log_format, before_loop=_enter_namespace)
