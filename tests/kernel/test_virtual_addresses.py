"""A virtual address that keepalived moves, followed by the fabric (VM phase): default topology, our
reflectors, agents on hv1-hv3, the two tenants (lab/fabric.py), and two more blue VMs, ka on hv1 and kb on
hv2, each running Debian's keepalived with unicast peers (VRRP through the fabric, no multicast) for the
virtual address 10.0.0.100, which blue lets ka and kb hold. b3 (hv3, the other subnet) pings it every 50 ms
while ka's keepalived is stopped; b2 (hv2), not allowed to hold it, then announces it itself. And an IPv6
virtual address, fd00:b::100, moved by hand: the VM that takes it sends an unsolicited neighbour
advertisement (what keepalived does for an IPv6 address).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from nvfabric.lab import netns, runner, spoof
from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.fabric import BLUE, HV, VMS, Fabric, Vm, wait_for
from nvfabric.lab.topology import load
from nvfabric.vnet.model import VirtualAddress

pytestmark = pytest.mark.kernel

VIP = "10.0.0.100"
VIP6 = "fd00:b::100"
KA = Vm("ka", "hv1", "blue", 5001, "02:00:00:00:0c:01", ("10.0.0.21/24",))
KB = Vm("kb", "hv2", "blue", 5001, "02:00:00:00:0c:02", ("10.0.0.22/24",))
BLUE_VIP = dataclasses.replace(BLUE, virtual_addresses=(
    VirtualAddress(ipaddress.ip_address(VIP), (KA.name, KB.name)),
    VirtualAddress(ipaddress.ip_address(VIP6), (KA.name, KB.name))))
VM = {vm.name: vm for vm in VMS}
PING_LINE = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")


def report(line: str) -> None:
    print(f"[virtual-addresses] {line}", flush=True)


KEEPALIVED_CONF = """global_defs {{
    router_id {name}
}}
vrrp_instance blue_vip {{
    state {state}
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int 1
    unicast_src_ip {me}
    unicast_peer {{
        {peer}
    }}
    virtual_ipaddress {{
        {vip}/24 dev eth0
    }}
}}
"""


class Keepalived:
    """Debian's keepalived in a VM's namespace: VRRP only, in the foreground, logging to the console; its
    pid files and configuration in a directory of its own (the root file system may be read-only)."""

    def __init__(self, fabric: Fabric, vm: Vm, peer: Vm, priority: int, workdir: Path) -> None:
        self.dir = workdir / f"keepalived-{vm.name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "keepalived.conf"
        conf.write_text(KEEPALIVED_CONF.format(name=vm.name, state="MASTER" if priority > 100 else "BACKUP",
                                               priority=priority, me=vm.cas[0], peer=peer.cas[0], vip=VIP))
        self.log = self.dir / "console.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(netns.in_netns(fabric.vm_ns[vm.name], [
                "keepalived", "--vrrp", "-n", "-l", "-D", "-f", str(conf), "-p", str(self.dir / "keepalived.pid"),
                "-r", str(self.dir / "vrrp.pid"), "-c", str(self.dir / "checkers.pid")]),
                stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        """SIGTERM, as `systemctl stop` does: the master sends priority 0 and drops the address."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Pinger:
    """`ping -D -i 0.05` from a VM, its replies' timestamps parsed when stopped."""

    def __init__(self, fabric: Fabric, vm: str, address: str, path: Path) -> None:
        self.path = path
        self._out = open(path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(netns.in_netns(fabric.vm_ns[vm], ["ping", "-D", "-n", "-i", "0.05", address]),
                                     stdout=self._out, stderr=subprocess.STDOUT)

    def replies(self) -> list[float]:
        return [float(m.group(1)) for line in self.path.read_text(errors="replace").splitlines()
                if (m := PING_LINE.match(line))]

    def stop(self) -> list[float]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(10)
        self._out.close()
        return self.replies()


@pytest.fixture(scope="module")
def fabric():
    topology = load(DEFAULT_TOPOLOGY)
    runner.up(topology)
    fab = Fabric(topology)
    try:
        fab.up()
        for vm in (KA, KB):
            fab.vm_ns[vm.name] = f"{topology.name}.vm-{vm.name}"  # (close() removes it)
            fab.plug(vm)
        for agent in fab.agents.values():
            agent.call(lambda a: a.put_routing_domain(BLUE_VIP))
        for vm in (KA, KB):
            fab.agents[vm.host].call(lambda a, vm=vm: a.put_port(vm.port()))
        for vm in (*VMS, KA, KB):
            for host in HV:
                if host != vm.host and vm.tenant == "blue":
                    for ca in vm.cas:
                        wait_for(lambda h=host, ca=ca: fab.learned(h, ca), 60, f"{ca} on {host}")
        yield fab
    finally:
        fab.close()
        runner.down(topology.name)


def record(fabric: Fabric, host: str, address: str):
    """The lookup record `host` has for blue's `address`, or None."""
    return next((r for r in fabric.agents[host].read(lambda a: a.lookup_records())
                 if r.routing_domain == "blue" and str(r.ca) == address), None)


def virtual(fabric: Fabric, host: str, address: str = VIP) -> dict:
    status = fabric.agents[host].read(lambda a: a.status())
    entry = next(v for v in status.virtual_addresses if v["address"] == address)
    return {**entry, "claims": dict(status.claims)}


def test_keepalived_moves_the_address_and_the_fabric_follows_and_a_port_not_allowed_moves_nothing(fabric, tmp_path):
    ka = Keepalived(fabric, KA, KB, 150, tmp_path)
    kb = Keepalived(fabric, KB, KA, 100, tmp_path)
    pinger = None
    try:
        # ka becomes master, announces the address (gratuitous ARP): hv1 holds it, every host routes it there
        wait_for(lambda: (r := record(fabric, "hv3", VIP)) is not None and str(r.pa) == HV["hv1"], 60,
                 f"hv3's lookup record of {VIP} pointing at hv1")
        held = virtual(fabric, "hv1")
        report(f"hv1 after ka became master: {held}")
        assert held["holder"] == "ka" and held["seq"] >= 1 and held["claims"].get("accepted", 0) >= 1
        assert virtual(fabric, "hv2")["holder"] is None
        first_seq = held["seq"]
        assert fabric.reaches("b3", VIP, deadline=30), "b3 does not reach the virtual address on ka"

        pinger = Pinger(fabric, "b3", VIP, tmp_path / "ping.log")
        wait_for(lambda: len(pinger.replies()) >= 20, 30, "20 replies before the failover")
        stopped = time.time()
        ka.stop()
        # kb takes over: hv2 holds it with a sequence one above hv1's, hv1 and hv3 follow
        wait_for(lambda: (r := record(fabric, "hv3", VIP)) is not None and str(r.pa) == HV["hv2"], 60,
                 f"hv3's lookup record of {VIP} pointing at hv2")
        moved = time.time()
        wait_for(lambda: sum(1 for t in pinger.replies() if t > moved) >= 20, 30, "20 replies after the move")
        replies = pinger.stop()
        pinger = None

        around = [t for t in replies if t > stopped - 5]
        gaps = [(b - a, a) for a, b in zip(around, around[1:], strict=False)]
        gap, since = max(gaps)
        report(f"failover: ka's keepalived stopped at +0.000 s; the longest gap between replies to b3 was "
               f"{gap:.3f} s (from +{since - stopped:.3f} s); hv3 pointed at hv2 by +{moved - stopped:.3f} s "
               f"(polled); {len(replies)} replies in all (target: a gap under 2 s)")
        now_hv2, now_hv1 = virtual(fabric, "hv2"), virtual(fabric, "hv1")
        report(f"hv2 after the move: {now_hv2}; hv1: {now_hv1}")
        assert now_hv2["holder"] == "kb" and now_hv2["seq"] == first_seq + 1
        assert now_hv1["holder"] is None and now_hv1["pa"] == HV["hv2"]
        assert str(record(fabric, "hv3", VIP).mac) == KB.mac
        assert any(t > moved for t in replies), "the pings did not resume"

        # b2 (hv2), not allowed to hold the address, announces it: dropped and counted, refused, nothing moves
        before_drops = fabric.agents["hv2"].call(lambda a: a.port_drops())["b2"]["spoofed_arp"]
        before_refused = now_hv2["claims"].get("not_allowed", 0)
        b2 = VM["b2"]
        spoof.send(fabric.vm_ns["b2"], "eth0", spoof.arp(b2.mac, VIP, VIP), spoof.arp(b2.mac, VIP, VIP, op=2))
        wait_for(lambda: fabric.agents["hv2"].call(lambda a: a.port_drops())["b2"]["spoofed_arp"] >= before_drops + 2,
                 20, "b2's spoofed_arp counter")
        wait_for(lambda: virtual(fabric, "hv2")["claims"].get("not_allowed", 0) >= before_refused + 2, 20,
                 "hv2's refusal of b2's claims")
        after = virtual(fabric, "hv2")
        report(f"b2's gratuitous ARP for {VIP}: spoofed_arp +2, claims refused (not_allowed) +2; hv2: {after}")
        assert after["holder"] == "kb" and after["seq"] == first_seq + 1
        r = record(fabric, "hv3", VIP)
        assert str(r.pa) == HV["hv2"] and str(r.mac) == KB.mac
        assert fabric.reaches("b3", VIP, deadline=10)
    finally:
        if pinger is not None:
            pinger.stop()
        ka.stop()
        kb.stop()
        for k in (ka, kb):
            print(f"--- keepalived {k.dir.name}\n{k.output()[-3000:]}", flush=True)


def take(fabric: Fabric, vm: Vm, address: str) -> None:
    """`vm` takes the IPv6 `address` over: on its interface, then an unsolicited NA (override) for it."""
    netns.run(["ip", "-n", fabric.vm_ns[vm.name], "addr", "add", f"{address}/64", "dev", "eth0", "nodad"])
    spoof.send(fabric.vm_ns[vm.name], "eth0", spoof.neighbor_advert(vm.mac, address, address))


def test_an_unsolicited_neighbour_advertisement_moves_an_ipv6_virtual_address(fabric):
    take(fabric, KA, VIP6)
    wait_for(lambda: (r := record(fabric, "hv2", VIP6)) is not None and str(r.pa) == HV["hv1"], 60,
             f"hv2's lookup record of {VIP6} pointing at hv1")
    first = virtual(fabric, "hv1", VIP6)
    assert first["holder"] == "ka"
    assert fabric.reaches("b1", VIP6, deadline=20) and fabric.reaches("b2", VIP6, deadline=20)

    netns.run(["ip", "-n", fabric.vm_ns["ka"], "addr", "del", f"{VIP6}/64", "dev", "eth0"])
    take(fabric, KB, VIP6)
    wait_for(lambda: (r := record(fabric, "hv1", VIP6)) is not None and str(r.pa) == HV["hv2"], 60,
             f"hv1's lookup record of {VIP6} pointing at hv2")
    moved = virtual(fabric, "hv2", VIP6)
    report(f"{VIP6} moved by an unsolicited NA from kb: hv1 {virtual(fabric, 'hv1', VIP6)}; hv2 {moved}")
    assert moved["holder"] == "kb" and moved["seq"] == first["seq"] + 1
    assert virtual(fabric, "hv1", VIP6)["holder"] is None
    assert fabric.reaches("b1", VIP6, deadline=20) and fabric.reaches("b2", VIP6, deadline=20)
