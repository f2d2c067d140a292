"""The agent's BGP path without a kernel: route updates consumed into the learned table, syncs that compute only
what changed, MAC mobility followed over the changed MACs, and what it reports (lookup records, the desired
state by routing domain for trace, refused routes, `applied`) equal to the from-scratch functions."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import random
from types import SimpleNamespace
from typing import Any

import pytest

from nvfabric.bgp.client import Backlog
from nvfabric.bgp.routes import MacIpRoute, PrefixRoute
from nvfabric.bgp.speaker import PeerStatus
from nvfabric.hostagent import agent as agent_module
from nvfabric.hostagent.agent import Agent
from nvfabric.hostagent.config import AgentConfig
from nvfabric.vnet import learn
from nvfabric.vnet.desired import GLOBAL, desired_state
from nvfabric.vnet.kernel.objects import EncapRoute, ProxyNeighbour
from nvfabric.vnet.model import Port
from nvfabric.vnet.policy import screen
from nvfabric.vnet import reconcile as reconcile_module
from nvfabric.vnet.kernel.apply import Report
from nvfabric.vnet.kernel.diff import Plan
from nvfabric.vnet.reconcile import Outcome, Reconciler
from tests.waits import until

ip = ipaddress.ip_address
OURS = ip("198.51.100.11")
PORT = Port("b1", "tap-b1", "02:00:00:00:b1:01", 5001, (ip("10.0.0.10"), ip("fd00:b::10")))


class Kernel(Reconciler):
    """The real reconciler (planning, deferral, what it keeps as observed) over a kernel that starts empty and
    takes every op: only netlink is left out (`observe`, and `apply` and `read_sysctls` by `no_netlink`)."""

    def __init__(self) -> None:
        super().__init__(SimpleNamespace(netns=None))  # type: ignore[arg-type]
        self.planned: list[tuple[str, ...]] = []
        self.defers: list[bool] = []  # each call's `defer`

    async def observe(self, sysctls: Any) -> dict:
        return {}

    async def reconcile(self, parts: Any, hold: bool = False, defer: bool = False) -> Outcome:
        self.defers.append(defer)
        outcome = await super().reconcile(parts, hold, defer)
        self.planned.append(outcome.partitions)
        return outcome


@pytest.fixture(autouse=True)
def no_netlink(monkeypatch: pytest.MonkeyPatch) -> None:
    async def apply(sock: Any, plan: Plan) -> Report:
        return Report(applied=list(plan.ops), requests=len(plan.ops))

    monkeypatch.setattr(reconcile_module, "apply", apply)
    monkeypatch.setattr(reconcile_module, "read_sysctls", lambda netns, paths: {})


class Speaker:
    peers: dict = {}

    def bfd_status(self) -> list:
        return []


class Client:
    def __init__(self) -> None:
        self.table: dict = {}
        self.speaker = Speaker()

    def routes(self) -> dict:
        return dict(self.table)

    def backlog(self) -> Backlog:
        return Backlog(0, 0.0, 0, 0, 0.0)

    async def announce(self, routes: Any) -> None:
        pass

    async def withdraw(self, routes: Any) -> None:
        pass


async def _true(*_: Any, **__: Any) -> bool:
    return True


async def _none(*_: Any) -> None:
    return None


def agent(tmp_path) -> Agent:
    config = AgentConfig.from_dict({
        "asn": 65001, "router_id": str(OURS), "provider_addresses": [str(OURS)],
        "provider_prefixes": ["198.51.100.0/24"],
        "route_reflectors": [{"address": "198.51.100.100"}], "state_dir": str(tmp_path),
        "routing_domains": [
            {"name": "blue", "route_targets": ["65001:1"],
             "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24", "fd00:b::/64"],
                          "gateways": ["10.0.0.1", "fd00:b::1"]}]},
            {"name": "red", "route_targets": ["65001:2"],
             "subnets": [{"vsid": 6001, "prefixes": ["10.0.0.0/24"], "gateways": ["10.0.0.1"]}]}]})
    a = Agent(config)
    a._reconciler = Kernel()
    a._client = Client()  # type: ignore[assignment]
    a._started = True
    a._filters.marks = _true  # type: ignore[method-assign]
    a._filters.decapsulation = _true  # type: ignore[method-assign]
    a._port_security.apply = _none  # type: ignore[method-assign]
    return a


def t2(rng: random.Random) -> MacIpRoute:
    vsid = rng.choice((5001, 6001, 7777))
    pa = rng.choice((ip("198.51.100.12"), ip("198.51.100.13"), ip("203.0.113.9")))
    address = ip(rng.choice(("10.0.0.10", "10.0.0.20", "10.0.0.21", "10.0.0.1", "fd00:b::20")))
    if vsid != 5001 and address.version == 6:
        address = ip("10.0.0.22")
    mac = rng.choice(("02:00:00:00:c1:01", PORT.mac))
    return MacIpRoute(rd=f"{pa}:{vsid}", mac=mac, ip=address, vsid=vsid, next_hop=pa,
                      route_targets=(rng.choice(("65001:1", "65001:2")),), mobility_seq=rng.choice((0, 1, 2)))


async def test_route_updates_are_followed_change_by_change_as_a_full_pass_would(tmp_path, caplog) -> None:
    a = agent(tmp_path)
    rng = random.Random(7)
    client: Client = a._client  # type: ignore[assignment]
    async with a._lock:
        await a._sync_locked()  # the start: a full pass
    await a.put_port(PORT)
    moved_away = 0
    for i in range(120):
        for _ in range(rng.choice((1, 1, 3))):
            if client.table and rng.random() < 0.3:
                key = rng.choice(list(client.table))
                del client.table[key]
                a._incoming[key] = None  # (what _consume keeps from the client's RouteUpdate)
            else:
                route = t2(rng) if rng.random() < 0.9 else PrefixRoute(
                    rd="198.51.100.13:5001", prefix=ipaddress.ip_network("0.0.0.0/0"), vsid=5001,
                    next_hop=ip("198.51.100.13"), route_targets=("65001:1",))
                client.table[route.key] = route
                a._incoming[route.key] = route
        async with a._lock:
            await a._sync_locked()
        planned = a._reconciler.planned[-1]  # type: ignore[union-attr]
        assert len(planned) <= 8, planned  # a few partitions per sync, never every one
        screened = screen(a.catalog, client.table.values(), (OURS,), a._provider_prefixes)
        accepted = list(screened.accepted)
        view = a._view
        # MAC mobility as the from-scratch path decides it: b1 gives way to a higher remote sequence
        remote = learn.remote_macs(accepted, (OURS,)).get((PORT.vsid, PORT.mac))
        if remote is not None and remote.mobility_seq > view.mobility.macs[(PORT.vsid, PORT.mac)].seq:
            assert (PORT.vsid, PORT.mac) in view.mobility.inactive()
        moved_away += (PORT.vsid, PORT.mac) in view.mobility.inactive()
        records = learn.lookup_records(a.catalog, accepted, (OURS,), view.mobility.inactive(), view.held())
        assert a.lookup_records() == records
        customer = {n: d.customer_routes for n, d in a.catalog.routing_domains.items()}
        whole = desired_state(a.catalog, records, learn.remote_prefixes(a.catalog, accepted, (OURS,)), customer,
                              a.host, view.tables)
        for name in (GLOBAL, "blue", "red"):
            assert a.desired[name] == whole.partitions[name], (i, name)
        assert a.status().import_policy["refused"] == screened.counts
        assert sorted(a.status().skipped) == sorted(whole.skipped)
        assert a.remote_prefixes() == learn.remote_prefixes(a.catalog, accepted, (OURS,))
    assert moved_away  # (the sequence above does move b1's MAC away)
    # a periodic resync: every partition again, from the client's table; nothing differs
    a._reconciler.invalidate()  # type: ignore[union-attr]
    a._everything = True
    before = dict(a._learned_state.parts)
    async with a._lock:
        await a._sync_locked()
    assert a._learned_state.parts == before and a.applied.full
    assert "differed from the full pass" not in caplog.text


async def test_a_full_pass_takes_the_clients_table_and_says_when_the_incremental_one_differed(tmp_path, caplog):
    a = agent(tmp_path)
    async with a._lock:
        await a._sync_locked()
    stray = MacIpRoute(rd="198.51.100.12:5001", mac="02:00:00:00:c1:01", ip=ip("10.0.0.20"), vsid=5001,
                       next_hop=ip("198.51.100.12"), route_targets=("65001:1",))
    a._table.apply([(stray.key, stray)])  # type: ignore[union-attr]  (a route the client never delivered)
    a._reconciler.invalidate()  # type: ignore[union-attr]
    a._everything = True
    async with a._lock:
        await a._sync_locked()
    assert "differed from the full pass (1 CAs, 1 MACs, 0 prefixes)" in caplog.text
    assert a.lookup_records() == [] and "blue/10.0.0.20" not in a._learned_state.parts


async def test_an_attach_or_detach_plans_that_ports_partition_alone(tmp_path) -> None:
    """Whatever the routing domain's ports, one attach or detach plans the port's own partition; in a subnet
    with an IPv6 prefix, also the partitions of the other IPv6 CAs (a proxy NDP entry each on the new port)."""
    a = agent(tmp_path)
    async with a._lock:
        await a._sync_locked()
    kernel: Kernel = a._reconciler  # type: ignore[assignment]
    for i in range(20):
        await a.put_port(Port(f"v{i}", f"tap-v{i}", f"02:00:00:00:0a:{i:02x}", 5001, (ip(f"10.0.0.{100 + i}"),)))
    await a.put_port(PORT)  # (an IPv6 CA: a proxy entry on every other port of the subnet)
    assert kernel.planned[-1] == ("blue/port/b1",)
    new = Port("v99", "tap-v99", "02:00:00:00:0a:99", 5001, (ip("10.0.0.199"),))
    await a.put_port(new)
    assert kernel.planned[-1] == ("blue/port/b1", "blue/port/v99")  # b1's fd00:b::10 answered on tap-v99 now
    assert ProxyNeighbour("tap-v99", "fd00:b::10") in kernel.desired["blue/port/b1"]
    await a.delete_port("v99")
    assert kernel.planned[-1] == ("blue/port/b1", "blue/port/v99")
    assert ProxyNeighbour("tap-v99", "fd00:b::10") not in kernel.desired["blue/port/b1"]
    await a.delete_port("b1")
    await a.put_port(new)
    assert kernel.planned[-1] == ("blue/port/v99",)
    await a.delete_port("v99")
    assert kernel.planned[-1] == ("blue/port/v99",)
    assert "blue/port/v99" not in kernel.desired and "blue" in kernel.desired


async def test_a_restart_learns_the_table_as_it_arrives_and_writes_only_after_end_of_rib(tmp_path) -> None:
    a = agent(tmp_path)
    kernel: Kernel = a._reconciler  # type: ignore[assignment]
    client: Client = a._client  # type: ignore[assignment]
    async with a._lock:
        await a._sync_locked()  # the start: a full pass, the hold on

    def encap(ca: str, pa: str) -> EncapRoute:
        return EncapRoute(a._view.tables["blue"], f"{ca}/32", 5001, pa, "nvf-gre4")

    def t2(ca: str, pa: str) -> MacIpRoute:
        return MacIpRoute(rd=f"{pa}:5001", mac=f"02:00:00:00:c1:{ca.rsplit('.', 1)[1]}", ip=ip(ca), vsid=5001,
                          next_hop=ip(pa), route_targets=("65001:1",))

    # what the previous run left in the kernel: the first pass found it unwanted yet, and held it
    left = [encap(f"10.0.0.{i}", "198.51.100.12") for i in (20, 21, 22)]
    for route in left:
        kernel.observed[route.key] = kernel.held[route.key] = route  # type: ignore[index]
    before = dict(kernel.observed)  # type: ignore[arg-type]
    a._on_peer(PeerStatus("198.51.100.100", "established"))
    # the table arrives in batches: .20 as the kernel has it, .21 moved to another host meanwhile (.22 is gone)
    for batch in ([t2("10.0.0.20", "198.51.100.12")], [t2("10.0.0.21", "198.51.100.13")]):
        for route in batch:
            client.table[route.key] = a._incoming[route.key] = route
        async with a._lock:
            await a._sync_locked()
        assert kernel.defers[-1] is True and kernel.observed == before  # learned, nothing written
    assert {str(r.ca): str(r.pa) for r in a.lookup_records()} == {"10.0.0.20": "198.51.100.12",
                                                                  "10.0.0.21": "198.51.100.13"}
    assert set(kernel.deferred) == {"blue/10.0.0.21"} and not a.status().synced
    # End-of-RIB: one pass writes what differs and removes what nobody announced, nothing else
    a._on_peer(PeerStatus("198.51.100.100", "end-of-rib"))
    async with a._lock:
        await a._sync_locked()
    assert kernel.defers[-1] is False and not kernel.deferred and a.status().synced
    assert kernel.last.counts == {"create": 0, "replace": 1, "delete": 1}  # type: ignore[union-attr]
    after = {k: v for k, v in kernel.observed.items() if isinstance(v, EncapRoute)}  # type: ignore[union-attr]
    assert set(after.values()) == {left[0], encap("10.0.0.21", "198.51.100.13")}


async def test_a_table_delivered_at_once_is_learned_a_slice_per_pass_removing_nothing_meanwhile(tmp_path,
                                                                                               monkeypatch) -> None:
    # (each pass runs on the loop without yielding: a whole table in one kept the loop from its KEEPALIVEs)
    monkeypatch.setattr(agent_module, "LEARN_SLICE", 10)
    a = agent(tmp_path)
    kernel: Kernel = a._reconciler  # type: ignore[assignment]
    client: Client = a._client  # type: ignore[assignment]
    async with a._lock:
        await a._sync_locked()  # the start: a full pass, the hold on
    table = a._view.tables["blue"]
    cas = [f"10.0.0.{i}" for i in range(20, 45)]  # 25 remote CAs: three slices
    routes = [MacIpRoute(rd="198.51.100.12:5001", mac=f"02:00:00:00:c1:{i:02x}", ip=ip(ca), vsid=5001,
                         next_hop=ip("198.51.100.12"), route_targets=("65001:1",)) for i, ca in enumerate(cas)]
    # the previous run left the last CA's route in the kernel, and one nobody announces any more
    last = EncapRoute(table, f"{cas[-1]}/32", 5001, "198.51.100.12", "nvf-gre4")
    gone = EncapRoute(table, "10.0.0.99/32", 5001, "198.51.100.12", "nvf-gre4")
    for route in (last, gone):
        kernel.observed[route.key] = kernel.held[route.key] = route  # type: ignore[index]
    a._on_peer(PeerStatus("198.51.100.100", "established"))
    for route in routes:  # the whole table delivered, then End-of-RIB, before any pass
        client.table[route.key] = a._incoming[route.key] = route
    a._on_peer(PeerStatus("198.51.100.100", "end-of-rib"))
    a._growth.open()  # (as `start` does)
    usual = gc.get_threshold()[:2]
    learned = []
    while True:
        async with a._lock:
            await a._sync_locked()
        learned.append(len(a.lookup_records()))
        if not a._incoming:
            break
        # a slice learned: the kernel keeps what the rest may still want, and the agent is not synced yet
        assert last.key in kernel.observed and gone.key in kernel.observed  # type: ignore[operator]
        assert not a.status().synced
        # while the table arrives the collector leaves the old generation alone (service/heap.py)
        assert gc.get_threshold() == (*usual, 2**31 - 1)
    assert learned == [10, 20, 25]
    assert last.key in kernel.observed and gone.key not in kernel.observed  # type: ignore[operator]
    assert a.status().synced
    assert gc.get_threshold() == (*usual, 10)  # synced: the collector's usual rule again


async def test_a_pass_counts_what_it_took_as_applied_though_more_came_while_it_wrote(tmp_path, monkeypatch) -> None:
    # (the backlog the agent reports, bgp/client.py Backlog: under steady churn changes arrive during every
    # pass, while it waits on the kernel; they come after the pass's mark and must not hold it back)
    monkeypatch.setattr(agent_module, "COALESCE", 0)
    a = agent(tmp_path)
    client: Any = a._client
    applied: list[int] = []
    client.mark, client.applied = (lambda: 7), applied.append
    kernel: Kernel = a._reconciler  # type: ignore[assignment]
    write = kernel.reconcile
    late = MacIpRoute(rd="198.51.100.12:5001", mac="02:00:00:00:c1:01", ip=ip("10.0.0.20"), vsid=5001,
                      next_hop=ip("198.51.100.12"), route_targets=("65001:1",))

    async def reconcile(parts: Any, hold: bool = False, defer: bool = False) -> Outcome:
        a._incoming[late.key] = late  # delivered while the pass waits on the kernel
        return await write(parts, hold, defer)

    kernel.reconcile = reconcile  # type: ignore[method-assign]
    a._dirty.set()
    syncer = asyncio.create_task(a._syncer())
    try:
        await until(lambda: applied, what="a pass marked what it took as applied")
    finally:
        syncer.cancel()
    assert applied[0] == 7


async def test_passes_before_end_of_rib_learn_while_the_previous_runs_nftables_are_still_read_back(tmp_path):
    a = agent(tmp_path)
    client: Client = a._client  # type: ignore[assignment]
    fed: list[Any] = []

    async def decapsulation(now: Any, what: Any, holding: bool, full: bool = False) -> bool:
        fed.append(what)
        return True

    a._filters.decapsulation = decapsulation  # type: ignore[method-assign]
    read: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    a._filters._reading = read  # (`begin`'s read back of what the previous run left, under way)
    read.add_done_callback(lambda _: a._dirty.set())
    async with a._lock:
        await a._sync_locked()  # the start
    a._on_peer(PeerStatus("198.51.100.100", "established"))
    route = MacIpRoute(rd="198.51.100.12:5001", mac="02:00:00:00:c1:20", ip=ip("10.0.0.20"), vsid=5001,
                       next_hop=ip("198.51.100.12"), route_targets=("65001:1",))
    client.table[route.key] = a._incoming[route.key] = route
    async with a._lock:
        await a._sync_locked()
    # learned without waiting for the read; the decapsulation table not fed meanwhile
    assert [str(r.ca) for r in a.lookup_records() if not r.local] == ["10.0.0.20"] and fed == []
    a._dirty.clear()
    read.set_result(None)
    await until(a._dirty.is_set)  # the read's end asks for a pass
    async with a._lock:
        await a._sync_locked()
    assert fed == [None]  # the first pass after the read: the table from scratch, with what was learned
