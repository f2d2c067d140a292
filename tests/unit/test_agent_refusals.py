"""hostagent.agent before start(): refusals name the field and change nothing; the state file round-trips;
the GRE filter (nftables) is kept in a namespace on this host's kernel."""

from __future__ import annotations

import ipaddress
import os
import subprocess

import pytest

from nvfabric.hostagent import state
from nvfabric.hostagent.agent import Agent
from nvfabric.vnet.errors import NotStarted
from nvfabric.hostagent.config import AgentConfig
from nvfabric.vnet.catalog import NotFound
from nvfabric.vnet.errors import ConflictError, ModelError
from nvfabric.vnet.model import Port
from nvfabric.vnet.decap import DecapFilter, DecapTable
from nvfabric.vnet.nftables import Nft
from tests.unit.agent_fixtures import BLUE, RED, VM_B1, VM_R1, catalog


def config(tmp_path, **extra):
    return AgentConfig.from_dict({
        "asn": 65001, "router_id": "198.51.100.11", "provider_addresses": ["198.51.100.11"],
        "route_reflectors": [{"address": "198.51.100.100"}], "state_dir": str(tmp_path),
        "routing_domains": [{"name": "blue", "route_targets": ["65001:1"],
                             "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}]}], **extra})


async def test_refusals_before_start(tmp_path):
    agent = Agent(config(tmp_path))
    with pytest.raises(ModelError) as err:
        await agent.put_port(Port("p", "tap1", "02:00:00:00:00:01", 5001, (ipaddress.ip_address("10.9.0.1"),)))
    assert err.value.field == "addresses[0]"
    with pytest.raises(ConflictError):
        await agent.put_port(Port("p", "tap1", "02:00:00:00:00:01", 6001, (ipaddress.ip_address("10.0.0.5"),)))
    with pytest.raises(NotFound):
        await agent.delete_port("nope")
    with pytest.raises(NotFound):
        await agent.delete_routing_domain("nope")
    with pytest.raises(NotStarted):
        await agent.put_routing_domain(RED)
    assert set(agent.catalog.routing_domains) == {"blue"} and not agent.catalog.ports
    assert not (tmp_path / state.FILE).exists()


def test_state_file_round_trip_is_atomic(tmp_path):
    saved = state.SavedState(catalog(VM_B1, VM_R1), {"blue": 1000, "red": 1001}, {(5001, VM_B1.mac): 3})
    state.save(tmp_path, saved)
    back = state.load(tmp_path)
    assert back == saved or (back.catalog.ports == saved.catalog.ports and back.tables == saved.tables
                             and back.seqs == saved.seqs and dict(back.catalog.routing_domains) ==
                             {"blue": BLUE, "red": RED})
    # no temporary file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([state.FILE, state.JOURNAL])
    (tmp_path / state.FILE).write_text("{")
    with pytest.raises(state.StateError):
        state.load(tmp_path)


def test_agent_restores_its_catalog_from_the_state_dir(tmp_path):
    state.save(tmp_path, state.SavedState(catalog(VM_B1), {"blue": 1007, "red": 1001}, {}))
    agent = Agent(config(tmp_path))
    assert set(agent.catalog.ports) == {"b1"} and agent._view.tables["blue"] == 1007


@pytest.fixture
def namespace():
    name = f"nvf-nft-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


async def test_decap_table_is_one_table_replaced_atomically_and_read_back(namespace):
    table = DecapTable(Nft(namespace))
    assert await table.read() is None
    pas = {ipaddress.ip_address("198.51.100.12"), ipaddress.ip_address("2001:db8::12")}
    await table.apply(DecapFilter(frozenset(pas), {5001: 1000}))
    assert (await table.read()).pas == pas
    await table.apply(DecapFilter(frozenset({ipaddress.ip_address("198.51.100.13")})))
    assert await table.read() == DecapFilter(frozenset({ipaddress.ip_address("198.51.100.13")}))
    rules = subprocess.run(["ip", "netns", "exec", namespace, "nft", "list", "ruleset"], capture_output=True,
                           text=True, check=True).stdout
    assert rules.count("table ") == 1 and "ip saddr != @pa4" in rules
    await table.delete()
    assert await table.read() is None



def test_a_restored_agent_tracks_every_local_mac_for_mobility(tmp_path):
    state.save(tmp_path, state.SavedState(catalog(VM_B1, VM_R1), {"blue": 1000, "red": 1001}, {(5001, VM_B1.mac): 2}))
    mobility = Agent(config(tmp_path))._view.mobility
    assert mobility.seqs() == {(5001, VM_B1.mac): 2, (6001, VM_R1.mac): 0}
