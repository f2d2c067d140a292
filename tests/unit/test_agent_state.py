"""hostagent/state.py: a last good copy kept on every save, used when the state file cannot be read; a
save that cannot be written raises SaveError and changes nothing on disk."""

from __future__ import annotations

import logging

import pytest

from nvfabric.hostagent import state
from tests.unit.agent_fixtures import VM_B1, VM_R1, catalog

FIRST = state.SavedState(catalog(VM_B1), {"blue": 1000, "red": 1001}, {})
SECOND = state.SavedState(catalog(VM_B1, VM_R1), {"blue": 1000, "red": 1001}, {(5001, VM_B1.mac): 2})


def same(a: state.SavedState | None, b: state.SavedState) -> bool:
    return a is not None and (a.catalog.ports, a.tables, a.seqs) == (b.catalog.ports, b.tables, b.seqs)


def test_each_save_keeps_the_file_it_replaces_as_the_previous_good_copy(tmp_path):
    state.save(tmp_path, FIRST)
    assert not (tmp_path / state.PREV).exists()
    state.save(tmp_path, SECOND)
    assert same(state.load(tmp_path), SECOND)
    assert (tmp_path / state.PREV).read_text() == state.dumps(FIRST)
    assert sorted(p.name for p in tmp_path.iterdir()) == [state.FILE, state.PREV]  # no temporary file left


@pytest.mark.parametrize("damage", [
    lambda p: p.write_text("{"),  # truncated
    lambda p: p.write_text("[]"),  # JSON, not a state
    lambda p: p.write_bytes(b"\xff\xfe garbage"),  # not text
    lambda p: p.write_text('{"version": 99}'),
    lambda p: (p.unlink(), p.mkdir()),  # not a file
    lambda p: p.unlink(),  # lost between the two renames of a save
])
def test_an_unreadable_state_file_is_reported_and_the_previous_copy_used(tmp_path, caplog, damage):
    state.save(tmp_path, FIRST)
    state.save(tmp_path, SECOND)
    damage(tmp_path / state.FILE)
    with caplog.at_level(logging.ERROR, logger="nvfabric.hostagent.state"):
        assert same(state.load(tmp_path), FIRST)


def test_without_a_good_copy_the_error_names_both_files(tmp_path):
    state.save(tmp_path, FIRST)
    state.save(tmp_path, SECOND)
    (tmp_path / state.FILE).write_text("{")
    (tmp_path / state.PREV).write_text("{")
    with pytest.raises(state.StateError, match="previous copy"):
        state.load(tmp_path)


def test_a_save_that_cannot_be_written_raises_and_leaves_the_files_as_they_were(tmp_path):
    state.save(tmp_path, FIRST)
    (tmp_path / state.FILE).unlink()
    (tmp_path / state.FILE).mkdir()  # the rename onto it fails, as a full or read-only disk would
    with pytest.raises(state.SaveError) as err:
        state.save(tmp_path, SECOND)
    assert err.value.path == tmp_path / state.FILE and err.value.problem
    assert sorted(p.name for p in tmp_path.iterdir()) == [state.FILE]  # no temporary file left behind
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    with pytest.raises(state.SaveError):
        state.save(blocked, SECOND)
