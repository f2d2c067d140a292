"""The one AF_PACKET socket through which the agent hears its VMs and answers them.

Created by the agent's thread, so it is in the agent's network namespace and sees every interface there.
A classic BPF program attached before the socket is bound keeps only what the guest services answer or
watch (ARP; IPv4 UDP to port 67; IPv6 UDP to port 547; ICMPv6 router solicitations and neighbour
advertisements): the rest of the host's traffic never reaches Python. Frames the host itself sends
(PACKET_OUTGOING, among them our own answers) are dropped here.

Python's packet-socket address names the interface (the kernel's ifindex resolved to its name), so
interfaces are named here, not numbered. Send errors (ENETDOWN, ENXIO, ENODEV when a port vanished under
us) are counted by errno and logged once per interface and errno: never raised into the event loop.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import fcntl
import logging
import socket
import struct
from collections.abc import Callable

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SIOCGIFHWADDR = 0x8927
PACKET_OUTGOING = 4
READ_BURST = 64  # frames read per wake-up before yielding to the loop (a flood cannot starve the agent)
SNAPLEN = 0x40000

# The filter as data, one (code, jt, jf, k) per instruction, jump targets written as absolute indexes or
# labels (_resolve turns them into the offsets from the next instruction classic BPF wants).
# Equivalent to tcpdump's 'arp or (ip and udp dst port 67) or (ip6 and udp dst port 547) or
# (ip6 and icmp6 and (ip6[40] == 133 or ip6[40] == 136))', without following IPv6 extension headers
# (the parsers do not either).
_LDH, _LDB, _LDXB_MSH, _LDH_IND, _JEQ, _JSET, _RET = 0x28, 0x30, 0xB1, 0x48, 0x15, 0x45, 0x06
_ABS: list[tuple[int, int | str, int | str, int]] = [
    (_LDH, 0, 0, 12),                    # 0: A = ethertype
    (_JEQ, "accept", 2, 0x0806),         # 1: ARP -> accept
    (_JEQ, 3, "ipv6", 0x0800),           # 2: IPv4 -> 3, else the IPv6 test
    (_LDB, 0, 0, 23),                    # 3: A = IPv4 protocol
    (_JEQ, 5, "drop", 17),               # 4: UDP -> 5, else drop
    (_LDH, 0, 0, 20),                    # 5: A = flags + fragment offset
    (_JSET, "drop", 7, 0x1FFF),          # 6: a non-first fragment -> drop
    (_LDXB_MSH, 0, 0, 14),               # 7: X = 4 * (IPv4 IHL)
    (_LDH_IND, 0, 0, 16),                # 8: A = UDP destination port (at 14 + X + 2)
    (_JEQ, "accept", "drop", 67),        # 9: to the DHCPv4 server port -> accept
    (_JEQ, 11, "drop", 0x86DD),          # 10 ("ipv6"): IPv6 -> 11, else drop
    (_LDB, 0, 0, 20),                    # 11: A = IPv6 next header
    (_JEQ, 13, 15, 17),                  # 12: UDP -> 13, else the ICMPv6 test
    (_LDH, 0, 0, 56),                    # 13: A = UDP destination port (14 + 40 + 2)
    (_JEQ, "accept", "drop", 547),       # 14: to the DHCPv6 server port -> accept
    (_JEQ, 16, "drop", 58),              # 15: ICMPv6 -> 16, else drop
    (_LDB, 0, 0, 54),                    # 16: A = ICMPv6 type (14 + 40)
    (_JEQ, "accept", 18, 133),           # 17: router solicitation -> accept
    (_JEQ, "accept", "drop", 136),       # 18: neighbour advertisement -> accept
    (_RET, 0, 0, SNAPLEN),               # 19 ("accept"): the whole frame
    (_RET, 0, 0, 0),                     # 20 ("drop")
]


def _resolve(program: list[tuple[int, int | str, int | str, int]]) -> tuple[tuple[int, int, int, int], ...]:
    """Absolute targets (an index or a label) to the relative offsets classic BPF wants."""
    labels = {"ipv6": 10, "accept": len(program) - 2, "drop": len(program) - 1}
    out = []
    for i, (code, jt, jf, k) in enumerate(program):
        if code in (_JEQ, _JSET):
            t = labels[jt] if isinstance(jt, str) else jt
            f = labels[jf] if isinstance(jf, str) else jf
            jt, jf = t - i - 1, f - i - 1
            assert 0 <= jt < 256 and 0 <= jf < 256
        out.append((code, int(jt), int(jf), k))
    return tuple(out)


BPF_PROGRAM = _resolve(_ABS)


def bpf_bytes(program: tuple[tuple[int, int, int, int], ...] = BPF_PROGRAM) -> bytes:
    return b"".join(struct.pack("HBBI", *insn) for insn in program)


class Wire:
    """The agent's packet socket: `start(receive)` calls receive(interface, frame) for every frame the filter
    keeps that a VM sent; `send(interface, frame)` writes one frame out of an interface."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._macs: dict[str, bytes] = {}
        self._logged: set[tuple[str, int]] = set()
        self.errors: dict[str, int] = {}  # send/receive errors by errno name

    def start(self, receive: Callable[[str, bytes], None]) -> None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            # struct sock_fprog {len; *filter}: the instructions' address is an array's buffer's (the
            # kernel copies them)
            buf = array.array("B", bpf_bytes())
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                            struct.pack("HL", len(BPF_PROGRAM), buf.buffer_info()[0]))
            sock.setblocking(False)
            # (Python cannot bind a packet socket to every interface, so it receives from its creation:
            # what arrived before the filter was attached is dropped unread)
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while True:
                    sock.recv(1)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable, receive)

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _readable(self, receive: Callable[[str, bytes], None]) -> None:
        assert self._sock is not None
        for _ in range(READ_BURST):
            try:
                frame, address = self._sock.recvfrom(SNAPLEN)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._count("", exc)
                return
            if address[2] == PACKET_OUTGOING:
                continue
            try:
                receive(address[0], frame)
            except Exception:  # noqa: BLE001 - one frame must never stop the loop from reading the next
                log.exception("guest frame on %s: handler failed", address[0])

    def send(self, interface: str, frame: bytes) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto(frame, (interface, 0))
        except OSError as exc:
            self._macs.pop(interface, None)  # a vanished interface may come back with another MAC
            self._count(interface, exc)
            return False
        return True

    def host_mac(self, interface: str) -> bytes | None:
        """The MAC of our side of `interface` (SIOCGIFHWADDR), cached; None when the interface is absent."""
        mac = self._macs.get(interface)
        if mac is None and self._sock is not None:
            try:
                ifreq = fcntl.ioctl(self._sock.fileno(), SIOCGIFHWADDR,
                                    struct.pack("16sH14s", interface.encode()[:15], 0, b""))
            except OSError as exc:
                self._count(interface, exc)
                return None
            mac = self._macs[interface] = ifreq[18:24]
        return mac

    def forget(self) -> None:
        """Drop the cached host-side MACs (ports changed: an interface may have been recreated)."""
        self._macs.clear()

    def _count(self, interface: str, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno or 0, "unknown")
        self.errors[name] = self.errors.get(name, 0) + 1
        if (interface, exc.errno or 0) not in self._logged:
            self._logged.add((interface, exc.errno or 0))
            log.warning("guest services: %s on %r (logged once per interface and error)", exc, interface)
