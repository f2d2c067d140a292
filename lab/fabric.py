"""Two tenants on the default topology (lab/topologies/hnv.clab.yml), for the demo, the kernel tests and
the attach benchmark.

Every daemon runs the configuration the topology binds into its node (lab/topologies/hnv/NODE.yaml, what
containerlab's nodes run: `bound_config`), with only what sharing one machine needs changed (an agent's
namespace and state folder) and what a test asks for (`hold_time`, `bfd`, `eor_timeout`, ...).

- Route reflectors: the product's own, `nvfabric rr` on rr1 and rr2 (bgp/reflector/), each accepting any
  client in the fabric's PA prefix (hosts and gateways alike); graceful restart on, so an agent's restart
  withdraws nothing; hold time 9 s, so a dead session is noticed within seconds in the lab.
- Host agents on hv1, hv2, hv3: in this Python process, each in a thread inside its node's namespace
  (lab/daemons.py); one Python start-up in the VM instead of three.
- VMs: a namespace each, its eth0 a veth to a tap-like port on its hypervisor. A VM's IPv4 address is either
  configured statically (`ip addr add`, as an orchestrator injects it) or, with `dhcp` set to a client's name
  (lab/guests.py: udhcpc, dhclient, dhcpcd), leased from its host's agent once its port is in place.
- Tenants with overlapping address space:
  blue: VSID 5001 10.0.0.0/24 + fd00:b::/64, VSID 5002 10.0.1.0/24; red: VSID 6001 10.0.0.0/24.
  b1 (hv1), b2 (hv2) in 5001, b3 (hv3) in 5002; r1 (hv1) in 6001 with b2's address, r3 (hv3) in 6001.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nvfabric.hostagent.config import AgentConfig
from nvfabric.lab import guests, netns
from nvfabric.lab.daemons import AgentThread
from nvfabric.lab.topology import Topology
from nvfabric.vnet.kernel.netns import enter_namespace
from nvfabric.vnet.model import Port, RoutingDomain

ASN = 65000
NVFABRIC = str(Path(sys.executable).parent / "nvfabric")  # the console script of this environment
RR = {"rr1": "198.51.100.100", "rr2": "198.51.100.101"}
HV = {"hv1": "198.51.100.11", "hv2": "198.51.100.12", "hv3": "198.51.100.13"}
HV6 = {"hv1": "2001:db8::11", "hv2": "2001:db8::12", "hv3": "2001:db8::13"}

BLUE = RoutingDomain.from_dict({"name": "blue", "route_targets": ["65000:1"], "subnets": [
    {"vsid": 5001, "prefixes": ["10.0.0.0/24", "fd00:b::/64"]}, {"vsid": 5002, "prefixes": ["10.0.1.0/24"]}]})
RED = RoutingDomain.from_dict({"name": "red", "route_targets": ["65000:2"], "subnets": [
    {"vsid": 6001, "prefixes": ["10.0.0.0/24"]}]})


@dataclass(frozen=True)
class Vm:
    name: str
    host: str
    tenant: str
    vsid: int
    mac: str
    addresses: tuple[str, ...]  # CIDR
    # None: IPv4 configured statically; else the DHCP client (lab/guests.py) that leases it from the host
    dhcp: str | None = None

    @property
    def cas(self) -> tuple[str, ...]:
        return tuple(a.split("/")[0] for a in self.addresses)

    @property
    def tap(self) -> str:
        return f"tap-{self.name}"

    def port(self) -> Port:
        return Port(self.name, self.tap, self.mac, self.vsid,
                    tuple(ipaddress.ip_address(a) for a in self.cas))


VMS = (
    Vm("b1", "hv1", "blue", 5001, "02:00:00:00:0b:01", ("10.0.0.11/24", "fd00:b::11/64")),
    Vm("b2", "hv2", "blue", 5001, "02:00:00:00:0b:02", ("10.0.0.12/24", "fd00:b::12/64")),
    Vm("b3", "hv3", "blue", 5002, "02:00:00:00:0b:03", ("10.0.1.13/24",)),
    Vm("r1", "hv1", "red", 6001, "02:00:00:00:0a:01", ("10.0.0.12/24",)),  # b2's address, other tenant
    Vm("r3", "hv3", "red", 6001, "02:00:00:00:0a:03", ("10.0.0.13/24",)),
)

# The same VMs configuring their IPv4 by DHCP, each with one of Debian's clients (the demo's VMs)
DHCP_CLIENTS = {"b1": "udhcpc", "b2": "dhclient", "b3": "dhcpcd", "r1": "dhclient", "r3": "udhcpc"}
DHCP_VMS = tuple(dataclasses.replace(vm, dhcp=DHCP_CLIENTS[vm.name]) for vm in VMS)


RR_API_PORT = 8179
RR_API_TOKEN = "lab-reflector"  # the reflector's API wants a bearer token, as the agent's and the gateway's


def bound_config(topology: Topology, node: str) -> dict[str, Any]:
    """The configuration the topology binds into `node` for its daemon (lab/topologies/hnv/NODE.yaml), as a
    mapping: what containerlab's node reads at /etc/nvfabric/ROLE.yaml, the one source of the lab's daemons."""
    path = topology.nodes[node].daemon_config
    if path is None:
        raise ValueError(f"lab {topology.name}: node {node} starts no nvfabric daemon (no exec command does)")
    return dict(yaml.safe_load(path.read_text()))


def rr_config(topology: Topology, node: str, hold_time: int | None = None,
              bfd: dict[str, object] | None = None) -> dict[str, object]:
    """`nvfabric rr` configuration of a reflector node of the default topology (docs/rr.md): its bound file
    (hold time 9 s), `hold_time` (e.g. 90 for BGP's default timers) and `bfd` (the dynamic neighbours' `bfd`,
    passive on a reflector: it answers the clients that run BFD) as a test wants them.

    One dynamic neighbour for the whole PA prefix: a host or gateway added to the lab needs no reflector
    change. The two reflectors do not peer with each other; every client peers with both (the design of
    docs/rr.md), so each holds the whole table on its own."""
    config = bound_config(topology, node)
    if hold_time is not None:
        config["hold_time"] = hold_time
    if bfd is not None:
        config["neighbors"] = [{**n, "bfd": bfd} for n in config["neighbors"]]
    return config


def agent_config(topology: Topology, host: str, state_root: Path, **extra: object) -> AgentConfig:
    """The host's bound agent configuration, run as a thread of this process: in the host's namespace, with a
    state folder of its own under `state_root` (the threads share one filesystem); `extra`: a test's own."""
    return AgentConfig.from_dict({
        **bound_config(topology, host), "state_dir": str(state_root / host), "netns": topology.namespace(host),
        **extra,
    })


def wait_for(probe: Callable[[], object], timeout: float, what: str) -> object:
    end = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


class Fabric:
    """Reflectors, agents and VMs on an already running default topology; `close()` removes what it made."""

    def __init__(self, topology: Topology, workdir: Path | None = None, vms: tuple[Vm, ...] = VMS) -> None:
        self.topology = topology
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="nvfabric-tenants-"))
        self.reflectors: dict[str, subprocess.Popen[bytes]] = {}
        self.agents: dict[str, AgentThread] = {}
        self.vms = vms
        self.vm_ns = {vm.name: f"{topology.name}.vm-{vm.name}" for vm in vms}
        self.leases: dict[str, guests.Lease4] = {}  # what the VMs with `dhcp` got, by VM name

    def ns(self, node: str) -> str:
        return self.topology.namespace(node)

    # -- reflectors ----------------------------------------------------------------------------------
    def start_reflector(self, node: str, hold_time: int | None = None) -> None:
        """`nvfabric rr` on `node`, as an operator runs it: its own process, its log in the work dir.
        `hold_time`: None for the lab's 9 s (rr_config), e.g. 90 for BGP's default timers."""
        self.start_reflectors(hold_time, (node,))

    def start_reflectors(self, hold_time: int | None = None, nodes: Iterable[str] = tuple(RR),
                         bfd: dict[str, object] | None = None) -> None:
        """Start them all, then wait until each answers (its API comes up after its BGP listener): a client
        that dials a reflector still starting backs off for longer each time, up to a minute, and Python
        takes tens of seconds to start in a loaded TCG VM, so they start side by side."""
        for node in nodes:
            conf = self.dir / f"{node}.yaml"
            config = rr_config(self.topology, node, hold_time, bfd)
            conf.write_text(yaml.safe_dump(config))
            with open(self.dir / f"{node}.log", "ab") as log:  # the child keeps its own descriptor
                self.reflectors[node] = subprocess.Popen(
                    netns.in_netns(self.ns(node), [NVFABRIC, "rr", "--config", str(conf), "--log-level", "info"]),
                    stdout=log, stderr=subprocess.STDOUT)
        for node in nodes:
            proc = self.reflectors[node]
            wait_for(lambda n=node, p=proc: p.poll() is not None or self.reflector_api(n, "/v1/summary") is not None,
                     120, f"the reflector on {node}")
            if proc.poll() is not None:
                raise RuntimeError(f"the reflector on {node} exited ({proc.returncode}): see {self.dir / node}.log")

    def reflector_api(self, node: str, path: str) -> Any:
        """GET `path` from the reflector's REST API on `node` (127.0.0.1 inside its namespace); None when
        it does not answer."""
        def get() -> Any:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{RR_API_PORT}{path}",
                                                 headers={"Authorization": f"Bearer {RR_API_TOKEN}"})
                with urllib.request.urlopen(request, timeout=10) as response:
                    return json.load(response)
            except OSError:
                return None

        with ThreadPoolExecutor(1, initializer=enter_namespace, initargs=(self.ns(node),)) as pool:
            return pool.submit(get).result(30)

    def kill_reflector(self, node: str) -> None:
        proc = self.reflectors.pop(node, None)
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    # -- VMs -----------------------------------------------------------------------------------------
    def plug(self, vm: Vm, host: str | None = None) -> None:
        """Create (or move) the VM's interface: a veth from the VM namespace to `host`."""
        host = host or vm.host
        ns = self.vm_ns[vm.name]
        if not netns.exists(ns):
            netns.create(ns)
        netns.run(["ip", "-n", ns, "link", "del", "eth0"], check=False)
        netns.ip_batch([netns.veth_line(self.ns(host), vm.tap, ns, "eth0")])
        gw4 = "10.0.1.1" if vm.vsid == 5002 else "10.0.0.1"
        lines = [f"link set eth0 address {vm.mac}", "link set lo up", "link set eth0 up"]
        static = [a for a in vm.addresses if vm.dhcp is None or ":" in a]  # DHCP leases the IPv4 address
        lines += [f"addr add {a} dev eth0" + (" nodad" if ":" in a else "") for a in static]
        if vm.dhcp is None:
            lines += [f"route add default via {gw4}"]
        if any(":" in a for a in vm.addresses):
            lines += ["route add ::/0 via fd00:b::1"]
        netns.ip_batch(lines, ns)
        netns.run(["ip", "-n", self.ns(host), "link", "set", vm.tap, "up"])

    def lease(self, vm: Vm, timeout: float = 60.0) -> guests.Lease4:
        """Run the VM's DHCP client until its lease is applied (the client then stops; the address stays)."""
        assert vm.dhcp is not None, f"{vm.name} is configured statically"
        got = guests.lease(vm.dhcp, self.vm_ns[vm.name], "eth0", self.dir / "guests" / vm.name, timeout)
        self.leases[vm.name] = got
        return got

    def lease_all(self, timeout: float = 60.0) -> dict[str, guests.Lease4 | Exception]:
        """Every VM with `dhcp` leases its address, side by side (dhcpcd probes its address for seconds);
        by VM name, the lease or why there is none."""
        wanted = [vm for vm in self.vms if vm.dhcp is not None]
        out: dict[str, guests.Lease4 | Exception] = {}
        with ThreadPoolExecutor(max(1, len(wanted))) as pool:
            futures = {vm.name: pool.submit(self.lease, vm, timeout) for vm in wanted}
            for name, future in futures.items():
                try:
                    out[name] = future.result()
                except (guests.GuestError, netns.CommandFailed) as exc:
                    out[name] = exc
        return out

    # -- agents --------------------------------------------------------------------------------------
    def start_agent(self, host: str, start_timeout: float = 60.0, **extra: object) -> AgentThread:
        thread = AgentThread(agent_config(self.topology, host, self.dir, **extra)).start(start_timeout)
        self.agents[host] = thread
        return thread

    def stop_agent(self, host: str) -> None:
        thread = self.agents.pop(host, None)
        if thread is not None:
            thread.stop()

    def up(self, hold_time: int | None = None, reflectors: Iterable[str] = tuple(RR),
           rr_bfd: dict[str, object] | None = None, **agent: object) -> None:
        """Reflectors (`hold_time` as in start_reflector, `rr_bfd` the `bfd` of their dynamic neighbours;
        `reflectors`: the nodes that run one, the agents dial every address of RR all the same), VMs, agents
        (`agent`: more of their configuration) with both tenants and their ports. VMs with `dhcp` have no IPv4
        address yet: `lease_all()` gets them theirs."""
        self.start_reflectors(hold_time, reflectors, rr_bfd)
        for vm in self.vms:
            self.plug(vm)
        for host in HV:
            self.start_agent(host, **agent)
        for host, agent in self.agents.items():
            for domain in (BLUE, RED):
                agent.call(lambda a, domain=domain: a.put_routing_domain(domain))
            for vm in self.vms:
                if vm.host == host:
                    agent.call(lambda a, vm=vm: a.put_port(vm.port()))

    def close(self) -> None:
        for host in list(self.agents):
            self.stop_agent(host)
        for node in list(self.reflectors):
            self.kill_reflector(node)
        for ns in self.vm_ns.values():
            netns.destroy(ns)
        shutil.rmtree(self.dir, ignore_errors=True)

    def wait_converged(self, timeout: float) -> None:
        """Until every VM's CAs are in the kernel of every other host of its tenant (TimeoutError)."""
        for vm in self.vms:
            for other in self.vms:
                if other.tenant == vm.tenant and other.host != vm.host:
                    for ca in vm.cas:
                        wait_for(lambda h=other.host, ca=ca: self.learned(h, ca), timeout, f"{ca} on {other.host}")

    # -- probes --------------------------------------------------------------------------------------
    def ping(self, src: str, dst: str, count: int = 1, wait: int = 2, extra: tuple[str, ...] = ()) -> bool:
        family = "-6" if ":" in dst else "-4"
        out = netns.run(netns.in_netns(self.vm_ns[src], ["ping", family, "-c", str(count), "-W", str(wait),
                                                          *extra, dst]), check=False)
        return out.returncode == 0

    def reaches(self, src: str, dst: str, deadline: float = 20.0) -> bool:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.ping(src, dst):
                return True
        return False

    def learned(self, host: str, ca: str) -> bool:
        """The host's kernel has a route for `ca` in some nvfabric table (for polling)."""
        out = netns.run(["ip", "-n", self.ns(host), "-4" if ":" not in ca else "-6", "route", "show", "table",
                         "all", "proto", "78"], check=False).output
        return any(line.startswith(ca + " ") for line in out.splitlines())


# Who must reach whom (and who must not): (source VM, destination address, expected).
EXPECTATIONS = (
    ("b1", "10.0.0.12", True, "blue hv1 -> blue hv2, same subnet"),
    ("b1", "fd00:b::12", True, "blue hv1 -> blue hv2, IPv6"),
    ("b1", "10.0.1.13", True, "blue hv1 -> blue hv3, across subnets"),
    ("b3", "10.0.0.11", True, "blue hv3 -> blue hv1, across subnets"),
    ("r1", "10.0.0.13", True, "red hv1 -> red hv3"),
    ("r3", "10.0.0.12", True, "red hv3 -> red hv1 (b2's address in red)"),
    ("b1", "10.0.0.13", False, "blue -> red r3's address: not in blue"),
    ("r3", "10.0.0.11", False, "red -> blue b1's address: not in red"),
    ("r1", "10.0.1.13", False, "red -> blue b3's address: not in red"),
)


def check(fabric: Fabric) -> list[tuple[str, str, str, bool, bool]]:
    """(source, destination, what, expected, observed) for every expectation."""
    rows = []
    for src, dst, expected, what in EXPECTATIONS:
        observed = fabric.reaches(src, dst, deadline=15.0) if expected else fabric.ping(src, dst, count=2)
        rows.append((src, dst, what, expected, observed))
    return rows


def tenants_scene(topology: Topology) -> tuple[list[tuple[str, str, str, bool, bool]],
                                               dict[str, guests.Lease4 | Exception]]:
    """For lab/demo.py: run the two tenants on the (running) default topology, their VMs leasing their IPv4
    addresses by DHCP from their hosts; rows as in `check`, and each VM's lease (or why it has none)."""
    fabric = Fabric(topology, vms=DHCP_VMS)
    try:
        fabric.up()
        leases = fabric.lease_all()
        fabric.wait_converged(30)
        return check(fabric), leases
    finally:
        fabric.close()
