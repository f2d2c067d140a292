"""`make install DESTDIR=ROOT`: the installed tree as the units expect it (a venv in /opt/nvfabric that runs,
/usr/bin/nvfabric pointing into it, the units, the samples in /etc/nvfabric without overwriting an
operator's file), and `systemd-analyze verify --root=ROOT` of the units as installed, ExecStart included."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.test_units import NAMES, SYSTEM_UNITS, verify

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir(),
                    reason="systemd-analyze (Debian's systemd) is not installed")
def test_make_install_into_a_root_and_verify_the_units_there(tmp_path: Path):
    dest = tmp_path / "root"
    operator = dest / "etc" / "nvfabric" / "agent.yaml"
    operator.parent.mkdir(parents=True)
    operator.write_text("# the operator's own\n")
    for _ in range(2):  # the second run is an upgrade in place: the same tree
        done = subprocess.run(["make", "-s", "install", f"DESTDIR={dest}"], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "kept" in done.stdout and str(operator) in done.stdout

    assert os.readlink(dest / "usr" / "bin" / "nvfabric") == "/opt/nvfabric/bin/nvfabric"
    assert (dest / "opt" / "nvfabric" / "bin" / "nvfabric").read_text().startswith("#!/opt/nvfabric/bin/python")
    version = subprocess.run([str(dest / "opt" / "nvfabric" / "bin" / "python"), "-m", "nvfabric.cli", "--version"],
                             cwd="/", capture_output=True, text=True, check=True).stdout
    assert version.startswith("nvfabric ")
    assert operator.read_text() == "# the operator's own\n"  # never overwritten
    for name in ("rr", "gateway"):
        sample = dest / "etc" / "nvfabric" / f"{name}.yaml"
        assert sample.read_text() == (ROOT / "deploy" / "etc" / "nvfabric" / f"{name}.yaml").read_text()
        assert sample.stat().st_mode & 0o777 == 0o640  # tokens and TCP-MD5 passwords: root's only

    # what the units need from a system that is not ours to install: systemd's own units, /bin/kill
    shutil.copytree(SYSTEM_UNITS, dest / "usr" / "lib" / "systemd" / "system", symlinks=True)
    (dest / "bin").symlink_to("usr/bin")
    shutil.copy(shutil.which("kill") or "/usr/bin/kill", dest / "usr" / "bin" / "kill")
    assert verify(dest, *(f"nvfabric-{n}.service" for n in NAMES)) == (0, "")
