"""Dispatch what a VM sent to the protocol that answers it, send the answers out of the same port.

A frame is first classified (ARP, DHCPv4, DHCPv6, router solicitation, neighbour advertisement), then
judged: it must arrive on a port's interface (else `unknown_port`) from that port's MAC (else `wrong_mac`),
then the protocol's pure function answers from the port's PortService. Every frame is counted by protocol
and outcome (answered, ignored, malformed, unknown_port, wrong_mac, claimed, rate_limited), which the agent
exports. The requests a port's VM may have answered are rate limited (PORT_RATE a second, PORT_BURST at
once, all protocols together); what only claims an address (ARP, NA) is not: a failover must never wait.

Protocols are entries of tables, so adding one is one line: `HANDLERS` answer a request with frames,
`CLAIMERS` say which virtual address a frame announces (the agent's `on_claim` decides what that means),
`ADVERTISERS` build what a port gets unasked (at update for a new port, then every `interval` seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from nvfabric.hostagent.guest import dhcp4, dhcp6, frames, ra, vip
from nvfabric.hostagent.guest.offer import PortService

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# (eth, the parsed packet: frames.Arp | frames.Udp4 | frames.Ip6, the port's service, host-side MAC) -> replies
Handler = Callable[[frames.Ethernet, Any, PortService, bytes], list[bytes]]
Claimer = Callable[[frames.Ethernet, PortService], Address | None]
Advertiser = Callable[[PortService, bytes], list[bytes]]
OnClaim = Callable[[str, Address], Awaitable[None]]

OUTCOMES = ("answered", "ignored", "malformed", "unknown_port", "wrong_mac", "claimed", "advertised", "rate_limited")
PROTOCOLS = ("arp", "dhcp4", "dhcp6", "rs", "ra", "na", "other")

HANDLERS: dict[str, Handler] = {
    "dhcp4": lambda eth, _packet, port, host_mac: dhcp4.answer(eth, port, host_mac),
    "rs": ra.answer,
    # the server's DUID is the host side's MAC (DUID-LL): the same after an agent restart
    "dhcp6": lambda eth, packet, port, host_mac: dhcp6.answer(eth, packet, port, host_mac, dhcp6.duid_ll(host_mac)),
}
CLAIMERS: dict[str, Claimer] = {"arp": vip.claimed, "na": vip.claimed}
ADVERTISERS: dict[str, Advertiser] = {
    "ra": lambda port, host_mac: [frame] if (frame := ra.unsolicited(port, host_mac)) is not None else [],
}
ADVERTISE_INTERVAL = 200.0  # seconds between unsolicited advertisements (RFC 4861 MaxRtrAdvInterval: 600)
# Requests a port's VM may have answered per second (and in a burst): a guest's DHCP and RS need a few a
# minute; a VM flooding its port costs the agent a parse and a count per frame, not an answer
PORT_RATE, PORT_BURST = 20.0, 50.0


@dataclass
class Bucket:
    tokens: float
    at: float

    def take(self, now: float, rate: float, burst: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class PacketWire(Protocol):
    def start(self, receive: Callable[[str, bytes], None]) -> None: ...
    def close(self) -> None: ...
    def send(self, interface: str, frame: bytes) -> bool: ...
    def host_mac(self, interface: str) -> bytes | None: ...
    def forget(self) -> None: ...


def classify(eth: frames.Ethernet) -> tuple[str, Any]:
    """(protocol, parsed packet), the packet None when the frame is malformed for its protocol."""
    if eth.ethertype == frames.ETH_P_ARP:
        return "arp", frames.parse_arp(eth.payload)
    if eth.ethertype == frames.ETH_P_IP:
        udp = frames.parse_udp4(eth.payload)
        return ("dhcp4", udp) if udp is None or udp.dport == 67 else ("other", udp)
    if eth.ethertype == frames.ETH_P_IPV6:
        packet = frames.parse_ip6(eth.payload)
        if packet is None:
            return "other", None
        if packet.next_header == frames.PROTO_UDP:
            udp6 = frames.parse_udp6(packet)
            return ("dhcp6", packet if udp6 else None) if udp6 is None or udp6[1] == 547 else ("other", packet)
        if packet.next_header == frames.PROTO_ICMPV6 and packet.payload[:1] in (b"\x85", b"\x88"):
            kind = "rs" if packet.payload[0] == 133 else "na"
            return kind, packet if frames.parse_icmp6(packet) else None
        return "other", packet
    return "other", None


@dataclass
class Counters:
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, protocol: str, outcome: str) -> None:
        self.counts[(protocol, outcome)] = self.counts.get((protocol, outcome), 0) + 1

    def get(self, protocol: str, outcome: str) -> int:
        return self.counts.get((protocol, outcome), 0)

    def as_dict(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (protocol, outcome), n in sorted(self.counts.items()):
            out.setdefault(protocol, {})[outcome] = n
        return out


class Responder:
    def __init__(self, wire: PacketWire, on_claim: OnClaim, *, handlers: Mapping[str, Handler] | None = None,
                 claimers: Mapping[str, Claimer] | None = None,
                 advertisers: Mapping[str, Advertiser] | None = None,
                 interval: float = ADVERTISE_INTERVAL, rate: float = PORT_RATE, burst: float = PORT_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._wire = wire
        self._on_claim = on_claim
        self._handlers = dict(HANDLERS if handlers is None else handlers)
        self._claimers = dict(CLAIMERS if claimers is None else claimers)
        self._advertisers = dict(ADVERTISERS if advertisers is None else advertisers)
        self._interval = interval
        self._rate, self._burst, self._clock = rate, burst, clock
        self._buckets: dict[str, Bucket] = {}  # by interface
        self._services: dict[str, PortService] = {}  # by interface
        self.counters = Counters()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None

    @property
    def services(self) -> Mapping[str, PortService]:
        return self._services

    def start(self) -> None:
        self._wire.start(self.receive)
        if self._advertisers:
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="guest-advertisements")

    async def close(self) -> None:
        self._wire.close()
        for task in [*self._tasks, *([self._ticker] if self._ticker else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._ticker = None

    def update(self, services: Mapping[str, PortService]) -> None:
        """What each port (by interface) is offered from now on; a port new or changed gets its
        advertisements at once."""
        old, self._services = self._services, dict(services)
        self._buckets = {k: v for k, v in self._buckets.items() if k in self._services}
        self._wire.forget()  # an interface may have been recreated with another MAC
        for interface, service in self._services.items():
            if old.get(interface) != service:
                self._advertise(service)

    def update_ports(self, changed: Mapping[str, PortService | None]) -> None:
        """What the ports on these interfaces are offered from now on (None: nothing, the port is gone or
        not served); the other ports are not looked at. A port new or changed gets its advertisements at
        once."""
        self._wire.forget()  # an interface may have been recreated with another MAC
        for interface, service in changed.items():
            old = self._services.get(interface)
            if service is None:
                self._services.pop(interface, None)
                self._buckets.pop(interface, None)
            elif old != service:
                self._services[interface] = service
                self._advertise(service)

    def as_dict(self) -> dict[str, Any]:
        errors = getattr(self._wire, "errors", {})
        return {"ports": len(self._services), "frames": self.counters.as_dict(), "wire_errors": dict(errors)}

    def receive(self, interface: str, frame: bytes) -> None:
        eth = frames.parse_ethernet(frame)
        if eth is None:
            self.counters.add("other", "malformed")
            return
        protocol, packet = classify(eth)
        service = self._services.get(interface)
        if service is None:
            self.counters.add(protocol, "unknown_port")
            return
        if eth.src != frames.mac_bytes(service.mac):
            self.counters.add(protocol, "wrong_mac")
            return
        if packet is None:
            self.counters.add(protocol, "malformed")
            return
        outcome = "ignored"
        claimer = self._claimers.get(protocol)
        if claimer is not None:
            address = claimer(eth, service)
            if address is not None:
                outcome = "claimed"
                self._claim(service.port, address)
        handler = self._handlers.get(protocol)
        if handler is not None:
            now = self._clock()
            bucket = self._buckets.setdefault(interface, Bucket(self._burst, now))
            if not bucket.take(now, self._rate, self._burst):
                self.counters.add(protocol, "rate_limited")
                return
            host_mac = self._wire.host_mac(interface)
            if host_mac is None:
                self.counters.add(protocol, "ignored")
                return
            replies = handler(eth, packet, service, host_mac)
            for reply in replies:
                self._wire.send(interface, reply)
            if replies:
                outcome = "answered"
        self.counters.add(protocol, outcome)

    def _claim(self, port: str, address: Address) -> None:
        task = asyncio.get_running_loop().create_task(self._claimed(port, address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _claimed(self, port: str, address: Address) -> None:
        try:
            await self._on_claim(port, address)
        except Exception:  # noqa: BLE001 - a failed claim is the agent's to report; the responder goes on
            log.exception("guest services: claim of %s by port %s failed", address, port)

    def _advertise(self, service: PortService) -> None:
        if not self._advertisers:
            return
        host_mac = self._wire.host_mac(service.interface)
        if host_mac is None:
            return
        for name, advertiser in self._advertisers.items():
            for frame in advertiser(service, host_mac):
                if self._wire.send(service.interface, frame):
                    self.counters.add(name, "advertised")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            for service in list(self._services.values()):
                self._advertise(service)
