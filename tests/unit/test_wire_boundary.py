"""ExaBGP is imported by bgp/wire/exa.py and nowhere else, not even by the rest of bgp/wire/
(style: one talker per foreign system)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXA = ROOT / "bgp" / "wire" / "exa.py"
ALLOWED = {EXA}
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


def scan(root: Path, allowed: set[Path]) -> tuple[list[str], int]:
    """(files under root importing ExaBGP other than allowed, how many files were checked)."""
    offenders = []
    checked = 0
    for path in root.rglob("*.py"):
        if SKIP_PARTS & set(path.relative_to(root).parts) or path in allowed:
            continue
        checked += 1
        if any(m == "exabgp" or m.startswith("exabgp.") for m in imported_modules(path.read_text())):
            offenders.append(str(path.relative_to(root)))
    return offenders, checked


def test_only_wire_exa_imports_exabgp():
    offenders, checked = scan(ROOT, ALLOWED)
    assert checked > 5  # the scan really walked the tree
    assert offenders == []


def test_the_scan_flags_another_wire_module(tmp_path):
    wire = tmp_path / "bgp" / "wire"
    wire.mkdir(parents=True)
    (wire / "exa.py").write_text("from exabgp.bgp.message import Update\n")
    (wire / "update.py").write_text("import exabgp.protocol.family\n")
    (wire / "raw.py").write_text("from bgp.wire.exa import attributes_bytes\n")
    assert scan(tmp_path, {wire / "exa.py"})[0] == [str(Path("bgp", "wire", "update.py"))]


def test_the_scan_detects_an_import():
    assert "exabgp.bgp.message" in imported_modules("from exabgp.bgp.message import Update")
    assert "exabgp" in imported_modules("import exabgp")
    assert "exabgp.protocol" in imported_modules("importlib.import_module('exabgp.protocol')")


def test_wire_exa_does_import_exabgp():
    assert any(m.startswith("exabgp") for m in imported_modules(EXA.read_text()))
