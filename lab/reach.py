"""Who reaches whom in a running lab: every node pings every other node's addresses, IPv4 and IPv6."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass

from nvfabric.lab import netns

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Probe:
    source: str  # node name
    target: str  # node name
    address: IPAddress
    reached: bool
    detail: str = ""


def global_addresses(namespace: str) -> list[IPAddress]:
    """The node's global unicast addresses (what other nodes can aim at), in interface order."""
    out = netns.run(["ip", "-j", "-n", namespace, "addr", "show"]).output
    found = []
    for link in json.loads(out):
        for info in link.get("addr_info", []):
            if info.get("scope") == "global":
                found.append(ipaddress.ip_address(info["local"]))
    return found


async def ping_many(namespace: str, addresses: Iterable[IPAddress], timeout: int = 3) -> dict[IPAddress, bool]:
    """Ping each address once (retried once: the first may be spent resolving the neighbour), in parallel.

    One `ip netns exec` per source node, not per probe: under the VM's emulated CPU each process start
    is expensive, and a shell forking `ping`s is the cheapest way to fan out.
    """
    addresses = list(addresses)
    if not addresses:
        return {}
    one = f"ping -n -c1 -W{timeout}"
    script = " ".join(f"( {one} {a} >/dev/null 2>&1 || {one} {a} >/dev/null 2>&1; echo {a} $? ) &" for a in addresses)
    proc = await asyncio.create_subprocess_exec(
        *netns.in_netns(namespace, ["sh", "-c", script + " wait"]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    status = dict(line.split() for line in output.decode().splitlines() if line.count(" ") == 1)
    return {a: status.get(str(a)) == "0" for a in addresses}


async def probe_all(namespaces: dict[str, str], addresses: dict[str, list[IPAddress]]) -> list[Probe]:
    """Ping every address of every node from every other node; `namespaces` maps node -> namespace."""

    async def from_node(src: str) -> list[Probe]:
        targets = [(dst, a) for dst, addrs in addresses.items() if dst != src for a in addrs]
        reached = await ping_many(namespaces[src], [a for _, a in targets])
        return [Probe(src, dst, a, reached[a], "" if reached[a] else "no echo reply") for dst, a in targets]

    per_node = await asyncio.gather(*(from_node(src) for src in namespaces))
    return [p for probes in per_node for p in probes]


def failures(probes: Iterable[Probe]) -> list[Probe]:
    return [p for p in probes if not p.reached]
