"""The lab's DHCP clients (lab/guests.py) against the reference server (lab/dnsmasq.py), on this kernel: each
Debian client gets its address, router, DNS, MTU and option-121 routes and installs them in its namespace;
an unknown MAC gets nothing; a renewal keeps the address. The same clients run against the agent in the
kernel phase (tests/kernel/test_guest_services.py)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvfabric.lab import guests, netns
from nvfabric.lab.dnsmasq import Dnsmasq

SUBNET = ipaddress.IPv4Network("10.9.0.0/24")
GATEWAY = ipaddress.IPv4Address("10.9.0.1")
CUSTOMER = (ipaddress.IPv4Network("10.77.0.0/16"), ipaddress.IPv4Address("10.9.0.5"))
DEFAULT = (ipaddress.IPv4Network("0.0.0.0/0"), GATEWAY)


class Link:
    """A server namespace and a guest namespace joined by a veth (the guest's eth0)."""

    def __init__(self, prefix: str) -> None:
        self.server, self.guest = f"{prefix}srv", f"{prefix}vm"
        for ns in (self.server, self.guest):
            netns.create(ns)
        netns.ip_batch([netns.veth_line(self.server, "v0", self.guest, "eth0")])
        netns.ip_batch([f"addr add {GATEWAY}/24 dev v0", "link set v0 up"], self.server)
        netns.ip_batch(["link set eth0 address 02:00:00:00:09:01", "link set eth0 up"], self.guest)

    def close(self) -> None:
        for ns in (self.guest, self.server):
            netns.destroy(ns)


@pytest.fixture
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Link, Dnsmasq]]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    missing = [t for t in ("dnsmasq", "udhcpc", "dhclient", "dhcpcd") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    link = Link(f"nvg{os.getpid() % 10000}{zlib.crc32(request.node.name.encode()) % 1000}-")
    server = Dnsmasq(link.server, "v0", SUBNET, tmp_path / "dnsmasq", router=GATEWAY,
                     dns=(ipaddress.IPv4Address("10.9.0.53"),), search=("tenant.example",), mtu=1400,
                     routes=(CUSTOMER, DEFAULT), lease_time=600,
                     hosts={"02:00:00:00:09:01": ipaddress.IPv4Address("10.9.0.50")})
    try:
        server.start()
        guests.wait_until(server.answering, 20, "dnsmasq to read its hosts file")
        yield link, server
    finally:
        server.stop()
        link.close()


@pytest.mark.parametrize("client", guests.CLIENTS)
def test_each_client_leases_and_installs_what_it_was_offered_and_renews(served, tmp_path, client):
    link, _server = served
    runner = guests.DhcpClient(client, link.guest, "eth0", tmp_path / client).start()
    try:
        got = runner.lease(30)
        assert isinstance(got, guests.Lease4)
        assert got.address == ipaddress.IPv4Interface("10.9.0.50/24")
        assert (got.server, got.router, got.mtu, got.lease_time) == (GATEWAY, GATEWAY, 1400, 600)
        assert got.dns == (ipaddress.IPv4Address("10.9.0.53"),) and got.search == ("tenant.example",)
        assert set(got.routes) == {CUSTOMER, DEFAULT}
        # installed by the client in the guest's kernel
        assert guests.addresses(link.guest, "eth0") == [got.address]
        routes = guests.routes(link.guest)
        assert any(r.startswith("10.77.0.0/16 via 10.9.0.5 dev eth0") for r in routes), routes
        assert any(r.startswith("default via 10.9.0.1 dev eth0") for r in routes), routes
        # dhcpcd puts the MTU on its routes, the others on the link
        assert guests.link_mtu(link.guest, "eth0") == 1400 or all(" mtu 1400" in r for r in routes), routes
        renewed = runner.renew(30)
        assert renewed.address == got.address and renewed.event != got.event, (got, renewed)
    finally:
        runner.stop()


def test_an_unknown_mac_gets_no_lease(served, tmp_path):
    link, _server = served
    netns.run(["ip", "-n", link.guest, "link", "set", "eth0", "address", "02:00:00:00:09:99"])
    with pytest.raises(guests.GuestError, match="timed out"):
        guests.lease("udhcpc", link.guest, "eth0", tmp_path / "udhcpc", timeout=4)
    assert guests.addresses(link.guest, "eth0") == []


def test_a_port_added_to_the_hosts_file_is_served_after_sighup(served, tmp_path):
    link, server = served
    netns.run(["ip", "-n", link.guest, "link", "set", "eth0", "address", "02:00:00:00:09:02"])
    server.add_host("02:00:00:00:09:02", ipaddress.IPv4Address("10.9.0.51"))
    got = guests.lease("udhcpc", link.guest, "eth0", tmp_path / "udhcpc", timeout=20)
    assert got.address == ipaddress.IPv4Interface("10.9.0.51/24")
