"""Bring a topology up as network namespaces and veth pairs, run commands in it, tear it down.

A lab's whole state is its namespaces, named "<lab>.<node>": `down` finds them by that prefix, so it
cleans up after a crashed run without any state file, and is idempotent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from nvfabric.lab import netns
from nvfabric.lab.topology import Node, Topology, check_name, namespace_name


NVFABRIC = str(Path(sys.executable).parent / "nvfabric")  # the console script of this environment


class LabError(RuntimeError):
    """The lab could not be built or used; the message names the lab, node and command."""


class ExecFailed(LabError):
    def __init__(self, lab: str, node: str, failure: netns.CommandFailed) -> None:
        self.lab, self.node, self.failure = lab, node, failure
        super().__init__(
            f"lab {lab}: node {node}: exec `{' '.join(failure.argv)}` exited {failure.returncode}:\n"
            f"{failure.output.rstrip() or '(no output)'}"
        )


def namespaces_of(lab: str) -> list[str]:
    prefix = f"{lab}."
    return [ns for ns in netns.list_namespaces() if ns.startswith(prefix)]


def nodes_of(lab: str) -> list[str]:
    return [ns.split(".", 1)[1] for ns in namespaces_of(lab)]


def up(topology: Topology, daemons: bool = False) -> None:
    """Build every node, link and exec command; on any failure, remove what was built and raise.

    A node's daemon (topology.py: an exec command that starts `nvfabric ROLE`) is not run as written: it
    needs the node image's filesystem. With `daemons`, the runner starts each from its bound configuration
    file (start_daemons); without, the caller does (lab/fabric.py starts them in threads, from the same files).
    """
    existing = namespaces_of(topology.name)
    if existing:
        raise LabError(
            f"lab {topology.name} is already up ({len(existing)} namespaces); "
            f"run `nvfabric lab down {topology.name}` first"
        )
    try:
        netns.ip_batch(
            [f"netns add {topology.namespace(n)}" for n in topology.nodes]
            + [netns.veth_line(topology.namespace(link.a.node), link.a.interface,
                               topology.namespace(link.b.node), link.b.interface) for link in topology.links]
        )
        for node in topology.nodes.values():
            _start_node(topology, node)
        if daemons:
            start_daemons(topology)
    except BaseException:
        down(topology.name)
        raise


def _interface_lines(topology: Topology, node: Node) -> list[str]:
    """The node's link ends as the link says (MAC, MTU, addresses), a bridge node's enslaved, all up."""
    lines = ["link set lo up"]
    if node.kind == "bridge":
        lines += [f"link add {node.name} type bridge", f"link set {node.name} up"]
    for link in topology.links:
        for end in (link.a, link.b):
            if end.node != node.name:
                continue
            if end.mac:
                lines.append(f"link set {end.interface} address {end.mac}")
            if link.mtu:
                lines.append(f"link set {end.interface} mtu {link.mtu}")
            if node.kind == "bridge":
                lines.append(f"link set {end.interface} master {node.name}")
            lines.append(f"link set {end.interface} up")
            lines += [f"addr add {address} dev {end.interface}" for address in end.addresses]
    return lines


def _start_node(topology: Topology, node: Node) -> None:
    """Bring the node's interfaces up, then run its exec commands in order (but its daemon's).

    Consecutive plain `ip` commands share one `ip -n NS -batch` process; anything else runs on its own,
    with the node's `env`.
    """
    ns = topology.namespace(node.name)
    pending = _interface_lines(topology, node)
    env = [f"{key}={value}" for key, value in node.env]
    try:
        for argv in node.setup:
            if netns.batchable(argv):
                pending.append(" ".join(argv[1:]))
                continue
            netns.ip_batch(pending, ns, where=f"node {node.name}")
            pending = []
            netns.run(netns.in_netns(ns, ["env", *env, *argv] if env else argv), where=f"node {node.name}")
        netns.ip_batch(pending, ns, where=f"node {node.name}")
    except netns.CommandFailed as failure:
        argv = failure.argv[4:] if failure.argv[:3] == ("ip", "netns", "exec") else failure.argv
        if env and argv[:1] == ("env",):
            argv = argv[1 + len(env):]
        raise ExecFailed(topology.name, node.name,
                         netns.CommandFailed(argv, failure.returncode, failure.output, failure.where)) from None


def log_dir(lab: str) -> Path:
    return Path(tempfile.gettempdir()) / f"nvfabric-lab-{lab}"


def daemon_config(topology: Topology, node: Node) -> Path:
    """The configuration file the runner gives a node's daemon: its bind's source, read by the daemon's own
    reader first (a wrong file is reported here, naming its field, not in a log). Nodes in namespaces share
    this machine's filesystem: where the file names a state folder, the daemon gets a copy of it with its own
    folder (under log_dir) instead, so that two agents never share one."""
    assert node.daemon is not None and node.daemon_config is not None
    role, bound = node.daemon.role, node.daemon_config
    if role == "rr":
        from nvfabric.bgp.reflector.config import load as load_reflector

        load_reflector(bound)
        return bound
    if role == "agent":
        from nvfabric.hostagent.config import load as load_agent

        load_agent(bound)
    else:
        from nvfabric.gateway.config import load as load_gateway

        load_gateway(bound)
    data = yaml.safe_load(bound.read_text())
    if not data.get("state_dir"):
        return bound
    state = log_dir(topology.name) / f"{node.name}-state"
    shutil.rmtree(state, ignore_errors=True)  # a fresh node, as a new container is
    data["state_dir"] = str(state)
    own = log_dir(topology.name) / f"{node.name}.yaml"
    own.write_text(f"# {bound} with this node's own state_dir (lab/runner.py)\n" + yaml.safe_dump(data))
    return own


def daemon_argv(topology: Topology, node: Node, config: Path) -> list[str]:
    """How the namespace runner starts a node's daemon: `nvfabric ROLE --config FILE` in its namespace."""
    assert node.daemon is not None
    return netns.in_netns(topology.namespace(node.name), [NVFABRIC, node.daemon.role, "--config", str(config)])


def start_daemons(topology: Topology) -> dict[str, subprocess.Popen[bytes]]:
    """Start every node's daemon as its own process (in its own session: it outlives `nvfabric lab up`; `down`
    stops it with its namespace); each logs to log_dir(lab)/NODE.log. Returns the processes by node."""
    logs = log_dir(topology.name)
    logs.mkdir(parents=True, exist_ok=True)
    started = {}
    for name, node in topology.daemons().items():
        try:
            argv = daemon_argv(topology, node, daemon_config(topology, node))
        except (OSError, ValueError) as exc:  # ValueError: the daemons' ConfigError, naming a field of the file
            raise LabError(f"lab {topology.name}: node {name}: {node.daemon_config}: {exc}") from None
        with open(logs / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            started[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return started


def down(lab: str) -> list[str]:
    """Remove every namespace of the lab (and the processes in it); returns what was removed."""
    check_name(lab, "lab", "lab name")
    removed = namespaces_of(lab)
    for ns in removed:
        netns.destroy(ns)
    return removed


def exec_argv(lab: str, node: str, command: Sequence[str]) -> list[str]:
    """The argv that runs `command` in a node of a running lab; raises LabError naming what is wrong."""
    check_name(lab, "lab", "lab name")
    if not command:
        raise LabError("no command given: nvfabric lab exec LAB NODE -- CMD...")
    ns = namespace_name(lab, node)
    if not netns.exists(ns):
        nodes = nodes_of(lab)
        if not nodes:
            raise LabError(f"lab {lab} is not up (no namespaces named {lab}.*)")
        raise LabError(f"lab {lab} has no node {node!r} (nodes: {', '.join(nodes)})")
    return netns.in_netns(ns, command)


def run(topology: Topology, command: Sequence[str], daemons: bool = False) -> int:
    """Bring the lab up (with its daemons if `daemons`), run `command` on the host, bring it down; returns the
    command's exit status."""
    up(topology, daemons)
    try:
        env = dict(os.environ, NVFABRIC_LAB=topology.name)
        return subprocess.run(list(command), env=env).returncode
    finally:
        down(topology.name)
