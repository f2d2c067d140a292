"""Pure: (desired set, actual set) of owned kernel objects -> an ordered Plan of values.

Like zebra's dplane contexts, every Op is self-contained (it carries the old value it replaces), so the
writer never consults live state. Order: creates and replaces by dependency order (devices, ports,
sysctls, rules and neighbours, routes), then deletes in reverse dependency order. A changed value under
the same key is one `replace`, never a delete and an add.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from nvfabric.vnet.kernel.objects import KernelObject, Sysctl


class Action(Enum):
    CREATE = "create"
    REPLACE = "replace"
    DELETE = "delete"


@dataclass(frozen=True)
class Op:
    action: Action
    obj: KernelObject  # the new value; for DELETE the value to delete
    old: KernelObject | None = None  # for REPLACE: what is in the kernel now


@dataclass(frozen=True)
class Plan:
    ops: tuple[Op, ...]

    def __len__(self) -> int:
        return len(self.ops)

    def __bool__(self) -> bool:
        return bool(self.ops)

    def counts(self) -> dict[str, int]:
        out = {a.value: 0 for a in Action}
        for op in self.ops:
            out[op.action.value] += 1
        return out


def _by_key(objects: Iterable[KernelObject], what: str) -> dict[tuple, KernelObject]:
    out: dict[tuple, KernelObject] = {}
    for obj in objects:
        if obj.key in out and out[obj.key] != obj:
            raise ValueError(f"{what} state has two values for {obj.key}: {out[obj.key]} and {obj}")
        out[obj.key] = obj
    return out


def diff(desired: Iterable[KernelObject], actual: Iterable[KernelObject]) -> Plan:
    want = _by_key(desired, "desired")
    have = _by_key(actual, "actual")
    upserts: list[Op] = []
    for key, obj in want.items():
        old = have.get(key)
        if old is None:
            upserts.append(Op(Action.CREATE, obj))
        elif old != obj:
            upserts.append(Op(Action.REPLACE, obj, old))
    # a sysctl has no "absent" state to go back to: we only ever set the ones we want
    deletes = [Op(Action.DELETE, obj) for key, obj in have.items() if key not in want and not isinstance(obj, Sysctl)]
    # sort within a dependency level by key too, so the plan (and every log of it) is deterministic;
    # keys start with their kind's name, so keys of different kinds never compare element by element
    upserts.sort(key=lambda op: (op.obj.order, op.obj.key))
    deletes.sort(key=lambda op: (-op.obj.order, op.obj.key))
    return Plan(tuple(upserts + deletes))
