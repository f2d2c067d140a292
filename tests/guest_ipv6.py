"""Test equipment for the guest IPv6 services (hostagent/guest/ra.py, dhcp6.py): a VM namespace behind a
port (a veth), and the agent's responder on the port's host side, answering router solicitations and
DHCPv6 from the port model. Used by the host-phase test
with Debian's clients and by the kernel-phase one whose port is enslaved to a VRF.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nvfabric.hostagent.guest import dhcp6, frames
from nvfabric.hostagent.guest.offer import PortService
from nvfabric.hostagent.guest.responder import Responder as GuestResponder
from nvfabric.hostagent.guest.wire import Wire
from nvfabric.lab import netns
from nvfabric.vnet.kernel.netns import inside

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


class Responder:
    """The agent's own responder (hostagent/guest/responder.py, its packet socket made in `ns`) serving PORT,
    on an event loop of its own in a thread, as the agent runs it on the host side of its ports."""

    def __init__(self, ns: str, interface: str, port: PortService) -> None:
        self.loop = asyncio.new_event_loop()
        self.wire = Wire()
        self.responder = GuestResponder(self.wire, lambda *_: asyncio.sleep(0))
        started = threading.Event()

        async def serve() -> None:
            with inside(ns):  # the packet socket belongs to the namespace it is made in
                self.responder.start()
            self.responder.update({interface: port})
            started.set()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(serve())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name=f"responder-{ns}", daemon=True)
        self.thread.start()
        assert started.wait(20), "the responder did not start"
        self.host_mac = self.wire.host_mac(interface) or b""
        self.duid = dhcp6.duid_ll(self.host_mac)

    def answered(self, protocol: str) -> int:
        return self.responder.counters.get(protocol, "answered")

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.responder.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Link:
    hv: str
    vm: str
    responder: Responder
    tmp: Path

    def vm_run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.vm, *argv], capture_output=True, text=True,
                              timeout=timeout, check=False)


@contextmanager
def open_link(tmp: Path, name: str, vrf: bool = False) -> Iterator[Link]:
    """A hypervisor namespace (`hv`) whose port tap-g1 leads to a VM namespace (`vm`, interface gst6, the
    VM's MAC), answered by a Responder; with `vrf`, the port is enslaved to a VRF as the agent's ports are."""
    prefix = f"ng6{os.getpid() % 10000}{zlib.crc32(name.encode()) % 1000}-"
    hv, vm = prefix + "hv", prefix + "vm"
    for ns in (hv, vm):
        netns.destroy(ns)
        netns.create(ns)
    responder = None
    try:
        netns.ip_batch([netns.veth_line(hv, "tap-g1", vm, "gst6")])
        if vrf:
            netns.ip_batch(["link add nvf-g type vrf table 10", "link set nvf-g up", "link set tap-g1 master nvf-g"],
                           hv)
        netns.ip_batch(["link set tap-g1 up"], hv)
        # the host routes, as the agent's namespace does (its neighbour advertisements carry the router flag)
        netns.run(["ip", "netns", "exec", hv, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        # the guest as a host, not a router: it takes advertisements
        for key in ("net.ipv6.conf.all.forwarding=0", "net.ipv6.conf.gst6.accept_ra=1"):
            netns.run(["ip", "netns", "exec", vm, "sysctl", "-qw", key])
        netns.ip_batch([f"link set gst6 address {VM_MAC}", "link set gst6 up"], vm)
        responder = Responder(hv, "tap-g1", PORT)
        # both link-locals usable (DAD done): the client's to send from, the host's to be the router
        for ns, dev in ((vm, "gst6"), (hv, "tap-g1")):
            wait_for(lambda ns=ns, dev=dev: link_local_ready(ns, dev), f"the link-local address of {dev}")
        yield Link(hv, vm, responder, tmp)
    finally:
        if responder is not None:
            responder.close()
        for ns in (hv, vm):
            netns.destroy(ns)


def link_local_ready(ns: str, dev: str) -> bool:
    out = netns.run(["ip", "-n", ns, "-6", "addr", "show", "dev", dev, "scope", "link"]).output
    return "fe80::" in out and "tentative" not in out


# A client's script: what the client hands it, one file per reason, next to the script.
RECORD_SCRIPT = """#!/bin/sh
env | sort > "$(dirname "$0")/env.$reason"
"""

DHCPCD_CONFIG = """# nothing from /etc: IPv6 only, no resolv.conf hook, the DNS options asked for; the
# configuration stays when the client exits (the test reads it from the kernel)
ipv6only
persistent
nohook resolv.conf
option dhcp6_name_servers, dhcp6_domain_search
"""


def env_of(path: Path) -> dict[str, str]:
    """The variables a RECORD_SCRIPT wrote."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def run_dhcpcd(link: Link) -> subprocess.CompletedProcess[str]:
    """`dhcpcd -6` once in the VM (the advertisement, then a DHCPv6 lease), RECORD_SCRIPT as its hook; the
    configuration stays in the VM's kernel after it exits."""
    config, script = link.tmp / "dhcpcd.conf", link.tmp / "record.sh"
    config.write_text(DHCPCD_CONFIG)
    script.write_text(RECORD_SCRIPT)
    script.chmod(0o755)
    try:
        return link.vm_run(["dhcpcd", "-6", "-1", "-B", "-f", str(config), "-c", str(script), "-t", "30", "gst6"],
                           timeout=90)
    finally:
        # dhcpcd keeps its lease file by interface name, the name is the test's own
        Path("/var/lib/dhcpcd/gst6.lease6").unlink(missing_ok=True)


def assert_reaches_its_router(link: Link) -> None:
    """The guest's default route points at the advertised router, the guest resolves it (the host's kernel
    answers the neighbour solicitation for it, router flag set) and it answers an echo request."""
    router = frames.link_local(frames.mac_text(link.responder.host_mac))
    assert f"default via {router} dev gst6" in link.vm_run(["ip", "-6", "route"]).stdout
    ping = link.vm_run(["ping", "-6", "-c", "1", "-W", "5", f"{router}%gst6"])
    assert ping.returncode == 0, ping.stdout + ping.stderr
    neighbours = link.vm_run(["ip", "-6", "neigh", "show", "dev", "gst6"]).stdout
    assert f"{router} lladdr {frames.mac_text(link.responder.host_mac)} router" in neighbours, neighbours
