"""Bring a topology up as network namespaces and veth pairs, run commands in it, tear it down.

A lab's whole state is its namespaces, named "<lab>.<node>": `down` finds them by that prefix, so it
cleans up after a crashed run without any state file, and is idempotent.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from nvfabric.lab import netns
from nvfabric.lab.topology import Node, Topology, check_name, namespace_name


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


def up(topology: Topology) -> None:
    """Build every node, link and exec command; on any failure, remove what was built and raise."""
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
    except BaseException:
        down(topology.name)
        raise


def _start_node(topology: Topology, node: Node) -> None:
    """Bring the node's interfaces up, then run its exec commands in order.

    Consecutive plain `ip` commands share one `ip -n NS -batch` process; anything else runs on its own.
    """
    ns = topology.namespace(node.name)
    pending = ["link set lo up"] + [
        f"link set {end.interface} up" for link in topology.links for end in (link.a, link.b) if end.node == node.name
    ]
    try:
        for argv in node.exec:
            if netns.batchable(argv):
                pending.append(" ".join(argv[1:]))
                continue
            netns.ip_batch(pending, ns, where=f"node {node.name}")
            pending = []
            netns.run(netns.in_netns(ns, argv), where=f"node {node.name}")
        netns.ip_batch(pending, ns, where=f"node {node.name}")
    except netns.CommandFailed as failure:
        argv = failure.argv[4:] if failure.argv[:3] == ("ip", "netns", "exec") else failure.argv
        raise ExecFailed(topology.name, node.name,
                         netns.CommandFailed(argv, failure.returncode, failure.output, failure.where)) from None


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


def run(topology: Topology, command: Sequence[str]) -> int:
    """Bring the lab up, run `command` on the host, bring it down; returns the command's exit status."""
    up(topology)
    try:
        env = dict(os.environ, NVFABRIC_LAB=topology.name)
        return subprocess.run(list(command), env=env).returncode
    finally:
        down(topology.name)
