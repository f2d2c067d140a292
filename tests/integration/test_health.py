"""The health probes of real daemon processes (`nvfabric rr`, `nvfabric gateway`), each in its namespace, asked
as a load balancer would: without a token, /healthz answers while the process's event loop does, /readyz
says whether it does its job. (The agent's dataplane needs VRF: its probes are in the kernel phase,
tests/kernel/test_api_agent.py.)"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.error
import urllib.request
from typing import Any

import yaml

from nvfabric.lab import netns
from nvfabric.lab.peers import REPO, Lab, Process, RouteReflector, wait_for
from nvfabric.vnet.kernel.netns import inside

RR = "198.51.100.100"


def probe(ns: str, url: str, timeout: float = 5) -> tuple[int, Any] | None:
    """(status, JSON body) of a GET without a token, from inside `ns`; None when nothing answers in time."""
    try:
        with inside(ns), urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except (urllib.error.URLError, OSError):
        return None


def test_the_reflector_process_is_healthy_and_ready_and_a_stopped_loop_answers_nothing(lab: Lab):
    ns = lab.namespace("rr")
    netns.run(["ip", "-n", ns, "addr", "add", f"{RR}/32", "dev", "lo"])
    rr = RouteReflector(lab, ns, "rr", {"asn": 65000, "router_id": RR, "cluster_id": RR,
                                        "listen": {"address": RR, "port": 179}, "neighbors": []})
    assert probe(ns, f"{rr.api}/healthz") == (200, {"status": "ok"})
    assert probe(ns, f"{rr.api}/readyz") == (200, {"status": "ready"})
    # the probes answer without the token; the rest of the API does not
    answer = probe(ns, f"{rr.api}/v1/summary")
    assert answer is not None and answer[0] == 401
    # a process whose loop does not run (stopped here) does not answer its health probe
    os.kill(rr.proc.proc.pid, signal.SIGSTOP)
    try:
        assert probe(ns, f"{rr.api}/healthz", timeout=1) is None
    finally:
        os.kill(rr.proc.proc.pid, signal.SIGCONT)
    assert wait_for(lambda: probe(ns, f"{rr.api}/healthz"), 10, what="healthz back") == (200, {"status": "ok"})


def test_the_gateway_process_is_ready_once_its_dataplane_is_programmed(lab: Lab):
    ns = lab.namespace("gw")
    netns.run(["ip", "-n", ns, "link", "add", "ext", "type", "veth", "peer", "name", "ext-peer"])
    netns.run(["ip", "-n", ns, "link", "add", "t-blue", "type", "veth", "peer", "name", "t-vm"])
    config = lab.tmp / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "asn": 65001, "router_id": "198.51.100.21", "external": {"interfaces": ["ext"]},
        "api": {"listen": "127.0.0.1:8181", "token": "gw-token"}, "state_dir": str(lab.tmp / "gw-state"),
        "tenants": [{"name": "blue", "route_targets": ["65001:1"],
                     "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}],
                     "snat": [{"address": "203.0.113.140"}], "interfaces": ["t-blue"]}],
    }))
    proc = Process(ns, [sys.executable, "-m", "nvfabric.cli", "gateway", "--config", str(config)],
                   lab.tmp / "gateway.log", env={**os.environ, "PYTHONPATH": str(REPO)})
    lab.processes.append(proc)
    ready = wait_for(lambda: probe(ns, "http://127.0.0.1:8181/readyz"), 30, what="the gateway's API")
    assert ready == (200, {"status": "ready"}), proc.output()
    assert probe(ns, "http://127.0.0.1:8181/healthz") == (200, {"status": "ok"})
    # ready means programmed: the tenant's NAT is in the kernel
    assert "blue" in netns.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"]).output
