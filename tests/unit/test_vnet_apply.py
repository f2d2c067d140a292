"""apply on this machine's own kernel (no VRF/GRE needed): namespaces, veth, policy-routing tables.

Pipelining and error matching: many requests go out in few buffers; each ack is matched to its op."""

from __future__ import annotations

import os
import uuid

import pytest

from nvfabric.lab import netns
from nvfabric.vnet.kernel.apply import apply
from nvfabric.vnet.kernel.diff import Action, Op, Plan, diff
from nvfabric.vnet.kernel.netns import RtnlSocket
from nvfabric.vnet.kernel.objects import (
    Clsact,
    LocalPortRoute,
    PermanentNeighbour,
    ProxyNeighbour,
    TunIdRule,
    UnreachableRoute,
)
from nvfabric.vnet.kernel.observe import observe

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


@pytest.fixture
def ns():
    name = f"vnu-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    netns.ip_batch(["link add up0 type veth peer name up1", "link set up0 up", "link set up1 up",
                    "link add down0 type veth peer name down1", "link add nvf-v0 type veth peer name nvf-v1"], name)
    try:
        with RtnlSocket(name) as sock:
            yield sock
    finally:
        netns.destroy(name)


async def test_thousands_of_routes_in_few_buffers_are_all_acknowledged_and_read_back(ns):
    want = {LocalPortRoute(100, f"10.{n >> 8}.{n & 255}.1/32", "up0") for n in range(3000)}
    plan = diff(want, await observe(ns))
    report = await apply(ns, plan)
    assert report.ok and report.requests == 3000 and len(report.applied) == 3000
    assert await observe(ns) == want
    assert diff(want, await observe(ns)) == Plan(())


async def test_an_error_is_matched_to_its_own_op_with_the_kernels_message_and_the_rest_apply(ns):
    good = [LocalPortRoute(100, "10.0.0.1/32", "up0"), LocalPortRoute(100, "10.0.0.3/32", "up0")]
    bad = LocalPortRoute(100, "10.0.0.2/32", "down0")
    report = await apply(ns, diff({good[0], bad, good[1]}, set()))
    assert [e.op.obj for e in report.errors] == [bad]
    assert report.errors[0].errno == 100 and "not up" in report.errors[0].message  # ENETDOWN, extended ack
    assert bad.prefix in str(report.errors[0])
    assert {o for o in await observe(ns)} == set(good)


async def test_deleting_what_is_already_gone_is_done_and_replace_is_one_request(ns):
    route = LocalPortRoute(100, "10.0.0.1/32", "up0")
    gone = await apply(ns, Plan((Op(Action.DELETE, route),)))
    assert gone.ok
    await apply(ns, diff({route}, set()))
    moved = LocalPortRoute(100, "10.0.0.1/32", "up1")
    plan = diff({moved}, await observe(ns))
    report = await apply(ns, plan)
    assert [op.action for op in plan.ops] == [Action.REPLACE] and report.requests == 1 and report.ok
    assert await observe(ns) == {moved}


async def test_rules_neighbours_and_unreachable_routes_round_trip(ns):
    want = {
        TunIdRule(4, "nvf-gre4", 5001 << 8, 100, 900), TunIdRule(6, "nvf-gre6", 5001 << 8, 100, 900),
        PermanentNeighbour("up0", "169.254.0.1", "02:00:5e:10:00:01"),
        PermanentNeighbour("up0", "fe80::1", "02:00:5e:10:00:01"),
        ProxyNeighbour("up0", "fd00:b::20"), UnreachableRoute(100, 4), UnreachableRoute(100, 6),
    }
    report = await apply(ns, diff(want, await observe(ns)))
    assert report.ok, report.errors
    assert await observe(ns) == want
    changed = (want - {TunIdRule(4, "nvf-gre4", 5001 << 8, 100, 900)}) | {TunIdRule(4, "nvf-gre4", 5001 << 8, 101, 901)}
    plan = diff(changed, await observe(ns))
    report = await apply(ns, plan)
    # rules cannot be replaced in place: one op, two requests (delete old, add new)
    assert [op.action for op in plan.ops] == [Action.REPLACE] and report.requests == 2 and report.ok
    assert await observe(ns) == changed
    report = await apply(ns, diff(set(), await observe(ns)))
    assert report.ok and await observe(ns) == set()


async def test_deleting_our_routes_removes_them_whatever_their_scope(ns):
    # A local port route is scope link; a delete that names scope universe would not match it in the
    # kernel (ESRCH), be taken for "already gone", and leave the route behind.
    want = {LocalPortRoute(100, "10.0.0.1/32", "up0"), LocalPortRoute(100, "fd00:b::1/128", "up0"),
            UnreachableRoute(100, 4), UnreachableRoute(100, 6)}
    assert (await apply(ns, diff(want, await observe(ns)))).ok
    assert await observe(ns) == want
    plan = diff(set(), await observe(ns))
    report = await apply(ns, plan)
    assert report.ok and len(report.applied) == 4
    assert await observe(ns) == set()
    leftover = netns.run(["ip", "-n", ns.netns, "route", "show", "table", "100"]).output
    assert leftover.strip() == ""


async def test_a_clsact_hook_with_a_shared_block_is_created_observed_replaced_and_deleted(ns):
    # (this machine's kernel has clsact but no flower: the filters are tested in the VM)
    hook = Clsact("nvf-v0", 7637)
    assert (await apply(ns, diff({hook}, await observe(ns)))).ok
    assert await observe(ns) == {hook}
    assert "ingress_block 7637" in netns.run(["tc", "-n", ns.netns, "qdisc", "show", "dev", "nvf-v0"]).output
    # one made by hand without the block is ours (our device) and replaced: a qdisc's block cannot change
    netns.run(["tc", "-n", ns.netns, "qdisc", "add", "dev", "nvf-v1", "clsact"])
    assert Clsact("nvf-v1", 0) in await observe(ns)
    plan = diff({hook, Clsact("nvf-v1", 7637)}, await observe(ns))
    assert [op.action for op in plan.ops] == [Action.REPLACE]
    assert (await apply(ns, plan)).ok
    assert await observe(ns) == {hook, Clsact("nvf-v1", 7637)}
    # deleting, then deleting what is already gone (a device that had a clsact, and one that never had one)
    assert (await apply(ns, diff(set(), await observe(ns)))).ok and await observe(ns) == set()
    again = await apply(ns, Plan((Op(Action.DELETE, hook), Op(Action.DELETE, Clsact("nvf-v1", 7637)))))
    assert again.ok, again.errors
    netns.run(["ip", "-n", ns.netns, "link", "add", "nvf-v2", "type", "veth", "peer", "name", "nvf-v3"])
    assert (await apply(ns, Plan((Op(Action.DELETE, Clsact("nvf-v2", 7637)),)))).ok


def test_big_blocks_are_mapped_on_their_own_on_glibc():
    import platform

    from nvfabric.vnet.kernel.malloc import map_big_blocks

    assert map_big_blocks() is (platform.libc_ver()[0] == "glibc")
