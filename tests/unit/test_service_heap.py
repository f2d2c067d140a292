"""service/heap.py: while a window of growth is open the collector never walks the old generation, and the
young ones are collected as usual; the usual rule is back when the last window closes."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from nvfabric.service.heap import Growth


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generation of each automatic collection, as it starts."""
    seen: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.collect()
    gc.callbacks.append(note)
    try:
        yield seen
    finally:
        gc.callbacks.remove(note)


def grow(n: int) -> list[object]:
    """A heap that grows by n containers that stay, each holding a cycle the young collections free."""
    kept: list[object] = []
    for i in range(n):
        garbage: list[object] = [i]
        garbage.append(garbage)
        kept.append([i])  # (a list is tracked by the collector: a dict of atoms is not)
    return kept


def test_a_growing_heap_is_not_walked_whole_while_a_window_is_open(collections: list[int]) -> None:
    usual = gc.get_threshold()
    window = Growth()
    window.open()
    try:
        kept = grow(400_000)
        assert 0 in collections and 2 not in collections  # the cycles freed young, the table never walked
        assert gc.get_count()[0] < usual[0] + 1  # (the young collections kept the count down)
    finally:
        window.close()
    assert gc.get_threshold() == usual
    del collections[:]
    kept += grow(400_000)
    assert 2 in collections  # the usual rule: the old generation has grown by more than a quarter


def test_the_usual_rule_comes_back_when_the_last_window_closes() -> None:
    usual = gc.get_threshold()
    first, second = Growth(), Growth()
    first.open()
    second.open()
    first.open()  # (opening twice counts once)
    first.close()
    assert gc.get_threshold()[2] != usual[2]  # the second one is still open
    first.close()  # (closing twice counts once)
    assert gc.get_threshold()[2] != usual[2]
    second.close()
    assert gc.get_threshold() == usual
