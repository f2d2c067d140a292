"""What the isolation benchmarks (isolation_throughput.py, isolation_programming.py) switch and count.

The switch points are here, each one small function, so they can follow the product's code as it changes:
- `port_with_security(port, on)`: the port as the orchestrator would send it with `port_security` on or off
  (through the agent's API, the product's own switch); a tree whose Port has no such field has no port
  security, and the port is returned unchanged;
- `decap_bypass(ns, on)`: the baseline for decapsulation checks, which have no switch: a first rule
  `accept` for GRE and one for what arrives on the NVGRE devices in every base chain (prerouting, input,
  forward) of the agent's table `inet nvfabric`, so nothing after them in that table runs for tunnel
  traffic; removed again for "with" (an accept ends only its own base chain: other tables, and chains on
  other hooks, e.g. `ingress`, still run);
- `NftCount`: counts what every `vnet.nftables.Nft` in this process writes (set elements added and deleted,
  rules, whole tables), JSON or nft's own language, by wrapping `Nft._command` (the one path of both) in the
  bench, not in product code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import threading
from collections import Counter
from pathlib import Path

from nvfabric.vnet.model import Port
from nvfabric.vnet.nftables import Nft

AGENT_TABLE = ("inet", "nvfabric")
BYPASS_COMMENT = "nvfabric-bench: baseline, decapsulation checks bypassed"
NVGRE_DEVICES = ["nvf-gre4", "nvf-gre6"]


def machine() -> str:
    """Kernel, CPUs and commit, for the benchmarks' first line."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent, check=False).stdout.strip()
    return f"kernel {platform.release()}, {os.cpu_count()} CPUs ({cpu}), commit {commit or '?'}"


def has_port_security() -> bool:
    return "port_security" in {f.name for f in dataclasses.fields(Port)}


def port_with_security(port: Port, on: bool) -> Port:
    """The port with port security on or off (unchanged where Port has no `port_security`)."""
    if not has_port_security():
        return port
    return dataclasses.replace(port, port_security=on)  # type: ignore[call-arg]


# ---------------------------------------------------------------------------------- decapsulation baseline


def _rules(doc: dict) -> list[dict]:
    return [item["rule"] for item in doc.get("nftables", []) if "rule" in item]


def _base_chains(doc: dict) -> list[str]:
    return [item["chain"]["name"] for item in doc.get("nftables", [])
            if "chain" in item and item["chain"].get("hook") in ("prerouting", "input", "forward")]


async def _table(nft: Nft) -> dict | None:
    try:
        return await nft.list_json("table", *AGENT_TABLE)
    except Exception:  # noqa: BLE001 - no table: nothing to bypass
        return None


async def decap_bypass(ns: str, on: bool) -> int:
    """Baseline on (`on`) or off for the agent's table in namespace `ns`. Returns how many bypass rules are
    in the kernel afterwards (one per base chain when on, 0 when off)."""
    nft = Nft(ns)
    doc = await _table(nft)
    if doc is None:
        return 0
    family, table = AGENT_TABLE
    ours = [r for r in _rules(doc) if r.get("comment") == BYPASS_COMMENT]
    cmds: list[dict] = []
    if on and not ours:
        for chain in _base_chains(doc):
            for match in ({"left": {"meta": {"key": "l4proto"}}, "right": "gre"},
                          {"left": {"meta": {"key": "iifname"}}, "right": {"set": NVGRE_DEVICES}}):
                # `insert` without a position: the first rule of the chain
                cmds.append({"insert": {"rule": {
                    "family": family, "table": table, "chain": chain, "comment": BYPASS_COMMENT,
                    "expr": [{"match": {"op": "==", **match}}, {"counter": None}, {"accept": None}]}}})
    elif not on:
        cmds = [{"delete": {"rule": {"family": family, "table": table, "chain": r["chain"], "handle": r["handle"]}}}
                for r in ours]
    if cmds:
        await nft.transaction("bench baseline", {"nftables": [{"metainfo": {"json_schema_version": 1}}, *cmds]})
    after = await _table(nft)
    return len([r for r in _rules(after or {}) if r.get("comment") == BYPASS_COMMENT])


async def bypass_state(ns: str) -> tuple[int, int]:
    """(bypass rules in the kernel, packets they accepted so far): a rule that vanished during a run (its
    table replaced by its owner) would make the baseline silently "with"."""
    doc = await _table(Nft(ns)) or {}
    rules = [r for r in _rules(doc) if r.get("comment") == BYPASS_COMMENT]
    packets = sum(e["counter"]["packets"] for r in rules for e in r["expr"] if isinstance(e.get("counter"), dict))
    return len(rules), packets


# ---------------------------------------------------------------------------------- counting nft writes


def count_doc(doc: dict) -> Counter[str]:
    """What one JSON transaction writes: `elements+`/`elements-` (set or map elements added/deleted), `rules`,
    `tables` (a table added: a whole-table write), `sets`, `chains`; keyed also by table
    (`elements+ inet nvfabric`)."""
    out: Counter[str] = Counter()
    tables: set[str] = set()  # a replace is add + delete + add of the table: one whole-table write
    for cmd in doc.get("nftables", []):
        for verb, body in cmd.items():
            if verb == "metainfo" or not isinstance(body, dict):
                continue
            for kind, obj in body.items():
                if kind == "element":
                    n = len(obj.get("elem", []))
                    key = "elements+" if verb in ("add", "create") else "elements-"
                    out[key] += n
                    out[f"{key} {obj.get('family')} {obj.get('table')}"] += n
                elif verb in ("add", "create") and kind == "table":
                    tables.add(f"{obj.get('family')} {obj.get('name')}")
                elif verb in ("add", "create", "insert", "replace") and kind in ("rule", "set", "map", "chain"):
                    out[kind + "s"] += 1
    for table in tables:
        out["tables"] += 1
        out[f"tables {table}"] += 1
    return out


def count_script(text: str) -> Counter[str]:
    """The same for a transaction in nft's own language (what vnet writes where nft's JSON cannot say
    it): one command per line, `add element FAMILY TABLE SET { e1, e2 }` with no comma inside an element;
    a table written as a block (`table F T { ... }`) counts as one whole-table write, its content not
    itemised."""
    out: Counter[str] = Counter()
    tables: set[str] = set()
    for line in text.splitlines():
        words = line.split()
        if len(words) < 4 or words[0] not in ("add", "create", "delete", "destroy", "insert", "replace"):
            continue
        verb, kind, where = words[0], words[1], f"{words[2]} {words[3]}"
        if kind == "element" and "{" in line:
            body = line[line.index("{") + 1:line.rindex("}")].strip()
            n = len(body.split(",")) if body else 0
            key = "elements+" if verb in ("add", "create") else "elements-"
            out[key] += n
            out[f"{key} {where}"] += n
        elif kind == "table" and verb in ("add", "create"):
            tables.add(where)
        elif kind in ("rule", "set", "map", "chain", "counter") and verb not in ("delete", "destroy"):
            out[kind + "s"] += 1
    for table in tables:
        out["tables"] += 1
        out[f"tables {table}"] += 1
    return out


class NftCount:
    """Counts every transaction any Nft of this process runs (the agents run as threads of it)."""

    def __init__(self) -> None:
        self.total: Counter[str] = Counter()
        self.transactions = 0
        self.scripts = 0  # of the transactions, those in nft's own language (parsed by count_script)
        self._lock = threading.Lock()
        self._original = Nft._command

    def install(self) -> NftCount:
        original, counter = self._original, self

        async def _command(nft: Nft, what: str, command: bytes, *argv: str) -> bytes:
            counter.saw(command)
            return await original(nft, what, command, *argv)

        Nft._command = _command  # type: ignore[method-assign]
        return self

    def uninstall(self) -> None:
        Nft._command = self._original  # type: ignore[method-assign]

    def saw(self, command: bytes) -> None:
        text = command.lstrip()
        if text.startswith(b"list"):
            return
        with self._lock:
            self.transactions += 1
            if text.startswith(b"{"):
                self.total.update(count_doc(json.loads(text)))
            else:
                self.scripts += 1
                self.total.update(count_script(text.decode()))

    def snapshot(self) -> tuple[Counter[str], int, int]:
        with self._lock:
            return Counter(self.total), self.transactions, self.scripts


def delta(before: tuple[Counter[str], int, int], after: tuple[Counter[str], int, int]) -> dict[str, int]:
    """What was written between two snapshots: the counters, `transactions` and of them `scripts`."""
    out = dict(after[0] - before[0])
    out["transactions"] = after[1] - before[1]
    out["scripts"] = after[2] - before[2]
    return out


async def set_sizes(ns: str) -> dict[str, int]:
    """Elements in each set/map of our tables (`family table set` -> count), read from the kernel."""
    doc = await Nft(ns).list_json("ruleset")
    out: dict[str, int] = {}
    for item in doc.get("nftables", []):
        for kind in ("set", "map"):
            s = item.get(kind)
            if s and str(s.get("table", "")).startswith("nvfabric"):
                out[f"{s['family']} {s['table']} {s['name']}"] = len(s.get("elem", []))
    return out
