"""lab/probe.py's server, in this process's namespace: what tests rely on when they stop one."""

from __future__ import annotations

import socket

import pytest

from nvfabric.lab import probe


@pytest.fixture
def here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "in_ns", lambda ns, call: call())


def test_a_closed_server_frees_its_port_at_once(here: None) -> None:
    server = probe.Server("here", ("127.0.0.1", 0))
    port = server.sock.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        assert conn.makefile().readline().startswith("127.0.0.1:")
    server.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    socket.create_server(("127.0.0.1", port)).close()
