"""The project's one nftables talker: JSON through `nft -j -f -`, one atomic transaction per change, read back.

The host agent owns one table, `inet nvfabric`, and nothing else: GRE is accepted only from provider
addresses that BGP taught us (sets `pa4`, `pa6`); GRE from anywhere else is dropped before the ip_gre
handler sees it.

The first write (at start, or after nft refused one) replaces the whole table in ONE transaction (add,
delete, add again, then the content), so the ruleset is never seen half-built, whatever was there
before. After that a change of the provider-address set only adds and deletes set elements, in one
transaction: its size follows the change, not the fabric (a host of a fabric of thousands of hosts does
not rewrite thousands of elements when one host comes or goes), and the chain, its rules and their
counters are left alone. Never anyone else's tables.
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

    def changes(self, old: GreFilter) -> dict | None:
        """The transaction from `old` (what the kernel has) to this one: set elements only, deletes first;
        None when nothing differs. nft refuses to delete an element that is not there (someone else changed
        our table): the caller then replaces the table."""
        owned = {"family": FAMILY, "table": TABLE}
        cmds: list[dict] = []
        for name, version in (("pa4", 4), ("pa6", 6)):
            gone = sorted(str(a) for a in old.allowed - self.allowed if a.version == version)
            if gone:
                cmds.append({"delete": {"element": {**owned, "name": name, "elem": gone}}})
        for name, version in (("pa4", 4), ("pa6", 6)):
            new = sorted(str(a) for a in self.allowed - old.allowed if a.version == version)
            if new:
                cmds.append({"add": {"element": {**owned, "name": name, "elem": new}}})
        return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *cmds]} if cmds else None


class Nft:
    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        # what our last transaction left in the kernel; None: not known (start, or nft refused one), so the
        # next apply replaces the table instead of changing it
        self._applied: GreFilter | None = None

    def _argv(self, *args: str) -> list[str]:
        base = ["nft", *args]
        return ["ip", "netns", "exec", self.netns, *base] if self.netns else base

    async def _run(self, what: str, stdin: bytes | None, *args: str) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            *self._argv(*args), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await proc.communicate(stdin)
        except BaseException:
            # cancelled (the agent stopping): finish with the process while the loop still runs; a subprocess
            # transport left to the garbage collector after its loop closed raises "Event loop is closed"
            await _reap(proc)
            raise
        if proc.returncode != 0:
            raise NftError(what, err.decode(errors="replace") or f"exit status {proc.returncode}")
        return out

    async def transaction(self, what: str, doc: dict) -> None:
        """One `nft -j -f -` transaction (all or nothing); NftError with nft's message when refused."""
        await self._run(what, json.dumps(doc).encode(), "-j", "-f", "-")

    async def list_json(self, *args: str) -> dict:
        """`nft -j list ARGS...`, parsed."""
        return json.loads(await self._run("list", None, "-j", "list", *args))

    async def apply(self, gre: GreFilter) -> None:
        """Make the kernel's table `gre`: the whole table the first time, then only the set elements that
        changed (GreFilter.changes), each in one transaction."""
        doc = gre.ruleset() if self._applied is None else gre.changes(self._applied)
        if doc is None:
            return
        try:
            await self.transaction("apply", doc)
        except NftError:
            self._applied = None  # the table may not be what we think: replace it next time
            raise
        self._applied = gre

    async def allowed(self) -> frozenset[Address] | None:
        """Read back the provider addresses in our sets; None when the table does not exist."""
        try:
            return parse_allowed(await self.list_json("table", FAMILY, TABLE))
        except NftError:
            return None

    async def delete(self) -> None:
        self._applied = None
        try:
            await self._run("delete", None, "delete", "table", FAMILY, TABLE)
        except NftError:
            pass  # already gone


async def _reap(proc: asyncio.subprocess.Process) -> None:
    if proc.stdin is not None:
        proc.stdin.close()  # nft may still be reading its transaction: let it see the end (and refuse it)
    if proc.returncode is None:
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()


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
