"""service/heap.py: after a settle, Python's full collections no longer walk what was there (a daemon's
table), while garbage is still collected: the cycles dropped before the settle by it, those made after by
the collector, and settled plain data by its reference count when dropped."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from nvfabric.service.heap import Heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """A reference cycle dropped at once: only the cyclic collector frees it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def heap() -> Iterator[Heap]:
    yield Heap()
    gc.unfreeze()  # (the rest of the test run as it was)


def walked() -> set[int]:
    """The objects a full collection walks now."""
    return {id(o) for o in gc.get_objects()}


def test_a_settled_table_is_not_walked_again(heap: Heap) -> None:
    table = {i: [Node()] for i in range(50_000)}  # long-lived, as a daemon's learned routes
    assert id(table) in walked() and id(table[49_999]) in walked()
    heap.settle()
    now = walked()
    assert id(table) not in now and id(table[0]) not in now and id(table[49_999][0]) not in now
    assert len(now) < 10_000  # (what the test itself allocates since)
    assert Heap.settled() >= 100_000


def test_garbage_is_still_freed(heap: Heap) -> None:
    before = cycle()
    heap.settle()
    assert before() is None  # dropped before the settle: collected by it, not settled
    settled = [Node()]
    gone = weakref.ref(settled[0])
    heap.settle()
    settled.clear()
    assert gone() is None  # settled plain data: freed by its reference count
    after = cycle()
    gc.collect()
    assert after() is None  # a cycle made after the settle: the collector still sees it
