"""Asyncio adapter around `bgp.fsm`: sockets, timers, connect-retry, listening, TCP-MD5, collisions.

Thin on purpose: each `Connection` moves bytes between a transport and its `Fsm` and re-arms one timer
after every call into the machine; a `Peer` owns the (at most two, RFC 4271 6.8) connections to one
neighbour and the connect-retry loop. Events go to ONE owner (`bgp/speaker.py`) through a bounded inbox:
when the owner falls behind, reading from the socket pauses, so TCP itself pushes back on the sender.

Outgoing UPDATEs are written by the owner with `Peer.send(bytes)`: the same bytes object can go to every
peer of an update group, encoded once.

Write back-pressure: each transport's write buffer has a high-water mark (`write_buffer_limit`). Above it
asyncio calls `pause_writing`; `Peer.writable` turns False and a sender that honours it (the reflector)
keeps what it owes that peer as routes instead of bytes, then feeds it from `on_writable` when the
buffer drains. A connection that stays paused for longer than its hold time is reset with a NOTIFICATION
(Cease / Out of Resources, RFC 4486), so a peer that keeps sending KEEPALIVEs but never reads cannot hold
our memory.

Read back-pressure does not cost the peer its session: while we keep its bytes unread in the socket (our
owner is behind), its hold timer starts again at each tick, as on a message received. The hold timer is for
a silent peer, not a slow owner (FRR's bgpd does the same with its input queue).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import ipaddress
import logging
import socket
import struct
import termios
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

from nvfabric.bgp import fsm, wire
from nvfabric.bgp.config import DEFAULT_WRITE_BUFFER_LIMIT

log = logging.getLogger(__name__)

# <linux/tcp.h>: TCP_MD5SIG takes a struct tcp_md5sig (RFC 2385 keys are per remote address);
# TCP_MD5SIG_EXT with TCP_MD5SIG_FLAG_PREFIX keys a whole prefix (dynamic neighbors on the listener).
TCP_MD5SIG = 14
TCP_MD5SIG_EXT = 32
TCP_MD5SIG_FLAG_PREFIX = 1
TCP_MD5SIG_MAXKEYLEN = 80

CONNECT_TIMEOUT = 5.0
# How long a closing connection may take to flush its last bytes (a NOTIFICATION behind a full buffer)
# and see the peer close, before it is aborted, freeing the buffer.
CLOSE_GRACE = 10.0
REFUSE_GRACE = 2.0  # the same for a refused connection
REFUSE_READ = 65536  # bytes read (and dropped) from a refused connection at most
REFUSING_MAX = 64  # refusals waiting for their peer to close at once; beyond, closed at once
COLLISION_WAIT = 2.0  # how long an Established connection waits for a colliding one's OPEN
INBOX_SIZE = 4096  # events, not bytes: an UPDATE is at most 4096 bytes (RFC 4271 4.1)


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel a task we own and wait until it has finished."""
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


class Md5Error(OSError):
    """Setting a TCP-MD5 key failed; names the peer so the operator knows which neighbour's key."""


def set_md5(sock: socket.socket, peer: str, key: str, prefixlen: int | None = None) -> None:
    """Install (or with an empty key, remove) the RFC 2385 key for `peer` (or `peer/prefixlen`) on `sock`."""
    raw = key.encode()
    if len(raw) > TCP_MD5SIG_MAXKEYLEN:
        raise Md5Error(errno.EINVAL, f"TCP-MD5 key for {peer} is longer than {TCP_MD5SIG_MAXKEYLEN} bytes")
    addr = ipaddress.ip_address(peer)
    if sock.family == socket.AF_INET6 and addr.version == 4:
        addr = ipaddress.IPv6Address(f"::ffff:{addr}")
        if prefixlen is not None:
            prefixlen += 96
    if addr.version == 4:
        sockaddr = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 0) + addr.packed
    else:
        sockaddr = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 0, 0) + addr.packed + b"\0" * 4
    sockaddr = sockaddr.ljust(128, b"\0")
    flags = TCP_MD5SIG_FLAG_PREFIX if prefixlen is not None else 0
    option = TCP_MD5SIG_EXT if prefixlen is not None else TCP_MD5SIG
    value = sockaddr + struct.pack("=BBHi", flags, prefixlen or 0, len(raw), 0) + raw.ljust(TCP_MD5SIG_MAXKEYLEN, b"\0")
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError as err:
        raise Md5Error(err.errno, f"setting TCP-MD5 key for {peer}: {err.strerror}") from err


@dataclass(frozen=True)
class PeerSettings:
    """What the session layer needs about one neighbour (built from `bgp.config` by the speaker)."""

    address: str
    port: int
    peer_asn: int
    local: wire.Capabilities
    md5_password: str | None = None
    local_address: str | None = None
    bind_device: str | None = None  # SO_BINDTODEVICE before connecting (a VRF's device: its routing table)
    passive: bool = False  # never connect, only accept
    connect_retry_initial: float = 1.0
    connect_retry_max: float = 30.0
    decoder: fsm.UpdateDecoder = fsm.typed_decoder
    # Above this many bytes queued in user space, writing pauses (and the stall clock starts).
    write_buffer_limit: int = DEFAULT_WRITE_BUFFER_LIMIT
    open_hold_time: float = fsm.OPEN_HOLD_TIME
    dynamic: bool = False  # created by the listener for a dynamic-neighbour prefix (removed when idle)


@dataclass(frozen=True)
class PeerEvent:
    """What the owner task receives: which peer, and what happened on its chosen connection."""

    peer: Peer
    event: fsm.Event


class Inbox:
    """The owner's bounded, counted queue. Producers that find it full pause their socket (`Connection`)."""

    def __init__(self, maxsize: int = INBOX_SIZE) -> None:
        # PeerEvents, and the owner's own commands (typed by the owner).
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self.delivered = 0
        self.producer_pauses = 0

    async def get(self) -> Any:
        item = await self.queue.get()
        self.delivered += 1
        return item


class Connection:
    """One TCP connection and its FSM; an asyncio Protocol that stays a byte pump."""

    def __init__(self, peer: Peer, side: fsm.Side, loop: asyncio.AbstractEventLoop) -> None:
        self.peer = peer
        self.side = side
        self.loop = loop
        self.fsm: fsm.Fsm | None = None
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pending: deque[fsm.Event] = deque()
        # Events of an Established connection the peer holds back during a possible collision.
        self.held: list[fsm.Event] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.writing_paused = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None

    @property
    def state(self) -> fsm.State:
        return self.fsm.state if self.fsm else fsm.State.CONNECT

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        settings = self.peer.settings
        limit = settings.write_buffer_limit
        transport.set_write_buffer_limits(high=limit, low=limit // 4)
        config = fsm.FsmConfig(settings.local, settings.peer_asn, ipaddress.ip_address(settings.address),
                               settings.decoder, settings.open_hold_time)
        self.fsm = fsm.Fsm(config, self.loop.time())
        self._after(())

    def data_received(self, data: bytes) -> None:
        if self.fsm is not None:
            self._after(self.fsm.receive(data, self.loop.time()))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._stall_timer, self._abort_timer):
            if timer is not None:
                timer.cancel()
        self._stall_timer = self._abort_timer = None
        if self.fsm is not None:
            self._after(self.fsm.connection_lost(str(exc) if exc else "closed by peer"))

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.peer.write_pauses += 1
        if self._stall_timer is None and self.fsm is not None and self.fsm.state is not fsm.State.IDLE:
            self._stall_timer = self.loop.call_later(self._stall_limit(), self._write_stalled)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self is self.peer.established:
            self.peer._on_writable()

    def _stall_limit(self) -> float:
        """The peer's hold time: as long as we would wait for a silent peer, we wait for one not reading."""
        negotiated = self.fsm.negotiated if self.fsm is not None else None
        if negotiated is not None and negotiated.hold_time:
            return float(negotiated.hold_time)
        return self.peer.settings.open_hold_time

    def _write_stalled(self) -> None:
        self._stall_timer = None
        if not self.writing_paused or self.transport is None:
            return
        self.peer.write_stall_resets += 1
        size = self.transport.get_write_buffer_size()
        log.warning("peer %s: write buffer at %d bytes (limit %d) for %.0f s; resetting the session",
                    self.peer.name, size, self.peer.settings.write_buffer_limit, self._stall_limit())
        # The NOTIFICATION queues behind what the peer did not read; CLOSE_GRACE bounds the wait for it.
        self.stop(fsm.ERR_CEASE, fsm.CEASE_OUT_OF_RESOURCES, "peer does not read: write buffer over its limit")

    # driven by the Peer / owner
    def stop(self, code: int, subcode: int, text: str = "", data: bytes = b"") -> None:
        if self.fsm is not None:
            self._after(self.fsm.stop(code, subcode, data, text))

    def abort(self, text: str) -> None:
        """Drop the connection without a NOTIFICATION (seen by the owner as a lost connection)."""
        if self.fsm is not None:
            self._after(self.fsm.connection_lost(text))
        if self.transport is not None:
            self.transport.abort()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _on_timer(self) -> None:
        self._timer = None
        if self.fsm is not None:
            now = self.loop.time()
            if self._flusher is not None and self._unread():
                # Reading is paused by our own back-pressure (the owner is behind), not the peer's silence:
                # a host taking in a large table on a busy CPU must not drop the session it is learning from.
                self.fsm.unread_input(now)
            self._after(self.fsm.handle_timer(now))

    def _unread(self) -> bool:
        """Bytes from the peer wait in the socket's receive queue (FIONREAD)."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return False
        try:
            return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0] > 0
        except OSError:
            return False

    def _after(self, events: list[fsm.Event] | tuple[()]) -> None:
        """Flush what the FSM wants sent, re-arm its timer, hand its events on (aioquic's `transmit()`)."""
        assert self.fsm is not None and self.transport is not None
        out = self.fsm.data_to_send()
        if out:
            self.write(out)
        when = self.fsm.next_timer()
        if self._timer is not None and self._timer.when() != when:
            self._timer.cancel()
            self._timer = None
        if self.fsm.state is fsm.State.IDLE:
            if not self.transport.is_closing() and self._abort_timer is None:
                # FIN after the NOTIFICATION, and keep reading (discarding) until the peer closes too:
                # closing with its bytes unread would send a RST, which can destroy the NOTIFICATION
                # before the peer reads it. CLOSE_GRACE bounds both waits (our flush, its close).
                try:
                    self.transport.write_eof()
                except OSError:  # the socket is already gone (ENOTCONN): nothing left to flush
                    self.transport.abort()
                self._abort_timer = self.loop.call_later(CLOSE_GRACE, self.transport.abort)
        elif when is not None and self._timer is None:
            # A timer already armed for that time is kept, not armed again: asyncio runs a turn's I/O before
            # its due timers, so re-arming on every read would let a socket that is readable at every turn
            # (a large table coming in on a busy CPU) put off the KEEPALIVE for as long as the table lasts,
            # and the peer would expire us a hold time after our last message.
            self._timer = self.loop.call_at(when, self._on_timer)
        for event in events:
            self.peer._on_event(self, event)

    def deliver(self, event: fsm.Event) -> None:
        """Queue an event for the owner, in order; pause reading while the inbox is full."""
        inbox = self.peer.inbox
        if not self._pending:
            try:
                inbox.queue.put_nowait(PeerEvent(self.peer, event))
                return
            except asyncio.QueueFull:
                inbox.producer_pauses += 1
        self._pending.append(event)
        if self._flusher is None:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.pause_reading()
            self._flusher = self.loop.create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            await self.peer.inbox.queue.put(PeerEvent(self.peer, self._pending.popleft()))
        self._flusher = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


class Peer:
    """One neighbour: its connect-retry loop, its connections, collision resolution (RFC 4271 6.8)."""

    def __init__(self, settings: PeerSettings, inbox: Inbox, name: str | None = None) -> None:
        self.settings = settings
        self.inbox = inbox
        self.name = name or settings.address
        self.connections: list[Connection] = []
        self.established: Connection | None = None
        self.negotiated: wire.Negotiated | None = None
        self.remote: wire.Capabilities | None = None
        self._task: asyncio.Task[None] | None = None
        self._hold_timer: asyncio.TimerHandle | None = None
        self._stopped = False
        self._wake = asyncio.Event()
        self.backoff = fsm.Backoff(settings.connect_retry_initial, settings.connect_retry_max)
        self.connect_attempts = 0
        self.establishments = 0
        # Wall clock (time.time()) of the current session's Established; None while down. For metrics and
        # status: the owner task keeps no clock of its own.
        self.established_since: float | None = None
        self.write_pauses = 0
        self.write_stall_resets = 0
        # Called (from the event loop) when the established connection's write buffer has drained below
        # its low-water mark, and when the peer has no connection left (`on_idle`); set by the speaker.
        self.on_writable: Callable[[Peer], None] | None = None
        self.on_idle: Callable[[Peer], None] | None = None
        # Loop time before which we do not dial (a max-prefix teardown's restart timer).
        self.down_until = 0.0
        self._dial_now = False  # `dial_now`: the next connect-retry wait ends at once
        self._redial = asyncio.Event()  # `dial_now` during a connect: that attempt is given up for a new one

    def __repr__(self) -> str:
        return f"Peer({self.name})"

    @property
    def state(self) -> fsm.State:
        if self.established is not None:
            return fsm.State.ESTABLISHED
        states = [c.state for c in self.connections]
        for s in (fsm.State.OPEN_CONFIRM, fsm.State.OPEN_SENT, fsm.State.CONNECT):
            if s in states:
                return s
        return fsm.State.ACTIVE if not self._stopped else fsm.State.IDLE

    def start(self) -> None:
        if self._task is None and not self.settings.passive:
            self._task = asyncio.get_running_loop().create_task(self._connect_loop(), name=f"bgp-connect-{self.name}")

    async def stop(self, subcode: int = fsm.CEASE_ADMIN_SHUTDOWN, notify: bool = True) -> None:
        """`notify`: close with a NOTIFICATION Cease (the peer drops our routes at once), or without one, as a
        crash would (a peer with graceful restart keeps them, stale, until we are back: RFC 4724)."""
        self._stopped = True
        self._wake.set()
        if self._hold_timer is not None:
            self._hold_timer.cancel()
        await cancel(self._task)
        for conn in list(self.connections):
            if notify:
                conn.stop(fsm.ERR_CEASE, subcode, "administrative stop")
            else:
                conn.abort("stopped for a restart")

    def send(self, data: bytes) -> bool:
        """Write encoded messages to the established connection; False if there is none."""
        if self.established is None:
            return False
        self.established.write(data)
        return True

    @property
    def writable(self) -> bool:
        """Established and under its write-buffer limit: a sender that honours back-pressure writes now."""
        conn = self.established
        return conn is not None and not conn.writing_paused

    def _on_writable(self) -> None:
        if self.on_writable is not None:
            self.on_writable(self)

    def dial_now(self) -> None:
        """The path to the peer just came up (a tunnel's SA): dial at once rather than when the connect-retry
        delay runs out, and start the backoff again. An attempt in progress is given up for a new one (its SYN,
        sent before the path was up, was lost, and TCP would send it again only a second or more later). A
        max-prefix hold-down still holds; an Established connection stays."""
        self.backoff.reset()
        self._dial_now = True
        self._redial.set()
        self._wake.set()

    def hold_down(self, seconds: float) -> None:
        """Do not dial this peer for `seconds` (the listener side is the speaker's business)."""
        self.down_until = asyncio.get_running_loop().time() + seconds

    def opening(self) -> int:
        """Connections not yet Established (OpenSent, OpenConfirm, or accepted and not yet started)."""
        return sum(1 for c in self.connections if c.state is not fsm.State.ESTABLISHED)

    def write_buffer_size(self) -> int:
        conn = self.established
        return conn.transport.get_write_buffer_size() if conn and conn.transport else 0

    # -- accepting ----------------------------------------------------------------------------------------

    def accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn = Connection(self, fsm.Side.INCOMING, loop)
        self.connections.append(conn)
        loop.create_task(loop.connect_accepted_socket(lambda: conn, sock))

    # -- connecting ---------------------------------------------------------------------------------------

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped:
            wait = self.down_until - loop.time()
            if wait > 0:
                await self._sleep(wait)
                continue
            if self.established is None and not any(c.side is fsm.Side.OUTGOING for c in self.connections):
                self.connect_attempts += 1
                conn = Connection(self, fsm.Side.OUTGOING, loop)
                try:
                    sock = await self._connect_or_redial()
                except OSError as err:
                    delay = self.backoff.next_delay()
                    log.info("peer %s: connect failed (%s); retry in %.1f s", self.name, err, delay)
                    await self._sleep(delay)
                    continue
                if sock is None:
                    log.info("peer %s: the path came up while connecting: dialling again", self.name)
                    self._dial_now = False
                    continue
                self.connections.append(conn)
                await loop.connect_accepted_socket(lambda conn=conn: conn, sock)
            # Wait until our connection goes away, then back off before dialling again.
            self._wake.clear()
            await self._wake.wait()
            if not self._stopped and self.established is None:
                await self._sleep(self.backoff.next_delay())

    async def _sleep(self, delay: float) -> None:
        try:
            await asyncio.wait_for(self._stop_event(), delay)
        except TimeoutError:
            pass

    async def _stop_event(self) -> None:
        """Until stopped, or until `dial_now` (which it consumes)."""
        while not self._stopped:
            if self._dial_now:
                self._dial_now = False
                return
            self._wake.clear()
            await self._wake.wait()

    async def _connect_or_redial(self) -> socket.socket | None:
        """`_connect_socket`, or None when `dial_now` came first (the attempt given up)."""
        self._redial.clear()
        connect = asyncio.ensure_future(self._connect_socket())
        redial = asyncio.ensure_future(self._redial.wait())
        try:
            await asyncio.wait((connect, redial), return_when=asyncio.FIRST_COMPLETED)
        finally:
            redial.cancel()
            if not connect.done():  # given up: `dial_now`, or this loop is stopped (its socket closed)
                connect.cancel()
        if not connect.done() or connect.cancelled():
            await cancel(connect)
            return None
        return connect.result()

    async def _connect_socket(self) -> socket.socket:
        s = self.settings
        family = socket.AF_INET6 if ipaddress.ip_address(s.address).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if s.md5_password:
                set_md5(sock, s.address, s.md5_password)
            if s.bind_device:
                # before bind: an address in a VRF is only known to sockets bound to the VRF's device
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, s.bind_device.encode())
            if s.local_address:
                sock.bind((s.local_address, 0))
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (s.address, s.port)), CONNECT_TIMEOUT)
        except (TimeoutError, OSError) as err:
            sock.close()
            if isinstance(err, asyncio.TimeoutError):
                raise OSError(errno.ETIMEDOUT, "connect timed out") from None
            raise
        except asyncio.CancelledError:  # given up (`dial_now`, `stop`)
            sock.close()
            raise
        return sock

    # -- events from connections --------------------------------------------------------------------------

    def _on_event(self, conn: Connection, event: fsm.Event) -> None:
        if isinstance(event, fsm.OpenReceived):
            self._check_collision(conn, event.capabilities)
            return
        if isinstance(event, fsm.Established):
            if self.established is not None:
                conn.stop(fsm.ERR_CEASE, fsm.CEASE_COLLISION, "already established")
                return
            opening = (fsm.State.OPEN_SENT, fsm.State.OPEN_CONFIRM)
            if any(c is not conn and c.state in opening for c in self.connections):
                # RFC 4271 6.8: the other connection may still turn out to be the one to keep (its OPEN is
                # not in yet). Hold this one back briefly, so the owner never sees a session that the
                # collision rule then closes.
                conn.held = [event]
                loop = asyncio.get_running_loop()
                self._hold_timer = loop.call_later(COLLISION_WAIT, self._promote, conn)
                return
            self._promote(conn, [event])
            return
        if isinstance(event, fsm.Closed):
            if conn in self.connections:
                self.connections.remove(conn)
            if conn is self.established:
                self.established = None
                self.established_since = None
                conn.deliver(event)
            else:
                conn.held = None
                log.info("peer %s: %s connection closed before Established: %s",
                         self.name, conn.side.value, event.reason)
                for other in self.connections:
                    if other.held is not None:
                        self._promote(other)
            self._wake.set()
            if not self.connections and self.established is None and self.on_idle is not None:
                self.on_idle(self)
            return
        if conn.held is not None:
            conn.held.append(event)
        elif conn is self.established:
            conn.deliver(event)

    def _promote(self, conn: Connection, events: list[fsm.Event] | None = None) -> None:
        """Make `conn` the peer's session and hand its (held) events to the owner, in order."""
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        if events is None:
            events, conn.held = conn.held or [], None
        if conn not in self.connections or conn.state is not fsm.State.ESTABLISHED or self.established is not None:
            return
        first = events[0]
        assert isinstance(first, fsm.Established)
        self.established = conn
        self.negotiated = first.negotiated
        self.remote = first.remote
        self.establishments += 1
        self.established_since = time.time()
        self.backoff.reset()
        for event in events:
            conn.deliver(event)

    def _check_collision(self, conn: Connection, remote: wire.Capabilities) -> None:
        for other in self.connections:
            if other is conn or other.fsm is None or other.state not in (fsm.State.OPEN_CONFIRM, fsm.State.ESTABLISHED):
                continue
            if other.side is conn.side:
                # The peer opened a new connection while we still hold the old one: it restarted. RFC 4724
                # 4.2: close the old connection without a NOTIFICATION and treat it as a restart (its
                # routes stay, stale, if it has graceful restart).
                log.info("peer %s: new %s connection replaces the old one", self.name, conn.side.value)
                other.abort("replaced by a new connection from the peer")
                continue
            # RFC 4271 6.8: keep the connection initiated by the higher BGP Identifier. We apply the rule
            # also when the other connection already reached Established (rather than always closing
            # the new one), because the peer may have reached Established on the other connection: only
            # the identifier rule makes both sides close the same one.
            loser_side = fsm.collision_loser(self.settings.local.router_id, remote.router_id)
            loser = conn if conn.side is loser_side else other
            log.info("peer %s: connection collision, closing the %s one", self.name, loser_side.value)
            loser.stop(fsm.ERR_CEASE, fsm.CEASE_COLLISION, "connection collision resolution")
            return


class Listener:
    """A passive endpoint: accepts, finds the peer with `lookup`, and refuses the rest with a NOTIFICATION
    (`lookup` returns the reason as a string)."""

    def __init__(
        self,
        address: str,
        port: int,
        lookup: Callable[[str], Peer | str],
    ) -> None:
        self.address = address
        self.port = port
        self.lookup = lookup
        self.sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.rejected = 0
        self._refusing: set[asyncio.Task[None]] = set()

    def open(self) -> None:
        family = socket.AF_INET6 if ipaddress.ip_address(self.address).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.address, self.port))
        sock.listen(128)
        sock.setblocking(False)
        self.sock = sock
        if self.port == 0:
            self.port = sock.getsockname()[1]

    def set_md5(self, peer: str, password: str, prefixlen: int | None = None) -> None:
        assert self.sock is not None
        set_md5(self.sock, peer, password, prefixlen)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._accept_loop(), name=f"bgp-listen-{self.address}")

    async def close(self) -> None:
        await cancel(self._task)
        if self.sock is not None:
            self.sock.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.sock is not None
        while True:
            try:
                conn, addr = await loop.sock_accept(self.sock)
            except OSError as err:
                # e.g. EMFILE: keep listening rather than silently stop accepting.
                log.error("accept on %s:%d failed: %s", self.address, self.port, err)
                await asyncio.sleep(1.0)
                continue
            remote = addr[0]
            if remote.startswith("::ffff:"):
                remote = remote[7:]
            peer = self.lookup(remote)
            if isinstance(peer, str):
                self.rejected += 1
                log.warning("refusing BGP connection from %s: %s", remote, peer)
                # RFC 4486 Cease/Connection Rejected rather than a silent close, so the peer's log says why;
                # under a flood, without waiting for the peer to close (bounded sockets and tasks).
                task = loop.create_task(_refuse(conn, wait=len(self._refusing) < REFUSING_MAX))
                self._refusing.add(task)
                task.add_done_callback(self._refusing.discard)
                continue
            conn.setblocking(False)
            peer.accept(conn)


async def _refuse(conn: socket.socket, wait: bool = True) -> None:
    loop = asyncio.get_running_loop()
    try:
        notification = wire.encode_notification(fsm.ERR_CEASE, fsm.CEASE_CONNECTION_REJECTED, b"")
        await asyncio.wait_for(loop.sock_sendall(conn, notification), 2.0)
        if not wait:
            return
        # As Connection does: FIN, then read until the peer closes (its OPEN unread would make our close a
        # RST, which can destroy the NOTIFICATION), at most REFUSE_GRACE seconds and REFUSE_READ bytes.
        conn.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(REFUSE_GRACE):
            received = 0
            while received < REFUSE_READ:
                data = await loop.sock_recv(conn, 4096)
                if not data:
                    break
                received += len(data)
    except (TimeoutError, OSError):
        pass
    finally:
        conn.close()
