"""Who reaches whom in a running lab: every node pings every other node's addresses, IPv4 and IPv6."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass

from lab import netns

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


async def ping(namespace: str, address: IPAddress, attempts: int = 2, timeout: float = 3.0) -> tuple[bool, str]:
    """One echo request at a time, retried once: the first may be spent resolving the neighbour."""
    output = b""
    for _ in range(attempts):
        proc = await asyncio.create_subprocess_exec(
            *netns.in_netns(namespace, ["ping", "-n", "-c", "1", "-W", str(int(timeout)), str(address)]),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await proc.communicate()
        if proc.returncode == 0:
            return True, ""
    lines = output.decode(errors="replace").strip().splitlines()
    return False, lines[-1] if lines else "no output"


async def probe_all(
    namespaces: dict[str, str], addresses: dict[str, list[IPAddress]], parallel: int = 8
) -> list[Probe]:
    """Ping every address of every node from every other node; `namespaces` maps node -> namespace."""
    limit = asyncio.Semaphore(parallel)

    async def one(src: str, dst: str, addr: IPAddress) -> Probe:
        async with limit:
            ok, detail = await ping(namespaces[src], addr)
        return Probe(src, dst, addr, ok, detail)

    jobs = [
        one(src, dst, addr)
        for src in namespaces
        for dst, addrs in addresses.items()
        if dst != src
        for addr in addrs
    ]
    return list(await asyncio.gather(*jobs))


def failures(probes: Iterable[Probe]) -> list[Probe]:
    return [p for p in probes if not p.reached]
