"""BGP fuzzing of the host agents and the gateway with their kernel (VM phase): the default topology with our
reflector on rr1 only, the gateway on gw1; rr2's address is the fuzzer (lab/fuzz), which the agents on
hv1-hv3 and the gateway dial like a reflector. It sends them fuzzed OPENs, UPDATEs, NOTIFICATIONs and
ROUTE-REFRESHes, seeded and bounded (NVFABRIC_FUZZ_SEED, NVFABRIC_FUZZ_MESSAGES). Throughout, each
target's session to rr1 stays Established (never reset); afterwards the targets are alive, their kernel
routes are exactly those of before (nothing the fuzzer announced is left), the tenants still reach whom
they should and only them, and a well-formed route from rr2's address is installed, then removed when
its session ends.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import pytest

from nvfabric.bgp import wire
from nvfabric.bgp.routes import MacIpRoute
from nvfabric.lab import netns, runner
from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.daemons import GatewayThread, LoopThread
from nvfabric.lab.fabric import HV, RR, Fabric, check, wait_for
from nvfabric.lab.fuzz.campaign import Acceptor, Campaign
from nvfabric.lab.fuzz.session import capabilities
from nvfabric.lab.gateway_scene import GW1, default_via, gateway_config
from nvfabric.lab.topology import load

pytestmark = pytest.mark.kernel
SEED = int(os.environ.get("NVFABRIC_FUZZ_SEED", "20261202"))
MESSAGES = int(os.environ.get("NVFABRIC_FUZZ_MESSAGES", "150"))
SECONDS = 60.0
FUZZER = RR["rr2"]
PROBE_CA = "10.0.0.201"
NODES = {**HV, "gw1": GW1}


def report(line: str) -> None:
    print(f"[bgp-fuzz] {line}", flush=True)


@pytest.fixture(scope="module")
def fabric() -> Iterator[tuple[Fabric, GatewayThread]]:
    topology = load(DEFAULT_TOPOLOGY)
    runner.up(topology)
    fab = Fabric(topology)
    gw = None
    try:
        fab.up(reflectors=("rr1",))
        gw = GatewayThread(gateway_config(fab), fab.ns("gw1"))
        gw.call(lambda g: g.start(), timeout=120)
        fab.wait_converged(90)
        for host in HV:
            wait_for(lambda h=host: default_via(fab, h), 90, f"the gateway's default route on {host}")
        yield fab, gw
    finally:
        if gw is not None:
            gw.stop()
        fab.close()
        runner.down(topology.name)


def kernel_routes(fab: Fabric) -> dict[str, set[str]]:
    """Every host's and the gateway's nvfabric routes (protocol 78), all tables, both families."""
    out = {}
    for node in NODES:
        lines = set()
        for family in ("-4", "-6"):
            text = netns.run(["ip", "-n", fab.ns(node), family, "route", "show", "table", "all", "proto", "78"],
                             check=False).output
            lines |= {line.strip() for line in text.splitlines() if line.strip()}
        out[node] = lines
    return out


def rr1_sessions(fab: Fabric) -> dict[str, tuple[str, int]]:
    """State and establishment count of each agent's and the gateway's session at rr1."""
    found = fab.reflector_api("rr1", "/v1/neighbors") or []
    rows = found.get("neighbors", []) if isinstance(found, dict) else found
    return {row["address"]: (row["state"], row["established_count"]) for row in rows
            if row["address"] in NODES.values()}


def fuzz(fab: Fabric, targets: dict[str, str], seed: int) -> None:
    """Fuzz the nodes `targets` (name -> address) from rr2's address, then check everything said above."""
    before_routes = kernel_routes(fab)
    before_sessions = rr1_sessions(fab)
    assert set(before_sessions) == set(NODES.values()), before_sessions
    assert {state for state, _ in before_sessions.values()} == {"established"}, before_sessions
    caps = capabilities(FUZZER)
    loop = LoopThread(fab.ns("rr2"))
    acceptor = loop.run(Acceptor(FUZZER, caps, only=frozenset(targets.values())).start())

    async def health() -> str | None:
        now = await asyncio.to_thread(rr1_sessions, fab)
        return None if now == before_sessions else f"the sessions to rr1 changed: {before_sessions} -> {now}"

    try:
        campaign = Campaign(", ".join(targets), acceptor, caps, seed, health=health, health_every=25,
                            open_share=0.03, mutation_rate=0.5, log=report)
        result = loop.run(campaign.run(MESSAGES, SECONDS), timeout=SECONDS + 300)
        report(result.summary())
        assert result.messages >= min(MESSAGES, 20), result.summary()
        assert result.findings == [], result.summary()

        # A well-formed route from the same address is still installed, and removed with its session.
        probe = loop.run(acceptor.session(caps), timeout=120)
        node = next(n for n, pa in targets.items() if pa == loop.run(probe.peer()))
        assert probe.negotiated is not None
        good = MacIpRoute(rd=f"{FUZZER}:1", mac="02:00:00:00:0f:01", ip=PROBE_CA, vsid=5001, next_hop=FUZZER,
                          route_targets=("65000:1",))
        probe.send(wire.encode_update(probe.negotiated, [good])[0])
        wait_for(lambda: fab.learned(node, PROBE_CA), 30, f"the well-formed route at {node}")
        loop.run(probe.close())
        wait_for(lambda: not fab.learned(node, PROBE_CA), 30, f"the route gone from {node} with its session")
    finally:
        loop.run(acceptor.close())
        loop.close()

    # The kernel is what the fabric asks for, as before the fuzzing.
    fab.wait_converged(60)
    try:
        wait_for(lambda: kernel_routes(fab) == before_routes, 60, "the kernel routes of before the fuzzing")
    except TimeoutError:
        now = kernel_routes(fab)
        raise AssertionError({n: (sorted(now[n] - before_routes[n]), sorted(before_routes[n] - now[n]))
                              for n in NODES}) from None
    wrong = [row for row in check(fab) if row[3] != row[4]]
    assert wrong == []
    assert rr1_sessions(fab) == before_sessions


def test_fuzzing_the_agents_over_their_reflector_session(fabric):
    fab, _ = fabric
    started = time.monotonic()
    fuzz(fab, dict(HV), SEED)
    assert all(thread._thread.is_alive() for thread in fab.agents.values())
    report(f"agents: fuzzed and checked in {time.monotonic() - started:.0f} s")


def test_fuzzing_the_gateway_over_its_reflector_session(fabric):
    fab, gw = fabric
    started = time.monotonic()
    fuzz(fab, {"gw1": GW1}, SEED + 1)
    assert gw.thread.is_alive()
    for host in HV:
        assert default_via(fab, host), host
    report(f"gateway: fuzzed and checked in {time.monotonic() - started:.0f} s")
