"""The sites' status from charon's list-sas (gateway/strongswan.py parse_sas), their Prometheus series as promtool
reads them, and the trace of a tenant's packet to a site's prefix (gateway/sitestatus.py); the gateway's API
answers both for a gateway whose charon has no SA (not started)."""

from __future__ import annotations

import ipaddress

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest

from nvfabric.gateway import api as gw_api
from nvfabric.gateway import sitebgp, sitestatus
from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.gateway import Gateway
from nvfabric.gateway.strongswan import children_up, parse_sas
from tests.unit.test_api import TOKEN
from tests.unit.test_cli_clients import outputs
from tests.unit.test_gateway_sites import EXTERNAL, SITE, tenant
from tests.unit.test_gateway_status import BODY
from tests.unit.test_metrics import assert_conventional, value

NOW = 1_000_000.0
EVENTS = [{"blue.paris": {
    "state": "ESTABLISHED", "local-host": "203.0.113.2", "remote-host": "203.0.113.50", "established": "120",
    "rekey-time": "3000", "initiator-spi": "a1", "responder-spi": "b2", "child-sas": {
        "blue.paris-7": {"name": "blue.paris", "state": "INSTALLED", "spi-in": "c0ffee01", "spi-out": "c0ffee02",
                         "bytes-in": "840", "packets-in": "10", "bytes-out": "1680", "packets-out": "20",
                         "install-time": "30", "rekey-time": "3300", "local-ts": ["0.0.0.0/0"],
                         "remote-ts": ["10.20.0.0/24"]},
        "blue.paris-6": {"name": "blue.paris", "state": "REKEYED", "spi-in": "0ld00001", "spi-out": "0ld00002",
                         "bytes-in": "100", "packets-in": "1", "bytes-out": "0", "packets-out": "0",
                         "install-time": "3600"}}}}]
ADDR = ipaddress.ip_address


def test_list_sas_gives_packets_selectors_and_rekey_times() -> None:
    sa = parse_sas(EVENTS, NOW)["blue.paris"]
    assert (sa.local, sa.established_at, sa.rekey_at) == ("203.0.113.2", NOW - 120, NOW + 3000)
    new, old = sa.children
    assert (new.packets_in, new.packets_out, new.installed_at, new.rekey_at) == (10, 20, NOW - 30, NOW + 3300)
    assert (new.local_ts, new.remote_ts) == (("0.0.0.0/0",), ("10.20.0.0/24",)) and old.local_ts == ()
    # what the API shows: lists, not tuples
    assert sa.as_dict()["children"][0]["remote_ts"] == ["10.20.0.0/24"]
    assert sitestatus.installed(sa) == (new,)


def scrape(samples: list[sitestatus.SiteSample]) -> str:
    registry = CollectorRegistry()
    registry.register(sitestatus.SiteCollector(samples))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_site_series_are_conventional_and_labelled_by_tenant_and_site_only() -> None:
    sas = parse_sas(EVENTS, NOW)
    blue = tenant(SITE, {**SITE, "name": "lyon", "remote_address": "203.0.113.51", "prefixes": ["10.21.0.0/24"]})
    text = scrape(sitestatus.samples([blue], sas))
    assert_conventional(text)
    paris, lyon = '{site="paris",tenant="blue"}', '{site="lyon",tenant="blue"}'
    assert value(text, f"nvfabric_gateway_site_ike_up{paris}") == 1
    assert value(text, f"nvfabric_gateway_site_tunnel_up{paris}") == 1
    assert value(text, f"nvfabric_gateway_site_received_bytes_total{paris}") == 940  # the rekeyed child's too
    assert value(text, f"nvfabric_gateway_site_sent_packets_total{paris}") == 20
    assert value(text, f"nvfabric_gateway_site_child_installed_time_seconds{paris}") == NOW - 30
    assert value(text, f"nvfabric_gateway_site_ike_established_time_seconds{paris}") == NOW - 120
    # a site charon has no SA for: down, zero, no times
    assert value(text, f"nvfabric_gateway_site_ike_up{lyon}") == 0
    assert value(text, f"nvfabric_gateway_site_tunnel_up{lyon}") == 0
    assert value(text, f"nvfabric_gateway_site_child_installed_time_seconds{lyon}") is None
    assert "c0ffee" not in text and "203.0.113" not in text  # SPIs and addresses are never labels


def test_trace_follows_the_packet_into_the_tunnel_and_says_when_the_sa_is_down() -> None:
    blue = tenant(SITE, {**SITE, "name": "lyon", "remote_address": "203.0.113.51", "prefixes": ["10.21.0.0/24"]})
    sas = parse_sas(EVENTS, NOW)
    hop = sitestatus.trace(blue, 7, ADDR("10.0.0.5"), ADDR("10.20.0.10"), sas, EXTERNAL)
    assert hop is not None and hop.up, hop
    assert (hop.vrf, hop.table, hop.prefix, hop.device, hop.if_id) == ("nvf-blue", 7, "10.20.0.0/24", "nvf-s71", 0x71)
    assert (hop.spi_out, hop.outer_src, hop.outer_dst) == ("c0ffee02", "203.0.113.2", "203.0.113.50")
    # lyon's prefix: a site whose SA charon does not have
    hop = sitestatus.trace(blue, 7, ADDR("10.0.0.5"), ADDR("10.21.0.200"), sas, EXTERNAL)
    assert hop is not None and (hop.site, hop.up, hop.spi_out) == ("lyon", False, None)
    assert "the SA is down (no IKE SA with the site)" in hop.reason
    # an IKE SA without an installed child: down, and said so
    connecting = parse_sas([{"blue.paris": {**EVENTS[0]["blue.paris"], "child-sas": {}}}], NOW)
    hop = sitestatus.trace(blue, 7, ADDR("10.0.0.5"), ADDR("10.20.0.10"), connecting, EXTERNAL)
    assert hop is not None and not hop.up and "ESTABLISHED with no child SA installed" in hop.reason
    # selectors the site narrowed: a source outside them is dropped by the tunnel
    narrow = parse_sas([{"blue.paris": {**EVENTS[0]["blue.paris"], "child-sas": {"c": {
        **EVENTS[0]["blue.paris"]["child-sas"]["blue.paris-7"], "local-ts": ["10.0.0.0/25"]}}}}], NOW)
    hop = sitestatus.trace(blue, 7, ADDR("10.0.0.200"), ADDR("10.20.0.10"), narrow, EXTERNAL)
    assert hop is not None and not hop.up and "do not carry 10.0.0.200 -> 10.20.0.10" in hop.reason
    assert sitestatus.trace(blue, 7, ADDR("10.0.0.5"), ADDR("10.30.0.1"), sas, EXTERNAL) is None


def test_trace_follows_a_gre_site_and_the_prefixes_a_site_announced_over_bgp() -> None:
    gre = {"name": "depot", "kind": "gre", "remote_address": "198.18.0.9", "key": 4711, "prefixes": ["10.30.0.0/24"],
           "slot": 2}
    blue = tenant(SITE, gre)
    sas = parse_sas(EVENTS, NOW)
    hop = sitestatus.trace(blue, 7, ADDR("10.0.0.5"), ADDR("10.30.0.9"), sas, EXTERNAL)
    assert hop is not None and hop.up, hop
    assert (hop.kind, hop.site, hop.device, hop.gre_key, hop.spi_out) == ("gre", "depot", "nvf-g72", 4711, None)
    assert (hop.outer_src, hop.outer_dst) == ("203.0.113.2", "198.18.0.9")
    assert "in GRE (key 4711, not encrypted)" in hop.reason and "never NATed" in hop.reason
    assert hop.as_dict()["kind"] == "gre" and hop.as_dict()["key"] == 4711
    # the gateway's moving GRE end, when it has one
    moving = EXTERNAL.__class__(EXTERNAL.interfaces, address4=EXTERNAL.address4,
                                sites_address4=ADDR("203.0.113.9"))
    assert sitestatus.trace(blue, 7, ADDR("10.0.0.5"), ADDR("10.30.0.9"), sas, moving).outer_src == "203.0.113.9"
    # what paris announced over BGP and was accepted is traced into its SA; what was refused is no site's
    learned = {"paris": sitebgp.Verdict((ipaddress.ip_network("10.40.0.0/24"),),
                                        ((ipaddress.ip_network("0.0.0.0/0"), "a default route"),))}
    assert sitestatus.trace(blue, 7, ADDR("10.0.0.5"), ADDR("10.40.0.1"), sas, EXTERNAL) is None
    hop = sitestatus.trace(blue, 7, ADDR("10.0.0.5"), ADDR("10.40.0.1"), sas, EXTERNAL, learned)
    assert hop is not None and (hop.site, hop.kind, hop.prefix, hop.spi_out) == ("paris", "ipsec", "10.40.0.0/24",
                                                                                  "c0ffee02")
    assert sitestatus.trace(blue, 7, ADDR("10.0.0.5"), ADDR("192.0.2.1"), sas, EXTERNAL, learned) is None


async def test_the_api_traces_to_a_site_without_nat_and_scrapes_its_series(monkeypatch, capsys) -> None:
    site = {**SITE, "remote_address": "203.0.113.50"}
    body = {**BODY, "tenants": [{**BODY["tenants"][0], "sites": [site]}]}
    gw = Gateway(GatewayConfig.from_dict(body))  # not started: charon has no SA

    async def counters():  # (as tests/unit/test_metrics.py: the nftables table of a started gateway)
        return {}
    monkeypatch.setattr(gw, "counters", counters)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with TestClient(TestServer(gw_api.make_app(gw, TOKEN))) as client:
        answer = await client.get("/v1/trace", params={"tenant": "blue", "proto": "tcp", "src": "10.0.0.5",
                                                       "dst": "10.20.0.10", "dport": "22"}, headers=auth)
        assert answer.status == 200
        traced = await answer.json()
        internet = await (await client.get("/v1/trace", params={"tenant": "blue", "src": "10.0.0.5",
                                                                "dst": "198.18.0.1"}, headers=auth)).json()
        text = await (await client.get("/metrics")).text()
    assert (traced["action"], traced["translated"]["src"]) == ("route", "10.0.0.5")  # never NATed
    hop = traced["site"]
    assert (hop["site"], hop["vrf"], hop["up"], hop["outer"]) == ("paris", "nvf-blue", False,
                                                                  {"src": "203.0.113.22", "dst": "203.0.113.50"})
    assert "the SA is down" in traced["reason"]
    assert "site" not in internet and internet["action"] == "snat"
    assert value(text, 'nvfabric_gateway_site_tunnel_up{site="paris",tenant="blue"}') == 0
    assert_conventional(text)
    # the operator's command prints the path and says the SA is down
    server = await gw_api.start_api(gw, "127.0.0.1:0", TOKEN)
    assert server is not None
    try:
        monkeypatch.setenv("NVFABRIC_GATEWAY_API", server.url)
        monkeypatch.setenv("NVFABRIC_GATEWAY_TOKEN", TOKEN)
        found = await outputs(capsys, "gateway", "trace", "--tenant", "blue", "tcp", "10.0.0.5", "10.20.0.10:22")
    finally:
        await server.stop()
    table = found["table"]
    assert "to the site" in table and "nvf-blue (table" in table and "NO: the SA is down" in table, table
    assert "203.0.113.22 -> 203.0.113.50" in table, table


def test_a_child_sa_up_event_names_its_connection_and_a_down_event_nothing() -> None:
    # charon's child-updown event: `up = yes` beside the IKE SA (named by its connection) when the child came up;
    # no `up` when it went down
    ike = {"uniqueid": "3", "state": "ESTABLISHED", "child-sas": {"blue.paris-4": {"name": "blue.paris"}}}
    assert children_up({"up": "yes", "blue.paris": ike}) == ["blue.paris"]
    assert children_up({"blue.paris": ike}) == []


def test_bgp_site_series_say_the_sessions_state_and_what_the_site_announces_judged() -> None:
    bgp = {"peer_address": "10.255.0.2", "peer_as": 65020, "local_address": "10.255.0.1/30"}
    blue = tenant({**SITE, "bgp": bgp}, {**SITE, "name": "lyon", "remote_address": "203.0.113.51",
                                          "prefixes": ["10.21.0.0/24"]})
    # paris announces its network, the tenant's own subnet and a default route: one accepted, two refused
    heard = {"paris": tuple(ipaddress.ip_network(p) for p in ("10.30.0.0/24", "10.0.0.0/24", "0.0.0.0/0"))}

    def scrape_bgp(session: dict | None, learned: dict) -> str:
        registry = CollectorRegistry()
        registry.register(sitestatus.SiteBgpCollector(sitestatus.bgp_samples(  # type: ignore[arg-type]
            [blue], lambda name: learned if name == "blue" else {},
            lambda name, site: session if (name, site) == ("blue", "paris") else None)))
        return generate_latest(registry).decode()

    text = scrape_bgp({"state": "established", "announced": 1}, heard)
    assert_conventional(text)
    paris = 'site="paris",tenant="blue"'

    def state(name: str) -> str:  # (labels in the exposition's order)
        return f'nvfabric_gateway_site_bgp_session_state{{site="paris",state="{name}",tenant="blue"}}'

    assert value(text, state("established")) == 1
    assert value(text, state("idle")) == 0
    assert [value(text, f"nvfabric_gateway_site_bgp_{what}_prefixes{{{paris}}}")
            for what in ("announced", "received", "accepted", "refused")] == [1, 3, 1, 2]
    assert 'site="lyon"' not in text  # no bgp: no session to report
    # standing by (no session here): idle, nothing announced nor learned
    text = scrape_bgp(None, {})
    assert value(text, state("idle")) == 1
    assert value(text, state("established")) == 0
    assert [value(text, f"nvfabric_gateway_site_bgp_{what}_prefixes{{{paris}}}")
            for what in ("announced", "received", "accepted", "refused")] == [0, 0, 0, 0]


async def test_the_api_scrapes_a_bgp_sites_session(monkeypatch) -> None:
    bgp = {"peer_address": "10.255.0.2", "peer_as": 65020, "local_address": "10.255.0.1/30"}
    body = {**BODY, "tenants": [{**BODY["tenants"][0], "sites": [{**SITE, "bgp": bgp}]}]}
    gw = Gateway(GatewayConfig.from_dict(body))  # not started: no session

    async def counters():
        return {}
    monkeypatch.setattr(gw, "counters", counters)
    async with TestClient(TestServer(gw_api.make_app(gw, TOKEN))) as client:
        text = await (await client.get("/metrics")).text()
    assert_conventional(text)
    assert value(text, 'nvfabric_gateway_site_bgp_session_state{site="paris",state="idle",tenant="blue"}') == 1
    assert value(text, 'nvfabric_gateway_site_bgp_accepted_prefixes{site="paris",tenant="blue"}') == 0
