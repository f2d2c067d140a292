"""Helpers of the gateway tests (host and kernel phase); they live in gateway/ for the demo scene too."""

from nvfabric.gateway.probe import Server, connect, echo
from nvfabric.gateway.thread import GatewayThread, in_ns

__all__ = ["GatewayThread", "Server", "connect", "echo", "in_ns"]
