"""The subnet gateway answers (VM phase): every host answers for the gateway addresses of its local ports' subnets,
ping (IPv4 and IPv6), ARP with the port's MAC, neighbour solicitations as a router; ICMP errors come from the
gateway; nothing but ICMP reaches the host through those addresses; a restarted agent keeps them.

The default topology and the two tenants of lab/fabric.py (agents in this process), as test_agent_tenants.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import subprocess
import sys
import threading
import time

import pytest

from nvfabric.hostagent.trace import Verdict, trace
from nvfabric.lab import netns
from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.fabric import VMS, Fabric, wait_for
from nvfabric.lab.topology import load
from nvfabric.vnet import vrfmark

pytestmark = pytest.mark.kernel
VM = {vm.name: vm for vm in VMS}
REPORT: list[str] = []


def report(line: str) -> None:
    REPORT.append(line)
    print(f"[gateway-kernel] {line}", flush=True)


def gateways(vm) -> list[str]:
    """The gateway addresses of the VM's subnet, as lab/fabric.py configures the VM's default routes."""
    out = ["10.0.1.1" if vm.vsid == 5002 else "10.0.0.1"]
    return out + (["fd00:b::1"] if any(":" in a for a in vm.addresses) else [])


@pytest.fixture(scope="module")
def fabric():
    topology = load(DEFAULT_TOPOLOGY)
    from nvfabric.lab import runner

    runner.up(topology)
    fab = Fabric(topology)
    try:
        fab.up()
        fab.wait_converged(60)
        yield fab
    finally:
        fab.close()
        runner.down(topology.name)
        print("\n".join(["", "gateway kernel figures:", *REPORT]), flush=True)


def _in_vm(fabric, vm: str, argv: list[str]) -> str:
    return netns.run(netns.in_netns(fabric.vm_ns[vm], argv), check=False).output


def _ping(fabric, vm: str, dst: str, *extra: str) -> str:
    family = "-6" if ":" in dst else "-4"
    return _in_vm(fabric, vm, ["ping", family, "-n", "-c", "1", "-W", "2", *extra, dst])


def test_every_vm_pings_its_gateways_and_the_reply_comes_from_the_gateway(fabric):
    for vm in VMS:
        for gw in gateways(vm):
            out = wait_for(lambda vm=vm, gw=gw: (o := _ping(fabric, vm.name, gw)) and f"bytes from {gw}: " in o and o,
                           20, f"{vm.name} pings {gw}")
            assert f"bytes from {gw}: icmp_seq=1" in out, out
            report(f"{vm.name} on {vm.host} -> {gw}: echo reply from {gw}")


def test_arp_gets_the_ports_mac_and_the_ipv6_gateway_is_a_router(fabric):
    for vm in VMS:
        tap_mac = netns.run(["ip", "-n", fabric.ns(vm.host), "-br", "link", "show", vm.tap]).output.split()[2]
        for gw in gateways(vm):
            _ping(fabric, vm.name, gw)
            family = "-6" if ":" in gw else "-4"
            neigh = _in_vm(fabric, vm.name, ["ip", family, "neigh", "show", gw])
            assert f"lladdr {tap_mac}" in neigh, (vm.name, gw, neigh)
            if ":" in gw:  # the NA had the router flag: the VRF forwards
                assert " router" in neigh, (vm.name, neigh)
                report(f"{vm.name}: {neigh.strip()}")


def test_icmp_errors_about_a_vms_packets_come_from_its_gateway(fabric):
    # TTL 1 towards a VM on another host: the sender's host sends the time exceeded
    for src, dst, want in (("b1", "10.0.0.12", "10.0.0.1"), ("b3", "10.0.0.11", "10.0.1.1"),
                           ("r3", "10.0.0.12", "10.0.0.1"), ("b1", "fd00:b::12", "fd00:b::1")):
        out = _ping(fabric, src, dst, "-t", "1")
        found = re.search(r"From (\S+) icmp_seq=1 (Time to live exceeded|Time exceeded)", out)
        report(f"{src} -> {dst} with TTL 1: {found.group(0) if found else out.strip()!r}")
        assert found and found.group(1) == want, out


PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.settimeout(2)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except TimeoutError:
    print("nothing")
except ConnectionRefusedError:
    print("refused")
"""

LISTEN = """
import socket, sys, time
held = []
for port in (8500, 179):
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("::", port))
        s.listen()
        held.append(s)
    except OSError:
        pass  # already listened to (the agent's API): all the better
print("listening", flush=True)
time.sleep(120)  # holds the ports until the test kills it
"""


def _guard_drops(fabric, host: str) -> int:
    out = netns.run(["ip", "netns", "exec", fabric.ns(host), "nft", "-j", "list", "chain", "inet", vrfmark.TABLE,
                     "input"]).output
    return sum(e["counter"]["packets"] for item in json.loads(out)["nftables"] if "rule" in item
               for e in item["rule"]["expr"] if "counter" in e)


def test_nothing_but_icmp_reaches_the_host_through_the_gateway_address(fabric):
    # the worst case: services on every address of the host, and sockets outside the VRF accepting connections
    # that arrive through it (tcp_l3mdev_accept=1); only the input guard stands between the VM and them
    ns = fabric.ns("hv1")
    netns.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_l3mdev_accept=1"])
    listener = subprocess.Popen(netns.in_netns(ns, [sys.executable, "-c", LISTEN]), stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "listening"
        before = _guard_drops(fabric, "hv1")
        for gw in ("10.0.0.1", "fd00:b::1"):
            for port in (8500, 179):
                answer = _in_vm(fabric, "b1", [sys.executable, "-c", PROBE, gw, str(port)]).strip()
                report(f"b1 -> TCP {gw} port {port}: {answer}")
                assert answer == "nothing", (gw, port, answer)
        after = _guard_drops(fabric, "hv1")
        assert after > before, (before, after)  # dropped by the guard, not by chance
        # ... while the host's own listener is there: from the host itself it answers
        assert "connected" in netns.run(netns.in_netns(ns, [sys.executable, "-c", PROBE, "127.0.0.1", "8500"])).output
        # and ping still works meanwhile
        assert "bytes from 10.0.0.1" in _ping(fabric, "b1", "10.0.0.1")
    finally:
        listener.kill()
        listener.wait()
        netns.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_l3mdev_accept=0"])


def test_trace_says_the_host_answers_for_the_gateway(fabric):
    hv1 = fabric.agents["hv1"]
    t = hv1.read(lambda ag: trace(ag.catalog, ag.lookup_records(), ag.desired, "blue",
                                  ipaddress.ip_address("10.0.0.11"), ipaddress.ip_address("10.0.0.1")))
    assert t.verdict is Verdict.ANSWERED and t.reason.startswith("answered by this host (subnet gateway of VSID 5001)")
    assert t.route is not None and t.route.startswith("local 10.0.0.1 dev nvf-blue table ")
    # the route the trace names is the kernel's
    table = t.route.split()[-1]
    got = netns.run(["ip", "-n", fabric.ns("hv1"), "route", "get", "10.0.0.1", "vrf", "nvf-blue"]).output
    assert got.startswith("local 10.0.0.1 dev nvf-blue table " + table), got


def test_a_restarted_agent_keeps_the_addresses_without_writing_them(fabric):
    ns = fabric.ns("hv2")
    shown = netns.run(["ip", "-n", ns, "addr", "show", "dev", "nvf-blue"]).output
    assert {"10.0.0.1/32", "10.0.1.1/32", "fd00:b::1/128"} <= set(re.findall(r"inet6? (\S+)", shown)), shown
    monitor = subprocess.Popen(["stdbuf", "-oL", "ip", "-n", ns, "monitor", "address"], stdout=subprocess.PIPE,
                               text=True)
    events: list[str] = []

    def read() -> None:
        assert monitor.stdout is not None
        for line in monitor.stdout:
            events.append(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        # a change the monitor must see first, so that its silence about ours means something
        # (the monitor subscribes some time after it starts: the change is made again until it is seen)
        def seen() -> bool:
            return any("192.0.2.77" in e for e in events)

        end = time.monotonic() + 30
        while not seen():
            assert time.monotonic() < end, "the monitor never saw an address change"
            netns.run(["ip", "-n", ns, "addr", "replace", "192.0.2.77/32", "dev", "lo"])
            with contextlib.suppress(TimeoutError):
                wait_for(seen, 1, "the monitor to see an address change")
            if not seen():
                netns.run(["ip", "-n", ns, "addr", "del", "192.0.2.77/32", "dev", "lo"], check=False)
        netns.run(["ip", "-n", ns, "addr", "replace", "192.0.2.77/32", "dev", "lo"])  # (present, whatever was seen)
        fabric.stop_agent("hv2")
        fabric.start_agent("hv2")
        wait_for(lambda: fabric.agents["hv2"].read(lambda a: a.status()).synced, 60, "hv2 synced after its restart")
        assert "bytes from 10.0.0.1" in _ping(fabric, "b2", "10.0.0.1")
        # a last change: once the monitor has printed it, it has printed everything before it
        before = len(events)
        netns.run(["ip", "-n", ns, "addr", "del", "192.0.2.77/32", "dev", "lo"])
        wait_for(lambda: any(e.startswith("Deleted") and "192.0.2.77" in e for e in events[before:]), 10,
                 "the monitor")
    finally:
        monitor.terminate()
        monitor.wait(10)
    report(f"hv2's agent restarted: address events meanwhile: {''.join(events).strip()!r}")
    assert not [e for e in events if "nvf-" in e], events
