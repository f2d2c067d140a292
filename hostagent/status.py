"""What the agent reports about itself (`GET /status`, `nvfabric ctl status`): values, built from its parts."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from nvfabric.vnet.hold import Hold
from nvfabric.vnet.reconcile import Audit, Outcome


@dataclass(frozen=True)
class ReflectorStatus:
    address: str
    state: str  # "established" | "down" | "connecting"
    end_of_rib: bool
    since: float | None = None


@dataclass(frozen=True)
class AgentStatus:
    router_id: str
    reflectors: tuple[ReflectorStatus, ...]
    synced: bool  # End-of-RIB seen (or timed out) since start and the table in the kernel: deletes allowed
    headless: bool  # no reflector up: forwarding kept as is
    last_reconcile: dict[str, Any] | None
    totals: dict[str, int]
    held_deletes: int
    mobility_freezes: tuple[dict[str, Any], ...]
    skipped: tuple[str, ...]
    local_routes: int
    learned_routes: int
    # NVGRE packets judged before decapsulation (vnet/decap.py): drops by reason, and `vouched` (delivered)
    decap: dict[str, int] = field(default_factory=dict)
    # routes that lost their key to a stronger source (vnet/desired.py PRECEDENCE), by routing domain
    conflicts: tuple[dict[str, Any], ...] = ()
    # the import policy (vnet/policy.py): the provider prefixes next hops must be in, routes refused by reason
    import_policy: dict[str, Any] = field(default_factory=dict)
    # every declared virtual address: who holds it (a local port, another host's PA, or nobody), with which
    # sequence; and the claims judged since start, by outcome (hostagent/holders.py)
    virtual_addresses: tuple[dict[str, Any], ...] = ()
    claims: dict[str, int] = field(default_factory=dict)
    # what the VMs get from their host: ports served, frames by protocol and outcome, packet socket errors
    guest_services: dict[str, Any] = field(default_factory=dict)
    # the BFD sessions to the reflectors configured with `bfd` (BfdStatus.as_dict())
    bfd: tuple[dict[str, Any], ...] = ()
    # how far behind the reflectors (bgp/client.py Backlog.as_dict()) and the last pass following BGP, seconds
    backlog: dict[str, Any] = field(default_factory=dict)
    last_sync_s: float | None = None
    # the last periodic resync (the kernel read back beside the passes): when, how long, what differed
    last_resync: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wall(monotonic: float) -> float:
    """A time.monotonic() value in wall-clock time (Unix seconds): a monotonic value means nothing to an
    operator."""
    return time.time() + (monotonic - time.monotonic())


def reflectors(hold: Hold) -> tuple[ReflectorStatus, ...]:
    return tuple(ReflectorStatus(address, s.state, s.end_of_rib, None if s.since is None else wall(s.since))
                 for address, s in hold.sessions.items())


def freeze(freeze: dict[str, Any]) -> dict[str, Any]:
    """A mobility freeze with its end in wall-clock time."""
    return {**freeze, "until": wall(freeze["until"])}


def outcome(o: Outcome | None) -> dict[str, Any] | None:
    if o is None:
        return None
    return {"at": o.at, "ops": o.counts, "errors": list(o.errors), "held": o.held, "seconds": round(o.seconds, 4),
            "full_observe": o.full_observe,
            # by routing domain: a remote CA's partition ("<domain>/<CA>") and a local port's
            # ("<domain>/port/<name>") count, their names are not listed
            "partitions": sorted({p.partition("/")[0] for p in o.partitions}),
            "remote_ca_partitions": sum(1 for p in o.partitions if "/" in p and "/port/" not in p),
            "port_partitions": sum(1 for p in o.partitions if "/port/" in p),
            "plan_seconds": round(o.plan_seconds, 4), "apply_seconds": round(o.apply_seconds, 4),
            "kernel_seconds": round(o.kernel_seconds, 4)}


def audit(a: Audit | None) -> dict[str, Any] | None:
    if a is None or a.void:
        return None
    return {"at": a.at, "seconds": round(a.seconds, 4), "drift": dict(a.drift)}


def readiness(started: bool, hold: Hold, now: float, programmed: bool = True) -> tuple[str, ...]:
    """Why the agent is not ready (GET /readyz; none: ready). Ready once its kernel is programmed and it has
    the fabric's table: End-of-RIB from every established reflector (or `eor_timeout` after the first
    session); or, when no reflector answered within `eor_timeout` of the start, running headless from its
    saved state, which is what it will do until one does. An agent that had its table stays ready through a
    reflector outage: it keeps forwarding and takes port changes (removals held, docs/agent.md).
    `programmed`: the table has been put into the kernel since the start (End-of-RIB came, the kernel may
    still be compared with a table of 100,000 routes)."""
    if not started:
        return ("starting: the kernel is not programmed yet",)
    if hold.synced and not programmed:
        return ("programming the fabric's table into the kernel (End-of-RIB received)",)
    if hold.synced or hold.after_headless or (hold.headless and now >= hold.deadline):
        return ()
    waiting = sorted(peer for peer, s in hold.sessions.items() if s.state == "established" and not s.end_of_rib)
    if waiting:
        return (f"waiting for End-of-RIB from reflector {', '.join(waiting)} (at most eor_timeout)",)
    return ("waiting for a reflector session (headless from the saved state after eor_timeout)",)
