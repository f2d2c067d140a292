"""containerlab topology files (`*.clab.yml`) parsed into typed, validated values.

Only what a network-namespace lab can honour is interpreted: `name`, `topology.nodes` of kind `linux`
with their `exec` lists, and `topology.links` with `endpoints`. Keys that matter only to containerlab
(image, binds, mgmt, labels, ...) are accepted and ignored, so the same file works with containerlab.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Lab and node names become namespace names "<lab>.<node>": the dot cannot occur in either, so the
# prefix of one lab never matches the namespaces of another (hnv vs hnv2).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
# Linux interface names: at most 15 bytes, no '/', no whitespace, not '.' or '..'.
IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")
SUPPORTED_KINDS = ("linux",)


class TopologyError(ValueError):
    """A topology file that cannot be built; the message names the file, the key and the node."""

    def __init__(self, where: str, problem: str, source: str | None = None) -> None:
        self.where = where
        self.problem = problem
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{where}: {problem}")


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    exec: tuple[tuple[str, ...], ...]  # each command already split into argv, as containerlab does


@dataclass(frozen=True)
class Endpoint:
    node: str
    interface: str

    def __str__(self) -> str:
        return f"{self.node}:{self.interface}"


@dataclass(frozen=True)
class Link:
    a: Endpoint
    b: Endpoint


@dataclass(frozen=True)
class Topology:
    name: str
    nodes: dict[str, Node]
    links: tuple[Link, ...]

    def namespace(self, node: str) -> str:
        return namespace_name(self.name, node)


def namespace_name(lab: str, node: str) -> str:
    return f"{lab}.{node}"


def check_name(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise TopologyError(
            where, f"{what} {value!r} must be 1-32 characters of letters, digits, '-' or '_', starting with "
            "a letter or digit"
        )
    return value


def load(path: str | Path) -> Topology:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError("file", f"cannot read: {exc.strerror}", str(path)) from exc
    try:
        return parse(text)
    except TopologyError as exc:
        raise TopologyError(exc.where, exc.problem, str(path)) from None


def parse(text: str) -> Topology:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TopologyError("file", f"not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise TopologyError("file", "the top level must be a mapping with 'name' and 'topology'")
    name = check_name(doc.get("name"), "name", "lab name")
    topo = doc.get("topology")
    if not isinstance(topo, dict):
        raise TopologyError("topology", "missing or not a mapping")
    nodes = _parse_nodes(topo.get("nodes"))
    links = _parse_links(topo.get("links", []), nodes)
    return Topology(name=name, nodes=nodes, links=links)


def _parse_nodes(raw: Any) -> dict[str, Node]:
    if not isinstance(raw, dict) or not raw:
        raise TopologyError("topology.nodes", "missing or empty; it must map node names to node definitions")
    nodes: dict[str, Node] = {}
    for node_name, spec in raw.items():
        where = f"topology.nodes.{node_name}"
        check_name(node_name, where, "node name")
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise TopologyError(where, "must be a mapping")
        kind = spec.get("kind", "linux")
        if kind not in SUPPORTED_KINDS:
            raise TopologyError(
                f"{where}.kind", f"kind {kind!r} is not supported (supported: {', '.join(SUPPORTED_KINDS)})"
            )
        commands = spec.get("exec", [])
        if not isinstance(commands, list):
            raise TopologyError(f"{where}.exec", "must be a list of commands")
        argvs = []
        for i, command in enumerate(commands):
            if not isinstance(command, str) or not command.strip():
                raise TopologyError(f"{where}.exec[{i}]", "must be a non-empty string")
            try:
                argvs.append(tuple(shlex.split(command)))
            except ValueError as exc:
                raise TopologyError(f"{where}.exec[{i}]", f"cannot be split into words: {exc}") from None
        nodes[node_name] = Node(name=node_name, kind=kind, exec=tuple(argvs))
    return nodes


def _parse_links(raw: Any, nodes: dict[str, Node]) -> tuple[Link, ...]:
    if not isinstance(raw, list):
        raise TopologyError("topology.links", "must be a list")
    links = []
    used: dict[Endpoint, int] = {}
    for i, spec in enumerate(raw):
        where = f"topology.links[{i}]"
        if not isinstance(spec, dict) or "endpoints" not in spec:
            raise TopologyError(where, "must be a mapping with 'endpoints'")
        endpoints = spec["endpoints"]
        if not isinstance(endpoints, list) or len(endpoints) != 2:
            raise TopologyError(f"{where}.endpoints", "must be a list of two 'node:interface' strings")
        parsed = []
        for j, text in enumerate(endpoints):
            ewhere = f"{where}.endpoints[{j}]"
            if not isinstance(text, str) or text.count(":") != 1:
                raise TopologyError(ewhere, f"{text!r} is not of the form 'node:interface'")
            node, iface = text.split(":")
            if node not in nodes:
                raise TopologyError(ewhere, f"node {node!r} is not defined in topology.nodes")
            if not IFNAME_RE.match(iface):
                raise TopologyError(ewhere, f"interface name {iface!r} is not a valid Linux name (max 15 chars)")
            if iface == "lo":
                raise TopologyError(ewhere, "interface name 'lo' is reserved")
            endpoint = Endpoint(node, iface)
            if endpoint in used:
                raise TopologyError(ewhere, f"{endpoint} is already used by topology.links[{used[endpoint]}]")
            used[endpoint] = i
            parsed.append(endpoint)
        links.append(Link(parsed[0], parsed[1]))
    return tuple(links)
