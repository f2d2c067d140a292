"""hostagent.mobility: RFC 7432 section 15 sequence numbers, moving away, duplicate detection."""

from __future__ import annotations

from ipaddress import ip_address

from nvfabric.hostagent.compute import follow_remote
from nvfabric.hostagent.mobility import FREEZE, MAX_MOVES, SEQ_MAX, Mobility

PA = "198.51.100.11"  # ours

KEY = (5001, "02:00:00:00:b1:01")


def test_new_mac_starts_at_zero_and_a_known_remote_mac_gets_remote_plus_one():
    assert Mobility().attach(KEY, None, 0).seqs() == {KEY: 0}
    assert Mobility().attach(KEY, 4, 0).seqs() == {KEY: 5}


def test_a_higher_remote_sequence_means_the_port_moved_away():
    m = Mobility().attach(KEY, None, 0)
    assert m.remote(KEY, 0, remote_wins_tie=False, now=1) is m  # same sequence, our PA is lower: ours
    moved = m.remote(KEY, 1, remote_wins_tie=False, now=1)
    assert moved.inactive() == {KEY}
    # the orchestrator attaches it here again: it takes over with remote + 1
    back = moved.attach(KEY, 1, 2)
    assert back.inactive() == set() and back.seqs() == {KEY: 2}


def test_equal_sequence_goes_to_the_lower_pa():
    m = Mobility().attach(KEY, None, 0)
    assert m.remote(KEY, 0, remote_wins_tie=True, now=1).inactive() == {KEY}


def test_a_stale_lower_remote_sequence_is_not_a_move():
    m = Mobility().attach(KEY, 3, 0)  # seq 4
    assert m.attach(KEY, 2, 1) is m
    assert m.remote(KEY, 3, False, 1) is m


def test_five_moves_in_180_s_freeze_and_are_reported():
    m, seq, now = Mobility(), None, 0.0
    for _i in range(MAX_MOVES):
        m = m.attach(KEY, seq, now)  # taking over from a remote host
        seq = m.seqs()[KEY]
        m = m.remote(KEY, seq + 1, False, now + 1)  # and losing it again
        seq += 1
        now += 10
    frozen = m.freezes(now)
    assert len(frozen) == 1 and frozen[0].vsid == 5001 and frozen[0].moves >= MAX_MOVES
    # frozen: neither taking over nor giving way changes anything
    assert m.attach(KEY, seq + 5, now) is m and m.remote(KEY, seq + 9, False, now) is m
    assert m.freezes(now + FREEZE + 1000) == []


def test_moves_spread_over_more_than_180_s_do_not_freeze():
    m, seq = Mobility(), 0
    for i in range(10):
        now = i * 100.0
        m = m.attach(KEY, seq, now)
        seq = m.seqs()[KEY]
        m = m.remote(KEY, seq + 1, False, now + 1)
        seq += 1
    assert m.freezes(1000.0) == []


def test_detach_forgets_the_mac():
    assert Mobility().attach(KEY, 1, 0).detach(KEY).seqs() == {}


def test_after_the_freeze_a_claim_is_a_move_again_and_counting_starts_over():
    m, seq, now = Mobility(), None, 0.0
    for _i in range(MAX_MOVES):
        m = m.attach(KEY, seq, now)
        seq = m.seqs()[KEY]
        m = m.remote(KEY, seq + 1, False, now + 1)
        seq += 1
        now += 10
    assert m.inactive() == {KEY} and m.freezes(now)  # frozen where the last move took it: elsewhere
    later = now + FREEZE
    back = m.attach(KEY, seq, later)  # the orchestrator attaches it here again once the freeze is over
    assert back.inactive() == set() and back.seqs() == {KEY: seq + 1}
    assert back.freezes(later) == [] and back.macs[KEY].moves == (later,)  # the old moves left the window


# ------------------------------------------------------------------ the 32-bit sequence, a withdrawn claim

def remote_route(seq, pa="198.51.100.12"):
    from nvfabric.bgp.routes import MacIpRoute
    return MacIpRoute(rd=f"{pa}:5001", mac=KEY[1], ip=None, vsid=5001, next_hop=ip_address(pa),
                      route_targets=("65001:1",), mobility_seq=seq)


def test_a_remote_sequence_at_the_32_bit_maximum_is_met_not_passed_and_the_lower_pa_decides_once():
    m = Mobility().attach(KEY, SEQ_MAX, 0)
    assert m.seqs() == {KEY: SEQ_MAX} and not m.inactive()
    # the route we announce with it is valid (the wire's 32 bits)
    assert remote_route(m.seqs()[KEY]).mobility_seq == SEQ_MAX
    # the other host's PA is lower: it keeps the MAC, we give way, and nothing bumps again
    gave_way = follow_remote(m, {KEY: remote_route(SEQ_MAX, "198.51.100.10")}, ip_address(PA), 1)
    assert gave_way.inactive() == {KEY} and gave_way.seqs() == {KEY: SEQ_MAX}
    assert follow_remote(gave_way, {KEY: remote_route(SEQ_MAX, "198.51.100.10")}, ip_address(PA), 2) is gave_way
    # our PA is lower: ours, and the other host (same rules) gives way
    assert follow_remote(m, {KEY: remote_route(SEQ_MAX, "198.51.100.12")}, ip_address(PA), 1) is m


def test_a_port_that_gave_way_comes_back_when_the_claim_is_withdrawn():
    m = Mobility().attach(KEY, None, 0)
    claimed = follow_remote(m, {KEY: remote_route(7)}, ip_address(PA), 1)
    assert claimed.inactive() == {KEY}
    # while the table is incomplete (after a start, headless), an absent claim proves nothing
    assert follow_remote(claimed, {}, ip_address(PA), 2, complete=False).inactive() == {KEY}
    back = follow_remote(claimed, {}, ip_address(PA), 2)
    assert back.inactive() == set() and back.seqs() == {KEY: 7}
    # the claim again, with the same sequence from a higher PA: ours stays
    assert follow_remote(back, {KEY: remote_route(7)}, ip_address(PA), 3) is back


def test_a_state_file_holding_an_out_of_range_sequence_loads_clamped(tmp_path, caplog):
    from nvfabric.hostagent import state
    from tests.unit.agent_fixtures import VM_B1, catalog
    state.save(tmp_path, state.SavedState(catalog(VM_B1), {"blue": 1000, "red": 1001},
                                          {(5001, VM_B1.mac): 5}))
    path = tmp_path / state.FILE
    path.write_text(path.read_text().replace('"02:00:00:00:b1:01",\n   5', f'"02:00:00:00:b1:01",\n   {1 << 32}'))
    assert str(1 << 32) in path.read_text()
    loaded = state.load(tmp_path)
    assert loaded.seqs == {(5001, VM_B1.mac): SEQ_MAX}
    assert "not a 32-bit value" in caplog.text


def test_a_state_file_holding_a_route_target_the_wire_cannot_carry_loads_without_it(tmp_path, caplog):
    from nvfabric.hostagent import state
    from tests.unit.agent_fixtures import VM_B1, catalog
    state.save(tmp_path, state.SavedState(catalog(VM_B1), {"blue": 1000, "red": 1001}, {}))
    path = tmp_path / state.FILE
    path.write_text(path.read_text().replace('"65001:1"', '"65001:1", "70000:70000"'))
    assert state.load(tmp_path).catalog.routing_domains["blue"].route_targets == ("65001:1",)
    assert "70000:70000" in caplog.text
