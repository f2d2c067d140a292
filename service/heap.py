"""Python's cyclic garbage collector while a daemon takes in a table it will keep.

CPython collects its oldest generation (a walk over every container object of the process) each time that
generation has grown by a quarter since the last such walk. A daemon that fills an empty heap with a
fabric's table (100,000 routes, their lookup records, partitions and kernel objects: millions of objects)
therefore walks a growing heap a dozen times or more while the table arrives, and finds nothing to free
in it: what it takes in, it keeps. While a `growth` window is open the oldest generation is left alone:
the young generations are still collected at their usual thresholds (the cyclic garbage a loop turn
leaves is freed as before); what survives them waits in the old generation until the window closes, and
the collector's own rule then walks it once.

The collector is one per process, so the windows are counted per process: the thresholds come back when
the last open window closes (a test or a benchmark may run several daemons in one process).
"""

from __future__ import annotations

import gc
import threading

# (CPython compares the number of young collections since the last full one with this; it never gets there)
_NEVER = 2**31 - 1

_lock = threading.Lock()
_open = 0
_saved: tuple[int, int, int] | None = None


class Growth:
    """One window of growth: `open` once, `close` any number of times (the first one counts)."""

    def __init__(self) -> None:
        self._is_open = False

    @property
    def is_open(self) -> bool:
        return self._is_open

    def open(self) -> None:
        global _open, _saved
        with _lock:
            if self._is_open:
                return
            self._is_open = True
            if _open == 0:
                _saved = gc.get_threshold()
                gc.set_threshold(_saved[0], _saved[1], _NEVER)
            _open += 1

    def close(self) -> None:
        global _open, _saved
        with _lock:
            if not self._is_open:
                return
            self._is_open = False
            _open -= 1
            if _open == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None
