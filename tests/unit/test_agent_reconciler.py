"""hostagent.reconciler: held deletes of learned state, and the exact inverse of applied ops (pure parts)."""

from __future__ import annotations

from hostagent.reconciler import Reconciler, inverse
from vnet.kernel.diff import Action, Op
from vnet.kernel.objects import EncapRoute, LocalPortRoute, ProxyNeighbour, Sysctl, UnreachableRoute

OLD = EncapRoute(1000, "10.0.0.20/32", 5001, "198.51.100.12", "nvf-gre4")
MOVED = EncapRoute(1000, "10.0.0.20/32", 5001, "198.51.100.13", "nvf-gre4")
PROXY = ProxyNeighbour("tap1", "fd00:b::20")
LOCAL = LocalPortRoute(1000, "10.0.0.10/32", "tap1")
UNREACH = UnreachableRoute(1000, 4)


def reconciler(*observed) -> Reconciler:
    r = Reconciler(sock=None)  # type: ignore[arg-type] - plan() never touches the socket
    r.observed = {o.key: o for o in observed}
    return r


def test_without_hold_learned_state_absent_from_desired_is_deleted():
    plan, held = reconciler(OLD, PROXY, UNREACH).plan(frozenset({UNREACH}), hold=False)
    assert {(op.action, op.obj) for op in plan.ops} == {(Action.DELETE, OLD), (Action.DELETE, PROXY)} and held == 0


def test_hold_keeps_learned_state_but_not_local_state_and_still_follows_a_move():
    plan, held = reconciler(OLD, PROXY, LOCAL, UNREACH).plan(frozenset({UNREACH}), hold=True)
    assert [(op.action, op.obj) for op in plan.ops] == [(Action.DELETE, LOCAL)] and held == 2
    plan, held = reconciler(OLD, UNREACH).plan(frozenset({UNREACH, MOVED}), hold=True)
    assert [(op.action, op.obj, op.old) for op in plan.ops] == [(Action.REPLACE, MOVED, OLD)] and held == 0


def test_inverse_undoes_each_kind_of_op():
    assert inverse(Op(Action.CREATE, LOCAL)) == Op(Action.DELETE, LOCAL)
    assert inverse(Op(Action.DELETE, OLD)) == Op(Action.CREATE, OLD)
    assert inverse(Op(Action.REPLACE, MOVED, OLD)) == Op(Action.REPLACE, OLD, MOVED)
    assert inverse(Op(Action.CREATE, Sysctl("net/ipv4/conf/tap1/proxy_arp", "1"))) is None
