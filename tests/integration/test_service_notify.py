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


@pytest.fixture
def path_manager(tmp_path: Path):
    m = Manager(str(tmp_path / "notify"), str(tmp_path / "notify"))
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


# ---------------------------------------------------------------------- the gateway's reload

def tenant(name: str, vsid: int, snat: str) -> dict[str, object]:
    return {"name": name, "route_targets": ["65001:1"], "subnets": [{"vsid": vsid, "prefixes": ["10.0.0.0/24"]}],
            "snat": [{"address": snat}], "interfaces": [f"t-{name}"]}


def gateway_yaml(ns: str, tenants: list[dict[str, object]], **changed: object) -> str:
    # no provider addresses: tenants attached by interface, NAT in nftables, no VRF or GRE (host kernel)
    return json.dumps({"asn": 65001, "router_id": "198.51.100.21", "netns": ns,
                       "external": {"interfaces": ["ext"], "address4": "203.0.113.2"},
                       "public_prefixes": ["203.0.113.128/25"], "api": {"listen": "127.0.0.1:8510", "token": "t"},
                       "tenants": tenants, **changed})


def nft_rules(ns: str) -> dict[str, set[int]]:
    """The handles of the rules in each tenant's own chains (TENANT_...) of the gateway's table: a rule
    rewritten gets a new handle."""
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "-a", "list", "table", "inet", "nvfgw"],
                         check=True, capture_output=True, text=True).stdout
    rules: dict[str, set[int]] = {}
    for item in json.loads(out)["nftables"]:
        name = item.get("rule", {}).get("chain", "").split("_")[0]
        if name in ("blue", "red"):
            rules.setdefault(name, set()).add(item["rule"]["handle"])
    return rules


def api_tenants(ns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, NVFABRIC, "gateway", "tenants", "--api", "http://127.0.0.1:8510",
                          "--token", "t", "-o", "json"], check=True, capture_output=True, text=True).stdout
    return sorted(t["name"] for t in json.loads(out)["tenants"])


@pytest.fixture
def gateway_ns():
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    ns = f"nvfsvc{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        # (veth pairs: the host kernel may lack the dummy driver)
        for line in ("link set lo up", "link add ext type veth peer name ext-peer", "link set ext up",
                     "addr add 203.0.113.2/25 dev ext", "link add t-blue type veth peer name t-blue-peer",
                     "link add t-red type veth peer name t-red-peer"):
            subprocess.run(["ip", "-n", ns, *line.split()], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_gateway_reload_applies_tenants_as_a_difference(path_manager: Manager, tmp_path: Path, gateway_ns: str):
    manager = path_manager
    config = tmp_path / "gateway.yaml"
    blue, red = tenant("blue", 5001, "203.0.113.140"), tenant("red", 6001, "203.0.113.141")
    config.write_text(gateway_yaml(gateway_ns, [blue]))
    proc = start(["gateway", "--config", str(config)], manager)
    try:
        ready = manager.next()
        assert ready["READY"] == "1" and "1 tenants" in ready["STATUS"]
        before = nft_rules(gateway_ns)
        assert set(before) == {"blue"} and api_tenants(gateway_ns) == ["blue"]

        # a tenant added: red is served, blue's rules are the same rules (not rewritten)
        config.write_text(gateway_yaml(gateway_ns, [blue, red]))
        proc.send_signal(signal.SIGHUP)
        assert manager.next()["RELOADING"] == "1"
        assert "put red" in manager.next()["STATUS"]
        after = nft_rules(gateway_ns)
        assert after["blue"] == before["blue"] and after["red"] and api_tenants(gateway_ns) == ["blue", "red"]

        # a field that needs a restart: refused by name, nothing changes (red stays although the file drops it)
        config.write_text(gateway_yaml(gateway_ns, [blue], router_id="198.51.100.22"))
        proc.send_signal(signal.SIGHUP)
        assert manager.next()["RELOADING"] == "1"
        status = manager.next()["STATUS"]
        assert "refused" in status and "router_id: cannot change without a restart" in status
        assert nft_rules(gateway_ns) == after and api_tenants(gateway_ns) == ["blue", "red"]

        # a tenant removed from the file: deleted, blue untouched
        config.write_text(gateway_yaml(gateway_ns, [blue]))
        proc.send_signal(signal.SIGHUP)
        assert manager.next()["RELOADING"] == "1"
        assert "deleted red" in manager.next()["STATUS"]
        assert nft_rules(gateway_ns) == {"blue": before["blue"]} and api_tenants(gateway_ns) == ["blue"]

        proc.send_signal(signal.SIGTERM)
        assert manager.next()["STOPPING"] == "1"
        _, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    events = [json.loads(line).get("event") for line in err.splitlines()]
    assert events.count("reloaded") == 2 and events.count("reload-refused") == 1
