"""`nvfabric agent --config agent.yaml`: the host agent daemon (docs/agent.md); service/daemon.py runs it."""

from __future__ import annotations

import argparse

from nvfabric.hostagent.config import AgentConfig, ConfigError, load
from nvfabric.service import daemon


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="run the host agent (HNV semantics on this hypervisor)")
    p.add_argument("--config", required=True, help="agent.yaml (docs/agent.md#configuration)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=main)


async def serve(config: AgentConfig) -> int:
    from nvfabric.hostagent.agent import Agent  # noqa: PLC0415 - keep `nvfabric --help` fast
    from nvfabric.hostagent.api import start_api  # noqa: PLC0415

    agent = Agent(config)
    return await daemon.serve(agent, lambda: start_api(agent, config.api.listen, config.api.token),
                              lambda api: print(f"nvfabric agent {config.router_id}: running", flush=True))


def _enter_namespace(config: AgentConfig) -> None:
    if config.netns:
        from nvfabric.vnet.kernel.netns import enter_namespace  # noqa: PLC0415

        enter_namespace(config.netns)  # before any socket (and thread) exists: all are created inside


def main(args: argparse.Namespace) -> int:
    return daemon.run("nvfabric agent", args.config, load, ConfigError, serve, log_level=args.log_level,
                      before_loop=_enter_namespace)
