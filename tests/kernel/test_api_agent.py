"""The REST API and `nvfabric ctl` over real agents (VM phase): the default topology, our reflectors
(`nvfabric rr`) on rr1 and rr2, started agents on hv1 and hv2 (each in a thread inside its namespace,
lab/daemons.py) with their API on 127.0.0.1 of that namespace. Everything is done through `nvfabric ctl`
or HTTP, and checked against the kernel: a PUT returns once the kernel has the port's routes, a trace names
the PA and device that `ip route get` in the VRF finds, and pings follow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from nvfabric.hostagent import state
from nvfabric.hostagent.api import start_api
from nvfabric.lab.fabric import Fabric, HV, VMS, wait_for
from nvfabric.vnet.kernel.netns import enter_namespace
from nvfabric.lab import netns, runner
from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.topology import load
from nvfabric.cli import main
from tests.unit.test_metrics import assert_conventional, value

pytestmark = pytest.mark.kernel
TOKEN = "kernel-test-token"
NVFABRIC = str(Path(sys.executable).parent / "nvfabric")
VM = {vm.name: vm for vm in VMS}
HOSTS = ("hv1", "hv2")


class Host:
    """One hypervisor as an operator sees it: its API, reached from inside its namespace."""

    def __init__(self, fabric: Fabric, name: str) -> None:
        self.name, self.ns = name, fabric.ns(name)
        thread = fabric.start_agent(name)
        # the API runs on the agent's loop, in its thread: its socket is in the host's namespace
        self.server = thread.call(lambda a: start_api(a, "127.0.0.1:0", TOKEN))
        assert self.server is not None
        self.url = self.server.url
        self.thread = thread
        # a client thread inside the same namespace (127.0.0.1 there is the agent's, not the test's)
        self.client = ThreadPoolExecutor(1, initializer=enter_namespace, initargs=(self.ns,))

    def ctl(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        status = self.client.submit(main, ["ctl", "--api", self.url, "--token", TOKEN, *argv]).result(120)
        out, err = capsys.readouterr()
        return status, out, err

    def http(self, method: str, path: str, body: Any = None, token: str = TOKEN) -> tuple[int, Any]:
        def call() -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {token}"}
            data = None
            if body is not None:
                data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
            request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=120) as r:
                    raw = r.read()
                    return r.status, (json.loads(raw) if raw and "json" in r.headers["Content-Type"] else raw)
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        return self.client.submit(call).result(130)

    def kernel_routes(self, family: int = 4) -> str:
        return netns.run(["ip", "-n", self.ns, f"-{family}", "route", "show", "table", "all", "proto", "78"]).output

    def route_get(self, vrf: str, dst: str) -> tuple[int, str]:
        out = netns.run(["ip", "-n", self.ns, "route", "get", dst, "vrf", vrf], check=False)
        return out.returncode, out.output

    def close(self) -> None:
        self.thread.call(lambda a: self.server.stop())
        self.client.shutdown()


@pytest.fixture(scope="module")
def fabric():
    topology = load(DEFAULT_TOPOLOGY)
    runner.up(topology)
    fab = Fabric(topology)
    hosts: dict[str, Host] = {}
    try:
        fab.start_reflectors()
        for vm in ("b1", "b2", "r1"):
            fab.plug(VM[vm])
        for name in HOSTS:
            hosts[name] = Host(fab, name)
        yield fab, hosts
    finally:
        for host in hosts.values():
            host.close()
        fab.close()
        runner.down(topology.name)


def _wait(probe: Callable[[], object], what: str, timeout: float = 60) -> object:
    return wait_for(probe, timeout, what)


def test_an_operator_builds_two_tenants_with_ctl_and_the_kernel_follows(fabric, capsys, tmp_path):
    fab, hosts = fabric
    hv1, hv2 = hosts["hv1"], hosts["hv2"]
    blue = tmp_path / "blue.yaml"
    blue.write_text("name: blue\nroute_targets: ['65000:1']\nsubnets:\n"
                    "  - {vsid: 5001, prefixes: [10.0.0.0/24, 'fd00:b::/64']}\n"
                    "  - {vsid: 5002, prefixes: [10.0.1.0/24]}\n")
    for host in (hv1, hv2):
        assert host.ctl(capsys, "routing-domain", "put", "-f", str(blue))[:2] == (0, "routing domain blue created\n")
        status, out, err = host.ctl(capsys, "routing-domain", "put", "red", "--route-target", "65000:2",
                                    "--subnet", "6001=10.0.0.0/24")
        assert (status, out, err) == (0, "routing domain red created\n", "")
    # the same body again: replaced, 200
    status, body = hv1.http("PUT", "/v1/routing-domains/red", {"route_targets": ["65000:2"], "subnets": [
        {"vsid": 6001, "prefixes": ["10.0.0.0/24"]}]})
    assert status == 200 and body["status"]["vrf"] == "nvf-red"

    # PUT returns once programmed: the local routes are in the kernel when ctl returns
    for vm, host in (("b1", hv1), ("r1", hv1), ("b2", hv2)):
        v = VM[vm]
        argv = ["port", "put", vm, "--interface", v.tap, "--mac", v.mac, "--vsid", str(v.vsid)]
        for ca in v.cas:
            argv += ["--address", ca]
        assert host.ctl(capsys, *argv)[:2] == (0, f"port {vm} created\n")
        routes = host.kernel_routes()
        assert any(line.startswith(f"{v.cas[0]} dev {v.tap} ") for line in routes.splitlines()), routes

    status, out, _ = hv1.ctl(capsys, "ports")
    assert status == 0 and "b1" in out and "r1" in out and "yes" in out and "tap-b1" in out

    # hv1 learns b2 by BGP: the lookup records name hv2's PA (red's r1 has the same address on hv1)
    _wait(lambda: _blue_record(hv1, "10.0.0.12"), "b2's 10.0.0.12 on hv1")
    status, out, _ = hv1.ctl(capsys, "-o", "json", "lookup-records", "--routing-domain", "blue")
    records = {r["ca"]: r for r in json.loads(out)["lookup_records"]}
    assert records["10.0.0.12"] == {"routing_domain": "blue", "vsid": 5001, "ca": "10.0.0.12",
                                    "mac": VM["b2"].mac, "pa": HV["hv2"], "local": False, "port": None}
    assert records["10.0.0.11"]["local"] is True and records["10.0.0.11"]["port"] == "b1"
    status, out, _ = hv1.ctl(capsys, "lookup-records", "--ca", "10.0.0.12")
    assert status == 0 and "remote" in out and "local port r1" in out  # red's r1 has b2's address
    assert fab.reaches("b1", "10.0.0.12") and fab.reaches("b1", "fd00:b::12")


def test_trace_says_what_the_kernel_does(fabric, capsys):
    _, hosts = fabric
    hv1 = hosts["hv1"]
    # forwarded: the PA, device and GRE key of the trace are those of the kernel's route
    status, out, _ = hv1.ctl(capsys, "-o", "json", "trace", "blue", "10.0.0.11", "10.0.0.12")
    trace = json.loads(out)
    assert (trace["verdict"], trace["pa"], trace["device"], trace["vsid"]) == ("forwarded", HV["hv2"], "nvf-gre4",
                                                                              5001)
    code, kernel = hv1.route_get("nvf-blue", "10.0.0.12")
    assert code == 0 and f"dst {HV['hv2']}" in kernel and "dev nvf-gre4" in kernel
    assert f"id {5001 << 8}" in kernel or f"id {hex(5001 << 8)}" in kernel, kernel
    # delivered locally: the port the kernel picks
    status, out, _ = hv1.ctl(capsys, "-o", "json", "trace", "red", "10.0.0.12", "10.0.0.12")
    assert json.loads(out)["verdict"] == "delivered-locally"
    status, out, _ = hv1.ctl(capsys, "-o", "json", "trace", "blue", "10.0.0.12", "10.0.0.11")
    trace = json.loads(out)
    assert (trace["verdict"], trace["device"], trace["ingress"]) == ("delivered-locally", "tap-b1", "nvf-gre4")
    assert "dev tap-b1" in hv1.route_get("nvf-blue", "10.0.0.11")[1]
    # dropped: the kernel's answer is the unreachable route
    status, out, _ = hv1.ctl(capsys, "trace", "blue", "10.0.0.11", "10.0.0.99")
    assert status == 0 and "unknown destination CA (no lookup record): the unreachable route of routing domain blue" \
        in " ".join(out.split())
    code, kernel = hv1.route_get("nvf-blue", "10.0.0.99")
    assert code != 0 and "No route to host" in kernel, kernel  # EHOSTUNREACH: an `unreachable` route
    # red's r1 towards b1's address: not in red
    status, out, _ = hv1.ctl(capsys, "-o", "json", "trace", "red", "10.0.0.12", "10.0.0.11")
    trace = json.loads(out)
    assert trace["verdict"] == "dropped" and "routing domain blue" in trace["reason"]
    assert not fabric[0].ping("r1", "10.0.0.11", count=2)


def test_refusals_through_a_running_agent_leave_the_kernel_alone(fabric, capsys):
    _, hosts = fabric
    hv1 = hosts["hv1"]
    before = hv1.kernel_routes(), hv1.kernel_routes(6)
    # decided by the kernel's view of the interfaces: 400 naming the field
    status, body = hv1.http("PUT", "/v1/ports/ghost", {"interface": "tap-none", "mac": "02:00:00:00:0f:01",
                                                       "vsid": 5001, "addresses": ["10.0.0.50"]})
    assert (status, body["error"], body["field"]) == (400, "invalid", "interface"), body
    status, body = hv1.http("PUT", "/v1/ports/b9", {"interface": "tap-b1", "mac": "02:00:00:00:0f:03",
                                                    "vsid": 5001, "addresses": ["10.0.0.52"]})
    assert (status, body["error"], body["field"]) == (409, "conflict", "interface")
    status, body = hv1.http("GET", "/v1/ports", token="wrong")
    assert (status, body["error"]) == (401, "unauthorized")
    status, _, err = hv1.ctl(capsys, "routing-domain", "delete", "blue")
    assert status == 1 and "409 conflict" in err and "b1" in err
    assert (hv1.kernel_routes(), hv1.kernel_routes(6)) == before


def test_status_metrics_and_the_console_script(fabric, capsys):
    _, hosts = fabric
    hv1 = hosts["hv1"]
    # synced with one reflector is synced; both sessions up is what this test wants to see
    _wait(lambda: (b := hv1.http("GET", "/v1/status")[1])["synced"] and all(
        r["state"] == "established" and r["end_of_rib"] for r in b["reflectors"]), "hv1 synced with both", 90)
    status, body = hv1.http("GET", "/v1/status")
    assert status == 200 and len(body["reflectors"]) == 2
    status, text = hv1.http("GET", "/metrics", token="")
    assert status == 200 and b"nvfabric_agent_ports 2.0" in text, text[:500]
    # a started agent's scrape, its reflector sessions up, as Prometheus reads it
    assert_conventional(text.decode())
    for reflector in (r["address"] for r in body["reflectors"]):
        assert value(text.decode(), f'nvfabric_bgp_session_state{{peer="{reflector}",state="established"}}') == 1
        assert value(text.decode(), f'nvfabric_bgp_session_established_timestamp_seconds{{peer="{reflector}"}}')
    # the installed console script, as an operator runs it on the hypervisor
    out = subprocess.run(netns.in_netns(hv1.ns, [NVFABRIC, "ctl", "--api", hv1.url, "status"]), capture_output=True,
                         text=True, timeout=120, env={**os.environ, "NVFABRIC_TOKEN": TOKEN})
    assert out.returncode == 0 and "established" in out.stdout, out.stderr


def test_deleting_a_port_removes_its_routes_before_answering(fabric, capsys):
    fab, hosts = fabric
    hv1, hv2 = hosts["hv1"], hosts["hv2"]
    assert hv2.ctl(capsys, "port", "delete", "b2")[:2] == (0, "port b2 deleted\n")
    assert not any(line.startswith("10.0.0.12 dev tap-b2") for line in hv2.kernel_routes().splitlines())
    status, _, err = hv2.ctl(capsys, "port", "get", "b2")
    assert status == 1 and "no port named 'b2'" in err
    # hv1 hears the withdrawal (no End-of-RIB hold: the sessions are up and synced)
    _wait(lambda: not _blue_record(hv1, "10.0.0.12"), "hv1 to forget b2")
    status, out, _ = hv1.ctl(capsys, "-o", "json", "trace", "blue", "10.0.0.11", "10.0.0.12")
    assert json.loads(out)["verdict"] == "dropped"


def _blue_record(host: Host, ca: str) -> bool:
    # by the API, not the kernel: red's r1 has 10.0.0.12 on hv1 too (a local route in red's table)
    _, body = host.http("GET", f"/v1/lookup-records?routing_domain=blue&ca={ca}")
    return bool(body["lookup_records"])


def test_devices_that_are_not_ports_are_refused_before_anything_is_written(fabric, capsys):
    _, hosts = fabric
    hv1 = hosts["hv1"]
    before = hv1.kernel_routes(), hv1.kernel_routes(6)
    links = netns.run(["ip", "-n", hv1.ns, "-br", "link"]).output
    # lo cannot be a port; eth1 carries the provider address (moving it into a VRF would cut the underlay)
    for device, status_error, words in [("lo", (400, "invalid"), "loopback"),
                                        ("eth1", (409, "conflict"), "provider address 198.51.100.11")]:
        status, body = hv1.http("PUT", "/v1/ports/not-a-port", {"interface": device, "mac": "02:00:00:00:0f:02",
                                                                "vsid": 5001, "addresses": ["10.0.0.51"]})
        assert (status, body["error"], body["field"]) == (*status_error, "interface"), body
        assert words in body["problem"]
    status, _, err = hv1.ctl(capsys, "port", "get", "not-a-port")
    assert status == 1 and "404 not-found" in err
    assert (hv1.kernel_routes(), hv1.kernel_routes(6)) == before
    assert netns.run(["ip", "-n", hv1.ns, "-br", "link"]).output == links  # nothing enslaved


def test_a_change_whose_state_cannot_be_saved_is_503_and_the_kernel_put_back(fabric, capsys):
    _, hosts = fabric
    hv1 = hosts["hv1"]
    netns.run(["ip", "-n", hv1.ns, "link", "add", "tap-s9", "type", "veth", "peer", "name", "tap-s9-vm"])
    state_dir = hv1.thread.agent.config.state_dir
    files = [state_dir / state.FILE, state_dir / state.JOURNAL]  # the snapshot and the journal of changes
    saved = [f.read_bytes() for f in files]
    before = hv1.kernel_routes(), hv1.kernel_routes(6)
    port = {"interface": "tap-s9", "mac": "02:00:00:00:0f:09", "vsid": 5001, "addresses": ["10.0.0.59"]}
    for f in files:
        f.unlink()
        f.mkdir()  # neither an append nor a rename onto it works, as on a full or read-only disk
    try:
        status, body = hv1.http("PUT", "/v1/ports/s9", port)
        assert (status, body["error"]) == (503, "state-not-saved"), body
        assert (hv1.kernel_routes(), hv1.kernel_routes(6)) == before  # programmed, then put back
        assert "master" not in netns.run(["ip", "-n", hv1.ns, "-d", "link", "show", "tap-s9"]).output
        assert hv1.http("GET", "/v1/ports/s9")[0] == 404
    finally:
        for f, content in zip(files, saved, strict=True):
            f.rmdir()
            f.write_bytes(content)
    assert hv1.http("PUT", "/v1/ports/s9", port)[0] == 201  # the same request, once the disk is fixed
    assert "10.0.0.59 dev tap-s9" in hv1.kernel_routes()
    assert hv1.http("DELETE", "/v1/ports/s9")[0] == 204


def test_a_change_the_kernel_refuses_is_a_422_naming_it_and_is_reverted(fabric, capsys):
    _, hosts = fabric
    hv1 = hosts["hv1"]
    netns.run(["ip", "-n", hv1.ns, "link", "add", "mv-lower", "type", "veth", "peer", "name", "mv-peer"])
    netns.run(["ip", "-n", hv1.ns, "link", "add", "mv1", "link", "mv-lower", "type", "macvlan", "mode", "bridge"])
    before = hv1.kernel_routes(), hv1.kernel_routes(6)
    # a macvlan cannot take an MTU above its lower device's: the agent reverts, the API says so with the
    # kernel's words
    status, body = hv1.http("PUT", "/v1/ports/mv-port", {"interface": "mv1", "mac": "02:00:00:00:0f:02", "mtu": 9000,
                                                         "vsid": 5001, "addresses": ["10.0.0.51"]})
    assert (status, body["error"]) == (422, "kernel-refused") and body["messages"], body
    status, _, err = hv1.ctl(capsys, "port", "get", "mv-port")
    assert status == 1 and "404 not-found" in err
    assert (hv1.kernel_routes(), hv1.kernel_routes(6)) == before


def _request(host: Host, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             token: str | None = TOKEN) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body) of one request from inside the host's namespace, in the calling thread."""
    sent = {"Authorization": f"Bearer {token}"} if token is not None else {}
    sent.update(headers or {})
    data = None
    if body is not None:
        data, sent["Content-Type"] = json.dumps(body).encode(), "application/json"
    request = urllib.request.Request(host.url + path, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            raw = r.read()
            return r.status, dict(r.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, dict(exc.headers), json.loads(raw) if raw else None


def test_two_orchestrators_updating_one_port_the_stale_one_gets_412(fabric, capsys):
    _, hosts = fabric
    hv1 = hosts["hv1"]
    netns.run(["ip", "-n", hv1.ns, "link", "add", "tap-c9", "type", "veth", "peer", "name", "tap-c9-vm"])
    port = {"interface": "tap-c9", "mac": "02:00:00:00:0f:19", "vsid": 5001, "addresses": ["10.0.0.60"]}
    # two orchestrators, each with its own connection, in the host's namespace
    with ThreadPoolExecutor(2, initializer=enter_namespace, initargs=(hv1.ns,)) as clients:
        def call(*args: Any, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
            return clients.submit(_request, hv1, *args, **kwargs).result(130)

        status, headers, created = call("PUT", "/v1/ports/c9", port, {"If-None-Match": "*"})  # create only
        assert status == 201 and headers["ETag"] == created["etag"], created
        assert call("PUT", "/v1/ports/c9", port, {"If-None-Match": "*"})[0] == 412
        first, second = call("GET", "/v1/ports/c9")[2], call("GET", "/v1/ports/c9")[2]
        assert first["etag"] == second["etag"] == created["etag"]
        status, _, written = call("PUT", "/v1/ports/c9", {**first, "addresses": ["10.0.0.61"]},
                                  {"If-Match": first["etag"]})
        assert status == 200 and written["etag"] != first["etag"]
        status, _, refused = call("PUT", "/v1/ports/c9", {**second, "addresses": ["10.0.0.62"]},
                                  {"If-Match": second["etag"]})
        assert (status, refused["error"], refused["etag"]) == (412, "precondition-failed", written["etag"])
        assert call("GET", "/v1/ports/c9")[2]["addresses"] == ["10.0.0.61"]
        routes = hv1.kernel_routes()
        assert "10.0.0.61 dev tap-c9" in routes and "10.0.0.62" not in routes, routes

        # at once, with the same ETag: one wins, whatever the order; the kernel has the winner's address
        bodies = [{**written, "addresses": [f"10.0.0.{63 + i}"]} for i in range(2)]
        answers = list(clients.map(lambda b: _request(hv1, "PUT", "/v1/ports/c9", b,
                                                      {"If-Match": written["etag"]}), bodies))
        assert sorted(a[0] for a in answers) == [200, 412], answers
        winner = bodies[[a[0] for a in answers].index(200)]["addresses"][0]
        assert call("GET", "/v1/ports/c9")[2]["addresses"] == [winner]
        assert f"{winner} dev tap-c9" in hv1.kernel_routes()

        assert call("DELETE", "/v1/ports/c9", None, {"If-Match": written["etag"]})[0] == 412  # stale
        assert call("DELETE", "/v1/ports/c9", None, {"If-Match": "*"})[0] == 204
    netns.run(["ip", "-n", hv1.ns, "link", "del", "tap-c9"])


def test_started_agents_answer_their_probes_without_a_token(fabric):
    _, hosts = fabric
    for host in hosts.values():
        with ThreadPoolExecutor(1, initializer=enter_namespace, initargs=(host.ns,)) as client:
            def probe(path: str, host: Host = host, client: ThreadPoolExecutor = client) -> tuple[int, Any]:
                status, _, body = client.submit(_request, host, "GET", path, token=None).result(30)
                return status, body

            assert probe("/healthz") == (200, {"status": "ok"})
            # the reflectors are up and have sent End-of-RIB: ready
            assert _wait(lambda: probe("/readyz")[0] == 200, f"{host.name} ready")
            assert probe("/readyz") == (200, {"status": "ready"})
