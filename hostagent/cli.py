"""`nvfabric agent --config agent.yaml`: the host agent daemon (docs/agent.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from nvfabric.hostagent.config import ConfigError, load


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="run the host agent (HNV semantics on this hypervisor)")
    p.add_argument("--config", required=True, help="agent.yaml (docs/agent.md#configuration)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=main)


async def _run(config) -> int:
    from nvfabric.hostagent.agent import Agent  # noqa: PLC0415 - keep `nvfabric --help` fast

    agent = Agent(config)
    await agent.start()
    server = None
    try:
        from nvfabric.hostagent.api import start_api  # noqa: PLC0415 - agent-api's module; the agent runs without it
    except ImportError:
        start_api = None
    if start_api is not None:
        server = await start_api(agent, config.api.listen, config.api.token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"nvfabric agent {config.router_id}: running", flush=True)
    await stop.wait()
    if server is not None:
        await server.stop()
    await agent.stop()
    return 0


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"nvfabric agent: config error: {exc}", file=sys.stderr)
        return 2
    if config.netns:
        from nvfabric.hostagent.thread import enter_namespace  # noqa: PLC0415

        enter_namespace(config.netns)  # before any socket (and thread) exists: all are created inside
    try:
        return asyncio.run(_run(config))
    except Exception as exc:  # noqa: BLE001 - a clear one-line reason, not a traceback, for the operator
        print(f"nvfabric agent: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
