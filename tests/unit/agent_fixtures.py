"""Shared values for the host agent's unit tests: the two tenants of the kernel test."""

from __future__ import annotations

import ipaddress

from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.model import Port, RoutingDomain, VirtualSubnet

ip = ipaddress.ip_address
net = ipaddress.ip_network

BLUE = RoutingDomain("blue", ("65001:1",), (
    VirtualSubnet(5001, (net("10.0.0.0/24"), net("fd00:b::/64")), (ip("10.0.0.1"), ip("fd00:b::1"))),
    VirtualSubnet(5002, (net("10.0.1.0/24"),), (ip("10.0.1.1"),)),
))
RED = RoutingDomain("red", ("65001:2",), (VirtualSubnet(6001, (net("10.0.0.0/24"),), (ip("10.0.0.1"),)),))
PA1, PA2, PA3 = ip("198.51.100.11"), ip("198.51.100.12"), ip("198.51.100.13")

VM_B1 = Port("b1", "tap-b1", "02:00:00:00:b1:01", 5001, (ip("10.0.0.10"), ip("fd00:b::10")))
VM_R1 = Port("r1", "tap-r1", "02:00:00:00:a1:01", 6001, (ip("10.0.0.10"),))


def catalog(*ports: Port) -> Catalog:
    return Catalog.build({"blue": BLUE, "red": RED}, {p.name: p for p in ports})
