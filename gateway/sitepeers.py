"""The gateway's eBGP sessions with its tenants' sites, one per site with `bgp` (gateway/sitebgp.py), each
with the project's own speaker (bgp/client.py, as gateway/upstream.py), IPv4 and IPv6 unicast.

Each session's socket is bound to the tenant's VRF device in the gateway's namespace, so it is routed by the
tenant's table: through the site's tunnel to the site's router. Sessions are started and stopped by
difference (`put`): a change of one tenant's sites touches only that tenant's sessions, and a site whose
session settings did not change keeps its session (only what is announced to it follows the tenant). What a
site announces is kept as delivered by its client (`learned`); every change of it calls `on_learned(tenant)`,
and the gateway judges it (sitebgp.judge) and routes what is accepted. No graceful restart: routes of a site
whose session is gone are withdrawn at once, and its traffic falls back on the tenant's other routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nvfabric.bgp.announced import Announced
from nvfabric.bgp.client import Client
from nvfabric.bgp.config import GracefulRestartConfig, SpeakerConfig
from nvfabric.bgp.routes import Family, UnicastRoute
from nvfabric.gateway import sitebgp
from nvfabric.gateway.sites import Site
from nvfabric.gateway.tenants import Tenant
from nvfabric.vnet.desired import vrf_name
from nvfabric.vnet.model import Network

log = logging.getLogger(__name__)

FAMILIES = (Family.IPV4_UNICAST, Family.IPV6_UNICAST)


def speaker_config(tenant: str, site: Site, asn: int, router_id: str, hold_time: int) -> SpeakerConfig:
    """Pure: the speaker of one site's session (what decides whether a change restarts it)."""
    assert site.bgp is not None
    b = site.bgp
    return SpeakerConfig(asn=b.local_as if b.local_as is not None else asn, router_id=router_id, families=FAMILIES,
                         neighbors=(sitebgp.neighbor(site, vrf_name(tenant)),),
                         hold_time=b.hold_time if b.hold_time is not None else hold_time,
                         graceful_restart=GracefulRestartConfig(enabled=False))


@dataclass
class _Session:
    config: SpeakerConfig
    client: Client
    announced: Announced
    task: asyncio.Task[None]


class SitePeers:
    def __init__(self, asn: int, router_id: str, hold_time: int, on_learned: Callable[[str], None]) -> None:
        self.asn = asn
        self.router_id = router_id
        self.hold_time = hold_time
        self.on_learned = on_learned
        self._sessions: dict[tuple[str, str], _Session] = {}  # (tenant, site) -> its session

    async def put(self, name: str, tenant: Tenant | None) -> None:
        """One tenant's sessions to what `tenant` wants (None: none)."""
        want = {s.name: s for s in (tenant.sites if tenant is not None else ()) if s.bgp is not None}
        for (t, site_name), session in list(self._sessions.items()):
            if t != name:
                continue
            site = want.get(site_name)
            if site is None or speaker_config(name, site, self.asn, self.router_id, self.hold_time) != session.config:
                await self._end((t, site_name))
        for site_name, site in want.items():
            assert tenant is not None
            key = (name, site_name)
            if key not in self._sessions:
                config = speaker_config(name, site, self.asn, self.router_id, self.hold_time)
                client = Client(config)
                await client.start()
                task = asyncio.get_running_loop().create_task(self._consume(name, client), name=f"site-bgp {name}")
                self._sessions[key] = _Session(config, client, Announced(), task)
            session = self._sessions[key]
            await session.announced.update(session.client, {"tenant": sitebgp.to_site(tenant, site)})

    async def _end(self, key: tuple[str, str]) -> None:
        session = self._sessions.pop(key)
        session.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await session.task
        await session.client.stop()
        self.on_learned(key[0])

    async def _consume(self, name: str, client: Client) -> None:
        async for _ in client.events():
            self.on_learned(name)

    async def stop(self) -> None:
        for key in list(self._sessions):
            await self._end(key)

    def learned(self, name: str) -> dict[str, tuple[Network, ...]]:
        """One tenant's sites' learned prefixes as delivered (site name -> prefixes)."""
        return {site: tuple(r.prefix for r in s.client.routes().values() if isinstance(r, UnicastRoute))
                for (t, site), s in self._sessions.items() if t == name}

    def status(self, name: str, site: str) -> dict[str, Any] | None:
        """The site's session: its BGP state and the peer (None: no session)."""
        session = self._sessions.get((name, site))
        if session is None:
            return None
        (neighbor,) = session.config.neighbors
        peer = session.client.speaker.peers.get(neighbor.address)
        state = peer.state.name.lower() if peer is not None else "idle"
        return {"peer": neighbor.address, "peer_as": neighbor.asn, "local_as": session.config.asn, "state": state,
                "announced": len(session.announced.routes)}
