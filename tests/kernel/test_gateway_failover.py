"""Two gateways and their failover (VM phase): the default topology with gw1 (active) and gw2 (standby),
the reflectors, host agents on hv1-hv3 and tenants of lab/fabric.py, and FRR on `internet` as
the upstream router (eBGP with both gateways).

gw1 is killed during a transfer (both its links go down: no BGP NOTIFICATION, its sessions time out as after
a power loss). Measured: the gap in a 5 Hz ping from a blue VM to the internet server through the gateway,
when the standby took over, when every host's default route and the upstream's route had moved to gw2.
Checked: they all moved, within the bound the hold time gives, and a floating IP is reached from outside
through gw2.

The reflectors and FRR run with BGP's default timers (hold 90 s; FRR's 180 s); only the gateways' own
`hold_time` is lowered (9 s): a session uses the lower of its two sides' hold times, so the gateway's
setting alone bounds detection (docs/gateway.md "Failover"). `bench/gateway_failover.py` runs the same
with every timer at its default.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nvfabric.lab.failover import REACTION, SERVER, TwoGateways, kill_gw1_during_a_ping, two_gateways
from nvfabric.lab.probe import Server, connect_retrying

pytestmark = pytest.mark.kernel

GATEWAY_HOLD = 9  # the test's: only the gateways' hold time lowered


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoGateways]:
    with two_gateways(Path(tmp_path_factory.mktemp("frr")), GATEWAY_HOLD) as two:
        yield two


def test_outbound_and_floating_ips_move_to_gw2_when_gw1_dies(two: TwoGateways) -> None:
    fab, gws = two.fab, two.gws
    server = Server(fab.ns("internet"), SERVER)
    vm = Server(fab.vm_ns["b1"], ("10.0.0.11", 9000), "b1 ")
    try:
        bound = GATEWAY_HOLD + REACTION
        f = kill_gw1_during_a_ping(two, timeout=bound + 30)
        print(f"[gateway-failover] gateways' hold time {GATEWAY_HOLD} s (reflectors 90 s, FRR default): standby "
              f"took over {f.takeover:.1f} s after the cut, hosts switched {f.hosts:.1f} s, upstream {f.upstream:.1f}"
              f" s; outbound outage {f.gap:.1f} s, {f.lost} pings lost", flush=True)
        assert gws["gw2"].gateway.serving
        assert f.gap < bound and f.hosts < bound and f.upstream < bound
        # new flows leave by gw2 with the tenant's SNAT address; the floating IP is reached through gw2
        s, line = connect_retrying(fab.vm_ns["b2"], SERVER)
        s.close()
        assert line.startswith("203.0.113.140:")
        s, line = connect_retrying(fab.ns("internet"), ("203.0.113.131", 9000))
        s.close()
        assert line.startswith("b1 203.0.113.1:")
    finally:
        server.close()
        vm.close()
