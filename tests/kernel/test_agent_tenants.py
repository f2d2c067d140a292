"""The host agent end to end (VM phase): default topology, our reflectors (`nvfabric rr`) on rr1/rr2, agents on hv1-hv3
(in this process, each in its namespace; hv2's also as a separate `nvfabric agent` process), two tenants
with overlapping addresses (lab/fabric.py). Everything is checked by pings, packets on the
underlay and kernel state.
"""

from __future__ import annotations

import ipaddress
import dataclasses
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nvfabric.lab.fabric import Fabric, HV, VMS, agent_config, check, wait_for
from nvfabric.lab import netns, runner, spoof
from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.topology import load
from tests.kernel.test_vnet_dataplane import _gre_keys
from tests.nvgre import gre, inner, send_gre
from nvfabric.vnet.errors import KernelError, ModelError
from nvfabric.vnet.model import CustomerRoute, Port
from nvfabric.vnet import portsecurity
from nvfabric.hostagent.trace import Verdict, trace
from prometheus_client import generate_latest

pytestmark = pytest.mark.kernel
NVFABRIC = str(Path(sys.executable).parent / "nvfabric")
VM = {vm.name: vm for vm in VMS}
REPORT: list[str] = []  # figures printed at the end (-s) and kept in the log


def report(line: str) -> None:
    REPORT.append(line)
    print(f"[agent-kernel] {line}", flush=True)


@pytest.fixture(scope="module")
def fabric():
    topology = load(DEFAULT_TOPOLOGY)
    runner.up(topology)
    fab = Fabric(topology)
    try:
        started = time.monotonic()
        fab.up()
        for vm in VMS:
            for other in VMS:
                if other.tenant == vm.tenant and other.host != vm.host:
                    for ca in vm.cas:
                        wait_for(lambda h=other.host, ca=ca: fab.learned(h, ca), 60, f"{ca} on {other.host}")
        report(f"fabric up and every CA learned in {time.monotonic() - started:.1f} s")
        yield fab
    finally:
        fab.close()
        runner.down(topology.name)
        print("\n".join(["", "agent kernel figures:", *REPORT]), flush=True)


class Capture:
    def __init__(self, ns: str, iface: str, path: str) -> None:
        self.path = path
        # --immediate-mode: each packet reaches tcpdump as it comes (else libpcap holds it in the ring's block
        # for up to a second, and what it holds at SIGINT is lost)
        self.proc = subprocess.Popen(netns.in_netns(ns, ["tcpdump", "-i", iface, "-w", path, "-U", "-n",
                                                         "--immediate-mode"]),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        said = []
        for line in self.proc.stderr:  # "listening on IFACE, ...": capturing from here on
            said.append(line)
            if "listening on" in line:
                break
        else:
            raise AssertionError(f"tcpdump on {iface} did not start: {''.join(said)}")

    def stop(self) -> bytes:
        time.sleep(0.5)  # what is still on the way lands (a negative, nothing arriving, needs this window too)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        with open(self.path, "rb") as f:
            return f.read()


def _frames(pcap: bytes) -> list[bytes]:
    out, offset = [], 24
    while offset + 16 <= len(pcap):
        incl = int.from_bytes(pcap[offset + 8 : offset + 12], "little")
        out.append(pcap[offset + 16 : offset + 16 + incl])
        offset += 16 + incl
    return out


def test_tenants_reach_their_own_and_never_each_other_and_the_wire_carries_only_unicast_gre(fabric):
    cap = Capture(fabric.ns("hv1"), "eth1", "/tmp/agent-hv1-eth1.pcap")
    rows = check(fabric)
    # an ARP / ND for an unknown address gets no answer; a known one is answered with the port's MAC
    for _family, unknown in ((4, "10.0.0.99"), (6, "fd00:b::99")):
        assert not fabric.ping("b1", unknown, count=2, wait=1)
    neigh = netns.run(["ip", "-n", fabric.vm_ns["b1"], "neigh", "show"]).output
    pcap = cap.stop()
    bad = [r for r in rows if r[3] != r[4]]
    for src, dst, what, expected, observed in rows:
        report(f"{'OK ' if expected == observed else 'BAD'} {src} -> {dst}: {what}: "
               f"{'reached' if observed else 'no answer'}")
    assert not bad, bad
    for unknown in ("10.0.0.99", "fd00:b::99"):
        line = next((ln for ln in neigh.splitlines() if ln.startswith(unknown + " ")), "")
        assert "lladdr" not in line, neigh
    tap_mac = netns.run(["ip", "-n", fabric.ns("hv1"), "-br", "link", "show", "tap-b1"]).output.split()[2]
    for known in ("10.0.0.12", "fd00:b::12", "10.0.0.1"):
        line = next((ln for ln in neigh.splitlines() if ln.startswith(known + " ")), "")
        assert f"lladdr {tap_mac}" in line, (known, neigh)
    # the underlay: GRE only, key = VSID << 8, K bit only, inner frames to the router MAC, no broadcast
    keys = _gre_keys(pcap)
    assert keys, "no GRE captured"
    assert {k >> 8 for *_, k in keys} <= {5001, 5002, 6001}
    assert {k >> 8 for *_, k in keys} >= {5001, 5002, 6001}
    assert all(flags == 0x2000 and proto == 0x6558 and key & 0xFF == 0 for _v, flags, proto, key in keys)
    for frame in _frames(pcap):
        assert frame[0] & 1 == 0 or frame[12:14] in (b"\x08\x06", b"\x86\xdd"), "a flooded GRE frame?"
        ethertype = frame[12:14]
        if ethertype == b"\x08\x00" and frame[14 + 9] == 47:
            inner = frame[14 + (frame[14] & 0xF) * 4 + 8 :]
            assert inner[0:6] == bytes.fromhex("02005e100001"), inner[:14].hex()
            assert inner[12:14] in (b"\x08\x00", b"\x86\xdd"), "non-IP inner frame (ARP/ND flooded?)"
    report(f"underlay capture on hv1: {len(keys)} GRE packets, keys {sorted({hex(k) for *_, k in keys})}, "
           "all K-bit only, inner dst = router MAC, no broadcast")
    # IPv6 gateway and the agent's own view
    status = fabric.agents["hv1"].read(lambda a: a.status())
    assert status.synced and not status.headless and all(r.state == "established" for r in status.reflectors)
    records = fabric.agents["hv1"].read(lambda a: a.lookup_records())
    assert {(r.routing_domain, str(r.ca)) for r in records} >= {("blue", "10.0.0.12"), ("red", "10.0.0.12")}


def test_gre_is_accepted_only_from_learned_provider_addresses(fabric):
    rules = netns.run(["ip", "netns", "exec", fabric.ns("hv1"), "nft", "list", "table", "inet", "nvfabric"]).output
    for pa in ("198.51.100.12", "198.51.100.13"):
        assert pa in rules, rules
    assert "198.51.100.100" not in rules and "198.51.100.21" not in rules


class Attacker:
    """b1 (on hv1) as a hostile VM: frames crafted in its namespace (lab/spoof.py) to hv1's port, receivers on
    the victims b2 (hv2) and b3 (hv3). `settle` sends b1's own pings to both and waits for them: every frame
    sent before was judged by then (no sleeps)."""

    def __init__(self, fabric: Fabric) -> None:
        self.fabric = fabric
        self.mac = VM["b1"].mac
        self.tap_mac = netns.run(["ip", "-n", fabric.ns("hv1"), "-br", "link", "show", "tap-b1"]).output.split()[2]
        self.rx = {v: spoof.Receiver(fabric.vm_ns[v], "eth0") for v in ("b2", "b3")}
        self.seq = 100

    def send(self, *frames: bytes) -> None:
        spoof.send(self.fabric.vm_ns["b1"], "eth0", *frames)

    def settle(self) -> None:
        for victim, ca in (("b2", "10.0.0.12"), ("b3", "10.0.1.13")):
            self.seq += 1
            self.send(spoof.ping4(self.mac, self.tap_mac, "10.0.0.11", ca, self.seq))
            assert self.rx[victim].wait(_pair("10.0.0.11", ca), 30), f"b1's own ping did not reach {victim}"

    def arrived(self, src: str, dst: str) -> list[str]:
        """The victims that received a packet from `src` to `dst`."""
        return [v for v, rx in self.rx.items() if rx.seen(_pair(src, dst))]

    def drops(self) -> dict[str, int]:
        return self.fabric.agents["hv1"].call(lambda a: a.port_drops()).get("b1", {})

    def close(self) -> None:
        for rx in self.rx.values():
            rx.close()


def _pair(src: str, dst: str) -> bytes:
    return ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed


@pytest.fixture
def attacker(fabric):
    a = Attacker(fabric)
    try:
        a.settle()
        yield a
    finally:
        a.close()


def test_port_security_drops_spoofed_sources_arp_na_dhcp_offers_and_router_advertisements(fabric, attacker):
    a = attacker
    before = a.drops()
    assert set(before) == set(portsecurity.REASONS), before
    a.send(spoof.ping4(a.mac, a.tap_mac, "10.0.0.99", "10.0.0.12"),  # nobody's address, to b2
           spoof.ping4(a.mac, a.tap_mac, "10.0.0.12", "10.0.1.13"),  # b2's own CA, to b3
           spoof.ping6(a.mac, a.tap_mac, "fd00:b::99", "fd00:b::12"),
           spoof.arp(a.mac, "10.0.0.12", "10.0.0.1"),  # ARP claiming b2's address
           spoof.neighbor_advert(a.mac, "fd00:b::11", "fd00:b::12"),  # NA for b2's address
           spoof.dhcp_offer(a.mac, a.tap_mac, "10.0.0.11", "10.0.0.12", "10.0.0.77"),  # a rogue DHCP server
           spoof.router_advert(a.mac, a.tap_mac, "fd00:b::11", "fd00:b::12"))  # a rogue router
    a.settle()
    arrived = {f"{src} -> {dst}": a.arrived(src, dst) for src, dst in (
        ("10.0.0.99", "10.0.0.12"), ("10.0.0.12", "10.0.1.13"), ("fd00:b::99", "fd00:b::12"))}
    offers = [f for f in a.rx["b2"].frames if f[12:14] == b"\x08\x00" and f[23] == 17 and f[34:36] == b"\x00\x43"]
    adverts = [f for f in a.rx["b2"].frames if f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == 134]
    after = a.drops()
    delta = {reason: after[reason] - before[reason] for reason in portsecurity.REASONS}
    neighbours = netns.run(["ip", "-n", fabric.ns("hv1"), "neigh", "show", "dev", "tap-b1"]).output
    report(f"port security on hv1's tap-b1, b1 attacking: arrived {arrived}, DHCP offers at b2 {len(offers)}, "
           f"router advertisements at b2 {len(adverts)}; counters went up by {delta}")
    assert not any(arrived.values()) and not offers and not adverts
    assert delta == {"spoofed_source": 3, "spoofed_arp": 1, "spoofed_nd": 1, "dhcp_guard": 1, "router_guard": 1}
    assert not re.search(r"^10\.0\.0\.12 .*02:00:00:00:0b:01", neighbours, re.M), neighbours
    # the same counters in /metrics and in trace
    metrics = fabric.agents["hv1"].call(_scrape)
    assert f'nvfabric_port_security_drops_total{{port="b1",reason="spoofed_source"}} {after["spoofed_source"]}.0' \
        in metrics
    hv1 = fabric.agents["hv1"]
    t = hv1.read(lambda ag: trace(ag.catalog, ag.lookup_records(), ag.desired, "blue", ipaddress.ip_address(
        "10.0.0.99"), ipaddress.ip_address("10.0.0.12"), port="b1", drops={"b1": after}))
    assert t.verdict is Verdict.DROPPED and t.reason.startswith("port security, spoofed source")
    assert t.drops == after["spoofed_source"]


async def _scrape(agent) -> str:
    agent.metrics.port_security(await agent.port_drops())
    return generate_latest(agent.registry).decode()


def test_allowed_addresses_send_and_port_security_off_stops_at_the_receiver(fabric, attacker):
    """An appliance's prefix: b1 may send from 192.168.60.0/24 once it is in its `allowed_addresses`, and the
    other hosts deliver it once the routing domain has the customer route through b1 (what vouches for the
    prefix at hv1's PA). Port security off lets b1 send anything out of its port, and the receiving host still
    drops what no lookup record or route vouches for."""
    a = attacker
    hv1, hv2, b1 = fabric.agents["hv1"], fabric.agents["hv2"], VM["b1"].port()
    before = hv1.read(lambda ag: ag.catalog.routing_domains["blue"])
    with_route = dataclasses.replace(before, customer_routes=(
        CustomerRoute(ipaddress.ip_network("192.168.60.0/24"), ipaddress.ip_address("10.0.0.11")),))
    try:
        for host in ("hv1", "hv2", "hv3"):
            fabric.agents[host].call(lambda ag: ag.put_routing_domain(with_route))
        hv1.call(lambda ag: ag.put_port(dataclasses.replace(
            b1, allowed_addresses=(ipaddress.ip_network("192.168.60.0/24"),))))
        a.send(spoof.ping4(a.mac, a.tap_mac, "192.168.60.5", "10.0.0.12"),
               spoof.ping4(a.mac, a.tap_mac, "192.168.61.5", "10.0.0.12"))
        a.settle()
        assert a.arrived("192.168.60.5", "10.0.0.12") == ["b2"] and not a.arrived("192.168.61.5", "10.0.0.12")
        hv1.call(lambda ag: ag.put_port(dataclasses.replace(b1, port_security=False)))
        assert "b1" not in hv1.call(lambda ag: ag.port_drops())
        not_vouched = hv2.call(lambda ag: ag.decap_counters())["not_vouched"]
        a.send(spoof.ping4(a.mac, a.tap_mac, "10.0.0.99", "10.0.0.12"))
        a.settle()
        assert not a.arrived("10.0.0.99", "10.0.0.12")
        after = hv2.call(lambda ag: ag.decap_counters())["not_vouched"]
        assert after > not_vouched
        report("allowed_addresses 192.168.60.0/24 on b1 + customer route via b1: 192.168.60.5 reached b2, "
               f"192.168.61.5 did not; port_security false: 10.0.0.99 left hv1, hv2 dropped it (not_vouched "
               f"{not_vouched} -> {after})")
    finally:
        hv1.call(lambda ag: ag.put_port(b1))
        for host in ("hv1", "hv2", "hv3"):
            fabric.agents[host].call(lambda ag: ag.put_routing_domain(before))
    assert set(hv1.call(lambda ag: ag.port_drops())["b1"]) == set(portsecurity.REASONS)


def test_an_agent_restart_keeps_port_security_throughout_and_adopts_the_table(fabric, attacker):
    a = attacker

    def table_handles() -> dict[str, int]:
        out = netns.run(["ip", "netns", "exec", fabric.ns("hv1"), "nft", "-j", "-a", "list", "table", "inet",
                         "nvfabric-ports"]).output
        items = json.loads(out)["nftables"]
        return {f"{k}:{i[k].get('name', '')}": i[k]["handle"] for i in items for k in ("table", "chain", "set")
                if k in i}

    handles = table_handles()
    before = a.drops()["spoofed_source"]
    fabric.stop_agent("hv1")
    try:
        a.send(spoof.ping4(a.mac, a.tap_mac, "10.0.0.99", "10.0.0.12"))  # while no agent runs
        a.settle()
        assert not a.arrived("10.0.0.99", "10.0.0.12")
    finally:
        fabric.start_agent("hv1")
    after = a.drops()["spoofed_source"]
    assert after == before + 1  # counted while the agent was away, and not reset by its start
    assert table_handles() == handles  # adopted, not rebuilt
    report(f"agent restart on hv1: the spoofed packet sent meanwhile dropped and counted ({before} -> {after}), "
           "the table adopted (same handles)")


def _decap(fabric) -> dict[str, int]:
    """hv1's decapsulation counters, as its agent reads them (and reports them in its status)."""
    counts = fabric.agents["hv1"].call(lambda a: a.decap_counters())
    assert fabric.agents["hv1"].read(lambda a: a.status()).decap == counts
    return counts


def _icmp_in_echos(ns: str) -> int:
    lines = [ln.split() for ln in netns.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]).output.splitlines()
             if ln.startswith("Icmp:")]
    return int(lines[1][lines[0].index("InEchos")])


def test_gre_nobody_vouches_for_never_arrives_anywhere(fabric):
    """hv2 (a known PA) attacks hv1: an unknown VSID, key 0, a tenant hv2 does not host, an inner source that
    is not hv2's, and an inner packet for hv1's own PA. Captured where each would arrive: nothing does, and
    hv1 counts each by its reason."""
    hv1, hv2 = fabric.ns("hv1"), fabric.ns("hv2")
    before, echos = _decap(fabric), _icmp_in_echos(hv1)
    caps = {"hv3": Capture(fabric.ns("hv3"), "eth1", "/tmp/decap-hv3.pcap"),
            "b1": Capture(hv1, "tap-b1", "/tmp/decap-b1.pcap"),
            "r1": Capture(hv1, "tap-r1", "/tmp/decap-r1.pcap")}
    attacks = {  # marker -> (key, inner source, inner destination), each sent 5 times
        b"unknown-vsid": (9999 << 8, "10.0.0.12", HV["hv3"]),
        b"key-zero": (0, "10.0.0.12", HV["hv3"]),
        b"not-hosted": (6001 << 8, "10.0.0.13", "10.0.0.12"),  # red's VSID, r3's CA, to r1
        b"not-hv2s-ca": (5001 << 8, "10.0.1.13", "10.0.0.11"),  # b3's CA (at hv3), to b1
        b"to-hv1-itself": (5001 << 8, "10.0.0.12", HV["hv1"]),  # b2's CA (vouched), to hv1's own PA
    }
    for marker, (key, src, dst) in attacks.items():
        send_gre(hv2, HV["hv2"], HV["hv1"], gre(key) + inner(src, dst, b"nvf-attack-" + marker), count=5)
    after = wait_for(lambda: (c := _decap(fabric))["not_vouched"] - before["not_vouched"] >= 10 and c, 10,
                     "hv1 counts the attacks")
    pcaps = {name: cap.stop() for name, cap in caps.items()}
    for name, pcap in pcaps.items():
        assert b"nvf-attack-" not in pcap, f"an attack reached {name}"
    delta = {reason: after[reason] - before[reason] for reason in after}
    report(f"hv1 decapsulation drops for 25 attack packets from hv2: {delta}")
    assert delta["unknown_vsid"] == 10 and delta["not_vouched"] == 10, delta
    assert delta["vouched"] >= 5  # the packets for hv1's own PA: vouched, then unreachable in blue's VRF
    assert _icmp_in_echos(hv1) == echos, "hv1 answered an echo that came out of a tunnel"


def test_a_legitimate_sender_may_set_the_flow_id(fabric):
    """RFC 7637: the low byte of the key is the sender's entropy; b2's host sends to b1 with FlowID 7."""
    before = _decap(fabric)
    cap = Capture(fabric.ns("hv1"), "tap-b1", "/tmp/decap-flowid.pcap")
    send_gre(fabric.ns("hv2"), HV["hv2"], HV["hv1"], gre(5001 << 8 | 7) + inner("10.0.0.12", "10.0.0.11",
                                                                                 b"nvf-flow-id-7"), count=5)
    wait_for(lambda: _decap(fabric)["vouched"] - before["vouched"] >= 5, 10, "hv1 counts them vouched")
    assert cap.stop().count(b"nvf-flow-id-7") >= 5  # each request delivered to b1 (its reply carries it too)


def test_the_local_table_sits_after_the_tun_id_rules_on_every_host(fabric):
    for host in HV:
        for family in ("-4", "-6"):
            rules = netns.run(["ip", family, "-n", fabric.ns(host), "rule", "show"]).output.splitlines()
            assert not any(r.startswith("0:") for r in rules), (host, rules)
            assert any(r.startswith("999:\tfrom all iif nvf-gre4 unreachable") for r in rules), (host, rules)
            assert any(r.startswith("1100:\tfrom all lookup local") for r in rules), (host, rules)


def test_mtu_df_too_big_gets_frag_needed_and_tcp_moves_10_mb(fabric):
    out = netns.run(netns.in_netns(fabric.vm_ns["b1"], ["ping", "-4", "-c", "2", "-W", "2", "-M", "do", "-s", "1472",
                                                       "10.0.0.12"]), check=False).output
    assert re.search(r"[Ff]rag needed|mtu\s*=\s*\d+|Message too long", out), out
    report(f"1500-byte DF ping b1 -> b2: {out.strip().splitlines()[1] if len(out.splitlines()) > 1 else out}")
    server = subprocess.Popen(netns.in_netns(fabric.vm_ns["b2"], [sys.executable, "-c", SINK]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        started = time.monotonic()
        sent = netns.run(netns.in_netns(fabric.vm_ns["b1"], [sys.executable, "-c", SOURCE]), timeout=120).output
        server.wait(60)
        got = server.stdout.read()
    finally:
        if server.poll() is None:
            server.kill()
    assert got.strip() == str(10 << 20) == sent.strip(), (sent, got)
    report(f"TCP b1 -> b2 over NVGRE: 10 MiB in {time.monotonic() - started:.1f} s (incl. python start)")


def test_ipv6_too_big_gets_packet_too_big(fabric):
    # A guest that takes the host's router advertisement already knows the overlay's MTU (1438 here) and
    # never sends more; one that ignores the advertisement's MTU (as b1 does for this test) must be told by
    # the fabric: an ICMPv6 Packet Too Big.
    vm = fabric.vm_ns["b1"]
    learned = netns.run(netns.in_netns(vm, ["sysctl", "-n", "net.ipv6.conf.eth0.mtu"]), check=False).output.strip()
    netns.run(netns.in_netns(vm, ["sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra_mtu=0",
                                  "net.ipv6.conf.eth0.mtu=1500"]))
    try:
        out6 = netns.run(netns.in_netns(vm, ["ping", "-6", "-c", "2", "-W", "2", "-M", "do", "-s", "1452",
                                             "fd00:b::12"]), check=False).output
    finally:
        netns.run(netns.in_netns(vm, ["sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra_mtu=1"]))
    report(f"b1's IPv6 MTU from the advertisement: {learned}; with 1500, 1500-byte IPv6 ping b1 -> b2: "
           f"{out6.strip().splitlines()[1:2]}")
    assert re.search(r"[Pp]acket too big|mtu\s*=\s*\d+", out6), out6


SINK = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("10.0.0.12", 5555)); s.listen(1)
print("listening", flush=True)
c, _ = s.accept(); n = 0
while True:
    b = c.recv(65536)
    if not b: break
    n += len(b)
print(n)
"""
SOURCE = """
import socket
c = socket.create_connection(("10.0.0.12", 5555), timeout=60); data = b"x" * (1 << 20)
for _ in range(10): c.sendall(data)
c.close(); print(10 << 20)
"""


def test_bad_changes_are_refused_and_leave_nothing_half_applied(fabric):
    hv1 = fabric.agents["hv1"]
    catalog = hv1.read(lambda a: a.catalog)
    with pytest.raises(ModelError) as err:
        hv1.call(lambda a: a.put_port(Port("ghost", "tap-none", "02:00:00:00:0f:01", 5001,
                                           (ipaddress.ip_address("10.0.0.50"),))))
    assert err.value.field == "interface"
    assert hv1.read(lambda a: a.catalog) == catalog
    # a bad config file: a clear error naming the field, exit status 2, no kernel change
    bad = fabric.dir / "bad.yaml"
    bad.write_text(yaml.safe_dump({"asn": 65000, "router_id": "198.51.100.12", "provider_addresses": ["x"],
                                   "route_reflectors": [{"address": "198.51.100.100"}], "state_dir": "/tmp/x"}))
    out = subprocess.run([NVFABRIC, "agent", "--config", str(bad)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "provider_addresses[0]" in out.stderr, out.stderr
    report(f"bad config: exit {out.returncode}: {out.stderr.strip()}")


def test_a_kernel_refusal_is_reverted_completely(fabric):
    hv1 = fabric.agents["hv1"]
    before = netns.run(["ip", "-n", fabric.ns("hv1"), "route", "show", "table", "all", "proto", "78"]).output
    catalog = hv1.read(lambda a: a.catalog)
    # a macvlan cannot take an MTU above its lower device's: the kernel refuses the port's MTU (the
    # loopback, once the example here, is now refused before the kernel: hostagent/eligible.py)
    ns = fabric.ns("hv1")
    netns.run(["ip", "-n", ns, "link", "add", "mvl-lower", "type", "veth", "peer", "name", "mvl-peer"])
    netns.run(["ip", "-n", ns, "link", "add", "mvl0", "link", "mvl-lower", "type", "macvlan", "mode", "bridge"])
    with pytest.raises(KernelError) as kerr:
        hv1.call(lambda a: a.put_port(Port("mv-port", "mvl0", "02:00:00:00:0f:02", 5001,
                                           (ipaddress.ip_address("10.0.0.51"),), mtu=9000)))
    report(f"kernel refusal reverted: {kerr.value}")
    assert hv1.read(lambda a: a.catalog) == catalog
    after = netns.run(["ip", "-n", fabric.ns("hv1"), "route", "show", "table", "all", "proto", "78"]).output
    assert sorted(before.splitlines()) == sorted(after.splitlines())


def test_customer_route_via_a_vm_on_another_host(fabric):
    """HNV's customer route to an appliance: 192.168.50.0/24 via b3 (10.0.1.13, on hv3), given to every host
    with the routing domain. hv1 encapsulates to hv3's PA; hv3 routes it to b3's port; red knows nothing.
    The appliance answers from 192.168.50.1: port security drops that until the prefix is in b3's
    `allowed_addresses`."""
    b3 = fabric.vm_ns["b3"]
    hv3 = fabric.agents["hv3"]
    netns.run(["ip", "-n", b3, "addr", "add", "192.168.50.1/32", "dev", "lo"])
    before = fabric.agents["hv1"].read(lambda a: a.catalog.routing_domains["blue"])
    with_route = dataclasses.replace(before, customer_routes=(
        CustomerRoute(ipaddress.ip_network("192.168.50.0/24"), ipaddress.ip_address("10.0.1.13")),))
    try:
        assert not fabric.ping("b1", "192.168.50.1", count=1, wait=1)
        for host in ("hv1", "hv2", "hv3"):
            fabric.agents[host].call(lambda a: a.put_routing_domain(with_route))
        spoofed = hv3.call(lambda a: a.port_drops())["b3"]["spoofed_source"]
        assert not fabric.ping("b1", "192.168.50.1", count=1, wait=2)  # the reply's source is not b3's CA
        assert hv3.call(lambda a: a.port_drops())["b3"]["spoofed_source"] > spoofed
        hv3.call(lambda a: a.put_port(dataclasses.replace(
            VM["b3"].port(), allowed_addresses=(ipaddress.ip_network("192.168.50.0/24"),))))
        assert fabric.reaches("b1", "192.168.50.1") and fabric.reaches("b2", "192.168.50.1")
        route = netns.run(["ip", "-n", fabric.ns("hv3"), "route", "show", "vrf", "nvf-blue", "192.168.50.0/24"]).output
        assert "via 10.0.1.13 dev tap-b3" in route, route
        assert not fabric.ping("r1", "192.168.50.1", count=2, wait=1)
        report(f"customer route 192.168.50.0/24 via b3 (hv3): reached from b1 (hv1) and b2 (hv2); hv3: {route.strip()}")
    finally:
        for host in ("hv1", "hv2", "hv3"):
            fabric.agents[host].call(lambda a: a.put_routing_domain(before))
        hv3.call(lambda a: a.put_port(VM["b3"].port()))
        netns.run(["ip", "-n", b3, "addr", "del", "192.168.50.1/32", "dev", "lo"], check=False)
    assert not fabric.ping("b1", "192.168.50.1", count=2, wait=1)  # removed with the route


def _continuous_ping(fabric: Fabric, src: str, dst: str, seconds: float, interval: float = 0.05):
    count = int(seconds / interval)
    return subprocess.Popen(netns.in_netns(fabric.vm_ns[src], ["ping", "-D", "-i", str(interval), "-c", str(count),
                                                               "-W", "1", dst]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _loss_and_gap(output: str, interval: float) -> tuple[int, int, float]:
    seqs = [int(m.group(1)) for m in re.finditer(r"icmp_seq=(\d+)", output)]
    sent = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    assert sent, output
    transmitted, received = int(sent.group(1)), int(sent.group(2))
    gap = max((b - a for a, b in zip(seqs, seqs[1:], strict=False)), default=1) - 1
    return transmitted, received, gap * interval


def test_agent_sigkill_and_restart_during_a_ping_loses_nothing(fabric):
    """hv2's agent as a separate `nvfabric agent` process: SIGKILL it, start it again, mid-ping."""
    fabric.stop_agent("hv2")
    config = agent_config(fabric.topology, "hv2", fabric.dir)
    path = fabric.dir / "hv2.yaml"
    path.write_text(yaml.safe_dump({
        "asn": config.asn, "router_id": config.router_id,
        "provider_addresses": [str(a) for a in config.provider_addresses],
        "route_reflectors": [{"address": r.address} for r in config.route_reflectors],
        "state_dir": str(config.state_dir), "netns": config.netns, "eor_timeout": 20,
        "api": {"listen": "127.0.0.1:8500", "token": "kernel-test"},
    }))

    def spawn() -> subprocess.Popen[str]:
        return subprocess.Popen([NVFABRIC, "agent", "--config", str(path), "--log-level", "info"],
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def wait_running(proc: subprocess.Popen[str]) -> None:
        lines = []
        for line in proc.stdout or ():
            lines.append(line)
            if '"event": "started"' in line:  # its JSON log line once the service and the API run
                return
        raise AssertionError("agent did not start: " + "".join(lines[-20:]))

    first = spawn()
    try:
        _restart_during_ping(fabric, first, spawn, wait_running)
    finally:
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()
        fabric.start_agent("hv2")


def _restart_during_ping(fabric, first, spawn, wait_running) -> None:
    wait_running(first)
    assert fabric.reaches("b1", "10.0.0.12")
    pinger = _continuous_ping(fabric, "b1", "10.0.0.12", 25)
    time.sleep(3)  # pacing: the event falls inside the ping's fixed window, with replies before it
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    time.sleep(2)  # the subject: forwarding while no agent runs on hv2
    second = spawn()
    try:
        try:
            wait_running(second)
            out, _ = pinger.communicate(timeout=90)
        finally:
            if pinger.poll() is None:
                pinger.kill()
        transmitted, received, gap = _loss_and_gap(out, 0.05)
        report(f"SIGKILL + restart of hv2's agent during a ping b1 -> b2: {received}/{transmitted} replies, "
               f"longest gap {gap:.2f} s")
        assert received == transmitted, out[-500:]
        # the restarted agent still serves: b2 reaches b1 through hv2
        assert fabric.reaches("b2", "10.0.0.11")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)


def test_moving_a_vm_from_hv2_to_hv3_pings_resume(fabric):
    b2 = VM["b2"]
    assert fabric.reaches("b1", "10.0.0.12")
    pinger = _continuous_ping(fabric, "b1", "10.0.0.12", 20)
    time.sleep(2)  # pacing: the move falls inside the ping's fixed window, with replies before it
    fabric.plug(b2, host="hv3")  # the VM's interface now lives on hv3 (live migration)
    put_at = time.time()
    fabric.agents["hv3"].call(lambda a: a.put_port(b2.port()))
    # hv2 sees the higher sequence and stops announcing it, without being told (RFC 7432 section 15)
    wait_for(lambda: not any(r.local and r.port == "b2" for r in fabric.agents["hv2"].read(
                          lambda a: a.lookup_records())), 30, "hv2 to give b2 up")
    out, _ = pinger.communicate(timeout=60)
    transmitted, received, gap = _loss_and_gap(out, 0.05)
    replies = [float(m.group(1)) for m in re.finditer(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)]
    resumed = next((t for t in replies if t > put_at), None)
    assert resumed is not None, out[-400:]
    report(f"move b2 hv2 -> hv3: first reply {resumed - put_at:.2f} s after the port PUT on hv3; continuous ping "
           f"{received}/{transmitted}, longest gap {gap:.2f} s (from unplugging on hv2)")
    records = {str(r.ca): r for r in fabric.agents["hv1"].read(lambda a: a.lookup_records())
               if r.routing_domain == "blue"}
    assert str(records["10.0.0.12"].pa) == HV["hv3"]
    assert fabric.reaches("b1", "fd00:b::12")
    fabric.agents["hv2"].call(lambda a: a.delete_port("b2"))  # the orchestrator cleans up the old host


def test_both_reflectors_down_forwarding_continues(fabric):
    assert fabric.reaches("b1", "10.0.1.13")
    pinger = _continuous_ping(fabric, "b1", "10.0.1.13", 15)
    time.sleep(2)  # pacing: the kill falls inside the ping's fixed window, with replies before it
    fabric.kill_reflector("rr1")
    fabric.kill_reflector("rr2")
    wait_for(lambda: fabric.agents["hv1"].read(lambda a: a.status()).headless, 30, "headless")
    out, _ = pinger.communicate(timeout=60)
    transmitted, received, gap = _loss_and_gap(out, 0.05)
    report(f"both reflectors killed during a ping b1 -> b3: {received}/{transmitted} replies")
    assert received == transmitted, out[-400:]
    assert fabric.ping("r1", "10.0.0.13") and fabric.ping("b3", "10.0.0.11")
    # they come back: sessions re-establish, nothing was lost
    fabric.start_reflector("rr1")
    fabric.start_reflector("rr2")
    wait_for(lambda: fabric.agents["hv1"].read(lambda a: a.status()).synced, 90, "End-of-RIB again")
    assert fabric.reaches("b1", "10.0.1.13")
