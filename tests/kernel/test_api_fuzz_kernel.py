"""REST fuzzing of STARTED daemons on a real kernel (VM phase): tests/unit/test_api_fuzz.py's schemathesis run
(the same checks, seeded and bounded) against a host agent and a gateway that program their kernel, so the
write paths (routing domains and their customer routes, ports; tenants with their VRF side and NAT) are
fuzzed through to netlink and nftables. Stricter than the host phase: a started daemon never answers 503
not-running (the only 503 its document allows is state-not-saved, and nothing breaks its disk here).

Afterwards each daemon is still healthy: a well-formed change still reaches the kernel, and the kernel still
matches what the daemon wants (the agent: a full resync has nothing to do; the gateway: its NAT table
dispatches to exactly its tenants).

Each daemon runs on the loop thread of tests/unit/test_api_fuzz.py's Served, moved into a scratch namespace;
its API listens on a veth to the root namespace, where schemathesis's synchronous client runs.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from nvfabric.gateway import api as gw_api
from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.gateway import Gateway
from nvfabric.hostagent import api as agent_api
from nvfabric.hostagent import reload as agent_reload
from nvfabric.hostagent.agent import Agent
from nvfabric.hostagent.config import AgentConfig
from nvfabric.lab import netns
from nvfabric.lab.fabric import wait_for
from nvfabric.service.rest import ApiServer, serve
from nvfabric.vnet.kernel.netns import enter_namespace
from tests.unit.test_api import TOKEN
from tests.unit.test_api_fuzz import AUTH, CHECKS, SEED, SENT, Served, fuzz

pytestmark = pytest.mark.kernel

# generated requests per operation (and 3x as many near-valid writes per daemon): about 1.5 minutes in the TCG
# VM, as the suite's time budget allows (the host phase fuzzes the same APIs with 50 per operation);
# NVFABRIC_FUZZ_EXAMPLES (and NVFABRIC_FUZZ_SEED) for a longer run
EXAMPLES = int(os.environ.get("NVFABRIC_FUZZ_EXAMPLES", "10"))
TAG = f"fz{os.getpid() % 10000}"
STATUSES: Counter[tuple[str, int]] = Counter()  # (API, status) -> answers, reported with SENT


def not_running_is_a_bug(ctx: Any, response: Any, case: Any) -> bool:
    """A started daemon is running: its one documented 503 is a change whose state could not be saved."""
    if response.status_code == 503 and response.json().get("error") != "state-not-saved":
        raise AssertionError(f"{case.method} {case.formatted_path}: 503 from a started daemon: {response.text[:300]}")
    return True


STARTED_CHECKS = [*CHECKS, not_running_is_a_bug]


def scratch(name: str, api_net: int) -> tuple[str, str]:
    """A namespace with a veth to the root namespace (169.254.199.<api_net>/30 there, the next address
    inside); returns (namespace, the API's listen address)."""
    ns = f"{TAG}-{name}"
    outside, inside = f"169.254.199.{api_net}", f"169.254.199.{api_net + 1}"
    netns.create(ns)
    netns.run(["ip", "link", "add", f"{TAG}{name[0]}", "type", "veth", "peer", "name", "api0", "netns", ns])
    netns.ip_batch([f"addr add {outside}/30 dev {TAG}{name[0]}", f"link set {TAG}{name[0]} up"])
    netns.ip_batch([f"addr add {inside}/30 dev api0", "link set api0 up"], ns)
    return ns, f"{inside}:0"


def in_ns(ns: str, *argv: str) -> str:
    return netns.run(["ip", "netns", "exec", ns, *argv]).output


def tally(name: str, response: Any) -> None:
    STATUSES[name, response.status_code] += 1


def documented(served: Served) -> Any:
    """The daemon's document, without schemathesis's coverage phase: its boundary and negative cases are
    refused before any kernel work, and the host phase runs them; here the time goes to generated writes."""
    schema = served.schema()
    schema.config.phases.coverage.enabled = False
    return schema


def send(served: Served, schema: Any, name: str, method: str, path: str, names: dict[str, str],
         body: Any = None) -> None:
    """One near-valid request through schemathesis, checked as the generated ones are."""
    case = schema[path][method].Case(path_parameters=names, **({} if body is None else {"body": body}))
    response = fuzz(served, name, case, STARTED_CHECKS)
    tally(name, response)
    STATUSES[f"{name} near-valid", response.status_code] += 1


def maybe(key: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """{key: value} or {}: an optional field present or not."""
    return st.one_of(st.just({}), values.map(lambda v: {key: v}))


# Near-valid values: mostly well formed, overlapping on purpose (the same VSIDs, prefixes, addresses,
# interfaces in several requests), with a few refused ones mixed in. Random strings almost never make a valid
# write, so these are what drive the daemons' kernel paths: VRFs made and removed, ports moved between
# routing domains, conflicts found after the kernel was touched.
ROUTE_TARGETS = st.lists(st.sampled_from(["65000:1", "65000:1", "65000:2", "1.2.3.4:5", "4200000000:7", "65000:x"]),
                         min_size=1, max_size=2)
VSIDS = st.sampled_from([5001, 5001, 5002, 6001, 16777214, 4095])
PREFIXES = st.tuples(st.sampled_from(["10.0.0.0/24", "10.0.0.0/24", "10.0.1.0/24", "10.0.0.0/16", "0.0.0.0/0",
                                      "10.0.0.1/24"]),
                     st.sampled_from([(), (), ("fd00:b::/64",)])).map(lambda x: [x[0], *x[1]])
SUBNETS = st.lists(st.fixed_dictionaries({"vsid": VSIDS, "prefixes": PREFIXES}).flatmap(
    lambda s: maybe("gateways", st.lists(st.sampled_from(["10.0.0.1", "10.0.1.254", "fd00:b::1"]), max_size=1))
    .map(lambda g: {**s, **g})), max_size=2)
CAS = st.sampled_from(["10.0.0.5", "10.0.0.6", "10.0.1.5", "fd00:b::5", "10.0.0.0", "10.0.0.255", "192.0.2.1"])
CUSTOMER_ROUTES = st.lists(st.fixed_dictionaries({"prefix": st.sampled_from(
    ["192.168.0.0/16", "0.0.0.0/0", "10.0.0.0/24", "fd00:1::/48", "10.0.0.5/32"])}).flatmap(
    lambda r: st.tuples(maybe("next_hop", st.sampled_from(["10.0.0.5", "on-link", "fd00:b::5", "10.0.1.5"])),
                        maybe("metric", st.sampled_from([0, 100, 4294967295, 4294967296])))
    .map(lambda x: {**r, **x[0], **x[1]})), max_size=2)
DOMAIN = st.tuples(st.fixed_dictionaries({"route_targets": ROUTE_TARGETS, "subnets": SUBNETS}),
                   maybe("customer_routes", CUSTOMER_ROUTES)).map(lambda x: {**x[0], **x[1]})
MACS = st.sampled_from(["02:00:00:00:00:01", "02:00:00:00:00:02", "01:00:5e:00:00:01", "00:00:00:00:00:00"])
PORT = st.tuples(
    st.fixed_dictionaries({"interface": st.sampled_from(["tap-1", "tap-2", "tap-3", "u0", "lo", "tap-none"]),
                           "mac": MACS, "vsid": VSIDS, "addresses": st.lists(CAS, max_size=2)}),
    maybe("mtu", st.sampled_from([None, 1280, 1400, 9000, 68])), maybe("port_security", st.booleans()),
    maybe("allowed_addresses", st.lists(st.sampled_from(["10.0.0.0/24", "10.0.0.7/32", "fd00:b::/64"]),
                                        max_size=1))).map(lambda x: {k: v for d in x for k, v in d.items()})
PUBLIC4 = st.sampled_from(["203.0.113.140", "203.0.113.150", "203.0.113.151", "203.0.113.2", "192.0.2.1"])
TENANT = st.tuples(
    st.fixed_dictionaries({"route_targets": ROUTE_TARGETS, "subnets": SUBNETS}),
    maybe("snat", st.lists(st.fixed_dictionaries({"address": PUBLIC4}).flatmap(
        lambda n: maybe("ports", st.sampled_from(["1024-65535", "2000-3000", "3000-2000", "80"]))
        .map(lambda p: {**n, **p})), max_size=1)),
    maybe("floating_ips", st.lists(st.fixed_dictionaries({"public": PUBLIC4, "private": CAS}), max_size=2)),
    maybe("public_prefixes", st.lists(st.sampled_from(["2001:db8:b00::/48", "fd00:b::/64"]), max_size=1)),
    maybe("interfaces", st.lists(st.sampled_from(["t-1", "t-2", "ext", "u0"]), max_size=1)),
).map(lambda x: {k: v for d in x for k, v in d.items()})
TENANT_NAMES = st.sampled_from(["blue", "t1", "t2", "t3"])
DOMAIN_NAMES = st.sampled_from(["d1", "d2", "d3"])
PORT_NAMES = st.sampled_from(["p1", "p2", "p3"])


def report(name: str) -> None:
    statuses = ", ".join(f"{status}: {n}" for (api, status), n in sorted(STATUSES.items()) if api == name)
    near = ", ".join(f"{status}: {n}" for (api, status), n in sorted(STATUSES.items()) if api == f"{name} near-valid")
    print(f"\nREST fuzzing, started {name} on a kernel: {SENT[name]} requests ({statuses}); of them near-valid "
          f"writes: {near}")


# ---------------------------------------------------------------- the host agent

HEALTHY_DOMAIN = {"route_targets": ["65000:99"], "subnets": [{"vsid": 7001, "prefixes": ["10.99.0.0/24"]}],
                  "customer_routes": [{"prefix": "192.168.99.0/24", "next_hop": "10.99.0.5"}]}
TAPS = ("tap-h", "tap-1", "tap-2", "tap-3")
HEALTHY_PORT = {"interface": "tap-h", "mac": "02:00:00:00:99:01", "vsid": 7001, "addresses": ["10.99.0.5"]}


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Iterator[tuple[Served, Agent, str]]:
    """A started agent in a scratch namespace: its PA on a dummy underlay, a reflector that cannot be reached
    (no route: the agent runs headless, as after losing both reflectors), a resync every 3 s (the kernel read
    back) and a verification every 5 s (everything computed again)."""
    for module in ("vrf", "ip_gre", "ip6_gre"):
        netns.run(["modprobe", module], check=False)
    ns, listen = scratch("agent", 4)
    netns.ip_batch(["link add u0 type dummy", "addr add 198.51.100.11/24 dev u0", "link set u0 up",
                    *(f"link add {tap} type veth peer name {tap}-vm" for tap in TAPS),
                    *(f"link set {tap} up" for tap in TAPS)], ns)
    config = AgentConfig.from_dict({
        "asn": 65000, "router_id": "198.51.100.11", "provider_addresses": ["198.51.100.11"],
        "route_reflectors": [{"address": "192.0.2.100"}], "state_dir": str(tmp_path_factory.mktemp("agent")),
        "netns": ns, "eor_timeout": 1, "resync_interval": 3, "verify_interval": 5})
    daemon = Agent(config)

    async def up() -> ApiServer:
        enter_namespace(ns)  # this loop's thread, for good: the agent's sockets and the API's are in ns
        await daemon.start()
        return await serve(agent_api.make_app(daemon, TOKEN), listen)

    try:
        served = Served(up)
        yield served, daemon, ns
        served.close(daemon.stop())
    finally:
        netns.destroy(ns)
    report("agent")


@pytest.fixture(scope="module")
def agent_schema(agent) -> Any:
    return documented(agent[0])


agent_schema_lazy = schemathesis.pytest.from_fixture("agent_schema")


@agent_schema_lazy.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@seed(SEED)
def test_started_agent_answers_as_documented(case, agent):
    tally("agent", fuzz(agent[0], "agent", case, STARTED_CHECKS))


@settings(max_examples=3 * EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@seed(SEED)
@given(step=st.one_of(
    st.tuples(st.just("PUT"), DOMAIN_NAMES, DOMAIN), st.tuples(st.just("DELETE"), DOMAIN_NAMES, st.none()),
    st.tuples(st.just("PUT"), PORT_NAMES, PORT), st.tuples(st.just("DELETE"), PORT_NAMES, st.none())))
def test_started_agent_takes_near_valid_writes(agent, agent_schema, step):
    method, name, body = step
    path = "/v1/ports/{name}" if name.startswith("p") else "/v1/routing-domains/{name}"
    send(agent[0], agent_schema, "agent", method, path, {"name": name}, body)


def test_the_fuzzed_agent_still_programs_its_kernel_and_agrees_with_it(agent):
    served, _, ns = agent
    url = served.server.url
    answer = requests.put(f"{url}/v1/routing-domains/healthy", json=HEALTHY_DOMAIN, headers=AUTH, timeout=60)
    assert answer.status_code in (200, 201), answer.text
    answer = requests.put(f"{url}/v1/ports/healthy-p", json=HEALTHY_PORT, headers=AUTH, timeout=60)
    assert answer.status_code in (200, 201), answer.text
    routes = in_ns(ns, "ip", "route", "show", "vrf", "nvf-healthy")
    assert "10.99.0.5 dev tap-h" in routes and "192.168.99.0/24 via 10.99.0.5" in routes, routes
    # a resync or a verification that starts after the change: the kernel already is what the agent wants
    since = time.time()

    def resynced() -> Any:
        last = requests.get(f"{url}/v1/status", headers=AUTH, timeout=60).json()["last_reconcile"]
        return last if last and last["full_observe"] and last["at"] > since else None

    last = wait_for(resynced, 60, "a full resync after the fuzzing")
    assert not last["errors"] and not any(last["ops"].values()), last


def test_the_agents_resync_repairs_what_someone_else_changed_in_the_kernel_and_says_what_it_found(agent):
    """The periodic resync alone (the verification, which computes everything again, put off by a reload):
    the kernel read back beside the passes, and only what differs written."""
    served, daemon, ns = agent
    served.run(daemon.reconfigure(agent_reload.plan(daemon.config, replace(daemon.config, verify_interval=3600))))
    for path, body in (("routing-domains/healthy", HEALTHY_DOMAIN), ("ports/healthy-p", HEALTHY_PORT)):
        answer = requests.put(f"{served.server.url}/v1/{path}", json=body, headers=AUTH, timeout=60)
        assert answer.status_code in (200, 201), answer.text
    wait_for(lambda: "10.99.0.5 dev tap-h" in in_ns(ns, "ip", "route", "show", "vrf", "nvf-healthy"), 30,
             "the port's route")
    since = time.time()
    # by hand: the agent's route to its VM deleted, and a route with the agent's protocol that nobody wants
    in_ns(ns, "ip", "route", "del", "10.99.0.5", "vrf", "nvf-healthy")
    in_ns(ns, "ip", "route", "add", "10.99.0.77/32", "dev", "tap-h", "vrf", "nvf-healthy", "proto", "78",
          "metric", "1024")

    def repaired() -> Any:
        last = requests.get(f"{served.server.url}/v1/status", headers=AUTH, timeout=60).json()["last_resync"]
        routes = in_ns(ns, "ip", "route", "show", "vrf", "nvf-healthy")
        if last and last["at"] > since and "10.99.0.5 dev tap-h" in routes and "10.99.0.77" not in routes:
            return last
        return None

    last = wait_for(repaired, 60, "the resync's repair")
    assert last["drift"]["missing"] >= 1 and last["drift"]["strays"] >= 1, last
    # and the next resync finds the kernel as the agent wants it
    since = time.time()
    last = wait_for(lambda: (r := requests.get(f"{served.server.url}/v1/status", headers=AUTH, timeout=60).json()[
        "last_resync"]) and r["at"] > since and r, 60, "the next resync")
    assert not any(last["drift"].values()), last


# ---------------------------------------------------------------- the gateway

HEALTHY_TENANT = {"route_targets": ["65000:99"], "subnets": [{"vsid": 7001, "prefixes": ["10.99.0.0/24"]}],
                  "snat": [{"address": "203.0.113.199"}]}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[tuple[Served, Gateway, str]]:
    """A started gateway with its NVGRE side (VRFs, tc marks) and NAT, in a scratch namespace, one tenant
    from its configuration; tenants from the API are saved in its state directory."""
    for module in ("vrf", "ip_gre", "ip6_gre", "cls_flower", "act_skbedit"):
        netns.run(["modprobe", module], check=False)
    ns, listen = scratch("gw", 8)
    netns.ip_batch(["link add u0 type dummy", "addr add 198.51.100.21/24 dev u0", "link set u0 up",
                    "link add ext type dummy", "addr add 203.0.113.2/25 dev ext", "link set ext up",
                    *(f"link add {t} type veth peer name {t}-vm" for t in ("t-1", "t-2")),
                    "link set t-1 up", "link set t-2 up"], ns)
    blue = {"name": "blue", "route_targets": ["65000:1"], "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}],
            "snat": [{"address": "203.0.113.140"}],
            "floating_ips": [{"public": "203.0.113.131", "private": "10.0.0.5"}]}
    config = GatewayConfig.from_dict({
        "asn": 65000, "router_id": "198.51.100.21", "provider_addresses": ["198.51.100.21"], "netns": ns,
        "external": {"interfaces": ["ext"], "next_hop4": "203.0.113.1", "address4": "203.0.113.2"},
        "public_prefixes": ["203.0.113.128/25"], "state_dir": str(tmp_path_factory.mktemp("gw")),
        "sessions_interval": 1, "tenants": [blue]})
    daemon = Gateway(config)

    async def up() -> ApiServer:
        enter_namespace(ns)
        await daemon.start()
        return await serve(gw_api.make_app(daemon, TOKEN), listen)

    try:
        served = Served(up)
        yield served, daemon, ns
        served.close(daemon.stop())
        daemon.close()
    finally:
        netns.destroy(ns)
    report("gateway")


@pytest.fixture(scope="module")
def gateway_schema(gateway) -> Any:
    return documented(gateway[0])


gateway_schema_lazy = schemathesis.pytest.from_fixture("gateway_schema")


@gateway_schema_lazy.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@seed(SEED)
def test_started_gateway_answers_as_documented(case, gateway):
    tally("gateway", fuzz(gateway[0], "gateway", case, STARTED_CHECKS))


@settings(max_examples=3 * EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@seed(SEED)
@given(step=st.one_of(st.tuples(st.just("PUT"), TENANT_NAMES, TENANT),
                      st.tuples(st.just("DELETE"), TENANT_NAMES, st.none())))
def test_started_gateway_takes_near_valid_writes(gateway, gateway_schema, step):
    method, name, body = step
    send(gateway[0], gateway_schema, "gateway", method, "/v1/tenants/{name}", {"name": name}, body)


def test_the_fuzzed_gateway_still_programs_its_kernel_and_agrees_with_it(gateway):
    served, daemon, ns = gateway
    url = served.server.url
    answer = requests.put(f"{url}/v1/tenants/healthy", json=HEALTHY_TENANT, headers=AUTH, timeout=60)
    assert answer.status_code in (200, 201), answer.text
    zones = in_ns(ns, "nft", "list", "map", "inet", "nvfgw", "m_zone")
    assert "jump healthy_zone" in zones, zones
    assert "vrf" in in_ns(ns, "ip", "-d", "link", "show", "nvf-healthy")

    async def tenants() -> set[str]:
        return set(daemon.tenants)

    # the NAT table dispatches to exactly the tenants the gateway serves: nothing stale, nothing missing
    assert set(re.findall(r"jump (\S+)_zone", zones)) == served.run(tenants()), zones

