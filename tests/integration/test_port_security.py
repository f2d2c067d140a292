"""Port security (vnet/portsecurity.py) on this machine's nftables, with packets: a hypervisor namespace
routing between a VM's port (tap-b1, a veth) and a victim's, frames crafted in the VM's namespace
(lab/spoof.py). What the VM may send arrives at the victim; what it may not is dropped before routing and
counted on the port's counter for that reason. A marker packet the VM may send follows every attack, so
waiting for the marker is waiting for the verdict (no sleeps).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from nvfabric.lab import netns, spoof
from nvfabric.vnet import portsecurity as ps
from nvfabric.vnet.model import Port
from nvfabric.vnet.nftables import Nft

MAC = "02:00:00:00:0b:01"
B1 = Port("b1", "tap-b1", MAC, 5001, (ipaddress.ip_address("10.0.0.11"), ipaddress.ip_address("fd00:b::11")),
          allowed_addresses=(ipaddress.ip_network("192.168.50.0/24"), ipaddress.ip_network("192.168.60.5/32")))
VICTIM4, VICTIM6 = "10.0.9.2", "fd00:9::2"


def _pair(src: str, dst: str) -> bytes:
    return ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed


@dataclass
class Host:
    hv: str
    vm: str
    victim: str
    tap_mac: str
    rx: spoof.Receiver

    def drops(self) -> dict[str, int]:
        return asyncio.run(ps.PortSecurity(Nft(self.hv)).drops()).get("tap-b1", {})

    def send(self, *frames: bytes) -> None:
        spoof.send(self.vm, "eth0", *frames)

    def marker(self, seq: int) -> None:
        """A ping b1 may send (its own CA) to the victim, waited for: every frame sent before it was judged."""
        self.send(spoof.ping4(MAC, self.tap_mac, "10.0.0.11", VICTIM4, seq))
        assert self.rx.wait(_pair("10.0.0.11", VICTIM4) + bytes([8, 0])), "the marker did not arrive"
        self.rx.frames.clear()

    def neighbours(self) -> str:
        return netns.run(["ip", "-n", self.hv, "neigh", "show", "dev", "tap-b1"]).output


@pytest.fixture
def host(request: pytest.FixtureRequest) -> Iterator[Host]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    prefix = f"nps{os.getpid() % 10000}{zlib.crc32(request.node.name.encode()) % 1000}-"
    hv, vm, victim = prefix + "hv", prefix + "vm", prefix + "victim"
    for ns in (hv, vm, victim):
        netns.destroy(ns)
        netns.create(ns)
    rx = None
    try:
        netns.ip_batch([netns.veth_line(hv, "tap-b1", vm, "eth0"), netns.veth_line(hv, "tap-v", victim, "eth0")])
        netns.ip_batch(["addr add 10.0.0.1/24 dev tap-b1", "addr add fd00:b::1/64 dev tap-b1 nodad",
                        "addr add 10.0.9.1/24 dev tap-v", "addr add fd00:9::1/64 dev tap-v nodad",
                        "link set tap-b1 up", "link set tap-v up"], hv)
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.tap-b1.rp_filter=0"):
            netns.run(["ip", "netns", "exec", hv, "sysctl", "-qw", key])
        netns.ip_batch([f"link set eth0 address {MAC}", "link set eth0 up", "addr add 10.0.0.11/24 dev eth0",
                        "addr add fd00:b::11/64 dev eth0 nodad"], vm)
        netns.ip_batch([f"addr add {VICTIM4}/24 dev eth0", f"addr add {VICTIM6}/64 dev eth0 nodad", "link set eth0 up",
                        "route add default via 10.0.9.1", "route add ::/0 via fd00:9::1"], victim)
        tap_mac = netns.run(["ip", "-n", hv, "-br", "link", "show", "tap-b1"]).output.split()[2]
        asyncio.run(ps.PortSecurity(Nft(hv)).apply([B1]))
        rx = spoof.Receiver(victim, "eth0")
        h = Host(hv, vm, victim, tap_mac, rx)
        h.marker(1)
        yield h
    finally:
        if rx is not None:
            rx.close()
        for ns in (hv, vm, victim):
            netns.destroy(ns)


def test_spoofed_ipv4_sources_are_dropped_and_counted_its_own_and_allowed_ones_arrive(host: Host) -> None:
    frames = [spoof.ping4(MAC, host.tap_mac, "10.0.0.99", VICTIM4),  # nobody's
              spoof.ping4(MAC, host.tap_mac, "10.0.0.12", VICTIM4),  # another VM's CA
              spoof.ping4("02:00:00:00:0b:99", host.tap_mac, "10.0.0.11", VICTIM4, seq=7)]  # its CA, not its MAC
    host.send(*frames)
    host.marker(2)
    assert not host.rx.seen(_pair("10.0.0.99", VICTIM4)) and not host.rx.seen(_pair("10.0.0.12", VICTIM4))
    assert host.drops()[ps.SPOOFED_SOURCE] == 3
    # allowed addresses arrive: a prefix (an appliance's, behind a customer route) and an exact one
    host.send(spoof.ping4(MAC, host.tap_mac, "192.168.50.7", VICTIM4), spoof.ping4(MAC, host.tap_mac, "192.168.60.5",
                                                                                    VICTIM4))
    assert host.rx.wait(_pair("192.168.50.7", VICTIM4)) and host.rx.wait(_pair("192.168.60.5", VICTIM4))
    # ... and one next to the exact one is still nobody's
    host.send(spoof.ping4(MAC, host.tap_mac, "192.168.60.6", VICTIM4))
    host.marker(3)
    assert not host.rx.seen(_pair("192.168.60.6", VICTIM4))
    assert host.drops()[ps.SPOOFED_SOURCE] == 4
    # the exact addresses (the CA, the /32; the marker) were the hash set's, the prefix the interval set's
    kernel = asyncio.run(ps.PortSecurity(Nft(host.hv)).read())
    assert kernel is not None
    assert {k[2] for k in kernel.sets["inet", "src4_exact"]} == {ipaddress.ip_network("10.0.0.11/32"),
                                                                 ipaddress.ip_network("192.168.60.5/32")}
    assert {k[2] for k in kernel.sets["inet", "src4"]} == {ipaddress.ip_network("192.168.50.0/24")}


def test_spoofed_ipv6_sources_are_dropped_its_own_arrive(host: Host) -> None:
    host.send(spoof.ping6(MAC, host.tap_mac, "fd00:b::99", VICTIM6), spoof.ping6(MAC, host.tap_mac, "fd00:b::11",
                                                                                  VICTIM6))
    assert host.rx.wait(_pair("fd00:b::11", VICTIM6))
    host.marker(2)
    assert not host.rx.seen(_pair("fd00:b::99", VICTIM6))
    assert host.drops()[ps.SPOOFED_SOURCE] == 1


def test_dhcp_and_router_guards_drop_a_vms_offer_and_advertisement(host: Host) -> None:
    # from its own addresses, unicast to the victim: routed, were it not for the guards
    host.send(spoof.dhcp_offer(MAC, host.tap_mac, "10.0.0.11", VICTIM4, "10.0.9.77"),
              spoof.router_advert(MAC, host.tap_mac, "fd00:b::11", VICTIM6))
    host.marker(2)
    assert not host.rx.seen(_pair("10.0.0.11", VICTIM4)) and not host.rx.seen(_pair("fd00:b::11", VICTIM6))
    drops = host.drops()
    assert (drops[ps.DHCP_GUARD], drops[ps.ROUTER_GUARD], drops[ps.SPOOFED_SOURCE]) == (1, 1, 0)
    # a DHCP client's DISCOVER (from 0.0.0.0, its own MAC) passes: nothing counted
    host.send(spoof.dhcp_discover(MAC))
    host.marker(3)
    assert sum(host.drops().values()) == 2


def test_arp_and_neighbour_advertisements_only_for_its_own_addresses(host: Host) -> None:
    # ARP claiming another VM's address: the host must not learn 10.0.0.12 at b1's MAC
    host.send(spoof.arp(MAC, "10.0.0.12", "10.0.0.1"), spoof.arp(MAC, "0.0.0.0", "10.0.0.11"),  # a probe: fine
              spoof.arp(MAC, "10.0.0.11", "10.0.0.1"))  # its own: fine
    host.marker(2)
    neighbours = host.neighbours()
    assert "10.0.0.12 " not in neighbours and "10.0.0.11 " in neighbours, neighbours
    # neighbour advertisements: for another's address dropped, for its own passed
    host.send(spoof.neighbor_advert(MAC, "fd00:b::11", "fd00:b::12"),
              spoof.neighbor_advert(MAC, "fd00:b::11", "fd00:b::11"),
              spoof.neighbor_advert(MAC, "fe80::1234", "fe80::1234"))  # a random link-local identifier: fine
    host.marker(3)
    drops = host.drops()
    assert (drops[ps.SPOOFED_ARP], drops[ps.SPOOFED_ND], drops[ps.SPOOFED_SOURCE]) == (1, 1, 0)


def test_port_security_off_lets_spoofing_through_and_a_restart_adopts_without_a_write(host: Host) -> None:
    guard = ps.PortSecurity(Nft(host.hv))
    # a new agent on a kernel that has the tables: adopted, nothing written, counters kept
    host.send(spoof.ping4(MAC, host.tap_mac, "10.0.0.99", VICTIM4))
    host.marker(2)
    assert asyncio.run(guard.read()) == ps.elements([B1])  # every set read back, the raw NA targets too
    assert asyncio.run(guard.apply([B1])) == 0
    assert host.drops()[ps.SPOOFED_SOURCE] == 1
    # off: the port leaves the guarded set, spoofing passes
    written = asyncio.run(guard.apply([dataclasses.replace(B1, port_security=False)]))
    assert 0 < written <= ps.elements([B1]).size()
    host.send(spoof.ping4(MAC, host.tap_mac, "10.0.0.99", VICTIM4))
    assert host.rx.wait(_pair("10.0.0.99", VICTIM4))
    assert host.drops() == {}


def test_a_renewal_to_the_hosts_address_is_dropped_before_it_draws_a_port_unreachable(host: Host) -> None:
    # the agent answers DHCP from its packet socket (a copy taken before netfilter): the stack must not
    # answer the same request with ICMP port unreachable. A datagram to another closed port does draw one:
    # once it arrived, the renewal before it was judged.
    vm_rx = spoof.Receiver(host.vm, "eth0")
    try:
        unreachable = _pair("10.0.0.1", "10.0.0.11") + bytes([3, 3])
        host.send(spoof.ethernet(host.tap_mac, MAC, 0x0800, spoof.ipv4("10.0.0.11", "10.0.0.1", 17, spoof.udp4(
            "10.0.0.11", "10.0.0.1", 68, 67, b"renew"))))
        host.send(spoof.ethernet(host.tap_mac, MAC, 0x0800, spoof.ipv4("10.0.0.11", "10.0.0.1", 17, spoof.udp4(
            "10.0.0.11", "10.0.0.1", 68, 9, b"marker"))))
        assert vm_rx.wait(unreachable)
        assert sum(unreachable in frame for frame in vm_rx.frames) == 1
        assert sum(host.drops().values()) == 0  # not a spoof: not counted as one
    finally:
        vm_rx.close()
