"""The lab runner on this machine's kernel: namespaces, veth links, exec, teardown (no VRF/GRE needed)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nvfabric.lab import netns, runner
from nvfabric.lab.fabric import wait_for
from nvfabric.lab.topology import parse

NVFABRIC = str(Path(sys.executable).parent / "nvfabric")


def two_nodes(name: str, extra_exec: str = "") -> str:
    return f"""
name: {name}
topology:
  defaults: {{kind: linux}}
  nodes:
    a:
      exec:
        - ip addr add 192.0.2.1/24 dev eth1
        - ip addr add 2001:db8:ffff::1/64 dev eth1 nodad
    b:
      exec:
        - ip addr add 192.0.2.2/24 dev eth1
        - ip addr add 2001:db8:ffff::2/64 dev eth1 nodad
        {extra_exec}
  links:
    - endpoints: ["a:eth1", "b:eth1"]
"""


@pytest.fixture
def lab_name(request):
    name = f"t{os.getpid()}{request.node.name[-6:].replace('[', '').replace(']', '')}"[:30]
    name = "".join(c for c in name if c.isalnum())
    yield name
    runner.down(name)


def test_up_links_exec_and_down(lab_name):
    topo = parse(two_nodes(lab_name))
    runner.up(topo)
    assert sorted(runner.nodes_of(lab_name)) == ["a", "b"]
    ping = netns.run(netns.in_netns(topo.namespace("a"), ["ping", "-c1", "-W2", "192.0.2.2"]), check=False)
    assert ping.returncode == 0, ping.output
    ping6 = netns.run(netns.in_netns(topo.namespace("b"), ["ping", "-c1", "-W2", "2001:db8:ffff::1"]), check=False)
    assert ping6.returncode == 0, ping6.output
    assert runner.down(lab_name) == [f"{lab_name}.a", f"{lab_name}.b"]
    assert runner.namespaces_of(lab_name) == []
    assert runner.down(lab_name) == []  # idempotent


def test_up_refuses_a_lab_that_is_already_up(lab_name):
    topo = parse(two_nodes(lab_name))
    runner.up(topo)
    with pytest.raises(runner.LabError, match="already up"):
        runner.up(topo)


def test_exec_failure_names_node_command_and_output_and_leaves_nothing(lab_name):
    topo = parse(two_nodes(lab_name, "- ip route add 198.18.0.0/15 via 203.0.113.99"))
    with pytest.raises(runner.ExecFailed) as info:
        runner.up(topo)
    message = str(info.value)
    assert "node b" in message and "ip route add 198.18.0.0/15 via 203.0.113.99" in message
    assert "Nexthop has invalid gateway" in message  # the command's own output
    assert runner.namespaces_of(lab_name) == []


def test_down_cleans_up_after_a_crashed_run(lab_name):
    topo = parse(two_nodes(lab_name))
    runner.up(topo)
    # A process left running in a node, as a crashed test run would leave it.
    sleeper = subprocess.Popen(netns.in_netns(topo.namespace("a"), ["sleep", "300"]))
    try:
        result = subprocess.run([NVFABRIC, "lab", "down", lab_name], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "removed 2 namespaces" in result.stdout
        assert sleeper.wait(timeout=10) != 0  # it was stopped, not left behind
        assert runner.namespaces_of(lab_name) == []
    finally:
        sleeper.kill()


def test_labs_with_a_common_prefix_do_not_touch_each_other(lab_name):
    runner.up(parse(two_nodes(lab_name)))
    runner.up(parse(two_nodes(lab_name + "x")))
    try:
        runner.down(lab_name)
        assert sorted(runner.nodes_of(lab_name + "x")) == ["a", "b"]
    finally:
        runner.down(lab_name + "x")


def test_cli_exec_unknown_node_and_lab(lab_name):
    runner.up(parse(two_nodes(lab_name)))
    ok = subprocess.run([NVFABRIC, "lab", "exec", lab_name, "a", "--", "ip", "-br", "addr", "show", "eth1"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "192.0.2.1/24" in ok.stdout
    bad = subprocess.run([NVFABRIC, "lab", "exec", lab_name, "zz", "--", "true"], capture_output=True, text=True)
    assert bad.returncode != 0
    assert f"lab {lab_name} has no node 'zz' (nodes: a, b)" in bad.stderr
    gone = subprocess.run([NVFABRIC, "lab", "exec", "nosuchlab", "a", "--", "true"], capture_output=True, text=True)
    assert gone.returncode != 0 and "lab nosuchlab is not up" in gone.stderr


def test_cli_run_returns_the_command_status_and_tears_down(lab_name, tmp_path):
    path = tmp_path / "t.clab.yml"
    path.write_text(two_nodes(lab_name))
    ok = subprocess.run([NVFABRIC, "lab", "run", str(path), "--vm", "never", "--",
                         NVFABRIC, "lab", "exec", lab_name, "a", "--", "ping", "-c1", "-W2", "192.0.2.2"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    failed = subprocess.run([NVFABRIC, "lab", "run", str(path), "--vm", "never", "--", "sh", "-c", "exit 7"])
    assert failed.returncode == 7
    assert runner.namespaces_of(lab_name) == []


def test_cli_reports_a_malformed_file_with_the_key(tmp_path):
    path = tmp_path / "bad.clab.yml"
    path.write_text("name: x\ntopology: {nodes: {a: {kind: linux}}, links: [{endpoints: ['a:eth1', 'q:eth1']}]}")
    result = subprocess.run([NVFABRIC, "lab", "up", str(path)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "topology.links[0].endpoints[1]: node 'q' is not defined" in result.stderr


def test_bridge_nodes_long_links_and_link_options(lab_name):
    """A bridge node (its links enslaved to a bridge named after it), the long link form with a MAC and
    addresses, a brief link with an MTU and addresses, a node's env in its exec commands."""
    topo = parse(f"""
name: {lab_name}
topology:
  defaults: {{kind: linux}}
  nodes:
    sw: {{kind: bridge}}
    a:
      env: {{WHO: node-a}}
      exec: ["sh -c 'echo $WHO > /run/{lab_name}-env'"]
    b: {{}}
  links:
    - type: veth
      endpoints:
        - {{node: a, interface: eth1, mac: "02:00:00:00:0a:01", ipv4: 192.0.2.1/24}}
        - {{node: sw, interface: p1}}
    - endpoints: ["b:eth1", "sw:p2"]
      mtu: 1400
      ipv4: [192.0.2.2/24, ""]
""")
    try:
        runner.up(topo)
        ping = netns.run(netns.in_netns(topo.namespace("a"), ["ping", "-c1", "-W2", "192.0.2.2"]), check=False)
        assert ping.returncode == 0, ping.output
        link = netns.run(["ip", "-n", topo.namespace("a"), "-o", "link", "show", "eth1"]).output
        assert "02:00:00:00:0a:01" in link
        assert "mtu 1400" in netns.run(["ip", "-n", topo.namespace("b"), "-o", "link", "show", "eth1"]).output
        ports = netns.run(["ip", "-n", topo.namespace("sw"), "-o", "link", "show", "master", "sw"]).output
        assert "p1@" in ports and "p2@" in ports
        assert Path(f"/run/{lab_name}-env").read_text().strip() == "node-a"
    finally:
        Path(f"/run/{lab_name}-env").unlink(missing_ok=True)


RR_CONFIG = """
asn: 65000
router_id: 192.0.2.100
listen: {address: 192.0.2.100, port: 179}
neighbors: [{prefix: 192.0.2.0/24, asn: 65000, client: true}]
api: {listen: "127.0.0.1:8179", token: t0ken}
"""


def test_daemons_start_from_their_bound_configuration(lab_name, tmp_path):
    """`lab up --daemons`: the exec command that starts `nvfabric rr` is not run as written (it needs the node
    image); the runner starts the reflector in the node from the bound file, detached; `down` stops it."""
    (tmp_path / "rr").mkdir()
    (tmp_path / "rr" / "rr1.yaml").write_text(RR_CONFIG)
    path = tmp_path / "t.clab.yml"
    path.write_text(f"""
name: {lab_name}
topology:
  defaults: {{kind: linux}}
  nodes:
    rr1:
      binds: ["rr/rr1.yaml:/etc/nvfabric/rr.yaml:ro"]
      exec:
        - ip addr add 192.0.2.100/24 dev eth1
        - setsid -f sh -c 'exec nvfabric rr --config /etc/nvfabric/rr.yaml </dev/null >>/var/log/rr.log 2>&1'
    c: {{exec: ["ip addr add 192.0.2.1/24 dev eth1"]}}
  links:
    - endpoints: ["rr1:eth1", "c:eth1"]
""")
    up = subprocess.run([NVFABRIC, "lab", "up", str(path), "--daemons"], capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    assert "daemons started on rr1" in up.stdout
    ns = f"{lab_name}.rr1"
    curl = ["python3", "-c", "import sys, urllib.request as u; r = u.Request('http://127.0.0.1:8179/v1/summary', "
            "headers={'Authorization': 'Bearer t0ken'}); print(u.urlopen(r, timeout=5).read().decode())"]
    log = runner.log_dir(lab_name) / "rr1.log"
    try:
        answer = wait_for(lambda: (r := netns.run(netns.in_netns(ns, curl), check=False)).returncode == 0 and r,
                          60, "the reflector's API")
    except TimeoutError:
        pytest.fail(f"the reflector never answered:\n{log.read_text() if log.exists() else '(no log)'}")
    assert '"router_id": "192.0.2.100"' in answer.output
    # the BGP listener is the bound file's: on the node's address, in the node
    listening = netns.run(netns.in_netns(ns, ["ss", "-Htln", "sport", "=", "179"])).output
    assert "192.0.2.100:179" in listening
    pids = netns.pids(ns)
    assert pids
    runner.down(lab_name)
    assert not any(netns._alive(pid) for pid in pids)  # gone or a zombie (its parent, `lab up`, has exited)


def test_a_bound_configuration_the_daemon_refuses_is_reported_before_anything_runs(lab_name, tmp_path):
    (tmp_path / "rr.yaml").write_text("asn: 65000\nrouter_id: nope\n")
    topo = parse(f"""
name: {lab_name}
topology:
  nodes:
    rr1: {{kind: linux, binds: ["rr.yaml:/etc/nvfabric/rr.yaml"], exec: ["nvfabric rr"]}}
""", tmp_path)
    with pytest.raises(runner.LabError) as info:
        runner.up(topo, daemons=True)
    assert f"node rr1: {tmp_path / 'rr.yaml'}: router_id" in str(info.value)
    assert runner.namespaces_of(lab_name) == []
