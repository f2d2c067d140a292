"""Route reflector memory with a peer that stops reading: its transport buffer and the process RSS.

    .venv/bin/python bench/rr_stalled_peer.py --routes 200000
    .venv/bin/python bench/rr_stalled_peer.py --routes 20000 --rounds 10   # churn: the same routes 10 times

In-process, on loopback: the reflector, a source peer and a stalled peer, both raw sockets running the
OPEN/KEEPALIVE exchange by hand. The stalled peer never reads (receive buffer 4 KiB, and the reflector's
kernel send buffer for it shrunk to 4 KiB, so bytes back up in user space at once). The source sends
`routes` EVPN type-2 routes `rounds` times (each round with a new MAC Mobility sequence: every route
changes). Figures: the reflector's transport write buffer for the stalled peer, routes owed to it, and
RSS before and after. Hold time 30 s: the measurement ends before the stalled peer would be reset.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nvfabric.bgp import wire  # noqa: E402
from nvfabric.bgp.reflector import config as rr_config  # noqa: E402
from nvfabric.bgp.reflector.daemon import Reflector  # noqa: E402
from nvfabric.bgp.routes import Family, MacIpRoute  # noqa: E402

BATCH = 2000


def route(n: int, seq: int) -> MacIpRoute:
    return MacIpRoute(rd="198.51.100.1:1", mac="02:00:" + n.to_bytes(4, "big").hex(":"),
                      ip=f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}", vsid=5001, next_hop="198.51.100.1",
                      route_targets=("65000:5001",), mobility_seq=seq)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


async def raw_peer(port: int, index: int) -> tuple[socket.socket, wire.Negotiated]:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((f"127.0.1.{index}", 0))
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    mine = wire.Capabilities(asn=65000, router_id=IPv4Address(f"198.51.100.{index}"), hold_time=30,
                             families=frozenset({Family.L2VPN_EVPN}))
    await loop.sock_sendall(sock, wire.encode_open(mine))
    buffer = b""
    while True:
        buffer += await loop.sock_recv(sock, 4096)
        messages, _ = wire.split_messages(buffer)
        if messages:
            break
    await loop.sock_sendall(sock, wire.encode_keepalive())
    return sock, wire.negotiate(mine, wire.decode_open(messages[0][1]))


async def main(routes: int, rounds: int) -> dict[str, object]:
    rr = Reflector(rr_config.parse({"asn": 65000, "router_id": "198.51.100.100", "hold_time": 30,
                                    "listen": {"address": "127.0.0.1", "port": 0},
                                    "neighbors": [{"prefix": "127.0.1.0/24", "asn": 65000}]}))
    await rr.start()
    loop = asyncio.get_running_loop()
    source, negotiated = await raw_peer(rr.listen_port, 1)
    stalled, _ = await raw_peer(rr.listen_port, 3)
    while not (rr.peers.get("127.0.1.3") and rr.peers["127.0.1.3"].established):
        await asyncio.sleep(0.05)
    conn = rr.peers["127.0.1.3"].established
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    before = rss_mib()
    for seq in range(rounds):
        for start in range(0, routes, BATCH):
            batch = [route(i, seq) for i in range(start, min(routes, start + BATCH))]
            await loop.sock_sendall(source, b"".join(wire.encode_update(negotiated, batch)))
    # Done when the source's last UPDATE is in: a marker route after everything else.
    marker = route(routes, rounds)
    await loop.sock_sendall(source, b"".join(wire.encode_update(negotiated, [marker])))
    while len(rr.rib.best[Family.L2VPN_EVPN]) < routes + 1:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0)
    return {"routes": routes, "rounds": rounds,
            "write_buffer_bytes": conn.transport.get_write_buffer_size(),
            "owed_routes_peak": getattr(rr.stats, "owed_peak", None),
            "rss_mib_before": round(before, 1), "rss_mib_after": round(rss_mib(), 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, default=200000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.routes, args.rounds))))
    sys.stdout.flush()
    os._exit(0)  # the stalled peer would hold the reflector's stop() until its grace expires
