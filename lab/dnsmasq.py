"""dnsmasq as Neutron runs it, for the DHCP benchmark and the lab's own tests of its clients: one process per
routing domain (Neutron: per network), in its own namespace, answering only the MACs of its hosts file
(`--dhcp-hostsfile`), which is rewritten and re-read on SIGHUP when a port comes or goes.

Not a product path: the agent answers DHCP itself (hostagent/guest/); this is the reference it is measured
against (docs/benchmarks.md).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from nvfabric.lab import netns


@dataclass
class Dnsmasq:
    """One dnsmasq on `iface` in `ns`, serving `subnet` (static leases only) with the options a port gets."""

    ns: str
    iface: str
    subnet: ipaddress.IPv4Network
    workdir: Path
    router: ipaddress.IPv4Address | None = None
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    search: tuple[str, ...] = ()
    mtu: int | None = None
    routes: tuple[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address], ...] = ()  # option 121
    lease_time: int = 86400
    hosts: dict[str, ipaddress.IPv4Address] = field(default_factory=dict)  # MAC -> address
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def argv(self) -> list[str]:
        w = self.workdir
        net = self.subnet
        args = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--bind-interfaces",
                f"--interface={self.iface}", "--except-interface=lo", "--dhcp-authoritative", "--log-facility=-",
                # root: it re-reads the hosts file on SIGHUP, from a work directory only root may enter
                "--user=root",
                f"--dhcp-range={net.network_address},static,{net.netmask},{self.lease_time}",
                f"--dhcp-hostsfile={w / 'hosts'}", f"--dhcp-leasefile={w / 'leases'}", f"--pid-file={w / 'pid'}"]
        if self.router is not None:
            args.append(f"--dhcp-option=option:router,{self.router}")
        if self.dns:
            args.append("--dhcp-option=option:dns-server," + ",".join(map(str, self.dns)))
        if self.search:
            args.append("--dhcp-option=option:domain-search," + ",".join(self.search))
        if self.mtu is not None:
            args.append(f"--dhcp-option=option:mtu,{self.mtu}")
        if self.routes:
            args.append("--dhcp-option=option:classless-static-route,"
                        + ",".join(f"{net},{hop}" for net, hop in self.routes))
        return netns.in_netns(self.ns, args)

    def start(self) -> Dnsmasq:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_hosts()
        with open(self.workdir / "dnsmasq.log", "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def _write_hosts(self) -> None:
        tmp = self.workdir / "hosts.new"
        tmp.write_text("".join(f"{mac},{address}\n" for mac, address in self.hosts.items()))
        os.replace(tmp, self.workdir / "hosts")

    def add_host(self, mac: str, address: ipaddress.IPv4Address) -> None:
        """A port's entry, as Neutron's DHCP agent adds it: the hosts file rewritten, then SIGHUP."""
        self.hosts[mac] = address
        self._write_hosts()
        self.reload()

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def rss_kib(self) -> int:
        """The process's resident memory (VmRSS), KiB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for dnsmasq {self.proc.pid}")

    def answering(self) -> bool:
        """dnsmasq has read its hosts file (it logs "read <hostsfile>" once it did)."""
        try:
            return "read " in (self.workdir / "dnsmasq.log").read_text()
        except FileNotFoundError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
