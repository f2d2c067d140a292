"""The daemons as systemd runs them (Type=notify): a real `nvfabric rr` process started with
$NOTIFY_SOCKET bound by the test says READY=1 once it listens, RELOADING=1 (with MONOTONIC_USEC) then
READY=1 around a SIGHUP, with a STATUS naming a refused file, and STOPPING=1 on SIGTERM; its stderr is
JSON lines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

NVFABRIC = str(Path(sys.executable).parent / "nvfabric")
WAIT = 30.0  # seconds for one message: a generous bound on a loaded machine, not a measured time

RR_YAML = """\
asn: 65000
router_id: 192.0.2.1
cluster_id: 192.0.2.1
listen: {address: 127.0.0.1, port: 0}
neighbors:
  - {prefix: 127.0.0.0/8, asn: 65000, client: true}
"""


class Manager:
    """The service manager's end of the protocol: a datagram socket, one message per datagram."""

    def __init__(self, address: str, bind_to: str | bytes) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(WAIT)

    def next(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines() if line)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["abstract", "path"])
def manager(request, tmp_path: Path):
    if request.param == "abstract":  # systemd's own choice: '@' for the leading NUL of an abstract name
        name = f"nvfabric-test-{uuid.uuid4().hex}"
        m = Manager(f"@{name}", b"\0" + name.encode())
    else:
        path = str(tmp_path / "notify")
        m = Manager(path, path)
    yield m
    m.close()


def start(command: list[str], manager: Manager) -> subprocess.Popen[str]:
    env = {**os.environ, "NOTIFY_SOCKET": manager.address}
    return subprocess.Popen([NVFABRIC, *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_rr_ready_reload_stopping(manager: Manager, tmp_path: Path):
    config = tmp_path / "rr.yaml"
    config.write_text(RR_YAML)
    proc = start(["rr", "--config", str(config)], manager)
    try:
        ready = manager.next()
        assert ready["READY"] == "1" and "192.0.2.1" in ready["STATUS"]

        proc.send_signal(signal.SIGHUP)
        reloading = manager.next()
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        ready = manager.next()
        assert ready["READY"] == "1" and "reloaded" in ready["STATUS"]

        config.write_text(RR_YAML.replace("client: true", "client: maybe"))
        proc.send_signal(signal.SIGHUP)
        assert manager.next()["RELOADING"] == "1"
        ready = manager.next()
        assert ready["READY"] == "1" and "refused" in ready["STATUS"] and "client" in ready["STATUS"]

        proc.send_signal(signal.SIGTERM)
        assert manager.next()["STOPPING"] == "1"
        _, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err.splitlines()]  # stderr is not a terminal: JSON lines only
    events = [line.get("event") for line in lines]
    assert "started" in events and "reload-refused" in events
