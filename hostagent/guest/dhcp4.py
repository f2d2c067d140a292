"""DHCPv4 answered from the port model (placeholder: answers nothing yet)."""

from __future__ import annotations

from nvfabric.hostagent.guest import frames
from nvfabric.hostagent.guest.offer import PortService


def answer(eth: frames.Ethernet, port: PortService, host_mac: bytes) -> list[bytes]:
    return []
