"""Test phases: the host phase runs everything not marked `kernel`; the kernel phase (`make test` runs it
inside one VM) runs the tests marked `kernel`, which need VRF and GRE. And what the integration and image
tests share: a `Lab` of namespaces and processes, removed even when a test fails (its logs printed then)."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvfabric.lab.peers import Lab


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kernel_items = [item for item in items if item.get_closest_marker("kernel")]
    if not kernel_items:
        return
    from nvfabric.lab.vm import kernel_has_dataplane

    ok, why = kernel_has_dataplane()
    if ok:
        return
    if os.environ.get("NVFABRIC_IN_VM"):
        # Inside the VM a kernel test that cannot run is a failure of the phase, never a silent skip.
        raise pytest.UsageError(f"kernel phase inside the VM, but {why}")
    skip = pytest.mark.skip(reason=f"{why}; `make test` runs these inside a VM")
    for item in kernel_items:
        item.add_marker(skip)


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
