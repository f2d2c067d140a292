"""Real DHCP and router-discovery clients from Debian, run in a lab VM's namespace, and what each got.

A lab VM is a namespace (lab/fabric.py); a guest that configures itself runs one of the clients a tenant
runs: busybox `udhcpc`, ISC `dhclient` (-4 and -6), `dhcpcd`, `rdisc6`. Each client's script is wrapped by
a recorder that writes the environment the client hands its script into a numbered file once the script
has applied it, so "the guest has its lease" is a condition the lab polls for (never a sleep), and what it
got (address, router, DNS, MTU, classless static routes) is read back from what the client itself parsed.

Each client runs under `ip netns exec` (its own mount namespace) and `unshare -u` (its own host name): the
resolver file, dhcpcd's run and lease directories are bind-mounted from the client's work directory, so a
client configuring the lab's resolver or host name never touches the machine's own.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from nvfabric.lab import netns

CLIENTS = ("udhcpc", "dhclient", "dhcpcd")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Events a client's script receives once the guest holds a (new or renewed) IPv4 or IPv6 lease.
BOUND = {"bound", "renew", "BOUND", "RENEW", "REBIND", "REBOOT", "BOUND6", "RENEW6", "REBIND6", "REBOOT6"}

# What busybox's examples/udhcp/simple.script does, which Debian's /etc/udhcpc/default.script does not:
# install the classless static routes (option 121). RFC 3442: when they come, the router option is ignored
# (the default route is among them). The resolver goes to the client's own file.
UDHCPC_SCRIPT = r"""#!/bin/sh
event="$1"
case "$event" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set dev "$interface" up
    ;;
bound|renew)
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    ip -4 addr replace "$ip/${mask:-24}" dev "$interface" ${broadcast:+broadcast $broadcast} \
        valid_lft "${lease:-forever}" preferred_lft "${lease:-forever}" || exit 1
    if [ -n "$staticroutes" ]; then
        set -- $staticroutes
        while [ $# -ge 2 ]; do
            if [ "$2" = 0.0.0.0 ]; then ip -4 route replace "$1" dev "$interface" || exit 1
            else ip -4 route replace "$1" via "$2" dev "$interface" || exit 1; fi
            shift 2
        done
    elif [ -n "$router" ]; then
        ip -4 route replace default via "${router%% *}" dev "$interface" || exit 1
    fi
    { [ -n "$search" ] && echo "search $search"; for s in $dns; do echo "nameserver $s"; done; } > "$RESOLV_CONF"
    ;;
esac
exit 0
"""

# Runs the client's own script (if any) first, then records: a recorded lease is an applied one.
RECORDER = """#!/bin/sh
{next} "$@"
rc=$?
d={events}
n=$(ls "$d" | wc -l)
{{ echo "ARG1=$1"; echo "RC=$rc"; echo "T=$(date +%s.%N)"; env; }} > "$d/.new" && mv "$d/.new" "$d/$(printf %04d "$n")"
exit $rc
"""


class GuestError(RuntimeError):
    """A client did not get what the lab waited for; the message names the client, the namespace and what
    the client printed."""


@dataclass(frozen=True)
class Lease4:
    client: str
    address: ipaddress.IPv4Interface
    server: ipaddress.IPv4Address | None
    router: ipaddress.IPv4Address | None
    dns: tuple[ipaddress.IPv4Address, ...]
    search: tuple[str, ...]
    mtu: int | None
    routes: tuple[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address], ...]  # option 121, as received
    lease_time: int | None
    event: str  # what the client's script was told: bound, renew, BOUND, REBOOT, ...


@dataclass(frozen=True)
class Lease6:
    client: str
    address: ipaddress.IPv6Address
    dns: tuple[ipaddress.IPv6Address, ...]
    search: tuple[str, ...]
    event: str


@dataclass(frozen=True)
class RouterAdvert:
    """What `rdisc6` printed for one advertisement."""
    router: ipaddress.IPv6Address | None  # the source (a link-local address)
    managed: bool  # M flag: addresses from DHCPv6
    other: bool  # O flag: other configuration from DHCPv6
    lifetime: int | None  # router lifetime, seconds
    prefixes: tuple[ipaddress.IPv6Network, ...]
    mtu: int | None
    rdnss: tuple[ipaddress.IPv6Address, ...]
    dnssl: tuple[str, ...]


# -- parsing what the clients recorded (pure) ------------------------------------------------------------
def parse_env(text: str) -> dict[str, str]:
    """`env` output as a mapping (values with newlines are not used by any client variable we read)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            out[key] = value
    return out


def _v4s(text: str | None) -> tuple[ipaddress.IPv4Address, ...]:
    return tuple(ipaddress.IPv4Address(w) for w in (text or "").split())


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(w.rstrip(".") for w in (text or "").split())


def pairs_routes(text: str | None) -> tuple[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address], ...]:
    """'10.1.0.0/16 10.0.0.5 0.0.0.0/0 10.0.0.1' (udhcpc, dhcpcd) as (prefix, next hop) pairs."""
    words = (text or "").split()
    return tuple((ipaddress.IPv4Network(words[i]), ipaddress.IPv4Address(words[i + 1]))
                 for i in range(0, len(words) - 1, 2))


def rfc3442_routes(text: str | None) -> tuple[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address], ...]:
    """dhclient's option 121 as the bytes of RFC 3442 section 2 in decimal ('16 10 77 10 9 0 5 ...'): per
    route the prefix length, the significant octets of the destination, the four of the router."""
    raw = [int(w) for w in (text or "").replace(",", " ").split()]
    routes, i = [], 0
    while i < len(raw):
        width = raw[i]
        octets = (width + 7) // 8
        dest = bytes(raw[i + 1:i + 1 + octets]) + bytes(4 - octets)
        router = bytes(raw[i + 1 + octets:i + 5 + octets])
        if width > 32 or len(router) != 4:
            raise ValueError(f"malformed classless static routes: {text!r}")
        routes.append((ipaddress.IPv4Network((dest, width)), ipaddress.IPv4Address(router)))
        i += 5 + octets
    return tuple(routes)


def lease4_from(client: str, env: dict[str, str]) -> Lease4:
    """A Lease4 from the variables a client gives its script (each client names them its own way)."""
    if client == "udhcpc":
        return Lease4(client, ipaddress.IPv4Interface(f"{env['ip']}/{env.get('mask') or env.get('subnet')}"),
                      ipaddress.IPv4Address(env["serverid"]) if env.get("serverid") else None,
                      next(iter(_v4s(env.get("router"))), None), _v4s(env.get("dns")),
                      _names(env.get("search") or env.get("domain")), _int(env.get("mtu")),
                      pairs_routes(env.get("staticroutes")), _int(env.get("lease")), env.get("ARG1", ""))
    if client in ("dhclient", "dhcpcd"):
        routes = (rfc3442_routes(env.get("new_rfc3442_classless_static_routes")) if client == "dhclient"
                  else pairs_routes(env.get("new_classless_static_routes")))
        return Lease4(client, ipaddress.IPv4Interface(f"{env['new_ip_address']}/{env['new_subnet_mask']}"),
                      ipaddress.IPv4Address(env["new_dhcp_server_identifier"])
                      if env.get("new_dhcp_server_identifier") else None,
                      next(iter(_v4s(env.get("new_routers"))), None), _v4s(env.get("new_domain_name_servers")),
                      _names(env.get("new_domain_search") or env.get("new_domain_name")),
                      _int(env.get("new_interface_mtu")), routes, _int(env.get("new_dhcp_lease_time")),
                      env.get("reason", ""))
    raise ValueError(f"unknown client {client!r} (known: {', '.join(CLIENTS)})")


def lease6_from(client: str, env: dict[str, str]) -> Lease6:
    return Lease6(client, ipaddress.IPv6Address(env["new_ip6_address"]),
                  tuple(ipaddress.IPv6Address(w) for w in env.get("new_dhcp6_name_servers", "").split()),
                  _names(env.get("new_dhcp6_domain_search")), env.get("reason", ""))


def parse_rdisc6(text: str) -> list[RouterAdvert]:
    """Every advertisement in `rdisc6` output (its field names and layout, ndisc6 1.0)."""
    adverts: list[RouterAdvert] = []
    cur: dict[str, object] = {}

    def value(line: str) -> str:
        return line.split(":", 1)[1].strip()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Hop limit"):
            cur = {"prefixes": [], "rdnss": [], "dnssl": [], "mtu": None, "lifetime": None}
        elif not cur:
            continue
        elif stripped.startswith("Stateful address conf."):
            cur["managed"] = value(stripped) == "Yes"
        elif stripped.startswith("Stateful other conf."):
            cur["other"] = value(stripped) == "Yes"
        elif stripped.startswith("Router lifetime"):
            cur["lifetime"] = _int(value(stripped).split()[0])
        elif stripped.startswith("Prefix "):
            cur["prefixes"].append(ipaddress.IPv6Network(value(stripped)))  # type: ignore[union-attr]
        elif stripped.startswith("MTU "):
            cur["mtu"] = _int(value(stripped).split()[0])
        elif stripped.startswith("Recursive DNS server"):
            cur["rdnss"] += [ipaddress.IPv6Address(w) for w in value(stripped).split()]  # type: ignore[operator]
        elif stripped.startswith("DNS search list") and "lifetime" not in stripped:
            cur["dnssl"] += _names(value(stripped))  # type: ignore[operator]
        elif stripped.startswith("from "):
            adverts.append(RouterAdvert(
                ipaddress.IPv6Address(stripped.split()[1]), bool(cur.get("managed")), bool(cur.get("other")),
                cur["lifetime"], tuple(cur["prefixes"]), cur["mtu"],  # type: ignore[arg-type]
                tuple(cur["rdnss"]), tuple(cur["dnssl"])))  # type: ignore[arg-type]
            cur = {}
    return adverts


# -- running the clients ------------------------------------------------------------------------------
def wait_until(probe, timeout: float, what: str, interval: float = 0.05):  # noqa: ANN001, ANN201
    """Poll `probe` until it returns something true (returned), or raise GuestError after `timeout`."""
    end = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > end:
            raise GuestError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class DhcpClient:
    """One client process on a VM's interface (`ns`, `iface`), its files under `workdir`.

    `start()` runs it in the foreground (a child of this process: stopping it is ours), `lease()` waits for
    the next recorded lease, `renew()` asks for a renewal the client's own way, `stop()` ends it without a
    release (as a guest that is switched off)."""

    client: str
    ns: str
    iface: str
    workdir: Path
    family: int = 4
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.client not in CLIENTS or (self.family == 6 and self.client != "dhclient"):
            raise ValueError(f"client {self.client!r} for IPv{self.family}: the lab runs {', '.join(CLIENTS)} "
                             "for IPv4 and dhclient for IPv6")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.events = self.workdir / "events"
        self.events.mkdir(exist_ok=True)
        self.log = self.workdir / "client.log"
        (self.workdir / "resolv.conf").touch()
        for sub in ("run", "lib"):
            (self.workdir / sub).mkdir(exist_ok=True)
        script = {"udhcpc": self.workdir / "udhcpc.script", "dhclient": Path("/sbin/dhclient-script")}.get(self.client)
        if self.client == "udhcpc":
            script.write_text(UDHCPC_SCRIPT)
            script.chmod(0o755)
        recorder = self.workdir / "record.sh"
        recorder.write_text(RECORDER.format(next=script or ":", events=self.events))
        recorder.chmod(0o755)

    def argv(self) -> list[str]:
        w, rec = self.workdir, str(self.workdir / "record.sh")
        if self.client == "udhcpc":
            # -O: options busybox does not ask for by default; no -q: it stays to renew (SIGUSR1)
            client = ["udhcpc", "-f", "-i", self.iface, "-s", rec, "-t", "20", "-T", "1", "-A", "1",
                      "-O", "mtu", "-O", "staticroutes", "-O", "search"]
        elif self.client == "dhclient":
            # Debian's /etc/dhcp/dhclient.conf (it asks for the MTU and option 121) and dhclient-script
            client = ["dhclient", f"-{self.family}", "-d", "-v", "-sf", rec, "-lf", str(w / f"leases{self.family}"),
                      "-pf", str(w / f"pid{self.family}"), self.iface]
        else:
            conf = w / "dhcpcd.conf"
            conf.write_text("option domain_name_servers, domain_search, interface_mtu, classless_static_routes\n"
                            "noipv4ll\n")
            client = ["dhcpcd", "-4", "-B", "-t", "60", "--persistent", "-f", str(conf), "-c", rec, self.iface]
        mounts = [f"mount --bind {w}/resolv.conf /etc/resolv.conf"]
        if self.client == "dhcpcd":
            mounts += ["mkdir -p /run/dhcpcd /var/lib/dhcpcd", f"mount --bind {w}/run /run/dhcpcd",
                       f"mount --bind {w}/lib /var/lib/dhcpcd"]
        shell = " && ".join([*mounts, "exec " + " ".join(client)])
        return netns.in_netns(self.ns, ["env", "-i", f"PATH={PATH}", f"RESOLV_CONF={w}/resolv.conf",
                                        "unshare", "-u", "sh", "-c", shell])

    def start(self) -> DhcpClient:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def recorded(self) -> list[dict[str, str]]:
        return [parse_env(p.read_text()) for p in sorted(self.events.iterdir()) if not p.name.startswith(".")]

    def leases(self) -> list[dict[str, str]]:
        """The recorded events that carried a lease its script applied, oldest first."""
        return [e for e in self.recorded()
                if e.get("RC") == "0" and (e.get("ARG1") in BOUND or e.get("reason") in BOUND)]

    def applied_at(self, after: int = 0) -> float | None:
        """When (time.time()) the client's script had applied the lease after the first `after` ones."""
        got = self.leases()
        return float(got[after]["T"]) if len(got) > after and got[after].get("T") else None

    def lease(self, timeout: float = 30.0, after: int = 0) -> Lease4 | Lease6:
        """The first lease recorded after the first `after` ones (GuestError when none comes)."""
        def probe() -> dict[str, str] | None:
            if self.proc is not None and self.proc.poll() is not None and len(self.leases()) <= after:
                raise GuestError(f"{self.client} in {self.ns} exited ({self.proc.returncode}) without a lease: "
                                 f"{self.output()}")
            got = self.leases()
            return got[after] if len(got) > after else None

        try:
            env = wait_until(probe, timeout, f"a lease of {self.client} in {self.ns}")
        except GuestError as exc:
            raise GuestError(f"{exc}; it printed: {self.output()}") from None
        return lease6_from(self.client, env) if self.family == 6 else lease4_from(self.client, env)

    def renew(self, timeout: float = 30.0) -> Lease4 | Lease6:
        """A renewal as the client does it: udhcpc on SIGUSR1 (a unicast REQUEST to the server), dhclient
        and dhcpcd started again on their lease files (INIT-REBOOT: a REQUEST for the address they hold)."""
        count = len(self.leases())
        if self.client == "udhcpc":
            assert self.proc is not None
            os.kill(self._client_pid(), signal.SIGUSR1)
        else:
            self.stop()
            self.start()
        return self.lease(timeout, after=count)

    def _client_pid(self) -> int:
        # `ip netns exec ... sh -c 'exec client'`: the exec chain keeps the child's pid
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace").strip()[-2000:] or "(nothing)"
        except FileNotFoundError:
            return "(nothing)"

    def stop(self) -> None:
        """End the client without releasing its lease (SIGKILL: dhcpcd would drop its addresses on SIGTERM)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def lease(client: str, ns: str, iface: str, workdir: Path, timeout: float = 30.0) -> Lease4:
    """Run `client` in `ns` until its first lease is applied, stop it (the addresses stay), return the lease."""
    runner = DhcpClient(client, ns, iface, workdir).start()
    try:
        got = runner.lease(timeout)
        assert isinstance(got, Lease4)
        return got
    finally:
        runner.stop()


def rdisc6(ns: str, iface: str, retries: int = 3, wait_ms: int = 1000) -> list[RouterAdvert]:
    """Solicit on `iface` and return what `rdisc6` received (empty when no router answered)."""
    out = netns.run(netns.in_netns(ns, ["rdisc6", "-1", "-r", str(retries), "-w", str(wait_ms), iface]),
                    check=False, timeout=retries * wait_ms / 1000 + 30)
    return parse_rdisc6(out.output)


# -- what the guest's kernel holds ------------------------------------------------------------------------
def addresses(ns: str, iface: str, family: int = 4) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    out = netns.run(["ip", "-n", ns, f"-{family}", "-o", "addr", "show", "dev", iface, "scope", "global"]).output
    return [ipaddress.ip_interface(line.split()[3]) for line in out.splitlines() if len(line.split()) > 3]


def routes(ns: str, family: int = 4) -> list[str]:
    """`ip route` lines of the VM's main table (what its clients installed)."""
    return netns.run(["ip", "-n", ns, f"-{family}", "route", "show"]).output.splitlines()


def link_mtu(ns: str, iface: str) -> int:
    out = netns.run(["ip", "-n", ns, "-o", "link", "show", "dev", iface]).output
    return int(out.split(" mtu ")[1].split()[0])


def link_local_ready(ns: str, iface: str) -> bool:
    """The interface has a link-local address past duplicate address detection (IPv6 clients need one)."""
    out = netns.run(["ip", "-n", ns, "-6", "-o", "addr", "show", "dev", iface, "scope", "link"], check=False).output
    return "fe80::" in out and "tentative" not in out
