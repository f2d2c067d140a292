"""deploy/: the systemd units pass `systemd-analyze verify` (in a throwaway root that has /usr/bin/nvfabric,
so the ExecStart check is real), and the check does catch a broken unit; they say what the daemons need
(Type=notify, reload by SIGHUP, sandbox, capabilities systemd knows); the sample configurations parse with
each daemon's own reader, as shipped."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from nvfabric.bgp.reflector import config as rr_config
from nvfabric.gateway import config as gateway_config
from nvfabric.hostagent import config as agent_config

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
SAMPLES = ROOT / "deploy" / "etc" / "nvfabric"
NAMES = ("rr", "agent", "gateway")
SYSTEM_UNITS = Path("/usr/lib/systemd/system")  # sysinit.target and the rest a service depends on

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir(),
                                   reason="systemd-analyze (Debian's systemd) is not installed")


def make_root(base: Path) -> Path:
    """A root with what the units name: /usr/bin/nvfabric, /bin/kill, systemd's own units."""
    root = base / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")  # merged /usr, as Debian 12
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree(SYSTEM_UNITS, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    shutil.copy(shutil.which("kill") or "/usr/bin/kill", root / "usr" / "bin" / "kill")
    stub = root / "usr" / "bin" / "nvfabric"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    return root


def verify(root: Path, *units: str) -> tuple[int, str]:
    """systemd-analyze verify's status and complaints: it exits 0 on a line it ignores (a misspelt key, a
    bad value), so a clean unit is status 0 AND nothing said."""
    done = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units], capture_output=True, text=True)
    return done.returncode, done.stderr.strip()


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / f"nvfabric-{name}.service")
    return parser


@needs_systemd
def test_the_units_verify(tmp_path: Path):
    root = make_root(tmp_path)
    for name in NAMES:
        shutil.copy(UNITS / f"nvfabric-{name}.service", root / "etc" / "systemd" / "system")
    assert verify(root, *(f"nvfabric-{n}.service" for n in NAMES)) == (0, "")


@needs_systemd
@pytest.mark.parametrize("breakage", [("ExecStart=/usr/bin/nvfabric", "ExecStart=/usr/sbin/nvfabric"),
                                      ("NoNewPrivileges=yes", "NoNewPrivilegs=yes"),
                                      ("Type=notify", "Type=notifyy")])
def test_a_broken_unit_fails_verification(tmp_path: Path, breakage: tuple[str, str]):
    root = make_root(tmp_path)
    text = (UNITS / "nvfabric-agent.service").read_text()
    assert breakage[0] in text
    (root / "etc" / "systemd" / "system" / "nvfabric-agent.service").write_text(text.replace(*breakage))
    assert verify(root, "nvfabric-agent.service") != (0, "")


@needs_systemd
def test_every_capability_is_one_systemd_knows():
    # systemd ignores an unknown capability name without a word: a typo would silently drop a privilege
    listed = subprocess.run(["systemd-analyze", "capability"], capture_output=True, text=True, check=True).stdout
    known = {line.split()[0].upper() for line in listed.splitlines()[1:] if line.strip()}
    for name in NAMES:
        service = unit(name)["Service"]
        for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
            assert set(service[key].split()) <= known, (name, key)


def test_the_units_run_the_daemons_as_notify_services_with_reload_and_a_sandbox():
    for name in NAMES:
        service = unit(name)["Service"]
        assert service["ExecStart"] == f"/usr/bin/nvfabric {name}"  # the default configuration path
        assert (service["Type"], service["NotifyAccess"]) == ("notify", "main")
        assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
        assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"
        for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                           ("PrivateTmp", "yes"), ("StateDirectory", "nvfabric"),
                           ("ConfigurationDirectory", "nvfabric")):
            assert service[key] == value, (name, key)
        assert int(service["LimitNOFILE"]) >= 65536
    assert unit("rr")["Service"]["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    # conntrackd, the gateway's child, keeps its socket and lock under /run/nvfabric (gateway/conntrackd.py)
    assert unit("gateway")["Service"]["RuntimeDirectory"] == "nvfabric"


@pytest.mark.parametrize(("name", "load"), [("rr", rr_config.load), ("agent", agent_config.load),
                                            ("gateway", gateway_config.load)])
def test_the_samples_parse_as_shipped(name: str, load):
    config = load(str(SAMPLES / f"{name}.yaml"))
    assert config.api.token  # the API is on, with the placeholder the operator replaces
    assert str(getattr(config, "state_dir", None) or "/var/lib/nvfabric") == "/var/lib/nvfabric"
