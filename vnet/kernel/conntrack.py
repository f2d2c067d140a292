"""Conntrack, read over netlink: how many tracked connections each ct mark has (the gateway marks a
tenant's flows with its tenant id)."""

from __future__ import annotations

import asyncio
import threading

from pyroute2 import Conntrack

from nvfabric.vnet.kernel.netns import inside


async def sessions_by_mark(netns: str | None) -> dict[int, int]:
    """Conntrack entries per ct mark (= tenant id), in the gateway's network namespace.

    pyroute2's Conntrack is synchronous and runs its own event loop, so it cannot run on ours: it runs in a
    fresh thread (which starts in the namespace of the thread that creates it, ours) and enters the
    configured namespace by name when there is one."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[dict[int, int]] = loop.create_future()

    def count() -> None:
        try:
            counts: dict[int, int] = {}
            with inside(netns), Conntrack() as ct:
                for entry in ct.dump_entries():
                    mark = entry.mark or 0
                    if mark:
                        counts[mark] = counts.get(mark, 0) + 1
            loop.call_soon_threadsafe(done.set_result, counts)
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(done.set_exception, exc)

    threading.Thread(target=count, name="conntrack-count", daemon=True).start()
    return await asyncio.wait_for(done, 10)
