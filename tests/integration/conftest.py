"""Fixtures for the interop tests: a `Lab` of namespaces and processes, removed even when a test fails."""

from __future__ import annotations

import os
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvfabric.lab.peers import Lab


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None and not Path(t).exists()]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


@pytest.fixture
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    # Short, unique prefix per test: namespace names show in `ip netns` if a run is interrupted.
    the_lab = Lab(tmp=tmp_path, prefix=f"nvb{os.getpid() % 10000}{zlib.crc32(request.node.name.encode()) % 1000}-")
    try:
        yield the_lab
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(the_lab.logs())
        the_lab.close()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
