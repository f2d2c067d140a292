"""The daemons as systemd runs them (Type=notify): a real `nvfabric rr` process started with
$NOTIFY_SOCKET bound by the test says READY=1 once it listens, RELOADING=1 (with MONOTONIC_USEC) then
READY=1 around a SIGHUP, with a STATUS naming a refused file, and STOPPING=1 on SIGTERM; its stderr is
JSON lines."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvfabric.lab.fabric import wait_for

NVFABRIC = str(Path(sys.executable).parent / "nvfabric")
ROOT = Path(__file__).resolve().parents[2]
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


@contextlib.contextmanager
def started(command: list[str], manager: Manager) -> Iterator[subprocess.Popen[str]]:
    """The daemon with $NOTIFY_SOCKET at `manager`; killed on the way out if the test left it running."""
    env = {**os.environ, "NOTIFY_SOCKET": manager.address}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def stop(proc: subprocess.Popen[str], manager: Manager) -> str:
    """SIGTERM: the daemon says STOPPING=1 and exits; what it wrote on stderr."""
    proc.send_signal(signal.SIGTERM)
    assert manager.next()["STOPPING"] == "1"
    return proc.communicate(timeout=WAIT)[1]


def test_rr_ready_reload_stopping(manager: Manager, tmp_path: Path):
    config = tmp_path / "rr.yaml"
    config.write_text(RR_YAML)
    with started([NVFABRIC, "rr", "--config", str(config)], manager) as proc:
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

        err = stop(proc, manager)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err.splitlines()]  # stderr is not a terminal: JSON lines only
    events = [line.get("event") for line in lines]
    assert "started" in events and "reload-refused" in events


RR_179 = """\
asn: 65000
router_id: 192.0.2.1
listen: {address: 127.0.0.1, port: 179}
neighbors:
  - {prefix: 127.0.0.0/8, asn: 65000, client: true, md5_password: s3cret}
  - {address: 127.0.0.2, asn: 65000, client: false, md5_password: other, local_address: 127.0.0.1}
"""


@pytest.fixture
def empty_ns():
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    ns = f"nvfsvc{os.getpid()}rr"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    yield ns
    subprocess.run(["ip", "netns", "del", ns], check=False)


def test_rr_needs_only_cap_net_bind_service_even_with_tcp_md5(path_manager: Manager, tmp_path: Path, empty_ns: str):
    """The unit's one capability is enough for port 179 and TCP-MD5 keys on the listening and the dialling
    socket; without it the reflector cannot start (so the capability is not there for nothing)."""
    config = tmp_path / "rr.yaml"
    config.write_text(RR_179)
    with started(bounded("rr", empty_ns, [NVFABRIC, "rr", "--config", str(config)]), path_manager) as proc:
        assert path_manager.next()["READY"] == "1"
        stop(proc, path_manager)
    assert proc.returncode == 0
    bare = subprocess.run(["ip", "netns", "exec", empty_ns, "setpriv", "--bounding-set=-all", "--inh-caps=-all",
                           NVFABRIC, "rr", "--config", str(config)], capture_output=True, text=True, timeout=WAIT)
    assert bare.returncode == 1 and "Permission denied" in bare.stderr


# ---------------------------------------------------------------------- the gateway's reload

def tenant(name: str, vsid: int, snat: str) -> dict[str, object]:
    return {"name": name, "route_targets": ["65001:1"], "subnets": [{"vsid": vsid, "prefixes": ["10.0.0.0/24"]}],
            "snat": [{"address": snat}], "interfaces": [f"t-{name}"]}


def gateway_yaml(tenants: list[dict[str, object]], **changed: object) -> str:
    # no provider addresses: tenants attached by interface, NAT in nftables, no VRF or GRE (host kernel);
    # conntrackd replicating towards a peer that is not there (it runs and answers all the same)
    return json.dumps({"asn": 65001, "router_id": "198.51.100.21",
                       "external": {"interfaces": ["ext"], "address4": "203.0.113.2"},
                       "sync": {"interface": "sync", "local_address": "192.0.2.21", "peer_address": "192.0.2.22"},
                       "public_prefixes": ["203.0.113.128/25"], "api": {"listen": "127.0.0.1:8510", "token": "t"},
                       "tenants": tenants, **changed})


def unit_capabilities(name: str) -> list[str]:
    """The capabilities the unit leaves its daemon (CapabilityBoundingSet=), as setpriv spells them."""
    for line in (ROOT / "deploy" / "systemd" / f"nvfabric-{name}.service").read_text().splitlines():
        if line.startswith("CapabilityBoundingSet="):
            return [cap.lower().removeprefix("cap_") for cap in line.split("=", 1)[1].split()]
    raise AssertionError(f"nvfabric-{name}.service has no CapabilityBoundingSet")


def bounded(name: str, ns: str, argv: list[str]) -> list[str]:
    """`argv` inside `ns` with no capability but those of the unit, as systemd runs it (root, bounded set):
    whatever the daemon or its children (nft, conntrackd) need beyond them fails here."""
    caps = ",".join(f"+{c}" for c in unit_capabilities(name))
    return ["ip", "netns", "exec", ns, "setpriv", f"--bounding-set=-all,{caps}", "--inh-caps=-all", *argv]


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


def gateway_api(ns: str, what: str) -> dict:
    out = subprocess.run(["ip", "netns", "exec", ns, NVFABRIC, "gateway", what, "--api", "http://127.0.0.1:8510",
                          "--token", "t", "-o", "json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def api_tenants(ns: str) -> list[str]:
    return sorted(t["name"] for t in gateway_api(ns, "tenants")["tenants"])


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
                     "link add t-red type veth peer name t-red-peer", "link add sync type veth peer name sync-peer",
                     "link set sync up", "addr add 192.0.2.21/24 dev sync"):
            subprocess.run(["ip", "-n", ns, *line.split()], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_gateway_reload_applies_tenants_as_a_difference(path_manager: Manager, tmp_path: Path, gateway_ns: str):
    manager = path_manager
    config = tmp_path / "gateway.yaml"
    blue, red = tenant("blue", 5001, "203.0.113.140"), tenant("red", 6001, "203.0.113.141")
    config.write_text(gateway_yaml([blue]))
    with started(bounded("gateway", gateway_ns, [NVFABRIC, "gateway", "--config", str(config)]), manager) as proc:
        ready = manager.next()
        assert ready["READY"] == "1" and "1 tenants" in ready["STATUS"]
        # conntrackd, its child, runs with the same capabilities, answers on its socket, and has all it asked
        # for (its real-time scheduler: "scheduler configuration failed: Operation not permitted" otherwise)
        sync = wait_for(lambda: (gateway_api(gateway_ns, "status").get("conntrack_sync") or {}).get(
            "sampled_seconds_ago") is not None and gateway_api(gateway_ns, "status")["conntrack_sync"], WAIT,
            "conntrackd answering")
        assert sync["running"] and "not permitted" not in (sync["last_error"] or ""), sync
        before = nft_rules(gateway_ns)
        assert set(before) == {"blue"} and api_tenants(gateway_ns) == ["blue"]

        # a tenant added: red is served, blue's rules are the same rules (not rewritten)
        config.write_text(gateway_yaml([blue, red]))
        proc.send_signal(signal.SIGHUP)
        assert manager.next()["RELOADING"] == "1"
        assert "put red" in manager.next()["STATUS"]
        after = nft_rules(gateway_ns)
        assert after["blue"] == before["blue"] and after["red"] and api_tenants(gateway_ns) == ["blue", "red"]

        # a field that needs a restart: refused by name, nothing changes (red stays although the file drops it)
        config.write_text(gateway_yaml([blue], router_id="198.51.100.22"))
        proc.send_signal(signal.SIGHUP)
        assert manager.next()["RELOADING"] == "1"
        status = manager.next()["STATUS"]
        assert "refused" in status and "router_id: cannot change without a restart" in status
        assert nft_rules(gateway_ns) == after and api_tenants(gateway_ns) == ["blue", "red"]

        # a tenant removed from the file: deleted, blue untouched
        config.write_text(gateway_yaml([blue]))
        proc.send_signal(signal.SIGHUP)
        assert manager.next()["RELOADING"] == "1"
        assert "deleted red" in manager.next()["STATUS"]
        assert nft_rules(gateway_ns) == {"blue": before["blue"]} and api_tenants(gateway_ns) == ["blue"]

        err = stop(proc, manager)
    assert proc.returncode == 0, err[-2000:]
    events = [json.loads(line).get("event") for line in err.splitlines()]
    assert events.count("reloaded") == 2 and events.count("reload-refused") == 1
