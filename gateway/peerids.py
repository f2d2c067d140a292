"""The two gateways compare their tenant ids over the sync link (docs/gateway.md "Connection state replication").

A replicated conntrack entry keeps its zone and mark, which are the sending gateway's tenant id: on the
other gateway it is that tenant's entry only if the tenant has the same id there. Ids are allocated in the
same order from the same configuration, but can drift apart (API tenants created in another order on each
gateway, a tenant deleted and created again on one only). Each gateway therefore sends its id map to the
other every few seconds, in one UDP datagram from the sync link's local address to the peer's, on the sync
port + 1; a tenant both serve with different ids is reported (status, metrics, the log): its connections
would not survive a failover, and a replica could meet another tenant's flow in that zone.

Pure: `encode`, `decode`, `differ`. `IdExchange`: the socket and the timer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from nvfabric.vnet.model import Address

log = logging.getLogger(__name__)

VERSION = 1
INTERVAL = 5.0  # seconds between two maps sent
MAX_DATAGRAM = 65000  # about 2,000 tenants per datagram; a larger map is sent truncated (and said so)


def encode(ids: Mapping[str, int]) -> bytes:
    """The map as sent: JSON; truncated (sorted by name, `partial` set) to fit one datagram."""
    names = sorted(ids)
    while True:
        data = json.dumps({"v": VERSION, "ids": {n: ids[n] for n in names},
                           "partial": len(names) < len(ids)}, separators=(",", ":")).encode()
        if len(data) <= MAX_DATAGRAM:
            return data
        names = names[: len(names) * 9 // 10]


def decode(data: bytes) -> dict[str, int] | None:
    """The other gateway's map, None when the datagram is not one (another version, garbage)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("v") != VERSION or not isinstance(doc.get("ids"), dict):
        return None
    ids = doc["ids"]
    if not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in ids.items()):
        return None
    return dict(ids)


def differ(mine: Mapping[str, int], theirs: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """Pure: the tenants both gateways serve with different ids -> (ours, theirs)."""
    return {n: (mine[n], theirs[n]) for n in sorted(mine.keys() & theirs.keys()) if mine[n] != theirs[n]}


class IdExchange(asyncio.DatagramProtocol):
    """Sends `ids()` to the peer every `interval` seconds and keeps what the peer sent last."""

    def __init__(self, local: Address, peer: Address, port: int, ids: Callable[[], Mapping[str, int]],
                 interval: float = INTERVAL) -> None:
        self.local, self.peer, self.port = local, peer, port
        self.ids = ids
        self.interval = interval
        self.theirs: dict[str, int] | None = None
        self.heard_at: float | None = None  # time.monotonic() of the peer's last map
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None
        self._reported: dict[str, tuple[int, int]] = {}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._send_forever(), name="tenant-ids")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def send(self) -> None:
        if self._transport is not None:
            self._transport.sendto(encode(self.ids()), (str(self.peer), self.port))

    async def _send_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self._transport is None:  # bound here, and again until it works: the address may come later
                    await loop.create_datagram_endpoint(lambda: self, local_addr=(str(self.local), self.port))
                self.send()
            except OSError as exc:  # the link or the address is not there: said in the status (not heard)
                log.debug("tenant ids: %s", exc)
            await asyncio.sleep(self.interval)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if addr[0] != str(self.peer):
            return
        theirs = decode(data)
        if theirs is None:
            return
        self.theirs, self.heard_at = theirs, time.monotonic()
        found = self.differ()
        if found and found != self._reported:
            log.error("tenant ids differ from the other gateway's (ours, theirs): %s; their connections do not "
                      "survive a failover (docs/gateway.md, connection state replication)",
                      ", ".join(f"{n} {a}/{b}" for n, (a, b) in found.items()))
        self._reported = found

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable while the peer is down
        log.debug("tenant ids: %s", exc)

    def differ(self) -> dict[str, tuple[int, int]]:
        return differ(self.ids(), self.theirs) if self.theirs is not None else {}
