"""The agent's decapsulation table by difference, in a real nftables table (a network namespace of this host:
no GRE needed to read a table back): the whole table once, then one transaction of element changes per
change; a refused change (someone edited our table) replaces the whole table at the next write."""

from __future__ import annotations

import ipaddress
import os
import subprocess

import pytest

from nvfabric.hostagent.filters import Filters
from nvfabric.vnet import decap
from nvfabric.vnet.decap import DecapInputs, DecapTable
from nvfabric.vnet.model import LookupRecord, RemotePrefix
from nvfabric.vnet.nftables import Nft

ip, net = ipaddress.ip_address, ipaddress.ip_network
HV2, HV3, GW = ip("198.51.100.12"), ip("198.51.100.13"), ip("2001:db8::99")
MAC = "02:00:00:00:00:01"


def record(ca: str, pa=HV2) -> LookupRecord:
    return LookupRecord("blue", 5001, ip(ca), MAC, pa)


@pytest.fixture
def namespace():
    name = f"nvf-decap-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


class Recording(Nft):
    """nft that keeps the transactions it was given."""

    def __init__(self, netns: str) -> None:
        super().__init__(netns)
        self.scripts: list[str] = []

    async def script(self, what: str, text: str) -> None:
        self.scripts.append(text)
        await super().script(what, text)


def _change(was: DecapInputs, now: DecapInputs) -> decap.DecapChange:
    return decap.change((was.records, now.records), (was.prefixes, now.prefixes),
                        (was.next_hops, now.next_hops), (was.customer_routes, now.customer_routes),
                        (was.tables, now.tables), (was.vsids, now.vsids))


async def _kernel(namespace: str) -> decap.DecapFilter | None:
    return await DecapTable(Nft(namespace)).read()


async def test_each_change_is_one_transaction_of_its_elements_and_the_kernel_holds_the_reference(namespace):
    nft = Recording(namespace)
    filters = Filters(nft)
    await filters.start()
    first = DecapInputs((record("10.0.0.1"), record("10.0.0.2", HV3)), (), (HV2, HV3), {}, {"blue": 1000},
                        {5001: 1000})
    assert await filters.decapsulation(first, None, holding=False)
    assert nft.scripts[-1].startswith("add table inet nvfabric\ndelete table inet nvfabric\n")
    assert await _kernel(namespace) == first.filter(False, None)

    # a CA arrives, one moves, a gateway's default route comes (it covers nothing of another PA)
    second = DecapInputs((record("10.0.0.1", HV3), record("10.0.0.2", HV3), record("10.0.0.3")),
                         (RemotePrefix("blue", net("0.0.0.0/0"), 5001, ip("198.51.100.99")),),
                         (HV2, HV3, HV3, ip("198.51.100.99")), {}, {"blue": 1000}, {5001: 1000})
    assert await filters.decapsulation(second, _change(first, second), holding=False)
    assert nft.scripts[-1] == (
        "delete element inet nvfabric h44 { 198.51.100.12 . 1000 . 0xa000001 }\n"
        "add element inet nvfabric pa4 { 198.51.100.99 }\n"
        "add element inet nvfabric h44 { 198.51.100.12 . 1000 . 0xa000003, 198.51.100.13 . 1000 . 0xa000001 }\n"
        "add element inet nvfabric v44 { 198.51.100.99 . 1000 . 0x0-0xffffffff }\n")
    assert await _kernel(namespace) == second.filter(False, None) == filters.decap

    # nothing changed: nothing written
    count = len(nft.scripts)
    assert await filters.decapsulation(second, _change(second, second), holding=False)
    assert len(nft.scripts) == count


async def test_a_refused_change_replaces_the_whole_table_at_the_next_write(namespace):
    filters = Filters(Nft(namespace))
    await filters.start()
    first = DecapInputs((record("10.0.0.1"), record("10.0.0.2")), (), (HV2,), {}, {"blue": 1000}, {5001: 1000})
    assert await filters.decapsulation(first, None, holding=False)
    # someone else deletes one of our elements: deleting it again is refused
    subprocess.run(["ip", "netns", "exec", namespace, "nft", "delete element inet nvfabric h44 "
                    "{ 198.51.100.12 . 1000 . 0xa000001 }"], check=True)
    second = DecapInputs((record("10.0.0.2"),), (), (HV2,), {}, {"blue": 1000}, {5001: 1000})
    assert not await filters.decapsulation(second, _change(first, second), holding=False)
    assert filters.decap is None and filters.decap_fed is None  # not known: the owner's next sync rebuilds
    assert await filters.decapsulation(second, None, holding=False)
    assert await _kernel(namespace) == second.filter(False, None)


async def test_a_full_pass_finds_an_index_that_missed_a_change_and_rebuilds_it(namespace):
    filters = Filters(Nft(namespace))
    await filters.start()
    first = DecapInputs((record("10.0.0.1"),), (), (HV2,), {}, {"blue": 1000}, {5001: 1000})
    assert await filters.decapsulation(first, None, holding=False)
    second = DecapInputs((record("10.0.0.1"), record("10.0.0.2")), (), (HV2,), {}, {"blue": 1000}, {5001: 1000})
    # a change that does not say the new record came: the index lags; the resync's check repairs it
    assert await filters.decapsulation(second, decap.DecapChange(), holding=False, full=True)
    assert await _kernel(namespace) == second.filter(False, None)
    third = DecapInputs((record("10.0.0.2"),), (), (HV2,), {}, {"blue": 1000}, {5001: 1000})
    assert await filters.decapsulation(third, _change(second, third), holding=False)
    assert await _kernel(namespace) == third.filter(False, None)


async def test_inputs_the_index_refuses_still_give_the_reference_table(namespace):
    filters = Filters(Nft(namespace))
    await filters.start()
    twice = DecapInputs((record("10.0.0.1"), record("10.0.0.1", HV3)), (), (HV2, HV3), {}, {"blue": 1000})
    assert await filters.decapsulation(twice, None, holding=False)
    assert await _kernel(namespace) == twice.filter(False, None)
    once = DecapInputs((record("10.0.0.1", HV3),), (), (HV3,), {}, {"blue": 1000})
    assert await filters.decapsulation(once, _change(twice, once), holding=False)
    assert await _kernel(namespace) == once.filter(False, None)
