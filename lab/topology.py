"""containerlab topology files (`*.clab.yml`) parsed into typed, validated values.

The file is containerlab's (docs/lab.md, "Topology format"): what a network-namespace lab can honour is
resolved as containerlab resolves it, and what it cannot is refused by name rather than read differently.

- Node properties come from four levels: `topology.defaults`, `topology.kinds.<kind>`,
  `topology.groups.<group>` and the node; a single value (kind, image, group) is the most specific one set
  (node > group > kind > defaults), `exec` lists are joined (defaults, kind, group, node: in that order),
  `binds` are merged by their path in the node (the more specific level wins), `env` and `labels` are merged
  key by key.
- Kinds: `linux` (a namespace, its exec commands run in it) and `bridge` (a namespace holding a Linux bridge
  named after the node, every link of the node a port of it). Any other kind is refused, naming the node.
- Links: the brief form (`endpoints: ["a:eth1", "b:eth1"]`, with optional `mtu`, `ipv4`, `ipv6`) and the
  extended form of type `veth` (`type: veth, endpoints: [{node:, interface:, mac:, ipv4:, ipv6:}, ...]`).
  Other link types (host, mgmt-net, macvlan, vxlan, dummy, ...) are refused, naming the link.
- A node's daemon: an exec command that starts `nvfabric rr|agent|gateway` (alone or wrapped in `setsid`,
  `nohup`, `sh -c '...'`) is recognised; its configuration is the `--config` path (else the daemon's default,
  /etc/nvfabric/ROLE.yaml) as a path in the node, and the node's bind for that path names the file on this
  machine. The namespace runner does not run that command (it needs the node image's filesystem); it starts
  the daemon itself from the same file (lab/runner.py).
- Kept but not interpreted: image, labels (but ROLE_LABEL, below), mgmt, and the rest of the schema's node
  keys; they matter to containerlab only.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

# Lab and node names become namespace names "<lab>.<node>": the dot cannot occur in either, so the
# prefix of one lab never matches the namespaces of another (hnv vs hnv2).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
# Linux interface names: at most 15 bytes, no '/', no whitespace, not '.' or '..'.
IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")
SUPPORTED_KINDS = ("linux", "bridge")
LINK_TYPES = ("veth",)
# The brief link form names these pseudo-nodes for host, management and macvlan links.
SPECIAL_ENDPOINTS = ("host", "mgmt-net", "macvlan")
ROLES = ("rr", "agent", "gateway")
# A linux node without a daemon says so with this label (value "network"): a switch or a router built by its
# exec commands alone; tests check every node of our topologies either starts a daemon or carries it.
ROLE_LABEL = "nvfabric.node"


class TopologyError(ValueError):
    """A topology file that cannot be built; the message names the file, the key and the node."""

    def __init__(self, where: str, problem: str, source: str | None = None) -> None:
        self.where = where
        self.problem = problem
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{where}: {problem}")


@dataclass(frozen=True)
class Bind:
    host: Path  # on this machine; a relative path in the file is relative to the file's folder, as in containerlab
    node: PurePosixPath  # the path inside the node
    mode: str = ""  # "ro", "rw", ... as written after the second colon

    @classmethod
    def parse(cls, text: str, base: Path) -> Bind:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise ValueError(f"{text!r} is not of the form 'host-path:node-path[:mode]'")
        host = Path(os.path.expandvars(os.path.expanduser(parts[0])))
        node = PurePosixPath(parts[1])
        if not node.is_absolute():
            raise ValueError(f"{text!r}: the path in the node, {parts[1]!r}, must be absolute")
        return cls(host if host.is_absolute() else base / host, node, parts[2] if len(parts) == 3 else "")


@dataclass(frozen=True)
class Daemon:
    role: str  # rr | agent | gateway
    config: PurePosixPath  # the configuration's path inside the node
    exec_index: int  # which of the node's exec commands starts it


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    exec: tuple[tuple[str, ...], ...]  # each command already split into argv, as containerlab does
    image: str | None = None
    group: str | None = None
    binds: tuple[Bind, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    daemon: Daemon | None = None

    @property
    def setup(self) -> tuple[tuple[str, ...], ...]:
        """The exec commands the namespace runner runs: all but the daemon's."""
        return tuple(argv for i, argv in enumerate(self.exec) if self.daemon is None or i != self.daemon.exec_index)

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)

    def host_path(self, path: PurePosixPath) -> Path | None:
        """The file on this machine that a bind puts at `path` in the node (a bound folder counts)."""
        for bind in self.binds:
            if path == bind.node:
                return bind.host
            if bind.node in path.parents:
                return bind.host / path.relative_to(bind.node)
        return None

    @property
    def daemon_config(self) -> Path | None:
        """The daemon's configuration file on this machine (its bind's source), None without a daemon."""
        return None if self.daemon is None else self.host_path(self.daemon.config)


@dataclass(frozen=True)
class Endpoint:
    node: str
    interface: str
    mac: str | None = field(default=None, compare=False)
    addresses: tuple[str, ...] = field(default=(), compare=False)  # CIDR, from the link's ipv4/ipv6

    def __str__(self) -> str:
        return f"{self.node}:{self.interface}"


@dataclass(frozen=True)
class Link:
    a: Endpoint
    b: Endpoint
    mtu: int | None = None


@dataclass(frozen=True)
class Topology:
    name: str
    nodes: dict[str, Node]
    links: tuple[Link, ...]

    def namespace(self, node: str) -> str:
        return namespace_name(self.name, node)

    def daemons(self) -> dict[str, Node]:
        """The nodes that start an nvfabric daemon, by name."""
        return {name: node for name, node in self.nodes.items() if node.daemon is not None}


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
        return parse(text, path.resolve().parent)
    except TopologyError as exc:
        raise TopologyError(exc.where, exc.problem, str(path)) from None


def parse(text: str, base: Path | None = None) -> Topology:
    """`base`: the folder relative bind paths are read from (the file's own; the working one by default)."""
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
    levels = _Levels.read(topo)
    nodes = _parse_nodes(topo.get("nodes"), levels, base or Path.cwd())
    links = _parse_links(topo.get("links") or [], nodes)
    return Topology(name=name, nodes=nodes, links=links)


@dataclass(frozen=True)
class _Levels:
    """topology.defaults, .kinds and .groups: what a node inherits."""

    defaults: dict[str, Any]
    kinds: dict[str, dict[str, Any]]
    groups: dict[str, dict[str, Any]]

    @classmethod
    def read(cls, topo: dict[str, Any]) -> _Levels:
        defaults = _mapping(topo.get("defaults"), "topology.defaults")
        kinds = {k: _mapping(v, f"topology.kinds.{k}")
                 for k, v in _mapping(topo.get("kinds"), "topology.kinds").items()}
        groups = {g: _mapping(v, f"topology.groups.{g}")
                  for g, v in _mapping(topo.get("groups"), "topology.groups").items()}
        return cls(defaults, kinds, groups)

    def chain(self, spec: dict[str, Any], where: str) -> tuple[str, str | None, list[tuple[str, dict[str, Any]]]]:
        """The node's kind, group, and its levels from the least to the most specific, each with its key
        (for errors): defaults, kind, group, node (containerlab's GetNodeKind and GetNodeGroup)."""
        group = spec.get("group")
        kind = (spec.get("kind") or (self.groups.get(group, {}).get("kind") if group else None)
                or self.groups.get(self.defaults.get("group") or "", {}).get("kind") or self.defaults.get("kind"))
        if not kind:
            raise TopologyError(f"{where}.kind", "no kind: set `kind` on the node, its group or topology.defaults "
                                "(containerlab refuses a node without one)")
        if not isinstance(kind, str):
            raise TopologyError(f"{where}.kind", f"{kind!r} is not a kind name")
        group = group or self.kinds.get(kind, {}).get("group") or self.defaults.get("group")
        if group is not None and not isinstance(group, str):
            raise TopologyError(f"{where}.group", f"{group!r} is not a group name")
        if group and group not in self.groups:
            raise TopologyError(f"{where}.group", f"group {group!r} is not defined in topology.groups")
        chain = [("topology.defaults", self.defaults), (f"topology.kinds.{kind}", self.kinds.get(kind, {}))]
        if group:
            chain.append((f"topology.groups.{group}", self.groups[group]))
        chain.append((where, spec))
        return kind, group or None, chain


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TopologyError(where, "must be a mapping")
    return value


def _parse_nodes(raw: Any, levels: _Levels, base: Path) -> dict[str, Node]:
    if not isinstance(raw, dict) or not raw:
        raise TopologyError("topology.nodes", "missing or empty; it must map node names to node definitions")
    nodes: dict[str, Node] = {}
    for node_name, spec in raw.items():
        where = f"topology.nodes.{node_name}"
        check_name(node_name, where, "node name")
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise TopologyError(where, "must be a mapping")
        kind, group, chain = levels.chain(spec, where)
        if kind not in SUPPORTED_KINDS:
            raise TopologyError(f"{where}.kind", f"node {node_name}: kind {kind}: the namespace runner runs only "
                                f"{' and '.join(SUPPORTED_KINDS)} nodes")
        for key, level in chain:
            stages = level.get("stages")
            if isinstance(stages, dict) and any(isinstance(v, dict) and "exec" in v for v in stages.values()):
                raise TopologyError(f"{key}.stages", f"node {node_name}: the namespace runner does not run stage "
                                    "commands (exec per stage); put them in `exec`")
        image = next((level["image"] for _, level in reversed(chain) if level.get("image")), None)
        argvs = [argv for key, level in chain for argv in _exec(level.get("exec"), f"{key}.exec")]
        if kind == "bridge":
            # no container to run them in: the defaults' commands are for the others, the node's own refused
            for key, level in chain[1:]:
                if level.get("exec"):
                    raise TopologyError(f"{key}.exec", f"node {node_name}: a bridge node has no container to run "
                                        "exec in")
            argvs = []
        if kind == "bridge" and not IFNAME_RE.match(node_name):
            raise TopologyError(where, f"node {node_name}: a bridge is named after its node: at most 15 characters")
        binds: dict[PurePosixPath, Bind] = {}
        for key, level in chain:
            for i, text in enumerate(_strings(level.get("binds"), f"{key}.binds")):
                try:
                    bind = Bind.parse(text, base)
                except ValueError as exc:
                    raise TopologyError(f"{key}.binds[{i}]", str(exc)) from None
                binds[bind.node] = bind  # more specific levels come later and win
        env = {k: v for key, level in chain for k, v in _string_map(level.get("env"), f"{key}.env").items()}
        labels = {k: v for key, level in chain for k, v in _string_map(level.get("labels"), f"{key}.labels").items()}
        node = Node(name=node_name, kind=kind, exec=tuple(argvs), image=image, group=group,
                    binds=tuple(binds.values()), env=tuple(env.items()), labels=tuple(labels.items()))
        nodes[node_name] = _with_daemon(node, where)
    return nodes


def _exec(commands: Any, where: str) -> list[tuple[str, ...]]:
    if commands is None:
        return []
    if not isinstance(commands, list):
        raise TopologyError(where, "must be a list of commands")
    argvs = []
    for i, command in enumerate(commands):
        if not isinstance(command, str) or not command.strip():
            raise TopologyError(f"{where}[{i}]", "must be a non-empty string")
        try:
            argvs.append(tuple(shlex.split(command)))
        except ValueError as exc:
            raise TopologyError(f"{where}[{i}]", f"cannot be split into words: {exc}") from None
    return argvs


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TopologyError(where, "must be a list of strings")
    return value


def _string_map(value: Any, where: str) -> dict[str, str]:
    value = _mapping(value, where)
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or isinstance(v, (dict, list)) or v is None:
            raise TopologyError(f"{where}.{k}", "must map names to strings")
        out[k] = v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
    return out


# Words that end the daemon's command inside a `sh -c` script: redirections and command separators.
_SCRIPT_END = re.compile(r"^(\d*>>?|\d*>&\d*|&>>?|<|;|&&|\|\|?|&)")


def daemon_argv(argv: tuple[str, ...]) -> tuple[str, ...] | None:
    """The `nvfabric ROLE ...` words of an exec command that starts a daemon, else None.

    The daemon is `nvfabric ROLE` with options only (a further word is a client command: `nvfabric rr status`).
    What is peeled: `setsid [-f|--fork|-w|--wait]`, `nohup`, `env [NAME=VALUE]...`, `sh|bash -c SCRIPT`
    (whose first command is read up to a redirection or separator), a leading `exec`."""
    words = list(argv)
    while words:
        head = PurePosixPath(words[0]).name
        if head == "setsid":
            words = words[1:]
            while words and words[0] in ("-f", "--fork", "-w", "--wait", "-c", "--ctty"):
                words = words[1:]
        elif head in ("nohup", "exec"):
            words = words[1:]
        elif head == "env":
            words = words[1:]
            while words and "=" in words[0] and not words[0].startswith("-"):
                words = words[1:]
        elif head in ("sh", "bash", "dash") and len(words) >= 3 and words[1] == "-c":
            try:
                script = shlex.split(words[2])
            except ValueError:
                return None
            end = next((i for i, w in enumerate(script) if _SCRIPT_END.match(w)), len(script))
            words = script[:end]
        else:
            break
    if len(words) < 2 or PurePosixPath(words[0]).name != "nvfabric" or words[1] not in ROLES:
        return None
    # `nvfabric rr status`, `nvfabric gateway tenants`, `nvfabric agent --version`: clients, not the daemon
    rest = words[2:]
    for i, word in enumerate(rest):
        if word in _NOT_DAEMON:
            return None
        if not word.startswith("-") and not (i and rest[i - 1] in _VALUED and "=" not in rest[i - 1]):
            return None
    return tuple(words)


# Options of `nvfabric ROLE` that take a value, and those that make it print and exit.
_VALUED = ("--config", "--log-level", "--log-format", "--api", "--token", "-o")
_NOT_DAEMON = ("-h", "--help", "--version")


def _with_daemon(node: Node, where: str) -> Node:
    found = [(i, words) for i, argv in enumerate(node.exec) if (words := daemon_argv(argv)) is not None]
    if not found:
        return node
    if len(found) > 1:
        roles = ", ".join(words[1] for _, words in found)
        raise TopologyError(f"{where}.exec", f"node {node.name}: starts more than one daemon ({roles}): one a node")
    index, words = found[0]
    role = words[1]
    config = PurePosixPath(f"/etc/nvfabric/{role}.yaml")  # the daemons' default path
    for i, word in enumerate(words):
        if word == "--config" and i + 1 < len(words):
            config = PurePosixPath(words[i + 1])
        elif word.startswith("--config="):
            config = PurePosixPath(word.split("=", 1)[1])
    node = dataclasses.replace(node, daemon=Daemon(role, config, index))
    if node.daemon_config is None:
        raise TopologyError(f"{where}.exec", f"node {node.name}: starts nvfabric {role} with {config}, which no bind "
                            "of the node provides (the namespace runner reads the daemon's configuration through "
                            "its bind)")
    return node


def _parse_links(raw: Any, nodes: dict[str, Node]) -> tuple[Link, ...]:
    if not isinstance(raw, list):
        raise TopologyError("topology.links", "must be a list")
    links = []
    used: dict[Endpoint, int] = {}
    for i, spec in enumerate(raw):
        where = f"topology.links[{i}]"
        if not isinstance(spec, dict):
            raise TopologyError(where, "must be a mapping with 'endpoints'")
        kind = spec.get("type")
        if kind is not None and kind not in LINK_TYPES:
            raise TopologyError(f"{where}.type", f"link type {kind!r}: the namespace runner builds only veth links "
                                "(the brief form or `type: veth`)")
        if "endpoints" not in spec:
            raise TopologyError(where, "must be a mapping with 'endpoints'")
        endpoints = spec["endpoints"]
        if not isinstance(endpoints, list) or len(endpoints) != 2:
            raise TopologyError(f"{where}.endpoints", "must be a list of two endpoints: 'node:interface' strings, "
                                "or {node:, interface:} mappings with `type: veth`")
        if kind is None:
            parsed = _brief_endpoints(endpoints, spec, where, nodes)
        else:
            parsed = [_long_endpoint(e, f"{where}.endpoints[{j}]", nodes) for j, e in enumerate(endpoints)]
        for j, endpoint in enumerate(parsed):
            if endpoint in used:
                raise TopologyError(f"{where}.endpoints[{j}]",
                                    f"{endpoint} is already used by topology.links[{used[endpoint]}]")
            used[endpoint] = i
        mtu = spec.get("mtu")
        if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 65535):
            raise TopologyError(f"{where}.mtu", f"{mtu!r} is not an MTU (68-65535)")
        links.append(Link(parsed[0], parsed[1], mtu))
    return tuple(links)


def _brief_endpoints(endpoints: list[Any], spec: dict[str, Any], where: str,
                     nodes: dict[str, Node]) -> list[Endpoint]:
    addresses: list[list[str]] = [[], []]
    for family in ("ipv4", "ipv6"):
        values = spec.get(family)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) > 2 or not all(isinstance(v, str) for v in values):
            raise TopologyError(f"{where}.{family}", "must be a list of up to two prefixes, one an endpoint")
        for j, value in enumerate(values):
            if value:
                addresses[j].append(value)
    parsed = []
    for j, text in enumerate(endpoints):
        ewhere = f"{where}.endpoints[{j}]"
        if not isinstance(text, str) or text.count(":") != 1:
            raise TopologyError(ewhere, f"{text!r} is not of the form 'node:interface'")
        node, iface = text.split(":")
        parsed.append(_endpoint(node, iface, ewhere, nodes, None, tuple(addresses[j])))
    return parsed


def _long_endpoint(raw: Any, where: str, nodes: dict[str, Node]) -> Endpoint:
    if not isinstance(raw, dict) or not isinstance(raw.get("node"), str) or not isinstance(raw.get("interface"), str):
        raise TopologyError(where, f"{raw!r} is not a mapping with `node` and `interface`")
    unknown = set(raw) - {"node", "interface", "mac", "ipv4", "ipv6", "vars"}
    if unknown:
        raise TopologyError(where, f"unknown keys {', '.join(sorted(unknown))}")
    addresses = tuple(raw[f] for f in ("ipv4", "ipv6") if raw.get(f))
    return _endpoint(raw["node"], raw["interface"], where, nodes, raw.get("mac"), addresses)


def _endpoint(node: str, iface: str, where: str, nodes: dict[str, Node], mac: str | None,
              addresses: tuple[str, ...]) -> Endpoint:
    if node not in nodes:
        if node in SPECIAL_ENDPOINTS:
            raise TopologyError(where, f"a {node} endpoint: the namespace runner links only the topology's own nodes")
        raise TopologyError(where, f"node {node!r} is not defined in topology.nodes")
    if not IFNAME_RE.match(iface):
        raise TopologyError(where, f"interface name {iface!r} is not a valid Linux name (max 15 chars)")
    if iface == "lo":
        raise TopologyError(where, "interface name 'lo' is reserved")
    if mac is not None and not re.fullmatch(r"(?:[0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}", str(mac)):
        raise TopologyError(f"{where}.mac", f"{mac!r} is not a MAC address")
    return Endpoint(node, iface, mac, addresses)
