"""vnet.reconcile: partitioned planning (pure parts: the cache, the plan, hold), and the exact inverse of ops."""

from __future__ import annotations

import pytest

from nvfabric.vnet.desired import GLOBAL
from nvfabric.vnet.kernel.diff import Action, Op
from nvfabric.vnet.kernel.objects import (
    EncapRoute,
    LocalPortRoute,
    NvgreDevice,
    ProxyNeighbour,
    Sysctl,
    UnreachableRoute,
    Vrf,
    VrfPort,
)
from nvfabric.vnet.reconcile import PartitionError, Reconciler, inverse

RMAC = "02:00:5e:10:00:01"
DEV = NvgreDevice("nvf-gre4", 4, RMAC)
BLUE = {Vrf("nvf-blue", 1000), UnreachableRoute(1000, 4), LocalPortRoute(1000, "10.0.0.10/32", "tap1"),
        VrfPort("tap1", "nvf-blue", 1500)}
RED = {Vrf("nvf-red", 1001), UnreachableRoute(1001, 4), LocalPortRoute(1001, "10.0.0.10/32", "tap2")}
OLD = EncapRoute(1000, "10.0.0.20/32", 5001, "198.51.100.12", "nvf-gre4")
MOVED = EncapRoute(1000, "10.0.0.20/32", 5001, "198.51.100.13", "nvf-gre4")
PROXY = ProxyNeighbour("tap1", "fd00:b::20")
LOCAL = LocalPortRoute(1000, "10.0.0.10/32", "tap1")
UNREACH = UnreachableRoute(1000, 4)


def synced(**parts) -> Reconciler:
    """A reconciler after a full pass that left the kernel exactly as `parts` want it."""
    r = Reconciler(sock=None)  # type: ignore[arg-type] - planning never touches the socket
    r.update(parts)
    r.observed = {o.key: o for objs in parts.values() for o in objs}
    return r


def step(r: Reconciler, hold: bool = False, **parts):
    previous = r.update(parts)
    plan, held = r.plan(previous, hold, full=False)
    # what apply would leave in the kernel
    for op in plan.ops:
        if op.action is Action.DELETE:
            r.observed.pop(op.obj.key)
        else:
            r.observed[op.obj.key] = op.obj
    return {(op.action, op.obj) for op in plan.ops}, held


def test_a_change_in_one_domain_plans_nothing_in_another():
    r = synced(**{GLOBAL: {DEV}, "blue": BLUE, "red": RED})
    r.observed.pop(UnreachableRoute(1001, 4).key)  # red is wrong in the kernel, but red is not dirty
    new = EncapRoute(1000, "10.0.0.30/32", 5001, "198.51.100.13", "nvf-gre4")
    ops, _ = step(r, blue=BLUE | {new})
    assert ops == {(Action.CREATE, new)}
    ops, _ = step(r, blue=BLUE)
    assert ops == {(Action.DELETE, new)}


def test_a_removed_domain_deletes_what_it_had_and_nothing_else():
    r = synced(**{GLOBAL: {DEV}, "blue": BLUE, "red": RED})
    ops, _ = step(r, red=set())
    assert ops == {(Action.DELETE, o) for o in RED}
    assert "red" not in r.desired and set(r.observed.values()) == BLUE | {DEV}


def test_a_stray_is_left_by_partial_passes_and_removed_by_the_full_resync():
    r = synced(**{GLOBAL: {DEV}, "blue": BLUE})
    stray = EncapRoute(1000, "10.9.9.9/32", 5001, "198.51.100.99", "nvf-gre4")  # e.g. made by hand
    r.observed[stray.key] = stray
    assert step(r, blue=BLUE)[0] == set()
    plan, _ = r.plan({}, hold=False, full=True)
    assert [(op.action, op.obj) for op in plan.ops] == [(Action.DELETE, stray)]


def test_a_port_moving_between_domains_is_one_replace_not_a_delete():
    r = synced(blue=BLUE, red=RED)
    port_red = VrfPort("tap1", "nvf-red", 1500)
    ops, _ = step(r, blue=BLUE - {VrfPort("tap1", "nvf-blue", 1500)}, red=RED | {port_red})
    assert ops == {(Action.REPLACE, port_red)}


def test_two_domains_wanting_one_key_differently_is_refused_and_changes_nothing():
    r = synced(blue=BLUE, red=RED)
    with pytest.raises(PartitionError):
        r.update({"red": RED | {VrfPort("tap1", "nvf-red", 1500)}})  # blue still has tap1
    assert r.desired["red"] == frozenset(RED)


def test_without_hold_learned_state_absent_from_desired_is_deleted():
    r = synced(blue={OLD, PROXY, UNREACH})
    ops, held = step(r, blue={UNREACH})
    assert ops == {(Action.DELETE, OLD), (Action.DELETE, PROXY)} and held == 0


def test_hold_keeps_learned_state_but_not_local_state_and_still_follows_a_move():
    r = synced(blue={OLD, PROXY, LOCAL, UNREACH})
    ops, held = step(r, hold=True, blue={UNREACH})
    assert ops == {(Action.DELETE, LOCAL)} and held == 2
    ops, held = step(r, hold=True, blue={UNREACH, MOVED})
    assert ops == {(Action.REPLACE, MOVED)} and held == 1  # the proxy entry is still held
    # End-of-RIB: the next pass without hold, of any partition, deletes what was held
    ops, held = step(r, hold=False, red=RED)
    assert (Action.DELETE, PROXY) in ops and held == 0


def test_a_full_pass_under_hold_keeps_unwanted_learned_state_from_before_a_restart():
    r = Reconciler(sock=None)  # type: ignore[arg-type]
    r.update({"blue": {UNREACH}})
    r.observed = {o.key: o for o in (OLD, LOCAL, UNREACH)}  # what the kernel had before the restart
    plan, held = r.plan({}, hold=True, full=True)
    assert [(op.action, op.obj) for op in plan.ops] == [(Action.DELETE, LOCAL)] and held == 1


def test_inverse_undoes_each_kind_of_op():
    assert inverse(Op(Action.CREATE, LOCAL)) == Op(Action.DELETE, LOCAL)
    assert inverse(Op(Action.DELETE, OLD)) == Op(Action.CREATE, OLD)
    assert inverse(Op(Action.REPLACE, MOVED, OLD)) == Op(Action.REPLACE, OLD, MOVED)
    assert inverse(Op(Action.CREATE, Sysctl("net/ipv4/conf/tap1/proxy_arp", "1"))) is None


def test_a_partition_of_one_object_is_held_as_given_and_planned_like_a_set():
    from nvfabric.vnet.desired import One

    one = One(OLD)
    assert one == frozenset({OLD}) and frozenset({OLD}) == one and hash(one) == hash(frozenset({OLD}))
    assert one | {MOVED} == frozenset({OLD, MOVED}) and type(one | {MOVED}) is frozenset
    assert OLD in one and MOVED not in one and list(one) == [OLD] and len(one) == 1
    r = synced(blue=BLUE)
    r.update({"blue/10.0.0.20": one})
    assert r.desired["blue/10.0.0.20"] is one  # not copied
    plan, _ = r.plan({"blue/10.0.0.20": frozenset()}, hold=False, full=False)
    assert {(op.action, op.obj) for op in plan.ops} == {(Action.CREATE, OLD)}
    r.observed[OLD.key] = OLD
    previous = r.update({"blue/10.0.0.20": One(MOVED)})
    plan, _ = r.plan(previous, hold=False, full=False)
    assert {(op.action, op.obj) for op in plan.ops} == {(Action.REPLACE, MOVED)}
    previous = r.update({"blue/10.0.0.20": frozenset()})
    r.observed[MOVED.key] = MOVED
    plan, _ = r.plan(previous, hold=False, full=False)
    assert {(op.action, op.obj) for op in plan.ops} == {(Action.DELETE, MOVED)}


def test_one_key_wanted_twice_in_one_partition_with_two_values_is_refused():
    r = synced(blue=BLUE)
    with pytest.raises(ValueError, match="two values"):
        r.update({"blue/10.0.0.20": [OLD, MOVED]})
    assert "blue/10.0.0.20" not in r.desired and OLD.key not in r.owner


async def test_a_deferring_call_writes_nothing_and_the_next_call_that_writes_plans_what_waited(monkeypatch):
    written: list[list[tuple[Action, object]]] = []

    async def fake_apply(sock, plan):
        from nvfabric.vnet.kernel.apply import Report

        written.append([(op.action, op.obj) for op in plan.ops])
        return Report(applied=list(plan.ops))

    monkeypatch.setattr("nvfabric.vnet.reconcile.apply", fake_apply)
    r = synced(**{GLOBAL: {DEV}, "blue": BLUE})
    r.observed[OLD.key] = r.held[OLD.key] = OLD  # a remote CA the previous run left: held by the first pass
    outcome = await r.reconcile({"blue": BLUE}, hold=True, defer=True)
    assert outcome.deferred == 0 and outcome.held == 1 and not r.deferred
    # the CA arrives as the kernel has it: nothing to write, nothing waits, no longer held
    outcome = await r.reconcile({"blue/10.0.0.20": {OLD}}, hold=True, defer=True)
    assert (outcome.deferred, outcome.held, r.deferred) == (0, 0, {})
    # it moved while we were away: planned, not written; the kernel keeps the old route meanwhile
    new = EncapRoute(1000, "10.0.0.30/32", 5001, "198.51.100.13", "nvf-gre4")
    outcome = await r.reconcile({"blue/10.0.0.20": {MOVED}, "blue/10.0.0.30": {new}}, hold=True, defer=True)
    assert outcome.deferred == 2 and outcome.counts == {"create": 0, "replace": 0, "delete": 0}
    assert written == [] and r.observed[OLD.key] == OLD and set(r.deferred) == {"blue/10.0.0.20", "blue/10.0.0.30"}
    # and gone again before the end: what waits is planned against what it was before the first deferral
    await r.reconcile({"blue/10.0.0.30": set()}, hold=True, defer=True)
    assert written == []
    # the table is whole (End-of-RIB): one call writes what differs, nothing else (GLOBAL is not planned)
    outcome = await r.reconcile({}, hold=False)
    assert written == [[(Action.REPLACE, MOVED)]] and not r.deferred and outcome.deferred == 0



async def test_an_audit_reads_the_kernel_beside_the_calls_and_the_next_call_repairs_only_what_drifted(monkeypatch):
    """The periodic resync: the desired state held is trusted (nothing is computed again), the kernel is not;
    what the agent itself wrote while the kernel was read is not mistaken for drift."""
    written: list[set[tuple[Action, object]]] = []
    kernel: dict[tuple, object] = {}

    async def fake_apply(sock, plan):
        from nvfabric.vnet.kernel.apply import Report

        written.append({(op.action, op.obj) for op in plan.ops})
        return Report(applied=list(plan.ops))

    r = synced(**{GLOBAL: {DEV}, "blue": BLUE, "red": RED, "blue/10.0.0.20": {OLD}})
    new = EncapRoute(1000, "10.0.0.30/32", 5001, "198.51.100.13", "nvf-gre4")

    async def read_back(self, sysctls, sock=None):
        snapshot = dict(kernel)
        # a call that writes while the kernel is read: the read saw the kernel before it
        await r.reconcile({"blue/10.0.0.30": {new}})
        return snapshot

    monkeypatch.setattr("nvfabric.vnet.reconcile.apply", fake_apply)
    monkeypatch.setattr(Reconciler, "observe", read_back)
    # someone else changed the kernel: red's unreachable route deleted, the CA's route moved, a stray added
    stray = EncapRoute(1000, "10.9.9.9/32", 5001, "198.51.100.99", "nvf-gre4")
    kernel.update(r.observed)
    del kernel[UnreachableRoute(1001, 4).key]
    kernel[OLD.key] = MOVED
    kernel[stray.key] = stray
    # a call of another partition sees none of it (the cache says the kernel is right)
    await r.reconcile({"blue": BLUE})
    assert written == []
    found, suspects = await r.audit(sock=None)
    assert written == [{(Action.CREATE, new)}]
    audit = r.adopt(found, suspects)
    assert audit.drift == {"replaced": 1, "missing": 1, "strays": 1} and not audit.void
    assert r.written_since is None
    outcome = await r.reconcile({})
    assert not outcome.full_observe
    assert written[1] == {(Action.CREATE, UnreachableRoute(1001, 4)), (Action.REPLACE, OLD), (Action.DELETE, stray)}
    # and then nothing is left to do
    await r.reconcile({"blue": BLUE})
    assert len(written) == 2


async def test_an_audit_overtaken_by_a_full_pass_or_a_failed_read_takes_nothing_in(monkeypatch):
    async def failing(self, sysctls, sock=None):
        raise OSError(105, "No buffer space available")

    r = synced(**{GLOBAL: {DEV}, "blue": BLUE})
    monkeypatch.setattr(Reconciler, "observe", failing)
    with pytest.raises(OSError):
        await r.audit(sock=None)
    assert r.written_since is None  # (nothing keeps counting writes for an audit that ended)

    async def empty(self, sysctls, sock=None):
        return {}

    monkeypatch.setattr(Reconciler, "observe", empty)
    found, suspects = await r.audit(sock=None)
    r.invalidate()  # a failed op meanwhile: the next call reads everything
    assert r.adopt(found, suspects).void and not r.replan and not r.strays


async def test_an_audits_repair_is_written_while_other_changes_wait_for_end_of_rib(monkeypatch):
    written: list[set[tuple[Action, object]]] = []

    async def fake_apply(sock, plan):
        from nvfabric.vnet.kernel.apply import Report

        written.append({(op.action, op.obj) for op in plan.ops})
        return Report(applied=list(plan.ops))

    r = synced(**{GLOBAL: {DEV}, "blue": BLUE, "blue/10.0.0.20": {OLD}})
    kernel = dict(r.observed)

    async def read_back(self, sysctls, sock=None):
        return dict(kernel)

    monkeypatch.setattr("nvfabric.vnet.reconcile.apply", fake_apply)
    monkeypatch.setattr(Reconciler, "observe", read_back)
    # a restart's table arriving: the CA moved, planned and not written (deferred)
    await r.reconcile({"blue/10.0.0.20": {MOVED}}, hold=True, defer=True)
    assert written == [] and set(r.deferred) == {"blue/10.0.0.20"}
    # meanwhile someone deletes the port's route: the audit finds it, the repair writes it, and only it
    del kernel[LOCAL.key]
    found, suspects = await r.audit(sock=None)
    assert r.adopt(found, suspects).drift == {"replaced": 0, "missing": 1, "strays": 0}
    await r.repair(hold=True)
    assert written == [{(Action.CREATE, LOCAL)}] and set(r.deferred) == {"blue/10.0.0.20"}
    # End-of-RIB: what waited is written
    await r.reconcile({}, hold=False)
    assert written[1] == {(Action.REPLACE, MOVED)} and not r.deferred
