"""The agent's state directory: what it was told (catalog), what it allocated (routing tables) and the MAC
mobility sequences it announced, in one JSON file replaced atomically (write, fsync, rename), so a restart
(even after SIGKILL) finds either the old or the new state, never half of one.

Each save first keeps the file it replaces as PREV (a hard link: the current file is never absent, even
for a moment). At start a state file that cannot be read (corrupted, hand-edited, not a file) is reported
and PREV is used: the agent comes back one change behind rather than refusing to start or starting empty
(which would remove every tenant's kernel state). A save that fails (a full disk, a read-only directory)
raises SaveError and leaves both files as they were: the caller puts the kernel back."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nvfabric.bgp.mac import Mac
from nvfabric.hostagent.holders import HolderKey, Holding
from nvfabric.hostagent.mobility import SEQ_MAX
from nvfabric.service.statefile import replace_keeping_previous
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.errors import ModelError
from nvfabric.vnet.model import Port, RoutingDomain, check_address, check_route_target

FILE = "agent-state.json"
PREV = FILE + ".prev"  # the state before the last save: the last good copy
VERSION = 1

log = logging.getLogger(__name__)


class StateError(RuntimeError):
    """The state file exists but cannot be used; `path` says which."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


class SaveError(RuntimeError):
    """The state could not be written (the OS's reason in `problem`); nothing on disk changed."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"cannot save the state to {path}: {problem}")
        self.path, self.problem = path, problem


@dataclass(frozen=True)
class SavedState:
    catalog: Catalog
    tables: dict[str, int]
    seqs: dict[tuple[int, Mac], int]
    # virtual addresses (hostagent/holders.py): who holds each here and the sequence announced, so a
    # restart announces the same sequence rather than outbidding the fabric again
    holders: dict[HolderKey, Holding] = field(default_factory=dict)


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


def dumps(state: SavedState) -> str:
    return json.dumps({
        "version": VERSION,
        "routing_domains": [routing_domain_to_dict(d) for _, d in sorted(state.catalog.routing_domains.items())],
        "ports": [port_to_dict(p) for _, p in sorted(state.catalog.ports.items())],
        "tables": dict(sorted(state.tables.items())),
        "mobility": [[vsid, mac, seq] for (vsid, mac), seq in sorted(state.seqs.items())],
        "virtual_addresses": [[domain, str(address), h.port, h.seq] for (domain, address), h in
                              sorted(state.holders.items(), key=lambda i: (i[0][0], i[0][1].version, i[0][1]))],
    }, indent=1)


def loads(text: str, path: Path) -> SavedState:
    try:
        data = json.loads(text)
        if data.get("version") != VERSION:
            raise StateError(path, f"unknown version {data.get('version')!r}")
        domains = {d.name: d for d in (RoutingDomain.from_dict(repaired_domain(b, path))
                                       for b in data["routing_domains"])}
        ports = {p.name: p for p in (Port.from_dict(b) for b in data["ports"])}
        catalog = Catalog.build(domains, ports)
        tables = {str(k): int(v) for k, v in data["tables"].items()}
        seqs = {(int(v), Mac(m)): repaired_seq(int(s), int(v), m, path) for v, m, s in data.get("mobility", [])}
        # (a state file written before virtual addresses has none)
        holders = {(str(d), check_address(a, "virtual_addresses")): Holding(None if p is None else str(p),
                                                                              min(max(int(s), 0), SEQ_MAX))
                   for d, a, p, s in data.get("virtual_addresses", [])}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StateError(path, f"unreadable ({exc})") from None
    return SavedState(catalog, tables, seqs, holders)


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


def _read(path: Path) -> SavedState | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(path, f"unreadable ({exc})") from None
    return loads(text, path)


def load(directory: Path) -> SavedState | None:
    """The saved state; PREV when the file is unreadable (logged), or absent after a crash between the two
    links of a save. StateError only when neither can be read."""
    try:
        found = _read(directory / FILE)
    except StateError as exc:
        try:
            prev = _read(directory / PREV)
        except StateError as prev_exc:
            raise StateError(exc.path, f"{exc}; and the previous copy: {prev_exc}") from None
        if prev is None:
            raise
        log.error("state: %s; using the previous good copy %s (the last change before the failure is lost)",
                  exc, directory / PREV)
        return prev
    return found if found is not None else _read(directory / PREV)


def save(directory: Path, state: SavedState) -> None:
    """Write `state` crash-safely, keeping the file it replaces as PREV; SaveError when it cannot be written
    (the previous state stays in place)."""
    path = directory / FILE
    try:
        replace_keeping_previous(path, directory / PREV, dumps(state))
    except OSError as exc:
        raise SaveError(path, exc.strerror or str(exc)) from None
