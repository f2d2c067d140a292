"""Benchmark of the BGP codec: encode and decode rates of EVPN type-2 routes.

Run:  .venv/bin/python bench/bgp_codec.py [--routes 100000] [--repeat 3]

Routes: --routes type-2 MAC/IP routes with an IPv4 CA, from --hosts hosts (one RD and next hop per
host, 1000 by default), one VSID and route target, Router's MAC and MAC mobility 0 omitted: the shape
a host agent announces and a route reflector carries. Each figure is the best of --repeat runs.

Measured:
  encode            wire.encode_update: typed routes -> UPDATE messages (built with ExaBGP's classes)
  decode            wire.decode_update: UPDATE bodies -> typed Paths (our byte parser)
  decode raw        wire.decode_raw_update: UPDATE bodies -> (key, raw NLRI) for the reflector
  re-encode raw     wire.reflect_attributes + wire.encode_raw_update: reflector output, no objects
  exabgp decode     ExaBGP's own Update.unpack_message (objects, no JSON), the reference
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nvfabric.bgp import wire  # noqa: E402
from nvfabric.bgp.routes import Family, MacIpRoute  # noqa: E402


def negotiated() -> wire.Negotiated:
    local = wire.Capabilities(65000, IPv4Address("192.0.2.1"), 90, frozenset(Family))
    remote = wire.Capabilities(65000, IPv4Address("192.0.2.2"), 90, frozenset(Family))
    return wire.negotiate(local, remote)


def make_routes(count: int, hosts: int) -> list[MacIpRoute]:
    routes = []
    for i in range(count):
        host = i % hosts
        host_ip = f"198.51.{100 + host // 250}.{host % 250 + 1}"
        routes.append(MacIpRoute(
            rd=f"{host_ip}:5001", mac=f"02:00:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
            ip=IPv4Address(0x0A000000 + i + 1), vsid=5001, next_hop=host_ip, route_targets=("65000:5001",),
        ))
    return routes


def best_time(function, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    session = negotiated()
    routes = make_routes(args.routes, args.hosts)
    messages = wire.encode_update(session, routes)
    bodies = [m[wire.HEADER_LENGTH:] for m in messages]
    decoded = [p for b in bodies for p in wire.decode_update(session, b).announced]
    assert len(decoded) == len(routes) and set(p.route for p in decoded) == set(routes), "decode mismatch"
    raws = [wire.decode_raw_update(session, b) for b in bodies]
    attributes = wire.reflect_attributes(raws[0].attributes, IPv4Address("192.0.2.2"), IPv4Address("192.0.2.100"))

    def reencode() -> None:
        for raw in raws:
            wire.encode_raw_update(raw.family, attributes, raw.next_hop, [n.raw for n in raw.announced])

    cases = [
        ("encode", lambda: wire.encode_update(session, routes)),
        ("decode", lambda: [wire.decode_update(session, b) for b in bodies]),
        ("decode raw", lambda: [wire.decode_raw_update(session, b) for b in bodies]),
        ("re-encode raw", reencode),
        ("exabgp decode", lambda: [wire.exabgp_parse_update(session, b) for b in bodies]),
    ]
    total = sum(len(m) for m in messages)
    print(f"{len(routes)} type-2 routes, {args.hosts} hosts, {len(messages)} UPDATEs, {total} bytes; "
          f"Python {platform.python_version()} on {platform.machine()}, best of {args.repeat}")
    for name, function in cases:
        seconds = best_time(function, args.repeat)
        print(f"  {name:<14} {len(routes) / seconds:>10,.0f} routes/s   ({seconds:.3f} s)")


if __name__ == "__main__":
    main()
