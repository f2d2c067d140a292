"""Level-triggered and partitioned: desired kernel state (plain data, by partition) against the observed state,
applied as a difference. Shared by the host agent and the gateway (docs/dataplane.md, "Reconciling").

- The desired state comes in partitions (vnet.desired: `GLOBAL` plus one per routing domain). A call to
  `reconcile` names only the partitions that changed (dirty) with their new objects; the others keep the
  objects they had (cached here). Planning costs O(size of the dirty partitions), not O(host): a new
  port in one routing domain never looks at another's 10,000 routes.
- Deletes of a dirty partition: keys in its previous desired set that are not in its new one (and not
  now desired by another partition: a port that moved between routing domains), plus objects held
  earlier that nobody wants any more. Nothing else can be in the kernel under that partition: after a
  full pass the kernel holds exactly the desired objects plus the held ones, and in between it changes
  only by our own acknowledged ops.
- Full pass: at the first call and after `invalidate()` (a failed op: the cache may be wrong) the kernel is
  read in full (vnet.kernel.observe) and every cached partition is diffed against it; that is what removes
  strays (objects with our tags that nobody wants, e.g. left by a crashed earlier run or made by hand). What
  is there and still right is never touched.
- Audit (the periodic resync: the desired state held is right, the kernel may have been changed by someone
  else): the kernel is read back on a socket of its own while calls go on, compared with the cache a slice at
  a time, and only what differs and was not written since the read began is taken in (`adopt`); `repair`
  then plans the partitions that own it again and deletes the strays, even while other ops are deferred
  (as a full pass would). No call waits for the read.
- Deletes of learned state (encap routes, proxy NDP entries) are HELD while `hold` is set: after a
  (re)start until End-of-RIB from the reflectors (or a timeout), and while no reflector is reachable
  (headless). A held object stays in the kernel exactly as it is; replacing it by a newer value (a move)
  still happens, because that is not a removal. The first call without hold deletes every held object
  that is still unwanted.
- A failed op makes the next call a full pass (the cached view may be wrong), so nothing is lost.
- `defer`: plan, but write nothing: what a planned call would change waits, by partition, and the next
  call that does not defer plans those partitions again with its own (the host agent while a restart's
  table arrives, RFC 4724's deferral of route selection: the table is taken in as it comes, O(each batch),
  and the kernel is written once it is whole, only where it differs; nothing at all when it is right).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Hashable, Iterable, Mapping, Set as AbstractSet
from dataclasses import dataclass, field

from nvfabric.vnet.kernel.apply import ApplyError, apply
from nvfabric.vnet.kernel.diff import Action, KeyConflict, Op, Plan, order, removable, upserts
from nvfabric.vnet.kernel.netns import RtnlSocket, read_sysctls
from nvfabric.vnet.kernel.objects import EncapRoute, KernelObject, ProxyNeighbour, Sysctl
from nvfabric.vnet.kernel.observe import observe

LEARNED_KINDS = (EncapRoute, ProxyNeighbour)


class PartitionError(KeyConflict):
    """Two partitions want different values under one key: the desired state is inconsistent."""


@dataclass(frozen=True)
class Outcome:
    at: float  # time.time()
    counts: dict[str, int]
    errors: tuple[str, ...]
    held: int
    seconds: float
    full_observe: bool
    applied: tuple[Op, ...] = ()  # what the kernel acknowledged, in order (for a revert)
    partitions: tuple[str, ...] = ()  # the dirty partitions planned (all of them on a full pass)
    # where `seconds` went: reading (observe, sysctls) and planning in Python; applying, of which the kernel
    # (sendmsg and acks, sysctl writes excluded)
    plan_seconds: float = 0.0
    apply_seconds: float = 0.0
    kernel_seconds: float = 0.0
    deferred: int = 0  # ops planned and not written (`defer`): the partitions wait for a call that writes

    @property
    def ok(self) -> bool:
        return not self.errors


AUDIT_SLICE = 5000  # cache entries compared per step of the loop


@dataclass(frozen=True)
class Audit:
    """What the last audit found in the kernel that the cache did not say (and was not written meanwhile)."""

    at: float  # time.time()
    seconds: float  # from the read's start to the adoption
    drift: dict[str, int]  # replaced (another value), missing (desired, gone), strays (ours, nobody's)
    void: bool = False  # a full pass came first (it read everything itself)


@dataclass
class Reconciler:
    sock: RtnlSocket
    observed: dict[tuple, KernelObject] | None = None  # None: read the kernel in full before the next plan
    # a full read's routes dumped and parsed by a child process (vnet/kernel/apart.py): a host agent's route
    # per remote CA, read beside the loop
    routes_in_child: bool = False
    last: Outcome | None = None
    totals: dict[str, int] = field(default_factory=lambda: {"create": 0, "replace": 0, "delete": 0, "errors": 0})
    # partition -> its desired objects as last given (the caller's frozenset itself: not copied, so one
    # that the caller keeps too, as the host agent does, is held once); owner: key -> the partition that
    # wants it
    desired: dict[str, AbstractSet[KernelObject]] = field(default_factory=dict)
    owner: dict[tuple, str] = field(default_factory=dict)
    held: dict[tuple, KernelObject] = field(default_factory=dict)  # in the kernel, unwanted, kept by hold
    # partitions whose ops a deferring call planned and did not write, with their objects before that call
    # (what a delete is found from): planned again by the next call that writes
    deferred: dict[str, AbstractSet[KernelObject]] = field(default_factory=dict)

    # an audit under way: the keys written since its read began (what the read cannot tell about)
    written_since: set[tuple] | None = None
    audit_started: float = 0.0
    # found by an audit: partitions to plan again, and strays (ours, nobody's) to delete, at the next call
    replan: set[str] = field(default_factory=set)
    strays: set[tuple] = field(default_factory=set)
    last_audit: Audit | None = None

    def invalidate(self) -> None:
        """The cached kernel state may be wrong (a failed op): the caller gives every partition again."""
        self.observed = None
        self.written_since = None  # (an audit under way is void: the next call reads everything)

    async def audit(self, sock: RtnlSocket) -> tuple[dict[tuple, KernelObject], list[tuple]]:
        """Read the kernel back (on `sock`, a socket of its own, while calls go on) and compare it with the
        cache a slice at a time: what the read found, and the keys that differ (suspects, for `adopt`)."""
        if self.observed is None:  # (the next call reads everything anyway)
            return {}, []
        self.written_since = set()
        self.audit_started = time.monotonic()
        try:
            found = await self.observe(sorted(k[1] for k in self.owner if k[0] == "sysctl"), sock)
        except BaseException:
            self.written_since = None
            raise
        suspects: list[tuple] = []
        observed = self.observed
        if observed is None or self.written_since is None:
            return found, suspects
        # what the cache has (changed or gone in the kernel), then what only the kernel has (strays)
        for keys in (list(observed), [k for k in found if k not in observed]):
            for i in range(0, len(keys), AUDIT_SLICE):
                # (the cache may change between slices: adopt judges the suspects again)
                suspects += [key for key in keys[i:i + AUDIT_SLICE] if found.get(key) != observed.get(key)]
                await asyncio.sleep(0)
        return found, suspects

    async def repair(self, hold: bool = False) -> Outcome:
        """Write what `adopt` took in now (the partitions that own it planned again, the strays deleted), even
        while other partitions' ops wait for a call that writes (`defer`): they keep waiting."""
        waiting, self.deferred = self.deferred, {}
        try:
            return await self.reconcile({}, hold)
        finally:
            for name, before in waiting.items():
                self.deferred[name] = before | self.deferred.get(name, frozenset())

    def adopt(self, found: Mapping[tuple, KernelObject], suspects: Iterable[tuple]) -> Audit:
        """Pure, at a moment no call is under way: take in what the audit's read found for the suspects not
        written since it began; their owners are planned again, and the strays deleted, by `repair` (or the next
        call)."""
        written, observed = self.written_since, self.observed
        self.written_since = None
        drift = {"replaced": 0, "missing": 0, "strays": 0}
        if written is None or observed is None:  # (a full pass since: it read everything)
            return Audit(time.time(), 0.0, drift, void=True)
        for key in suspects:
            now = found.get(key)
            if key in written or now == observed.get(key):
                continue
            if now is None:
                del observed[key]
                self.held.pop(key, None)
            else:
                observed[key] = now
            owner = self.owner.get(key)
            if owner is not None:
                self.replan.add(owner)
                drift["missing" if now is None else "replaced"] += 1
            elif now is not None:
                self.strays.add(key)
                drift["strays"] += 1
        self.last_audit = Audit(time.time(), time.monotonic() - self.audit_started, drift)
        return self.last_audit

    @property
    def full_pending(self) -> bool:
        return self.observed is None

    async def observe(self, sysctls: Iterable[str], sock: RtnlSocket | None = None) -> dict[tuple, KernelObject]:
        return {o.key: o for o in await observe(sock or self.sock, sysctls, self.routes_in_child)}

    def wanted(self) -> frozenset[KernelObject]:
        """Every partition's desired objects (what a full pass compares the kernel with)."""
        return frozenset(o for part in self.desired.values() for o in part)

    # ------------------------------------------------------------------ pure planning

    def update(self, parts: Mapping[str, Iterable[KernelObject]]) -> dict[str, AbstractSet[KernelObject]]:
        """Take the dirty partitions' new objects; return their previous objects (for the deletes)."""
        new = {name: objs if _immutable(objs) else frozenset(objs) for name, objs in parts.items()}
        # check everything before changing anything: a refused update leaves the cache as it was. (Two flat
        # indexes of the new objects, not a dict per partition: at the start that is 100,000 partitions.)
        claimed: dict[tuple, str] = {}
        claimed_obj: dict[tuple, KernelObject] = {}
        for name, objs in new.items():
            for obj in objs:
                key = obj.key
                other = claimed.get(key)
                if other is not None and claimed_obj[key] != obj:
                    if other == name:
                        raise KeyConflict(key, name, name, f": {claimed_obj[key]} and {obj}")
                    raise PartitionError(key, other, name)
                claimed[key] = name
                claimed_obj[key] = obj
        for key, name in claimed.items():
            other = self.owner.get(key)
            if other is not None and other != name and other not in new:
                # (a key that changes partition: rare, so the other's object is looked for, not indexed)
                value = _find(self.desired[other], key)
                if value is not None and value != claimed_obj[key]:
                    raise PartitionError(key, other, name)
        previous = {name: self.desired.get(name, frozenset()) for name in new}
        for name, objs in previous.items():
            for obj in objs:
                if self.owner.get(obj.key) == name:
                    del self.owner[obj.key]
        self.owner.update(claimed)
        for name, objs in new.items():
            if objs:
                self.desired[name] = objs
            else:
                self.desired.pop(name, None)
        return previous

    def plan(self, dirty: Mapping[str, Iterable[KernelObject]], hold: bool, full: bool) -> tuple[Plan, int]:
        """Ops for the dirty partitions (`dirty`: their PREVIOUS objects), or for all of them on a full
        pass. Pure: reads only the cached desired and observed state."""
        assert self.observed is not None
        ops: list[Op] = []
        if full:
            names = list(self.desired)
            candidates: Iterable[tuple] = [k for k in self.observed if k not in self.owner]
        else:
            names = [n for n in dirty if n in self.desired]
            candidates = {o.key for prev in dirty.values() for o in prev if o.key not in self.owner}
            candidates |= {k for k in self.strays if k not in self.owner}
            if not hold:
                candidates |= {k for k in self.held if k not in self.owner}
        for name in names:
            ops += upserts(self.desired[name], self.observed)
        self.strays = set()
        if full:
            self.held = {}
        for key in candidates:
            obj = self.observed.get(key)
            if obj is None or not removable(obj):
                continue
            if hold and isinstance(obj, LEARNED_KINDS):
                self.held[key] = obj
                continue
            self.held.pop(key, None)
            ops.append(Op(Action.DELETE, obj))
        if self.held:
            # wanted again (by a partition planned now: O(the change), not O(what is held), which a restart's
            # table arriving batch by batch would pay at every batch), or gone
            wanted = (o.key for name in names for o in self.desired[name]) if not full else list(self.held)
            for key in [k for k in wanted if k in self.held and (k in self.owner or k not in self.observed)]:
                del self.held[key]
        held = len(self.held)
        return order(ops), held

    # ------------------------------------------------------------------ doing

    async def reconcile(self, parts: Mapping[str, Iterable[KernelObject]], hold: bool = False,
                        defer: bool = False) -> Outcome:
        """Apply the dirty partitions' new desired objects (partition -> objects; an empty collection
        removes the partition). Partitions not named keep their previous objects and are not planned,
        except on a full pass, which plans them all. `defer`: plan only (see the module docstring)."""
        started = time.monotonic()
        full = self.observed is None
        previous = self.update(parts)
        if not full:
            for name in self.replan:  # (an audit found their objects changed in the kernel)
                previous.setdefault(name, self.desired.get(name, frozenset()))
        self.replan = set()
        if full:
            self.deferred = {}  # (a full pass plans every partition)
        elif not defer and self.deferred:
            for name, before in self.deferred.items():  # planned again, from what they were before
                previous[name] = frozenset(previous.get(name, ())) | before
            self.deferred = {}
        if full:
            self.observed = await self.observe(sorted(k[1] for k in self.owner if k[0] == "sysctl"))
        else:
            # a sysctl we did not read yet (a new port): read it before planning
            missing = [o.path for name in previous for o in self.desired.get(name, ())
                       if isinstance(o, Sysctl) and o.key not in self.observed]
            for path, value in (read_sysctls(self.sock.netns, missing) if missing else {}).items():
                if value is not None:
                    self.observed[("sysctl", path)] = Sysctl(path, value)
        plan, held = self.plan(previous, hold, full)
        planned = time.monotonic()
        if defer and plan and not full:
            keys = {op.obj.key for op in plan.ops}
            waiting = {self.owner[k] for k in keys if k in self.owner}
            waiting |= {name for name, before in previous.items() if any(o.key in keys for o in before)}
            for name in waiting:  # (their objects before the first deferred call: what a delete is found from)
                self.deferred[name] = frozenset(previous.get(name, ())) | self.deferred.get(name, frozenset())
            self.last = Outcome(time.time(), {"create": 0, "replace": 0, "delete": 0}, (), held, planned - started,
                                False, (), tuple(sorted(previous)), planned - started, deferred=len(plan.ops))
            return self.last
        errors: list[ApplyError] = []
        applied: tuple[Op, ...] = ()
        kernel = 0.0
        if plan:
            report = await apply(self.sock, plan)
            kernel = report.kernel_seconds
            errors = report.errors
            applied = tuple(report.applied)
            failed = {id(e.op) for e in errors}
            assert self.observed is not None
            if self.written_since is not None:
                self.written_since.update(op.obj.key for op in plan.ops)
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
        done = time.monotonic()
        self.last = Outcome(time.time(), counts, tuple(str(e) for e in errors), held, done - started, full,
                            applied, tuple(sorted(self.desired if full else previous)), planned - started,
                            done - planned, kernel)
        return self.last

    async def revert(self, applied: tuple[Op, ...]) -> list[ApplyError]:
        """Undo acknowledged ops exactly (not by observing: an object the kernel half-accepted, such as a
        route on a device that never joined our VRF, may be invisible to observe), then re-read the kernel
        at the next call. The caller then reconciles the previous desired partitions again."""
        undo = [inv for op in applied if (inv := inverse(op)) is not None]
        report = await apply(self.sock, order(undo))
        self.observed = None
        return report.errors


def _immutable(objects: Iterable[KernelObject]) -> bool:
    """A frozenset, or another hashable set (vnet/desired.py `One`): held as given, never copied."""
    return _immutable_kind(type(objects))


@functools.cache
def _immutable_kind(kind: type) -> bool:
    # (by type, once: the ABC checks cost more than the rest of a remote CA's update at a restart)
    return issubclass(kind, AbstractSet) and issubclass(kind, Hashable)


def _find(objects: Iterable[KernelObject], key: tuple) -> KernelObject | None:
    return next((o for o in objects if o.key == key), None)


def inverse(op: Op) -> Op | None:
    if op.action is Action.CREATE:
        # a sysctl we set for the first time has no earlier value we know of: leave it
        return None if isinstance(op.obj, Sysctl) else Op(Action.DELETE, op.obj)
    if op.action is Action.REPLACE:
        return Op(Action.REPLACE, op.old, op.obj) if op.old is not None else None
    return Op(Action.CREATE, op.obj)

