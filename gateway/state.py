"""The gateway's state directory: the tenants created through the API and every tenant's id, so a restart
serves the same tenants with the same ids (the id is the tenant's routing table, packet mark and conntrack
zone: a surviving flow's conntrack mark must keep pointing at its own tenant).

One JSON file replaced atomically (write, fsync, rename, as the agent's state). The copy it replaces is
kept beside it: a current file that cannot be read or parsed is reported, set aside (`.corrupt`, for the
operator) and the previous good copy used; with neither, the gateway starts from its configuration and the
ids it adopts from the kernel (gateway.py), never refusing to start.

Ids are decided by `assign_ids` (pure): kept from the state file, else adopted from the kernel's NAT table,
else new; a new id is taken above every id given so far (`last_id`), so a deleted tenant's id, which its
leftover conntrack entries may still carry, is not handed to the next tenant created.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nvfabric.gateway.nat import MARK_MIN, ZONE_MAX
from nvfabric.gateway.tenants import Tenant
from nvfabric.service.statefile import replace_keeping_previous

log = logging.getLogger(__name__)

FILE = "gateway-state.json"
PREVIOUS = "gateway-state.previous.json"
VERSION = 1


class StateError(RuntimeError):
    """A state file exists but cannot be used; `path` says which."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


class StateSaveError(RuntimeError):
    """The state could not be written (a full disk, say); the change it belonged to was put back."""

    def __init__(self, what: str, cause: OSError) -> None:
        super().__init__(f"{what}: the gateway's state could not be saved, change reverted: {cause}")


class NoFreeId(RuntimeError):
    """Every tenant id (MARK_MIN..ZONE_MAX) is in use."""


@dataclass(frozen=True)
class SavedState:
    api_tenants: tuple[Tenant, ...] = ()  # created through the API (the configuration's are the file's)
    ids: Mapping[str, int] = field(default_factory=dict)  # every served tenant's id
    last_id: int = MARK_MIN - 1  # the highest id given so far


def dumps(state: SavedState) -> str:
    return json.dumps({
        "version": VERSION,
        "api_tenants": [t.as_dict() for t in sorted(state.api_tenants, key=lambda t: t.name)],
        "ids": dict(sorted(state.ids.items())),
        "last_id": state.last_id,
    }, indent=1)


def loads(text: str, path: Path) -> SavedState:
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise StateError(path, f"unknown version {data.get('version') if isinstance(data, dict) else data!r}")
        tenants = tuple(Tenant.from_dict(b, where=f"api_tenants[{i}]") for i, b in enumerate(data["api_tenants"]))
        ids = {str(k): int(v) for k, v in data["ids"].items()}
        last = int(data["last_id"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a ModelError is a ValueError
        raise StateError(path, f"unreadable ({exc})") from None
    bad = sorted(n for n, i in ids.items() if not MARK_MIN <= i <= ZONE_MAX)
    if bad:
        raise StateError(path, f"tenant {bad[0]!r}: id {ids[bad[0]]} outside {MARK_MIN}..{ZONE_MAX}")
    if len(set(ids.values())) != len(ids):
        raise StateError(path, "two tenants with one id")
    return SavedState(tenants, ids, last)


@dataclass(frozen=True)
class Loaded:
    state: SavedState | None  # None: nothing usable (no file, or none readable)
    problems: tuple[str, ...] = ()  # what was wrong with the files passed over, for the log and status


class StateDir:
    """The state directory of one gateway. `load` once at start, then `save` after every change."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / FILE
        self.previous = directory / PREVIOUS
        # whether the current file is one we read or wrote whole: only then may it become the previous copy
        self._current_good = False

    def load(self) -> Loaded:
        problems: list[str] = []
        for path in (self.path, self.previous):
            try:
                state = loads(path.read_text(), path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                problems.append(f"{path}: unreadable ({exc})")
                continue
            except StateError as exc:
                problems.append(str(exc))
                continue
            if path == self.path:
                self._current_good = True
            return Loaded(state, tuple(problems))
        return Loaded(None, tuple(problems))

    def set_aside(self) -> None:
        """Keep an unusable current file for the operator before the next save replaces it."""
        if self._current_good or not self.path.exists():
            return
        try:
            os.replace(self.path, self.path.with_name(FILE + ".corrupt"))
        except OSError as exc:
            log.error("state: could not set %s aside: %s", self.path, exc)

    def save(self, state: SavedState) -> None:
        """Atomically replace the current file; the current one, when good, becomes the previous copy.
        Raises OSError (nothing replaced) when the new file cannot be written whole."""
        replace_keeping_previous(self.path, self.previous, dumps(state), keep=self._current_good)
        self._current_good = True


def assign_ids(names: Iterable[str], saved: Mapping[str, int], adopted: Mapping[str, int],
               last_id: int) -> tuple[dict[str, int], int]:
    """Pure: every name's id and the new `last_id`. A saved id is kept; else the kernel's (`adopted`, read
    from the NAT table) when no other name holds it; else a new one above `last_id` and above every id
    the kernel still has (a leftover flow may carry it), wrapping to the lowest free id once ZONE_MAX is
    reached. Deterministic: new names in sorted order."""
    names = sorted(set(names))
    out: dict[str, int] = {}
    for name in names:
        if name in saved:
            out[name] = saved[name]
    taken = set(out.values())
    for name in names:
        if name not in out and name in adopted and adopted[name] not in taken:
            out[name] = adopted[name]
            taken.add(adopted[name])
    avoid = taken | set(adopted.values())
    top = max([last_id, *avoid], default=last_id)
    for name in names:
        if name in out:
            continue
        candidate = next((i for i in range(max(top + 1, MARK_MIN), ZONE_MAX + 1) if i not in avoid), None)
        if candidate is None:  # wrapped: the lowest free id, even one the kernel still has a flow of
            candidate = next((i for i in range(MARK_MIN, ZONE_MAX + 1) if i not in taken), None)
        if candidate is None:
            raise NoFreeId(f"tenant {name}: every id {MARK_MIN}..{ZONE_MAX} is in use")
        out[name] = candidate
        taken.add(candidate)
        avoid.add(candidate)
        top = max(top, candidate)
    return out, max(last_id, top)

