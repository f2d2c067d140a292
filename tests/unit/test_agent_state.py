"""hostagent/state.py: a change is one journal line; the journal is compacted into a snapshot; a torn last
line is ignored, a damaged one before it reported; a last good copy (PREV and the journal after it) is kept
and used when the snapshot cannot be read; a save that cannot be written raises SaveError and a load finds
the state as it was."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from nvfabric.hostagent import state
from nvfabric.hostagent.holders import Holding
from nvfabric.vnet.catalog import Catalog
from tests.unit.agent_fixtures import BLUE, RED, VM_B1, VM_R1, catalog, ip
from nvfabric.vnet.model import Port

FIRST = state.SavedState(catalog(VM_B1), {"blue": 1000, "red": 1001}, {})
SECOND = state.SavedState(catalog(VM_B1, VM_R1), {"blue": 1000, "red": 1001}, {(5001, VM_B1.mac): 2})


def same(a: state.SavedState | None, b: state.SavedState) -> bool:
    return a is not None and (dict(a.catalog.ports), dict(a.catalog.routing_domains), dict(a.tables), dict(a.seqs),
                              {k: (h.port, h.seq) for k, h in a.holders.items()}) == (
        dict(b.catalog.ports), dict(b.catalog.routing_domains), dict(b.tables), dict(b.seqs),
        {k: (h.port, h.seq) for k, h in b.holders.items()})


def port(i: int) -> Port:
    return Port(f"vm{i}", f"tap{i}", f"02:00:00:00:10:{i:02x}", 5001, (ip(f"10.0.0.{20 + i}"),))


def with_ports(*ports: Port, seqs: dict | None = None) -> state.SavedState:
    return state.SavedState(catalog(*ports), {"blue": 1000, "red": 1001}, seqs or {})


def test_each_save_keeps_the_file_it_replaces_as_the_previous_good_copy(tmp_path):
    state.save(tmp_path, FIRST)
    assert not (tmp_path / state.PREV).exists()
    state.save(tmp_path, SECOND)
    assert same(state.load(tmp_path), SECOND)
    assert same(state.loads((tmp_path / state.PREV).read_text(), tmp_path / state.PREV), FIRST)
    # no temporary file left
    assert sorted(p.name for p in tmp_path.iterdir()) == [state.JOURNAL, state.JOURNAL_PREV, state.FILE, state.PREV]


def test_a_change_is_one_line_of_the_journal_and_the_snapshot_is_not_rewritten(tmp_path):
    store = state.Store(tmp_path)
    assert store.load() is None
    store.save(FIRST)  # the first save: a snapshot
    snapshot = (tmp_path / state.FILE).read_text()
    store.save(SECOND, ports={"r1"}, macs={(5001, VM_B1.mac)})
    store.save(SECOND)  # nothing changed: nothing written
    store.save(with_ports(VM_R1, seqs={(5001, VM_B1.mac): 2}), ports={"b1"})
    assert (tmp_path / state.FILE).read_text() == snapshot and store.snapshots == 1
    lines = (tmp_path / state.JOURNAL).read_text().splitlines()
    assert len(lines) == 3  # the header, two changes
    assert '"r1"' in lines[1] and '"b1"' not in lines[1] and '"b1":null' in lines[2]
    assert same(state.Store(tmp_path).load(), with_ports(VM_R1, seqs={(5001, VM_B1.mac): 2}))


def test_the_journal_is_compacted_into_a_snapshot_when_it_holds_as_many_changes_as_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "bound", lambda s: 3)
    store = state.Store(tmp_path)
    store.save(with_ports())
    for i in range(7):
        store.save(with_ports(*(port(j) for j in range(i + 1))), ports={f"vm{i}"})
    # snapshot; 3 changes, the third followed by a snapshot; again; one change
    assert store.snapshots == 3 and store.changes == 1
    assert same(state.Store(tmp_path).load(), with_ports(*(port(j) for j in range(7))))


def test_a_torn_last_change_is_ignored_with_a_warning_and_the_next_save_is_whole(tmp_path, caplog):
    store = state.Store(tmp_path)
    store.save(FIRST)
    store.save(SECOND, ports={"r1"})
    journal = tmp_path / state.JOURNAL
    whole = journal.read_bytes()
    for torn in (b'{"ports":{"x":', b"\x00\x00\x00\x00", b'{"ports":{"x":{"name":1}}}\n'):
        journal.write_bytes(whole + torn)  # a crash in the middle of an append (or a bad sector)
        with caplog.at_level(logging.WARNING, logger="nvfabric.hostagent.state"):
            again = state.Store(tmp_path)
            assert same(again.load(), SECOND)
        assert "torn" in caplog.text
    again.save(FIRST, ports={"r1"})  # after a torn line: not appended after it
    assert again.snapshots == 1
    assert same(state.Store(tmp_path).load(), FIRST)


def test_a_damaged_change_before_the_last_is_an_error_and_the_changes_before_it_are_kept(tmp_path, caplog):
    store = state.Store(tmp_path)
    store.save(with_ports())
    for i in range(4):
        store.save(with_ports(*(port(j) for j in range(i + 1))), ports={f"vm{i}"})
    journal = tmp_path / state.JOURNAL
    lines = journal.read_bytes().split(b"\n")
    lines[3] = b"garbage"  # the third change
    journal.write_bytes(b"\n".join(lines))
    with caplog.at_level(logging.ERROR, logger="nvfabric.hostagent.state"):
        again = state.Store(tmp_path)
        assert same(again.load(), with_ports(port(0), port(1)))
    assert "change 3 of 4 is unreadable" in caplog.text
    again.save(with_ports(port(0)), ports={"vm1"})
    assert again.snapshots == 1 and same(state.Store(tmp_path).load(), with_ports(port(0)))


@pytest.mark.parametrize("damage", [
    lambda p: p.write_text("{"),  # truncated
    lambda p: p.write_text("[]"),  # JSON, not a state
    lambda p: p.write_bytes(b"\xff\xfe garbage"),  # not text
    lambda p: p.write_text('{"version": 99}'),
    lambda p: (p.unlink(), p.mkdir()),  # not a file
    lambda p: p.unlink(),  # lost between the two renames of a save
])
def test_an_unreadable_snapshot_is_reported_and_the_previous_copy_with_its_journal_used(tmp_path, caplog, damage):
    store = state.Store(tmp_path)
    store.save(FIRST)
    store.save(SECOND, ports={"r1"})  # in the journal that follows FIRST
    state.save(tmp_path, SECOND)  # a snapshot made by another writer: its fallback is FIRST alone
    damage(tmp_path / state.FILE)
    with caplog.at_level(logging.ERROR, logger="nvfabric.hostagent.state"):
        assert same(state.load(tmp_path), SECOND)  # FIRST + the journal that followed it


def test_after_compaction_an_unreadable_snapshot_loses_no_change(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "bound", lambda s: 2)
    store = state.Store(tmp_path)
    store.save(with_ports())
    wanted = with_ports()
    for i in range(7):
        wanted = with_ports(*(port(j) for j in range(i + 1)))
        store.save(wanted, ports={f"vm{i}"})
    assert store.snapshots == 4 and store.changes == 1
    (tmp_path / state.FILE).write_text("{")
    # PREV + JOURNAL_PREV (what the lost snapshot was made of) + the journal after it
    assert same(state.load(tmp_path), wanted)


def test_without_a_good_copy_the_error_names_both_files(tmp_path):
    state.save(tmp_path, FIRST)
    state.save(tmp_path, SECOND)
    (tmp_path / state.FILE).write_text("{")
    (tmp_path / state.PREV).write_text("{")
    with pytest.raises(state.StateError, match="previous copy"):
        state.load(tmp_path)


def test_a_crash_between_the_snapshot_and_its_journal_replays_nothing_twice(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "bound", lambda s: 1)
    store = state.Store(tmp_path)
    store.save(FIRST)
    store.save(SECOND, ports={"r1"})
    real = state.replace_keeping_previous

    def crash(path, previous, text, keep=True):
        if path.name == state.JOURNAL:
            raise KeyboardInterrupt  # killed after the snapshot's rename, before the journal's
        real(path, previous, text, keep)

    monkeypatch.setattr(state, "replace_keeping_previous", crash)
    with pytest.raises(KeyboardInterrupt):
        store.save(FIRST, ports={"r1"})  # the journal is full: a snapshot
    # the old journal (SECOND's change) follows another snapshot: not replayed over FIRST
    assert same(state.load(tmp_path), FIRST)


def test_a_save_that_cannot_be_written_raises_and_a_load_finds_the_state_as_before(tmp_path):
    state.save(tmp_path, FIRST)
    (tmp_path / state.FILE).unlink()
    (tmp_path / state.FILE).mkdir()  # the rename onto it fails, as a full or read-only disk would
    with pytest.raises(state.SaveError) as err:
        state.save(tmp_path, SECOND)
    assert err.value.path == tmp_path / state.FILE and err.value.problem
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    with pytest.raises(state.SaveError):
        state.save(blocked, SECOND)


def test_an_append_that_fails_is_cut_back_and_the_next_save_is_whole(tmp_path, monkeypatch):
    store = state.Store(tmp_path)
    store.save(FIRST)
    before = (tmp_path / state.JOURNAL).read_bytes()
    real_write = os.write

    def full(fd, data):
        real_write(fd, bytes(data[:5]))  # half a line, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(state.SaveError, match="No space left"):
        store.save(SECOND, ports={"r1"})
    monkeypatch.setattr(os, "write", real_write)
    assert (tmp_path / state.JOURNAL).read_bytes() == before
    assert same(state.load(tmp_path), FIRST)  # the change was not made
    store.save(SECOND, ports={"r1"})
    assert store.snapshots == 2 and same(state.load(tmp_path), SECOND)


def test_virtual_addresses_and_tables_are_journalled(tmp_path):
    store = state.Store(tmp_path)
    store.save(FIRST)
    key = ("blue", ip("10.0.0.200"))
    third = state.SavedState(FIRST.catalog, {"blue": 1000, "red": 1002}, {}, {key: Holding("b1", 4)})
    store.save(third)
    fourth = state.SavedState(FIRST.catalog, {"blue": 1000}, {}, {key: Holding(None, 5)})
    store.save(fourth)
    assert same(state.load(tmp_path), fourth)
    store.save(FIRST)
    assert same(state.load(tmp_path), FIRST)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "delete", "move"]), st.integers(0, 5)), max_size=25),
       st.integers(1, 6))
def test_any_sequence_of_changes_loads_back_as_it_was_saved(tmp_path_factory, steps, limit):
    """Property: after any changes, with any compaction bound, a load finds the last save."""
    directory: Path = tmp_path_factory.mktemp("state")
    old_bound, state.bound = state.bound, lambda s: limit
    try:
        store = state.Store(directory)
        ports: dict[str, Port] = {}
        seqs: dict = {}
        store.save(state.SavedState(catalog(), {"blue": 1000}, {}))
        for action, i in steps:
            p = port(i)
            if action == "put":
                ports[p.name] = p
                seqs[(5001, p.mac)] = seqs.get((5001, p.mac), 0) + 1
            elif action == "delete":
                ports.pop(p.name, None)
                seqs.pop((5001, p.mac), None)
            elif p.name in ports:  # readdressed
                ports[p.name] = Port(p.name, p.interface, p.mac, 5001, (ip(f"10.0.0.{100 + i}"),))
            store.save(state.SavedState(Catalog.build({"blue": BLUE, "red": RED}, ports), {"blue": 1000},
                                        dict(seqs)), ports={p.name}, macs={(5001, p.mac)})
        assert same(state.Store(directory).load(), state.SavedState(
            Catalog.build({"blue": BLUE, "red": RED}, ports), {"blue": 1000}, seqs))
    finally:
        state.bound = old_bound


def test_a_state_dir_from_before_the_journal_is_read_and_its_next_save_is_whole(tmp_path):
    old = state.dumps(FIRST).replace('"generation": "",\n', "")  # no generation, no journal
    assert "generation" not in old
    (tmp_path / state.FILE).write_text(old)
    store = state.Store(tmp_path)
    assert same(store.load(), FIRST)
    store.save(SECOND, ports={"r1"})
    assert store.snapshots == 1 and (tmp_path / state.JOURNAL).exists()
    store.save(FIRST, ports={"r1"})
    assert store.snapshots == 1 and same(state.load(tmp_path), FIRST)
