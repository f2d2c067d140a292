"""`--vm auto` end to end on this machine: its kernel lacks VRF/GRE, so `lab run` boots one VM."""

import subprocess
import sys
from pathlib import Path

import pytest

from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.vm import kernel_has_dataplane

NVFABRIC = str(Path(sys.executable).parent / "nvfabric")


@pytest.mark.skipif(kernel_has_dataplane()[0], reason="this kernel has VRF/GRE: --vm auto runs without a VM")
def test_lab_run_auto_boots_a_vm_and_returns_the_status():
    # One VM boot runs the lab and two commands: a ping that must pass, then one that must fail.
    script = (
        f"{NVFABRIC} lab exec hnv hv1 -- ping -c1 -W3 198.51.100.13 && "
        f"{{ {NVFABRIC} lab exec hnv hv9 -- true; echo unknown-node-status=$?; }} && "
        "ip link add probe type vrf table 7 && echo vrf-ok && exit 3"
    )
    result = subprocess.run(
        [NVFABRIC, "lab", "run", str(DEFAULT_TOPOLOGY), "--vm", "auto", "--", "sh", "-c", script],
        capture_output=True, text=True, timeout=900,
    )
    assert "running inside a VM" in result.stderr
    assert "1 received" in result.stdout, result.stdout + result.stderr
    assert "unknown-node-status=2" in result.stdout
    assert "lab hnv has no node 'hv9'" in result.stdout + result.stderr
    assert "vrf-ok" in result.stdout
    assert result.returncode == 3
