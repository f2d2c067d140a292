"""The layers of the tree, kept by parsing every module (nothing is imported or run):

    nvfabric.bgp (bgp/; bgp/reflector/ may import the rest of bgp, not the other way)
        <- nvfabric.vnet
            <- nvfabric.hostagent | nvfabric.gateway   (peers: neither imports the other)
                <- the nvfabric shell (nvfabric/*.py: imports everything, imported by nothing)
    nvfabric.service: a leaf beside them all (imports no other nvfabric package, imported by any)
    lab, bench, tests on top (bench imports nothing from tests)

Three rules, each failure named file:line and rule:
- layers: an import that goes the wrong way, or an old un-namespaced one (`import bgp`, `from lab ...`);
- private: a leading-underscore name imported from another top-level package;
- systems: only the modules that own an outside system start processes or talk netlink/nftables/setns
  (subprocess, pyroute2, ctypes, os.system/popen, asyncio.create_subprocess_*), and only bgp/wire/exa.py
  imports ExaBGP (style: one talker per foreign system); lab, bench and tests are test equipment and may
  (and tests may import a module's private names: they test its internals).
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# --- the one place that says what may import what ------------------------------------------------------
# A unit is a layer of the picture above. MAY_IMPORT: the units each unit may import (itself included).
PRODUCT = ("service", "bgp", "bgp.reflector", "vnet", "hostagent", "gateway")
MAY_IMPORT: dict[str, frozenset[str]] = {
    "service": frozenset({"service"}),
    "bgp": frozenset({"bgp", "service"}),
    "bgp.reflector": frozenset({"bgp", "bgp.reflector", "service"}),
    "vnet": frozenset({"bgp", "vnet", "service"}),
    "hostagent": frozenset({"bgp", "vnet", "service", "hostagent"}),
    "gateway": frozenset({"bgp", "vnet", "service", "gateway"}),
    "lab": frozenset({*PRODUCT, "lab"}),
    "shell": frozenset({*PRODUCT, "lab", "shell"}),
    "bench": frozenset({*PRODUCT, "lab", "shell", "bench"}),
    "tests": frozenset({*PRODUCT, "lab", "shell", "bench", "tests"}),
}
# Folders of the repository that are not installed packages but are scanned too.
EXTRA_FOLDERS = {"bench": "bench", "tests": "tests"}
# Outside systems and the only places that may talk to them (paths relative to the repository; a folder
# ends with '/'). lab/, bench/ and tests/ run the lab's processes and namespaces.
EQUIPMENT = ("lab/", "bench/", "tests/")
KERNEL = ("vnet/kernel/", "vnet/nftables.py")
SYSTEM_OWNERS: dict[str, tuple[str, ...]] = {
    # gateway/conntrackd.py: the gateway's conntrackd, a child daemon, and its client commands (-s, -R, -n);
    # gateway/strongswan.py: the gateway's charon, a child daemon driven over vici
    "subprocess": (*KERNEL, *EQUIPMENT, "gateway/conntrackd.py", "gateway/strongswan.py"),
    "vici": ("gateway/strongswan.py",),
    "pyroute2": (*KERNEL, *EQUIPMENT),
    "ctypes": (*KERNEL, *EQUIPMENT),
    "exabgp": ("bgp/wire/exa.py",),
}
PROCESS_CALLS = {("os", "system"), ("os", "popen"), ("asyncio", "create_subprocess_exec"),
                 ("asyncio", "create_subprocess_shell")}
OLD_NAMES = {"bgp", "vnet", "hostagent", "gateway", "lab", "service"}  # before the nvfabric namespace
SKIP_PARTS = {".venv", ".git", "node_modules", "build", "dist", "__pycache__"}


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.detail}"


def package_folders(root: Path) -> dict[str, str]:
    """Installed package name -> folder, as pyproject.toml maps them (a new package is scanned at once)."""
    with open(root / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["tool"]["setuptools"]["package-dir"])


def unit_of_module(module: str) -> str | None:
    """The unit an imported module belongs to; None for a module outside the repository."""
    parts = module.rstrip(".").split(".")
    if parts[0] in ("tests", "bench"):
        return parts[0]
    if parts[0] != "nvfabric":
        return None
    if len(parts) == 1:
        return "shell"
    if parts[1] == "bgp":
        return "bgp.reflector" if parts[2:3] == ["reflector"] else "bgp"
    return parts[1] if parts[1] in MAY_IMPORT else "shell"  # nvfabric.cli, nvfabric.rest: the shell's modules


def module_of_path(rel: Path, folders: dict[str, str]) -> str | None:
    """The dotted name a repository file is imported as (nvfabric.bgp.wire.exa), None if it is in no package."""
    for package, folder in sorted(folders.items(), key=lambda kv: -len(Path(kv[1]).parts)):
        folder_parts = Path(folder).parts
        if rel.parts[: len(folder_parts)] == folder_parts:
            rest = list(rel.with_suffix("").parts[len(folder_parts):])
            if rest and rest[-1] == "__init__":
                rest.pop()
            return ".".join([package, *rest])
    return None


def imports(tree: ast.AST, module: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) for every import, at any depth, relative ones resolved."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: -node.level]
                base = ".".join([*anchor, *([base] if base else [])])
            out.append((node.lineno, base, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
            "import_module", "__import__"
        ) and node.args and isinstance(node.args[0], ast.Constant):
            out.append((node.lineno, str(node.args[0].value), []))
    return out


def process_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """os.system(...), asyncio.create_subprocess_exec(...) and the like: a process started without subprocess."""
    return [(node.lineno, f"{node.func.value.id}.{node.func.attr}") for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and (node.func.value.id, node.func.attr) in PROCESS_CALLS]


def top_package(unit: str) -> str:
    return unit.split(".")[0]


def owns(rel: str, owners: tuple[str, ...]) -> bool:
    return any(rel.startswith(o) if o.endswith("/") else rel == o for o in owners)


def check_file(rel: Path, source: str, module: str, unit: str) -> list[Violation]:
    tree = ast.parse(source)
    path = rel.as_posix()
    found: list[Violation] = []
    for line, imported, names in imports(tree, module):
        top = imported.split(".")[0]
        if top in OLD_NAMES:
            found.append(Violation(path, line, "layers", f"un-namespaced import of {imported} (nvfabric.{imported})"))
        # `from nvfabric import vnet` imports nvfabric.vnet, not the shell: each name is judged as module.name
        for target in sorted({unit_of_module(f"{imported}.{name}") for name in names or [""]} - {None}):
            if target not in MAY_IMPORT[unit]:
                allowed = ", ".join(sorted(MAY_IMPORT[unit] - {unit})) or "no other nvfabric package"
                found.append(Violation(path, line, "layers",
                                       f"{unit} imports {imported} ({target}); {unit} may import {allowed}"))
        target = unit_of_module(imported)
        if target is not None and top_package(target) != top_package(unit) and unit != "tests":
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    found.append(Violation(path, line, "private", f"{name} imported from {imported} into {unit}"))
        if top in SYSTEM_OWNERS and not owns(path, SYSTEM_OWNERS[top]):
            found.append(Violation(path, line, "systems", f"imports {imported}; only "
                                   f"{', '.join(SYSTEM_OWNERS[top])} may"))
    if not owns(path, SYSTEM_OWNERS["subprocess"]):
        found += [Violation(path, line, "systems", f"{call}() starts a process; only "
                            f"{', '.join(SYSTEM_OWNERS['subprocess'])} may") for line, call in process_calls(tree)]
    return found


def scan(root: Path, folders: dict[str, str]) -> tuple[list[Violation], int]:
    """(every violation under the folders, how many files were checked). `folders`: package -> folder."""
    found: list[Violation] = []
    checked = 0
    for package, folder in folders.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root)
            if SKIP_PARTS & set(rel.parts):
                continue
            module = module_of_path(rel, folders) or package
            unit = unit_of_module(module)
            if unit is None or (unit == "shell" and package != "nvfabric"):
                found.append(Violation(rel.as_posix(), 1, "layers", f"{module} is in no layer (add it to MAY_IMPORT)"))
                continue
            checked += 1
            found += check_file(rel, path.read_text(), module, unit)
    return found, checked


def test_the_tree_keeps_its_layers():
    found, checked = scan(ROOT, {**package_folders(ROOT), **EXTRA_FOLDERS})
    assert checked > 100  # the scan really walked the tree
    assert not found, f"{len(found)} violations:\n" + "\n".join(map(str, found))


# --- the scan itself, on a small tree ------------------------------------------------------------------
FOLDERS = {"nvfabric": "nvfabric", "nvfabric.bgp": "bgp", "nvfabric.vnet": "vnet",
           "nvfabric.hostagent": "hostagent", "nvfabric.gateway": "gateway", "nvfabric.lab": "lab",
           "bench": "bench", "tests": "tests"}


def scan_of(tmp_path: Path, files: dict[str, str]) -> list[str]:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return sorted(f"{v.path}:{v.line}: {v.rule}" for v in scan(tmp_path, FOLDERS)[0])


def test_a_wrong_way_import_is_named_with_file_and_line(tmp_path):
    assert scan_of(tmp_path, {
        "vnet/model.py": "from nvfabric.bgp.routes import Route\n",
        "gateway/evpn.py": "import os\nfrom nvfabric.hostagent import learn\n",
        "hostagent/ctl.py": "def f():\n    from nvfabric.gateway import ctl\n",
        "bgp/speaker.py": "from nvfabric.vnet.model import Port\n",
        "hostagent/api.py": "from nvfabric.rest import app\nfrom nvfabric import vnet\n",
        "gateway/api.py": "from nvfabric import cli, vnet\n",
        "lab/demo.py": "from nvfabric.hostagent.thread import AgentThread\nfrom nvfabric.cli import main\n",
        "bench/x.py": "from tests.integration.peers import Lab\nfrom nvfabric.lab.peers import Lab\n",
        "tests/unit/test_x.py": "from nvfabric.cli import main\nfrom bench import x\n",
    }) == ["bench/x.py:1: layers", "bgp/speaker.py:1: layers", "gateway/api.py:1: layers", "gateway/evpn.py:2: layers",
           "hostagent/api.py:1: layers", "hostagent/ctl.py:2: layers", "lab/demo.py:2: layers"]


def test_old_names_private_names_and_processes_are_refused(tmp_path):
    assert scan_of(tmp_path, {
        "lab/fabric.py": "from lab import netns\nimport subprocess\n",
        "gateway/config.py": "from nvfabric.bgp.config import _Reader\nfrom nvfabric.gateway.nat import _x\n",
        "gateway/dataplane.py": "import asyncio\nasync def f():\n    await asyncio.create_subprocess_exec('tc')\n",
        "hostagent/cli.py": "import ctypes\nimport os\nos.system('ip')\n",
        "vnet/kernel/netns.py": "import ctypes\nimport subprocess\n",
        "bgp/wire/update.py": "import exabgp.protocol.family\n",
        "bgp/wire/exa.py": "from exabgp.bgp.message import Update\n",
        "tests/unit/test_y.py": "import subprocess\nfrom nvfabric.bgp.config import _Reader\n",
    }) == ["bgp/wire/update.py:1: systems", "gateway/config.py:1: private", "gateway/dataplane.py:3: systems",
           "hostagent/cli.py:1: systems", "hostagent/cli.py:3: systems", "lab/fabric.py:1: layers"]


def test_a_package_outside_the_picture_is_named(tmp_path):
    (tmp_path / "newthing").mkdir()
    (tmp_path / "newthing" / "x.py").write_text("")
    assert [str(v) for v in scan(tmp_path, {"nvfabric.newthing": "newthing"})[0]] == [
        "newthing/x.py:1: layers: nvfabric.newthing.x is in no layer (add it to MAY_IMPORT)"]


def test_relative_and_dynamic_imports_are_seen():
    tree = ast.parse("from . import learn\nfrom ..vnet import model\nimportlib.import_module('exabgp.protocol')\n")
    assert [m for _, m, _ in imports(tree, "nvfabric.hostagent.agent")] == [
        "nvfabric.hostagent", "nvfabric.vnet", "exabgp.protocol"]


def test_wire_exa_does_import_exabgp():
    exa = ROOT / "bgp" / "wire" / "exa.py"
    assert any(m.startswith("exabgp") for _, m, _ in imports(ast.parse(exa.read_text()), "nvfabric.bgp.wire.exa"))
