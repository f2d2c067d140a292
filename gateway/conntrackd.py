"""Connection state replication between the two gateways with conntrackd (Debian conntrack-tools), the one
module that talks to it (docs/gateway.md "Connection state replication").

Both gateways run conntrackd in FTFW mode (reliable: sequence numbers, acknowledgements, retransmission)
over UDP unicast on a dedicated link (`sync:`). Each sends the conntrack events of its own kernel and
applies the other's. conntrackd 1.4.7 keeps a replicated entry's conntrack zone and mark and its NAT
mapping (checked in tests/integration/test_gateway_conntrack_sync.py), so an entry made by one gateway's
SNAT or floating IP in tenant zone Z with mark Z is the same entry in the other's kernel: the tenant ids
(zone = mark = routing table) must be equal on both gateways (docs/gateway.md says how they are kept
equal; gateway/peerids.py checks it).

No external cache (`DisableExternalCache On`): the other gateway's entries are injected into this kernel as
they arrive, not kept in conntrackd's memory until a commit. Why:
- takeover costs nothing: when the standby starts announcing, the routes move within milliseconds and the
  first packet of every established flow already finds its entry (zone, mark, NAT binding). With an external
  cache the standby would have to commit (`conntrackd -c`) at takeover, a walk of the whole cache while the
  packets already arrive: a flow's packet that comes before its entry is committed is INVALID (dropped)
  or, picked up mid-stream, gets a new entry the commit then cannot replace;
- nothing to get wrong between the role and the daemon: the standby's kernel is always ready, whatever
  became of the hook calls, and a gateway that restarts as standby asks for everything at once
  (`StartupResync`).
The price: the standby's kernel holds the replicated entries (conntrack slots and memory) and ages them by
its own timers. TCP's established timeout is days; a UDP entry that sees no state change is not sent again
and may expire on the standby (120 s) while alive on the active gateway: after a takeover that flow gets a
new entry, with the same source port when it is free (nf_nat keeps it), so it usually keeps its mapping.

At takeover (`became_active`): `-R` takes the kernel's table, the injected entries included, into the
internal cache (the entries this gateway sends; without it only the flows that change state after the
takeover would reach the other gateway when it comes back), then `-B` sends it all to the other gateway
in case it is there. At give-back, or when this gateway becomes standby (`became_standby`): `-f internal`
forgets what this gateway sent as active (a stale flow would overwrite the active gateway's newer one if
it asked for a resync), then `-n` asks the active gateway for its whole table. `-t` (a timed flush of the
kernel table) is never used: in this mode the kernel table IS the replica.

Filters: only forwarded flows are replicated, never the gateway's own connections (BGP, BFD, the API,
conntrackd's own messages): every address of the gateway is ignored (a flow to or from it is local), in
the kernel (`Filter From Kernelspace`). Tenants may not claim the gateway's addresses (gateway/reserved.py),
so no tenant's public side is lost; a tenant whose private addresses overlap the gateway's own would have
those flows left out (the tenants' private space is theirs: the operator avoids it).

Events: not "reliable" (NetlinkEventsReliable Off): with reliable delivery the kernel keeps every ended
entry until its destroy event has been read, so a stopped or wedged conntrackd would fill the gateway's
conntrack table with dead entries; the gateway's forwarding must not depend on its replication. An overrun
of the event socket (its buffer starts at 8 MB and grows to 64 MB first: 2 MB overran at a burst of 25,000
new flows in 0.7 s, bench/conntrack_sync.py) is repaired by a resync against the kernel 5 s later.

Kernel settings (`KERNEL_SETTINGS`, set at start in the gateway's namespace):
- nf_conntrack_tcp_be_liberal=1: no TCP window checks. conntrackd injects its entries without them
  already (its TCPWindowTracking default: a replica's window is the one of its last event, long gone at
  takeover); this extends it to the entries the standby picks up mid-stream, whose windows the kernel
  learns only from the packets after the takeover: a segment outside them would be INVALID, which the
  gateway drops;
- nf_conntrack_tcp_loose=1 (the kernel's default, set in case it was changed): a flow whose entry did not
  arrive before the takeover is picked up mid-stream instead of dropped.

`ConntrackSync` runs the daemon as a child (foreground, its output logged), in the gateway's namespace
(`ip netns exec` when `netns` is set), restarts it with backoff when it dies, stops it with the gateway,
and samples its statistics (`conntrackd -s`) every few seconds into `SyncStatus`. The requests (statistics,
the role's commands) go straight to the daemon's UNIX socket, as its own client sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from nvfabric.gateway.config import GatewayConfig, SyncConfig
from nvfabric.gateway.peerids import IdExchange
from nvfabric.service.config import split_listen
from nvfabric.gateway import rundir
from nvfabric.gateway.rundir import DaemonFiles
from nvfabric.vnet.kernel.netns import write_sysctls
from nvfabric.vnet.model import Address

log = logging.getLogger(__name__)

BINARY = "conntrackd"
SAMPLE_INTERVAL = 5.0  # seconds between two samples of conntrackd's statistics
BACKOFF = (1.0, 30.0)  # seconds: first and longest wait before a restart (doubling)
STABLE = 60.0  # seconds a daemon must have run for the next restart to wait the shortest again
CTL_TIMEOUT = 10.0  # seconds for one request on the daemon's UNIX socket
# The requests of conntrackd's client (`conntrackd -C FILE ARGS`): one native int on the UNIX socket, the
# daemon answers text and closes. Read off Debian's conntrackd 1.4.7 (include/conntrackd.h); the host test
# checks them against the installed client.
REQUESTS = {("-s",): 21, ("-s", "queue"): 36, ("-R",): 44, ("-B",): 22, ("-f", "internal"): 33, ("-n",): 23,
            ("-k",): 20}
KERNEL_SETTINGS = (("net/netfilter/nf_conntrack_tcp_be_liberal", "1"), ("net/netfilter/nf_conntrack_tcp_loose", "1"))
PROTOCOLS = ("TCP", "UDP", "ICMP", "IPv6-ICMP", "SCTP")  # what a tenant's NAT tracks


@dataclass(frozen=True)
class SyncFiles(DaemonFiles):
    """The daemon's files, in one directory of its own (one per gateway: two gateways of a lab share a host)."""

    CONFIG: ClassVar[str] = "conntrackd.conf"
    SOCKET: ClassVar[str] = "conntrackd.ctl"

    @property
    def lock(self) -> Path:
        return self.directory / "conntrackd.lock"

    @classmethod
    def for_gateway(cls, sync: SyncConfig, netns: str | None) -> SyncFiles:
        """One directory per gateway on a host, also for gateways started inside their namespaces without
        `netns` (a lab's): named by the sync link's local address, which is the gateway's alone."""
        return cls.under("conntrackd", [*([netns] if netns else []), str(sync.local_address)])


def own_addresses(config: GatewayConfig) -> tuple[Address, ...]:
    """Pure: every address of the gateway itself, whose connections are never replicated."""
    ext = config.external
    found: list[Address | None] = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"),
                                   ipaddress.ip_address(config.router_id), *config.provider_addresses,
                                   ext.address4, ext.address6, *ext.sites_addresses]
    if config.sync is not None:
        found += [config.sync.local_address, config.sync.peer_address]
    try:
        found.append(ipaddress.ip_address(split_listen(config.api.listen)[0]))
    except ValueError:  # a host name, or every address (0.0.0.0 is not an address a flow has)
        pass
    out: list[Address] = []
    for a in found:
        if a is not None and not a.is_unspecified and a not in out:
            out.append(a)
    return tuple(out)


def conntrackd_conf(sync: SyncConfig, files: SyncFiles, ignore: Iterable[Address]) -> str:
    """Pure: conntrackd's configuration for one gateway (the module docstring says why each choice)."""
    v = sync.local_address.version
    ignored = "\n".join(f"      IPv{a.version}_address {a}" for a in ignore)
    return f"""# written by the nvfabric gateway at each start (gateway/conntrackd.py): edits are lost
Sync {{
  Mode FTFW {{
    DisableExternalCache On
    StartupResync On
  }}
  UDP {{
    IPv{v}_address {sync.local_address}
    IPv{v}_Destination_Address {sync.peer_address}
    Port {sync.port}
    Interface {sync.interface}
    Checksum On
  }}
}}
General {{
  HashSize 32768
  HashLimit 262144
  LogFile Off
  Syslog Off
  LockFile {files.lock}
  UNIX {{
    Path {files.socket}
  }}
  NetlinkBufferSize 8388608
  NetlinkBufferSizeMaxGrowth 67108864
  NetlinkEventsReliable Off
  NetlinkOverrunResync 5
  Filter From Kernelspace {{
    Protocol Accept {{
      {" ".join(PROTOCOLS)}
    }}
    Address Ignore {{
{ignored}
    }}
  }}
}}
"""


# ---------------------------------------------------------------------- statistics (pure)


@dataclass(frozen=True)
class ConntrackdStats:
    """What `conntrackd -s` and `-s queue` say, the counters since the daemon started."""

    internal: int = 0  # entries in the internal cache: the flows this gateway sends
    # the other gateway's messages applied to this kernel (an update of an entry it lacks creates it)
    injected_created: int = 0
    injected_updated: int = 0
    injected_destroyed: int = 0
    inject_failed: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    sent: int = 0  # messages (datagrams) on the sync link
    received: int = 0
    send_errors: int = 0
    receive_errors: int = 0
    lost: int = 0  # sequence gaps seen by this receiver (recovered by retransmission in FTFW)
    malformed: int = 0
    resend_queue: int = 0  # messages sent and not yet acknowledged


def _section(text: str, title: str) -> str:
    """The lines of `text` from the line starting with `title` to the next blank line."""
    found = re.search(rf"^{re.escape(title)}.*?(?:\n\s*\n|\Z)", text, re.M | re.S)
    return found.group(0) if found else ""


def _number(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    return int(found.group(1)) if found else 0


def parse_stats(general: str, queue: str = "") -> ConntrackdStats:
    """Pure: `conntrackd -s` (and `-s queue`) output -> counters; absent lines count 0."""
    internal = _section(general, "cache internal:")
    inject = _section(general, "external inject:")
    link = _section(general, "UDP traffic")
    tracking = _section(general, "message tracking:")
    failed = sum(int(n) for n in re.findall(r"failed:\s+(\d+)", inject))
    sent = re.search(r"(\d+) Pckts sent\s+(\d+) Pckts recv", link)
    octets = re.search(r"(\d+) Bytes sent\s+(\d+) Bytes recv", link)
    errors = re.search(r"(\d+) Error send\s+(\d+) Error recv", link)
    return ConntrackdStats(
        internal=_number(r"current active connections:\s+(\d+)", internal),
        injected_created=_number(r"connections created:\s+(\d+)", inject),
        injected_updated=_number(r"connections updated:\s+(\d+)", inject),
        injected_destroyed=_number(r"connections destroyed:\s+(\d+)", inject), inject_failed=failed,
        bytes_sent=int(octets.group(1)) if octets else 0, bytes_received=int(octets.group(2)) if octets else 0,
        sent=int(sent.group(1)) if sent else 0, received=int(sent.group(2)) if sent else 0,
        send_errors=int(errors.group(1)) if errors else 0, receive_errors=int(errors.group(2)) if errors else 0,
        lost=_number(r"(\d+) Lost msgs", tracking), malformed=_number(r"(\d+) Malformed msgs", tracking),
        resend_queue=_number(r"current elements:\s+(\d+)", _section(queue, "queue rsqueue:")))


@dataclass(frozen=True)
class SyncStatus:
    """The replication as the gateway reports it (`GET /v1/status` "conntrack_sync", `/metrics`)."""

    interface: str
    local_address: str
    peer_address: str
    port: int
    running: bool  # our conntrackd process is alive
    talking: bool  # ... and answered its last sample, and the other gateway was heard from lately
    role: str  # "active" | "standby": what the last hook said
    pid: int | None
    restarts: int
    stats: ConntrackdStats
    sampled_at: float | None  # time.monotonic() of the last sample that worked
    last_heard: float | None  # time.monotonic() of the last sample with more messages received than before
    last_error: str | None
    # the tenants' entries in this kernel (the gateway's session sampler), None: not counted yet
    kernel_entries: int | None = None
    # tenants both gateways serve with different ids -> (ours, theirs) (gateway/peerids.py); None: the other
    # gateway's ids not heard lately
    tenant_ids_differ: dict[str, tuple[int, int]] | None = None

    @property
    def up(self) -> bool:
        return self.running and self.talking

    @property
    def external(self) -> int:
        """The replicas this gateway holds and does not send itself: conntrackd keeps no external cache here
        (they are in the kernel), so the tenants' kernel entries less the internal cache."""
        return max((self.kernel_entries or 0) - self.stats.internal, 0)

    def as_dict(self) -> dict[str, Any]:
        s = self.stats
        now = time.monotonic()
        return {"up": self.up, "running": self.running, "talking": self.talking, "role": self.role,
                "interface": self.interface, "local_address": self.local_address,
                "peer_address": self.peer_address, "port": self.port, "pid": self.pid, "restarts": self.restarts,
                "entries": {"internal": s.internal, "external": self.external, "kernel": self.kernel_entries},
                "messages": {"sent": s.sent, "received": s.received, "lost": s.lost, "malformed": s.malformed,
                             "send_errors": s.send_errors, "receive_errors": s.receive_errors},
                "bytes": {"sent": s.bytes_sent, "received": s.bytes_received},
                "injected": {"created": s.injected_created, "updated": s.injected_updated,
                             "destroyed": s.injected_destroyed, "failed": s.inject_failed},
                "resend_queue": s.resend_queue,
                "sampled_seconds_ago": None if self.sampled_at is None else round(now - self.sampled_at, 1),
                "heard_seconds_ago": None if self.last_heard is None else round(now - self.last_heard, 1),
                "tenant_ids_differ": None if self.tenant_ids_differ is None else
                {n: {"ours": a, "theirs": b} for n, (a, b) in self.tenant_ids_differ.items()},
                "last_error": self.last_error}


# ---------------------------------------------------------------------- the daemon


class ConntrackSync:
    """conntrackd for one gateway: `start()` writes its configuration, sets the kernel settings and starts it;
    it is restarted with backoff when it dies; `stop()` ends it (the kernel's entries stay). `status()` is
    the last sample. The gateway calls the hooks when its serving state changes."""

    def __init__(self, sync: SyncConfig, netns: str | None, ignore: Iterable[Address],
                 files: SyncFiles | None = None, *, interval: float = SAMPLE_INTERVAL, binary: str = BINARY,
                 role: str = "active") -> None:
        self.sync = sync
        self.netns = netns
        self.files = files or SyncFiles.for_gateway(sync, netns)
        self.ignore = tuple(ignore)
        self.interval = interval
        self.binary = binary
        self.role = role
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stats = ConntrackdStats()
        self._sampled_at: float | None = None
        self._answered = False
        self._heard_at: float | None = None
        self._last_error: str | None = None
        self._ids: IdExchange | None = None  # the tenant ids compared with the other gateway's (start)
        self._hooks: set[asyncio.Task[None]] = set()
        self._hooks_lock = asyncio.Lock()

    # -------------------------------------------------------------- lifecycle

    async def start(self, ids: Callable[[], Mapping[str, int]] | None = None) -> None:
        """`ids`: the gateway's tenant ids (read each time they are sent), compared with the other gateway's
        (gateway/peerids.py); None: not compared."""
        if ids is not None:
            self._ids = IdExchange(self.sync.local_address, self.sync.peer_address, self.sync.port + 1, ids)
        self.files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.files.config.write_text(conntrackd_conf(self.sync, self.files, self.ignore))
        for (path, value), error in zip(KERNEL_SETTINGS, write_sysctls(self.netns, KERNEL_SETTINGS), strict=True):
            if error is not None:  # the replica still works for the flows the kernel accepts: said, not fatal
                log.error("conntrack sync: cannot set %s=%s: %s", path.replace("/", "."), value, error)
        self._stopping = False
        self._tasks = [asyncio.create_task(self._supervise(), name="conntrackd"),
                       asyncio.create_task(self._sample_forever(), name="conntrackd-sampler")]
        if self._ids is not None:
            await self._ids.start()

    async def stop(self) -> None:
        self._stopping = True
        for task in [*self._tasks[1:], *self._hooks]:
            task.cancel()
        await asyncio.gather(*self._hooks, return_exceptions=True)
        if self._ids is not None:
            await self._ids.stop()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()  # conntrackd's SIGTERM: a clean shutdown that removes its lock and socket
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self.files.remove()  # (the daemon removed its socket and lock)

    def kill(self) -> None:
        """From any thread, for an owner dropping the gateway without stopping it: the daemon must not outlive it."""
        self._stopping = True
        rundir.kill(self._proc)

    def _argv(self, *args: str) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, self.binary, "-C", str(self.files.config), *args]

    async def _supervise(self) -> None:
        delay = BACKOFF[0]
        while not self._stopping:
            await self._clear_leftover()
            began = time.monotonic()
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *self._argv(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT)
            except OSError as exc:
                self._last_error = f"cannot start {self.binary}: {exc}"
                log.error("conntrack sync: %s", self._last_error)
            else:
                log.info("conntrack sync: conntrackd started (pid %d)", self._proc.pid)
                self._stats, self._answered = ConntrackdStats(), False  # a new daemon counts from zero
                await self._relay(self._proc)
                status = await self._proc.wait()
                if self._stopping:
                    return
                self._last_error = f"conntrackd exited with status {status}"
                log.error("conntrack sync: %s; restarted in %.0f s", self._last_error,
                          BACKOFF[0] if time.monotonic() - began > STABLE else delay)
            if time.monotonic() - began > STABLE:
                delay = BACKOFF[0]
            self.restarts += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF[1])

    async def _relay(self, proc: asyncio.subprocess.Process) -> None:
        """conntrackd's console output into our log, until it closes it (it exits)."""
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            if "[error]" in line.lower() or "[warning]" in line.lower():
                self._last_error = line
                log.warning("conntrackd: %s", line)
            else:
                log.info("conntrackd: %s", line)

    async def _clear_leftover(self) -> None:
        """A lock file left behind: by a daemon of a gateway that was killed (it still answers on the socket:
        asked to quit) or by one that died (removed), else conntrackd refuses to start."""
        if not self.files.lock.exists():
            return
        answered, _ = await self._ctl("-k")
        if answered:
            log.warning("conntrack sync: a conntrackd left by an earlier run was asked to quit")
            for _ in range(50):
                if not self.files.lock.exists():
                    return
                await asyncio.sleep(0.1)
        with contextlib.suppress(FileNotFoundError):
            self.files.lock.unlink()

    async def _ctl(self, *args: str) -> tuple[bool, str]:
        """One request to the running daemon over its UNIX socket, as `conntrackd -C FILE ARGS` would send it
        (REQUESTS): (answered, its text). No process started: under TCG a client process costs ~0.2 s."""
        code = REQUESTS[args]
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(self.files.socket)), CTL_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            return False, f"{self.files.socket}: {exc or 'no answer'}"
        try:
            writer.write(struct.pack("=i", code))
            await writer.drain()
            text = await asyncio.wait_for(reader.read(), CTL_TIMEOUT)  # the daemon answers, then closes
        except (OSError, TimeoutError) as exc:
            return False, f"no answer in {CTL_TIMEOUT:.0f} s" if isinstance(exc, TimeoutError) else str(exc)
        finally:
            writer.close()
        return True, text.decode(errors="replace")

    async def command(self, *args: str) -> bool:
        """Run one conntrackd command (a key of REQUESTS); a failure is logged and reported (False), never raised."""
        ok, text = await self._ctl(*args)
        if not ok:
            self._last_error = f"conntrackd {' '.join(args)}: {text.strip()[-300:]}"
            log.error("conntrack sync: %s", self._last_error)
        return ok

    # -------------------------------------------------------------- the role's hooks

    async def became_active(self) -> None:
        """This gateway now forwards: the replicated entries become the ones it sends (module docstring).
        Returns at once: the commands run in the background, in the order of the calls, so that the
        announcements of a takeover are not held up by them (the entries are in the kernel already)."""
        self.role = "active"
        self._in_order(("-R",), ("-B",))

    async def became_standby(self) -> None:
        """The other gateway forwards: forget what we sent, ask it for everything (module docstring).
        Returns at once, as became_active."""
        self.role = "standby"
        self._in_order(("-f", "internal"), ("-n",))

    def _in_order(self, *commands: tuple[str, ...]) -> None:
        async def run() -> None:
            async with self._hooks_lock:  # asyncio's lock is FIFO: the commands of two calls never interleave
                for args in commands:
                    if not self.running or not await self.command(*args):
                        return
        task = asyncio.create_task(run(), name="conntrackd-role")
        self._hooks.add(task)
        task.add_done_callback(self._hooks.discard)

    async def settled(self) -> None:
        """Wait for the hooks' commands (tests, and stop())."""
        while self._hooks:
            await asyncio.gather(*self._hooks, return_exceptions=True)

    # -------------------------------------------------------------- health

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def sample(self) -> None:
        """Read the daemon's statistics now (the sampler does it every `interval` seconds)."""
        if not self.running:
            self._answered = False
            return
        answered, general = await self._ctl("-s")
        if not answered:
            self._answered = False
            self._last_error = f"conntrackd -s: {general.strip()[-300:]}"
            return
        _, queue = await self._ctl("-s", "queue")
        stats = parse_stats(general, queue)
        now = time.monotonic()
        # the other gateway's messages (its acknowledgements and keep-alives included) arrive every second
        if stats.received > self._stats.received or (self._heard_at is None and stats.received > 0):
            self._heard_at = now
        self._stats, self._sampled_at, self._answered = stats, now, True

    async def _sample_forever(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception as exc:  # noqa: BLE001 - a failed sample is reported; the next may work
                self._answered = False
                self._last_error = f"sample: {exc}"
                log.warning("conntrack sync: %s", self._last_error)
            await asyncio.sleep(self.interval)

    def status(self, kernel_entries: int | None = None) -> SyncStatus:
        now = time.monotonic()
        heard = self._heard_at is not None and now - self._heard_at <= 3 * self.interval
        s = self.sync
        return SyncStatus(s.interface, str(s.local_address), str(s.peer_address), s.port, self.running,
                          self.running and self._answered and heard, self.role,
                          self._proc.pid if self.running and self._proc is not None else None, self.restarts,
                          self._stats, self._sampled_at, self._heard_at, self._last_error, kernel_entries,
                          self._tenant_ids_differ(now))

    def _tenant_ids_differ(self, now: float) -> dict[str, tuple[int, int]] | None:
        x = self._ids
        if x is None or x.heard_at is None or now - x.heard_at > 3 * x.interval:
            return None
        return x.differ()
