"""VrfAddress (a subnet gateway as an address of its VRF device): the netlink message, and create / observe /
replace / delete on this machine's kernel. Its kernel has no VRF, so the address goes on one of our veths and
`vrf_addresses` is given that device as the VRF; the real VRF is the kernel test's (test_agent_gateway.py)."""

from __future__ import annotations

import os
import uuid

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from nvfabric.lab import netns
from nvfabric.vnet.kernel import messages as m
from nvfabric.vnet.kernel.apply import apply, link_indexes
from nvfabric.vnet.kernel.diff import Action, Op, Plan, diff
from nvfabric.vnet.kernel.netns import RtnlSocket
from nvfabric.vnet.kernel.objects import LocalPortRoute, VrfAddress
from nvfabric.vnet.kernel.observe import observe, vrf_addresses


def test_the_address_message_is_what_iproute2_sends_and_parses_back():
    v4 = ifaddrmsg(m.message(m.RTM_NEWADDR, 0, 1, m.addr_body(4, 7, "10.1.0.1", 32)))
    v4.decode()
    assert (v4["family"], v4["prefixlen"], v4["index"], v4["scope"]) == (2, 32, 7, 0)
    assert v4.get_attr("IFA_LOCAL") == v4.get_attr("IFA_ADDRESS") == "10.1.0.1"
    assert v4.get_attr("IFA_FLAGS") is None
    v6 = ifaddrmsg(m.message(m.RTM_NEWADDR, 0, 1, m.addr_body(6, 7, "fd00:b::1", 128, nodad=True)))
    v6.decode()
    assert v6.get_attr("IFA_ADDRESS") == "fd00:b::1" and v6.get_attr("IFA_FLAGS") == m.IFA_F_NODAD
    fields = m.parse_address_fields(m.message(m.RTM_NEWADDR, 0, 1, m.addr_body(6, 7, "fd00:b::1", 128, nodad=True)))
    assert fields == m.AddressFields(6, 7, "fd00:b::1", 128, 0)


def test_the_object_is_normalised_keyed_by_vrf_and_address_and_refuses_foreign_devices():
    a = VrfAddress("nvf-blue", "FD00:B:0::1")
    assert (a.address, a.prefixlen, a.family, a.key) == ("fd00:b::1", 128, 6, ("address", "nvf-blue", "fd00:b::1"))
    assert VrfAddress("nvf-blue", "10.1.0.1", 24).key == VrfAddress("nvf-blue", "10.1.0.1").key
    with pytest.raises(ValueError, match="must start with 'nvf-'"):
        VrfAddress("eth0", "10.1.0.1")
    with pytest.raises(ValueError, match="not an IPv4 or IPv6 address"):
        VrfAddress("nvf-blue", "10.1.0.0/24")


@pytest.fixture
def ns():
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    name = f"vna-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    netns.ip_batch(["link add nvf-v0 type veth peer name nvf-v1", "link set nvf-v0 up", "link set nvf-v1 up"], name)
    try:
        with RtnlSocket(name) as sock:
            yield sock
    finally:
        netns.destroy(name)


async def _observed(sock: RtnlSocket) -> set[VrfAddress]:
    index = await link_indexes(sock)
    return {a async for a in vrf_addresses(sock, {index["nvf-v0"]: "nvf-v0"})}


async def test_addresses_are_created_read_back_replaced_and_deleted(ns):
    want = {VrfAddress("nvf-v0", "10.1.0.1"), VrfAddress("nvf-v0", "10.2.0.1"), VrfAddress("nvf-v0", "fd00:b::1")}
    report = await apply(ns, diff(want, await _observed(ns)))
    assert report.ok, report.errors
    assert await _observed(ns) == want  # only these: the kernel's link-local address is not ours to manage
    assert diff(want, await _observed(ns)) == Plan(())  # a restart adopts them: nothing to write
    shown = netns.run(["ip", "-n", ns.netns, "-6", "addr", "show", "dev", "nvf-v0", "to", "fd00:b::1/128"]).output
    assert "fd00:b::1/128" in shown and "tentative" not in shown  # nodad: answered at once
    local = netns.run(["ip", "-n", ns.netns, "route", "show", "table", "local", "10.1.0.1"]).output
    assert local.startswith("local 10.1.0.1 dev nvf-v0")
    # another length made by hand is the same key: replaced by the host prefix (no connected /24 stays)
    netns.run(["ip", "-n", ns.netns, "addr", "del", "10.2.0.1/32", "dev", "nvf-v0"])
    netns.run(["ip", "-n", ns.netns, "addr", "add", "10.2.0.1/24", "dev", "nvf-v0"])
    plan = diff(want, await _observed(ns))
    assert [op.action for op in plan.ops] == [Action.REPLACE]
    assert (await apply(ns, plan)).ok and await _observed(ns) == want
    assert "10.2.0.0/24" not in netns.run(["ip", "-n", ns.netns, "route", "show"]).output
    # an address nobody wants is deleted; deleting again (already gone) is done
    gone = VrfAddress("nvf-v0", "10.1.0.1")
    assert (await apply(ns, diff(want - {gone}, await _observed(ns)))).ok
    assert await _observed(ns) == want - {gone}
    again = await apply(ns, Plan((Op(Action.DELETE, gone),)))
    assert again.ok, again.errors


async def test_a_local_ports_route_takes_the_gateway_as_its_source_and_reads_back(ns):
    # (what makes the host's ICMP errors to a VM come from the VM's own gateway, not from the VRF's first address)
    route = LocalPortRoute(100, "10.1.0.10/32", "nvf-v0", src="10.1.0.1")
    want = {VrfAddress("nvf-v0", "10.1.0.1"), VrfAddress("nvf-v0", "fd00:b::1"), route,
            LocalPortRoute(100, "fd00:b::10/128", "nvf-v0", src="fd00:b::1")}
    report = await apply(ns, diff(want, await _observed(ns)))
    assert report.ok, report.errors
    assert {o for o in await observe(ns) if isinstance(o, LocalPortRoute)} == {o for o in want
                                                                               if isinstance(o, LocalPortRoute)}
    shown = netns.run(["ip", "-n", ns.netns, "route", "show", "table", "100"]).output
    assert "10.1.0.10 dev nvf-v0 proto 78 scope link src 10.1.0.1 metric 1024" in shown, shown
    # a route made without one is replaced in place
    plan = diff(want - {route} | {LocalPortRoute(100, "10.1.0.10/32", "nvf-v0")}, want)
    assert [op.action for op in plan.ops] == [Action.REPLACE]
