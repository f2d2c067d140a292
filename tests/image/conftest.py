"""The image phase: tests marked `image` boot the gateway VM image under qemu (minutes under TCG). They run
only when asked for by marker (`pytest -m image`, `make test-image`), never as part of the host phase's
`-m "not kernel"`."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "image" in (config.getoption("-m") or "").replace("not image", ""):
        return
    skip = pytest.mark.skip(reason="boots the gateway VM image: run with -m image (make test-image)")
    for item in items:
        if item.get_closest_marker("image"):
            item.add_marker(skip)

