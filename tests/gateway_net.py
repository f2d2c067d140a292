"""Helpers of the gateway tests (host and kernel phase); they live in gateway/ for the demo scene too."""

from gateway.probe import Server, connect, echo
from gateway.thread import GatewayThread, in_ns

__all__ = ["GatewayThread", "Server", "connect", "echo", "in_ns"]
