"""Test phases: the host phase runs everything not marked `kernel`; the kernel phase (`make test` runs it
inside one VM) runs the tests marked `kernel`, which need VRF and GRE."""

from __future__ import annotations

import os

import pytest


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
