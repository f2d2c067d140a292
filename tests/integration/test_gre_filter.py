"""The host agent's GRE filter (vnet/nftables.py) on this machine's nftables: a receiving namespace (the
hypervisor) and a sending one (other hosts, and a stranger), joined by a veth, GRE sent with raw sockets.

After the first write, which replaces the table, a change of the provider-address set adds and deletes set
elements only: the set follows, GRE from the addresses in it passes and from others is dropped, and the
rest of the table is not rewritten (same handles, and the drop rules keep their counters, which a replaced
table would have reset).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from nvfabric.vnet.kernel.netns import enter_namespace
from nvfabric.lab import netns
from nvfabric.vnet.nftables import FAMILY, TABLE, GreFilter, Nft, NftError

RX4, RX6 = "192.0.2.1", "2001:db8:1::1"
SENDERS4 = ("192.0.2.2", "192.0.2.3", "192.0.2.4")
SENDERS6 = ("2001:db8:1::2", "2001:db8:1::3")
GRE_NVGRE = bytes.fromhex("2000" "6558") + (5001 << 8).to_bytes(4, "big")  # K bit, TEB, key VSID << 8


def ips(*texts: str) -> frozenset:
    return frozenset(ipaddress.ip_address(t) for t in texts)


@dataclass
class Net:
    rx: str
    tx: str

    def table(self) -> list[dict]:
        out = netns.run(["ip", "netns", "exec", self.rx, "nft", "-j", "-a", "list", "table", FAMILY, TABLE]).output
        return json.loads(out)["nftables"]

    def skeleton(self) -> list[tuple]:
        """Everything in the table but set elements and counter values: kind, name, handle."""
        out = []
        for item in self.table():
            for kind in ("table", "chain", "set", "rule"):
                if kind in item:
                    obj = item[kind]
                    out.append((kind, obj.get("name") or obj.get("chain"), obj["handle"]))
        return out

    def drops(self) -> dict[str, int]:
        """Packets counted by each family's drop rule, by the set it checks."""
        found = {}
        for item in self.table():
            rule = item.get("rule")
            if rule:
                exprs = rule["expr"]
                name = next(e["match"]["right"] for e in exprs if "match" in e and "payload" in e["match"]["left"])
                found[name.lstrip("@")] = next(e["counter"]["packets"] for e in exprs if "counter" in e)
        return found

    def send_gre(self, src: str, dst: str) -> None:
        def send() -> None:
            family = socket.AF_INET6 if ":" in src else socket.AF_INET
            with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_GRE) as s:
                s.bind((src, 0))
                s.sendto(GRE_NVGRE + bytes(64), (dst, 0))

        with ThreadPoolExecutor(1, initializer=enter_namespace, initargs=(self.tx,)) as pool:
            pool.submit(send).result(10)


@pytest.fixture
def net(request: pytest.FixtureRequest) -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    prefix = f"nvg{os.getpid() % 10000}{zlib.crc32(request.node.name.encode()) % 1000}-"
    rx, tx = prefix + "rx", prefix + "tx"
    for ns in (rx, tx):
        netns.destroy(ns)
        netns.create(ns)
    try:
        netns.run(["ip", "link", "add", "eth0", "netns", rx, "type", "veth", "peer", "name", "eth0", "netns", tx])
        lines = {rx: [f"addr add {RX4}/24 dev eth0", f"addr add {RX6}/64 dev eth0 nodad"],
                 tx: [f"addr add {a}/24 dev eth0" for a in SENDERS4] + [f"addr add {a}/64 dev eth0 nodad"
                                                                     for a in SENDERS6]}
        for ns, batch in lines.items():
            netns.ip_batch([*batch, "link set eth0 up", "link set lo up"], ns)
        yield Net(rx, tx)
    finally:
        for ns in (rx, tx):
            netns.destroy(ns)


# both ways to nftables: libnftables in this process, and the `nft` command (when the library is missing)
WAYS = pytest.mark.parametrize("in_process", [True, False], ids=["libnftables", "nft-command"])


@WAYS
def test_set_changes_are_element_changes_and_leave_the_rest_of_the_table_alone(net: Net, in_process: bool) -> None:
    nft = Nft(net.rx, in_process=in_process)
    assert nft.in_process == in_process
    first = GreFilter(ips("192.0.2.2", "2001:db8:1::2"))
    asyncio.run(nft.apply(first))
    skeleton = net.skeleton()
    assert [k for k, *_ in skeleton] == ["table", "set", "set", "chain", "rule", "rule"], skeleton

    # the filter works: the set's members pass, strangers are dropped and counted
    for src in ("192.0.2.2", "192.0.2.3", "192.0.2.4", "2001:db8:1::2", "2001:db8:1::3"):
        net.send_gre(src, RX6 if ":" in src else RX4)
    assert net.drops() == {"pa4": 2, "pa6": 1}

    # one host comes (.3, ::3), one goes (::2): element changes only, in one transaction
    second = GreFilter(ips("192.0.2.2", "192.0.2.3", "2001:db8:1::3"))
    doc = second.changes(first)
    assert doc is not None
    assert [next(iter(c)) + " " + next(iter(next(iter(c.values())))) for c in doc["nftables"][1:]] == [
        "delete element", "add element", "add element"]
    asyncio.run(nft.apply(second))
    assert asyncio.run(nft.allowed()) == second.allowed
    assert net.skeleton() == skeleton  # same table, sets, chain and rules (same handles)
    assert net.drops() == {"pa4": 2, "pa6": 1}  # the counters survived: nothing was replaced
    for src in ("192.0.2.3", "2001:db8:1::3", "2001:db8:1::2", "192.0.2.4"):
        net.send_gre(src, RX6 if ":" in src else RX4)
    assert net.drops() == {"pa4": 3, "pa6": 2}  # .3 and ::3 pass now; ::2 is dropped now, .4 still

    # every address leaves, then one returns: the sets empty and refill, the rules stay
    asyncio.run(nft.apply(GreFilter(frozenset())))
    assert asyncio.run(nft.allowed()) == frozenset()
    asyncio.run(nft.apply(GreFilter(ips("2001:db8:1::2"))))
    assert asyncio.run(nft.allowed()) == ips("2001:db8:1::2") and net.skeleton() == skeleton
    assert net.drops() == {"pa4": 3, "pa6": 2}


@WAYS
def test_a_table_changed_behind_our_back_is_replaced_on_the_next_change(net: Net, in_process: bool) -> None:
    nft = Nft(net.rx, in_process=in_process)
    asyncio.run(nft.apply(GreFilter(ips("192.0.2.2", "192.0.2.3"))))
    # someone removes an element we hold: deleting it again is refused, and the table is not half-changed
    netns.run(["ip", "netns", "exec", net.rx, "nft", "delete", "element", FAMILY, TABLE, "pa4", "{ 192.0.2.3 }"])
    with pytest.raises(NftError) as refused:
        asyncio.run(nft.apply(GreFilter(ips("192.0.2.2", "192.0.2.4"))))
    assert "No such file or directory" in str(refused.value)  # nft's own words
    assert asyncio.run(nft.allowed()) == ips("192.0.2.2")  # the refused transaction changed nothing
    # the next change replaces the table: the kernel has exactly what we want again
    asyncio.run(nft.apply(GreFilter(ips("192.0.2.2", "192.0.2.4"))))
    assert asyncio.run(nft.allowed()) == ips("192.0.2.2", "192.0.2.4")
    # and a table deleted behind our back comes back the same way
    netns.run(["ip", "netns", "exec", net.rx, "nft", "delete", "table", FAMILY, TABLE])
    with pytest.raises(NftError):
        asyncio.run(nft.apply(GreFilter(ips("192.0.2.2"))))
    asyncio.run(nft.apply(GreFilter(ips("192.0.2.2"))))
    assert asyncio.run(nft.allowed()) == ips("192.0.2.2")
