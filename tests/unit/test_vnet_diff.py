"""diff: pure planning over keyed values."""

from ipaddress import ip_address

import pytest

from nvfabric.vnet.kernel.diff import Action, Plan, diff
from nvfabric.vnet.kernel.objects import (
    encap_route,
    EncapRoute,
    LocalPortRoute,
    NvgreDevice,
    PermanentNeighbour,
    Sysctl,
    TunIdRule,
    UnreachableRoute,
    Vrf,
    VrfPort,
)

RMAC = "02:00:5e:10:00:01"


def state() -> set:
    return {
        Vrf("nvf-rd1", 100),
        NvgreDevice("nvf-gre4", 4, RMAC),
        VrfPort("tap1", "nvf-rd1", 1438),
        Sysctl("net/ipv4/ip_forward", "1"),
        TunIdRule(4, "nvf-gre4", 5001 << 8, 100, 900),
        PermanentNeighbour("nvf-gre4", "169.254.0.1", RMAC),
        LocalPortRoute(100, "10.1.0.10/32", "tap1"),
        EncapRoute(100, "10.1.0.20/32", 5001, "198.51.100.2", "nvf-gre4"),
        UnreachableRoute(100, 4),
    }


def test_equal_states_plan_nothing():
    assert diff(state(), set(state())) == Plan(())


def test_creates_follow_dependencies_and_deletes_go_in_reverse():
    creates = diff(state(), set())
    assert all(op.action is Action.CREATE for op in creates.ops)
    orders = [op.obj.order for op in creates.ops]
    assert orders == sorted(orders)
    assert isinstance(creates.ops[0].obj, (Vrf, NvgreDevice)) and isinstance(creates.ops[-1].obj, (EncapRoute,
                                                                                                    LocalPortRoute,
                                                                                                    UnreachableRoute))
    deletes = diff(set(), state())
    assert all(op.action is Action.DELETE for op in deletes.ops)
    assert [op.obj.order for op in deletes.ops] == sorted((op.obj.order for op in deletes.ops), reverse=True)
    # a sysctl is never "deleted": there is no absent value to restore
    assert not any(isinstance(op.obj, Sysctl) for op in deletes.ops)


def test_a_changed_value_under_the_same_key_is_one_replace_carrying_the_old_value():
    old = EncapRoute(100, "10.1.0.20/32", 5001, "198.51.100.2", "nvf-gre4")
    new = EncapRoute(100, "10.1.0.20/32", 5001, "2001:db8::2", "nvf-gre6")
    assert old.key == new.key
    plan = diff((state() - {old}) | {new}, state())
    assert [(op.action, op.obj, op.old) for op in plan.ops] == [(Action.REPLACE, new, old)]


def test_different_metric_or_table_is_a_different_route():
    a = LocalPortRoute(100, "10.1.0.10/32", "tap1")
    assert a.key != LocalPortRoute(101, "10.1.0.10/32", "tap1").key
    assert a.key != LocalPortRoute(100, "10.1.0.10/32", "tap1", metric=10).key


def test_conflicting_desired_values_are_refused():
    with pytest.raises(ValueError, match="two values"):
        diff({LocalPortRoute(100, "10.1.0.10/32", "tap1"), LocalPortRoute(100, "10.1.0.10/32", "tap2")}, set())


def test_plans_are_deterministic():
    assert diff(state(), set()) == diff(set(state()), set())


def test_objects_validate_and_normalise():
    with pytest.raises(ValueError):
        Vrf("blue", 100)  # not our prefix: we would not recognise it after a restart
    with pytest.raises(ValueError):
        TunIdRule(4, "nvf-gre4", 1, 100, 32000)  # outside our priority range
    with pytest.raises(ValueError):
        EncapRoute(100, "10.1.0.20/32", 1 << 24, "198.51.100.2", "nvf-gre4")
    with pytest.raises(ValueError):
        LocalPortRoute(100, "10.1.0.10/24", "tap1")  # host bits set
    r = EncapRoute(100, "fd00:b:0::20/128", 5001, "2001:DB8::2", "nvf-gre6")
    assert (r.prefix, r.pa, r.tun_id, r.via, r.pa_family, r.family) == (
        "fd00:b::20/128", "2001:db8::2", 0x138900, "fe80::1", 6, 6)
    assert NvgreDevice("nvf-gre4", 4, "02:00:5E:10:00:01").router_mac == RMAC


def test_a_device_with_our_name_that_is_not_flow_based_is_replaced_by_delete_and_create():
    from nvfabric.vnet.kernel import messages as m
    from nvfabric.vnet.kernel.encode import Wire, encoder

    class Seq:
        n = 0

        def next_seq(self) -> int:
            self.n += 1
            return self.n

    by_hand = NvgreDevice("nvf-gre4", 4, RMAC, external=False)  # what observe reports for a keyed gretap
    plan = diff({NvgreDevice("nvf-gre4", 4, RMAC)}, {by_hand})
    assert [op.action for op in plan.ops] == [Action.REPLACE]
    msgs = encoder(plan.ops[0].obj).encode(plan.ops[0], Wire(Seq(), {"nvf-gre4": 7}))
    assert [int.from_bytes(raw[4:6], "little") for _, raw in msgs] == [m.RTM_DELLINK, m.RTM_NEWLINK]
    # only the MAC changed: modified in place, one request
    plan = diff({NvgreDevice("nvf-gre4", 4, RMAC)}, {NvgreDevice("nvf-gre4", 4, "02:00:5e:10:00:02")})
    msgs = encoder(plan.ops[0].obj).encode(plan.ops[0], Wire(Seq(), {"nvf-gre4": 7}))
    assert [int.from_bytes(raw[4:6], "little") for _, raw in msgs] == [m.RTM_NEWLINK]


@pytest.mark.parametrize(("ca", "pa"), [
    ("10.64.0.1", "198.51.97.1"), ("0.0.0.0", "255.255.255.255"), ("fd00:b::10", "2001:db8::99"),
    ("::ffff:10.0.0.1", "198.51.97.1"), ("fd00::", "::1"), ("10.0.0.7", "2001:db8:0:0:1:0:0:1"),
])
def test_an_encap_route_built_from_addresses_equals_the_one_parsed_from_text(ca: str, pa: str) -> None:
    a, p = ip_address(ca), ip_address(pa)
    fast = encap_route(1000, a, 5001, p, "nvf-gre4")
    parsed = EncapRoute(1000, f"{a}/{a.max_prefixlen}", 5001, str(p), "nvf-gre4")
    assert fast == parsed and hash(fast) == hash(parsed) and fast.key == parsed.key
    assert (fast.family, fast.pa_family, fast.prefix, fast.pa) == (parsed.family, parsed.pa_family, parsed.prefix,
                                                                    parsed.pa)
    with pytest.raises(ValueError, match="VSID"):
        encap_route(1000, a, 1 << 24, p, "nvf-gre4")
