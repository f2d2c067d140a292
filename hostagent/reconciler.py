"""Level-triggered: desired kernel state (plain data) against the last observed state, applied as a difference.

- At start, and every `resync_interval`, the kernel is read in full (vnet.kernel.observe): what is there
  and still right is never touched (a restart, even after SIGKILL, plans nothing for forwarding that is
  still correct). In between, the observed state is advanced by the ops that the kernel acknowledged.
- Deletes of learned state (encap routes, proxy NDP entries) are HELD while `hold` is set: after a
  (re)start until End-of-RIB from the reflectors (or a timeout), and while no reflector is reachable
  (headless). A held object stays in the kernel exactly as it is; replacing it by a newer value (a move)
  still happens, because that is not a removal.
- A failed op makes the next call observe again (the cached view may be wrong), so nothing is lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vnet.kernel.apply import ApplyError, apply
from vnet.kernel.diff import Action, Op, Plan, diff
from vnet.kernel.netns import RtnlSocket, read_sysctl
from vnet.kernel.objects import EncapRoute, KernelObject, ProxyNeighbour, Sysctl
from vnet.kernel.observe import observe

LEARNED_KINDS = (EncapRoute, ProxyNeighbour)


@dataclass(frozen=True)
class Outcome:
    at: float  # time.time()
    counts: dict[str, int]
    errors: tuple[str, ...]
    held: int
    seconds: float
    full_observe: bool
    applied: tuple[Op, ...] = ()  # what the kernel acknowledged, in order (for a revert)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class Reconciler:
    sock: RtnlSocket
    observed: dict[tuple, KernelObject] | None = None  # None: read the kernel before the next plan
    last: Outcome | None = None
    totals: dict[str, int] = field(default_factory=lambda: {"create": 0, "replace": 0, "delete": 0, "errors": 0})

    def invalidate(self) -> None:
        self.observed = None

    async def observe(self, sysctls: list[str]) -> dict[tuple, KernelObject]:
        return {o.key: o for o in await observe(self.sock, sysctls)}

    def plan(self, desired: frozenset[KernelObject], hold: bool) -> tuple[Plan, int]:
        assert self.observed is not None
        want = set(desired)
        held = 0
        if hold:
            keys = {o.key for o in desired}
            for key, obj in self.observed.items():
                if isinstance(obj, LEARNED_KINDS) and key not in keys:
                    want.add(obj)
                    held += 1
        return diff(want, self.observed.values()), held

    async def reconcile(self, desired: frozenset[KernelObject], hold: bool) -> Outcome:
        started = time.monotonic()
        full = self.observed is None
        if full:
            self.observed = await self.observe(sorted(o.path for o in desired if isinstance(o, Sysctl)))
        else:
            # a sysctl we did not read yet (a new port): read it before planning
            missing = [o.path for o in desired if isinstance(o, Sysctl) and o.key not in self.observed]
            if missing:
                for path in missing:
                    value = read_sysctl(self.sock.netns, path)
                    if value is not None:
                        self.observed[("sysctl", path)] = Sysctl(path, value)
        plan, held = self.plan(desired, hold)
        errors: list[ApplyError] = []
        applied: tuple[Op, ...] = ()
        if plan:
            report = await apply(self.sock, plan)
            errors = report.errors
            applied = tuple(report.applied)
            failed = {id(e.op) for e in errors}
            for op in plan.ops:
                if id(op) in failed:
                    continue
                if op.action is Action.DELETE:
                    self.observed.pop(op.obj.key, None)
                else:
                    self.observed[op.obj.key] = op.obj
            if errors:
                self.observed = None  # read the kernel again next time
        counts = plan.counts()
        for k, v in counts.items():
            self.totals[k] += v
        self.totals["errors"] += len(errors)
        self.last = Outcome(time.time(), counts, tuple(str(e) for e in errors), held, time.monotonic() - started, full,
                            applied)
        return self.last

    async def revert(self, applied: tuple[Op, ...]) -> list[ApplyError]:
        """Undo acknowledged ops exactly (not by observing: an object the kernel half-accepted, such as a
        route on a device that never joined our VRF, may be invisible to observe), then re-read the kernel."""
        undo = [inv for op in applied if (inv := inverse(op)) is not None]
        upserts = sorted((o for o in undo if o.action is not Action.DELETE), key=lambda o: (o.obj.order, o.obj.key))
        deletes = sorted((o for o in undo if o.action is Action.DELETE), key=lambda o: (-o.obj.order, o.obj.key))
        report = await apply(self.sock, Plan(tuple(upserts + deletes)))
        self.observed = None
        return report.errors


def inverse(op: Op) -> Op | None:
    if op.action is Action.CREATE:
        # a sysctl we set for the first time has no earlier value we know of: leave it
        return None if isinstance(op.obj, Sysctl) else Op(Action.DELETE, op.obj)
    if op.action is Action.REPLACE:
        return Op(Action.REPLACE, op.old, op.obj) if op.old is not None else None
    return Op(Action.CREATE, op.obj)
