"""The decapsulation table (vnet/decap.py) on this machine's nftables: a receiving namespace (the hypervisor)
and a sending one (other hosts, and a stranger), joined by a veth; crafted GRE sent with raw sockets. No
GRE device is needed: the input hook judges the outer packet whoever receives it, and a raw GRE socket in
the receiving namespace sees what the hook let through, as the GRE stack would (FlowID already zeroed).

Each reason is provoked once per outer family and its counter read back; after the first write, changes
add and delete elements only: same handles, and the counters survive (a replaced table would reset them).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from nvfabric.lab import netns
from nvfabric.vnet.decap import PASSED, REASONS, TABLE, DecapFilter, DecapTable, Element
from nvfabric.vnet.kernel.netns import enter_namespace
from nvfabric.vnet.nftables import FAMILY, Nft, NftError
from tests.nvgre import ETH_ARP, gre, inner, send_gre

RX4, RX6 = "192.0.2.1", "2001:db8:1::1"
HV2_4, HV3_4, STRANGER4 = "192.0.2.2", "192.0.2.3", "192.0.2.4"
HV2_6, STRANGER6 = "2001:db8:1::2", "2001:db8:1::3"
VSID, TABLE_NO = 5001, 1000
ip, cidr = ipaddress.ip_address, ipaddress.ip_network


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
            for kind in ("table", "chain", "set", "map", "counter", "rule"):
                if kind in item:
                    obj = item[kind]
                    out.append((kind, obj.get("name") or obj.get("chain"), obj["handle"]))
        return out

    def counters(self) -> dict[str, int]:
        return asyncio.run(DecapTable(Nft(self.rx)).counters())

    def send(self, src: str, payload: bytes, **options: object) -> None:
        send_gre(self.tx, src, RX6 if ":" in src else RX4, payload, **options)


@pytest.fixture
def net(request: pytest.FixtureRequest) -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    prefix = f"nvd{os.getpid() % 10000}{zlib.crc32(request.node.name.encode()) % 1000}-"
    rx, tx = prefix + "rx", prefix + "tx"
    for ns in (rx, tx):
        netns.destroy(ns)
        netns.create(ns)
    try:
        netns.run(["ip", "link", "add", "eth0", "netns", rx, "type", "veth", "peer", "name", "eth0", "netns", tx])
        lines = {rx: [f"addr add {RX4}/24 dev eth0", f"addr add {RX6}/64 dev eth0 nodad"],
                 tx: [f"addr add {a}/24 dev eth0" for a in (HV2_4, HV3_4, STRANGER4)]
                 + [f"addr add {a}/64 dev eth0 nodad" for a in (HV2_6, STRANGER6)]}
        for ns, batch in lines.items():
            netns.ip_batch([*batch, "link set eth0 up", "link set lo up"], ns)
        yield Net(rx, tx)
    finally:
        for ns in (rx, tx):
            netns.destroy(ns)


def fabric() -> DecapFilter:
    """hv2 (IPv4 and IPv6 PA) has CA 10.0.0.12 and fd00::12 (and fd00::/120 behind its IPv6 PA); hv3 has
    10.0.0.13 and 172.16.0.0/16 behind it; routing domain 1000 serves VSIDs 5001 and 5002."""
    return DecapFilter(frozenset({ip(HV2_4), ip(HV3_4), ip(HV2_6)}), {VSID: TABLE_NO, 5002: TABLE_NO}, frozenset({
        Element.host(ip(HV2_4), TABLE_NO, ip("10.0.0.12")), Element.host(ip(HV2_4), TABLE_NO, ip("fd00::12")),
        Element.host(ip(HV2_6), TABLE_NO, ip("10.0.0.12")), Element.of(ip(HV2_6), TABLE_NO, cidr("fd00::/120")),
        Element.host(ip(HV3_4), TABLE_NO, ip("10.0.0.13")),
        Element.of(ip(HV3_4), TABLE_NO, cidr("172.16.0.0/16")),  # a customer route through hv3's appliance
    }))


def test_every_reason_is_judged_on_the_outer_packet_and_counted(net: Net) -> None:
    asyncio.run(DecapTable(Nft(net.rx)).apply(fabric()))
    ok4, ok6 = gre(VSID << 8), gre(5002 << 8)
    # unknown PA
    net.send(STRANGER4, ok4 + inner("10.0.0.12"))
    net.send(STRANGER6, ok4 + inner("10.0.0.12"))
    # not NVGRE: checksum flag, another protocol, IPv4 options, an IPv6 extension header
    net.send(HV2_4, gre(VSID << 8, flags=0xA000) + bytes(4) + inner("10.0.0.12"))
    net.send(HV2_6, gre(VSID << 8, proto=0x0800) + inner("10.0.0.12"))
    net.send(HV2_4, ok4 + inner("10.0.0.12"), ip_options=bytes([1, 1, 1, 0]))
    net.send(HV2_6, ok4 + inner("10.0.0.12"), hop_by_hop=True)
    # unknown VSID: 9999, key 0 (IPv4 and IPv6 outer)
    net.send(HV2_4, gre(9999 << 8) + inner("10.0.0.12"))
    net.send(HV2_4, gre(0) + inner("10.0.0.12"))
    net.send(HV2_6, gre(9999 << 8) + inner("fd00::12"))
    # not IP: ARP
    net.send(HV2_4, ok4 + inner("10.0.0.12", ethertype=ETH_ARP))
    # not vouched: hv3's CA from hv2, a CA nobody has, hv2's IPv6 CA outside its prefix, hv3's prefix from
    # hv2, a source just outside hv3's prefix
    net.send(HV2_4, ok4 + inner("10.0.0.13"))
    net.send(HV2_4, ok6 + inner("10.0.0.99"))
    net.send(HV2_6, ok4 + inner("fd00::1:12"))
    net.send(HV2_4, ok4 + inner("172.16.0.9"))
    net.send(HV3_4, ok4 + inner("172.17.0.9"))
    assert net.counters() == {"unknown_pa": 2, "not_nvgre": 4, "unknown_vsid": 3, "not_ip": 1,
                              "not_vouched": 5, PASSED: 0}
    # exact addresses are in the hash sets, prefixes in the interval sets
    elems = {s["set"]["name"]: s["set"].get("elem", []) for s in net.table() if "set" in s}
    assert len(elems["h44"]) == 2 and len(elems["h46"]) == 1 and len(elems["h64"]) == 1, elems
    assert len(elems["v44"]) == 1 and len(elems["v66"]) == 1 and not elems["v46"] and not elems["v64"], elems

    # vouched, in either VSID of the routing domain (the key carries the destination's VSID), every family
    # pair, and with a FlowID: the receiver sees the key with FlowID 0
    with _listening(net.rx, socket.AF_INET) as rx4, _listening(net.rx, socket.AF_INET6) as rx6:
        net.send(HV2_4, gre(VSID << 8 | 7) + inner("10.0.0.12"))
        assert struct.unpack_from("!I", rx4.recv(2048), 20 + 4)[0] == VSID << 8  # after the IPv4 header
        net.send(HV2_6, gre(5002 << 8 | 0xFF) + inner("fd00::7"))
        assert struct.unpack_from("!I", rx6.recv(2048), 4)[0] == 5002 << 8  # IPv6 raw: from the GRE header
        net.send(HV2_4, ok6 + inner("fd00::12"))
        net.send(HV2_6, ok4 + inner("10.0.0.12"))
        net.send(HV3_4, ok4 + inner("10.0.0.13"))
        net.send(HV3_4, ok4 + inner("172.16.200.1"))  # a prefix: the interval set, after the hash set missed
    counts = net.counters()
    assert counts[PASSED] == 6 and sum(counts[r] for r in REASONS) == 15


class _listening:
    """A raw GRE socket in the receiving namespace: what the input hook let through."""

    def __init__(self, ns: str, family: int) -> None:
        def make() -> socket.socket:
            s = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_GRE)
            s.settimeout(5)
            return s

        with ThreadPoolExecutor(1, initializer=enter_namespace, initargs=(ns,)) as pool:
            self.sock = pool.submit(make).result(10)

    def __enter__(self) -> socket.socket:
        return self.sock

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# both ways to nftables: libnftables in this process, and the `nft` command (when the library is missing)
WAYS = pytest.mark.parametrize("in_process", [True, False], ids=["libnftables", "nft-command"])


@WAYS
def test_changes_are_element_changes_and_leave_the_rest_of_the_table_alone(net: Net, in_process: bool) -> None:
    table = DecapTable(Nft(net.rx, in_process=in_process))
    first = fabric()
    asyncio.run(table.apply(first))
    skeleton = net.skeleton()
    net.send(HV3_4, gre(VSID << 8) + inner("10.0.0.14"))
    assert net.counters()["not_vouched"] == 1

    # hv3 gets 10.0.0.14, hv2's IPv6 PA leaves: element changes only, the counters stay
    second = DecapFilter(first.pas - {ip(HV2_6)}, first.vsids, frozenset(
        {e for e in first.vouched if e.pa != ip(HV2_6)} | {Element.host(ip(HV3_4), TABLE_NO, ip("10.0.0.14"))}))
    asyncio.run(table.apply(second))
    assert asyncio.run(DecapTable(Nft(net.rx)).read()) == second
    assert net.skeleton() == skeleton
    net.send(HV3_4, gre(VSID << 8) + inner("10.0.0.14"))
    net.send(HV2_6, gre(VSID << 8) + inner("fd00::12"))
    counts = net.counters()
    assert (counts["not_vouched"], counts[PASSED], counts["unknown_pa"]) == (1, 1, 1)

    # a restarted owner reads the table back and writes only the difference: same handles, same counters
    again = DecapTable(Nft(net.rx, in_process=in_process))
    assert asyncio.run(again.read()) == second
    asyncio.run(again.apply(first))
    assert net.skeleton() == skeleton and net.counters()[PASSED] == 1


def test_a_table_changed_behind_our_back_is_replaced_on_the_next_change(net: Net) -> None:
    table = DecapTable(Nft(net.rx))
    asyncio.run(table.apply(fabric()))
    netns.run(["ip", "netns", "exec", net.rx, "nft", "delete", "element", FAMILY, TABLE, "pa4", "{ 192.0.2.3 }"])
    with pytest.raises(NftError) as refused:
        asyncio.run(table.apply(DecapFilter(frozenset({ip(HV2_4)}), fabric().vsids, fabric().vouched)))
    assert "No such file or directory" in str(refused.value)  # nft's own words
    asyncio.run(table.apply(DecapFilter(frozenset({ip(HV2_4)}), fabric().vsids, fabric().vouched)))
    assert asyncio.run(DecapTable(Nft(net.rx)).read()).pas == {ip(HV2_4)}


# ------------------------------------------------------------------ the rules around the tun_id rules


def _rules(ns: str, family: str) -> list[str]:
    return netns.run(["ip", family, "-n", ns, "rule", "show"]).output.splitlines()


def test_decapsulated_packets_never_reach_the_main_or_local_table_rules_owned_and_reconciled(net: Net) -> None:
    """The kernel objects of vnet.desired's GLOBAL partition that keep decapsulated packets in the routing
    domains (`iif <nvgre dev> unreachable`, the local table after the l3mdev rule), on this kernel's rules."""
    from nvfabric.vnet.kernel.netns import RtnlSocket
    from nvfabric.vnet.kernel.objects import LocalTableRule, UnreachableIifRule
    from nvfabric.vnet.kernel.observe import observe
    from nvfabric.vnet.reconcile import Reconciler

    want = {UnreachableIifRule(f, dev) for f in (4, 6) for dev in ("nvf-gre4", "nvf-gre6")} | \
        {LocalTableRule(4), LocalTableRule(6)}

    async def run() -> None:
        sock = RtnlSocket(net.rx)
        try:
            outcome = await Reconciler(sock).reconcile({"": want}, hold=False)
            assert outcome.ok and outcome.counts["create"] == 6, outcome
            for family in ("-4", "-6"):
                rules = _rules(net.rx, family)
                assert not any(r.startswith("0:") for r in rules), rules
                assert "1100:\tfrom all lookup local proto 78" in rules, rules
                assert "999:\tfrom all iif nvf-gre4 [detached] unreachable proto 78" in rules, rules  # no device here
            assert {o for o in await observe(sock) if o.key[0] in ("local-rule", "unreachable-rule")} == want
            # the host still reaches its own addresses (through the local table at 1100)
            netns.run(["ip", "netns", "exec", net.rx, "ping", "-c1", "-W2", RX4])
            # a restart finds everything in place: nothing to do
            again = await Reconciler(sock).reconcile({"": want}, hold=False)
            assert again.ok and not any(again.counts.values()), again.counts
            # preference 0 put back behind our back: the next full pass deletes it again, ours untouched
            netns.run(["ip", "-n", net.rx, "rule", "add", "pref", "0", "lookup", "local", "proto", "kernel"])
            fixed = await Reconciler(sock).reconcile({"": want}, hold=False)
            assert fixed.ok and fixed.counts["replace"] == 1, fixed.counts
            assert not any(r.startswith("0:") for r in _rules(net.rx, "-4"))
            assert "1100:\tfrom all lookup local proto 78" in _rules(net.rx, "-4")
            # not wanted any more: preference 0 back first, then ours removed
            gone = await Reconciler(sock).reconcile({"": set()}, hold=False)
            assert gone.ok and gone.counts["delete"] == 6, gone.counts
            for family in ("-4", "-6"):
                rules = _rules(net.rx, family)
                assert rules[0].startswith("0:\tfrom all lookup local"), rules
                assert not any("1100:" in r or "unreachable" in r for r in rules), rules
        finally:
            sock.close()

    asyncio.run(run())
