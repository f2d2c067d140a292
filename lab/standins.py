"""The real host agent with its kernel, nftables and BGP client replaced by stand-ins, for the tests and
benchmarks of the agent's own Python (what a port's change costs and touches): nothing is written to a
kernel, and what the agent hands to nft and BGP is kept for the caller to look at."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nvfabric.hostagent.agent import Agent
from nvfabric.hostagent.config import AgentConfig
from nvfabric.vnet.nftables import NftError
from nvfabric.vnet.reconcile import Outcome


class Reconciler:
    """Every partition applied at once; nothing read back."""

    full_pending = False
    last = None

    async def reconcile(self, parts: Any, hold: bool = False, defer: bool = False) -> Outcome:
        return Outcome(time.time(), {}, (), 0, 0.0, False)

    async def revert(self, applied: Any) -> list[Any]:
        return []

    def invalidate(self) -> None:
        pass


class Nft:
    """Keeps each script it is given; reads find no table, so a first write replaces the tables."""

    def __init__(self) -> None:
        self.scripts: list[str] = []

    async def script(self, what: str, text: str) -> None:
        self.scripts.append(text)

    async def list_json(self, *args: str) -> dict[str, Any]:
        raise NftError("list", "no table")


class Filters:
    decap = None
    decap_fed = None
    reading = False

    async def marks(self, *args: Any, **kwargs: Any) -> bool:
        return True

    async def decapsulation(self, *args: Any, **kwargs: Any) -> bool:
        return True


class Client:
    """What a BGP client announces now, and each call (its kind and how many routes or keys)."""

    def __init__(self) -> None:
        self.routes_out: dict[Any, Any] = {}
        self.calls: list[tuple[str, int]] = []

    async def announce(self, routes: list[Any]) -> None:
        self.calls.append(("announce", len(routes)))
        self.routes_out.update((r.key, r) for r in routes)

    async def withdraw(self, keys: list[Any]) -> None:
        self.calls.append(("withdraw", len(keys)))
        for k in keys:
            del self.routes_out[k]

    def routes(self) -> dict[Any, Any]:
        return {}


def agent(state_dir: Path, routing_domains: list[dict[str, Any]]) -> tuple[Agent, Client, Nft]:
    """An Agent on `state_dir` with `routing_domains` (its configuration's form), started as far as the local
    side goes: its reconciler, port security's nft, filters and BGP client are the stand-ins above."""
    config = AgentConfig.from_dict({
        "asn": 65001, "router_id": "198.51.100.11", "provider_addresses": ["198.51.100.11"],
        "route_reflectors": [{"address": "198.51.100.100"}], "state_dir": str(state_dir),
        "routing_domains": routing_domains,
    })
    a = Agent(config)
    a._started = True
    a._everything = False
    a._reconciler = Reconciler()  # type: ignore[assignment]
    nft = Nft()
    a._port_security.nft = nft  # type: ignore[assignment]
    a._filters = Filters()  # type: ignore[assignment]
    client = Client()
    a._client = client  # type: ignore[assignment]
    return a, client, nft
