"""vnet.desired by remote CA and local port: one partition per remote CA and one per active local port beside
each routing domain's base partition hold exactly the objects, conflicts and skips of the routing domain built
whole."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from nvfabric.hostagent.compute import Learned, View, compute
from nvfabric.vnet import learn
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import GLOBAL, HostIdentity, ca_partition, desired_state, port_partition
from nvfabric.vnet.desired import allocate_tables
from nvfabric.vnet.kernel.objects import DEFAULT_METRIC
from nvfabric.vnet.learned import EMPTY, LearnedTable
from nvfabric.vnet.model import CustomerRoute, LookupRecord, Port, RemotePrefix
from nvfabric.vnet.policy import screen
from tests.unit.agent_fixtures import PA1, PA2, PA3, RED, catalog, ip, net
from tests.unit.test_agent_incremental import BLUE_VIP, PORTS, t2, t5

HOST = HostIdentity("02:00:5e:10:00:01", (PA1, ip("2001:db8::11")))
HOST4 = HostIdentity("02:00:5e:10:00:01", (PA1,))  # no IPv6 device: remote CAs behind an IPv6 PA are skipped
TABLES = {"blue": 1000, "red": 1001}
# (an IPv4 gateway as a remote CA: its route loses to the gateway; IPv6 gateways never come (policy))
V4 = [f"10.0.0.{i}" for i in (1, 10, 11, 20, 21, 22)]
V6 = ["fd00:b::10", "fd00:b::20", "fd00:b::21"]


def scenario(rng: random.Random):
    ports = []
    for i, vsid in enumerate(rng.sample([5001, 5001, 5002, 6001], rng.randint(0, 3))):
        addresses = {5001: ["10.0.0.10", "fd00:b::10"], 5002: ["10.0.1.10"], 6001: ["10.0.0.11"]}[vsid]
        ports.append(Port(f"p{i}", f"tap-p{i}", f"02:00:00:00:0{i}:01", vsid,
                          tuple(ip(a) for a in addresses[:rng.randint(1, len(addresses))])))
    names = {p.name for p in ports}
    if len({(p.vsid, a) for p in ports for a in p.addresses}) < sum(len(p.addresses) for p in ports):
        ports = ports[:1]
    cat = catalog(*ports)
    records = {}
    for p in ports:
        found = cat.subnet(p.vsid)
        for a in p.addresses:
            records[(found[0].name, a)] = LookupRecord(found[0].name, p.vsid, a, p.mac, None, True, p.name)
    for _ in range(rng.randint(0, 8)):
        domain = rng.choice(("blue", "red"))
        vsid = 6001 if domain == "red" else rng.choice((5001, 5002))
        ca = ip(rng.choice(V4 + V6 if vsid == 5001 else V4))
        if vsid == 5002:
            ca = ip(str(ca).replace("10.0.0.", "10.0.1."))
        pa = rng.choice((PA2, PA3, ip("2001:db8::12")))
        records.setdefault((domain, ca), LookupRecord(domain, vsid, ca, "02:00:00:00:b2:01", pa))
    prefixes = []
    for domain in ("blue", "red"):
        for text in rng.sample(["0.0.0.0/0", "10.0.0.20/32", "10.0.0.10/32", "10.0.0.1/32", "fd00:b::20/128"], 2):
            prefixes.append(RemotePrefix(domain, net(text), 5001 if domain == "blue" else 6001,
                                         rng.choice((PA2, PA3))))
    routes = {}
    for domain in ("blue", "red"):
        routes[domain] = [CustomerRoute(net(rng.choice(["192.168.0.0/16", "10.0.0.21/32", "10.0.0.20/32",
                                                         "10.0.0.1/32"])),
                                        ip(rng.choice(V4[1:])), rng.choice((0, DEFAULT_METRIC, 50)))
                          for _ in range(rng.randint(0, 2))]
    del names
    return cat, list(records.values()), prefixes, routes


@pytest.mark.parametrize("seed", range(150))
def test_remote_cas_in_their_own_partitions_equal_the_domain_built_whole(seed: int) -> None:
    rng = random.Random(seed)
    cat, records, prefixes, routes = scenario(rng)
    host = rng.choice((HOST, HOST4))
    whole = desired_state(cat, records, prefixes, routes, host, TABLES)
    split = desired_state(cat, records, prefixes, routes, host, TABLES, by_ca=True)
    assert split.objects == whole.objects
    keys = Counter(o.key for part in split.partitions.values() for o in part)
    assert max(keys.values()) == 1  # each key in one partition: the reconciler's owner is unambiguous
    assert sorted(split.skipped) == sorted(whole.skipped)
    assert Counter(c for found in split.conflicts_in.values() for c in found) == Counter(
        c for found in whole.conflicts_in.values() for c in found)
    for record in records:
        if not record.local:
            part = ca_partition(record.routing_domain, record.ca)
            assert part in split.partitions and not ({o.key for o in split.partitions[part]} & {
                o.key for o in split.partitions[record.routing_domain]})
    assert set(split.partitions) - {GLOBAL, "blue", "red"} == {
        ca_partition(r.routing_domain, r.ca) for r in records if not r.local} | {
        port_partition(r.routing_domain, r.port) for r in records if r.local and r.port in cat.ports}


@pytest.mark.parametrize("seed", range(30))
def test_split_by_change_equals_the_whole_after_attaches_detaches_and_remote_changes(seed: int) -> None:
    """The partitions the agent keeps (hostagent/compute.py: a port's change computes that port's partition,
    a remote change its CA's), after each step of a random sequence, hold the objects, skips and conflicts of
    the routing domains built whole from scratch (vnet/learn.py, desired_state without partitions)."""
    rng = random.Random(seed)
    host = rng.choice((HOST, HOST4))
    catalog = Catalog.build({"blue": BLUE_VIP, "red": RED}, {})
    view = View(catalog, allocate_tables(catalog.routing_domains, {}))
    table = LearnedTable(catalog, (PA1,), None)
    routes: dict = {}
    learned = Learned()
    learned.swap(compute(view, table, host, learned, None, EMPTY))
    for _ in range(50):
        pending, ports = EMPTY, set()
        if rng.random() < 0.5:  # a remote change: a type-2 or type-5 route added, moved or withdrawn
            if routes and rng.random() < 0.35:
                key, route = rng.choice(list(routes)), None
                del routes[key]
            else:
                route = t2(rng) if rng.random() < 0.85 else t5(rng)
                key = route.key
                routes[key] = route
            pending = table.apply([(key, route)])
        else:  # a port attaches or detaches
            port = rng.choice(PORTS)
            catalog = view.catalog
            if port.name in catalog.ports:
                view = replace(view, catalog=catalog.without_port(port.name),
                               mobility=view.mobility.detach((port.vsid, port.mac)))
            elif not any(p.vsid == port.vsid and set(p.addresses) & set(port.addresses)
                         for p in catalog.ports.values()):
                view = replace(view, catalog=catalog.with_port(port))
            ports = {port.name}
        learned.swap(compute(view, table, host, learned, set(), pending, ports))
        accepted = list(screen(view.catalog, routes.values(), (PA1,), None).accepted)
        records = learn.lookup_records(view.catalog, accepted, (PA1,), view.mobility.inactive(), view.held())
        customer = {n: d.customer_routes for n, d in view.catalog.routing_domains.items()}
        whole = desired_state(view.catalog, records, learn.remote_prefixes(view.catalog, accepted, (PA1,)), customer,
                              host, view.tables)
        assert frozenset().union(*learned.parts.values()) == whole.objects
        assert sorted(x for why in learned.skipped_in.values() for x in why) == sorted(whole.skipped)
        assert Counter(c for found in learned.conflicts_in.values() for c in found) == Counter(
            c for found in whole.conflicts_in.values() for c in found)
        keys = Counter(o.key for part in learned.parts.values() for o in part)
        assert not keys or max(keys.values()) == 1
