"""ExaBGP is imported by bgp/wire.py and nowhere else (style: one talker per foreign system)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {ROOT / "bgp" / "wire.py"}
SKIP_PARTS = {".venv", ".git", "node_modules", "build", "dist", "__pycache__"}


def imported_modules(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
            "import_module", "__import__"
        ) and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value))
    return names


def test_only_wire_imports_exabgp():
    offenders = []
    checked = 0
    for path in ROOT.rglob("*.py"):
        if SKIP_PARTS & set(path.relative_to(ROOT).parts) or path in ALLOWED:
            continue
        checked += 1
        if any(m == "exabgp" or m.startswith("exabgp.") for m in imported_modules(path.read_text())):
            offenders.append(str(path.relative_to(ROOT)))
    assert checked > 5  # the scan really walked the tree
    assert offenders == []


def test_the_scan_detects_an_import():
    assert "exabgp.bgp.message" in imported_modules("from exabgp.bgp.message import Update")
    assert "exabgp" in imported_modules("import exabgp")
    assert "exabgp.protocol" in imported_modules("importlib.import_module('exabgp.protocol')")


def test_wire_does_import_exabgp():
    assert any(m.startswith("exabgp") for m in imported_modules((ROOT / "bgp" / "wire.py").read_text()))
