"""What a tenant VM gets from its host, end to end with Debian's own clients (VM phase): the default topology
and the two tenants of lab/fabric.py; blue's subnets carry DHCP options (DNS, search domain, lease time) and
blue has a customer route. Each test plugs its own guest (a namespace on a hypervisor, a port on that host's
agent) and runs a real client in it (lab/guests.py): what the client parsed, and what it installed in the
guest's kernel (`ip addr`, `ip route`, the link MTU), are checked.
"""

from __future__ import annotations

import ipaddress
import time

import pytest

from nvfabric.hostagent.guest import offer
from nvfabric.lab import guests, netns, runner
from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.fabric import Fabric, Vm, VMS, wait_for
from nvfabric.lab.topology import load
from nvfabric.vnet.model import RoutingDomain

pytestmark = pytest.mark.kernel
REPORT: list[str] = []

DNS4, DNS6 = ipaddress.IPv4Address("10.0.0.53"), ipaddress.IPv6Address("fd00:b::53")
SEARCH = "blue.example"
LEASE = 600
CUSTOMER = ipaddress.IPv4Network("192.168.50.0/24")  # behind b2, a virtual appliance
GATEWAY4 = ipaddress.IPv4Address("10.0.0.1")
DHCP = {"dns_servers": [str(DNS4), str(DNS6)], "search_domains": [SEARCH], "lease_time": LEASE}
BLUE_DHCP = RoutingDomain.from_dict({
    "name": "blue", "route_targets": ["65000:1"],
    "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24", "fd00:b::/64"], "dhcp": DHCP},
                {"vsid": 5002, "prefixes": ["10.0.1.0/24"], "dhcp": DHCP}],
    "customer_routes": [{"prefix": str(CUSTOMER), "next_hop": "10.0.0.12"}]})

# Guests of these tests only: one per client, on every host; d9's interface does not have its port's MAC.
GUESTS = {
    "udhcpc": Vm("d1", "hv1", "blue", 5001, "02:00:00:00:0d:01", ("10.0.0.21/24", "fd00:b::21/64"), "udhcpc"),
    "dhclient": Vm("d2", "hv2", "blue", 5001, "02:00:00:00:0d:02", ("10.0.0.22/24", "fd00:b::22/64"), "dhclient"),
    "dhcpcd": Vm("d3", "hv3", "blue", 5001, "02:00:00:00:0d:03", ("10.0.0.23/24", "fd00:b::23/64"), "dhcpcd"),
}
STRANGER = Vm("d9", "hv1", "blue", 5001, "02:00:00:00:0d:09", ("10.0.0.29/24",), "udhcpc")
RENEWER = Vm("d4", "hv2", "blue", 5001, "02:00:00:00:0d:04", ("10.0.0.24/24",), "udhcpc")
REBOOTER = Vm("d5", "hv2", "blue", 5001, "02:00:00:00:0d:05", ("10.0.0.25/24",), "dhclient")
V6 = Vm("d6", "hv3", "blue", 5001, "02:00:00:00:0d:06", ("10.0.0.26/24", "fd00:b::26/64"), "dhclient")


def report(line: str) -> None:
    REPORT.append(line)
    print(f"[guest-services] {line}", flush=True)


@pytest.fixture(scope="module")
def fabric():
    topology = load(DEFAULT_TOPOLOGY)
    runner.up(topology)
    fab = Fabric(topology)
    try:
        started = time.monotonic()
        fab.up()
        for agent in fab.agents.values():
            agent.call(lambda a: a.put_routing_domain(BLUE_DHCP))
        report(f"fabric up in {time.monotonic() - started:.1f} s")
        yield fab
    finally:
        fab.close()
        runner.down(topology.name)
        print("\n".join(["", "guest services figures:", *REPORT]), flush=True)


def attach(fab: Fabric, vm: Vm, mac: str | None = None) -> str:
    """The guest's namespace and interface (with `mac` on it instead of the port's, if given), then its port
    on its host's agent; the guest has no IPv4 address (`vm.dhcp`): its client will get it."""
    fab.vm_ns[vm.name] = f"{fab.topology.name}.vm-{vm.name}"  # removed by close() with the others
    fab.plug(vm)
    if mac is not None:
        netns.run(["ip", "-n", fab.vm_ns[vm.name], "link", "set", "eth0", "address", mac])
    fab.agents[vm.host].call(lambda a: a.put_port(vm.port()))
    return fab.vm_ns[vm.name]


def offered_mtu(fab: Fabric, host: str) -> int:
    return fab.agents[host].read(lambda a: offer.offered_mtu(None, a.host))


def dhcp4_counts(fab: Fabric, host: str) -> dict[str, int]:
    return fab.agents[host].read(lambda a: a.status().guest_services)["frames"].get("dhcp4", {})


@pytest.mark.parametrize("client", list(GUESTS))
def test_dhcp4_client_gets_its_ca_router_dns_mtu_and_installs_the_customer_route(fabric, tmp_path, client):
    vm = GUESTS[client]
    ns = attach(fabric, vm)
    started = time.monotonic()
    runner = guests.DhcpClient(client, ns, "eth0", tmp_path / client).start()
    try:
        got = runner.lease(60)
    finally:
        runner.stop()
    report(f"{client} on {vm.host}: {got.address} in {time.monotonic() - started:.1f} s (client start to lease "
           f"applied), mtu {got.mtu}, routes {[f'{n} via {h}' for n, h in got.routes]}")
    assert isinstance(got, guests.Lease4)
    mtu = offered_mtu(fabric, vm.host)
    assert got.address == ipaddress.IPv4Interface(vm.addresses[0])
    assert (got.server, got.router, got.mtu, got.lease_time) == (GATEWAY4, GATEWAY4, mtu, LEASE)
    assert got.dns == (DNS4,) and got.search == (SEARCH,)
    assert (CUSTOMER, GATEWAY4) in got.routes and (ipaddress.IPv4Network("0.0.0.0/0"), GATEWAY4) in got.routes
    # what the client installed in the guest's kernel
    assert guests.addresses(ns, "eth0") == [got.address]
    routes = guests.routes(ns)
    assert any(r.startswith(f"{CUSTOMER} via {GATEWAY4} dev eth0") for r in routes), routes
    assert any(r.startswith(f"default via {GATEWAY4} dev eth0") for r in routes), routes
    # udhcpc and dhclient set the link's MTU; dhcpcd sets it on every route it installs
    assert guests.link_mtu(ns, "eth0") == mtu or all(f" mtu {mtu}" in r for r in routes), routes
    if client != "dhcpcd":  # dhcpcd's resolver hooks are not run (the lab keeps the machine's resolver)
        assert f"nameserver {DNS4}" in (tmp_path / client / "resolv.conf").read_text()
    # the leased configuration works: the guest reaches b2 on another host (or hv1's b1 from hv2)
    peer = "10.0.0.12" if vm.host != "hv2" else "10.0.0.11"
    assert wait_for(lambda: fabric.ping(vm.name, peer), 30, f"{vm.name} -> {peer}")


def test_an_unknown_mac_gets_no_offer(fabric, tmp_path):
    ns = attach(fabric, STRANGER, mac="02:00:00:00:0d:99")
    before = dhcp4_counts(fabric, "hv1").get("wrong_mac", 0)
    runner = guests.DhcpClient("udhcpc", ns, "eth0", tmp_path / "udhcpc").start()
    try:
        # the agent saw the client's requests (and counted them), yet the client never got a lease
        wait_for(lambda: dhcp4_counts(fabric, "hv1").get("wrong_mac", 0) >= before + 2, 30,
                 "the agent to see two DISCOVERs from the wrong MAC")
        assert runner.leases() == []
    finally:
        runner.stop()
    assert guests.addresses(ns, "eth0") == []
    report(f"unknown MAC: {dhcp4_counts(fabric, 'hv1')['wrong_mac'] - before} requests counted wrong_mac, no offer")


def test_a_renewal_across_an_agent_restart_keeps_the_address(fabric, tmp_path):
    """udhcpc renews (a unicast REQUEST to the server) and dhclient reboots (INIT-REBOOT: a REQUEST for the
    address in its lease file) against an agent that restarted: nothing about their leases was kept by the
    agent, its answers come from the port model, so both keep their address."""
    renewer_ns, rebooter_ns = attach(fabric, RENEWER), attach(fabric, REBOOTER)
    udhcpc = guests.DhcpClient("udhcpc", renewer_ns, "eth0", tmp_path / "udhcpc").start()
    dhclient = guests.DhcpClient("dhclient", rebooter_ns, "eth0", tmp_path / "dhclient").start()
    try:
        first = (udhcpc.lease(60), dhclient.lease(60))
        fabric.stop_agent("hv2")
        fabric.start_agent("hv2")
        renewed, rebooted = udhcpc.renew(60), dhclient.renew(60)
    finally:
        udhcpc.stop()
        dhclient.stop()
    assert (renewed.event, rebooted.event) == ("renew", "REBOOT"), (renewed, rebooted)
    assert (renewed.address, rebooted.address) == (first[0].address, first[1].address)
    assert renewed.address == ipaddress.IPv4Interface(RENEWER.addresses[0])
    assert guests.addresses(renewer_ns, "eth0") == [renewed.address]
    assert guests.addresses(rebooter_ns, "eth0") == [rebooted.address]
    report(f"agent on hv2 restarted: udhcpc renewed {renewed.address}, dhclient rebooted into {rebooted.address}")


def test_router_advertisement_and_dhcpv6(fabric, tmp_path):
    vm = V6
    ns = attach(fabric, vm)
    netns.run(["ip", "-n", ns, "-6", "addr", "flush", "dev", "eth0", "scope", "global"])  # DHCPv6 gives it
    wait_for(lambda: guests.link_local_ready(ns, "eth0"), 30, f"{vm.name}'s link-local address")
    adverts = wait_for(lambda: guests.rdisc6(ns, "eth0"), 60, f"a router advertisement on {vm.name}")
    ra = adverts[0]
    mtu = offered_mtu(fabric, vm.host)
    assert ipaddress.IPv6Network("fd00:b::/64") in ra.prefixes, ra
    assert ra.mtu == mtu and DNS6 in ra.rdnss and ra.lifetime, ra
    assert ra.router is not None and ra.router.is_link_local, ra
    runner = guests.DhcpClient("dhclient", ns, "eth0", tmp_path / "dhclient6", family=6).start()
    try:
        got = runner.lease(60)
    finally:
        runner.stop()
    assert isinstance(got, guests.Lease6)
    assert got.address == ipaddress.IPv6Address("fd00:b::26") and DNS6 in got.dns, got
    assert any(a.ip == got.address for a in guests.addresses(ns, "eth0", family=6))
    report(f"IPv6 on {vm.host}: RA prefix {[str(p) for p in ra.prefixes]}, MTU {ra.mtu}, RDNSS "
           f"{[str(a) for a in ra.rdnss]}; dhclient -6 got {got.address}")


def test_the_tenants_still_reach_each_other(fabric):
    """The static VMs of lab/fabric.py beside the DHCP guests: nothing of theirs changed."""
    for vm in VMS:
        assert vm.dhcp is None
    assert fabric.reaches("b1", "10.0.0.12") and fabric.reaches("r3", "10.0.0.12")
