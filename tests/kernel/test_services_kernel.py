"""The agent and the gateway as systemd runs them, in the VM (VRF and GRE): real processes with only their
unit's capabilities (setpriv, the unit's CapabilityBoundingSet) and $NOTIFY_SOCKET bound by the test. They
say READY=1; a SIGHUP that adds a routing domain / tenant to the file creates its VRF and leaves the others'
VRF device as it was; a field that needs a restart is refused by name and nothing changes; one removed
from the file goes; SIGTERM says STOPPING=1 and leaves the kernel's forwarding in place."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_service_notify import NVFABRIC, Manager, bounded, started, stop

pytestmark = pytest.mark.kernel

BLUE = {"name": "blue", "route_targets": ["65000:1"], "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}]}
RED = {"name": "red", "route_targets": ["65000:2"], "subnets": [{"vsid": 6001, "prefixes": ["10.0.0.0/24"]}]}


@pytest.fixture
def host_ns():
    ns = f"nvfsvck{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for line in ("link set lo up", "link add eth0 type veth peer name eth0-peer", "link set eth0 up",
                     "addr add 198.51.100.11/24 dev eth0", "link add ext type veth peer name ext-peer",
                     "link set ext up", "addr add 203.0.113.2/25 dev ext"):
            subprocess.run(["ip", "-n", ns, *line.split()], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture
def manager(tmp_path: Path):
    m = Manager(str(tmp_path / "notify"), str(tmp_path / "notify"))
    yield m
    m.close()


def vrfs(ns: str) -> dict[str, int]:
    """The VRF devices in `ns`, by name, with their interface index (a device made again gets a new one)."""
    out = subprocess.run(["ip", "-n", ns, "-j", "-d", "link", "show", "type", "vrf"], check=True,
                         capture_output=True, text=True).stdout
    return {link["ifname"]: link["ifindex"] for link in json.loads(out or "[]")}


def reload(proc: subprocess.Popen[str], manager: Manager) -> str:
    proc.send_signal(signal.SIGHUP)
    assert manager.next()["RELOADING"] == "1"
    ready = manager.next()
    assert ready["READY"] == "1"
    return ready["STATUS"]


def stopped(proc: subprocess.Popen[str], manager: Manager) -> list[dict]:
    err = stop(proc, manager)
    assert proc.returncode == 0, err[-3000:]
    return [json.loads(line) for line in err.splitlines()]


def run_reloads(name: str, ns: str, config: Path, write, manager: Manager) -> list[dict]:
    """The same story for both daemons; `write(domains, **changed)` writes the daemon's file."""
    write([BLUE])
    with started(bounded(name, ns, [NVFABRIC, name, "--config", str(config)]), manager) as proc:
        assert manager.next()["READY"] == "1"
        first = vrfs(ns)
        assert "nvf-blue" in first

        write([BLUE, RED])
        assert "put red" in reload(proc, manager)
        second = vrfs(ns)
        assert "nvf-red" in second and second["nvf-blue"] == first["nvf-blue"]

        write([BLUE], router_id="198.51.100.99")
        assert "router_id: cannot change without a restart" in reload(proc, manager)
        assert vrfs(ns) == second

        write([BLUE])
        assert "deleted red" in reload(proc, manager)
        assert vrfs(ns) == {"nvf-blue": first["nvf-blue"]}
        events = stopped(proc, manager)
    assert vrfs(ns) == {"nvf-blue": first["nvf-blue"]}  # a stop leaves forwarding to the next start
    return events


def test_agent_reload_under_its_unit_capabilities(host_ns: str, tmp_path: Path, manager: Manager):
    config = tmp_path / "agent.yaml"
    state = tmp_path / "state"
    state.mkdir()

    def write(domains: list[dict], **changed: object) -> None:
        config.write_text(json.dumps({
            "asn": 65000, "router_id": "198.51.100.11", "provider_addresses": ["198.51.100.11"],
            "route_reflectors": [{"address": "198.51.100.100"}], "state_dir": str(state),
            "api": {"listen": "127.0.0.1:8500", "token": "t"}, "routing_domains": domains, **changed}))

    events = run_reloads("agent", host_ns, config, write, manager)
    assert [e.get("event") for e in events].count("reloaded") == 2


def test_gateway_reload_under_its_unit_capabilities(host_ns: str, tmp_path: Path, manager: Manager):
    config = tmp_path / "gateway.yaml"

    def write(tenants: list[dict], **changed: object) -> None:
        config.write_text(json.dumps({
            "asn": 65000, "router_id": "198.51.100.11", "provider_addresses": ["198.51.100.11"],
            "external": {"interfaces": ["ext"], "address4": "203.0.113.2"}, "state_dir": str(tmp_path),
            "api": {"listen": "127.0.0.1:8510", "token": "t"}, "tenants": tenants, **changed}))

    events = run_reloads("gateway", host_ns, config, write, manager)
    assert [e.get("event") for e in events].count("reloaded") == 2
