"""gateway.role: which gateway serves, driven with explicit times. One gateway's machine alone (tables of
inputs and the expected role after each), then two machines whose only channel is a simulated fabric
(each sees the other's default route while the other serves and both reach a reflector)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pytest

from nvfabric.gateway.role import (ANNOUNCE, DEPREFERRED, HOLD_WAIT, ISOLATION_GRACE, START_GRACE, WITHDRAWN,
                                   Role, order)

A, B = "198.51.100.21", "198.51.100.22"  # gw1 (configured active, lower PA), gw2 (configured standby)
RRS = ("rr1", "rr2")


def machine(standby: bool = False, pa: str = A) -> Role:
    return Role.start(standby, pa, RRS, 0.0)


def run(role: Role, steps: list[tuple]) -> Role:
    """Each step: (time, event, *args, expected serving, expected upstream); event is "up"/"down"/"eor"
    (a reflector session's news, args: the reflector), "routes" (args: the other gateways' PAs) or "timer"
    (the machine's own deadline must be due). The expectation is checked after the step."""
    for i, (now, event, *args, serving, upstream) in enumerate(steps):
        if event in ("up", "down", "eor"):
            state = {"up": "established", "down": "down", "eor": "end-of-rib"}[event]
            role = role.on_session(args[0], state, now)
        elif event == "routes":
            role = role.on_routes(args[0], now)
        else:
            due = role.next_timer()
            assert due is not None and due <= now, f"step {i}: no timer due at {now} (next: {due})"
            role = role.on_timer(now)
        assert (role.serving, role.upstream) == (serving, upstream), f"step {i} {event}@{now}: {role.reason}"
    return role


def test_cold_start_of_the_configured_active_gateway_serves_at_end_of_rib_not_before() -> None:
    role = run(machine(), [
        (0.5, "up", "rr1", False, WITHDRAWN),  # a session, but its table is not complete yet
        (0.6, "routes", [], False, WITHDRAWN),
        (0.9, "eor", "rr1", True, ANNOUNCE),  # nobody serves: the configured active at once
        (1.0, "up", "rr2", True, ANNOUNCE),
    ])
    assert role.reason == "nobody serves: serving (configured active)" and role.changes == 1 and role.since == 0.9


def test_cold_start_of_a_standby_waits_the_start_grace_then_serves_if_still_nobody_does() -> None:
    role = run(machine(standby=True, pa=B), [
        (0.5, "up", "rr1", False, WITHDRAWN),
        (0.9, "eor", "rr1", False, WITHDRAWN),
    ])
    assert role.next_timer() == 0.9 + START_GRACE and "unless a gateway does" in role.reason
    run(role, [(0.9 + START_GRACE, "timer", True, ANNOUNCE)])
    # the active's route during the grace: the standby never announces
    run(role, [(2.0, "routes", [A], False, WITHDRAWN)])
    assert run(role, [(2.0, "routes", [A], False, WITHDRAWN)]).next_timer() is None


@pytest.mark.parametrize("standby", [False, True])
def test_a_restarting_gateway_finds_the_other_serving_and_stands_by_whatever_its_preference(standby: bool) -> None:
    """The old active back while the standby serves (standby False), and the standby's restart (True)."""
    other = B if not standby else A
    role = run(machine(standby, A if not standby else B), [
        (0.5, "up", "rr1", False, WITHDRAWN),
        (0.6, "routes", [other], False, WITHDRAWN),
        (0.7, "eor", "rr1", False, WITHDRAWN),
        (0.8, "up", "rr2", False, WITHDRAWN),
        (0.9, "eor", "rr2", False, WITHDRAWN),
    ])
    assert role.reason == f"standing by: gateway {other} serves" and role.changes == 0
    # non-preemptive: it stays so as long as the other serves; it takes over at once when the other goes
    role = run(role, [(50.0, "routes", [other], False, WITHDRAWN), (60.0, "routes", [], True, ANNOUNCE)])
    assert role.reason == "took over: no other gateway's default route in the fabric" and role.since == 60.0


def test_end_of_rib_that_never_comes_is_waited_for_hold_wait_after_the_first_session() -> None:
    role = run(machine(), [(2.0, "up", "rr1", False, WITHDRAWN)])
    assert role.next_timer() == 2.0 + HOLD_WAIT
    run(role, [(2.0 + HOLD_WAIT, "timer", True, ANNOUNCE)])


def test_no_reflector_session_at_all_is_no_judgement_whatever_the_time() -> None:
    role = machine()
    assert role.next_timer() is None  # the hold's deadline counts from the first session
    role = role.on_timer(HOLD_WAIT + 100)
    assert not role.serving and role.upstream == WITHDRAWN and role.next_timer() is None
    assert role.reason == "no reflector session: not judging, announcing nothing"


def test_a_tie_is_resolved_by_the_pa_the_lower_keeps_serving() -> None:
    serving = run(machine(pa=B), [(0.5, "up", "rr1", False, WITHDRAWN), (0.6, "eor", "rr1", True, ANNOUNCE)])
    lower = run(serving, [(1.0, "routes", [A], False, WITHDRAWN)])  # A < B: B withdraws at once
    assert lower.reason == f"tie: gateway {A} serves too and has the lower PA: standing by"
    higher = run(serving, [(1.0, "routes", ["198.51.100.23"], True, ANNOUNCE)])  # it is the other who withdraws
    assert higher.reason == serving.reason and higher.changes == serving.changes
    # the order: IPv4 before IPv6, then by value, the same on both sides
    assert sorted(map(ipaddress.ip_address, ["2001:db8::1", "198.51.100.9", "10.0.0.1"]), key=order) == [
        ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("198.51.100.9"), ipaddress.ip_address("2001:db8::1")]


def test_our_own_pa_is_not_another_gateway() -> None:
    role = run(machine(), [(0.5, "up", "rr1", False, WITHDRAWN), (0.6, "routes", [A], False, WITHDRAWN),
                           (0.7, "eor", "rr1", True, ANNOUNCE)])
    assert role.others == frozenset()


SERVING = [(0.5, "up", "rr1", False, WITHDRAWN), (0.6, "up", "rr2", False, WITHDRAWN),
           (0.7, "eor", "rr1", True, ANNOUNCE)]


def test_losing_one_of_two_reflectors_changes_nothing() -> None:
    role = run(machine(), [*SERVING, (10.0, "down", "rr1", True, ANNOUNCE), (20.0, "up", "rr1", True, ANNOUNCE)])
    assert role.changes == 1


def test_isolation_depreferred_upstream_then_withdrawn_after_the_grace() -> None:
    role = run(machine(), [*SERVING, (10.0, "down", "rr1", True, ANNOUNCE), (11.0, "down", "rr2", False, DEPREFERRED)])
    assert role.reason.startswith("isolated: no reflector session; public addresses announced depreferred")
    assert role.next_timer() == 11.0 + ISOLATION_GRACE and role.changes == 2
    role = run(role, [(11.0 + ISOLATION_GRACE, "timer", False, WITHDRAWN)])
    assert role.reason == f"isolated: no reflector session for {ISOLATION_GRACE:g} s: public addresses withdrawn"
    # back: the reflectors' tables cannot be trusted at once (End-of-RIB ignored); then the other serves
    role = run(role, [(100.0, "up", "rr1", False, WITHDRAWN), (100.1, "eor", "rr1", False, WITHDRAWN),
                      (100.2, "routes", [B], False, WITHDRAWN), (100.0 + HOLD_WAIT, "timer", False, WITHDRAWN)])
    assert role.reason == f"standing by: gateway {B} serves"


def test_isolation_that_ends_within_the_grace_keeps_the_depreferred_upstream_until_judged() -> None:
    isolated = run(machine(), [*SERVING, (10.0, "down", "rr1", True, ANNOUNCE),
                               (11.0, "down", "rr2", False, DEPREFERRED),
                               (15.0, "up", "rr1", False, DEPREFERRED), (15.1, "eor", "rr1", False, DEPREFERRED)])
    assert isolated.next_timer() == 15.0 + HOLD_WAIT  # the isolation deadline ended with the headless time
    assert "public addresses still announced depreferred" in isolated.reason
    # the standby took over meanwhile: we stand by and withdraw
    run(isolated, [(16.0, "routes", [B], False, DEPREFERRED), (15.0 + HOLD_WAIT, "timer", False, WITHDRAWN)])
    # nobody took over (both reflectors restarted): we served last, so we serve again at once
    back = run(isolated, [(15.0 + HOLD_WAIT, "timer", True, ANNOUNCE)])
    assert back.reason == "nobody serves: serving again (we served until we lost the reflectors)"
    # lost again before judging: the grace counts again from then
    again = run(isolated, [(20.0, "down", "rr1", False, DEPREFERRED)])
    assert again.next_timer() == 20.0 + ISOLATION_GRACE


def test_a_standby_without_reflectors_does_not_take_over() -> None:
    """What it did before: its table emptied, no other gateway's route left, so it announced: two
    gateways upstream. Now a gateway that sees nothing decides nothing."""
    role = run(machine(standby=True, pa=B), [(0.5, "up", "rr1", False, WITHDRAWN), (0.6, "up", "rr2", False, WITHDRAWN),
                                             (0.7, "routes", [A], False, WITHDRAWN),
                                             (0.8, "eor", "rr1", False, WITHDRAWN),
                                             (5.0, "down", "rr1", False, WITHDRAWN),
                                             (5.1, "routes", [A], False, WITHDRAWN),
                                             (5.2, "down", "rr2", False, WITHDRAWN),
                                             (5.3, "routes", [], False, WITHDRAWN)])
    assert role.reason == "no reflector session: not judging, announcing nothing" and role.next_timer() is None


# ---------------------------------------------------------------------------- two gateways, one fabric


@dataclass
class Sim:
    """Two (or more) gateways whose only channel is the reflectors' table: a gateway's default route is in
    the table while it serves and has a reflector session; each gateway with a session sees the others'."""

    roles: dict[str, Role]
    now: float = 0.0
    reflectors_up: bool = True
    cut: set[str] = field(default_factory=set)  # gateways whose fabric links are down
    history: list[tuple[float, dict[str, bool]]] = field(default_factory=list)

    def reaches(self, name: str) -> bool:
        return self.reflectors_up and name not in self.cut

    def table(self) -> set[str]:
        return {str(r.pa) for n, r in self.roles.items() if r.serving and self.reaches(n)}

    def sessions(self, what: str, names: list[str] | None = None) -> None:
        for name in names or list(self.roles):
            for rr in RRS:
                self.roles[name] = self.roles[name].on_session(rr, what, self.now)
        self.history.append((self.now, {n: r.serving for n, r in self.roles.items()}))

    def step(self, seconds: float = 0.1) -> None:
        """Time passes: due timers fire, then every gateway with a session reads the table."""
        self.now = round(self.now + seconds, 3)
        for name, role in self.roles.items():
            due = role.next_timer()
            if due is not None and due <= self.now:
                self.roles[name] = role.on_timer(self.now)
        self.history.append((self.now, {n: r.serving for n, r in self.roles.items()}))
        table = self.table()
        for name in self.roles:
            if self.reaches(name):
                self.roles[name] = self.roles[name].on_routes(table, self.now)
        self.history.append((self.now, {n: r.serving for n, r in self.roles.items()}))

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / 0.1)):
            self.step()

    def serving(self) -> list[str]:
        return sorted(n for n, r in self.roles.items() if r.serving)


def cold(*, standby_a: bool = False, standby_b: bool = True, b_after: float = 0.0) -> Sim:
    sim = Sim({"gw1": Role.start(standby_a, A, RRS, 0.0), "gw2": Role.start(standby_b, B, RRS, 0.0)})
    sim.sessions("established", ["gw1"])
    sim.run(b_after)
    sim.sessions("established", ["gw2"])
    sim.step()
    sim.sessions("end-of-rib")
    return sim


@pytest.mark.parametrize(("standby_a", "standby_b", "b_after", "winner", "ever_both"), [
    (False, True, 0.0, "gw1", False),  # the usual pair, started together: the standby's grace lets gw1 in
    (False, True, 5.0, "gw1", False),
    (False, False, 0.0, "gw1", True),  # both configured active: both announce, the lower PA stays
    (True, True, 0.0, "gw1", True),  # both standby: both after the grace, the lower PA stays
    (True, False, 0.0, "gw2", False),  # preferences swapped: the configured active wins, whatever its PA
])
def test_cold_start_of_both_ends_with_exactly_one_serving(standby_a: bool, standby_b: bool, b_after: float,
                                                          winner: str, ever_both: bool) -> None:
    sim = cold(standby_a=standby_a, standby_b=standby_b, b_after=b_after)
    sim.run(START_GRACE + 2)
    assert sim.serving() == [winner]
    assert any(all(s.values()) for _, s in sim.history) == ever_both
    # a tie ends within one round of the table
    both = [t for t, s in sim.history if all(s.values())]
    assert not both or max(both) - min(both) <= 0.1


def test_the_old_active_comes_back_and_does_not_steal_the_role() -> None:
    sim = cold()
    sim.run(START_GRACE + 2)
    sim.cut.add("gw1")  # gw1's fabric side goes: the reflectors drop its routes
    sim.sessions("down", ["gw1"])
    sim.step()
    assert sim.serving() == ["gw2"] and sim.roles["gw1"].upstream == DEPREFERRED
    sim.run(1)
    took = sim.roles["gw2"].since
    # gw1 restarts (a new machine, a cold start) with its fabric back
    sim.cut.clear()
    sim.roles["gw1"] = Role.start(False, A, RRS, sim.now)
    sim.sessions("established", ["gw1"])
    sim.step()
    sim.sessions("end-of-rib", ["gw1"])
    sim.run(HOLD_WAIT + START_GRACE + 5)
    assert sim.serving() == ["gw2"] and sim.roles["gw2"].since == took
    assert sim.roles["gw1"].reason == f"standing by: gateway {B} serves"


def test_gw1_isolated_and_back_without_a_restart_stands_by() -> None:
    sim = cold()
    sim.run(START_GRACE + 2)
    sim.cut.add("gw1")
    sim.sessions("down", ["gw1"])
    sim.run(5)
    sim.cut.clear()
    sim.sessions("established", ["gw1"])
    sim.step()
    sim.sessions("end-of-rib", ["gw1"])
    sim.run(HOLD_WAIT + START_GRACE + 5)
    assert sim.serving() == ["gw2"] and sim.roles["gw1"].upstream == WITHDRAWN
    assert not any(all(s.values()) for _, s in sim.history)  # never both


def test_both_reflectors_restart_the_serving_gateway_serves_again_and_the_other_never() -> None:
    sim = cold()
    sim.run(START_GRACE + 2)
    sim.reflectors_up = False
    sim.sessions("down")
    sim.run(10)
    # meanwhile gw1 keeps its public addresses upstream (depreferred: nobody else announces them)
    assert sim.serving() == [] and sim.roles["gw1"].upstream == DEPREFERRED and sim.roles["gw2"].upstream == WITHDRAWN
    sim.reflectors_up = True
    sim.sessions("established")
    sim.step()
    sim.sessions("end-of-rib")  # restarted reflectors: their End-of-RIB comes before the table fills
    sim.run(HOLD_WAIT + START_GRACE + 5)
    assert sim.serving() == ["gw1"] and sim.roles["gw1"].upstream == ANNOUNCE
    assert all(not s["gw2"] for _, s in sim.history)


def test_the_sync_link_is_not_an_input_the_fabric_decides() -> None:
    """gw1 and gw2 lose each other (the sync link, or any direct path) but both reach the reflectors:
    nothing in the role depends on it, and exactly one announces at every moment after the start."""
    sim = cold()
    sim.run(START_GRACE + 2)
    before = dict(sim.roles)
    sim.run(60)
    assert sim.roles == before and sim.serving() == ["gw1"]


def test_the_serving_gateway_dies_the_other_takes_over_in_one_round() -> None:
    sim = cold()
    sim.run(START_GRACE + 2)
    del sim.roles["gw1"]  # gone: its sessions expired, the reflectors withdrew its routes
    sim.step()
    assert sim.serving() == ["gw2"] and sim.roles["gw2"].upstream == ANNOUNCE
    assert sim.roles["gw2"].reason == "took over: no other gateway's default route in the fabric"
