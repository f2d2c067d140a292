"""What a reload (SIGHUP) may change: the fields of two configurations that differ, split into those the
running daemon takes and those that need a restart. Pure; each daemon says which of its fields are which
and turns the rest into a refusal naming them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

RESTART = "cannot change without a restart (reload refused, the running configuration stays)"


def changed(old: Any, new: Any) -> tuple[str, ...]:
    """The names of the fields that differ between two configurations (dataclasses of one type), in the
    order the dataclass declares them."""
    return tuple(f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name))


def needs_restart(old: Any, new: Any, runtime: Iterable[str]) -> tuple[str, ...]:
    """The changed fields outside `runtime`, the ones the running daemon cannot take."""
    allowed = set(runtime)
    return tuple(name for name in changed(old, new) if name not in allowed)
