"""Pure: (desired set, actual set) of owned kernel objects -> an ordered Plan of values.

Like zebra's dplane contexts, every Op is self-contained (it carries the old value it replaces), so the
writer never consults live state. Order: creates and replaces by dependency order (devices, ports,
sysctls, rules and neighbours, routes), then deletes in reverse dependency order. A changed value under
the same key is one `replace`, never a delete and an add.

The one planning algorithm: `diff` compares two whole states; vnet.reconcile's partitioned reconciler
plans only its dirty partitions with the same pieces (`upserts`, `removable`, `order`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from nvfabric.vnet.kernel.objects import KernelObject, Sysctl


class Action(Enum):
    CREATE = "create"
    REPLACE = "replace"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
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


class KeyConflict(ValueError):
    """Two different values under one key: the state (desired or observed) is inconsistent."""

    def __init__(self, key: tuple, first: str, second: str, detail: str = "") -> None:
        where = f"{first} state has" if first == second else f"partitions {first!r} and {second!r} both"
        super().__init__(f"{where} two values for {key}{detail}")
        self.key = key


def by_key(objects: Iterable[KernelObject], where: str) -> dict[tuple, KernelObject]:
    out: dict[tuple, KernelObject] = {}
    for obj in objects:
        if obj.key in out and out[obj.key] != obj:
            raise KeyConflict(obj.key, where, where, f": {out[obj.key]} and {obj}")
        out[obj.key] = obj
    return out


def upserts(want: Iterable[KernelObject], have: Mapping[tuple, KernelObject]) -> list[Op]:
    """A create for each wanted object whose key the kernel lacks, a replace (carrying the old value) for each
    that differs. `want`: unique by key (by_key checked it)."""
    ops: list[Op] = []
    for obj in want:
        old = have.get(obj.key)
        if old is None:
            ops.append(Op(Action.CREATE, obj))
        elif old != obj:
            ops.append(Op(Action.REPLACE, obj, old))
    return ops


def removable(obj: KernelObject) -> bool:
    # a sysctl has no "absent" state to go back to: we only ever set the ones we want
    return not isinstance(obj, Sysctl)


def order(ops: Iterable[Op]) -> Plan:
    """Creates and replaces by dependency order, then deletes in reverse; by key within a level, so the plan
    (and every log of it) is deterministic; keys start with their kind's name, so keys of different kinds
    never compare element by element."""
    ops = list(ops)
    ups = sorted((o for o in ops if o.action is not Action.DELETE), key=lambda o: (o.obj.order, o.obj.key))
    deletes = sorted((o for o in ops if o.action is Action.DELETE), key=lambda o: (-o.obj.order, o.obj.key))
    return Plan(tuple(ups + deletes))


def diff(desired: Iterable[KernelObject], actual: Iterable[KernelObject]) -> Plan:
    want = by_key(desired, "desired")
    have = by_key(actual, "actual")
    return order(upserts(want.values(), have) + [Op(Action.DELETE, obj) for key, obj in have.items()
                                        if key not in want and removable(obj)])
