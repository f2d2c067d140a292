"""The tenants' IPsec sites with strongSwan (Debian charon-systemd 5.9), the one module that talks to it.

One charon per gateway, in the gateway's namespace, started as a child with a configuration of its own
(`charon_conf`: its vici socket in its own directory, only the plugins it uses, no routes or virtual IPs
installed: the tunnels are route-based, the routes are the dataplane's). So two gateways of a lab, or a
gateway and the sites of a test, each run their own charon on one machine: charon-systemd writes no pid file,
and everything else it opens is named by its configuration.

Each site is one connection (IKE and child of the same name, `<tenant>.<site>`, gateway/sites.py) whose
child SAs carry the site's if_id in both directions, so the kernel sends into them what the tenant's VRF
routes to the site's XFRM interface and delivers what they decrypt on it. Connections and their keys are
loaded and unloaded over vici by difference (`put`): a change of one tenant's sites loads, replaces or unloads
that tenant's connections only, and never touches another's SAs. charon starts each connection as it is
loaded (start_action start) and again when it is closed or its peer stops answering (close_action start,
dpd_action restart). A charon that died is started again and given every connection. Only a serving gateway's
charon holds connections (`serve`: a standby's judges each change, then drops it), so the SAs follow the role.
Each child SA charon installs is told to `on_child_up` (charon's child-updown events, on a vici session of their
own), so what runs across a tunnel (a site's BGP session) starts at once instead of at its next retry.

The vici messages are encoded by the `vici` package (strongSwan's own Python binding, its 5.9 line), over an
asyncio UNIX stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from vici.protocol import Message, Packet

from nvfabric.gateway import sites as sitemodel
from nvfabric.gateway.config import External
from nvfabric.gateway import rundir
from nvfabric.gateway.rundir import DaemonFiles
from nvfabric.gateway.sites import Site
from nvfabric.gateway.tenants import Tenant
from nvfabric.vnet.errors import KernelError

log = logging.getLogger(__name__)

BINARY = "/usr/sbin/charon-systemd"
START_TIMEOUT = 30.0  # seconds for a started charon to open its vici socket (TCG: a slow start)
REQUEST_TIMEOUT = 30.0
BACKOFF = (1.0, 30.0)
# What charon needs for IKEv2 with PSK and modern proposals (openssl: ECP and GCM; the others: key
# derivation, nonces, the kernel and the sockets), and vici. Nothing that would install routes or read
# Debian's own files.
PLUGINS = ("random", "nonce", "openssl", "pem", "pkcs1", "x509", "revocation", "constraints", "pubkey", "gmp",
           "aes", "sha1", "sha2", "hmac", "gcm", "kdf", "kernel-netlink", "socket-default", "vici")
DPD_DELAY = "10s"


class CharonError(RuntimeError):
    """charon refused a request (its own message) or could not be reached."""


@dataclass(frozen=True)
class CharonFiles(DaemonFiles):
    """charon's configuration and vici socket, in one directory of their own per daemon."""

    CONFIG: ClassVar[str] = "strongswan.conf"
    SOCKET: ClassVar[str] = "charon.vici"

    @classmethod
    def named(cls, name: str) -> CharonFiles:
        return cls.under("charon", [name])

    @classmethod
    def for_gateway(cls, netns: str | None, router_id: str) -> CharonFiles:
        """One directory per gateway on a host: named by the namespace, else the router id (the gateway's own)."""
        return cls.named(netns or router_id)


def charon_conf(files: CharonFiles, log_level: int = 1) -> str:
    """Pure: strongswan.conf for one charon (STRONGSWAN_CONF names it): its own vici socket, only PLUGINS,
    routes and virtual IPs left alone, its log on stdout (relayed into ours)."""
    return f"""# written by nvfabric (gateway/strongswan.py) for one charon; replaced at each start
charon-systemd {{
    load = {' '.join(PLUGINS)}
    install_routes = no
    install_virtual_ip = no
    retry_initiate_interval = 5
    journal {{
        default = -1
    }}
    filelog {{
        stdout {{
            default = {log_level}
            ike_name = yes
        }}
    }}
    plugins {{
        vici {{
            socket = unix://{files.socket}
        }}
    }}
}}
"""


# ---------------------------------------------------------------------- pure: sites -> charon's connections


def _local_address(site: Site, external: External) -> str:
    # (gateway/reserved.py refused a site whose family has no external address before it came here)
    address = external.address4 if site.remote_address.version == 4 else external.address6
    assert address is not None, "a site without the gateway's end: Reserved.check first"
    return str(address)


@dataclass(frozen=True)
class Connection:
    """One site as charon loads it: the vici bodies of `load-conn` and of `load-shared` (a site with a psk) or
    `load-key` (a site with certificates), the secrets kept out of repr."""

    name: str
    conn: Mapping[str, Any]
    secret: Mapping[str, Any] | None
    key: Mapping[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Connection({self.name!r})"


def connection(tenant: str, tid: int, site: Site, external: External) -> Connection:
    """Pure: the site's connection: IKEv2 from the gateway's external address to the site's, PSK both ways
    (identities: the two addresses), one route-based child with the site's if_id in and out."""
    name = sitemodel.connection_name(tenant, site)
    local = _local_address(site, external)
    remote = str(site.remote_address)
    if_id = str(sitemodel.if_id(tid, site))
    child = {
        "local_ts": [str(p) for p in site.local_ts],
        "remote_ts": [str(p) for p in site.remote_ts],
        "esp_proposals": list(site.esp_proposals),
        "if_id_in": if_id,
        "if_id_out": if_id,
        # the ESP packets are the gateway's own, not the tenant's: they leave without the tenant's mark (its id,
        # set by tc, which selects the tenant's routing table and NAT elsewhere)
        "set_mark_out": "0/0xffffffff",
        "start_action": "start",
        "close_action": "start",
        "dpd_action": "restart",
    }
    conn = {
        "version": "2",
        "local_addrs": [local],
        "remote_addrs": [remote],
        "proposals": list(site.ike_proposals),
        "dpd_delay": DPD_DELAY,
        "keyingtries": "0",  # for ever: a site that is down is tried again until it answers
        "unique": "replace",
        "local-1": {"auth": "psk", "id": local},
        "remote-1": {"auth": "psk", "id": remote},
        "children": {name: child},
    }
    if site.certs is not None:
        return _with_certificates(conn, name, site)
    secret = {"id": name, "type": "IKE", "data": site.psk, "owners": [remote]}
    return Connection(name, {name: conn}, secret)


def _with_certificates(conn: dict[str, Any], name: str, site: Site) -> Connection:
    """The connection authenticated by certificates both ways: the gateway's certificate (sent always: the site
    may hold only its CA) and identity; the site's identity, accepted through the site's own CAs only (a
    certificate another tenant's CA signed fails that constraint, whatever else charon trusts)."""
    certs = site.certs
    assert certs is not None
    conn = {**conn, "send_cert": "always",
            "local-1": {"auth": "pubkey", "certs": [certs.certificate], "id": certs.local_identity},
            "remote-1": {"auth": "pubkey", "id": certs.remote_id, "cacerts": list(certs.ca_certificates)}}
    return Connection(name, {name: conn}, None, certs.charon_key())


def connections(name: str, tenant: Tenant | None, tid: int, external: External) -> dict[str, Connection]:
    """Pure: one tenant's connections by name (none for an absent tenant)."""
    if tenant is None:
        return {}
    return {c.name: c for c in (connection(name, tid, s, external) for s in sitemodel.ipsec_sites(tenant.sites))}


# ---------------------------------------------------------------------- vici over asyncio


class Vici:
    """One vici session on charon's UNIX socket: a request and its answer at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, path: Path) -> Vici:
        reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    def close(self) -> None:
        self._writer.close()

    async def _send(self, packet: bytes) -> None:
        self._writer.write(struct.pack("!I", len(packet)) + packet)
        await self._writer.drain()

    async def _receive(self) -> Any:
        length, = struct.unpack("!I", await self._reader.readexactly(4))
        return Packet.parse(await self._reader.readexactly(length))

    async def request(self, command: str, message: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A command's answer; CharonError when charon says it failed or does not answer."""
        try:
            async with self._lock:
                await self._send(Packet.request(command, None if message is None else Message.serialize(message)))
                answer = await asyncio.wait_for(self._receive(), REQUEST_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            raise CharonError(f"{command}: charon does not answer ({exc!r})") from None
        return _checked(command, answer)

    async def register(self, event: str) -> None:
        """Register this session for `event` (a session of its own: `next_event` reads nothing else)."""
        await self._send(Packet.register_event(event))
        if (await self._receive()).response_type != Packet.EVENT_CONFIRM:
            raise CharonError(f"charon does not know the event {event}")

    async def next_event(self) -> dict[str, Any]:
        """The next event's body (on a session that only listens)."""
        while True:
            packet = await self._receive()
            if packet.response_type == Packet.EVENT:
                return _text(Message.deserialize(packet.payload))

    async def stream(self, command: str, event: str, message: Mapping[str, Any] | None = None) -> list[dict]:
        """A command that answers with events (list-sas): the events, then the answer."""
        try:
            return await self._stream(command, event, message)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            raise CharonError(f"{command}: charon does not answer ({exc!r})") from None

    async def _stream(self, command: str, event: str, message: Mapping[str, Any] | None) -> list[dict]:
        async with self._lock:
            await self._send(Packet.register_event(event))
            if (await self._receive()).response_type != Packet.EVENT_CONFIRM:
                raise CharonError(f"{command}: charon does not know the event {event}")
            await self._send(Packet.request(command, None if message is None else Message.serialize(message)))
            events = []
            while True:
                answer = await asyncio.wait_for(self._receive(), REQUEST_TIMEOUT)
                if answer.response_type == Packet.EVENT:
                    events.append(_text(Message.deserialize(answer.payload)))
                    continue
                break
            await self._send(Packet.unregister_event(event))
            await self._receive()
        _checked(command, answer)
        return events


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, Mapping):
        return {k: _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


def _checked(command: str, answer: Any) -> dict[str, Any]:
    if answer.response_type == Packet.CMD_UNKNOWN:
        raise CharonError(f"{command}: unknown to charon")
    body = _text(Message.deserialize(answer.payload))
    if body.get("success", "yes") != "yes":
        raise CharonError(f"{command}: {body.get('errmsg', 'failed')}")
    return body


# ---------------------------------------------------------------------- the daemon


@dataclass(frozen=True)
class ChildSa:
    name: str
    state: str
    spi_in: str
    spi_out: str
    bytes_in: int
    bytes_out: int
    installed_at: float | None  # seconds since the epoch, as far as charon's age tells: its last rekey
    packets_in: int = 0
    packets_out: int = 0
    local_ts: tuple[str, ...] = ()  # the selectors negotiated with the site
    remote_ts: tuple[str, ...] = ()
    rekey_at: float | None = field(default=None, compare=False)  # Unix seconds of the next rekey (a countdown)


@dataclass(frozen=True)
class SiteSa:
    """A site's IKE SA as charon lists it."""

    name: str
    state: str  # ESTABLISHED, CONNECTING, ...
    remote: str
    children: tuple[ChildSa, ...]
    spis: tuple[str, str] = ("", "")  # the IKE SA's (initiator, responder): the same SA while they are
    local: str = ""
    # Unix seconds (from charon's ages at the time of reading: not part of what makes the SA the same)
    established_at: float | None = field(default=None, compare=False)  # its last rekey or reauthentication
    rekey_at: float | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "local": self.local, "remote": self.remote,
                "spis": list(self.spis), "established_at": self.established_at, "rekey_at": self.rekey_at,
                "children": [{**c.__dict__, "local_ts": list(c.local_ts), "remote_ts": list(c.remote_ts)}
                             for c in self.children]}


def children_up(event: Mapping[str, Any]) -> list[str]:
    """Pure: the IKE SAs (connection names) of a child-updown event that reports a child SA up."""
    if event.get("up") != "yes":
        return []
    return [name for name, ike in event.items() if isinstance(ike, Mapping)]


def parse_sas(events: Iterable[Mapping[str, Any]], now: float) -> dict[str, SiteSa]:
    """Pure: list-sas events -> connection name -> its IKE SA (an established one before others). charon gives
    ages and countdowns in seconds; they become wall clock times here (`now`)."""
    def ago(body: Mapping[str, Any], key: str) -> float | None:
        return now - int(body[key]) if key in body else None

    def ahead(body: Mapping[str, Any], key: str) -> float | None:
        return now + int(body[key]) if key in body else None

    out: dict[str, SiteSa] = {}
    for event in events:
        for name, ike in event.items():
            children = tuple(
                ChildSa(child.get("name", key), child.get("state", ""), child.get("spi-in", ""),
                        child.get("spi-out", ""), int(child.get("bytes-in", 0)), int(child.get("bytes-out", 0)),
                        ago(child, "install-time"), int(child.get("packets-in", 0)), int(child.get("packets-out", 0)),
                        tuple(child.get("local-ts") or ()), tuple(child.get("remote-ts") or ()),
                        ahead(child, "rekey-time"))
                for key, child in (ike.get("child-sas") or {}).items())
            sa = SiteSa(name, ike.get("state", ""), ike.get("remote-host", ""), children,
                        (ike.get("initiator-spi", ""), ike.get("responder-spi", "")), ike.get("local-host", ""),
                        ago(ike, "established"), ahead(ike, "rekey-time"))
            if name not in out or (sa.state == "ESTABLISHED" and out[name].state != "ESTABLISHED"):
                out[name] = sa
    return out


class Charon:
    """charon for one gateway: `start()` writes its configuration and starts it (restarted with backoff when it
    dies, then given every connection again); `put()` changes one tenant's connections by difference;
    `stop()` ends it (its SAs go with it: the tunnels stop until it runs again)."""

    def __init__(self, netns: str | None, files: CharonFiles, binary: str = BINARY, serving: bool = True) -> None:
        self.netns = netns
        self.files = files
        self.binary = binary
        # whether this charon holds the sites' SAs (`serve`): a standby gateway's does not, see serve()
        self.serving = serving
        self.restarts = 0
        self.last_error: str | None = None
        self._loaded: dict[str, Connection] = {}  # what this charon has, by connection name
        # the secrets charon holds for the loaded connections: by name, the PEM of its private key (a site with
        # certificates) or None (its psk, `load-shared` under the connection's name); and each private key once,
        # by its PEM: charon's id for it and the connections using it (charon keeps one copy of a key however
        # often it is loaded, and `unload-key` drops it for all of them)
        self._held: dict[str, str | None] = {}
        self._keys: dict[str, tuple[str, set[str]]] = {}
        self._by_tenant: dict[str, set[str]] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._vici: Vici | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stopping = False
        # told the connection's name each time charon installs one of its child SAs
        self.on_child_up: Callable[[str], None] | None = None
        self._events: Vici | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        self.files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.files.config.write_text(charon_conf(self.files))
        self._stopping = False
        self._ready.clear()
        self._task = asyncio.create_task(self._supervise(), name="charon")
        try:
            await asyncio.wait_for(self._ready.wait(), START_TIMEOUT)
        except TimeoutError:
            raise CharonError(f"charon did not open {self.files.socket} in {START_TIMEOUT:.0f} s "
                              f"({self.last_error or 'no error said'})") from None

    async def stop(self) -> None:
        self._stopping = True
        for session in (self._vici, self._events):
            if session is not None:
                session.close()
        self._vici = self._events = None
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.files.remove()

    def kill(self) -> None:
        """From any thread, for an owner dropping the gateway without stopping it."""
        self._stopping = True
        rundir.kill(self._proc)

    def _argv(self) -> list[str]:
        return [*(["ip", "netns", "exec", self.netns] if self.netns else []), self.binary]

    async def _supervise(self) -> None:
        delay = BACKOFF[0]
        while not self._stopping:
            with contextlib.suppress(FileNotFoundError):
                self.files.socket.unlink()  # a dead charon's: the new one would not bind
            began = time.monotonic()
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *self._argv(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT, env={"STRONGSWAN_CONF": str(self.files.config),
                                                           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
            except OSError as exc:
                self.last_error = f"cannot start {self.binary}: {exc}"
                log.error("ipsec: %s", self.last_error)
            else:
                relay = asyncio.create_task(self._relay(self._proc))
                listener: asyncio.Task[None] | None = None
                try:
                    await self._connect()
                    # registered before any connection is loaded: the first SAs' events are not missed
                    self._events = await Vici.connect(self.files.socket)
                    await self._events.register("child-updown")
                    listener = asyncio.create_task(self._listen(self._events), name="charon-events")
                    await self._reload_all()
                    self._ready.set()
                except (CharonError, OSError) as exc:
                    self.last_error = str(exc)
                    log.error("ipsec: %s", exc)
                    if self._proc.returncode is None:
                        self._proc.kill()
                await relay
                status = await self._proc.wait()
                if listener is not None:
                    listener.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await listener
                for session in (self._vici, self._events):
                    if session is not None:
                        session.close()
                self._vici = self._events = None
                if self._stopping:
                    return
                self.last_error = f"charon exited with status {status}"
                log.error("ipsec: %s; started again in %.0f s", self.last_error, delay)
            if time.monotonic() - began > 60:
                delay = BACKOFF[0]
            self.restarts += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF[1])

    async def _connect(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self._vici = await Vici.connect(self.files.socket)
                return
            except OSError:
                if time.monotonic() > deadline or (self._proc is not None and self._proc.returncode is not None):
                    raise CharonError(f"charon's vici socket {self.files.socket} does not answer") from None
                await asyncio.sleep(0.2)

    async def _listen(self, events: Vici) -> None:
        try:
            while True:
                for name in children_up(await events.next_event()):
                    if self.on_child_up is not None:
                        self.on_child_up(name)
        except (OSError, asyncio.IncompleteReadError) as exc:
            if not self._stopping:  # charon went: the supervisor starts it again, with a new listener
                log.warning("ipsec: charon's events ended: %r", exc)

    async def _relay(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                log.info("charon: %s", line)

    async def _reload_all(self) -> None:
        """A new charon: every connection this gateway has (none while it stands by)."""
        self._held.clear()
        self._keys.clear()
        if not self.serving:
            return
        for conn in self._loaded.values():
            await self._load(conn)

    async def serve(self, on: bool) -> None:
        """The gateway became serving (on) or stands by. A site's SA is with one gateway's external address and
        ESP to that address always reaches that gateway, so only the serving gateway, which the tenants' traffic
        comes to, holds SAs: becoming serving loads every connection (charon initiates each at once, the site
        replaces its SA to the other gateway), standing by unloads them (their SAs ended, so a restored gateway
        never draws the site's traffic back). A connection charon refuses here is logged; the others go on."""
        if on == self.serving:
            return
        self.serving = on
        if self._vici is None:  # not running: a (re)started charon loads them when serving
            return
        for name, conn in sorted(self._loaded.items()):
            try:
                await (self._load(conn) if on else self._unload(name))
            except CharonError as exc:
                log.error("ipsec: %s %s: %s", "loading" if on else "unloading", name, exc)

    async def _load(self, conn: Connection) -> None:
        assert self._vici is not None
        await self._hold(conn)
        await self._vici.request("load-conn", conn.conn)

    async def _unload(self, name: str) -> None:
        assert self._vici is not None
        try:
            await self._vici.request("unload-conn", {"name": name})
            with contextlib.suppress(CharonError):  # no SA (never established): nothing to end
                await self._vici.request("terminate", {"ike": name, "force": "yes", "timeout": "-1"})
        finally:  # a connection charon refused to load still had its secret loaded: never left behind
            if name in self._held:
                await self._let_go(name, self._held.pop(name))

    async def _hold(self, conn: Connection) -> None:
        """The connection's secret into charon (before the connection that needs it); the one it had before, if
        another, let go."""
        assert self._vici is not None
        if conn.key is None:
            await self._vici.request("load-shared", conn.secret)
            pem = None
        else:
            pem = conn.key["data"]
            if pem not in self._keys:
                answer = await self._vici.request("load-key", conn.key)
                self._keys[pem] = (answer["id"], set())
            self._keys[pem][1].add(conn.name)
        had = self._held.get(conn.name, pem)
        self._held[conn.name] = pem
        if had != pem:
            await self._let_go(conn.name, had)

    async def _let_go(self, name: str, held: str | None) -> None:
        """`name` no longer needs the secret it held: its psk unloaded, its key unloaded if no other uses it."""
        assert self._vici is not None
        if held is None:
            await self._vici.request("unload-shared", {"id": name})
            return
        key_id, users = self._keys[held]
        users.discard(name)
        if not users:
            del self._keys[held]
            await self._vici.request("unload-key", {"id": key_id})

    async def _restart(self, name: str) -> None:
        assert self._vici is not None
        with contextlib.suppress(CharonError):  # no SA (never established): nothing to end
            await self._vici.request("terminate", {"ike": name, "force": "yes", "timeout": "-1"})
        await self._vici.request("initiate", {"child": name, "ike": name, "timeout": "-1"})

    async def put(self, tenant: str, new: Mapping[str, Connection]) -> None:
        """One tenant's connections to `new`: what changed is loaded (charon replaces a connection of the same
        name) and its SAs made again, what is gone unloaded and its SAs ended. A refusal puts back what this
        call changed and raises KernelError (charon's message)."""
        if self._vici is None:
            raise KernelError(f"sites of tenant {tenant}", ("charon is not running",))
        old = {n: self._loaded[n] for n in self._by_tenant.get(tenant, ())}
        done: list[tuple[str, Connection | None]] = []  # (name, what it was before) for a put back
        try:
            for name in sorted(old.keys() - new.keys()):
                if self.serving:
                    await self._unload(name)
                done.append((name, old[name]))
            for name in sorted(new):
                if old.get(name) == new[name]:
                    continue
                done.append((name, old.get(name)))
                await self._load(new[name])
                if not self.serving:  # charon judged it (a standby refuses what the serving one would); no SA
                    await self._unload(name)
                elif name in old:  # a changed site (its key, proposals, selectors): new SAs by the new settings
                    await self._restart(name)
        except CharonError as exc:
            for name, before in reversed(done if self.serving else ()):
                with contextlib.suppress(CharonError):
                    await (self._load(before) if before is not None else self._unload(name))
            raise KernelError(f"sites of tenant {tenant}", (str(exc),)) from None
        for name in old.keys() - new.keys():
            del self._loaded[name]
        self._loaded.update(new)
        if new:
            self._by_tenant[tenant] = set(new)
        else:
            self._by_tenant.pop(tenant, None)

    async def sas(self) -> dict[str, SiteSa]:
        """The IKE SAs by connection name (empty when charon is not running or not answering: none are known)."""
        if self._vici is None:
            return {}
        try:
            return parse_sas(await self._vici.stream("list-sas", "list-sa"), time.time())
        except CharonError as exc:
            log.warning("ipsec: %s", exc)
            return {}
