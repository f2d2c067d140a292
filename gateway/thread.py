"""Run a Gateway in its own thread, inside its node's network namespace, with its own event loop (as
hostagent/thread.py does for agents): for the demo, the kernel tests and benchmarks, several daemons share
one Python process (Python starts slowly in the VM). Also `in_ns`: one call in a fresh thread inside a
namespace (setns is per thread)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.gateway import Gateway
from nvfabric.hostagent.thread import enter_namespace

T = TypeVar("T")


def in_ns(ns: str, fn: Callable[[], T], timeout: float = 15.0) -> T:
    """Run fn in a fresh thread inside namespace ns (setns is per thread), wait for its result."""
    out: Future[T] = Future()

    def main() -> None:
        try:
            enter_namespace(ns)
            out.set_result(fn())
        except BaseException as exc:  # handed to the caller
            out.set_exception(exc)

    threading.Thread(target=main, daemon=True).start()
    return out.result(timeout)


class GatewayThread:
    """The gateway on its own loop in a thread inside the gateway namespace (as the daemon runs)."""

    def __init__(self, config: GatewayConfig, ns: str) -> None:
        self.ns = ns
        self.gateway = Gateway(config)
        self.loop = asyncio.new_event_loop()
        ready: Future[None] = Future()

        def main() -> None:
            enter_namespace(ns)
            asyncio.set_event_loop(self.loop)
            ready.set_result(None)
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        ready.result(5)

    def call(self, fn: Callable[[Gateway], Any], timeout: float = 20.0) -> Any:
        async def go() -> Any:
            return await fn(self.gateway)
        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the gateway (its sessions closed; tables, VRFs and routes stay), then the thread."""
        try:
            self.call(lambda g: g.stop(), timeout=timeout)
        finally:
            self.close()


