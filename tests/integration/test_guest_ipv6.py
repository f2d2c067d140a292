"""Router advertisements and DHCPv6 (hostagent/guest/ra.py, dhcp6.py) against Debian's own clients, on this
machine's kernel: a hypervisor namespace whose port (tap-g1, a veth) leads to a VM namespace. Test equipment
stands in for the agent's responder: an AF_PACKET socket on the port answering router solicitations with
`ra.answer` and DHCPv6 with `dhcp6.answer`. `rdisc6` must show what the advertisement carries, `dhclient -6`
and `dhcpcd -6` must get the port's CA and the DNS configuration, and the guest's kernel must take them.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nvfabric.hostagent.guest import dhcp6, frames, ra
from nvfabric.hostagent.guest.offer import PortService
from nvfabric.lab import netns, spoof
from tests.integration.conftest import need

VM_MAC = "02:00:00:00:0c:01"
PORT = PortService(
    port="g1", interface="tap-g1", routing_domain="blue", vsid=5001, mac=VM_MAC,
    ipv4=None, ipv6=ipaddress.IPv6Interface("fd00:c::11/64"), gateway4=None,
    gateway6=ipaddress.IPv6Address("fd00:c::1"), mtu=1410,
    dns6=(ipaddress.IPv6Address("fd00:53::53"), ipaddress.IPv6Address("fd00:53::54")),
    search=("tenant.example", "corp.example"), lease_time=7200)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


class Responder(spoof.Receiver):
    """The port's answers: a capture on the host side whose frames are answered, replies sent back out of it."""

    def __init__(self, ns: str, interface: str, port: PortService) -> None:
        self.port = port
        self.answered: dict[str, int] = {"ra": 0, "dhcp6": 0}
        self.host_mac = b""
        super().__init__(ns, interface)
        self.host_mac = self._sock.getsockname()[4]
        self.duid = dhcp6.duid_ll(self.host_mac)

    def received(self, frame: bytes) -> None:
        if not self.host_mac:
            return
        for name, reply in self._answer(frame):
            self._sock.send(reply)
            self.answered[name] += 1

    def _answer(self, data: bytes) -> list[tuple[str, bytes]]:
        eth = frames.parse_ethernet(data)
        if eth is None or eth.ethertype != frames.ETH_P_IPV6:
            return []
        packet = frames.parse_ip6(eth.payload)
        if packet is None:
            return []
        if packet.next_header == frames.PROTO_ICMPV6:
            return [("ra", f) for f in ra.answer(eth, packet, self.port, self.host_mac)]
        return [("dhcp6", f) for f in dhcp6.answer(eth, packet, self.port, self.host_mac, self.duid)]


@dataclass
class Link:
    hv: str
    vm: str
    responder: Responder
    tmp: Path

    def vm_run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.vm, *argv], capture_output=True, text=True,
                              timeout=timeout, check=False)


@pytest.fixture
def link(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Link]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    prefix = f"ng6{os.getpid() % 10000}{zlib.crc32(request.node.name.encode()) % 1000}-"
    hv, vm = prefix + "hv", prefix + "vm"
    for ns in (hv, vm):
        netns.destroy(ns)
        netns.create(ns)
    responder = None
    try:
        netns.ip_batch([netns.veth_line(hv, "tap-g1", vm, "gst6")])
        netns.ip_batch(["link set tap-g1 up"], hv)
        # the guest as a host, not a router: it takes advertisements
        for key in ("net.ipv6.conf.all.forwarding=0", "net.ipv6.conf.gst6.accept_ra=1"):
            netns.run(["ip", "netns", "exec", vm, "sysctl", "-qw", key])
        netns.ip_batch([f"link set gst6 address {VM_MAC}", "link set gst6 up"], vm)
        responder = Responder(hv, "tap-g1", PORT)
        # both link-locals usable (DAD done): the client's to send from, the host's to be the router
        for ns, dev in ((vm, "gst6"), (hv, "tap-g1")):
            wait_for(lambda ns=ns, dev=dev: _link_local_ready(ns, dev), f"the link-local address of {dev}")
        yield Link(hv, vm, responder, tmp_path)
    finally:
        if responder is not None:
            responder.close()
        for ns in (hv, vm):
            netns.destroy(ns)


def _link_local_ready(ns: str, dev: str) -> bool:
    out = netns.run(["ip", "-n", ns, "-6", "addr", "show", "dev", dev, "scope", "link"]).output
    return "fe80::" in out and "tentative" not in out


def _fields(text: str) -> dict[str, str]:
    """rdisc6's `Name : value` lines, the first of each name."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            out.setdefault(name.strip(), value.strip())
    return out


def test_rdisc6_sees_the_prefix_on_link_the_mtu_the_flags_and_the_dns_configuration(link: Link) -> None:
    need("rdisc6")
    result = link.vm_run(["rdisc6", "-1", "-w", "2000", "gst6"])
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    got = _fields(out)
    assert got["Stateful address conf."] == "Yes" and got["Stateful other conf."] == "Yes", out
    assert got["Hop limit"].split()[0] == "64"
    assert got["Router lifetime"].split()[0] == str(ra.ROUTER_LIFETIME)
    assert got["MTU"].split()[0] == "1410"
    assert got["Prefix"] == "fd00:c::/64"
    assert got["On-link"] == "Yes" and got["Autonomous address conf."] == "No", out
    assert got["Valid time"].split()[0] == "7200"
    assert "Recursive DNS server     : fd00:53::53" in out and "Recursive DNS server     : fd00:53::54" in out, out
    assert "DNS search list          : tenant.example" in out and "corp.example" in out, out
    host_mac = frames.mac_text(link.responder.host_mac)
    assert got["Source link-layer address"] == host_mac.upper() or got["Source link-layer address"] == host_mac
    # the router is the host side's EUI-64 link-local, one the host's kernel really has on the port
    router = str(frames.link_local(host_mac))
    assert f"from {router}" in out, out
    assert router in netns.run(["ip", "-n", link.hv, "-6", "addr", "show", "dev", "tap-g1"]).output
    # the guest's own kernel took the advertisement: a default route via the router, the prefix on-link,
    # and no address of its own making (A=0)
    wait_for(lambda: f"default via {router}" in link.vm_run(["ip", "-6", "route"]).stdout, "the default route")
    routes = link.vm_run(["ip", "-6", "route"]).stdout
    assert "fd00:c::/64 dev gst6" in routes, routes
    assert "fd00:c:" not in link.vm_run(["ip", "-6", "addr", "show", "dev", "gst6"]).stdout


DHCLIENT_SCRIPT = """#!/bin/sh
# records what dhclient hands its script, one file per reason
env | sort > "$(dirname "$0")/env.$reason"
"""


def test_dhclient_gets_the_ports_ca_and_the_dns_configuration(link: Link) -> None:
    need("dhclient")
    script = link.tmp / "record.sh"
    script.write_text(DHCLIENT_SCRIPT)
    script.chmod(0o755)
    lease, pid = link.tmp / "dhclient6.leases", link.tmp / "dhclient6.pid"
    cmd = ["dhclient", "-6", "-1", "-v", "-sf", str(script), "-lf", str(lease), "-pf", str(pid), "gst6"]
    try:
        result = link.vm_run(cmd, timeout=90)
        assert result.returncode == 0, result.stdout + result.stderr
        bound = link.tmp / "env.BOUND6"
        wait_for(bound.exists, "dhclient's BOUND6")
        env = _env(bound)
        assert env["new_ip6_address"] == "fd00:c::11"
        assert env["new_ip6_prefixlen"] == "128"  # an IA_NA address; the prefix comes from the advertisement
        assert env["new_dhcp6_name_servers"].split() == ["fd00:53::53", "fd00:53::54"]
        assert env["new_dhcp6_domain_search"].split() == ["tenant.example.", "corp.example."]
        assert env["new_max_life"] == "7200" and env["new_preferred_life"] == "7200"
        assert env["new_renew"] == "3600" and env["new_rebind"] == "5760"  # T1, T2: 0.5 and 0.8 of the lease
        # the server is the host side's DUID-LL (dhclient prints octets without leading zeros)
        assert [int(o, 16) for o in env["new_dhcp6_server_id"].split(":")] == list(link.responder.duid)
        assert link.responder.answered["dhcp6"] >= 2  # ADVERTISE, then REPLY to its REQUEST
    finally:
        if pid.exists():
            try:
                os.kill(int(pid.read_text().strip()), 15)
            except (ProcessLookupError, ValueError):
                pass


DHCPCD_CONFIG = """# nothing from /etc: IPv6 only, no resolv.conf hook, the DNS options asked for; the
# configuration stays when the client exits (the test reads it from the kernel)
ipv6only
persistent
nohook resolv.conf
option dhcp6_name_servers, dhcp6_domain_search
"""


def test_dhcpcd_takes_the_advertisement_and_the_dhcpv6_lease_into_the_guests_kernel(link: Link) -> None:
    need("dhcpcd")
    config, script = link.tmp / "dhcpcd.conf", link.tmp / "record.sh"
    config.write_text(DHCPCD_CONFIG)
    script.write_text(DHCLIENT_SCRIPT)
    script.chmod(0o755)
    try:
        result = link.vm_run(["dhcpcd", "-6", "-1", "-B", "-f", str(config), "-c", str(script), "-t", "30", "gst6"],
                             timeout=90)
        assert result.returncode == 0, result.stdout + result.stderr
        advert = _env(link.tmp / "env.ROUTERADVERT")
        assert advert["nd1_flags"] == "MO" and advert["nd1_mtu"] == "1410"
        assert advert["nd1_prefix_information1_flags"] == "L"  # on-link, no SLAAC
        assert advert["nd1_rdnss1_servers"].split() == ["fd00:53::53", "fd00:53::54"]
        assert advert["nd1_dnssl1_search"].split() == ["tenant.example", "corp.example"]
        bound = _env(link.tmp / "env.BOUND6")
        assert bound["new_dhcp6_ia_na1_ia_addr1"] == "fd00:c::11"
        assert bound["new_dhcp6_name_servers"].split() == ["fd00:53::53", "fd00:53::54"]
        assert bound["new_dhcp6_domain_search"].split() == ["tenant.example", "corp.example"]
        # in the guest's kernel: the CA, the prefix on-link, the default route via the host's link-local
        assert "inet6 fd00:c::11/128" in link.vm_run(["ip", "-6", "addr", "show", "dev", "gst6"]).stdout
        routes = link.vm_run(["ip", "-6", "route"]).stdout
        router = frames.link_local(frames.mac_text(link.responder.host_mac))
        assert "fd00:c::/64 dev gst6" in routes and f"default via {router} dev gst6" in routes, routes
    finally:
        # dhcpcd keeps its lease file per interface name; the name is this test's own
        Path("/var/lib/dhcpcd/gst6.lease6").unlink(missing_ok=True)


def _env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
