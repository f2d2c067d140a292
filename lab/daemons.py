"""Run an Agent or a Gateway in its own thread, inside its node's network namespace, with its own event loop.

For the lab, the demo, benchmarks and kernel tests: several daemons (agents on hv1, hv2, hv3, gateways)
share one Python process (Python starts slowly in the VM, docs/lab.md), each thread entered
into its namespace for good, so every socket the daemon makes (netlink, BGP, API) lives there. Calls from
other threads go through `call()`, which runs a coroutine on the daemon's loop and waits for it. Also
`in_ns`: one call in a fresh thread inside a namespace (setns is per thread).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.gateway import Gateway
from nvfabric.hostagent.agent import Agent
from nvfabric.hostagent.config import AgentConfig
from nvfabric.vnet.kernel.netns import enter_namespace

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


class AgentThread:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.agent: Agent | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready: Future[None] = Future()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name=f"agent-{config.netns or 'host'}", daemon=True)

    def start(self, timeout: float = 60.0) -> AgentThread:
        self._thread.start()
        self._ready.result(timeout)
        return self

    def _main(self) -> None:
        if self.config.netns:
            enter_namespace(self.config.netns)
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.agent = Agent(self.config)
            await self.agent.start()
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        await self._stop.wait()
        await self.agent.stop()

    def call(self, fn: Callable[[Agent], Awaitable[T]], timeout: float = 60.0) -> T:
        assert self.loop is not None and self.agent is not None
        agent = self.agent

        async def run() -> T:
            return await fn(agent)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def read(self, fn: Callable[[Agent], T], timeout: float = 10.0) -> T:
        """Run a synchronous accessor (status, lookup_records) on the agent's loop."""
        async def run() -> T:
            assert self.agent is not None
            return fn(self.agent)

        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)


class LoopThread:
    """An event loop running in a thread inside namespace `ns` until `close()`: whatever runs on it (sockets,
    netlink) lives in that namespace; coroutines are handed to it with `run`."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
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

    def run(self, coro: Awaitable[T], timeout: float = 20.0) -> T:
        async def go() -> T:
            return await coro
        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class GatewayThread(LoopThread):
    """The gateway on its own loop in a thread inside the gateway namespace (as the daemon runs)."""

    def __init__(self, config: GatewayConfig, ns: str) -> None:
        self.gateway = Gateway(config)
        super().__init__(ns)

    def call(self, fn: Callable[[Gateway], Any], timeout: float = 20.0) -> Any:
        async def go() -> Any:
            return await fn(self.gateway)  # fn itself runs on the gateway's loop
        return self.run(go(), timeout)

    def close(self) -> None:
        self.gateway.close()  # its conntrack sampler's thread, which does not end with the loop
        super().close()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the gateway (its sessions closed; tables, VRFs and routes stay), then the thread."""
        try:
            self.call(lambda g: g.stop(), timeout=timeout)
        finally:
            self.close()
