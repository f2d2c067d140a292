"""`nvfabric agent [--config FILE]`: the host agent daemon (docs/agent.md), configured by
/etc/nvfabric/agent.yaml unless --config says otherwise; service/daemon.py runs it.

SIGHUP re-reads the file (hostagent/reload.py says what a running agent takes): a bad file, or a change
that needs a restart, is refused and logged, and the running configuration stays."""

from __future__ import annotations

import argparse
import logging

from nvfabric.hostagent.config import AgentConfig, ConfigError, load
from nvfabric.service import daemon
from nvfabric.vnet.errors import KernelError, ModelError

log = logging.getLogger("nvfabric.hostagent")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="run the host agent (HNV semantics on this hypervisor)")
    daemon.add_options(p, "agent", "agent.yaml (docs/agent.md#configuration)")
    p.set_defaults(func=main)


async def serve(config: AgentConfig, path: str | None = None) -> int:
    from nvfabric.hostagent.agent import Agent  # noqa: PLC0415 - keep `nvfabric --help` fast
    from nvfabric.hostagent.api import start_api  # noqa: PLC0415

    agent = Agent(config)

    async def reload() -> str:
        from nvfabric.hostagent.reload import plan  # noqa: PLC0415
        from nvfabric.hostagent.state import SaveError  # noqa: PLC0415

        assert path is not None
        try:
            change = plan(agent.config, load(path))
            await agent.reconfigure(change)
        except (ConfigError, ModelError, KernelError, SaveError) as err:  # the kernel was put back: nothing changed
            log.error("reload of %s refused, the running configuration stays: %s", path, err,
                      extra={"event": "reload-refused"})
            return f"running; reload refused: {err}"
        log.info("reloaded %s: %s", path, change.summary, extra={"event": "reloaded"})
        return f"running; reloaded: {change.summary}"

    def started(api: object) -> str:
        status = f"nvfabric agent {config.router_id}: running"
        log.info(status, extra={"event": "started"})
        return status

    return await daemon.serve(agent, lambda: start_api(agent, config.api.listen, config.api.token), started,
                              reload if path else None)


def _before_loop(config: AgentConfig) -> None:
    from nvfabric.vnet.kernel.malloc import map_big_blocks  # noqa: PLC0415

    map_big_blocks()  # (big tables freed are given back: the agent's RSS at fabric scale)
    if config.netns:
        from nvfabric.vnet.kernel.netns import enter_namespace  # noqa: PLC0415

        enter_namespace(config.netns)  # before any socket (and thread) exists: all are created inside


def main(args: argparse.Namespace) -> int:
    path = args.config or daemon.default_config("agent")
    return daemon.run("nvfabric agent", path, load, ConfigError, lambda config: serve(config, path),
                      log_level=args.log_level, log_format=args.log_format, before_loop=_before_loop)
