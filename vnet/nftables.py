"""The project's one nftables talker: JSON through `nft -j -f -`, one atomic transaction per change, read back.

The host agent owns one table, `inet nvfabric`, and nothing else: GRE is accepted only from provider
addresses that BGP taught us (sets `pa4`, `pa6`); GRE from anywhere else is dropped before the ip_gre
handler sees it. Each change replaces the whole table in ONE transaction (add, delete, add again, then
the content), so the ruleset is never seen half-built and never touches anyone else's tables.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass

from vnet.model import Address

TABLE = "nvfabric"
FAMILY = "inet"


class NftError(RuntimeError):
    """nft refused a transaction: its own message, and the command."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(f"nft {what}: {message.strip()}")
        self.message = message


@dataclass(frozen=True)
class GreFilter:
    """GRE allowed only from these provider addresses."""

    allowed: frozenset[Address]

    def ruleset(self) -> dict:
        table = {"family": FAMILY, "name": TABLE}
        owned = {"family": FAMILY, "table": TABLE}
        cmds: list[dict] = [
            {"add": {"table": table}},
            {"delete": {"table": table}},  # with the add before it: a replace, inside one transaction
            {"add": {"table": table}},
            {"add": {"set": {**owned, "name": "pa4", "type": "ipv4_addr"}}},
            {"add": {"set": {**owned, "name": "pa6", "type": "ipv6_addr"}}},
            # before the usual filter priority (0), so a user's accept-all input chain does not matter
            {"add": {"chain": {**owned, "name": "input", "type": "filter", "hook": "input", "prio": -10,
                               "policy": "accept"}}},
        ]
        for name, version in (("pa4", 4), ("pa6", 6)):
            elems = sorted(str(a) for a in self.allowed if a.version == version)
            if elems:
                cmds.append({"add": {"element": {**owned, "name": name, "elem": elems}}})
        for proto, name in (("ip", "pa4"), ("ip6", "pa6")):
            cmds.append({"add": {"rule": {**owned, "chain": "input", "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "gre"}},
                {"match": {"op": "!=", "left": {"payload": {"protocol": proto, "field": "saddr"}},
                           "right": f"@{name}"}},
                {"counter": None},
                {"drop": None},
            ]}}})
        return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *cmds]}


class Nft:
    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def _argv(self, *args: str) -> list[str]:
        base = ["nft", *args]
        return ["ip", "netns", "exec", self.netns, *base] if self.netns else base

    async def _run(self, what: str, stdin: bytes | None, *args: str) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            *self._argv(*args), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(stdin)
        if proc.returncode != 0:
            raise NftError(what, err.decode(errors="replace") or f"exit status {proc.returncode}")
        return out

    async def apply(self, gre: GreFilter) -> None:
        doc = gre.ruleset()
        await self._run("apply", json.dumps(doc).encode(), "-j", "-f", "-")

    async def allowed(self) -> frozenset[Address] | None:
        """Read back the provider addresses in our sets; None when the table does not exist."""
        try:
            out = await self._run("list", None, "-j", "list", "table", FAMILY, TABLE)
        except NftError:
            return None
        return parse_allowed(json.loads(out))

    async def delete(self) -> None:
        try:
            await self._run("delete", None, "delete", "table", FAMILY, TABLE)
        except NftError:
            pass  # already gone


def parse_allowed(doc: dict) -> frozenset[Address]:
    found: set[Address] = set()
    for item in doc.get("nftables", []):
        s = item.get("set")
        if s and s.get("table") == TABLE and s.get("name") in ("pa4", "pa6"):
            for elem in s.get("elem", []):
                if isinstance(elem, str):
                    found.add(ipaddress.ip_address(elem))
    return frozenset(found)


def allowed_from(pas: Iterable[Address]) -> GreFilter:
    return GreFilter(frozenset(pas))
