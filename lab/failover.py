"""Two gateways and their failover, for tests/kernel/test_gateway_failover.py and bench/gateway_failover.py:
the default topology with gw1 (configured active) and gw2 (standby), the fabric of lab/fabric.py
(reflectors, host agents on hv1-hv3, tenants blue and red), and FRR on `internet` as the upstream router
(eBGP with both gateways).

The gateways run as operators run them, `nvfabric gateway --config FILE` processes inside their nodes'
namespaces (not threads of this process), so the serving one can be cut for real:
- `link`: its links go down (eth1, eth2 and the sync link eth3): no NOTIFICATION, no TCP FIN, its sessions
  die as after a power loss;
- `kill`: SIGKILL of the gateway process and of its conntrackd (its kernel state, NAT and VRFs, stays; the
  kernel closes its TCP sessions);
- `stop`: SIGSTOP of the gateway process: BGP and BFD go silent while its kernel and its conntrackd keep
  running (a wedged daemon); SIGCONT when the measurement is over.
After a cut the gateway is restored (links up, the process started again, SIGCONT) and must become a
healthy standby: the serving role stays where it went, so the next cut is of the other gateway.

Measured during a cut: the longest silence of a 20 Hz ping from blue's b2 to the internet server, the
pings lost, and two TCP connections kept open across it, each exchanging a line every 100 ms on the same
socket: outbound through blue's SNAT (b2 -> the internet server) and inbound through b1's floating IP (the
internet -> 203.0.113.131 -> b1); when the other gateway took over, every host's default route and the
upstream's route moved to it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from nvfabric.lab import netns, runner
from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.daemons import in_ns
from nvfabric.lab.fabric import ASN, HV, NVFABRIC, RR, Fabric, wait_for
from nvfabric.lab.gateway_scene import PUBLIC_POOL, TENANTS, frr_upstream_conf
from nvfabric.lab.peers import Frr, Lab, Process
from nvfabric.lab.probe import Exchange, Server, connect_retrying
from nvfabric.lab.topology import load

# name -> (PA, external address, sync link address)
GW = {"gw1": ("198.51.100.21", "203.0.113.21", "192.0.2.21"), "gw2": ("198.51.100.22", "203.0.113.22", "192.0.2.22")}
OTHER = {"gw1": "gw2", "gw2": "gw1"}
SERVER = ("203.0.113.1", 8080)  # on `internet`
FLOATING = ("203.0.113.131", 9000)  # b1's floating IP (lab/gateway_scene.py), b1's server behind it
B1_SERVER = ("10.0.0.11", 9000)
SNAT_BLUE = "203.0.113.140"
# the GRE sites' tunnel end on both gateways (external.sites_address4), announced upstream by the serving one
SITES_ADDRESS = "203.0.113.250"
REACTION = 21.0  # seconds after detection: the standby's decision, the reflectors, the agents, FRR (margin)
BFD = {"transmit_interval": 300, "receive_interval": 300, "multiplier": 3}
API = ("127.0.0.1", 8510)  # each gateway's, inside its own namespace
API_TOKEN = "lab-gateway"
SYNC_PORT = 3780
CUTS = ("link", "kill", "stop")


@dataclass(frozen=True)
class Options:
    bfd: bool = False  # BFD 300 ms x 3 on the gateways' reflector and upstream sessions (and their peers')
    sync: bool = False  # conntrackd between the gateways over the sync link
    hold_time: int | None = None  # the gateways' BGP hold time (None: their default, 90 s)
    rr_hold_time: int = 90  # the reflectors'

    @property
    def hold(self) -> int:
        """The hold time the gateways' sessions run with (the lower side's; FRR proposes 180 s)."""
        return min(90 if self.hold_time is None else self.hold_time, self.rr_hold_time)

    def describe(self) -> str:
        timers = "BFD 300 ms x 3" if self.bfd else "no BFD"
        return f"{timers}, hold {self.hold} s, conntrackd {'on' if self.sync else 'off'}"


def frr_conf(bfd: bool) -> str:
    """FRR's default BGP timers (keepalive 60 s, hold 180 s): the gateways' lower hold time is what is used;
    with `bfd`, `neighbor X bfd` on each gateway (bfdd's defaults are 300 ms x 3)."""
    conf = frr_upstream_conf("203.0.113.1", ASN, tuple(ext for _, ext, _ in GW.values()))
    if bfd:
        conf = conf.replace(" address-family ipv4 unicast\n",
                            "".join(f" neighbor {ext} bfd\n" for _, ext, _ in GW.values())
                            + " address-family ipv4 unicast\n", 1)
    return conf


def gateway_config(name: str, options: Options, state_dir: Path) -> dict[str, Any]:
    pa, ext, sync = GW[name]
    bfd = {"bfd": dict(BFD)} if options.bfd else {}
    return {
        "asn": ASN, "router_id": pa, "provider_addresses": [pa], "standby": name == "gw2",
        "route_reflectors": [{"address": a, **bfd} for a in RR.values()],
        "external": {"interfaces": ["eth2"], "next_hop4": "203.0.113.1", "address4": ext,
                     "sites_address4": SITES_ADDRESS},
        "upstream": [{"address": "203.0.113.1", "asn": 64496, **bfd}],
        "public_prefixes": [PUBLIC_POOL], "state_dir": str(state_dir),
        "api": {"listen": f"{API[0]}:{API[1]}", "token": API_TOKEN},
        **({} if options.hold_time is None else {"hold_time": options.hold_time}),
        **({"sync": {"interface": "eth3", "local_address": sync, "peer_address": GW[OTHER[name]][2],
                     "port": SYNC_PORT}} if options.sync else {}),
        "tenants": [t.as_dict() for t in TENANTS]}


class GatewayProcess:
    """`nvfabric gateway --config FILE` inside a node's namespace; its REST API read from inside it."""

    def __init__(self, fab: Fabric, tmp: Path, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.ns = fab.ns(name)
        self.config_path = tmp / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = tmp / f"{name}.log"
        self.proc: Process | None = None
        self.frozen = False

    def start(self) -> None:
        self.proc = Process(self.ns, [NVFABRIC, "gateway", "--config", str(self.config_path), "--log-level", "info"],
                            self.log)

    def wait_api(self, timeout: float = 120) -> None:
        wait_for(lambda: not self.alive() or self.api("/v1/tenants") is not None, timeout, f"{self.name}'s API")
        if not self.alive():
            raise RuntimeError(f"{self.name} exited: {self.log.read_text(errors='replace')[-3000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def api(self, path: str) -> Any:
        """GET `path` from the gateway's API; None when it does not answer (or has no such path)."""
        def get() -> Any:
            try:
                request = urllib.request.Request(f"http://{API[0]}:{API[1]}{path}",
                                                 headers={"Authorization": f"Bearer {API_TOKEN}"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    return json.load(response)
            except OSError:
                return None
        return in_ns(self.ns, get, timeout=30)

    def status(self) -> dict[str, Any] | None:
        """GET /v1/status: role, sessions, BFD, conntrack sync."""
        return self.api("/v1/status")

    def pids(self, comm: str) -> list[int]:
        """The processes named `comm` in this gateway's namespace (its conntrackd: a child it may have
        started in its own session)."""
        out = netns.run(["ip", "netns", "pids", self.ns], check=False).output.split()
        found = []
        for pid in out:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                    found.append(int(pid))
            except OSError:
                continue
        return found

    def kill(self) -> None:
        """SIGKILL of the gateway and of its conntrackd and charon: a crash, nothing said to anybody."""
        assert self.proc is not None
        os.kill(self.proc.proc.pid, signal.SIGKILL)
        # its children die with it, as systemd ends a unit's processes (charon would keep the sites' SAs)
        for pid in self.pids("conntrackd") + self.pids("charon-systemd"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.proc.wait(10)
        self.proc.stop()  # closes the log

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.proc.pid, signal.SIGCONT)
        self.frozen = False

    def took_over(self, after: float) -> float | None:
        """When this gateway last started serving (wall clock), if after `after`: its status's role.since,
        else its log's takeover line."""
        status = self.status()
        role = (status or {}).get("role") or {}
        if role.get("serving") and isinstance(role.get("since"), (int, float)) and role["since"] > after:
            return float(role["since"])
        found = None
        for line in self.log.read_text(errors="replace").splitlines():
            if "taking over" in line or "starts serving" in line:
                try:
                    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                except ValueError:
                    continue
                if stamp > after:
                    found = stamp
        return found

    def close(self) -> None:
        if self.proc is not None:
            if self.frozen:
                self.thaw()
            self.proc.stop()
        # one the gateway left behind (killed before it could stop it)
        for pid in self.pids("conntrackd") + self.pids("charon-systemd"):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def frr_next_hops(frr: Frr, prefix: str) -> list[str]:
    data = frr.json(f"show ip route {prefix}")
    return sorted(h.get("ip", "") for r in data.get(prefix, []) if r.get("selected")
                  for h in r.get("nexthops", []) if h.get("active"))


def default_pa(fab: Fabric, host: str) -> str:
    out = netns.run(["ip", "-n", fab.ns(host), "route", "show", "vrf", "nvf-blue", "default"], check=False).output
    found = re.search(r"encap ip id \d+ src \S+ dst (\S+)|dst (\S+)", out)
    return (found.group(1) or found.group(2)) if found else ""


@dataclass
class TwoGateways:
    fab: Fabric
    gws: dict[str, GatewayProcess]
    frr: Frr
    options: Options
    servers: list[Server] = field(default_factory=list)

    def routed_to(self, name: str) -> bool:
        """Every host's default route and the upstream's route for the floating IP point at `name`."""
        pa, ext, _ = GW[name]
        return (all(default_pa(self.fab, h) == pa for h in HV)
                and frr_next_hops(self.frr, f"{FLOATING[0]}/32") == [ext])

    def serving(self) -> str:
        """The gateway the hosts' default routes point at ('' while they disagree)."""
        pas = {default_pa(self.fab, h) for h in HV}
        return next((name for name, (pa, _, _) in GW.items() if pas == {pa}), "")

    def healthy_standby(self, name: str) -> bool:
        """`name` runs, has every BGP session up and stands by having judged the fabric's table (by its status
        when it has one: a gateway back from no reflector session does not judge, so would not take over,
        for a while; else by the upstream's view), and the other gateway still has everything routed to it."""
        gw = self.gws[name]
        if not gw.alive() or gw.frozen or not self.routed_to(OTHER[name]):
            return False
        if self.frr.neighbor_state(GW[name][1]) != "Established":
            return False
        status = gw.status()
        if status is None:
            return gw.api("/v1/tenants") is not None
        sessions = status.get("sessions") or []
        role = status.get("role") or {}
        return (not role.get("serving", False) and str(role.get("reason", "")).startswith("standing by")
                and all(s.get("state") == "established" for s in sessions))


@contextmanager
def two_gateways(tmp: Path, options: Options) -> Iterator[TwoGateways]:
    """The default topology with gw1 serving, gw2 its standby, FRR upstream; both gateways carry blue and
    red; the internet server (SERVER) and b1's server behind its floating IP run."""
    topology = load(DEFAULT_TOPOLOGY)
    runner.up(topology)
    fab = Fabric(topology)
    lab = Lab(tmp=tmp, prefix="")
    gws: dict[str, GatewayProcess] = {}
    servers: list[Server] = []
    try:
        # first: while the VM is idle; bfdd runs bgpd's `neighbor X bfd` sessions
        frr = Frr(lab, fab.ns("internet"), "upstream", frr_conf(options.bfd),
                  bfdd_conf="hostname upstream-bfdd\n" if options.bfd else None)
        fab.up(options.rr_hold_time, rr_bfd=BFD if options.bfd else None)
        for name in GW:
            gws[name] = GatewayProcess(fab, tmp, name, gateway_config(name, options, tmp / f"{name}-state"))
            gws[name].start()  # side by side: Python starts slowly in the VM
        for gw in gws.values():
            gw.wait_api()
        two = TwoGateways(fab, gws, frr, options)
        wait_for(lambda: two.routed_to("gw1"), 120, "every host and the upstream route to gw1")
        wait_for(lambda: two.healthy_standby("gw2"), 120, "gw2 a healthy standby")
        servers += [Server(fab.ns("internet"), SERVER), Server(fab.vm_ns["b1"], B1_SERVER, "b1 ")]
        two.servers = servers
        yield two
    finally:
        for server in servers:
            server.close()
        for gw in gws.values():
            try:
                gw.close()
            except Exception:  # noqa: BLE001 - teardown goes on
                pass
        lab.close()
        fab.close()
        runner.down(topology.name)


@dataclass(frozen=True)
class Connection:
    survived: bool  # the same socket exchanged again after the cut, no error
    stall: float  # its longest time without an exchange (s; inf if none after the cut)
    error: str | None


@dataclass(frozen=True)
class Failover:
    cut: str  # link, kill, stop
    gateway: str  # the one cut (it was serving)
    takeover: float | None  # seconds from the cut until the other started serving (None: not found)
    hosts: float  # ... until every host's default route pointed at the other
    upstream: float  # ... until the upstream routed the floating IP to the other
    gap: float  # the ping's longest silence (the outbound outage)
    lost: int  # pings without a reply
    outbound: Connection  # b2 -> internet through blue's SNAT
    inbound: Connection  # internet -> b1's floating IP
    replicated: bool | None  # both flows were in the other gateway's conntrack before the cut (None: no sync)


class Ping:
    """`ping -D` at 20 Hz from a VM, its lines read as they come (the replies' timestamps)."""

    def __init__(self, ns: str, dst: str, interval: float = 0.05) -> None:
        self.proc = subprocess.Popen(netns.in_netns(ns, ["ping", "-D", "-i", str(interval), "-W", "1", dst]),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.replies: list[float] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            found = re.match(r"\[(\d+\.\d+)\] \d+ bytes from", line)
            if found:
                self.replies.append(float(found.group(1)))

    def stop(self) -> int:
        """Stop (ping prints its summary on SIGINT); the pings without a reply."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        self._reader.join(10)
        sent = re.search(r"(\d+) packets transmitted, (\d+) received", "".join(self.lines))
        return int(sent.group(1)) - int(sent.group(2)) if sent else -1

    def longest_silence(self, t: float) -> float:
        """From the last reply before t on: the longest time without a reply (inf: none after t)."""
        before = [x for x in self.replies if x <= t]
        after = [x for x in self.replies if x > t]
        if not before or not after:
            return float("inf")
        window = [before[-1], *after]
        return max(b - a for a, b in zip(window, window[1:], strict=False))


def in_conntrack(ns: str, *ports: int) -> bool:
    """Every one of these TCP source ports is in some entry of the namespace's conntrack table (any zone)."""
    out = netns.run(netns.in_netns(ns, ["conntrack", "-L", "-p", "tcp"]), check=False).output
    return all(f"sport={port} " in out for port in ports)


def cut(two: TwoGateways, name: str, kind: str) -> None:
    gw = two.gws[name]
    if kind == "link":  # one `ip` for the three: they go down together
        netns.ip_batch([f"link set {ifname} down" for ifname in ("eth1", "eth2", "eth3")], gw.ns)
    elif kind == "kill":
        gw.kill()
    elif kind == "stop":
        gw.freeze()
    else:
        raise ValueError(f"cut: {kind!r} is not one of {CUTS}")


def restore(two: TwoGateways, name: str, kind: str, timeout: float = 240) -> float:
    """Undo the cut; wait until `name` is a healthy standby again (the role stays with the other: the
    gateways do not preempt). Seconds it took."""
    start = time.time()
    gw = two.gws[name]
    if kind == "link":
        netns.ip_batch([f"link set {ifname} up" for ifname in ("eth1", "eth2", "eth3")], gw.ns)
    elif kind == "kill":
        gw.start()
        gw.wait_api()
    elif kind == "stop":
        gw.thaw()
    wait_for(lambda: two.healthy_standby(name), timeout, f"{name} a healthy standby after the {kind} cut")
    return time.time() - start


def recover(two: TwoGateways, timeout: float = 240) -> str:
    """After a measurement that failed half-way: every gateway's links up, a frozen one thawed, a dead one
    started again; wait until one serves and the other is a healthy standby. The serving one."""
    for gw in two.gws.values():
        netns.ip_batch([f"link set {ifname} up" for ifname in ("eth1", "eth2", "eth3")], gw.ns)
        if gw.frozen:
            gw.thaw()
        if not gw.alive():
            gw.start()
            gw.wait_api()
    wait_for(lambda: two.serving() and two.healthy_standby(OTHER[two.serving()]), timeout,
             "one gateway serving, the other a healthy standby")
    return two.serving()


def cut_during_traffic(two: TwoGateways, kind: str, timeout: float) -> Failover:
    """Cut the serving gateway (`kind`: link, kill, stop) during the ping and the two TCP connections; wait
    (each within `timeout` s of the cut) until the hosts and the upstream follow to the other gateway and
    traffic flows again, then measure. The cut gateway is left cut: `restore` it."""
    fab = two.fab
    name = two.serving()
    assert name, "no gateway serves every host"
    other = OTHER[name]
    s_out, line = connect_retrying(fab.vm_ns["b2"], SERVER)
    assert line.startswith(f"{SNAT_BLUE}:"), line
    s_in, line_in = connect_retrying(fab.ns("internet"), FLOATING)
    assert line_in.startswith("b1 "), line_in
    outbound, inbound = Exchange(s_out), Exchange(s_in)
    ping = Ping(fab.vm_ns["b2"], SERVER[0])
    lost = -1
    try:
        replicated = None
        if two.options.sync:
            ports = (s_out.getsockname()[1], s_in.getsockname()[1])
            try:
                wait_for(lambda: in_conntrack(two.gws[other].ns, *ports), 20, f"both flows replicated to {other}")
                replicated = True
            except TimeoutError:
                replicated = False
        wait_for(lambda: len(ping.replies) >= 20 and outbound.since(0) >= 10 and inbound.since(0) >= 10, 30,
                 "the ping and both connections under way")
        t0 = time.time()
        cut(two, name, kind)
        pa, ext, _ = GW[other]
        for host in HV:
            wait_for(lambda h=host: default_pa(fab, h) == pa, timeout - (time.time() - t0),
                     f"default via {other} on {host}")
        hosts = time.time() - t0
        wait_for(lambda: frr_next_hops(two.frr, f"{FLOATING[0]}/32") == [ext], timeout - (time.time() - t0),
                 f"the upstream routes the floating IP to {other}")
        upstream = time.time() - t0
        switched = time.time()
        # traffic again: a second of replies, and each connection's next exchanges (TCP's retransmission
        # backs off: a connection may resume seconds after the path is back) or its failure
        try:
            wait_for(lambda: (sum(1 for r in ping.replies if r > switched) >= 20
                              and all(c.since(switched) >= 3 or c.error for c in (outbound, inbound))),
                     max(30.0, timeout - (time.time() - t0)), "traffic after the switch")
        except TimeoutError:
            pass  # measured as it is: a connection that never came back did not survive
    finally:
        lost = ping.stop()
        outbound.close()
        inbound.close()
    took = two.gws[other].took_over(t0)

    def connection(c: Exchange) -> Connection:
        return Connection(c.error is None and c.since(switched) > 0, c.longest_stall(t0), c.error)

    return Failover(kind, name, None if took is None else took - t0, hosts, upstream, ping.longest_silence(t0),
                    lost, connection(outbound), connection(inbound), replicated)


def row(f: Failover) -> str:
    """A Markdown table row (see HEADER)."""
    def conn(c: Connection) -> str:
        return f"{'yes' if c.survived else 'NO'} ({c.stall:.1f})"
    took = "-" if f.takeover is None else f"{f.takeover:.1f}"
    repl = "-" if f.replicated is None else ("yes" if f.replicated else "no")
    return (f"| {f.cut} | {f.gateway} | {f.gap:.2f} | {f.lost} | {conn(f.outbound)} | {conn(f.inbound)} | {took} | "
            f"{f.hosts:.1f} | {f.upstream:.1f} | {repl} |")


HEADER = ("| cut | gateway cut | longest ping silence (s) | pings lost | TCP via SNAT survived (longest stall, s) | "
          "TCP via floating IP survived (stall, s) | other took over (s) | hosts switched (s) | "
          "upstream switched (s) | flows replicated before |\n"
          "|---|---|---:|---:|---|---|---:|---:|---:|---|")
