"""vnet's netlink layer on a real kernel (VM phase): two hosts h1, h2 joined by an underlay veth, a VM
namespace behind a tap on each; the whole dataplane (docs/dataplane.md) is created
by observe -> diff -> apply only (no `ip` for anything we own), then checked by pings, bytes on the wire
and read-back."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import os
import time
from dataclasses import dataclass

import pytest

from nvfabric.lab import netns
from nvfabric.vnet.kernel.apply import Report, apply
from nvfabric.vnet.kernel.diff import Action, Plan, diff
from nvfabric.vnet.kernel.netns import RtnlSocket
from nvfabric.vnet.kernel.objects import (
    EncapRoute,
    FwmarkRule,
    KernelObject,
    LocalPortRoute,
    NvgreDevice,
    PermanentNeighbour,
    ProxyNeighbour,
    Sysctl,
    TunIdRule,
    UnreachableRoute,
    ViaRoute,
    Vrf,
    VrfPort,
)
from nvfabric.vnet.kernel.observe import observe

pytestmark = pytest.mark.kernel

RMAC = "02:00:5e:10:00:01"
VSID = 5001
TABLE = 100
TAG = f"vn{os.getpid() % 100000}"
H = {1: f"{TAG}-h1", 2: f"{TAG}-h2"}
VM = {1: f"{TAG}-vm1", 2: f"{TAG}-vm2"}
PA = {4: {1: "198.51.100.1", 2: "198.51.100.2"}, 6: {1: "2001:db8::1", 2: "2001:db8::2"}}
CA = {4: {1: "10.1.0.10", 2: "10.1.0.20"}, 6: {1: "fd00:b::10", 2: "fd00:b::20"}}
DEV = {4: "nvf-gre4", 6: "nvf-gre6"}


def host_state(i: int, pa_family_for: dict[int, int]) -> set[KernelObject]:
    """Host i's desired objects; `pa_family_for[ca_family]` = underlay family used to reach the peer's CA."""
    peer, tap = 3 - i, f"tap{i}"
    state: set[KernelObject] = {
        Vrf("nvf-rd1", TABLE),
        VrfPort(tap, "nvf-rd1", 1438),  # 1500 - 62: fits the IPv6-outer encapsulation too
        UnreachableRoute(TABLE, 4),
        UnreachableRoute(TABLE, 6),
        ProxyNeighbour(tap, CA[6][peer]),
    }
    for path, value in [
        ("net/ipv4/ip_forward", "1"), ("net/ipv6/conf/all/forwarding", "1"), ("net/ipv4/conf/all/rp_filter", "0"),
        (f"net/ipv4/conf/{tap}/proxy_arp", "1"), (f"net/ipv4/neigh/{tap}/proxy_delay", "0"),
        (f"net/ipv6/conf/{tap}/proxy_ndp", "1"),
    ]:
        state.add(Sysctl(path, value))
    for pa_family, dev in DEV.items():
        state.add(NvgreDevice(dev, pa_family, RMAC))
        for nh in ("169.254.0.1", "fe80::1"):
            state.add(PermanentNeighbour(dev, nh, RMAC))
        for ca_family in (4, 6):
            state.add(TunIdRule(ca_family, dev, VSID << 8, TABLE, 900))
    for ca_family in (4, 6):
        state.add(LocalPortRoute(TABLE, f"{CA[ca_family][i]}/{32 if ca_family == 4 else 128}", tap))
        pa_family = pa_family_for[ca_family]
        state.add(EncapRoute(TABLE, f"{CA[ca_family][peer]}/{32 if ca_family == 4 else 128}", VSID,
                             PA[pa_family][peer], DEV[pa_family]))
    return state


def sysctl_paths(state: set[KernelObject]) -> list[str]:
    return [o.path for o in state if isinstance(o, Sysctl)]


@dataclass
class Hosts:
    sockets: dict[int, RtnlSocket]

    def reconcile(self, i: int, state: set[KernelObject]) -> tuple[Plan, Report]:
        async def go() -> tuple[Plan, Report]:
            plan = diff(state, await observe(self.sockets[i], sysctl_paths(state)))
            return plan, await apply(self.sockets[i], plan)
        plan, report = asyncio.run(go())
        assert report.ok, report.errors
        return plan, report

    def pending(self, i: int, state: set[KernelObject]) -> Plan:
        async def go() -> Plan:
            return diff(state, await observe(self.sockets[i], sysctl_paths(state)))
        return asyncio.run(go())


def sh(*argv: str, check: bool = True) -> str:
    return netns.run(list(argv), check=check).output


def ping(family: int, dst: str, deadline: float = 20.0) -> None:
    """Poll until one ping from vm1 gets through, or fail with the last output."""
    end = time.monotonic() + deadline
    while True:
        out = netns.run(netns.in_netns(VM[1], ["ping", f"-{family}", "-c1", "-W2", dst]), check=False)
        if out.returncode == 0:
            return
        if time.monotonic() > end:
            pytest.fail(f"vm1 cannot ping {dst}: {out.output}")


@pytest.fixture(scope="module")
def hosts():
    for ns in [*H.values(), *VM.values()]:
        netns.create(ns)
    sh("modprobe", "vrf", check=False)
    sh("modprobe", "ip_gre", check=False)
    sh("modprobe", "ip6_gre", check=False)
    lines = [netns.veth_line(H[1], "u1", H[2], "u2")]
    for i in (1, 2):
        lines.append(netns.veth_line(H[i], f"tap{i}", VM[i], "eth0"))
    netns.ip_batch(lines)
    for i in (1, 2):
        netns.ip_batch([
            f"addr add {PA[4][i]}/24 dev u{i}", f"addr add {PA[6][i]}/64 dev u{i} nodad", f"link set u{i} up",
        ], H[i])
        netns.ip_batch([
            f"addr add {CA[4][i]}/24 dev eth0", f"addr add {CA[6][i]}/64 dev eth0 nodad", "link set eth0 up",
            "route add default via 10.1.0.1",
        ], VM[i])
    sockets = {i: RtnlSocket(H[i]) for i in (1, 2)}
    try:
        yield Hosts(sockets)
    finally:
        for s in sockets.values():
            s.close()
        for ns in [*H.values(), *VM.values()]:
            netns.destroy(ns)


STRAIGHT = {4: 4, 6: 6}  # IPv4 CAs over IPv4 PAs, IPv6 CAs over IPv6 PAs
CROSSED = {4: 6, 6: 4}  # IPv4 CAs over IPv6 PAs, IPv6 CAs over IPv4 PAs


@pytest.mark.parametrize("combo", [STRAIGHT, CROSSED], ids=["ca4-pa4+ca6-pa6", "ca4-pa6+ca6-pa4"])
def test_vm1_pings_vm2_for_ipv4_and_ipv6_cas_over_both_pa_families(hosts, combo):
    for i in (1, 2):
        hosts.reconcile(i, host_state(i, combo))
    ping(4, CA[4][2])
    ping(6, CA[6][2])
    # the routes we read back are the ones we asked for, via the device of the PA's family
    for i in (1, 2):
        assert hosts.pending(i, host_state(i, combo)) == Plan(())


def _gre_keys(pcap: bytes) -> list[tuple[int, int, int, int]]:
    """(outer IP version, GRE flags, GRE protocol, GRE key) of every GRE packet in a pcap (Ethernet)."""
    out = []
    offset = 24
    while offset + 16 <= len(pcap):
        incl = struct.unpack_from("=I", pcap, offset + 8)[0]
        frame = pcap[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        if ethertype == 0x0800 and frame[14 + 9] == 47:
            gre = frame[14 + (frame[14] & 0xF) * 4 :]
            version = 4
        elif ethertype == 0x86DD and frame[14 + 6] == 47:
            gre = frame[14 + 40 :]
            version = 6
        else:
            continue
        flags, proto, key = struct.unpack_from("!HHI", gre, 0)
        out.append((version, flags, proto, key))
    return out


def test_gre_key_on_the_wire_is_vsid_shifted_by_8_for_both_pa_families(hosts, tmp_path_factory):
    for i in (1, 2):
        hosts.reconcile(i, host_state(i, STRAIGHT))
    ping(4, CA[4][2])
    path = f"/tmp/{TAG}-u1.pcap"  # /tmp is a writable overlay inside the VM
    dump = subprocess.Popen(netns.in_netns(H[1], ["tcpdump", "-i", "u1", "-c", "4", "-w", path, "-U", "proto", "47"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 30
        while dump.poll() is None and time.monotonic() < end:
            # IPv4 CA over the IPv4 PA and IPv6 CA over the IPv6 PA, request and reply each
            ping(4, CA[4][2])
            ping(6, CA[6][2])
        assert dump.poll() == 0, dump.stderr.read().decode() if dump.poll() is not None else "tcpdump saw < 4 packets"
    finally:
        if dump.poll() is None:
            dump.kill()
    with open(path, "rb") as f:
        keys = _gre_keys(f.read())
    os.unlink(path)
    assert {v for v, *_ in keys} == {4, 6}, keys
    for _version, flags, proto, key in keys:
        assert flags == 0x2000  # only K: no checksum, no sequence number (RFC 7637)
        assert proto == 0x6558  # transparent Ethernet bridging
        assert key == VSID << 8 == 0x138900


def test_reapplying_the_same_state_sends_nothing(hosts):
    for i in (1, 2):
        hosts.reconcile(i, host_state(i, STRAIGHT))
    for i in (1, 2):
        plan, report = hosts.reconcile(i, host_state(i, STRAIGHT))
        assert len(plan) == 0 and report.requests == 0


def test_changing_one_route_is_a_single_replace(hosts):
    for i in (1, 2):
        hosts.reconcile(i, host_state(i, STRAIGHT))
    before = {obj for obj in host_state(1, STRAIGHT) if isinstance(obj, EncapRoute) and obj.family == 4}.pop()
    # the peer moved its IPv4 CA behind its IPv6 PA (e.g. a live migration to another host would change the PA)
    changed = {4: 6, 6: 6}
    plan, report = hosts.reconcile(1, host_state(1, changed))
    assert [op.action for op in plan.ops] == [Action.REPLACE]
    assert plan.ops[0].old == before and plan.ops[0].obj.pa == PA[6][2] and plan.ops[0].obj.dev == "nvf-gre6"
    assert report.requests == 1
    route = netns.run(["ip", "-n", H[1], "route", "show", "table", str(TABLE), "10.1.0.20"]).output
    assert "encap ip6" in route and "2001:db8::2" in route and "nvf-gre6" in route, route
    ping(4, CA[4][2])
    hosts.reconcile(1, host_state(1, STRAIGHT))


def test_restart_adopts_existing_objects_and_a_ping_meanwhile_loses_nothing(hosts):
    for i in (1, 2):
        hosts.reconcile(i, host_state(i, STRAIGHT))
    ping(4, CA[4][2])
    vrf_index = netns.run(["ip", "-n", H[1], "-o", "link", "show", "nvf-rd1"]).output.split(":")[0]
    pinger = subprocess.Popen(netns.in_netns(VM[1], ["ping", "-4", "-c", "40", "-i", "0.05", "-W", "2", CA[4][2]]),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # a new agent: fresh sockets, no memory of what it did; it reads the kernel and finds nothing to do
        for i in (1, 2):
            fresh = Hosts({i: RtnlSocket(H[i])})
            try:
                plan, report = fresh.reconcile(i, host_state(i, STRAIGHT))
            finally:
                fresh.sockets[i].close()
            assert len(plan) == 0 and report.requests == 0
        # a host agent reads its routes through a child process: the same objects as read here
        in_loop = asyncio.run(observe(hosts.sockets[1]))
        assert asyncio.run(observe(hosts.sockets[1], (), True)) == in_loop
        assert [o for o in in_loop if isinstance(o, EncapRoute)]
        out, _ = pinger.communicate(timeout=60)
    finally:
        if pinger.poll() is None:
            pinger.kill()
    assert " 0% packet loss" in out, out
    assert netns.run(["ip", "-n", H[1], "-o", "link", "show", "nvf-rd1"]).output.split(":")[0] == vrf_index


def test_objects_that_are_not_ours_are_left_alone(hosts):
    state = host_state(1, STRAIGHT)
    hosts.reconcile(1, state)
    netns.ip_batch([
        f"route add 10.7.0.0/24 dev tap1 table {TABLE} proto static",  # another protocol in our table
        "link add blue type vrf table 200", "link set blue up",  # another VRF
        "route add 10.8.0.0/24 dev blue table 200",
        "rule add iif nvf-gre4 tun_id 77 lookup 200 pref 950",  # a rule in our range without our protocol
        "neigh add 169.254.0.9 lladdr 02:00:00:00:00:09 dev nvf-gre4 nud permanent",
        # our protocol number on an encap route no VSID makes (id 5: VSID 0): someone else's, not a crash
        f"route add 10.9.0.9/32 encap ip id 5 dst 198.51.100.9 dev nvf-gre4 table {TABLE} proto 78",
    ], H[1])
    try:
        ours = asyncio.run(observe(hosts.sockets[1]))
        assert asyncio.run(observe(hosts.sockets[1], (), True)) == ours
        assert not [o for o in ours if "blue" in repr(o) or "10.7.0.0" in repr(o) or "169.254.0.9" in repr(o)
                    or "10.9.0.9" in repr(o)]
        # dropping our local IPv4 port route deletes exactly that route and nothing of the others
        smaller = {o for o in state if not (isinstance(o, LocalPortRoute) and o.family == 4)}
        plan, _ = hosts.reconcile(1, smaller)
        assert [(op.action, type(op.obj)) for op in plan.ops] == [(Action.DELETE, LocalPortRoute)]
        assert "10.7.0.0/24" in netns.run(["ip", "-n", H[1], "route", "show", "table", str(TABLE)]).output
        assert "10.8.0.0/24" in netns.run(["ip", "-n", H[1], "route", "show", "table", "200"]).output
        assert "tun_id 77" in netns.run(["ip", "-n", H[1], "rule"]).output
        assert "169.254.0.9" in netns.run(["ip", "-n", H[1], "neigh", "show", "dev", "nvf-gre4"]).output
    finally:
        netns.ip_batch(["route del 10.7.0.0/24 table 100", "route del 10.9.0.9/32 table 100", "link del blue",
                        "rule del pref 950", "neigh del 169.254.0.9 dev nvf-gre4"], H[1])
        hosts.reconcile(1, state)


def test_a_hand_made_device_with_our_name_is_replaced_by_a_flow_based_one():
    ns = f"{TAG}-dev"
    netns.create(ns)
    try:
        netns.ip_batch(["link add nvf-gre4 type gretap key 7 nocsum"], ns)  # ours by name, but keyed
        want = {NvgreDevice("nvf-gre4", 4, RMAC)}
        with RtnlSocket(ns) as sock:
            async def go() -> tuple[Plan, Report, set]:
                plan = diff(want, await observe(sock))
                report = await apply(sock, plan)
                return plan, report, await observe(sock)
            plan, report, after = asyncio.run(go())
        assert [op.action for op in plan.ops] == [Action.REPLACE] and plan.ops[0].old.external is False
        assert report.ok and after == want
        assert "gretap external" in netns.run(["ip", "-n", ns, "-d", "link", "show", "nvf-gre4"]).output
    finally:
        netns.destroy(ns)


def _snmp_frag_creates(ns: str) -> int:
    lines = [ln.split() for ln in netns.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]).output.splitlines()
             if ln.startswith("Ip:")]
    return int(lines[1][lines[0].index("FragCreates")])


def test_nvgre_mtu_counts_the_whole_encapsulation_so_df_packets_get_frag_needed_not_fragmented(hosts):
    """RFC 7637 over IPv4 costs 42 bytes: a 1500 underlay carries 1458-byte inner packets. The kernel's own
    gretap MTU (1462) let 1459-1462-byte DF packets through as fragmented outer packets."""
    def underlay_ports(i: int) -> set[KernelObject]:
        # ports at the underlay MTU (as vnet.desired makes them): a 1438 port would drop the VM's 1458-byte
        # packets silently on the way in (ENOBUFS in the VM), before the NVGRE device could answer
        return {VrfPort(o.name, o.vrf, 1500) if isinstance(o, VrfPort) else o for o in host_state(i, STRAIGHT)}

    for i in (1, 2):
        hosts.reconcile(i, underlay_ports(i))
    assert "mtu 1458" in sh("ip", "-n", H[1], "link", "show", "nvf-gre4")
    assert "mtu 1438" in sh("ip", "-n", H[1], "link", "show", "nvf-gre6")
    ping(4, CA[4][2])
    frags = _snmp_frag_creates(H[1])
    out = sh(*netns.in_netns(VM[1], ["ping", "-4", "-c1", "-W2", "-M", "do", "-s", "1430", CA[4][2]]))
    assert "1438 bytes from" in out, out  # 1458-byte packet: fits
    assert _snmp_frag_creates(H[1]) == frags  # and left whole
    for size in (1431, 1432, 1433, 1434):  # 1459..1462-byte packets
        sh(*netns.in_netns(VM[1], ["ip", "route", "flush", "cache"]))  # forget the learnt PMTU: ask the host again
        out = sh(*netns.in_netns(VM[1], ["ping", "-4", "-c1", "-W2", "-M", "do", "-s", str(size), CA[4][2]]),
                 check=False)
        assert "Frag needed" in out and "mtu = 1458" in out, (size, out)
    assert _snmp_frag_creates(H[1]) == frags
    for i in (1, 2):
        hosts.reconcile(i, host_state(i, STRAIGHT))


def test_fwmark_rules_and_via_routes_read_back_and_a_customer_route_via_a_local_vm_forwards(hosts):
    """Customer route 10.9.0.0/24 via vm1's CA: h1 `via 10.1.0.10 dev tap1`, h2 an encap route to h1's PA."""
    extra1 = {ViaRoute(TABLE, "10.9.0.0/24", CA[4][1], "tap1"),
              FwmarkRule(6, TABLE, TABLE, 910, "lo", 58), FwmarkRule(4, 7, TABLE, 899, "u1")}
    # vm2's default gateway 10.1.0.1 is answered by proxy ARP once it has a route by another device
    extra2 = {EncapRoute(TABLE, "10.9.0.0/24", VSID, PA[4][1], DEV[4]), LocalPortRoute(TABLE, "10.1.0.1/32", DEV[4])}
    netns.ip_batch(["addr add 10.9.0.1/32 dev lo"], VM[1])
    try:
        hosts.reconcile(1, host_state(1, STRAIGHT) | extra1)
        hosts.reconcile(2, host_state(2, STRAIGHT) | extra2)
        assert hosts.pending(1, host_state(1, STRAIGHT) | extra1) == Plan(())
        rules = sh("ip", "-n", H[1], "-6", "rule")
        assert f"fwmark 0x{TABLE:x} iif lo ipproto ipv6-icmp lookup {TABLE}" in rules, rules
        assert "10.9.0.0/24 via 10.1.0.10 dev tap1" in sh("ip", "-n", H[1], "route", "show", "table", str(TABLE))
        out = netns.run(netns.in_netns(VM[2], ["ping", "-4", "-c1", "-W2", "10.9.0.1"]), check=False).output
        for _ in range(10):
            if " 0% packet loss" in out:
                break
            out = netns.run(netns.in_netns(VM[2], ["ping", "-4", "-c1", "-W2", "10.9.0.1"]), check=False).output
        assert " 0% packet loss" in out, out
    finally:
        netns.ip_batch(["addr del 10.9.0.1/32 dev lo"], VM[1])
        for i in (1, 2):
            hosts.reconcile(i, host_state(i, STRAIGHT))
    assert "10.9.0.0" not in sh("ip", "-n", H[1], "route", "show", "table", str(TABLE))
    assert "fwmark" not in sh("ip", "-n", H[1], "-6", "rule")
