"""What a reload (SIGHUP) may change: the fields of two configurations that differ, split into those the
running daemon takes and those that need a restart, and the named objects of a configuration (the agent's
routing domains, the gateway's tenants) put or deleted as the difference between the two files. Pure; each
daemon says which of its fields are which and what its objects are called."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

RESTART = "cannot change without a restart (reload refused, the running configuration stays)"


class Named(Protocol):
    @property
    def name(self) -> str: ...


C = TypeVar("C")
T = TypeVar("T", bound=Named)


def changed(old: Any, new: Any) -> tuple[str, ...]:
    """The names of the fields that differ between two configurations (dataclasses of one type), in the
    order the dataclass declares them."""
    return tuple(f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name))


def needs_restart(old: Any, new: Any, runtime: Iterable[str]) -> tuple[str, ...]:
    """The changed fields outside `runtime`, the ones the running daemon cannot take."""
    allowed = set(runtime)
    return tuple(name for name in changed(old, new) if name not in allowed)


@dataclass(frozen=True)
class Reconfiguration(Generic[C, T]):
    """A reload the running daemon can take: the new configuration, the objects to put (added or changed in
    the file, in its order) and the names to delete (removed from it). `noun`: what the objects are called,
    singular and plural, for the summary."""

    config: C
    put: tuple[T, ...] = ()
    delete: tuple[str, ...] = ()
    noun: tuple[str, str] = ("object", "objects")

    @property
    def summary(self) -> str:
        if not (self.put or self.delete):
            return f"no {self.noun[0]} changed"
        parts = [f"{verb} {', '.join(names)}" for verb, names in
                 (("put", [t.name for t in self.put]), ("deleted", list(self.delete))) if names]
        return f"{self.noun[1]} " + "; ".join(parts)


def difference(config: C, before: Iterable[T], after: Iterable[T], noun: tuple[str, str]) -> Reconfiguration[C, T]:
    """The objects of the new `config` to put (`after`'s that are new or differ from `before`'s of that
    name) and the names to delete (`before`'s not in `after`)."""
    old = {t.name: t for t in before}
    new = {t.name: t for t in after}
    put = tuple(t for name, t in new.items() if old.get(name) != t)
    delete = tuple(name for name in old if name not in new)
    return Reconfiguration(config, put, delete, noun)
