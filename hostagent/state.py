"""The agent's state directory: what it was told (catalog), what it allocated (routing tables), the MAC
mobility sequences and the virtual addresses it announced. A restart (even after SIGKILL) finds the state as
of its last acknowledged change, never half of one.

A change costs its own size, not the host's, with two files:
- the snapshot (FILE): the whole state as one JSON file replaced atomically (write, fsync, rename), with a
  `generation` token;
- the journal (JOURNAL): a header naming the snapshot generation it follows, then one line per change (a
  Difference: the objects put or deleted), appended and fsync'd before the change is acknowledged. When the
  journal holds as many changes as the state has objects (at least BOUND), the next change is saved as a new
  snapshot instead and the journal starts again (compaction): an O(host) write once every O(host) changes.

Each snapshot keeps the file it replaces as PREV, and each new journal the one it replaces as JOURNAL_PREV
(hard links: the current file is never absent, even for a moment). At start:
- a journal whose header names another snapshot (a crash between a snapshot's rename and its new
  journal's: its changes are in the snapshot) is not replayed;
- a torn or unreadable last line (a crash in the middle of an append) is ignored with a warning: that
  change was never acknowledged;
- an unreadable line before the last is an error: the state is the snapshot plus the changes before it,
  the last state that can be proven;
- an unreadable snapshot (corrupted, hand-edited, not a file) is an error too: PREV, plus JOURNAL_PREV
  (which together make the lost snapshot), plus the journal when it follows them, is used. The agent comes
  back with what it can prove rather than refusing to start or starting empty (which would remove every
  tenant's kernel state).
After any of these the next save is a whole snapshot. A save that fails (a full disk, a read-only directory)
raises SaveError and the next load finds the state as it was before: the caller puts the kernel back."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nvfabric.bgp.mac import Mac
from nvfabric.hostagent.holders import HolderKey, Holding
from nvfabric.hostagent.mobility import SEQ_MAX, MacKey
from nvfabric.service.statefile import replace_keeping_previous
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.errors import ModelError
from nvfabric.vnet.model import Port, RoutingDomain, check_address, check_route_target

FILE = "agent-state.json"
PREV = FILE + ".prev"  # the snapshot before the last one: the last good copy
JOURNAL = "agent-state.journal"
JOURNAL_PREV = JOURNAL + ".prev"  # the journal that followed PREV
VERSION = 1
BOUND = 1000  # changes a journal may hold before compaction, at least (more on a host with more objects)

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class StateError(RuntimeError):
    """The state file exists but cannot be used; `path` says which."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


class SaveError(RuntimeError):
    """The state could not be written (the OS's reason in `problem`); a load finds the state as before."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"cannot save the state to {path}: {problem}")
        self.path, self.problem = path, problem


@dataclass(frozen=True)
class SavedState:
    catalog: Catalog
    tables: Mapping[str, int]
    seqs: Mapping[tuple[int, Mac], int]
    # virtual addresses (hostagent/holders.py): who holds each here and the sequence announced, so a
    # restart announces the same sequence rather than outbidding the fabric again
    holders: Mapping[HolderKey, Holding] = field(default_factory=dict)


@dataclass(frozen=True)
class Difference:
    """What one change put (the new value) or deleted (None), by kind: one line of the journal."""

    ports: Mapping[str, Port | None] = field(default_factory=dict)
    routing_domains: Mapping[str, RoutingDomain | None] = field(default_factory=dict)
    tables: Mapping[str, int | None] = field(default_factory=dict)
    seqs: Mapping[MacKey, int | None] = field(default_factory=dict)
    holders: Mapping[HolderKey, Holding | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.ports or self.routing_domains or self.tables or self.seqs or self.holders)


def difference(old: SavedState, new: SavedState, ports: Collection[str] | None = None,
               macs: Collection[MacKey] | None = None) -> Difference:
    """Pure: what changed from `old` to `new`. `ports`, `macs`: the only port names and MAC keys that may
    differ (a change knows them); None: compare every one. Routing domains, tables and virtual addresses are
    few: always compared whole."""
    return Difference(
        _changed(old.catalog.ports, new.catalog.ports, ports),
        _changed(old.catalog.routing_domains, new.catalog.routing_domains, None),
        _changed(old.tables, new.tables, None),
        _changed(old.seqs, new.seqs, macs),
        _changed(old.holders, new.holders, None),
    )


def _changed(old: Mapping[K, V], new: Mapping[K, V], keys: Collection[K] | None) -> dict[K, V | None]:
    if keys is not None:
        return {k: new.get(k) for k in keys if old.get(k) != new.get(k)}
    if old is new:
        return {}
    out: dict[K, V | None] = {}
    for k, v in new.items():
        had = old.get(k)
        if had is not v and had != v:
            out[k] = v
    out.update((k, None) for k in old if k not in new)
    return out


def routing_domain_to_dict(domain: RoutingDomain) -> dict[str, Any]:
    body: dict[str, Any] = {"name": domain.name, "route_targets": list(domain.route_targets),
                            "subnets": [s.to_dict() for s in domain.subnets]}
    if domain.customer_routes:
        body["customer_routes"] = [r.to_dict() for r in domain.customer_routes]
    if domain.virtual_addresses:
        body["virtual_addresses"] = [v.to_dict() for v in domain.virtual_addresses]
    return body


def port_to_dict(port: Port) -> dict[str, Any]:
    # (a state file written before port security had neither field: from_dict's defaults apply)
    return port.to_dict()


def _holder_key(item: tuple[HolderKey, Any]) -> tuple[str, int, Any]:
    (domain, address), _ = item
    return domain, address.version, address


def dumps(state: SavedState, generation: str = "") -> str:
    return json.dumps({
        "version": VERSION,
        "generation": generation,
        "routing_domains": [routing_domain_to_dict(d) for _, d in sorted(state.catalog.routing_domains.items())],
        "ports": [port_to_dict(p) for _, p in sorted(state.catalog.ports.items())],
        "tables": dict(sorted(state.tables.items())),
        "mobility": [[vsid, mac, seq] for (vsid, mac), seq in sorted(state.seqs.items())],
        "virtual_addresses": [[domain, str(address), h.port, h.seq] for (domain, address), h in
                              sorted(state.holders.items(), key=_holder_key)],
    }, indent=1)


def encode(change: Difference) -> str:
    """One journal line (no newline): only the kinds that changed; a deleted object's value is null (a
    virtual address forgotten is its key alone: a held one with no port is a remembered sequence)."""
    body: dict[str, Any] = {}
    if change.routing_domains:
        body["routing_domains"] = {n: None if d is None else routing_domain_to_dict(d)
                                   for n, d in change.routing_domains.items()}
    if change.ports:
        body["ports"] = {n: None if p is None else port_to_dict(p) for n, p in change.ports.items()}
    if change.tables:
        body["tables"] = dict(change.tables)
    if change.seqs:
        body["mobility"] = [[vsid, mac, seq] for (vsid, mac), seq in change.seqs.items()]
    if change.holders:
        body["virtual_addresses"] = [[d, str(a)] if h is None else [d, str(a), h.port, h.seq]
                                     for (d, a), h in change.holders.items()]
    return json.dumps(body, separators=(",", ":"))


@dataclass
class _Parts:
    """The state being read back: plain dictionaries, checked together (Catalog.build) once at the end, so a
    replayed change never meets a half-replayed catalog."""

    routing_domains: dict[str, RoutingDomain]
    ports: dict[str, Port]
    tables: dict[str, int]
    seqs: dict[MacKey, int]
    holders: dict[HolderKey, Holding]

    def apply(self, change: Difference) -> None:
        for mine, theirs in ((self.routing_domains, change.routing_domains), (self.ports, change.ports),
                             (self.tables, change.tables), (self.seqs, change.seqs), (self.holders, change.holders)):
            for key, value in theirs.items():  # type: ignore[attr-defined]
                if value is None:
                    mine.pop(key, None)  # type: ignore[attr-defined]
                else:
                    mine[key] = value  # type: ignore[index]

    def state(self, path: Path) -> SavedState:
        try:
            catalog = Catalog.build(self.routing_domains, self.ports)
        except ValueError as exc:
            raise StateError(path, f"unreadable ({exc})") from None
        return SavedState(catalog, self.tables, self.seqs, self.holders)


def _holding(d: Any, a: Any, p: Any, s: Any) -> tuple[HolderKey, Holding]:
    return (str(d), check_address(a, "virtual_addresses")), Holding(None if p is None else str(p),
                                                                     min(max(int(s), 0), SEQ_MAX))


def _parse(text: str, path: Path) -> tuple[_Parts, str]:
    """A snapshot's objects, not yet checked together, and its generation."""
    try:
        data = json.loads(text)
        if data.get("version") != VERSION:
            raise StateError(path, f"unknown version {data.get('version')!r}")
        domains = {d.name: d for d in (RoutingDomain.from_dict(repaired_domain(b, path))
                                       for b in data["routing_domains"])}
        ports = {p.name: p for p in (Port.from_dict(b) for b in data["ports"])}
        tables = {str(k): int(v) for k, v in data["tables"].items()}
        seqs = {(int(v), Mac(m)): repaired_seq(int(s), int(v), m, path) for v, m, s in data.get("mobility", [])}
        # (a state file written before virtual addresses has none)
        holders = dict(_holding(d, a, p, s) for d, a, p, s in data.get("virtual_addresses", []))
        generation = str(data.get("generation", ""))  # (none before the journal)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StateError(path, f"unreadable ({exc})") from None
    return _Parts(domains, ports, tables, seqs, holders), generation


def loads(text: str, path: Path) -> SavedState:
    return _parse(text, path)[0].state(path)


def decode(line: str | bytes, path: Path) -> Difference:
    """One journal line back (ValueError, KeyError, TypeError or AttributeError when it is not one)."""
    data = json.loads(line)
    if not isinstance(data, dict):
        raise TypeError(f"a change is an object, not {type(data).__name__}")
    holders: dict[HolderKey, Holding | None] = {}
    for item in data.get("virtual_addresses", []):
        if len(item) == 2:
            holders[(str(item[0]), check_address(item[1], "virtual_addresses"))] = None
        else:
            key, holding = _holding(*item)
            holders[key] = holding
    return Difference(
        ports={str(n): None if b is None else Port.from_dict(b) for n, b in data.get("ports", {}).items()},
        routing_domains={str(n): None if b is None else RoutingDomain.from_dict(repaired_domain(b, path))
                         for n, b in data.get("routing_domains", {}).items()},
        tables={str(n): None if t is None else int(t) for n, t in data.get("tables", {}).items()},
        seqs={(int(v), Mac(m)): None if s is None else repaired_seq(int(s), int(v), m, path)
              for v, m, s in data.get("mobility", [])},
        holders=holders,
    )


@dataclass(frozen=True)
class Journal:
    """A journal as read back: the snapshot generation it follows (`base`), the one that snapshot itself
    followed when it was made from PREV and JOURNAL_PREV (`after`, else None), the changes that could be
    read, and what was wrong (`damaged`: a line before the last could not be read)."""

    base: str
    after: str | None
    changes: tuple[Difference, ...]
    torn: bool = False
    damaged: bool = False


def _header(base: str, after: str | None) -> str:
    return json.dumps({"version": VERSION, "base": base, "after": after}) + "\n"


def read_journal(path: Path) -> Journal | None:
    """The journal at `path` (None: absent). StateError when its header cannot be read (it is written
    whole, with a rename: damage, not a crash)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(path, f"unreadable ({exc})") from None
    head, _, rest = data.partition(b"\n")
    try:
        header = json.loads(head)
        if header.get("version") != VERSION:
            raise ValueError(f"unknown version {header.get('version')!r}")
        base, after = str(header["base"]), header.get("after")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StateError(path, f"unreadable header ({exc})") from None
    lines = [line for line in rest.split(b"\n") if line.strip()]
    changes: list[Difference] = []
    for i, line in enumerate(lines):
        try:
            changes.append(decode(line, path))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if i == len(lines) - 1:
                log.warning("%s: the last change is torn or unreadable (%s): ignored (a crash while it was "
                            "written: it was never acknowledged)", path, exc)
                return Journal(base, after, tuple(changes), torn=True)
            log.error("%s: change %d of %d is unreadable (%s): the state is the snapshot and the %d changes "
                      "before it", path, i + 1, len(lines), exc, i)
            return Journal(base, after, tuple(changes), damaged=True)
    return Journal(base, after, tuple(changes))


def repaired_domain(body: Any, path: Path) -> Any:
    """A routing domain without the route targets the wire cannot carry. An earlier version accepted e.g.
    `70000:70000` and then failed every announcement: the agent starts without them (logged) rather than
    not at all. A domain left with none is refused, naming it: it never had a route target that worked."""
    if not isinstance(body, dict) or not isinstance(body.get("route_targets"), list):
        return body
    kept = []
    for i, target in enumerate(body["route_targets"]):
        try:
            kept.append(check_route_target(target, f"route_targets[{i}]"))
        except ModelError as exc:
            log.warning("%s: routing domain %s: %s: dropped", path, body.get("name"), exc)
    if not kept:
        return body  # from_dict names the field and the problem
    return {**body, "route_targets": kept}


def repaired_seq(seq: int, vsid: int, mac: str, path: Path) -> int:
    """A MAC mobility sequence the wire can carry (32 bits). An earlier run could persist 2^32 (a remote
    0xFFFFFFFF plus one), which no announcement can carry: refusing the file would keep the agent from ever
    starting again, so the value is clamped and the repair logged."""
    if 0 <= seq <= SEQ_MAX:
        return seq
    fixed = min(max(seq, 0), SEQ_MAX)
    log.warning("%s: mobility sequence %d of VSID %d MAC %s is not a 32-bit value: %d used", path, seq, vsid,
                mac, fixed)
    return fixed


def _read_snapshot(path: Path) -> tuple[_Parts, str] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(path, f"unreadable ({exc})") from None
    return _parse(text, path)


class Store:
    """The state directory of one agent: `load` once at start, then `save` after every change."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._saved: SavedState | None = None  # what a load finds now (None: not known, the next save is whole)
        # of the snapshot the journal follows; None: the journal is not usable, the next save is whole
        self._generation: str | None = None
        self._size = 0  # bytes in the journal (a failed append is cut back to it)
        self.changes = 0  # changes in the journal since the snapshot
        self.snapshots = 0  # snapshots written by this store (for tests and benchmarks)

    def load(self) -> SavedState | None:
        """The saved state (None: none yet). StateError only when nothing can be used."""
        try:
            found = self._load(FILE, JOURNAL)
        except StateError as exc:
            try:
                prev = self._load(PREV, JOURNAL_PREV, then=JOURNAL)
            except StateError as prev_exc:
                raise StateError(exc.path, f"{exc}; and the previous copy: {prev_exc}") from None
            if prev is None:
                raise
            log.error("state: %s; using the previous good copy %s and the changes after it",
                      exc, self.directory / PREV)
            self._saved, self._generation = prev, None  # the next save is a whole snapshot
            return prev
        if found is None:  # (lost between the two links of a snapshot write)
            found = self._load(PREV, JOURNAL_PREV, then=JOURNAL)
            self._generation = None
        self._saved = found
        return found

    def _load(self, name: str, journal_name: str, then: str | None = None) -> SavedState | None:
        path = self.directory / name
        snapshot = _read_snapshot(path)
        if snapshot is None:
            return None
        parts, generation = snapshot
        journal = read_journal(self.directory / journal_name)
        intact = journal is not None and journal.base == generation
        if journal is not None and intact:
            for change in journal.changes:
                parts.apply(change)
            if then is not None and not (journal.torn or journal.damaged):
                # the journal after the lost snapshot, when that snapshot was made of these two
                try:
                    following = read_journal(self.directory / then)
                except StateError as exc:
                    log.error("%s", exc)
                    following = None
                if following is not None and following.after == generation:
                    for change in following.changes:
                        parts.apply(change)
        elif journal is not None:
            log.info("%s: follows another snapshot (a crash while compacting): its changes are in %s",
                     self.directory / journal_name, path)
        state = parts.state(path)
        healthy = then is None and intact and journal is not None and not (journal.torn or journal.damaged)
        self._generation = generation if healthy else None
        self.changes = len(journal.changes) if healthy and journal is not None else 0
        if healthy:
            self._size = (self.directory / journal_name).stat().st_size
        return state

    def save(self, new: SavedState, ports: Collection[str] | None = None,
             macs: Collection[MacKey] | None = None) -> None:
        """Make `new` what a load finds: its difference from the last save appended to the journal (then a
        whole snapshot when the journal is full), or a whole snapshot when the journal is not usable.
        `ports`, `macs`: the only port names and MAC keys the change may have touched (None: compare them
        all). SaveError when it cannot be written: then a load finds the state of the last save."""
        old = self._saved
        if old is None or self._generation is None:
            self._snapshot(new)
            return
        change = difference(old, new, ports, macs)
        if change:
            self._append(encode(change).encode() + b"\n")
        self._saved = new
        if self.changes >= bound(new):
            # compacted after the change is in the journal: PREV + JOURNAL_PREV stay the whole new snapshot
            try:
                self._snapshot(new)
            except SaveError as exc:  # the change is saved; the journal grows until a snapshot can be written
                log.warning("%s: not compacted: %s", self.directory / JOURNAL, exc)

    def _append(self, line: bytes) -> None:
        path = self.directory / JOURNAL
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise SaveError(path, exc.strerror or str(exc)) from None
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            # cut the part written (a later append must not follow half a line); if even that fails the
            # line is the last one, torn, and ignored at load; either way the next save is a snapshot
            try:
                os.ftruncate(fd, self._size)
            except OSError:
                pass
            self._generation = None
            raise SaveError(path, exc.strerror or str(exc)) from None
        finally:
            os.close(fd)
        self._size += len(line)
        self.changes += 1

    def _snapshot(self, new: SavedState) -> None:
        """`new` whole, then a new journal that follows it. Once the snapshot is renamed into place the save
        has happened: a journal that cannot be started then only makes the next save a snapshot too."""
        generation = os.urandom(8).hex()
        # the journal holds every change since its snapshot and nothing else: PREV + JOURNAL_PREV will be
        # this new snapshot's fallback
        after = self._generation
        path = self.directory / FILE
        try:
            replace_keeping_previous(path, self.directory / PREV, dumps(new, generation))
        except OSError as exc:
            raise SaveError(path, exc.strerror or str(exc)) from None
        self._saved, self._generation, self.changes = new, None, 0
        self.snapshots += 1
        header = _header(generation, after)
        try:
            replace_keeping_previous(self.directory / JOURNAL, self.directory / JOURNAL_PREV, header)
        except OSError as exc:
            log.warning("%s: cannot start the journal (%s): the next change is saved whole",
                        self.directory / JOURNAL, exc.strerror or exc)
            return
        self._generation, self._size = generation, len(header)


def bound(state: SavedState) -> int:
    """The changes a journal may hold before the next save compacts it: as many as the state has objects, so
    that compaction's O(objects) write is paid once every O(objects) changes; at least BOUND."""
    return max(BOUND, len(state.catalog.ports) + len(state.catalog.routing_domains))


def load(directory: Path) -> SavedState | None:
    """The saved state of `directory` (Store.load)."""
    return Store(directory).load()


def save(directory: Path, state: SavedState) -> None:
    """Write `state` whole as `directory`'s state (a snapshot and an empty journal), keeping the files it
    replaces as PREV and JOURNAL_PREV; SaveError when it cannot be written."""
    Store(directory)._snapshot(state)
