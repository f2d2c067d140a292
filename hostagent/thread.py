"""Run an Agent in its own thread, inside its node's network namespace, with its own event loop.

For the lab, the demo, benchmarks and kernel tests: several agents (hv1, hv2, hv3) share one Python
process (Python starts slowly in the VM, shared/notes/environment.md), each thread entered into its
namespace for good, so every socket the agent makes (netlink, BGP, API) lives there. Calls from other
threads go through `call()`, which runs a coroutine on the agent's loop and waits for it.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import TypeVar

from nvfabric.hostagent.agent import Agent
from nvfabric.hostagent.config import AgentConfig

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def enter_namespace(name: str) -> None:
    """Move the calling thread into /run/netns/<name> for good."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


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
