"""Where a process's Python memory is: the objects reachable from named roots, each counted once.

    from bench.memwalk import breakdown
    print(breakdown([("the RIB", speaker.rib), ("the client", client), ...]))

A root's size is what it reaches that no earlier root reached (so the order says who owns a shared object:
the first holder), by `sys.getsizeof` of each object, with the types that weigh most. Classes, modules,
functions and code are not followed (they are the program, not its data). A dict's keys and values, a
slotted object's slots, a frozen dataclass's fields: everything `gc.get_referents` reports, plus the
referents of objects the collector does not track (e.g. a tuple of atoms, an IP address's int is reached
through its slots).
"""

from __future__ import annotations

import gc
import sys
import types
from collections import Counter
from collections.abc import Iterable
from typing import Any

_SKIP = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType,
         types.MethodType, types.FrameType, types.CoroutineType, types.GeneratorType)


def walk(root: Any, seen: set[int]) -> tuple[int, Counter[str], Counter[str]]:
    """(bytes, bytes by type name, objects by type name) of what `root` reaches outside `seen` (updated)."""
    total = 0
    by_type: Counter[str] = Counter()
    count: Counter[str] = Counter()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SKIP):
            continue
        seen.add(id(obj))
        size = sys.getsizeof(obj)
        name = type(obj).__name__
        total += size
        by_type[name] += size
        count[name] += 1
        stack.extend(gc.get_referents(obj))
        if type(obj) is dict:
            stack.extend(obj)  # (a dict of str keys does not report its keys to the collector)
    return total, by_type, count


def breakdown(roots: Iterable[tuple[str, Any]], top: int = 6) -> list[dict[str, Any]]:
    """Per named root, in order: MiB it reaches first, objects, and its heaviest types (MiB)."""
    gc.collect()
    seen: set[int] = set()
    out = []
    for name, root in roots:
        total, by_type, count = walk(root, seen)
        out.append({"part": name, "mib": round(total / 2**20, 1), "objects": sum(count.values()),
                    "types": {t: [round(b / 2**20, 1), count[t]] for t, b in by_type.most_common(top)}})
    return out


def table(parts: list[dict[str, Any]]) -> str:
    lines = []
    for p in parts:
        types_ = ", ".join(f"{t} {mib} ({n:,})" for t, (mib, n) in p["types"].items())
        lines.append(f"{p['part']:<28} {p['mib']:>7.1f} MiB {p['objects']:>10,} objects   {types_}")
    return "\n".join(lines)
