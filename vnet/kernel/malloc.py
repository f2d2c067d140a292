"""The C library's allocator, as a daemon holding big tables wants it.

By default glibc raises its mmap threshold (from 128 KiB up to 32 MiB) each time a block above it is freed,
so later big blocks (a dict's table at 100,000 routes is megabytes; a full pass resizes several) come from
the heap, which keeps what is freed inside it: 10 to 20 MiB of tables the agent no longer had stayed in its
RSS after its first full pass at 100,000 remote CAs (docs/benchmarks.md "Agent under churn", "Memory").
Setting the threshold (mallopt(3)) stops the raising: every block of 128 KiB or more is mapped on its own
and unmapped when freed.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # mallopt(3)'s parameter
MMAP_THRESHOLD = 128 * 1024  # glibc's default, held fixed


def map_big_blocks() -> bool:
    """Whether it was set (False: not glibc, nothing done)."""
    try:
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False
