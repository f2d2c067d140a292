"""Real BGP peers for the interop tests and the BGP benchmarks: GoBGP, FRR and our own `nvfabric bgp speak`
and `nvfabric rr`, each in a network namespace the test creates. Processes write to files under the test's
tmp dir; tests poll what the peer reports (its RIB, our JSON lines) with a deadline instead of sleeping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from nvfabric.lab import netns
from nvfabric.vnet.kernel.netns import inside

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def wait_for(probe: Callable[[], T], timeout: float = 20.0, interval: float = 0.1, what: str = "") -> T:
    """Poll `probe` until it returns something truthy; fail with the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except (subprocess.CalledProcessError, json.JSONDecodeError, netns.CommandFailed) as err:
            last = err
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or probe}: last={last!r}")
        time.sleep(interval)


class Process:
    """A background process inside a namespace; output goes to a log file kept for failure reports."""

    def __init__(self, ns: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log = log
        self._log_file = open(log, "ab")
        self.proc = subprocess.Popen(
            netns.in_netns(ns, argv), stdout=self._log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 3.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(grace)
        self._log_file.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Lab:
    """Namespaces and processes of one test; `close()` removes them all, also after a failure."""

    tmp: Path
    prefix: str
    namespaces: list[str] = field(default_factory=list)
    processes: list[Any] = field(default_factory=list)
    cleanup_dirs: list[Path] = field(default_factory=list)

    def namespace(self, name: str) -> str:
        full = f"{self.prefix}{name}"
        netns.destroy(full)
        netns.run(["ip", "netns", "add", full])
        netns.run(["ip", "-n", full, "link", "set", "lo", "up"])
        self.namespaces.append(full)
        return full

    def link(self, ns_a: str, addr_a: list[str], ns_b: str, addr_b: list[str]) -> None:
        """A veth between two namespaces with the given addresses (CIDR strings), IPv6 without DAD."""
        if_a, if_b = f"v{len(self.namespaces)}{ns_b[-3:]}"[:15], f"v{len(self.namespaces)}{ns_a[-3:]}"[:15]
        if_a, if_b = _unique_if(ns_a, if_a), _unique_if(ns_b, if_b)
        add_veth(ns_a, if_a, ns_b, if_b)
        for ns, ifname, addrs in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
            for addr in addrs:
                extra = ["nodad"] if ":" in addr else []
                netns.run(["ip", "-n", ns, "addr", "add", addr, "dev", ifname, *extra])

    def close(self) -> None:
        for proc in reversed(self.processes):
            try:
                proc.stop()
            except Exception:  # noqa: BLE001 - teardown must reach every namespace
                pass
        for ns in reversed(self.namespaces):
            netns.destroy(ns)
        for directory in self.cleanup_dirs:
            shutil.rmtree(directory, ignore_errors=True)

    def logs(self) -> str:
        parts = []
        for proc in self.processes:
            for log in (proc.logs() if hasattr(proc, "logs") else [proc.log]):
                if log.exists():
                    parts.append(f"==== {log.name}\n{log.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


def add_veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    # Created directly inside both namespaces: nothing appears in the root namespace.
    netns.run(["ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])
    netns.run(["ip", "-n", ns_a, "link", "set", if_a, "up"])
    netns.run(["ip", "-n", ns_b, "link", "set", if_b, "up"])


def _unique_if(ns: str, name: str) -> str:
    existing = netns.run(["ip", "-n", ns, "-o", "link"]).output
    base, i = name, 0
    while f": {name}@" in existing or f": {name}:" in existing:
        i += 1
        name = f"{base[:13]}{i}"
    return name


# -------------------------------------------------------------------------------------------- our speaker


class Speaker:
    """`nvfabric bgp speak` in a namespace; collects its JSON lines (one per route change)."""

    def __init__(self, lab: Lab, ns: str, name: str, config: dict[str, Any]) -> None:
        self.lab = lab
        self.ns = ns
        self.name = name
        self.config_path = lab.tmp / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = lab.tmp / f"{name}.log"
        self.lines: list[dict[str, Any]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        lab.processes.append(self)

    def start(self, *extra: str) -> Speaker:
        argv = [sys.executable, "-m", "nvfabric.cli", "bgp", "speak", "--config", str(self.config_path), *extra]
        self._stderr = open(self.log, "ab")
        self.proc = subprocess.Popen(
            netns.in_netns(self.ns, argv),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=REPO,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        return self

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                self.lines.append(json.loads(raw))
            except json.JSONDecodeError:
                self.lines.append({"unparsed": raw.decode(errors="replace")})

    def reload(self) -> None:
        """SIGHUP: the speaker re-reads its routes from the (rewritten) config file."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        """SIGKILL: no NOTIFICATION, no TCP FIN from the BGP layer's point of view of a clean stop."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        if self._reader:
            self._reader.join(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self._reader:
            self._reader.join(5)

    def logs(self) -> list[Path]:
        return [self.log]

    def routes(self) -> dict[str, dict[str, Any]]:
        """The current learned table, replayed from the change lines: key -> route."""
        table: dict[str, dict[str, Any]] = {}
        for line in list(self.lines):
            if line.get("action") == "announce":
                table[line["key"]] = line["route"]
            elif line.get("action") == "withdraw":
                table.pop(line["key"], None)
        return table

    def changes(self, action: str) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if line.get("action") == action]


# -------------------------------------------------------------------------------------------- our reflector


class RouteReflector:
    """`nvfabric rr --config` in a namespace, its REST API read from inside the namespace."""

    def __init__(self, lab: Lab, ns: str, name: str, config: dict[str, Any], api_port: int = 8179,
                 start_timeout: float = 15.0) -> None:
        self.ns = ns
        self.config_path = lab.tmp / f"{name}.yaml"
        self.api = f"http://127.0.0.1:{api_port}"
        self.token = f"{name}-token"
        self.write_config({**config, "api": {"listen": f"127.0.0.1:{api_port}", "token": self.token}})
        self.log = lab.tmp / f"{name}.log"
        argv = [sys.executable, "-m", "nvfabric.cli", "rr", "--config", str(self.config_path)]
        self.proc = Process(ns, argv, self.log, env={**os.environ, "PYTHONPATH": str(REPO)})
        lab.processes.append(self.proc)
        wait_for(lambda: self.get("/v1/summary"), start_timeout, what=f"{name} API")

    def write_config(self, config: dict[str, Any]) -> None:
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config))

    def reload(self) -> None:
        """SIGHUP: re-read the configuration file."""
        os.kill(self.proc.proc.pid, signal.SIGHUP)

    def get(self, path: str) -> Any:
        import urllib.error
        import urllib.request

        try:
            request = urllib.request.Request(self.api + path, headers={"Authorization": f"Bearer {self.token}"})
            with inside(self.ns), urllib.request.urlopen(request, timeout=5) as response:
                return json.load(response)
        except (urllib.error.URLError, OSError):
            return None

    def neighbor(self, address: str) -> dict[str, Any]:
        return self.get(f"/v1/neighbors/{address}") or {}  # (a 404, a neighbour not seen yet: None)

    def established(self, *addresses: str) -> bool:
        return all(self.neighbor(a).get("state") == "established" for a in addresses)


# -------------------------------------------------------------------------------------------- GoBGP


class GoBgp:
    def __init__(self, lab: Lab, ns: str, name: str, toml: str) -> None:
        self.ns = ns
        self.conf = lab.tmp / f"{name}.toml"
        self.conf.write_text(toml)
        self.log = lab.tmp / f"{name}.log"
        self.proc = Process(ns, ["gobgpd", "-f", str(self.conf), "-p", "--pprof-disable", "-l", "info"], self.log)
        lab.processes.append(self.proc)
        wait_for(lambda: self.cli("global") is not None, 10, what="gobgpd API")

    def cli(self, *args: str) -> str:
        return netns.run(netns.in_netns(self.ns, ["gobgp", *args]), timeout=30).output

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "-j"))

    def evpn_rib(self) -> list[dict[str, Any]]:
        """`gobgp global rib -a evpn -j`: a mapping prefix -> list of paths; flattened to paths."""
        data = self.json("global", "rib", "-a", "evpn")
        return [path for paths in (data or {}).values() for path in paths]

    # GoBGP's API enum PeerState.SessionState.
    SESSION_STATES = {0: "unknown", 1: "idle", 2: "connect", 3: "active", 4: "opensent", 5: "openconfirm",
                      6: "established"}

    def neighbor_state(self, address: str) -> str:
        data = self.json("neighbor", address)
        state = data.get("state", {}).get("session_state", 0)
        return self.SESSION_STATES.get(state, str(state))


GOBGP_RR = "198.51.100.254"  # the reflector's address in the interop tests' segment


def gobgp_rr_toml(clients: list[str], graceful: bool = False, rr: str = GOBGP_RR) -> str:
    """gobgpd.toml: a route reflector at `rr` (AS 65000, passive) for `clients` (l2vpn-evpn, hold 9 s)."""
    out = [f'[global.config]\n  as = 65000\n  router-id = "{rr}"\n  port = 179\n  local-address-list = ["{rr}"]\n']
    for address in clients:
        out.append(f"""
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{address}"
    peer-as = 65000
  [neighbors.transport.config]
    passive-mode = true
  [neighbors.route-reflector.config]
    route-reflector-client = true
    route-reflector-cluster-id = "{rr}"
  [neighbors.timers.config]
    hold-time = 9
    keepalive-interval = 3
""")
        if graceful:
            out.append("""  [neighbors.graceful-restart.config]
    enabled = true
    restart-time = 60
""")
        out.append("""  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "l2vpn-evpn"
""")
        if graceful:
            out.append("""    [neighbors.afi-safis.mp-graceful-restart.config]
      enabled = true
""")
    return "".join(out)


# -------------------------------------------------------------------------------------------- FRR


class Frr:
    """zebra + bgpd (and bfdd when given its configuration; bgpd left out when `bgpd_conf` is None),
    netns-local, with pid/vty/zserv/control paths under the test's tmp dir, as user frr."""

    def __init__(self, lab: Lab, ns: str, name: str, bgpd_conf: str | None, bfdd_conf: str | None = None) -> None:
        self.ns = ns
        # Not under pytest's tmp dir: that is 0700 root and FRR runs as user frr.
        self.dir = Path(tempfile.mkdtemp(prefix=f"nvfabric-frr-{name}-"))
        self.dir.chmod(0o777)
        lab.cleanup_dirs.append(self.dir)
        (self.dir / "zebra.conf").write_text(f"hostname {name}-zebra\n")
        (self.dir / "bgpd.conf").write_text(bgpd_conf or "")
        (self.dir / "bfdd.conf").write_text(bfdd_conf or "")
        common = ["-u", "frr", "-g", "frr", "-z", str(self.dir / "zserv.api"), "--vty_socket", str(self.dir)]

        def daemon(name: str, ready: str, *extra: str) -> Process:
            """/usr/lib/frr/<name>, started, once it has made `ready` (its socket) in the directory."""
            proc = Process(ns, [f"/usr/lib/frr/{name}", *common, "-i", str(self.dir / f"{name}.pid"),
                                "-f", str(self.dir / f"{name}.conf"), *extra], self.dir / f"{name}.log")
            lab.processes.append(proc)
            # 30 s: in a loaded TCG VM zebra once took longer than 10 s to make its socket
            wait_for(lambda: (self.dir / ready).exists(), 30, what=f"{name}'s {ready}")
            return proc

        self.zebra = daemon("zebra", "zserv.api")
        self.bgpd = daemon("bgpd", "bgpd.vty") if bgpd_conf is not None else None
        # bfdd's control socket defaults to a path shared by every instance on the machine.
        self.bfdd = (daemon("bfdd", "bfdd.vty", "--bfdctl", str(self.dir / "bfdd.sock"))
                     if bfdd_conf is not None else None)

    def vtysh(self, command: str) -> str:
        return netns.run(netns.in_netns(self.ns, ["vtysh", "--vty_socket", str(self.dir), "-c", command])).output

    def json(self, command: str) -> Any:
        return json.loads(self.vtysh(command + " json"))

    def neighbor_state(self, address: str) -> str:
        data = self.json(f"show bgp neighbors {address}")
        return data.get(address, {}).get("bgpState", "")


def segment(lab: Lab, hub: str, members: dict[str, list[str]], bridge: str = "br0") -> None:
    """One L2 segment: a bridge in `hub` with each member namespace attached by a veth and addressed.

    `members` maps a namespace to its addresses (CIDR); the hub's own addresses go on the bridge under
    the key `hub`. Every next hop is then on a connected subnet (what FRR needs to resolve it).
    """
    netns.run(["ip", "-n", hub, "link", "add", bridge, "type", "bridge"])
    netns.run(["ip", "-n", hub, "link", "set", bridge, "up"])
    for i, (ns, addrs) in enumerate(members.items()):
        if ns == hub:
            for addr in addrs:
                netns.run(["ip", "-n", hub, "addr", "add", addr, "dev", bridge, *(["nodad"] if ":" in addr else [])])
            continue
        port, member_if = f"p{i}", "eth0"
        add_veth(hub, port, ns, member_if)
        netns.run(["ip", "-n", hub, "link", "set", port, "master", bridge])
        for addr in addrs:
            netns.run(["ip", "-n", ns, "addr", "add", addr, "dev", member_if, *(["nodad"] if ":" in addr else [])])
