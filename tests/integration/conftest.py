"""What the interop tests share beside the `lab` fixture (in tests/conftest.py): a skip when a peer is not
installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None and not Path(t).exists()]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
