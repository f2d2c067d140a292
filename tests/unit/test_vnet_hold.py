"""vnet.hold: the End-of-RIB / headless hold of the agent and of the gateway, driven with explicit times."""

from __future__ import annotations

from nvfabric.vnet.hold import Hold, Policy

AGENT = Policy(timeout=60.0)
GATEWAY = Policy(timeout=15.0, every_session=False, headless_holds=False)


def feed(hold: Hold, *events: tuple[str, str, float]) -> Hold:
    for peer, state, now in events:
        hold = hold.on_session(peer, state, now)
    return hold


def test_agent_holds_at_start_until_every_established_session_sent_end_of_rib() -> None:
    hold = Hold.start(AGENT, ["rr1", "rr2"], 0.0)
    assert hold.holding and hold.headless and not hold.synced
    hold = feed(hold, ("rr1", "established", 1.0), ("rr2", "established", 1.5), ("rr1", "end-of-rib", 2.0))
    assert hold.holding and not hold.headless  # rr2's table is not complete yet
    hold = hold.on_session("rr2", "end-of-rib", 2.5)
    assert hold.synced and not hold.holding and hold.next_timer() is None


def test_agent_start_deadline_counts_from_the_first_session_and_not_while_headless() -> None:
    hold = Hold.start(AGENT, ["rr1"], 0.0)
    assert hold.on_timer(100.0) == hold  # headless: nothing to trust yet
    hold = hold.on_session("rr1", "established", 30.0)
    assert hold.next_timer() == 90.0
    assert hold.on_timer(89.0).holding
    assert not hold.on_timer(90.0).holding


def test_agent_back_from_headless_ignores_end_of_rib_until_the_deadline() -> None:
    hold = feed(Hold.start(AGENT, ["rr1", "rr2"], 0.0), ("rr1", "established", 1.0), ("rr1", "end-of-rib", 1.1))
    assert hold.synced
    hold = hold.on_session("rr2", "down", 5.0)  # one of two: not headless
    assert hold.synced and not hold.holding
    hold = hold.on_session("rr1", "down", 200.0)
    assert hold.headless and hold.holding and not hold.synced
    hold = feed(hold, ("rr1", "established", 300.0), ("rr1", "end-of-rib", 300.5))
    assert hold.holding and hold.recovering(300.5)  # a restarted reflector's End-of-RIB is not trusted
    assert hold.next_timer() == 360.0
    assert hold.on_timer(359.0).holding
    back = hold.on_timer(360.0)
    assert back.synced and not back.holding and not back.recovering(360.0)
    # later End-of-RIBs count again
    again = feed(back, ("rr2", "established", 400.0), ("rr2", "end-of-rib", 401.0))
    assert again.synced


def test_a_down_before_any_session_makes_the_agent_wait_for_the_deadline() -> None:
    hold = feed(Hold.start(AGENT, ["rr1"], 0.0), ("rr1", "down", 1.0), ("rr1", "established", 2.0),
                ("rr1", "end-of-rib", 3.0))
    assert hold.holding and not hold.on_timer(62.0).holding


def test_gateway_judges_on_one_end_of_rib_or_at_its_start_deadline() -> None:
    hold = feed(Hold.start(GATEWAY, ["rr1", "rr2"], 0.0), ("rr1", "established", 1.0),
                ("rr2", "established", 1.0), ("rr1", "end-of-rib", 2.0))
    assert hold.synced
    nobody = Hold.start(GATEWAY, ["rr1"], 0.0)
    assert not nobody.synced and nobody.next_timer() == 15.0
    assert nobody.on_timer(15.0).synced  # no reflector at all: it judges anyway


def test_gateway_does_not_judge_on_the_end_of_rib_of_restarted_reflectors() -> None:
    hold = feed(Hold.start(GATEWAY, ["rr1"], 99.0), ("rr1", "established", 100.0), ("rr1", "end-of-rib", 101.0))
    assert hold.synced and not hold.recovering(101.0)  # start: nothing to recover from
    hold = hold.on_session("rr1", "down", 200.0)
    assert hold.synced and not hold.recovering(200.0)  # headless: the last judgement stands
    hold = feed(hold, ("rr1", "established", 210.0), ("rr1", "end-of-rib", 210.5))
    assert not hold.synced and hold.recovering(210.5)
    hold = hold.on_session("rr1", "end-of-rib", 225.0)
    assert hold.synced and not hold.recovering(225.0)
    # one of two reflectors restarting is not a recovery: the other kept the table
    hold = feed(hold, ("rr2", "established", 300.0), ("rr1", "down", 301.0), ("rr1", "established", 302.0))
    assert hold.synced and not hold.recovering(302.0)


def test_gateway_recovery_window_outlasts_a_second_outage() -> None:
    hold = feed(Hold.start(GATEWAY, ["rr1"], 0.0), ("rr1", "established", 1.0), ("rr1", "down", 50.0),
                ("rr1", "established", 60.0), ("rr1", "down", 61.0))
    assert hold.recovering(70.0) and not hold.recovering(75.0)
    assert hold.on_timer(75.0).synced  # judged at the deadline even while headless
