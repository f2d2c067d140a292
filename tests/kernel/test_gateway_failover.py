"""Two gateways and their failover (VM phase): the default topology with gw1 (configured active) and gw2
(standby) as `nvfabric gateway` processes, the reflectors, host agents on hv1-hv3 and tenants of
lab/fabric.py, FRR with bfdd on `internet` as the upstream router; BFD 300 ms x 3 on every gateway session
and conntrackd between the gateways over their sync link (lab/failover.py).

The serving gateway is cut during a 20 Hz ping from b2 and two TCP connections exchanging a line every
100 ms (b2 -> the internet server through blue's SNAT; the internet -> b1's floating IP): first gw1's
links (no NOTIFICATION, no FIN: only BFD notices), then, with gw2 serving, gw2's process and its
conntrackd by SIGKILL. Checked each time: the other gateway took over, the hosts and the upstream moved to
it, the outage stayed under a generous bound (the target is under 2 s; TCG is noisy), both connections
kept working on the same sockets (their conntrack entries were replicated), new flows and the floating IP
work through the new gateway; the restored gateway does not take the role back.
`bench/gateway_failover.py` measures the same cuts (and SIGSTOP) against BGP's default timers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvfabric.lab.failover import FLOATING, SERVER, SNAT_BLUE, Failover, Options, TwoGateways, \
    cut_during_traffic, restore, two_gateways
from nvfabric.lab.probe import connect_retrying

pytestmark = pytest.mark.kernel

OUTAGE = 10.0  # s: the bound asserted (the target, 2 s, is the benchmark's: the emulated CPU is noisy)
TIMEOUT = 60.0  # s after the cut for the hosts and the upstream to follow


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoGateways]:
    with two_gateways(Path(tmp_path_factory.mktemp("failover")), Options(bfd=True, sync=True)) as two:
        yield two


def check(two: TwoGateways, f: Failover, cut: str, now_serving: str) -> None:
    print(f"[gateway-failover] {cut} of {f.gateway}: {now_serving} took over {f.takeover} s after the cut, hosts "
          f"switched {f.hosts:.1f} s, upstream {f.upstream:.1f} s; longest ping silence {f.gap:.2f} s, {f.lost} "
          f"pings lost; TCP via SNAT {f.outbound}, via the floating IP {f.inbound}; replicated {f.replicated}",
          flush=True)
    assert f.replicated, "the two flows never appeared in the standby's conntrack"
    assert f.takeover is not None and f.takeover < OUTAGE
    assert f.gap < OUTAGE and f.hosts < OUTAGE and f.upstream < OUTAGE
    assert f.outbound.survived, f.outbound
    assert f.inbound.survived, f.inbound
    assert two.serving() == now_serving
    # new flows leave by the new gateway with the tenant's SNAT address; the floating IP is reached through it
    s, line = connect_retrying(two.fab.vm_ns["b2"], SERVER)
    s.close()
    assert line.startswith(f"{SNAT_BLUE}:")
    s, line = connect_retrying(two.fab.ns("internet"), FLOATING)
    s.close()
    assert line.startswith("b1 203.0.113.1:")


def stays_with(two: TwoGateways, name: str, seconds: float) -> None:
    """The role stays with `name` (every host and the upstream route to it) for `seconds`: the restored
    gateway has judged by then (End-of-RIB from the reflectors comes within a second of its sessions)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert two.routed_to(name), f"the role left {name}"
        time.sleep(0.5)  # a negative needs a window: checked every half second of it


def test_link_cut_of_gw1_then_sigkill_of_gw2_keep_connections(two: TwoGateways) -> None:
    assert two.serving() == "gw1"
    f = cut_during_traffic(two, "link", TIMEOUT)
    check(two, f, "link cut", "gw2")
    restore(two, "gw1", "link")
    stays_with(two, "gw2", 5)
    assert not (two.gws["gw1"].status() or {}).get("role", {}).get("serving", False)

    f = cut_during_traffic(two, "kill", TIMEOUT)
    check(two, f, "SIGKILL", "gw1")
    restore(two, "gw2", "kill")
    stays_with(two, "gw1", 5)
