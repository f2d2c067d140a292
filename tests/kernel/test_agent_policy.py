"""The host agent fed bad and colliding routes over a real BGP session (VM phase): default topology, our
reflectors on rr1 and rr2, agents on hv1-hv3 with the two tenants of lab/fabric.py, and a rogue speaker
(`nvfabric bgp speak`) at 198.51.100.66, an address of the fabric's prefix on hv3's underlay, so the
reflectors accept it as they would a misconfigured or compromised host.

- Collisions resolved, never a wedge: a type-5 /32 equal to b1's CA, a type-2 route for the subnet gateway,
  a type-5 default with blue's route target and red's VSID, a type-5 prefix with a next hop outside the
  provider prefixes. The local CA keeps its route (the loser is reported in status and metrics), the
  mismatched and outside routes are installed nowhere and counted by reason, and the hosts keep
  programming: a VM attached afterwards is reachable.
- MAC mobility: a claim on b2's MAC makes hv2 give way and, withdrawn, b2 comes back; a claim with sequence
  0xFFFFFFFF is met (not passed) when b1 is attached again, survives a restart of hv1's agent, and the
  fabric settles on hv1 (the lower PA).

Checked by kernel routes, pings, the agents' status and metrics; waits poll for a state, with a deadline.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from nvfabric.hostagent import state
from nvfabric.lab import netns, runner
from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.fabric import ASN, HV, RR, VMS, Fabric, Vm, wait_for
from nvfabric.lab.peers import Lab, Speaker
from nvfabric.lab.topology import load

pytestmark = pytest.mark.kernel
VM = {vm.name: vm for vm in VMS}
ROGUE = "198.51.100.66"
OUTSIDE = "192.0.2.66"  # not in the fabric's provider prefix
SEQ_MAX = 0xFFFFFFFF
LATE = Vm("r4", "hv1", "red", 6001, "02:00:00:00:0a:04", ("10.0.0.14/24",))


def report(line: str) -> None:
    print(f"[agent-policy] {line}", flush=True)


def t5(prefix: str, vsid: int, rt: str, next_hop: str = ROGUE) -> dict[str, Any]:
    return {"type": "prefix", "rd": f"{ROGUE}:{vsid}", "prefix": prefix, "vsid": vsid, "next_hop": next_hop,
            "route_targets": [rt], "router_mac": "02:00:5e:10:00:01"}


def t2(mac: str, ip: str, seq: int = 0) -> dict[str, Any]:
    return {"type": "mac-ip", "rd": f"{ROGUE}:5001", "mac": mac, "ip": ip, "vsid": 5001, "next_hop": ROGUE,
            "route_targets": ["65000:1"], "router_mac": "02:00:5e:10:00:01", "mobility_seq": seq}


class Rogue:
    """The rogue speaker; `announce(routes)` replaces what it announces (SIGHUP re-reads its config)."""

    def __init__(self, fab: Fabric, ns: str) -> None:
        self.fab, self.ns = fab, ns
        self.lab = Lab(tmp=fab.dir, prefix="rogue-")
        self.speaker: Speaker | None = None

    def config(self, routes: list[dict[str, Any]]) -> dict[str, Any]:
        return {"asn": ASN, "router_id": ROGUE, "hold_time": 9, "routes": routes,
                "neighbours": [{"address": a, "asn": ASN, "local_address": ROGUE} for a in RR.values()]}

    def announce(self, routes: list[dict[str, Any]]) -> None:
        if self.speaker is None:
            self.speaker = Speaker(self.lab, self.ns, "rogue", self.config(routes)).start()
            return
        self.speaker.config_path.write_text(yaml.safe_dump(self.config(routes)))
        self.speaker.reload()

    def stop(self) -> None:
        if self.speaker is not None:
            self.speaker.stop()


@pytest.fixture(scope="module")
def fabric():
    topology = load(DEFAULT_TOPOLOGY)
    runner.up(topology)
    fab = Fabric(topology)
    fab.vm_ns[LATE.name] = f"{topology.name}.vm-{LATE.name}"
    netns.run(["ip", "-n", fab.ns("hv3"), "addr", "add", f"{ROGUE}/24", "dev", "eth1"])
    rogue = Rogue(fab, fab.ns("hv3"))
    try:
        fab.up()
        fab.wait_converged(60)
        yield fab, rogue
    finally:
        rogue.stop()
        fab.close()
        runner.down(topology.name)


def routes(fab: Fabric, host: str, domain: str, family: str = "-4") -> str:
    table = fab.agents[host].read(lambda a: a._view.tables[domain])
    return netns.run(["ip", "-n", fab.ns(host), family, "route", "show", "table", str(table)]).output


def status(fab: Fabric, host: str) -> Any:
    return fab.agents[host].read(lambda a: a.status())


def metrics(fab: Fabric, host: str) -> str:
    return fab.agents[host].read(lambda a: generate_latest(a.registry)).decode()


def record_pa(fab: Fabric, host: str, ca: str, domain: str = "blue") -> str | None:
    for r in fab.agents[host].read(lambda a: a.lookup_records()):
        if r.routing_domain == domain and str(r.ca) == ca:
            return "local" if r.local else str(r.pa)
    return None


def route_line(text: str, prefix: str) -> str:
    return next((line for line in text.splitlines() if line.split()[:1] == [prefix]), "")


def test_colliding_and_foreign_routes_cost_only_their_own_key_and_the_hosts_keep_programming(fabric):
    fab, rogue = fabric
    b1 = VM["b1"].cas[0]
    rogue.announce([
        t5(f"{b1}/32", 5001, "65000:1"),  # equal to b1's CA: a local CA on hv1, a remote CA elsewhere
        t2("02:00:00:00:66:01", "10.0.0.1"),  # the subnet gateway's address
        t5("0.0.0.0/0", 6001, "65000:1"),  # red's VSID with blue's route target
        t5("10.77.0.0/16", 5001, "65000:1", next_hop=OUTSIDE),  # a next hop outside the provider prefixes
        t5("10.66.0.0/16", 5001, "65000:1"),  # a well-formed prefix: installed, so we know the rest arrived
    ])
    for host in HV:
        wait_for(lambda h=host: route_line(routes(fab, h, "blue"), "10.66.0.0/16"), 60, f"10.66.0.0/16 on {host}")

    # b1's CA: hv1 keeps the local port route, hv2 and hv3 the lookup record's (hv1's PA), not the rogue's /32
    assert "dev tap-b1" in route_line(routes(fab, "hv1", "blue"), b1)
    for host in ("hv2", "hv3"):
        line = route_line(routes(fab, host, "blue"), b1)
        assert f"dst {HV['hv1']}" in line and ROGUE not in line, (host, line)
    lost = wait_for(lambda: [c for c in status(fab, "hv1").conflicts if c["prefix"] == f"{b1}/32"], 30,
                    "hv1 to report the conflict")
    assert [(c["winner"], c["loser"], c["pa"]) for c in lost] == [("local", "remote_prefix", ROGUE)]
    assert 'nvfabric_route_conflicts{domain="blue",kind="remote_prefix"} 1.0' in metrics(fab, "hv1")
    report(f"hv1 reports {lost}")

    # installed nowhere: the gateway address to the rogue, the crossed default, the outside prefix
    for host in HV:
        blue, red = routes(fab, host, "blue"), routes(fab, host, "red")
        assert ROGUE not in route_line(blue, "10.0.0.1"), (host, blue)
        assert "default" not in {line.split()[0] for line in red.splitlines() if ROGUE in line}, (host, red)
        assert ROGUE not in route_line(blue, "default"), (host, blue)
        assert not route_line(blue, "10.77.0.0/16"), (host, blue)
        refused = status(fab, host).import_policy["refused"]
        assert refused.get("route_target", 0) >= 1 and refused.get("next_hop", 0) >= 1, (host, refused)
        assert refused.get("reserved_address", 0) >= 1, (host, refused)
        assert 'nvfabric_agent_routes_refused{reason="next_hop"} 1.0' in metrics(fab, host)
        assert OUTSIDE not in str(fab.agents[host].read(lambda a: a.decap))
    report(f"refused on hv2: {status(fab, 'hv2').import_policy}")

    # nothing is wedged: the tenants still reach each other, and a VM attached now is programmed everywhere
    assert fab.reaches("b2", b1) and fab.reaches("r3", VM["r1"].cas[0])
    fab.plug(LATE)
    fab.agents["hv1"].call(lambda a: a.put_port(LATE.port()))
    wait_for(lambda: record_pa(fab, "hv3", LATE.cas[0], "red") == HV["hv1"], 60, "hv3 to learn r4")
    assert fab.reaches("r3", LATE.cas[0])
    assert not status(fab, "hv1").last_reconcile["errors"]
    rogue.announce([])
    wait_for(lambda: not route_line(routes(fab, "hv2", "blue"), "10.66.0.0/16"), 60, "the rogue's routes to go")
    wait_for(lambda: not status(fab, "hv1").conflicts, 30, "hv1's conflict to clear")


def test_a_withdrawn_mobility_claim_brings_the_port_back(fabric):
    fab, rogue = fabric
    b2 = VM["b2"]
    rogue.announce([t2(b2.mac, b2.cas[0], seq=5)])
    wait_for(lambda: record_pa(fab, "hv1", b2.cas[0]) == ROGUE, 60, "hv1 to follow the claim on b2")
    wait_for(lambda: record_pa(fab, "hv2", b2.cas[0]) == ROGUE, 60, "hv2 to give way")
    report("a claim on b2's MAC with sequence 5 from the rogue: hv2 gave way")
    rogue.announce([])
    wait_for(lambda: record_pa(fab, "hv2", b2.cas[0]) == "local", 60, "b2 to come back on hv2")
    wait_for(lambda: record_pa(fab, "hv1", b2.cas[0]) == HV["hv2"], 60, "hv1 to route b2 to hv2 again")
    assert fab.reaches("b1", b2.cas[0])
    report("the claim withdrawn: b2 is back on hv2 and reachable")


def test_a_sequence_of_0xffffffff_is_met_survives_a_restart_and_settles_on_the_lower_pa(fabric):
    fab, rogue = fabric
    b1 = VM["b1"]
    rogue.announce([t2(b1.mac, b1.cas[0], seq=SEQ_MAX)])
    wait_for(lambda: record_pa(fab, "hv2", b1.cas[0]) == ROGUE, 60, "hv2 to follow the claim on b1")
    wait_for(lambda: record_pa(fab, "hv1", b1.cas[0]) == ROGUE, 60, "hv1 to give way")
    # the orchestrator attaches b1 on hv1 again: hv1 meets the sequence (it cannot pass it), and the lower
    # PA (hv1's 198.51.100.11, the rogue's is .66) keeps the MAC, on every host alike
    fab.agents["hv1"].call(lambda a: a.put_port(b1.port()))
    wait_for(lambda: record_pa(fab, "hv1", b1.cas[0]) == "local", 60, "b1 local again on hv1")
    wait_for(lambda: record_pa(fab, "hv2", b1.cas[0]) == HV["hv1"], 60, "hv2 to prefer hv1 on the tie")
    saved = state.load(fab.dir / "hv1")
    assert saved is not None and saved.seqs[(b1.vsid, b1.mac)] == SEQ_MAX
    assert fab.reaches("b2", b1.cas[0])
    report("b1 attached again on hv1 under a claim of 0xFFFFFFFF: announced 0xFFFFFFFF, hv1 keeps it")

    # a restart: the state file loads, nothing is refused at start or at the syncs after it
    fab.stop_agent("hv1")
    started = time.monotonic()
    fab.start_agent("hv1")
    wait_for(lambda: status(fab, "hv1").synced, 90, "hv1 synced after the restart")
    assert record_pa(fab, "hv1", b1.cas[0]) == "local"
    assert not status(fab, "hv1").last_reconcile["errors"]
    wait_for(lambda: record_pa(fab, "hv2", b1.cas[0]) == HV["hv1"], 60, "hv2 to keep b1 on hv1")
    assert fab.reaches("b2", b1.cas[0])
    report(f"hv1 restarted and synced in {time.monotonic() - started:.1f} s; b1 still on hv1")
    rogue.announce([])
    wait_for(lambda: record_pa(fab, "hv2", b1.cas[0]) == HV["hv1"], 30, "b1 on hv1 after the claim goes")
