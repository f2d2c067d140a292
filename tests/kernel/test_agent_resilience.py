"""The host agent when the fabric misbehaves (VM phase): default topology, our reflectors (`nvfabric rr`) on rr1
and rr2, agents on hv1-hv3 with the two tenants of lab/fabric.py.

- Mobility flapping: a MAC claimed in turn by hv2 and hv3 (a duplicate MAC, or an orchestrator re-attaching
  a port on two hosts) moves back and forth five times, then is frozen (FRR's default, hostagent/mobility.py)
  and reported by both; a further claim neither bumps the sequence nor moves it: the fabric settles
  instead of oscillating.
- Headless: with both reflectors down, forwarding continues; a port attached on hv1 and a port deleted on
  hv2 meanwhile are announced / withdrawn and installed / removed on the other hosts once the reflectors
  return, while a ping across the fabric runs through the whole outage and the return.
- Restart at scale: hv1 with a few thousand remote CAs from an injector, its agent stopped and started on
  the same state: nothing written to the kernel (the new agent's reconcile totals, `ip monitor`), a ping
  through it all, synced once End-of-RIB is in and the table compared with the kernel.

Everything is checked by pings, kernel routes, the reflectors' tables (their REST API) and the agents'
status; waits poll for a state, with a deadline.
"""

from __future__ import annotations

import ipaddress
import re
import signal
import subprocess
import time
from typing import Any

import pytest
from prometheus_client import generate_latest

from nvfabric.bgp.routes import MacIpRoute
from nvfabric.hostagent import state
from nvfabric.lab.daemons import LoopThread
from nvfabric.lab.fabric import Fabric, HV, RR, VMS, Vm, wait_for
from nvfabric.lab import inject, netns, runner
from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.monitor import Monitor
from nvfabric.lab.topology import load
from nvfabric.vnet.model import RoutingDomain

pytestmark = pytest.mark.kernel
VM = {vm.name: vm for vm in VMS}
# VMs of these tests only (not in VMS): a MAC on two hosts (b5 and its clone), one attached while headless
FLAPPER = Vm("b5", "hv2", "blue", 5001, "02:00:00:00:0b:05", ("10.0.0.15/24",))
CLONE = Vm("b5c", "hv3", "blue", 5001, FLAPPER.mac, FLAPPER.addresses)
PING_THROUGH_OUTAGE: dict[str, Any] = {}  # the headless test's ping, judged by the test after it
LATE = Vm("b4", "hv1", "blue", 5001, "02:00:00:00:0b:04", ("10.0.0.14/24", "fd00:b::14/64"))


def report(line: str) -> None:
    print(f"[agent-resilience] {line}", flush=True)


@pytest.fixture(scope="module")
def fabric():
    topology = load(DEFAULT_TOPOLOGY)
    runner.up(topology)
    fab = Fabric(topology)
    for vm in (FLAPPER, CLONE, LATE):
        fab.vm_ns[vm.name] = f"{topology.name}.vm-{vm.name}"  # removed by close() with the others
    try:
        started = time.monotonic()
        # the product's default eor_timeout (the lab's is 20 s): after the reflectors' return, an agent holds
        # removals that long, and a host must be back within it; the agents' connect-retry backoff has grown
        # to tens of seconds while the reflectors were away
        fab.up(eor_timeout=60)
        fab.wait_converged(60)
        report(f"fabric up (our reflectors) and every CA learned in {time.monotonic() - started:.1f} s")
        yield fab
    finally:
        fab.close()
        runner.down(topology.name)


# ------------------------------------------------------------------------------------------------ probes


def reflector_routes(fab: Fabric, node: str, mac: str) -> list[dict[str, Any]] | None:
    """The best routes for a MAC in the reflector on `node` (its REST API, docs/rr.md)."""
    answer = fab.reflector_api(node, f"/v1/routes?mac={mac}")
    return None if answer is None else answer["routes"]


def metrics(fab: Fabric, host: str) -> str:
    """The agent's /metrics text (the API serves exactly this registry)."""
    return fab.agents[host].read(lambda a: generate_latest(a.registry)).decode()


def route_in_vrf(fab: Fabric, host: str, vrf: str, ca: str) -> str:
    """The host's route for exactly `ca` in the VRF's table ('' when there is none)."""
    family = "-6" if ":" in ca else "-4"
    out = netns.run(["ip", "-n", fab.ns(host), family, "route", "show", "vrf", vrf], check=False).output
    return next((line for line in out.splitlines() if line.split()[:1] == [ca]), "")


def record_pa(fab: Fabric, host: str, ca: str, rd: str = "blue") -> str | None:
    """The PA `host` has for a CA ("local" for a port of its own, None when it has no record)."""
    for r in fab.agents[host].read(lambda a: a.lookup_records()):
        if r.routing_domain == rd and str(r.ca) == ca:
            return "local" if r.local else str(r.pa)
    return None


def announced_seq(fab: Fabric, host: str, vm: Vm) -> int:
    """The MAC mobility sequence the host announces for the VM's MAC, from its state dir (what survives a
    restart is what it announced)."""
    saved = state.load(fab.dir / host)
    assert saved is not None
    return saved.seqs.get((vm.vsid, vm.mac), 0)


class Pinger:
    """A ping at 20 per second until stopped; losses counted from the sequence numbers, so the packet in
    flight when it is stopped is not a loss."""

    def __init__(self, fab: Fabric, src: str, dst: str) -> None:
        self.proc = subprocess.Popen(netns.in_netns(fab.vm_ns[src], ["ping", "-i", "0.05", "-W", "1", dst]),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> tuple[int, list[int], str]:
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        seqs = sorted({int(m.group(1)) for m in re.finditer(r"icmp_seq=(\d+) ttl", out)})
        lost = sorted(set(range(1, seqs[-1] + 1)) - set(seqs)) if seqs else []
        return (seqs[-1] if seqs else 0), lost, out


# ------------------------------------------------------------------------------------------------ tests


def test_a_flapping_mac_is_frozen_reported_and_the_fabric_settles(fabric):
    """b5 on hv2 and a clone of it (same MAC and address) on hv3, claimed in turn, as a duplicate MAC or an
    orchestrator that keeps re-attaching a port on two hosts does: the port moves back and forth (each
    claim outbids the other's sequence), five times, then both hosts freeze the MAC and report it."""
    fab = fabric
    ca = FLAPPER.cas[0]
    pa = {h: HV[h] for h in ("hv2", "hv3")}
    port = {"hv2": FLAPPER.port(), "hv3": CLONE.port()}
    fab.plug(FLAPPER)
    fab.plug(CLONE)
    fab.agents["hv2"].call(lambda a: a.put_port(port["hv2"]))
    wait_for(lambda: record_pa(fab, "hv1", ca) == pa["hv2"], 60, "hv1 to learn b5 on hv2")

    # five moves, each one done (the other host gave way, hv1 follows) before the next claim
    here, there = "hv2", "hv3"
    for move in range(1, 6):
        here, there = there, here
        fab.agents[here].call(lambda a, h=here: a.put_port(port[h]))
        wait_for(lambda old=there, new=here: record_pa(fab, old, ca) == pa[new], 60,
                          f"move {move}: {there} gives way")
        wait_for(lambda new=here: record_pa(fab, "hv1", ca) == pa[new], 60, f"move {move}: hv1 follows")
        assert fab.reaches("b1", ca), f"move {move}: b1 -> 10.0.0.15 on {here}"
    assert here == "hv3"
    seqs = {h: announced_seq(fab, h, FLAPPER) for h in ("hv2", "hv3")}
    report(f"10.0.0.15's MAC moved 5 times hv2 <-> hv3: announced sequences {seqs}, now on {here}")

    # the fifth move froze the MAC on both hosts, and both say so: status (GET /v1/status) and metrics
    for host in ("hv2", "hv3"):
        freezes = wait_for(lambda h=host: fab.agents[h].read(lambda a: a.status()).mobility_freezes, 30,
                                    f"{host} to report the freeze")
        assert [(f["vsid"], f["mac"], f["moves"]) for f in freezes] == [(FLAPPER.vsid, FLAPPER.mac, 5)], freezes
        assert time.time() < freezes[0]["until"] <= time.time() + 180  # wall-clock: when the freeze ends
        assert "nvfabric_agent_mobility_frozen_macs 1.0" in metrics(fab, host)
        report(f"{host} reports: {freezes}")
    assert not fab.agents["hv1"].read(lambda a: a.status()).mobility_freezes
    assert "nvfabric_agent_mobility_frozen_macs 0.0" in metrics(fab, "hv1")

    # a sixth claim from hv2: no sequence bump, hv2 does not take the MAC, hv3 keeps it: the fabric settles
    fab.agents["hv2"].call(lambda a: a.put_port(port["hv2"]))
    assert record_pa(fab, "hv2", ca) == pa["hv3"]  # hv2's port stays inactive
    assert {h: announced_seq(fab, h, FLAPPER) for h in ("hv2", "hv3")} == seqs
    assert record_pa(fab, "hv1", ca) == pa["hv3"] and record_pa(fab, "hv3", ca) == "local"
    # on the reflectors: one route for the MAC, hv3's (hv2 announces nothing for it)
    for node in RR:
        routes = reflector_routes(fab, node, mac=FLAPPER.mac)
        assert routes is not None and {r["next_hop"] for r in routes} == {pa["hv3"]}, (node, routes)
    assert fab.reaches("b1", ca) and fab.reaches("b3", ca)
    report("a sixth claim on hv2 after the freeze: sequences unchanged, the MAC stays on hv3, one route on the "
           "reflectors, b1 and b3 reach 10.0.0.15 there")


def test_changes_made_while_headless_apply_when_the_reflectors_return(fabric):
    fab = fabric
    b2 = VM["b2"]
    assert fab.reaches("b1", "10.0.1.13") and fab.reaches("b3", "10.0.0.12")
    fab.plug(LATE)  # b4's interface on hv1, not yet a port
    pinger = Pinger(fab, "b1", "10.0.1.13")  # existing forwarding, hv1 -> hv3, through all of it
    try:
        for node in RR:
            fab.kill_reflector(node)
        for host in HV:
            wait_for(lambda h=host: fab.agents[h].read(lambda a: a.status()).headless, 30,
                              f"{host} headless")
        killed = time.monotonic()

        # meanwhile: a port attached on hv1, a port deleted on hv2; each host programs its own kernel now
        fab.agents["hv1"].call(lambda a: a.put_port(LATE.port()))
        assert route_in_vrf(fab, "hv1", "nvf-blue", LATE.cas[0]).startswith(f"{LATE.cas[0]} dev {LATE.tap}")
        fab.agents["hv2"].call(lambda a: a.delete_port("b2"))
        assert not route_in_vrf(fab, "hv2", "nvf-blue", "10.0.0.12")
        # the others keep what they had (nothing to tell them) and learn nothing yet
        assert route_in_vrf(fab, "hv3", "nvf-blue", "10.0.0.12")
        assert not route_in_vrf(fab, "hv3", "nvf-blue", LATE.cas[0])

        changed = time.monotonic()
        fab.start_reflectors()  # returns when both answer
        returned = time.monotonic()
        # b4 is announced and installed everywhere; b2 is withdrawn and removed everywhere
        for host in ("hv2", "hv3"):
            for ca in LATE.cas:
                wait_for(lambda h=host, ca=ca: "encap" in route_in_vrf(fab, h, "nvf-blue", ca), 90,
                                  f"{ca} (b4, attached while headless) on {host}")
        learned = time.monotonic()
        for host in ("hv1", "hv3"):
            for ca in b2.cas:
                wait_for(lambda h=host, ca=ca: not route_in_vrf(fab, h, "nvf-blue", ca), 150,
                                  f"{ca} (b2, deleted while headless) gone from {host}")
        removed = time.monotonic()
        for host in HV:
            wait_for(lambda h=host: fab.agents[h].read(lambda a: a.status()).synced, 150, f"{host} synced")
        assert fab.reaches("b3", LATE.cas[0]) and fab.reaches("b1", "10.0.1.13")
        assert not fab.ping("b1", "10.0.0.12", count=2)  # b2's address is nobody's in blue now
        for node in RR:
            routes = reflector_routes(fab, node, mac=b2.mac)
            assert routes == [], (node, routes)
            assert {r["next_hop"] for r in reflector_routes(fab, node, mac=LATE.mac) or []} == {HV["hv1"]}
    finally:
        last, lost, out = pinger.stop()
    report(f"both reflectors killed, every agent headless; changes made in {changed - killed:.1f} s; reflectors "
           f"started again and answering after {returned - changed:.1f} s; then b4 installed on hv2/hv3 in "
           f"{learned - returned:.1f} s, b2 removed from hv1/hv3 in {removed - returned:.1f} s (the agents' "
           "connect-retry backoff, then eor_timeout for removals)")
    report(f"ping b1 -> b3 through the outage and the return: {last - len(lost)}/{last} replies, lost seqs "
           f"{lost[:20]}{'...' if len(lost) > 20 else ''}")
    PING_THROUGH_OUTAGE.update(last=last, lost=lost, tail=out[-600:])


def test_forwarding_survives_the_reflectors_return(fabric):
    """The ping of the test above, which ran through the outage and the return, lost nothing: a reflector
    that restarted answers End-of-RIB with an empty table, before hv3 is back; hv1 does not take that as
    the fabric's word (it holds removals for eor_timeout after a return from headless), so b3's route stays."""
    assert PING_THROUGH_OUTAGE, "the headless test did not run"
    assert not PING_THROUGH_OUTAGE["lost"], PING_THROUGH_OUTAGE["tail"]


# ------------------------------------------------------------------------------------------------ restart

SCALE = RoutingDomain.from_dict({"name": "scale", "route_targets": ["65000:9"], "subnets": [
    {"vsid": 7001, "prefixes": ["10.64.0.0/16"]}]})
INJECTOR = "198.51.100.22"  # gw2's address: no gateway runs in these tests
RESTART_CAS = 2000


def scale_routes(count: int) -> list[MacIpRoute]:
    """Remote CAs of `scale` on 50 hosts that do not exist (198.51.100.150-199, inside hv1's PA prefix)."""
    base = int(ipaddress.IPv4Address("10.64.0.2"))
    return [MacIpRoute(rd=f"{INJECTOR}:7001", mac="02:01:" + j.to_bytes(4, "big").hex(":"),
                       ip=str(ipaddress.IPv4Address(base + j)), vsid=7001, next_hop=f"198.51.100.{150 + j % 50}",
                       route_targets=("65000:9",), router_mac="02:00:5e:10:00:01") for j in range(count)]


def scale_in_kernel(fab: Fabric) -> int:
    """hv1's encap routes of `scale` (its VRF's table), as the kernel lists them."""
    out = netns.run(["ip", "-n", fab.ns("hv1"), "-4", "route", "show", "vrf", "nvf-scale", "proto", "78"]).output
    return sum(1 for line in out.splitlines() if " encap ip " in line)


def test_a_restart_with_thousands_of_remote_cas_writes_nothing_and_forwarding_goes_on(fabric):
    """hv1 learns 2,000 remote CAs of a third routing domain from an injector, then its agent restarts over
    its kernel and state directory: the new agent programs nothing (every object is already there), its
    kernel sees no route or neighbour event of ours, b1 -> b3 (hv1 -> hv3) answers throughout, and it is
    synced once both reflectors' End-of-RIB are in and the table was compared with the kernel."""
    fab = fabric
    hv1 = fab.agents["hv1"]
    routes = scale_routes(RESTART_CAS)
    hv1.call(lambda a: a.put_routing_domain(SCALE))
    injector = LoopThread(fab.ns("gw2"))
    session = injector.run(inject.connect(RR["rr1"], INJECTOR), 90)

    async def send(data: bytes) -> None:
        session.send(data)
        await session.drained()

    try:
        assert session.negotiated is not None
        injector.run(send(inject.encode(session.negotiated, routes)), 60)
        wait_for(lambda: scale_in_kernel(fab) == RESTART_CAS, 180, f"{RESTART_CAS} remote CAs in hv1's kernel")
        assert fab.reaches("b1", "10.0.1.13")

        monitor = Monitor(fab.ns("hv1"))
        pinger = Pinger(fab, "b1", "10.0.1.13")
        try:
            stopped = time.monotonic()
            fab.stop_agent("hv1")
            fab.start_agent("hv1", eor_timeout=60)
            started = time.monotonic()
            new = fab.agents["hv1"]
            wait_for(lambda: new.read(lambda a: a.status().synced and not a.readiness()), 120,
                     "hv1 synced after its restart")
            synced = time.monotonic()
            status = new.read(lambda a: a.status())
            records = sum(1 for r in new.read(lambda a: a.lookup_records()) if r.routing_domain == "scale")
        finally:
            last, lost, out = pinger.stop()
            events = monitor.stop()
        report(f"hv1 restarted with {RESTART_CAS} remote CAs of scale: Agent.start {started - stopped:.1f} s, synced "
               f"{synced - stopped:.1f} s after the stop; reconcile totals {status.totals}; ip monitor: "
               f"{len(events)} route/neighbour events, {len(monitor.ours())} of ours; ping b1 -> b3 "
               f"{last - len(lost)}/{last}")
        assert all(r.end_of_rib for r in status.reflectors if r.state == "established"), status.reflectors
        assert records == RESTART_CAS and scale_in_kernel(fab) == RESTART_CAS
        assert status.totals == {"create": 0, "replace": 0, "delete": 0, "errors": 0}, status.totals
        assert monitor.ours() == [], monitor.ours()[:10]
        assert last > 0 and not lost, out[-600:]
    finally:
        # the injector withdraws its table, then hv1 forgets the domain (its VRF and routes go with it)
        if session.negotiated is not None and not session.closed.is_set():
            injector.run(send(inject.encode(session.negotiated, [], [r.key for r in routes])), 60)
        session.close()
        injector.close()
        fab.agents["hv1"].call(lambda a: a.delete_routing_domain("scale"))
