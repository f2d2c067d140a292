"""The gateway's NAT on this machine's kernel: real nftables and conntrack in namespaces, no VRF.

Per-tenant routing tables stand in for the VRFs: each
tenant is attached by a veth (`Tenant.interfaces`), `iif` and `fwmark` rules select its table. Two tenants,
blue and red, use the SAME addresses (10.0.0.5 with a floating IP, 10.0.0.6 without). The gateway (the real
gateway.Gateway, in a thread inside the gateway namespace) writes only its per-tenant nftables tables.
The public addresses (203.0.113.128/25) are routed to the gateway by the `internet` node, as the upstream
router does once the gateway announces them.
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.tenants import Tenant
from nvfabric.lab.daemons import GatewayThread, in_ns
from nvfabric.lab.fabric import wait_for
from nvfabric.lab.probe import Server, connect, echo
from nvfabric.lab.netns import run
from nvfabric.vnet.errors import ConflictError, ModelError
from tests.unit.test_metrics import assert_conventional

T = TypeVar("T")
SERVER = ("203.0.113.1", 8080)


def tenant_body(name: str, vsid: int, snat: str, fip_public: str) -> dict[str, Any]:
    return {"name": name, "route_targets": ["65001:1"], "subnets": [{"vsid": vsid, "prefixes": ["10.0.0.0/24"]}],
            "snat": [{"address": snat}], "floating_ips": [{"public": fip_public, "private": "10.0.0.5"}],
            "interfaces": [f"t-{name}"]}


BLUE = tenant_body("blue", 5001, "203.0.113.140", "203.0.113.131")
# the gateway's own configuration without tenants; the sampler counts conntrack entries every second
CONFIG = {"asn": 65001, "router_id": "198.51.100.21", "external": {"interfaces": ["ext"], "address4": "203.0.113.2"},
          "public_prefixes": ["203.0.113.128/25", "2001:db8:113::/64", "2001:db8:b00::/48"], "sessions_interval": 1}
RED = tenant_body("red", 6001, "203.0.113.141", "203.0.113.132")


@dataclass
class Net:
    gw: str
    inet: str
    blue: str
    red: str
    gateway: GatewayThread

    def nft_table(self, tenant: str) -> list[dict]:
        """The tenant's chains and rules (with their handles) in the gateway's table."""
        out = run(["ip", "netns", "exec", self.gw, "nft", "-j", "-a", "list", "table", "inet", "nvfgw"])
        return [x for x in json.loads(out.output)["nftables"]
                if ("rule" in x and x["rule"]["chain"].startswith(f"{tenant}_"))
                or ("chain" in x and x["chain"]["name"].startswith(f"{tenant}_"))]


def _batch(lines: list[str]) -> None:
    for line in lines:  # a few dozen `ip` runs: milliseconds each on the host
        run(["ip", *line.split()])


@pytest.fixture
def net(request: pytest.FixtureRequest) -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    p = f"gwt{os.getpid() % 10000}{zlib.crc32(request.node.name.encode()) % 1000}-"
    gw, inet, blue, red = (p + n for n in ("gw", "inet", "blue", "red"))
    names = (gw, inet, blue, red)
    gateway = None
    try:
        lines = [f"netns add {n}" for n in names]
        lines += [f"-n {n} link set lo up" for n in names]
        lines += [f"link add ext netns {gw} type veth peer name e0 netns {inet}",
                  f"-n {gw} addr add 203.0.113.2/25 dev ext", f"-n {inet} addr add 203.0.113.1/25 dev e0",
                  f"-n {gw} link set ext up", f"-n {inet} link set e0 up",
                  # the upstream router's view: the public pool is behind the gateway
                  f"-n {inet} route add 203.0.113.128/25 via 203.0.113.2"]
        for ns, tenant in ((blue, "blue"), (red, "red")):
            lines += [f"link add t-{tenant} netns {gw} type veth peer name v0 netns {ns}",
                      f"-n {gw} addr add 10.0.0.1/24 dev t-{tenant} noprefixroute",
                      f"-n {gw} link set t-{tenant} up",
                      f"-n {ns} addr add 10.0.0.5/24 dev v0", f"-n {ns} addr add 10.0.0.6/24 dev v0",
                      f"-n {ns} link set v0 up", f"-n {ns} route add default via 10.0.0.1"]
        _batch(lines)
        run(["ip", "netns", "exec", gw, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
             "net.ipv4.conf.default.rp_filter=0"])
        config = GatewayConfig.from_dict({**CONFIG, "tenants": [BLUE, RED]})
        gateway = GatewayThread(config, gw)
        gateway.call(lambda g: g.start())
        # the VRF stand-in: per-tenant tables, chosen by the attachment or by the tenant's mark
        routes = []
        for tenant in ("blue", "red"):
            tid = gateway.gateway.tenant_id(tenant)
            routes += [f"-n {gw} route add 10.0.0.0/24 dev t-{tenant} src 10.0.0.1 table {tid}",
                       f"-n {gw} route add default via 203.0.113.1 dev ext table {tid}",
                       f"-n {gw} rule add iif t-{tenant} lookup {tid} pref 100",
                       f"-n {gw} rule add fwmark {tid} lookup {tid} pref 110"]
        _batch(routes)
        yield Net(gw, inet, blue, red, gateway)
    finally:
        if gateway is not None:
            gateway.close()
        for n in names:
            run(["ip", "netns", "del", n], check=False)


# ---------------------------------------------------------------------- tests


def test_overlapping_tenants_each_leave_with_their_own_snat_address(net: Net) -> None:
    server = Server(net.inet, SERVER)
    try:
        seen = {}
        for tenant, ns in (("blue", net.blue), ("red", net.red)):
            s, line = connect(ns, SERVER, ("10.0.0.6", 0))
            s.close()
            seen[tenant] = line.split(":")[0]
        assert seen == {"blue": "203.0.113.140", "red": "203.0.113.141"}
    finally:
        server.close()


def test_concurrent_flows_with_the_same_source_address_and_port_both_work(net: Net) -> None:
    server = Server(net.inet, SERVER)
    try:
        blue, blue_line = connect(net.blue, SERVER, ("10.0.0.6", 40000))
        red, red_line = connect(net.red, SERVER, ("10.0.0.6", 40000))  # the same 5-tuple inside both tenants
        assert {blue_line, red_line} == {"203.0.113.140:40000", "203.0.113.141:40000"}
        # both established at once, each reply reaching its own tenant
        assert echo(blue, "to-blue") == "to-blue"
        assert echo(red, "to-red") == "to-red"
        blue.close()
        red.close()
        status = {s.name: s for s in net.gateway.call(lambda g: g.status())}
        assert status["blue"].counters.packets_out > 0 and status["red"].counters.packets_in > 0
    finally:
        server.close()


def test_floating_ip_reaches_the_right_vm_and_its_outbound_leaves_with_it(net: Net) -> None:
    vms = [Server(net.blue, ("10.0.0.5", 9000), "blue "), Server(net.red, ("10.0.0.5", 9000), "red ")]
    server = Server(net.inet, SERVER)
    try:
        for public, tenant in (("203.0.113.131", "blue"), ("203.0.113.132", "red")):
            s, line = connect(net.inet, (public, 9000))
            s.close()
            assert line.startswith(f"{tenant} 203.0.113.1:"), line  # the VM sees the real client (no SNAT inbound)
        for ns, public in ((net.blue, "203.0.113.131"), (net.red, "203.0.113.132")):
            s, line = connect(ns, SERVER, ("10.0.0.5", 0))
            s.close()
            assert line.split(":")[0] == public
    finally:
        for v in (*vms, server):
            v.close()


def _rules(table: list[dict]) -> list[tuple]:
    return [(x["rule"]["chain"], x["rule"]["handle"], json.dumps(x["rule"]["expr"], sort_keys=True))
            for x in table if "rule" in x]


def test_a_change_to_one_tenant_leaves_the_others_rules_and_flows_untouched(net: Net) -> None:
    server = Server(net.inet, SERVER)
    try:
        red_flow, _ = connect(net.red, SERVER, ("10.0.0.6", 0))
        blue_flow, _ = connect(net.blue, SERVER, ("10.0.0.6", 0))
        red_before = _rules(net.nft_table("red"))
        changed = Tenant.from_dict({**BLUE, "floating_ips": [{"public": "203.0.113.133", "private": "10.0.0.5"}]})
        assert net.gateway.call(lambda g: g.put_tenant(changed)) is False
        assert _rules(net.nft_table("red")) == red_before  # same rules, same handles: not rewritten
        blue_rules = json.dumps(_rules(net.nft_table("blue")))
        assert "203.0.113.133" in blue_rules and "203.0.113.131" not in blue_rules
        # established flows of both survive (NAT bindings live in conntrack, not in the table)
        assert echo(red_flow, "still-red") == "still-red"
        assert echo(blue_flow, "still-blue") == "still-blue"
        # the new floating IP works at once
        vm = Server(net.blue, ("10.0.0.5", 9000), "blue ")
        s, line = connect(net.inet, ("203.0.113.133", 9000))
        s.close()
        vm.close()
        assert line.startswith("blue ")
        red_flow.close()
        blue_flow.close()
        # deleting a tenant removes its table only
        net.gateway.call(lambda g: g.delete_tenant("blue"))
        assert _rules(net.nft_table("red")) == red_before
        assert net.nft_table("blue") == [] and net.nft_table("red")
    finally:
        server.close()


@pytest.mark.parametrize("change, field", [
    ({**RED, "name": "green", "subnets": [{"vsid": 7001, "prefixes": ["10.9.0.0/24"]}],
      "floating_ips": [], "interfaces": [], "snat": [{"address": "203.0.113.140"}]}, "snat[0].address"),
    ({**RED, "floating_ips": [{"public": "203.0.113.131", "private": "10.0.0.5"}]}, "floating_ips[0].public"),
    ({**RED, "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}]}, "subnets[0].vsid"),
])
def test_a_conflicting_tenant_is_refused_naming_the_field_and_nothing_is_applied(
        net: Net, change: dict, field: str) -> None:
    before = {t: _rules(net.nft_table(t)) for t in ("blue", "red")}
    whole = run(["ip", "netns", "exec", net.gw, "nft", "-a", "list", "ruleset"]).output
    tenant = Tenant.from_dict(change)
    with pytest.raises(ConflictError) as refused:
        net.gateway.call(lambda g: g.put_tenant(tenant))
    assert refused.value.field == field
    assert {t: _rules(net.nft_table(t)) for t in ("blue", "red")} == before
    assert run(["ip", "netns", "exec", net.gw, "nft", "-a", "list", "ruleset"]).output == whole
    assert net.gateway.gateway.tenants == {"blue": Tenant.from_dict(BLUE), "red": Tenant.from_dict(RED)}


def test_an_invalid_tenant_is_refused_before_the_gateway_sees_it() -> None:
    with pytest.raises(ModelError) as refused:
        Tenant.from_dict({**BLUE, "floating_ips": [{"public": "203.0.113.131", "private": "10.7.0.5"}]})
    assert refused.value.field == "floating_ips[0].private"


# ---------------------------------------------------------------------- REST API, metrics, ctl


def _http(ns: str, method: str, url: str, body: Any = None, token: str = "t0ken") -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    def go() -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                ctype = r.headers.get("Content-Type", "")
                return r.status, (json.loads(raw) if "json" in ctype and raw else raw.decode())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
    return in_ns(ns, go)


def test_rest_api_metrics_and_ctl(net: Net) -> None:
    from nvfabric.gateway.api import start_api

    api = net.gateway.call(lambda g: start_api(g, "127.0.0.1:0", "t0ken"))
    try:
        url = api.url
        server = Server(net.inet, SERVER)
        s, _ = connect(net.blue, SERVER, ("10.0.0.6", 0))
        # sessions are the conntrack sampler's count (every second here): wait for the one that saw the flow
        status, body = wait_for(lambda: (r := _http(net.gw, "GET", f"{url}/v1/tenants"))[1]["tenants"][0]["status"][
            "nat_sessions"] >= 1 and r, 10, "blue's NAT session counted")
        assert status == 200 and [t["name"] for t in body["tenants"]] == ["blue", "red"]
        blue = body["tenants"][0]["status"]
        assert blue["packets_out"] > 0
        assert blue["id"] == net.gateway.gateway.tenant_id("blue")
        # a bad body: 400 naming the field; a conflict: 409; nothing applied
        status, body = _http(net.gw, "PUT", f"{url}/v1/tenants/green", {**RED, "name": "green", "snat": ["bad"]})
        assert (status, body["field"]) == (400, "snat[0].address")
        status, body = _http(net.gw, "PUT", f"{url}/v1/tenants/green", {
            "route_targets": ["65001:3"], "subnets": [{"vsid": 7001, "prefixes": ["10.0.0.0/24"]}],
            "snat": ["203.0.113.141"]})
        assert (status, body["error"], body["field"]) == (409, "conflict", "snat[0].address")
        assert set(net.gateway.gateway.tenants) == {"blue", "red"}
        # a valid one: 201, its table exists; GET body PUT back is accepted unchanged (200)
        green = {"route_targets": ["65001:3"], "subnets": [{"vsid": 7001, "prefixes": ["10.0.0.0/24"]}],
                 "snat": ["203.0.113.142"]}
        status, body = _http(net.gw, "PUT", f"{url}/v1/tenants/green", green)
        assert status == 201 and net.nft_table("green")
        status, got = _http(net.gw, "GET", f"{url}/v1/tenants/green")
        assert _http(net.gw, "PUT", f"{url}/v1/tenants/green", got)[0] == 200
        assert _http(net.gw, "DELETE", f"{url}/v1/tenants/green")[0] == 204
        assert _http(net.gw, "GET", f"{url}/v1/tenants/green")[0] == 404
        # trace: GET with query parameters, as the agent's; POST with a JSON body answers the same
        query = "proto=tcp&src=203.0.113.1&sport=5000&dst=203.0.113.132&dport=22"
        status, body = _http(net.gw, "GET", f"{url}/v1/trace?{query}")
        assert (body["tenant"], body["action"], body["translated"]["dst"]) == ("red", "dnat", "10.0.0.5")
        assert _http(net.gw, "POST", f"{url}/v1/trace", {"proto": "tcp", "src": "203.0.113.1", "sport": 5000,
                                                         "dst": "203.0.113.132", "dport": 22}) == (200, body)
        status, refused = _http(net.gw, "GET", f"{url}/v1/trace?proto=tcp&src=203.0.113.1&dst=203.0.113.132&dport=x")
        assert (status, refused["field"]) == (400, "dport")
        # metrics: per tenant, read from nftables and conntrack
        status, text = _http(net.gw, "GET", f"{url}/metrics", token="")
        assert status == 200
        assert 'nvfabric_gateway_tenant_nat_sessions{tenant="blue"} ' in text
        assert "nvfabric_gateway_tenants_suspended 0.0" in text and "nvfabric_gateway_state_problems 0.0" in text
        line = next(x for x in text.splitlines()
                    if x.startswith('nvfabric_gateway_tenant_packets_total{direction="out",tenant="blue"}'))
        assert float(line.split()[-1]) > 0
        assert_conventional(text)  # promtool check metrics, of a running gateway's scrape
        # the operator's table
        port = url.rsplit(":", 1)[1]
        out = run(["ip", "netns", "exec", net.gw, sys_nvfabric(), "ctl", "gateway", "tenants", "--api",
                   f"http://127.0.0.1:{port}", "--token", "t0ken"]).output
        assert "blue" in out and "203.0.113.140" in out and "203.0.113.131->10.0.0.5" in out
        out = run(["ip", "netns", "exec", net.gw, sys_nvfabric(), "ctl", "gateway", "trace", "tcp", "203.0.113.1:5000",
                   "203.0.113.132:22", "--api", f"http://127.0.0.1:{port}", "--token", "t0ken", "-o", "json"]).output
        assert json.loads(out) == body
        # its status: a gateway without reflectors always serves; /metrics says so too
        out = run(["ip", "netns", "exec", net.gw, sys_nvfabric(), "gateway", "status", "--api",
                   f"http://127.0.0.1:{port}", "--token", "t0ken", "-o", "json"]).output
        role = json.loads(out)["role"]
        assert (role["serving"], role["configured"], role["upstream"]) == (True, "active", "announce")
        assert "nvfabric_gateway_serving 1.0" in text and "nvfabric_gateway_role_changes_total 0.0" in text
        s.close()
        server.close()
    finally:
        net.gateway.call(lambda g: api.stop())


def sys_nvfabric() -> str:
    import sys
    from pathlib import Path

    return str(Path(sys.executable).parent / "nvfabric")


def test_ipv6_tenants_load_at_start_and_change(net: Net) -> None:
    """A tenant with a public IPv6 prefix (interval maps) and one with NAT66, in the start transaction and as
    changes; nft 1.0.6 once refused the start (an interval map's element jumping to a chain created after
    the map in the same transaction)."""
    green = {"name": "green", "route_targets": ["65001:3"], "public_prefixes": ["2001:db8:b00::/64"],
             "subnets": [{"vsid": 7001, "prefixes": ["2001:db8:b00::/64"]}]}
    nat66 = {**tenant_body("violet", 8001, "203.0.113.142", "203.0.113.133"),
             "subnets": [{"vsid": 8001, "prefixes": ["10.0.0.0/24", "fd00:8::/64"]}], "interfaces": [],
             "snat": [{"address": "203.0.113.142"}, {"address": "2001:db8:113::142"}]}
    config = GatewayConfig.from_dict({**CONFIG, "tenants": [BLUE, RED, green, nat66]})
    restarted = GatewayThread(config, net.gw)  # a restart with more tenants: the whole table replaced
    try:
        restarted.call(lambda g: g.start())

        def elements(name: str) -> list:
            out = run(["ip", "netns", "exec", net.gw, "nft", "-j", "list", "map", "inet", "nvfgw", name]).output
            return json.loads(out)["nftables"][1]["map"].get("elem", [])

        assert [e[0]["prefix"] for e in elements("p6_zone")] == [{"addr": "2001:db8:b00::", "len": 64}]
        assert [e[0] for e in elements("a6_zone")] == ["2001:db8:113::142"]
        moved = Tenant.from_dict({**green, "public_prefixes": ["2001:db8:b00::/64"],
                                  "subnets": [{"vsid": 7001, "prefixes": ["2001:db8:b00::/56"]}]})
        restarted.call(lambda g: g.put_tenant(moved))
        restarted.call(lambda g: g.delete_tenant("green"))
        assert elements("p6_zone") == [] and elements("p6_mark") == []
    finally:
        restarted.close()


# ---------------------------------------------------------------------- state across restarts


VIOLET = {"name": "violet", "route_targets": ["65001:4"], "subnets": [{"vsid": 9001, "prefixes": ["10.9.0.0/24"]}],
          "snat": ["203.0.113.142"]}


def test_tenants_and_ids_survive_restarts_and_a_surviving_flow_keeps_its_tenant(net: Net, tmp_path) -> None:
    """The fixture's gateway kept no state: a restart adopts blue's and red's ids from the kernel's NAT
    table. A tenant created through the API survives the next restart; blue leaves the configuration, and
    red keeps its id (from the sorted names it would now get blue's), so red's established flow, whose
    conntrack entry carries red's id as zone and mark, keeps working. A tenant deleted through the API
    stays deleted."""
    ids = {n: net.gateway.gateway.tenant_id(n) for n in ("blue", "red")}
    server = Server(net.inet, SERVER)
    net.gateway.stop()
    state = {**CONFIG, "state_dir": str(tmp_path / "state")}
    gateways: list[GatewayThread] = []

    def restart(tenants: list[dict]) -> GatewayThread:
        if gateways:
            gateways[-1].stop()
        gw = GatewayThread(GatewayConfig.from_dict({**state, "tenants": tenants}), net.gw)
        gateways.append(gw)
        gw.call(lambda g: g.start())
        return gw

    try:
        first = restart([BLUE, RED])
        assert {n: first.gateway.tenant_id(n) for n in ids} == ids
        red_flow, line = connect(net.red, SERVER, ("10.0.0.6", 0))
        assert line.startswith("203.0.113.141:")
        assert first.call(lambda g: g.put_tenant(Tenant.from_dict(VIOLET))) is True
        violet = first.gateway.tenant_id("violet")
        assert violet not in ids.values()

        second = restart([RED])  # blue is no longer in the configuration file
        assert set(second.gateway.tenants) == {"red", "violet"}
        assert second.gateway.tenant("violet") == Tenant.from_dict(VIOLET)
        assert (second.gateway.tenant_id("red"), second.gateway.tenant_id("violet")) == (ids["red"], violet)
        assert echo(red_flow, "still-red") == "still-red"
        assert net.nft_table("blue") == []
        second.call(lambda g: g.delete_tenant("violet"))

        third = restart([RED])
        assert set(third.gateway.tenants) == {"red"} and third.gateway.tenant_id("red") == ids["red"]
        assert echo(red_flow, "red-again") == "red-again"
        # a tenant created now gets an id no tenant had: a leftover flow of violet cannot land in it
        third.call(lambda g: g.put_tenant(Tenant.from_dict({**VIOLET, "name": "teal"})))
        assert third.gateway.tenant_id("teal") not in (*ids.values(), violet)
        red_flow.close()
    finally:
        if gateways:
            gateways[-1].stop()
        server.close()


def test_a_change_whose_state_cannot_be_saved_is_refused_with_503_and_put_back(net: Net, tmp_path) -> None:
    from nvfabric.gateway.api import start_api

    net.gateway.stop()
    gw = GatewayThread(GatewayConfig.from_dict({**CONFIG, "tenants": [BLUE, RED], "state_dir": str(tmp_path)}),
                       net.gw)
    try:
        gw.call(lambda g: g.start())
        api = gw.call(lambda g: start_api(g, "127.0.0.1:0", "t0ken"))
        whole = run(["ip", "netns", "exec", net.gw, "nft", "-a", "list", "ruleset"]).output

        def full(_state: object) -> None:
            raise OSError(28, "No space left on device")

        gw.gateway._state.save = full  # type: ignore[union-attr,method-assign]  # the disk is full
        status, body = _http(net.gw, "PUT", f"{api.url}/v1/tenants/violet", VIOLET)
        assert (status, body["error"]) == (503, "state-not-saved") and "No space left" in body["problem"]
        status, body = _http(net.gw, "DELETE", f"{api.url}/v1/tenants/red")
        assert (status, body["error"]) == (503, "state-not-saved")
        assert set(gw.gateway.tenants) == {"blue", "red"}
        # the kernel as it was: red's chains back, no violet (rule handles change when a chain is re-created)
        after = run(["ip", "netns", "exec", net.gw, "nft", "-a", "list", "ruleset"]).output
        assert "violet" not in after and "red_snat" in after
        assert len(after.splitlines()) == len(whole.splitlines())
        gw.call(lambda g: api.stop())
    finally:
        gw.stop()
    # the conntrack sampler's thread ended with the gateway (and the fixture's before it)
    assert not [t for t in threading.enumerate() if t.name == "conntrack-sessions"]


def test_a_tenant_may_not_claim_the_gateways_own_things(net: Net) -> None:
    for change, field in (({**VIOLET, "snat": ["203.0.113.2"]}, "snat[0].address"),  # external.address4
                          ({**VIOLET, "interfaces": ["ext"]}, "interfaces[0]"),
                          ({**VIOLET, "snat": ["198.51.100.99"]}, "snat[0].address")):  # outside public_prefixes
        with pytest.raises(ModelError) as refused:
            net.gateway.call(lambda g, c=change: g.put_tenant(Tenant.from_dict(c)))
        assert refused.value.field == field
        assert net.nft_table("violet") == []


def test_the_configuration_file_wins_and_a_saved_tenant_that_no_longer_fits_is_kept_not_served(
        net: Net, tmp_path, caplog) -> None:
    """Precedence at start: a tenant the file defines is the file's, even after an API PUT changed it; an API
    tenant whose address the file has taken since is not served, reported, and kept in the state file
    until a DELETE of its name settles it."""
    net.gateway.stop()
    state = {**CONFIG, "state_dir": str(tmp_path)}
    moved = {**BLUE, "floating_ips": [{"public": "203.0.113.133", "private": "10.0.0.5"}]}
    gw = GatewayThread(GatewayConfig.from_dict({**state, "tenants": [BLUE, RED]}), net.gw)
    try:
        gw.call(lambda g: g.start())
        gw.call(lambda g: g.put_tenant(Tenant.from_dict(moved)))  # a config tenant changed through the API
        gw.call(lambda g: g.put_tenant(Tenant.from_dict(VIOLET)))
        violet = gw.gateway.tenant_id("violet")
        gw.stop()
        # the file now gives violet's SNAT address to red
        red = {**RED, "snat": [{"address": "203.0.113.142"}]}
        gw = GatewayThread(GatewayConfig.from_dict({**state, "tenants": [BLUE, red]}), net.gw)
        gw.call(lambda g: g.start())
        assert gw.gateway.tenant("blue") == Tenant.from_dict(BLUE)  # the file's version
        assert set(gw.gateway.tenants) == {"blue", "red"}
        assert "tenant violet (created through the API) not served" in caplog.text
        assert gw.gateway.suspended == ["violet"]
        saved = json.loads((tmp_path / "gateway-state.json").read_text())
        assert [t["name"] for t in saved["api_tenants"]] == ["violet"] and saved["ids"]["violet"] == violet
        # a new tenant does not take the suspended one's id; a DELETE settles it
        gw.call(lambda g: g.put_tenant(Tenant.from_dict({**VIOLET, "name": "teal", "snat": ["203.0.113.143"]})))
        assert gw.gateway.tenant_id("teal") != violet
        gw.call(lambda g: g.delete_tenant("violet"))
        saved = json.loads((tmp_path / "gateway-state.json").read_text())
        assert [t["name"] for t in saved["api_tenants"]] == ["teal"] and "violet" not in saved["ids"]
    finally:
        gw.stop()
