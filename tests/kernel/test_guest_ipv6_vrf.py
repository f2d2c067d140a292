"""Kernel phase: the router address of the guest IPv6 services on a port enslaved to a VRF, as the agent's
ports are. The advertisement names the host side's EUI-64 link-local (hostagent/guest/ra.py); the guest's
default route points at it, so the kernel must really have it on a VRF port and answer the guest's
neighbour solicitation and echo request for it from the VRF.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nvfabric.hostagent.guest import frames
from nvfabric.lab import netns
from tests.guest_ipv6 import Link, assert_reaches_its_router, env_of, open_link, run_dhcpcd

pytestmark = pytest.mark.kernel


@pytest.fixture
def link(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Link]:
    with open_link(tmp_path, request.node.name, vrf=True) as the_link:
        yield the_link


def test_a_guest_behind_a_vrf_port_gets_its_lease_and_reaches_the_router_it_was_advertised(link: Link) -> None:
    router = frames.link_local(frames.mac_text(link.responder.host_mac))
    # the port is in the VRF, and the kernel gave it the EUI-64 link-local, in the VRF's table
    assert "master nvf-g" in netns.run(["ip", "-n", link.hv, "link", "show", "dev", "tap-g1"]).output
    assert f"inet6 {router}/64 scope link" in netns.run(["ip", "-n", link.hv, "-6", "addr", "show", "dev",
                                                          "tap-g1"]).output
    assert "fe80::/64 dev tap-g1" in netns.run(["ip", "-n", link.hv, "-6", "route", "show", "vrf", "nvf-g"]).output
    result = run_dhcpcd(link)
    assert result.returncode == 0, result.stdout + result.stderr
    assert env_of(link.tmp / "env.BOUND6")["new_dhcp6_ia_na1_ia_addr1"] == "fd00:c::11"
    # the guest resolves and reaches its router: the host's kernel answers for that address from the VRF
    assert_reaches_its_router(link)
