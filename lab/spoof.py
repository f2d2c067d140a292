"""Frames a hostile VM would send, built byte by byte and sent with an AF_PACKET socket from inside the VM's
namespace (no tool beyond Python): IP from a source that is not the VM's, ARP with another sender, neighbour
advertisements for another's address, a DHCP server's offer, a router advertisement. And a receiver that
captures what reaches a victim's interface, so a test can wait for a marker packet instead of sleeping.
Used by the port-security tests (host and VM phases).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time

from nvfabric.hostagent.guest.frames import checksum
from nvfabric.lab.daemons import in_ns

ETH_P_ALL = 0x0003
BROADCAST = "ff:ff:ff:ff:ff:ff"


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def ethernet(dst: str, src: str, ethertype: int, payload: bytes) -> bytes:
    return _mac(dst) + _mac(src) + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x1234, 0, ttl, proto, 0, _ip(src), _ip(dst))
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes, hop_limit: int = 64) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, hop_limit, _ip(src), _ip(dst)) + payload


def icmp4_echo(ident: int, seq: int, data: bytes = b"nvfabric-spoof") -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + data
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def icmp6(src: str, dst: str, kind: int, code: int, rest: bytes) -> bytes:
    body = struct.pack("!BBH", kind, code, 0) + rest
    pseudo = _ip(src) + _ip(dst) + struct.pack("!I3xB", len(body), 58)
    return body[:2] + struct.pack("!H", checksum(pseudo + body)) + body[4:]


def udp4(src: str, dst: str, sport: int, dport: int, data: bytes) -> bytes:
    body = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    pseudo = _ip(src) + _ip(dst) + struct.pack("!BBH", 0, 17, len(body))
    return body[:6] + struct.pack("!H", checksum(pseudo + body) or 0xFFFF) + body[8:]


# ---------------------------------------------------------------------------------------------- frames


def ping4(src_mac: str, dst_mac: str, src: str, dst: str, seq: int = 1) -> bytes:
    return ethernet(dst_mac, src_mac, 0x0800, ipv4(src, dst, 1, icmp4_echo(0x4E56, seq)))


def ping6(src_mac: str, dst_mac: str, src: str, dst: str, seq: int = 1) -> bytes:
    echo = icmp6(src, dst, 128, 0, struct.pack("!HH", 0x4E56, seq) + b"nvfabric-spoof")
    return ethernet(dst_mac, src_mac, 0x86DD, ipv6(src, dst, 58, echo))


def arp(src_mac: str, sender_ip: str, target_ip: str, op: int = 1) -> bytes:
    """An ARP request (op 1) or reply (2) from src_mac claiming sender_ip."""
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, _mac(src_mac), _ip(sender_ip), bytes(6),
                       _ip(target_ip))
    return ethernet(BROADCAST, src_mac, 0x0806, body)


def neighbor_advert(src_mac: str, src: str, target: str, dst: str = "ff02::1") -> bytes:
    """An unsolicited, override NA for `target`, with its target link-layer address option = src_mac."""
    rest = struct.pack("!I", 0x20000000) + _ip(target) + bytes([2, 1]) + _mac(src_mac)
    dst_mac = "33:33:00:00:00:01" if dst == "ff02::1" else BROADCAST
    return ethernet(dst_mac, src_mac, 0x86DD, ipv6(src, dst, 58, icmp6(src, dst, 136, 0, rest), hop_limit=255))


def router_advert(src_mac: str, dst_mac: str, src: str, dst: str) -> bytes:
    """A router advertisement (hop limit 255, router lifetime 1800 s) with a prefix fd66::/64."""
    prefix = bytes([3, 4, 64, 0xC0]) + struct.pack("!III", 86400, 14400, 0) + _ip("fd66::")
    rest = struct.pack("!BBHII", 64, 0, 1800, 0, 0) + prefix
    return ethernet(dst_mac, src_mac, 0x86DD, ipv6(src, dst, 58, icmp6(src, dst, 134, 0, rest), hop_limit=255))


def dhcp_offer(src_mac: str, dst_mac: str, src: str, dst: str, offered: str) -> bytes:
    """A DHCP server's OFFER (UDP 67 -> 68), as a rogue server in a VM would send it."""
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 2, 1, 6, 0, 0x4E564642, 0, 0, bytes(4), _ip(offered),
                        _ip(src), bytes(4), _mac(dst_mac), b"", b"")
    options = b"\x63\x82\x53\x63" + bytes([53, 1, 2, 54, 4]) + _ip(src) + bytes([255])
    return ethernet(dst_mac, src_mac, 0x0800, ipv4(src, dst, 17, udp4(src, dst, 67, 68, bootp + options)))


def dhcp_discover(src_mac: str) -> bytes:
    """A client's DISCOVER: 0.0.0.0:68 -> 255.255.255.255:67, broadcast."""
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x4E564643, 0, 0x8000, bytes(4), bytes(4),
                        bytes(4), bytes(4), _mac(src_mac), b"", b"")
    options = b"\x63\x82\x53\x63" + bytes([53, 1, 1, 255])
    payload = udp4("0.0.0.0", "255.255.255.255", 68, 67, bootp + options)
    return ethernet(BROADCAST, src_mac, 0x0800, ipv4("0.0.0.0", "255.255.255.255", 17, payload))


def send(ns: str, iface: str, *frames: bytes) -> None:
    """Send raw frames out of `iface` inside namespace `ns`."""
    def go() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((iface, 0))
            for frame in frames:
                s.send(frame)

    in_ns(ns, go)


class Receiver:
    """Every frame arriving on `iface` in `ns` (an AF_PACKET capture, like tcpdump's), kept in `frames`."""

    def __init__(self, ns: str, iface: str) -> None:
        self.frames: list[bytes] = []
        self._sock: socket.socket = in_ns(ns, lambda: _bound(iface))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, address = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if address[2] != socket.PACKET_OUTGOING:
                self.received(data)

    def received(self, frame: bytes) -> None:
        """Called for each frame from the capture's thread; a subclass may answer it instead of keeping it."""
        self.frames.append(frame)

    def seen(self, needle: bytes) -> bool:
        return any(needle in frame for frame in list(self.frames))

    def wait(self, needle: bytes, timeout: float = 10.0) -> bool:
        """Until a frame containing `needle` arrived (True), or the timeout (False)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.seen(needle):
                return True
            time.sleep(0.02)
        return self.seen(needle)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


def _bound(iface: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    return s
