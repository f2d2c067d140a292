"""Waiting on a condition, not for a time: what the asyncio tests poll with."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def until(probe: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """`probe()`'s first true value, polled every 10 ms (AssertionError after `timeout` seconds, naming
    `what` and the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or probe}: last={value!r}")
        await asyncio.sleep(0.01)
