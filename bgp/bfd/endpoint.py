"""The asyncio adapter of the BFD sessions (RFC 5881 single hop, IPv4 and IPv6): sockets, TTL, timers.

One receive socket per address family on UDP 3784 reads the TTL / hop limit of every datagram (ancillary
data) and drops anything not sent with 255 (RFC 5881 section 5: only a neighbour on the link can send it).
Each session sends from its own socket, bound to a source port in 49152-65535 (section 4) and to the
configured local address, with TTL 255. Received packets go to a session by Your Discriminator, or, when it
is still 0, by the source address. Each session has one timer, re-armed after every call into its machine.

Sockets are created in `start()`: the lab's daemons run in threads that entered a network namespace, and a
socket belongs to the namespace of the thread that creates it.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import random
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nvfabric.bgp.bfd import BfdConfig, BfdState, BfdStatus, Diagnostic
from nvfabric.bgp.bfd import machine, packet

log = logging.getLogger(__name__)

CONTROL_PORT = 3784
SOURCE_PORTS = range(49152, 65536)
TTL = 255
# Linux values; Python does not name IP_RECVTTL.
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
_ANCILLARY = socket.CMSG_SPACE(4) * 2
OPEN_RETRY = 1.0  # seconds
_MAX_DATAGRAM = 512  # a control packet is at most 24 + 28 bytes; anything longer is still read whole

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _split(peer: str, what: str = "peer") -> tuple[Address, str | None]:
    """"fe80::2%eth1" -> (address, "eth1"): a link-local peer names its interface."""
    text, _, scope = peer.partition("%")
    try:
        return ipaddress.ip_address(text), scope or None
    except ValueError:
        raise ValueError(f"{what}: {peer!r} is not an IP address") from None


@dataclass(eq=False)
class _Peer:
    name: str
    address: Address
    scope: str | None
    config: BfdConfig
    on_change: Callable[[BfdStatus], None]
    local_address: str | None
    session: machine.Session
    sock: socket.socket | None = None
    timer: asyncio.TimerHandle | None = None
    retry: asyncio.TimerHandle | None = None
    open_failures: int = 0
    up_since: float | None = None
    dropped: int = 0  # refused here, before the machine: TTL, malformed
    send_errors: int = 0
    destination: tuple[object, ...] = field(default=())


class Bfd:
    """The BFD sessions of one daemon (shared contract: add / remove / status, `on_change` per session)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.SystemRandom()
        self._peers: dict[str, _Peer] = {}
        self._by_discriminator: dict[int, _Peer] = {}
        self._by_address: dict[Address, _Peer] = {}
        self._receivers: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dropped = 0  # refused and not attributable to a session (unknown source, malformed)

    # -- the contract -------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for family, level, option, anywhere in (
                (socket.AF_INET, socket.IPPROTO_IP, IP_RECVTTL, "0.0.0.0"),
                (socket.AF_INET6, socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, "::")):
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
            except OSError as err:  # no IPv6 in this namespace: IPv4 alone still works
                log.warning("bfd: no %s socket: %s", family.name, err)
                continue
            try:
                # No SO_REUSEADDR: a second listener in this namespace (another daemon, FRR's bfdd) would
                # silently take the packets; better to fail here.
                if family is socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(level, option, 1)
                sock.bind((anywhere, CONTROL_PORT))
                sock.setblocking(False)
            except OSError:
                sock.close()
                if family is socket.AF_INET:
                    raise
                log.warning("bfd: cannot listen on [::]:%d", CONTROL_PORT)
                continue
            self._loop.add_reader(sock.fileno(), self._readable, sock)
            self._receivers.append(sock)
        for peer in self._peers.values():
            self._open(peer)

    async def stop(self) -> None:
        for peer in list(self._peers.values()):
            self._shut(peer)
        self._peers.clear()
        self._by_discriminator.clear()
        self._by_address.clear()
        for sock in self._receivers:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._receivers.clear()
        self._loop = None

    def add(self, peer: str, config: BfdConfig, on_change: Callable[[BfdStatus], None],
            local_address: str | None = None) -> None:
        existing = self._peers.get(peer)
        if existing is not None and existing.local_address == local_address:
            existing.on_change = on_change
            if existing.config != config:
                events = existing.session.set_config(config, self._now())  # ValueError: nothing changed
                existing.config = config
                self._after(existing, events)
            return
        if existing is not None:
            self.remove(peer)
        address, scope = _split(peer)
        if local_address is not None and _split(local_address, "local_address")[0].version != address.version:
            raise ValueError(f"local_address: {local_address} is not of the family of the peer {peer}")
        discriminator = self._new_discriminator()
        session = machine.Session(config, discriminator, self._now(), random=self._rng.random)
        entry = _Peer(peer, address, scope, config, on_change, local_address, session)
        self._peers[peer] = entry
        self._by_discriminator[discriminator] = entry
        self._by_address[address] = entry
        if self._loop is not None:
            self._open(entry)

    def remove(self, peer: str) -> None:
        entry = self._peers.pop(peer, None)
        if entry is None:
            return
        self._by_discriminator.pop(entry.session.local_discriminator, None)
        if self._by_address.get(entry.address) is entry:
            del self._by_address[entry.address]
        self._shut(entry)

    def status(self) -> list[BfdStatus]:
        return [self._status(self._peers[name]) for name in sorted(self._peers)]

    # -- sockets ------------------------------------------------------------------------------------------

    def _open(self, peer: _Peer) -> None:
        """The session's send socket; when it cannot be made yet (its local address not configured, or
        still tentative), the session waits, trying again every OPEN_RETRY seconds."""
        peer.retry = None
        try:
            self._make_socket(peer)
        except OSError as err:
            peer.open_failures += 1
            log.log(logging.WARNING if peer.open_failures == 1 else logging.DEBUG,
                    "bfd: %s: cannot send from %s yet, retrying: %s", peer.name, peer.local_address or "any", err)
            assert self._loop is not None
            peer.retry = self._loop.call_later(OPEN_RETRY, self._open, peer)
            return
        self._after(peer, [])

    def _make_socket(self, peer: _Peer) -> None:
        family = socket.AF_INET6 if peer.address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family is socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, TTL)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, TTL)
            local = peer.local_address or ("0.0.0.0" if family is socket.AF_INET else "::")
            local_ip, _, local_scope = local.partition("%")
            scope_id = socket.if_nametoindex(local_scope or peer.scope) if (local_scope or peer.scope) else 0
            self._bind(sock, family, local_ip, scope_id)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        peer.sock = sock
        if family is socket.AF_INET:
            peer.destination = (str(peer.address), CONTROL_PORT)
        else:
            peer_scope = socket.if_nametoindex(peer.scope) if peer.scope else scope_id
            peer.destination = (str(peer.address), CONTROL_PORT, 0, peer_scope)

    def _bind(self, sock: socket.socket, family: socket.AddressFamily, ip: str, scope_id: int) -> None:
        """A free source port in 49152-65535 (RFC 5881 section 4), tried from a random start."""
        start = self._rng.randrange(len(SOURCE_PORTS))
        for i in range(len(SOURCE_PORTS)):
            port = SOURCE_PORTS[(start + i) % len(SOURCE_PORTS)]
            try:
                sock.bind((ip, port) if family is socket.AF_INET else (ip, port, 0, scope_id))
                return
            except OSError as err:
                if err.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, "bfd: no free source port in 49152-65535")

    def _shut(self, peer: _Peer) -> None:
        """AdminDown told to the peer, then the session's socket and timer are gone."""
        if peer.sock is not None:
            events = peer.session.admin_down(self._now())
            self._flush(peer)
            for event in events:
                self._notify(peer, event)
            peer.sock.close()
            peer.sock = None
        for handle in (peer.timer, peer.retry):
            if handle is not None:
                handle.cancel()
        peer.timer = peer.retry = None

    def _readable(self, sock: socket.socket) -> None:
        while True:
            try:
                data, ancillary, _flags, source = sock.recvmsg(_MAX_DATAGRAM, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                log.warning("bfd: receive failed: %s", err)
                return
            self._received(data, ancillary, source)

    def _received(self, data: bytes, ancillary: list[tuple[int, int, bytes]], source: tuple[object, ...]
                  ) -> None:
        ttl = None
        for level, kind, value in ancillary:
            if (level, kind) in ((socket.IPPROTO_IP, socket.IP_TTL),
                                 (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT)):
                ttl = int.from_bytes(value[:4], sys.byteorder) if len(value) >= 4 else value[0]
        try:
            address: Address = ipaddress.ip_address(str(source[0]).partition("%")[0])
        except ValueError:
            self.dropped += 1
            return
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        by_source = self._by_address.get(address)
        if ttl != TTL:
            self._drop(by_source)
            return
        try:
            received = packet.decode(data)
        except packet.PacketError as err:
            log.debug("bfd: from %s: %s", address, err)
            self._drop(by_source)
            return
        if received.your_discriminator:
            peer = self._by_discriminator.get(received.your_discriminator)
        else:
            peer = by_source
        if peer is None or peer.sock is None:
            self._drop(by_source)
            return
        self._after(peer, peer.session.receive(received, self._now()))

    def _drop(self, peer: _Peer | None) -> None:
        if peer is not None:
            peer.dropped += 1
        else:
            self.dropped += 1

    # -- the machine --------------------------------------------------------------------------------------

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else time.monotonic()

    def _after(self, peer: _Peer, events: list[machine.Event]) -> None:
        """Send what the machine wants sent, re-arm its timer, tell the owner (bgp/session's `_after`)."""
        self._flush(peer)
        if peer.timer is not None:
            peer.timer.cancel()
            peer.timer = None
        when = peer.session.next_timer()
        if when is not None and self._loop is not None and peer.sock is not None:
            peer.timer = self._loop.call_at(when, self._on_timer, peer)
        for event in events:
            self._notify(peer, event)

    def _on_timer(self, peer: _Peer) -> None:
        peer.timer = None
        if peer.sock is not None:
            self._after(peer, peer.session.handle_timer(self._now()))

    def _flush(self, peer: _Peer) -> None:
        datagrams = peer.session.datagrams_to_send()
        if peer.sock is None:
            return
        for datagram in datagrams:
            try:
                peer.sock.sendto(datagram, peer.destination)
            except OSError as err:  # no route yet, link down: detection time handles the rest
                peer.send_errors += 1
                if peer.send_errors in (1, 10, 100) or peer.send_errors % 1000 == 0:
                    log.info("bfd: send to %s failed (%d times): %s", peer.name, peer.send_errors, err)

    def _notify(self, peer: _Peer, event: machine.StateChanged) -> None:
        if event.new is BfdState.UP:
            peer.up_since = time.time()
        elif event.old is BfdState.UP:
            peer.up_since = None
        log.info("bfd: %s %s -> %s (%s)", peer.name, event.old.label, event.new.label,
                 event.diag.name.lower())
        try:
            peer.on_change(self._status(peer))
        except Exception:  # the owner's bug must not stop the other sessions' timers
            log.exception("bfd: on_change for %s failed", peer.name)

    def _status(self, peer: _Peer) -> BfdStatus:
        s = peer.session
        return BfdStatus(
            peer=peer.name, local_address=peer.local_address, state=s.state, remote_state=s.remote_state,
            local_discriminator=s.local_discriminator, remote_discriminator=s.remote_discriminator,
            diagnostic=s.down_reason, remote_diagnostic=s.remote_diag,
            transmit_interval=s.transmit_interval / 1e6, detect_time=s.detect_time / 1e6,
            up_since=peer.up_since, transitions=s.counters.transitions, downs=s.counters.downs,
            packets_in=s.counters.packets_in, packets_out=s.counters.packets_out,
            dropped=s.counters.dropped + peer.dropped)

    def _new_discriminator(self) -> int:
        while True:
            candidate = self._rng.randrange(1, 1 << 32)
            if candidate not in self._by_discriminator:
                return candidate


__all__ = ["Bfd", "BfdConfig", "BfdStatus", "Diagnostic", "CONTROL_PORT"]
