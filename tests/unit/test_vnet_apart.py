"""The routes read by a child process (vnet/kernel/apart.py), in this machine's own namespace: the same routes
as read in the loop, and a failed child is an error the caller can fall back from, with no process left."""

from __future__ import annotations

import os
import signal
import time

import pytest

from nvfabric.vnet.kernel import apart, observe
from nvfabric.vnet.kernel.netns import RtnlSocket


async def test_the_child_reads_what_the_loop_reads():
    with RtnlSocket(None) as sock:
        _, names = await observe.devices(sock)
        in_loop = [r async for r in observe.routes(sock, names)]
        assert await observe.routes_apart(sock, names) == in_loop
    fields = [f async for batch in apart.route_fields(None) for f in batch]
    assert len(fields) == len(in_loop)


async def test_a_child_that_cannot_enter_its_namespace_is_an_error_and_is_reaped():
    with pytest.raises(apart.ApartError, match="exit 1"):
        async for _ in apart.route_fields("nvfabric-no-such-namespace"):
            pass
    try:  # no zombie of ours left behind (a living child of another test's is not one)
        assert os.waitpid(-1, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        pass


async def test_a_child_that_hangs_is_killed_and_reaped(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(apart, "_child", lambda netns, fd: signal.pause())  # (the forked child blocks in it)
    monkeypatch.setattr(apart, "CHILD_TIMEOUT", 0.5)
    started = time.monotonic()
    with pytest.raises(apart.ApartError, match="did not finish"):
        async for _ in apart.route_fields(None):
            pass
    assert time.monotonic() - started < 30
    try:
        assert os.waitpid(-1, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        pass
