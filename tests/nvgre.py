"""Crafted NVGRE for the tests that attack a host or a gateway as an outsider would: a GRE header with any key,
flags and protocol, an inner Ethernet frame with an IPv4 (ICMP echo, checksums right, so a receiver that
delivers it would answer) or IPv6 header, sent from a raw socket inside a namespace."""

from __future__ import annotations

import socket
import struct
from concurrent.futures import ThreadPoolExecutor

from nvfabric.lab import spoof
from nvfabric.vnet.kernel.netns import enter_namespace

ROUTER_MAC = "02:00:5e:10:00:01"  # the fabric's router MAC: every inner frame is addressed to it
ETH_IPV4, ETH_IPV6, ETH_ARP = 0x0800, 0x86DD, 0x0806


def gre(key: int, flags: int = 0x2000, proto: int = 0x6558) -> bytes:
    return struct.pack("!HHI", flags, proto, key)


def inner(src: str, dst: str | None = None, marker: bytes = b"", ethertype: int | None = None) -> bytes:
    """An inner Ethernet frame to the router MAC from `src` to `dst` (IPv4: an ICMP echo with `marker`; IPv6:
    the marker as a payload without next header), built with lab/spoof.py's pieces."""
    six = ":" in src
    dst = dst or ("fd00::99" if six else "10.0.0.99")
    packet = spoof.ipv6(src, dst, 59, marker or bytes(8)) if six else \
        spoof.ipv4(src, dst, 1, spoof.icmp4_echo(0x4E56, 1, marker))
    return spoof.ethernet(ROUTER_MAC, "02:00:00:00:0b:ad", ethertype or (ETH_IPV6 if six else ETH_IPV4), packet)


def send_gre(ns: str, src: str, dst: str, payload: bytes, count: int = 1, *, ip_options: bytes = b"",
             hop_by_hop: bool = False) -> None:
    """GRE (`payload` from the GRE header on) from `src` to `dst`, sent inside namespace `ns`."""

    def send() -> None:
        family = socket.AF_INET6 if ":" in src else socket.AF_INET
        with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_GRE) as s:
            if ip_options:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, ip_options)
            if hop_by_hop:  # a PadN option: an IPv6 extension header before GRE
                s.setsockopt(socket.IPPROTO_IPV6, 54, bytes([0, 0, 1, 4, 0, 0, 0, 0]))  # IPV6_HOPOPTS
            s.bind((src, 0))
            for _ in range(count):
                s.sendto(payload, (dst, 0))

    with ThreadPoolExecutor(1, initializer=enter_namespace, initargs=(ns,)) as pool:
        pool.submit(send).result(10)
