"""DHCP for tenant VMs: the agent's native responder against dnsmasq per routing domain (Neutron's way), in one
run, with the same client (busybox udhcpc, lab/guests.py) on both sides.

Run inside the VM (the agent's PUT /v1/ports needs VRF):
    nvfabric lab kernel --vm always -- .venv/bin/python bench/guest_dhcp.py [--count 20] [--ports 1000]

1. Lease latency, per port, `--count` ports one after the other:
   - native: the default topology's reflectors and hv1's agent with its REST API; t0 before `PUT /v1/ports/NAME`
     (from inside hv1), the guest's udhcpc started when the PUT returned; t1 when the client's script had
     applied the lease (its own timestamp, lab/guests.py). The guest is a namespace with a veth to hv1.
   - dnsmasq: one dnsmasq for the routing domain in its own namespace (Neutron's qdhcp-), the guests' veths
     in a bridge there; t0 before the hosts file is rewritten with the new entry and dnsmasq gets SIGHUP (what
     Neutron's DHCP agent does), udhcpc started right after; t1 as above.
2. Memory and processes per 1,000 ports: native, the bytes the agent holds for them (the PortService values
   it derives, tracemalloc) and no process; dnsmasq, one process per routing domain and its resident memory
   with 1,000 hosts entries, for 1 routing domain and for 10 (100 entries each).
3. Across a restart of the server: a guest holding a lease asks to renew (udhcpc SIGUSR1) while the agent
   (the dnsmasq) is down, then again once it is back: whether the guest kept its address, and how long after
   the server was back the renewal was acknowledged.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nvfabric.hostagent.api import start_api
from nvfabric.hostagent.guest import offer
from nvfabric.lab import guests, netns, runner
from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.dnsmasq import Dnsmasq
from nvfabric.lab.fabric import BLUE, RED, Fabric
from nvfabric.lab.topology import load
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import HostIdentity
from nvfabric.vnet.kernel.netns import enter_namespace
from nvfabric.vnet.model import Port, RoutingDomain

TOKEN = "bench-dhcp"
SUBNET = ipaddress.IPv4Network("10.0.0.0/24")
GATEWAY = ipaddress.IPv4Address("10.0.0.1")
DHCP_NS = "nvb-qdhcp-blue"  # the dnsmasq side's "network node" namespace


def stats(xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(len(xs) * 0.9))]
    return (f"median {statistics.median(xs) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, "
            f"min {xs[0] * 1000:.0f} ms, max {xs[-1] * 1000:.0f} ms (n={len(xs)})")


def mac(i: int, side: int) -> str:
    return f"02:00:00:{side:02x}:{i // 256:02x}:{i % 256:02x}"


class Api:
    """hv1's agent REST API, called from a thread inside hv1's namespace."""

    def __init__(self, fabric: Fabric) -> None:
        self.server = fabric.agents["hv1"].call(lambda a: start_api(a, "127.0.0.1:0", TOKEN))
        self.pool = ThreadPoolExecutor(1, initializer=enter_namespace, initargs=(fabric.ns("hv1"),))

    def put(self, path: str, body: dict[str, object]) -> int:
        def call() -> int:
            request = urllib.request.Request(self.server.url + path, data=json.dumps(body).encode(), method="PUT",
                                             headers={"Authorization": f"Bearer {TOKEN}",
                                                      "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status
        return self.pool.submit(call).result(130)


def guest_ns(side: str, i: int) -> str:
    return f"nvb-{side}{i}"


def native_latency(fabric: Fabric, api: Api, count: int, work: Path) -> tuple[list[float], list[float]]:
    totals, puts = [], []
    for i in range(count):
        ns, tap = guest_ns("n", i), f"tap-n{i}"
        netns.create(ns)
        netns.ip_batch([netns.veth_line(fabric.ns("hv1"), tap, ns, "eth0")])
        netns.ip_batch([f"link set eth0 address {mac(i, 0x0e)}", "link set eth0 up"], ns)
        netns.run(["ip", "-n", fabric.ns("hv1"), "link", "set", tap, "up"])
        port = Port(f"n{i}", tap, mac(i, 0x0e), 5001, (SUBNET.network_address + 100 + i,))
        t0 = time.time()
        assert api.put(f"/v1/ports/{port.name}", port.to_dict()) in (200, 201)
        puts.append(time.time() - t0)
        client = guests.DhcpClient("udhcpc", ns, "eth0", work / f"n{i}").start()
        try:
            got = client.lease(60)
            assert got.address.ip == port.addresses[0], got
            totals.append(client.applied_at() - t0)
        finally:
            client.stop()
    return totals, puts


def dnsmasq_latency(count: int, work: Path) -> list[float]:
    netns.create(DHCP_NS)
    netns.ip_batch(["link add br0 type bridge", f"addr add {SUBNET.network_address + 2}/24 dev br0",
                    "link set br0 up"], DHCP_NS)
    server = Dnsmasq(DHCP_NS, "br0", SUBNET, work / "dnsmasq", router=GATEWAY, mtu=1450,
                     routes=((ipaddress.IPv4Network("0.0.0.0/0"), GATEWAY),)).start()
    totals = []
    try:
        guests.wait_until(server.answering, 30, "dnsmasq")
        for i in range(count):
            ns = guest_ns("d", i)
            netns.create(ns)
            netns.ip_batch([netns.veth_line(DHCP_NS, f"g{i}", ns, "eth0")])
            netns.ip_batch([f"link set g{i} master br0", f"link set g{i} up"], DHCP_NS)
            netns.ip_batch([f"link set eth0 address {mac(i, 0x0d)}", "link set eth0 up"], ns)
            address = SUBNET.network_address + 100 + i
            t0 = time.time()
            server.add_host(mac(i, 0x0d), address)
            client = guests.DhcpClient("udhcpc", ns, "eth0", work / f"d{i}").start()
            try:
                got = client.lease(60)
                assert got.address.ip == address, got
                totals.append(client.applied_at() - t0)
            finally:
                client.stop()
    finally:
        server.stop()
    return totals


def native_memory(ports: int) -> tuple[int, int]:
    """(bytes the derived services of `ports` ports hold, processes): what the agent keeps for DHCP."""
    domain = RoutingDomain.from_dict({"name": "big", "route_targets": ["65000:9"],
                                      "subnets": [{"vsid": 7001, "prefixes": ["10.128.0.0/16", "fd00:9::/64"],
                                                   "dhcp": {"dns_servers": ["10.128.0.53"],
                                                            "search_domains": ["big.example"]}}]})
    port_list = {f"p{i}": Port(f"p{i}", f"tap{i}", mac(i, 0x0f), 7001,
                               (ipaddress.IPv4Address("10.128.1.0") + i, ipaddress.IPv6Address("fd00:9::100") + i))
                 for i in range(ports)}
    catalog = Catalog.build({"big": domain}, port_list)
    host = HostIdentity("02:00:5e:10:00:01", (ipaddress.IPv4Address("198.51.100.11"),))
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    services = offer.port_services(catalog, host)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert len(services) == ports
    held = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return held, 0


def dnsmasq_memory(ports: int, domains: int, work: Path) -> tuple[int, int]:
    """(total resident KiB, processes) of one dnsmasq per routing domain, `ports` hosts entries in all."""
    servers = []
    try:
        for d in range(domains):
            ns = f"nvb-qdhcp-m{d}"
            netns.create(ns)
            net = ipaddress.IPv4Network(f"10.{64 + d}.0.0/16")
            netns.ip_batch(["link add br0 type bridge", f"addr add {net.network_address + 2}/16 dev br0",
                            "link set br0 up"], ns)
            hosts = {mac(d * 10000 + i, 0x0c): net.network_address + 10 + i for i in range(ports // domains)}
            servers.append(Dnsmasq(ns, "br0", net, work / f"mem{domains}-{d}", router=net.network_address + 1,
                                   hosts=hosts).start())
        for server in servers:
            guests.wait_until(server.answering, 30, "dnsmasq to read its hosts")
        return sum(s.rss_kib() for s in servers), len(servers)
    finally:
        for d, server in enumerate(servers):
            server.stop()
            netns.destroy(f"nvb-qdhcp-m{d}")


def renew_across_restart(client: guests.DhcpClient, down: Callable[[], object],
                         up: Callable[[], object]) -> tuple[bool, bool, float]:
    """(renewal answered while down, address kept while down, seconds from the server back to the renewal
    acknowledged)."""
    first = client.lease(60)
    count = len(client.leases())
    down()
    asked = client.output().count("sending renew")
    os.kill(client.proc.pid, signal.SIGUSR1)  # type: ignore[union-attr]
    guests.wait_until(lambda: client.output().count("sending renew") > asked, 30, "the renewal request")
    try:  # a bench may wait a bounded time for what should not come
        client.lease(3, after=count)
        answered_down = True
    except guests.GuestError:
        answered_down = False
    kept = [a.ip for a in guests.addresses(client.ns, "eth0")] == [first.address.ip]
    back = time.time()
    up()
    count = len(client.leases())
    renewed = None
    deadline = time.monotonic() + 60
    while renewed is None and time.monotonic() < deadline:
        os.kill(client.proc.pid, signal.SIGUSR1)  # type: ignore[union-attr]
        try:
            renewed = client.lease(0.25, after=count)
        except guests.GuestError:
            continue
    assert renewed is not None and renewed.address == first.address, renewed
    return answered_down, kept, client.applied_at(count) - back  # type: ignore[operator]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20, help="ports leased one after the other, each side")
    parser.add_argument("--ports", type=int, default=1000, help="ports for the memory figures")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nvfabric-bench-dhcp-"))
    topology = load(DEFAULT_TOPOLOGY)
    runner.up(topology)
    fabric = Fabric(topology, vms=())
    lines = []
    try:
        fabric.start_reflectors()
        fabric.start_agent("hv1")
        for domain in (BLUE, RED):
            fabric.agents["hv1"].call(lambda a, domain=domain: a.put_routing_domain(domain))
        api = Api(fabric)
        native, puts = native_latency(fabric, api, args.count, work)
        lines.append(f"lease latency, native (PUT /v1/ports to lease applied): {stats(native)}")
        lines.append(f"  of which PUT /v1/ports answered: {stats(puts)}")
        lines.append(f"lease latency, dnsmasq (hosts entry + SIGHUP to lease applied): "
                     f"{stats(dnsmasq_latency(args.count, work))}")
        held, procs = native_memory(args.ports)
        lines.append(f"native, {args.ports} ports: {held / 1024:.0f} KiB of PortService values "
                     f"({held / args.ports:.0f} B a port), {procs} processes (the agent's one packet socket)")
        for domains in (1, 10):
            rss, procs = dnsmasq_memory(args.ports, domains, work)
            lines.append(f"dnsmasq, {args.ports} ports in {domains} routing domain(s): {procs} processes, "
                         f"{rss / 1024:.1f} MiB resident in all")
        # across a restart: the native agent on hv1, then a dnsmasq
        native_guest = guests.DhcpClient("udhcpc", guest_ns("n", 0), "eth0", work / "restart-n").start()
        try:
            answered, kept, after = renew_across_restart(
                native_guest, lambda: fabric.stop_agent("hv1"), lambda: fabric.start_agent("hv1"))
        finally:
            native_guest.stop()
        lines.append(f"native, agent restarted: renewal while down answered={answered}, address kept={kept}; "
                     f"renewal acknowledged {after * 1000:.0f} ms after the agent was back")
        server = Dnsmasq(DHCP_NS, "br0", SUBNET, work / "dnsmasq", router=GATEWAY,
                         hosts={mac(0, 0x0d): SUBNET.network_address + 100})
        server.start()
        guests.wait_until(server.answering, 30, "dnsmasq")
        dns_guest = guests.DhcpClient("udhcpc", guest_ns("d", 0), "eth0", work / "restart-d").start()
        try:
            answered, kept, after = renew_across_restart(dns_guest, server.stop, server.start)
        finally:
            dns_guest.stop()
            server.stop()
        lines.append(f"dnsmasq restarted: renewal while down answered={answered}, address kept={kept}; "
                     f"renewal acknowledged {after * 1000:.0f} ms after dnsmasq was started again")
    finally:
        print("\n".join(["", "guest DHCP benchmark:", *lines]), flush=True)
        fabric.close()
        for ns in netns.list_namespaces():
            if ns.startswith("nvb-"):
                netns.destroy(ns)
        runner.down(topology.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
