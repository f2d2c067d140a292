"""A port's change touches that port only: after any sequence of attaches, readdresses, moves between
interfaces and detaches (ports sharing a MAC, ports that may hold a virtual address, a MAC that moved
away), the agent's announcements, port security, guest services and saved state are what a whole
recomputation gives, and one attach writes one journal line, announces one port's routes and writes one
port's elements. The real Agent; its kernel, nft and BGP client replaced by stand-ins."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from types import MappingProxyType
from typing import Any

from hypothesis import given, settings, strategies as st

from nvfabric.hostagent import state
from nvfabric.hostagent.agent import Agent
from nvfabric.hostagent.compute import View
from nvfabric.hostagent.config import AgentConfig
from nvfabric.hostagent.guest import offer
from nvfabric.hostagent.guest.responder import Responder
from nvfabric.hostagent.mobility import MacState, Mobility
from nvfabric.vnet import announce
from nvfabric.vnet.model import Port
from nvfabric.vnet.nftables import NftError
from nvfabric.vnet.portsecurity import guarded
from nvfabric.vnet.reconcile import Outcome
from tests.unit.test_guest_responder import MemoryWire

ip = ipaddress.ip_address
DOMAINS = [
    {"name": "blue", "route_targets": ["65001:1"],
     "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24", "fd00:b::/64"]}],
     "virtual_addresses": [{"address": "10.0.0.200", "ports": ["p1", "p2"]}]},
    {"name": "red", "route_targets": ["65001:2"], "subnets": [{"vsid": 6001, "prefixes": ["10.0.0.0/24"],
                                                               "dhcp": {"enabled": False}}]},
]


class Reconciler:
    full_pending = False
    last = None

    async def reconcile(self, parts: Any, hold: bool = False, defer: bool = False) -> Outcome:
        return Outcome(time.time(), {}, (), 0, 0.0, False)

    async def revert(self, applied: Any) -> list[Any]:
        return []

    def invalidate(self) -> None:
        pass


class Nft:
    def __init__(self) -> None:
        self.scripts: list[str] = []

    async def script(self, what: str, text: str) -> None:
        self.scripts.append(text)

    async def list_json(self, *args: str) -> dict[str, Any]:
        raise NftError("list", "no table")


class Filters:
    decap = None
    decap_fed = None

    async def marks(self, *args: Any) -> bool:
        return True

    async def decapsulation(self, *args: Any, **kwargs: Any) -> bool:
        return True


class Client:
    """What a BGP client announces now, and each call."""

    def __init__(self) -> None:
        self.routes_out: dict[Any, Any] = {}
        self.calls: list[tuple[str, int]] = []

    async def announce(self, routes: list[Any]) -> None:
        self.calls.append(("announce", len(routes)))
        self.routes_out.update((r.key, r) for r in routes)

    async def withdraw(self, keys: list[Any]) -> None:
        self.calls.append(("withdraw", len(keys)))
        for k in keys:
            del self.routes_out[k]

    def routes(self) -> dict[Any, Any]:
        return {}


def make(tmp_path) -> tuple[Agent, Client, Nft]:
    config = AgentConfig.from_dict({
        "asn": 65001, "router_id": "198.51.100.11", "provider_addresses": ["198.51.100.11"],
        "route_reflectors": [{"address": "198.51.100.100"}], "state_dir": str(tmp_path), "routing_domains": DOMAINS,
    })
    agent = Agent(config)
    agent._started = True
    agent._everything = False
    agent._reconciler = Reconciler()  # type: ignore[assignment]
    nft = Nft()
    agent._port_security.nft = nft  # type: ignore[assignment]
    agent._filters = Filters()  # type: ignore[assignment]
    client = Client()
    agent._client = client  # type: ignore[assignment]
    agent._guest = Responder(MemoryWire(), agent._on_claim, advertisers={})
    return agent, client, nft


def whole(agent: Agent, client: Client, tmp_path) -> None:
    """Everything the agent keeps by port equals a whole recomputation from its view."""
    view = agent._view
    assert client.routes_out == announce.local_routes(view.catalog, agent.identity, view.mobility.seqs(),
                                                      view.mobility.inactive(), view.holders.holding())
    assert agent._port_security._ports == {p.interface: p for p in guarded(view.catalog) if p.port_security}
    assert agent._guest is not None
    assert dict(agent._guest.services) == offer.port_services(view.catalog, agent.host, view.mobility.inactive())
    saved = state.load(tmp_path)
    if saved is None:  # nothing saved yet
        assert not view.catalog.ports and not view.mobility.macs
        return
    assert dict(saved.catalog.ports) == dict(view.catalog.ports)
    assert dict(saved.seqs) == dict(view.mobility.seqs())


def port(name: str, interface: int, mac: int, vsid: int, host: int, guarded_: bool = True) -> Port:
    return Port(name, f"tap{interface}", f"02:00:00:00:00:0{mac}", vsid, (ip(f"10.0.0.{10 + host}"),),
                port_security=guarded_)


ports = st.builds(port, st.sampled_from(["p1", "p2", "p3", "p4"]), st.integers(1, 4), st.integers(1, 3),
                  st.sampled_from([5001, 6001]), st.integers(0, 4), st.booleans())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(ports, st.sampled_from(["p1", "p2", "p3", "p4"]), st.just("moved"),
                          st.sampled_from(["claim p1", "claim p2"])), max_size=12))
def test_changes_by_port_equal_a_whole_recomputation(tmp_path_factory, steps):
    tmp_path = tmp_path_factory.mktemp("agent")

    async def run() -> None:
        agent, client, _ = make(tmp_path)
        await agent._announce()
        agent._update_guest()
        for step in steps:
            try:
                if isinstance(step, Port):
                    await agent.put_port(step)
                elif step == "moved":
                    # a MAC moved to another host (as a sync finds it): its ports stop being announced
                    view = agent._view
                    if view.mobility.macs:
                        key = sorted(view.mobility.macs)[0]
                        macs = {**view.mobility.macs, key: MacState(seq=9, active=False)}
                        agent._view = View(view.catalog, view.tables, Mobility(MappingProxyType(macs)),
                                           view.holders)
                        agent._store.save(agent._view.saved())
                        await agent._announce()
                        agent._update_guest()
                elif step.startswith("claim "):
                    # a VM announced the virtual address: its port holds it (announced as one of its CAs)
                    await agent.claim_virtual_address(step.split()[1], ip("10.0.0.200"))
                elif step in agent.catalog.ports:
                    await agent.delete_port(step)
            except ValueError:
                continue  # refused by the model (interface or CA in use): nothing changed
            whole(agent, client, tmp_path)
        await agent._guest.close()  # type: ignore[union-attr]

    asyncio.run(run())


async def test_an_attach_writes_one_line_announces_one_port_and_guards_one_port(tmp_path):
    agent, client, nft = make(tmp_path)
    for i in range(20):
        await agent.put_port(Port(f"vm{i}", f"tap{100 + i}", f"02:00:00:00:01:{i:02x}", 5001,
                                  (ip(f"10.0.0.{100 + i}"),)))
    journal = (tmp_path / state.JOURNAL).read_text().splitlines()
    client.calls.clear()
    nft.scripts.clear()
    await agent.put_port(Port("new", "tap-new", "02:00:00:00:02:01", 5001, (ip("10.0.0.50"), ip("fd00:b::50"))))
    assert len((tmp_path / state.JOURNAL).read_text().splitlines()) == len(journal) + 1
    assert client.calls == [("announce", 2)]  # the new port's two routes, nothing else
    assert len(nft.scripts) == 1 and "tap-new" in nft.scripts[0] and "tap100" not in nft.scripts[0]
    client.calls.clear()
    await agent.delete_port("new")
    assert client.calls == [("withdraw", 2)]
    whole(agent, client, tmp_path)
    await agent._guest.close()  # type: ignore[union-attr]
