"""Kernel phase (inside the VM): the dataplane devices exist, and the default topology is fully reachable."""

import asyncio
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from nvfabric.lab import netns, reach, runner
from nvfabric.lab.daemons import in_ns
from nvfabric.lab.fabric import wait_for
from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.topology import load, parse
from nvfabric.lab.vm import kernel_has_dataplane

pytestmark = pytest.mark.kernel
NVFABRIC = str(Path(sys.executable).parent / "nvfabric")


def test_kernel_creates_vrf_gretap_and_ip6gretap():
    ok, why = kernel_has_dataplane()
    assert ok, why


@pytest.fixture
def hnv():
    topology = load(DEFAULT_TOPOLOGY)
    runner.up(topology)
    yield topology
    runner.down(topology.name)


def test_default_topology_every_node_pings_every_other_over_ipv4_and_ipv6(hnv):
    namespaces = {n: hnv.namespace(n) for n in hnv.nodes if n != "fabric"}
    addresses = {n: reach.global_addresses(ns) for n, ns in namespaces.items()}
    for node, addrs in addresses.items():
        assert {a.version for a in addrs} == {4, 6}, f"{node} lacks an IPv4 or IPv6 address: {addrs}"
    probes = asyncio.run(reach.probe_all(namespaces, addresses))
    assert len(probes) == sum(len(a) for a in addresses.values()) * (len(namespaces) - 1)
    assert reach.failures(probes) == []


def test_exec_failure_is_reported_and_nothing_is_left():
    topo = parse("""
name: kfail
topology:
  defaults: {kind: linux}
  nodes:
    a: {exec: ["ip link add v0 type vrf table 10", "ip link add g0 type gretap external", "ip link set nosuchdev up"]}
""")
    with pytest.raises(runner.ExecFailed) as info:
        runner.up(topo)
    assert "node a" in str(info.value) and "ip link set nosuchdev up" in str(info.value)
    assert "Cannot find device" in str(info.value)
    assert runner.namespaces_of("kfail") == []


def test_lab_run_exec_ping_and_unknown_node():
    base = [NVFABRIC, "lab", "run", str(DEFAULT_TOPOLOGY), "--", NVFABRIC, "lab", "exec", "hnv"]
    ok = subprocess.run([*base, "hv1", "--", "ping", "-c1", "-W3", "198.51.100.13"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 received" in ok.stdout
    bad = subprocess.run([*base, "hv9", "--", "true"], capture_output=True, text=True)
    assert bad.returncode != 0
    assert "lab hnv has no node 'hv9'" in bad.stderr
    assert not netns.exists("hnv.hv1")


def test_default_topology_with_its_daemons_comes_up_by_itself():
    """What `containerlab deploy -t hnv.clab.yml` does, in namespaces (`nvfabric lab up --daemons`): every
    daemon node starts its daemon from its bound configuration, and each reflector sees the three agents and
    the two gateways established, with nothing else started by the test."""
    topology = load(DEFAULT_TOPOLOGY)
    assert set(topology.daemons()) == {"rr1", "rr2", "hv1", "hv2", "hv3", "gw1", "gw2"}

    def summary() -> dict:
        try:
            request = urllib.request.Request("http://127.0.0.1:8179/v1/summary",
                                             headers={"Authorization": "Bearer lab-reflector"})
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)
        except OSError:
            return {}

    processes = {}
    runner.up(topology)
    try:
        processes = runner.start_daemons(topology)
        seen: dict[str, dict] = {}

        def all_established() -> bool:
            exited = {n: p.returncode for n, p in processes.items() if p.poll() is not None}
            assert not exited, f"daemons exited: {exited}; logs in {runner.log_dir(topology.name)}"
            seen.update({rr: in_ns(topology.namespace(rr), summary, timeout=30) for rr in ("rr1", "rr2")})
            return all(s.get("sessions", {}).get("established") == 5 for s in seen.values())

        try:  # seven Python daemons starting side by side under the emulated CPU
            wait_for(all_established, 300, "five established clients at each reflector")
        except TimeoutError:
            pytest.fail(f"not every client established: {seen}; logs in {runner.log_dir(topology.name)}")
    finally:
        runner.down(topology.name)
    assert all(p.wait(10) is not None for p in processes.values())
