"""Every daemon's `/metrics` as Prometheus reads it: each scrape is piped to `promtool check metrics` (Debian's
`prometheus` package), which refuses names against the conventions (a counter without `_total`, `_total` on
a gauge, an abbreviated unit...). The daemons are the real ones behind their real apps: the reflector with
two of our speakers as dynamic neighbours on loopback, an agent and a gateway not started (no kernel work in
the host phase); tests/integration/test_gateway_nat.py checks a running gateway's scrape the same way.

Also here: the per-neighbour BGP families (bgp/metrics.py) and the series of a neighbour that left, gone.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from nvfabric.bgp.bfd import BfdState
from nvfabric.bgp.reflector import api as rr_api
from nvfabric.bgp.reflector.daemon import Reflector
from nvfabric.gateway import api as gw_api
from nvfabric.gateway.conntrackd import ConntrackdStats, SyncStatus
from nvfabric.gateway.gateway import Gateway
from nvfabric.hostagent.api import make_app
from tests.unit.test_api import TOKEN, make_agent
from tests.unit.test_gateway_status import RR, gateway
from tests.unit.test_speaker_bfd import FakeBfd
from tests.unit.test_reflector_daemon import DYNAMIC, held, lab, route, rr_cfg, until  # noqa: F401 - lab: a fixture


def promtool(text: str) -> tuple[int, str]:
    """`promtool check metrics` of an exposition: its exit status and what it said."""
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed (Debian's `prometheus` package: `make system`)")
    done = subprocess.run([found, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def assert_conventional(text: str) -> None:
    status, said = promtool(text)
    assert status == 0 and said.strip() == "", said


def value(text: str, series: str) -> float | None:
    """The value of one series (`name{labels}` exactly as exposed), None when absent."""
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def test_promtool_refuses_a_bad_name() -> None:
    """The check is real: a gauge ending in `_total` and an abbreviated unit are refused, by name."""
    registry = CollectorRegistry()

    class Bad:
        def collect(self):
            gauge = GaugeMetricFamily("nvfabric_things_total", "a gauge that looks like a counter")
            gauge.add_metric([], 1)
            latency = CounterMetricFamily("nvfabric_latency_ms", "an abbreviated unit")
            latency.add_metric([], 1)
            return [gauge, latency]

    registry.register(Bad())  # type: ignore[arg-type]
    status, said = promtool(generate_latest(registry).decode())
    assert status != 0 and "nvfabric_things_total" in said and "nvfabric_latency_ms" in said, said


def assert_build_info(text: str) -> None:
    version = metadata.version("nvfabric")
    assert re.search(rf'^nvfabric_build_info{{python="[0-9.]+",version="{re.escape(version)}"}} 1\.0$', text, re.M), \
        text
    assert value(text, "process_start_time_seconds") is not None


@pytest.fixture
async def reflector_with_bfd() -> AsyncIterator[tuple[Reflector, FakeBfd]]:
    """A reflector whose dynamic neighbours have BFD, its endpoint a stand-in the test drives."""
    fake = FakeBfd()
    rr = Reflector(rr_cfg([{**DYNAMIC[0], "bfd": {"transmit_interval": 100, "receive_interval": 100}}]))
    rr.bfd = fake
    await rr.start()
    yield rr, fake
    await rr.stop()


async def test_the_reflectors_metrics_are_conventional_and_forget_a_neighbour_that_left(
        lab, reflector_with_bfd) -> None:  # noqa: F811
    rr, bfd = reflector_with_bfd
    a = await lab("speaker", "198.51.100.1", "127.0.1.1", rr.listen_port)
    b = await lab("speaker", "198.51.100.2", "127.0.1.2", rr.listen_port)
    await a.announce([route(i) for i in range(3)])
    await until(lambda: len(held(b)) == 3, what="reflection")
    await until(lambda: "127.0.1.2" in bfd.sessions, what="b's BFD session")
    bfd.change("127.0.1.2", BfdState.UP)
    async with TestClient(TestServer(rr_api.build_app(rr, TOKEN))) as http:
        async def scrape() -> str:
            answer = await http.get("/metrics")
            assert answer.status == 200
            return await answer.text()

        text = await scrape()
        assert_conventional(text)
        assert_build_info(text)
        for peer in ("127.0.1.1", "127.0.1.2"):
            assert value(text, f'nvfabric_bgp_session_state{{peer="{peer}",state="established"}}') == 1
            assert value(text, f'nvfabric_bgp_session_state{{peer="{peer}",state="active"}}') == 0
            assert value(text, f'nvfabric_bgp_session_flaps_total{{peer="{peer}"}}') == 0
            since = value(text, f'nvfabric_bgp_session_established_timestamp_seconds{{peer="{peer}"}}')
            assert since is not None and since > 1.7e9
        assert value(text, 'nvfabric_rr_updates_out_bytes_total{neighbor="127.0.1.2"}') > 0
        assert value(text, 'nvfabric_bfd_session_up{peer="127.0.1.2"}') == 1

        # b leaves: every series of it goes (BFD's too), none shows it `active` (a dynamic neighbour is not
        # dialled)
        await b.stop()
        await until(lambda: "127.0.1.2" not in rr.peers, what="b forgotten")
        text = await scrape()
        assert 'peer="127.0.1.2"' not in text and 'neighbor="127.0.1.2"' not in text, text
        assert value(text, 'nvfabric_rr_sessions{state="active"}') == 0
        assert value(text, 'nvfabric_rr_sessions{state="established"}') == 1
        assert_conventional(text)

        # it comes back: its series again, and the session that went down counted as a flap
        again = await lab("speaker", "198.51.100.2", "127.0.1.2", rr.listen_port)
        await until(lambda: len(held(again)) == 3, what="b back")
        text = await scrape()
        assert value(text, 'nvfabric_bgp_session_state{peer="127.0.1.2",state="established"}') == 1
        assert value(text, 'nvfabric_bgp_session_flaps_total{peer="127.0.1.2"}') == 1


async def scrape(app: web.Application) -> str:
    async with TestClient(TestServer(app)) as http:
        answer = await http.get("/metrics")
        assert answer.status == 200
        return await answer.text()


async def test_the_agents_metrics_are_conventional(tmp_path) -> None:
    text = await scrape(make_app(make_agent(tmp_path), TOKEN))
    assert_conventional(text)
    assert_build_info(text)
    # not started: its reflector's session is idle, and says so
    assert value(text, 'nvfabric_bgp_session_state{peer="198.51.100.100",state="idle"}') == 1
    assert value(text, 'nvfabric_bgp_session_state{peer="198.51.100.100",state="established"}') == 0
    assert "nvfabric_bgp_session_established_timestamp_seconds{" not in text
    # not behind: nothing received, nothing waits
    assert value(text, "nvfabric_agent_bgp_pending_changes") == 0
    assert value(text, "nvfabric_agent_route_changes_applied_total") == 0
    assert value(text, "nvfabric_agent_route_changes_unapplied_oldest_seconds") == 0


def unstarted_gateway(monkeypatch: pytest.MonkeyPatch) -> Gateway:
    gw, _ = gateway()

    async def counters():  # the nftables table a started gateway reads its tenants' counters from
        return {}
    monkeypatch.setattr(gw, "counters", counters)
    # the replication as a sample of a running conntrackd says it (gateway/conntrackd.py)
    monkeypatch.setattr(gw._sync, "status", lambda tenants: SyncStatus(
        "sync0", "192.0.2.1", "192.0.2.2", 3780, True, True, "standby", 42, 0, ConntrackdStats(internal=3, sent=7),
        1.0, 1.0, None, kernel_entries=5, tenant_ids_differ={}))
    return gw


async def test_the_gateways_metrics_are_conventional(monkeypatch) -> None:
    text = await scrape(gw_api.make_app(unstarted_gateway(monkeypatch), TOKEN))
    assert_conventional(text)
    assert_build_info(text)
    for peer in (RR, "203.0.113.1"):  # the reflector and the upstream router
        assert value(text, f'nvfabric_bgp_session_state{{peer="{peer}",state="idle"}}') == 1
    assert value(text, "nvfabric_gateway_serving") == 0
    assert value(text, "nvfabric_gateway_role_changes_total") == 0
    assert value(text, "nvfabric_gateway_conntrack_sync_up") == 1


# ---------------------------------------------------------------------- the alert rules (deploy/prometheus)

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = PROMETHEUS / "nvfabric-alerts.yml"


def run_promtool(*argv: str) -> tuple[int, str]:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed (Debian's `prometheus` package: `make system`)")
    done = subprocess.run([found, *argv], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def test_the_rules_and_the_example_configuration_are_valid() -> None:
    status, said = run_promtool("check", "rules", str(RULES))
    assert status == 0 and "SUCCESS" in said, said
    status, said = run_promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert status == 0 and "SUCCESS" in said, said


def exposed_names(text: str) -> set[str]:
    """The metric names an exposition serves (a family without samples yet counts: its # TYPE line)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {name, f"{name}_total"} if kind == "counter" else {name}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


async def test_every_metric_the_rules_name_is_served(tmp_path, monkeypatch) -> None:
    """A rename that forgets the rules fails here: every nvfabric_* name in an expression is in a scrape of
    the reflector, the agent or the gateway."""
    rr = Reflector(rr_cfg(DYNAMIC))
    texts = [await scrape(rr_api.build_app(rr, TOKEN)), await scrape(make_app(make_agent(tmp_path), TOKEN)),
             await scrape(gw_api.make_app(unstarted_gateway(monkeypatch), TOKEN))]
    served = set().union(*(exposed_names(t) for t in texts))
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    named = {name for rule in rules for name in re.findall(r"\bnvfabric_[a-z_]+", rule["expr"])}
    assert named and named <= served, sorted(named - served)


ALERT_TESTS = """
rule_files: [RULES]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'nvfabric_bgp_session_state{job="nvfabric-agent",instance="hv1",peer="192.0.2.1",state="established"}'
        values: '1 1 0 0 0 0'
      - series: 'nvfabric_bfd_session_up{job="nvfabric-agent",instance="hv1",peer="192.0.2.1"}'
        values: '1 0 0 0'
      - series: 'nvfabric_gateway_serving{job="nvfabric-gateway",instance="gw1"}'
        values: '1 1 0 0 0'
      - series: 'nvfabric_gateway_serving{job="nvfabric-gateway",instance="gw2"}'
        values: '0 0 0 0 0'
      - series: 'nvfabric_gateway_role_changes_total{job="nvfabric-gateway",instance="gw1"}'
        values: '0 0 1 1 1'
      - series: 'nvfabric_agent_routes_refused{job="nvfabric-agent",instance="hv1",reason="next_hop_not_pa"}'
        values: '0 3x20'
      - series: 'nvfabric_agent_route_changes_unapplied_oldest_seconds{job="nvfabric-agent",instance="hv1"}'
        values: '0 0.5 90+60x10'
      - series: 'nvfabric_gateway_site_certificate_expiry_time_seconds{job="nvfabric-gateway",instance="gw1",
          tenant="blue",site="paris"}'
        values: '1210200x20'
    alert_rule_test:
      - eval_time: 1m
        alertname: NvfabricBgpSessionDown
        exp_alerts: []
      - eval_time: 5m
        alertname: NvfabricBgpSessionDown
        exp_alerts:
          - exp_labels: {severity: critical, job: nvfabric-agent, instance: "hv1", peer: 192.0.2.1,
                         state: established}
            exp_annotations:
              summary: "BGP session hv1 -> 192.0.2.1 is not Established"
              description: "`nvfabric rr status`, `nvfabric ctl status` or `nvfabric gateway status` on hv1
                shows its state."
      - eval_time: 3m
        alertname: NvfabricBfdSessionDown
        exp_alerts:
          - exp_labels: {severity: critical, job: nvfabric-agent, instance: "hv1", peer: 192.0.2.1}
            exp_annotations:
              summary: "BFD session hv1 -> 192.0.2.1 is not Up"
              description: "Its BGP session is closed at once while BFD is down (RFC 9384): the path to the
                peer is broken."
      - eval_time: 1m
        alertname: NvfabricNoGatewayServing
        exp_alerts: []
      - eval_time: 4m
        alertname: NvfabricNoGatewayServing
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations:
              summary: "No gateway serves: the tenants have no default route to the outside"
      - eval_time: 4m
        alertname: NvfabricGatewayRoleChanged
        exp_alerts:
          - exp_labels: {severity: warning, job: nvfabric-gateway, instance: "gw1"}
            exp_annotations:
              summary: "Gateway gw1 changed its role (serving or standing by) in the last 10 minutes"
              description: "`nvfabric gateway status` says why."
      - eval_time: 15m
        alertname: NvfabricRoutesRefused
        exp_alerts:
          - exp_labels: {severity: warning, job: nvfabric-agent, instance: "hv1", reason: next_hop_not_pa}
            exp_annotations:
              summary: "hv1 refuses 3 learned routes (next_hop_not_pa)"
              description: "The import policy leaves them out (docs/agent.md, import policy); `nvfabric ctl
                status` lists them."
      - eval_time: 5m
        alertname: NvfabricAgentBehind
        exp_alerts: []
      - eval_time: 8m
        alertname: NvfabricAgentBehind
        exp_alerts:
          - exp_labels: {severity: warning, job: nvfabric-agent, instance: "hv1"}
            exp_annotations:
              summary: "The agent on hv1 has a route change waiting for 450 s"
              description: "`nvfabric ctl status` shows its backlog and how long its last pass took
                (last_sync_s)."
      - eval_time: 5m
        alertname: NvfabricSiteCertificateExpiresSoon
        exp_alerts: []
      - eval_time: 15m
        alertname: NvfabricSiteCertificateExpiresSoon
        exp_alerts:
          - exp_labels: {severity: warning, job: nvfabric-gateway, instance: "gw1", tenant: blue, site: paris}
            exp_annotations:
              summary: "Site paris of tenant blue on gw1: a certificate expires in 13d 23h 55m 0s"
              description: "`nvfabric gateway tenant get blue` names it (status.sites[].certificates.first_to_expire);
                put the site's new certificates before then."
"""


def test_the_alerts_fire_on_what_they_are_about(tmp_path) -> None:
    """`promtool test rules`: series as the daemons expose them, and the alerts they raise (or not yet)."""
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(ALERT_TESTS.replace("RULES", str(RULES)))
    status, said = run_promtool("test", "rules", str(tests))
    assert status == 0 and "SUCCESS" in said, said
