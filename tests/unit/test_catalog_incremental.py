"""vnet/catalog.py: `with_port` and `without_port` change the indexes for that port only; after any sequence
of them the catalog equals `build` of the same ports, and what `build` refuses they refuse, naming the port."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st

from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.errors import ModelError
from nvfabric.vnet.model import Port, RoutingDomain, VirtualAddress, VirtualSubnet
from tests.unit.agent_fixtures import BLUE, RED, VM_B1, catalog, ip

VIP = RoutingDomain("green", ("65001:3",), (VirtualSubnet(7001, (ipaddress.ip_network("10.7.0.0/24"),),
                                                          (ip("10.7.0.1"),)),),
                    virtual_addresses=(VirtualAddress(ip("10.7.0.99"), ("g1",)),))
DOMAINS = {"blue": BLUE, "red": RED, "green": VIP}

names = st.sampled_from(["p1", "p2", "p3", "p4"])
ports = st.builds(
    lambda name, interface, mac, where, host: Port(
        name, interface, f"02:00:00:00:00:0{mac}", where[0], (ip(f"{where[1]}.{host}"),)),
    names, st.sampled_from(["tap1", "tap2", "tap3"]), st.integers(1, 3),
    st.sampled_from([(5001, "10.0.0"), (5002, "10.0.1"), (6001, "10.0.0"), (7001, "10.7.0"), (9999, "10.9.0")]),
    st.sampled_from([0, 1, 10, 11, 99]),
)


def indexes(c: Catalog) -> tuple:
    return (dict(c.ports), dict(c._vsids), dict(c._cas), dict(c._interfaces), dict(c._macs))


def outcome(change, *args):
    try:
        return change(*args), None
    except ModelError as exc:
        return None, (type(exc), str(exc))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(ports, names), max_size=12))
def test_changes_by_port_equal_a_whole_build(steps):
    current = Catalog.build(DOMAINS, {})
    for step in steps:
        if isinstance(step, Port):
            by_port, refused = outcome(current.with_port, step)
            whole, whole_refused = outcome(Catalog.build, DOMAINS, {**current.ports, step.name: step})
        else:
            if step not in current.ports:
                continue
            by_port, refused = outcome(current.without_port, step)
            whole, whole_refused = outcome(Catalog.build, DOMAINS,
                                           {k: v for k, v in current.ports.items() if k != step})
        # refused alike (when two problems meet, `build` may name the other port of a pair first)
        assert (refused is None) == (whole_refused is None)
        if refused is not None and isinstance(step, Port):
            assert f"port {step.name}" in refused[1]
        if by_port is not None:
            assert indexes(by_port) == indexes(whole)
            current = by_port


def test_a_refused_port_leaves_the_catalog_as_it_was():
    c = catalog(VM_B1)
    before = indexes(c)
    other = Port("b2", "tap-b1", "02:00:00:00:b1:02", 5001, (ip("10.0.0.11"),))
    with pytest.raises(ModelError, match="interface"):
        c.with_port(other)
    assert indexes(c) == before


def test_ports_sharing_a_mac_are_found_by_it():
    twin = Port("b2", "tap-b2", VM_B1.mac, 5001, (ip("10.0.0.11"),))
    c = catalog(VM_B1).with_port(twin)
    assert c.ports_with_mac(5001, VM_B1.mac) == {"b1", "b2"}
    assert c.without_port("b1").ports_with_mac(5001, VM_B1.mac) == {"b2"}
    assert c.without_port("b1").without_port("b2").ports_with_mac(5001, VM_B1.mac) == frozenset()
