"""The agent's computation by change (hostagent/compute.py): after random sequences of learned route changes,
port attaches and detaches, MAC moves and routing domain changes, the partitions, lookup records, skips and
conflicts built change by change equal a full pass from scratch, and the reconciler accepts every step."""

from __future__ import annotations

import random
from dataclasses import replace
from types import MappingProxyType

import pytest

from nvfabric.bgp.routes import MacIpRoute, PrefixRoute
from nvfabric.hostagent.compute import Learned, View, compute, domain_of
from nvfabric.hostagent.holders import Holders, Holding
from nvfabric.hostagent.mobility import MacState, Mobility
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import HostIdentity, allocate_tables
from nvfabric.vnet.learned import EMPTY, LearnedTable
from nvfabric.vnet.model import CustomerRoute, Port, VirtualAddress
from nvfabric.vnet.reconcile import Reconciler
from tests.unit.agent_fixtures import BLUE, PA1, PA2, PA3, RED, ip, net

HOST = HostIdentity("02:00:5e:10:00:01", (PA1, ip("2001:db8::11")))
HOST4 = HostIdentity("02:00:5e:10:00:01", (PA1,))
OURS = (PA1,)
PORTS = (
    Port("b1", "tap-b1", "02:00:00:00:b1:01", 5001, (ip("10.0.0.10"), ip("fd00:b::10"))),
    Port("b2", "tap-b2", "02:00:00:00:b2:01", 5001, (ip("10.0.0.11"),)),
    Port("b3", "tap-b3", "02:00:00:00:b3:01", 5002, (ip("10.0.1.10"),)),
    Port("r1", "tap-r1", "02:00:00:00:a1:01", 6001, (ip("10.0.0.10"),)),
    Port("b4", "tap-b4", "02:00:00:00:b4:01", 5001, (ip("fd00:b::11"),)),  # (IPv6 only: proxy entries both ways)
)
ROUTES = (
    (),
    (CustomerRoute(net("192.168.0.0/16"), ip("10.0.0.20")), CustomerRoute(net("10.0.0.21/32"), ip("10.0.0.22"))),
    (CustomerRoute(net("10.0.0.20/32"), ip("10.0.0.10")), CustomerRoute(net("172.16.0.0/12"), ip("10.0.0.21"))),
)
VIP = ip("10.0.0.50")  # a virtual address b1 or b2 may hold, else learned from another host
BLUE_VIP = replace(BLUE, virtual_addresses=(VirtualAddress(VIP, ("b1", "b2")),))
CAS = {5001: ["10.0.0.10", "10.0.0.11", "10.0.0.20", "10.0.0.21", "10.0.0.22", "10.0.0.50", "fd00:b::20",
              "fd00:b::10"],
       5002: ["10.0.1.10", "10.0.1.20"], 6001: ["10.0.0.10", "10.0.0.20", "10.0.0.21"]}
RT = {5001: "65001:1", 5002: "65001:1", 6001: "65001:2"}


def t2(rng: random.Random) -> MacIpRoute:
    vsid = rng.choice(list(CAS))
    pa = rng.choice((PA2, PA3, ip("2001:db8::12")))
    mac = rng.choice(("02:00:00:00:c1:01", "02:00:00:00:c2:01", "02:00:00:00:b1:01"))
    return MacIpRoute(rd=f"{pa}:{vsid}" if pa.version == 4 else f"65001:{vsid}", mac=mac,
                      ip=ip(rng.choice(CAS[vsid])), vsid=vsid, next_hop=pa, route_targets=(RT[vsid],),
                      mobility_seq=rng.choice((0, 1, 2)))


def t5(rng: random.Random) -> PrefixRoute:
    vsid = rng.choice((5001, 6001))
    pa = rng.choice((PA2, PA3))
    return PrefixRoute(rd=f"{pa}:{vsid}", prefix=net(rng.choice(("0.0.0.0/0", "10.0.0.20/32", "10.0.0.21/32"))),
                       vsid=vsid, next_hop=pa, route_targets=(RT[vsid],))


def everything(view: View, routes: dict, host: HostIdentity) -> Learned:
    table = LearnedTable(view.catalog, OURS, None)
    table.apply(routes.items())
    learned = Learned()
    learned.swap(compute(view, table, host, learned, None, EMPTY))
    return learned


@pytest.mark.parametrize("by_port", [True, False], ids=["ports", "domains"])
@pytest.mark.parametrize("seed", range(40))
def test_change_by_change_equals_a_full_pass(seed: int, by_port: bool) -> None:
    """`by_port`: a port's change names the ports it touches (as the agent does: the port, the ports sharing
    a MAC that moved, the holders of a virtual address), else its routing domain (every partition of it)."""
    rng = random.Random(seed)
    host = rng.choice((HOST, HOST, HOST4))
    catalog = Catalog.build({"blue": BLUE_VIP, "red": RED}, {})
    view = View(catalog, allocate_tables(catalog.routing_domains, {}))
    table = LearnedTable(catalog, OURS, None)
    routes: dict = {}
    learned = Learned()
    reconciler = Reconciler(None)  # type: ignore[arg-type]  (its planning is pure)
    step = compute(view, table, host, learned, None, EMPTY)
    reconciler.update(step.partitions)
    learned.swap(step)
    for _ in range(60):
        pending, dirty, ports = EMPTY, set(), set()
        for _ in range(rng.choice((1, 1, 2, 4))):
            what = rng.random()
            catalog = view.catalog
            if what < 0.55:
                batch = []
                for _ in range(rng.choice((1, 1, 3))):
                    if routes and rng.random() < 0.35:
                        batch.append((rng.choice(list(routes)), None))
                    else:
                        route = t2(rng) if rng.random() < 0.85 else t5(rng)
                        batch.append((route.key, route))
                for key, route in batch:
                    if route is None:
                        routes.pop(key, None)
                    else:
                        routes[key] = route
                pending = pending.then(table.apply(batch))
            elif what < 0.75:  # a port attaches or detaches
                port = rng.choice(PORTS)
                clash = any(p.vsid == port.vsid and set(p.addresses) & set(port.addresses)
                            for p in catalog.ports.values() if p.name != port.name)
                if port.name in catalog.ports:
                    catalog = catalog.without_port(port.name)
                    view = replace(view, catalog=catalog, mobility=view.mobility.detach((port.vsid, port.mac)))
                elif not clash:
                    catalog = catalog.with_port(port)
                    view = replace(view, catalog=catalog)
                (ports.update(catalog.ports_with_mac(port.vsid, port.mac) | {port.name}) if by_port
                 else dirty.add(domain_of(catalog, port.vsid)))
            elif what < 0.8:  # the virtual address is held by a local port, or elsewhere
                holder = rng.choice(("b1", "b2", None))
                held = {("blue", VIP): Holding(port=holder, seq=1)}
                was = view.held()
                view = replace(view, holders=Holders(MappingProxyType(held)).prune(catalog, view.mobility.inactive()))
                (ports.update(was.values(), view.held().values()) if by_port else dirty.add("blue"))
            elif what < 0.9:  # a local MAC moves away or comes back (MAC mobility)
                port = rng.choice(PORTS)
                key = (port.vsid, port.mac)
                macs = dict(view.mobility.macs)
                macs[key] = MacState(active=not macs.get(key, MacState()).active)
                view = replace(view, mobility=Mobility(MappingProxyType(macs)))
                (ports.update(catalog.ports_with_mac(*key)) if by_port else dirty.add(domain_of(catalog, port.vsid)))
            else:  # a routing domain's customer routes change
                name = rng.choice(("blue", "red"))
                domain = replace(catalog.routing_domains[name], customer_routes=rng.choice(ROUTES))
                catalog = catalog.with_routing_domain(domain)
                view = replace(view, catalog=catalog)
                if not table.matches(catalog, OURS, None):
                    table, change = table.rebuilt(catalog, OURS, None)
                    pending = pending.then(change)
                dirty.add(name)
        step = compute(view, table, host, learned, dirty - {None}, pending, ports)
        reconciler.update(step.partitions)  # raises when two partitions want one key differently
        learned.swap(step)
        want = everything(view, routes, host)
        assert learned.parts == want.parts
        assert learned.skipped_in == want.skipped_in
        assert learned.conflicts_in == want.conflicts_in
        assert sorted(learned.records, key=str) == sorted(want.records, key=str)
        assert reconciler.desired == learned.parts
        assert learned.by_domain()["blue"] == want.by_domain()["blue"]
        assert learned.counts() == want.counts()
        assert learned.ports == want.ports and learned.port_parts == want.port_parts
        assert {n: (s.base, {k: set(v) for k, v in s.ports_on.items()}) for n, s in learned.domains.items()} == {
            n: (s.base, {k: set(v) for k, v in s.ports_on.items()}) for n, s in want.domains.items()}
