"""DHCPv4 from the host with real clients: a Responder on the host side of a veth pair (its packet socket made
in the hypervisor's namespace), Debian's busybox udhcpc, ISC dhclient and dhcpcd in the VM's namespace. Each
client's hook script writes what it got. An unknown MAC gets no offer: the responder counts its DISCOVER as
wrong_mac and nothing reaches the client. A renewal after the responder was replaced (an agent restart:
nothing carried over) keeps the address; a port that vanished is a counted send error.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import stat
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nvfabric.hostagent.guest.offer import PortService
from nvfabric.hostagent.guest.responder import Responder
from nvfabric.hostagent.guest.wire import Wire
from nvfabric.lab import netns
from nvfabric.vnet.kernel.netns import inside

from .conftest import need

MAC = "02:00:00:00:d4:01"
SERVICE = PortService(
    port="d1", interface="tap-d1", routing_domain="blue", vsid=5001, mac=MAC,
    ipv4=ipaddress.IPv4Interface("10.7.0.11/24"), ipv6=None, gateway4=ipaddress.IPv4Address("10.7.0.1"),
    gateway6=None, mtu=1458, dns4=(ipaddress.IPv4Address("10.7.0.53"), ipaddress.IPv4Address("192.0.2.53")),
    search=("tenant.example", "corp.example"),
    routes4=((ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv4Address("10.7.0.1")),
             (ipaddress.IPv4Network("172.16.0.0/12"), ipaddress.IPv4Address("10.7.0.1")),
             (ipaddress.IPv4Network("198.51.100.0/24"), ipaddress.IPv4Address("10.7.0.254"))),
    lease_time=3600,
)

HOOK = """#!/bin/sh
# records the client's environment once it has a lease (or, dhcpcd -T, an offer)
case "$1$reason" in
  bound|renew|BOUND|REBOOT|TEST) env | sort > "{out}.tmp" && mv "{out}.tmp" "{out}" ;;
esac
exit 0
"""
DHCLIENT_CONF = """option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers, domain-search,
        interface-mtu, rfc3442-classless-static-routes;
"""
DHCPCD_CONF = """option subnet_mask, routers, broadcast_address, domain_name_servers, domain_name, domain_search,
       interface_mtu, classless_static_routes
noipv4ll
noarp
"""


@dataclass
class Vm:
    hv: str
    vm: str
    responder: Responder
    tmp: Path

    def hook(self, name: str) -> tuple[Path, Path]:
        out = self.tmp / f"{name}.env"
        script = self.tmp / f"{name}.sh"
        script.write_text(HOOK.format(out=out))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        return script, out

    def set_mac(self, mac: str) -> None:
        netns.ip_batch(["link set eth0 down", f"link set eth0 address {mac}", "link set eth0 up"], self.vm)


async def until(probe: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := probe()):
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return value


def read_env(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.fixture
async def vm(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Vm]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    prefix = f"ndh{os.getpid() % 10000}{zlib.crc32(request.node.name.encode()) % 1000}-"
    hv, guest = prefix + "hv", prefix + "vm"
    for ns in (hv, guest):
        netns.destroy(ns)
        netns.create(ns)
    the_vm = None
    try:
        netns.ip_batch([netns.veth_line(hv, "tap-d1", guest, "eth0")])
        netns.ip_batch(["link set tap-d1 up"], hv)
        netns.ip_batch([f"link set eth0 address {MAC}", "link set eth0 up"], guest)
        the_vm = Vm(hv, guest, Responder(Wire(), lambda *_: asyncio.sleep(0)), tmp_path)
        with inside(hv):  # the socket belongs to the namespace it is made in
            the_vm.responder.start()
        the_vm.responder.update({SERVICE.interface: SERVICE})
        yield the_vm
    finally:
        if the_vm is not None:
            await the_vm.responder.close()  # (the one in place: a test may have replaced it)
        for ns in (hv, guest):
            netns.destroy(ns)


@dataclass
class Client:
    """A DHCP client in the VM's namespace, in a process group of its own (dhcpcd leaves privilege-separated
    helpers behind when it exits: the group is killed at the end), its output in a file."""

    process: asyncio.subprocess.Process
    log: Path

    @classmethod
    async def start(cls, vm: Vm, name: str, *argv: str) -> Client:
        log = vm.tmp / f"{name}.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec("ip", "netns", "exec", vm.vm, *argv, stdout=out,
                                                           stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        return cls(process, log)

    async def exited(self, timeout: float = 60) -> str:
        await asyncio.wait_for(self.process.wait(), timeout)
        return self.stop_group()

    async def stop(self) -> str:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        return self.stop_group()

    def stop_group(self) -> str:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.log.read_text(errors="replace")


def answered(responder: Responder) -> int:
    return responder.counters.get("dhcp4", "answered")


async def test_udhcpc_gets_address_router_dns_mtu_and_classless_routes(vm: Vm) -> None:
    need("udhcpc")
    script, out = vm.hook("udhcpc")
    client = await Client.start(vm, "udhcpc", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1",
                                "-s", str(script), "-O", "staticroutes", "-O", "search", "-O", "mtu")
    output = await client.exited()  # -q: it exits once bound
    env = read_env(out)
    assert env is not None, output
    assert env["ip"] == "10.7.0.11" and env["subnet"] == "255.255.255.0" and env["router"].split() == ["10.7.0.1"]
    assert env["dns"].split() == ["10.7.0.53", "192.0.2.53"]
    assert env["mtu"] == "1458" and env["lease"] == "3600" and env["domain"] == "tenant.example"
    assert env["search"].split() == ["tenant.example", "corp.example"]
    assert env["serverid"] == "10.7.0.1" and env["broadcast"] == "10.7.0.255"
    assert env["staticroutes"].split() == ["0.0.0.0/0", "10.7.0.1", "172.16.0.0/12", "10.7.0.1",
                                           "198.51.100.0/24", "10.7.0.254"]
    assert answered(vm.responder) == 2  # the offer and the ack
    # the socket's filter kept only what the guest services handle (the VM's MLD reports, DAD solicitations
    # and the like never reached the responder)
    assert set(vm.responder.counters.as_dict()) <= {"dhcp4", "arp", "rs", "na", "dhcp6"}


async def test_dhclient_gets_address_router_dns_mtu_and_classless_routes(vm: Vm) -> None:
    need("dhclient")
    script, out = vm.hook("dhclient")
    conf = vm.tmp / "dhclient.conf"
    conf.write_text(DHCLIENT_CONF)
    client = await Client.start(vm, "dhclient", "dhclient", "-4", "-d", "-1", "-v", "-cf", str(conf),
                                "-sf", str(script), "-lf", str(vm.tmp / "dhclient.leases"),
                                "-pf", str(vm.tmp / "dhclient.pid"), "eth0")
    try:
        env = await until(lambda: read_env(out), "dhclient's lease")
    finally:
        output = await client.stop()
    assert env["reason"] == "BOUND", output
    assert env["new_ip_address"] == "10.7.0.11" and env["new_subnet_mask"] == "255.255.255.0"
    assert env["new_routers"] == "10.7.0.1" and env["new_domain_name_servers"] == "10.7.0.53 192.0.2.53"
    assert env["new_interface_mtu"] == "1458" and env["new_dhcp_lease_time"] == "3600"
    assert env["new_domain_search"] == "tenant.example. corp.example."
    assert env["new_dhcp_server_identifier"] == "10.7.0.1"
    # dhclient hands option 121 to its script as bytes: width, significant octets, router, per route
    assert env["new_rfc3442_classless_static_routes"].split() == [
        *"0 10 7 0 1".split(), *"12 172 16 10 7 0 1".split(), *"24 198 51 100 10 7 0 254".split()]


async def test_dhcpcd_is_offered_address_router_dns_mtu_and_classless_routes(vm: Vm) -> None:
    need("dhcpcd")
    script, out = vm.hook("dhcpcd")
    conf = vm.tmp / "dhcpcd.conf"
    conf.write_text(DHCPCD_CONF)
    # -T: test mode, the offer's values go to the script and nothing is configured
    client = await Client.start(vm, "dhcpcd", "dhcpcd", "-4", "-T", "-1", "-B", "-t", "20", "-f", str(conf),
                                "-c", str(script), "eth0")
    try:
        env = await until(lambda: read_env(out), "dhcpcd's offer")
    finally:
        output = await client.stop()
    assert env["new_ip_address"] == "10.7.0.11", output
    assert env["new_subnet_cidr"] == "24" and env["new_routers"] == "10.7.0.1"
    assert env["new_domain_name_servers"] == "10.7.0.53 192.0.2.53"
    assert env["new_interface_mtu"] == "1458"
    assert env["new_domain_search"] == "tenant.example corp.example"
    assert env["new_classless_static_routes"] == "0.0.0.0/0 10.7.0.1 172.16.0.0/12 10.7.0.1 198.51.100.0/24 10.7.0.254"


async def test_an_unknown_mac_gets_no_offer(vm: Vm) -> None:
    need("udhcpc")
    vm.set_mac("02:00:00:00:d4:99")
    script, out = vm.hook("stranger")
    client = await Client.start(vm, "stranger", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "1000", "-T", "1",
                                "-s", str(script))
    try:
        await until(lambda: vm.responder.counters.get("dhcp4", "wrong_mac") >= 2, "two DISCOVERs judged")
    finally:
        output = await client.stop()
    assert answered(vm.responder) == 0
    assert read_env(out) is None, output
    assert "obtained" not in output


async def test_a_port_that_vanished_is_a_counted_send_error_not_a_crash(vm: Vm) -> None:
    wire = Wire()
    with inside(vm.hv):
        wire.start(lambda *_: None)
    try:
        assert wire.host_mac("tap-d1") is not None
        netns.ip_batch(["link del tap-d1"], vm.hv)
        assert not wire.send("tap-d1", b"\xff" * 6 + b"\x02" * 6 + b"\x08\x00" + bytes(46))
        assert not wire.send("tap-d1", bytes(60))
        assert wire.host_mac("tap-d1") is None
        assert sum(wire.errors.values()) == 3 and set(wire.errors) <= {"ENODEV", "ENXIO", "ENETDOWN"}
    finally:
        wire.close()


RENEW_HOOK = """#!/bin/sh
# configures the lease (a renewal is sent from the leased address) and records each event
case "$1" in
  bound) ip addr add "$ip/$mask" dev "$interface" ;;
esac
case "$1" in
  bound|renew) echo "$1 $ip $lease" >> "{out}" ;;
esac
exit 0
"""


async def test_a_renewal_after_the_responder_restarted_keeps_the_address(vm: Vm) -> None:
    need("udhcpc")
    events = vm.tmp / "events"
    script = vm.tmp / "renew.sh"
    script.write_text(RENEW_HOOK.format(out=events))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    # the gateway address on the host side, so that the guest resolves the server it renews with
    netns.ip_batch(["addr add 10.7.0.1/24 dev tap-d1"], vm.hv)

    def lines() -> list[str]:
        return events.read_text().splitlines() if events.exists() else []

    client = await Client.start(vm, "renewing", "udhcpc", "-i", "eth0", "-f", "-t", "5", "-T", "1", "-s", str(script))
    try:
        assert await until(lines, "the first lease") == ["bound 10.7.0.11 3600"]
        # the agent restarts: a new responder, a new socket, nothing carried over
        await vm.responder.close()
        vm.responder = Responder(Wire(), lambda *_: asyncio.sleep(0))
        with inside(vm.hv):
            vm.responder.start()
        vm.responder.update({SERVICE.interface: SERVICE})
        client.process.send_signal(signal.SIGUSR1)  # udhcpc: renew now (a unicast REQUEST with ciaddr)
        assert await until(lambda: len(lines()) > 1 and lines(), "the renewal") == [
            "bound 10.7.0.11 3600", "renew 10.7.0.11 3600"]
        assert answered(vm.responder) == 1
    finally:
        output = await client.stop()
    assert "obtained" in output, output
