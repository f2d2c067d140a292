"""The gateway's eBGP sessions with its tenants' sites, one per site with `bgp` (gateway/sitebgp.py), each
with the project's own speaker (bgp/client.py, as gateway/upstream.py), IPv4 and IPv6 unicast.

Each session's socket is bound to the tenant's VRF device in the gateway's namespace, so it is routed by the
tenant's table: through the site's tunnel to the site's router. Sessions are started and stopped by
difference (`put`): a change of one tenant's sites touches only that tenant's sessions, and a site whose
session settings did not change keeps its session (only what is announced to it follows the tenant). What a
site announces is kept as delivered by its client (`learned`); every change of it calls `on_learned(tenant)`,
and the gateway judges it (sitebgp.judge) and routes what is accepted. Routes of a site whose session is gone are
withdrawn at once, and its traffic falls back on the tenant's other routes.

Across a failover. Only the serving gateway holds the sites' SAs (gateway/strongswan.py), so only it runs the
sessions (`serve`): a standby's session could reach nobody. Both gateways have the same tunnel address, so the
site's router has one neighbour, whichever gateway serves. When the new serving gateway's SA comes up (`sa_up`:
charon's event) its session dials at once, not at its next connect retry. The gateway offers graceful restart
(RFC 4724) with the forwarding bit: the site's router, as helper (FRR's default), keeps the tenant's prefixes,
stale, when the old gateway's session goes silent, and takes the new gateway's connection as the same peer
restarting (without it, FRR refuses a new connection from a neighbour it holds Established, until its hold timer
runs out). What the old gateway had learned from the site cannot move with the role: the new one learns it again
on its session (the site's whole table at once), and until then the site's BGP-learned networks are unrouted.
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
from nvfabric.gateway import sitebgp, sites as sitemodel
from nvfabric.gateway.sites import Site
from nvfabric.gateway.tenants import Tenant
from nvfabric.vnet.desired import vrf_name
from nvfabric.vnet.model import Network

log = logging.getLogger(__name__)

FAMILIES = (Family.IPV4_UNICAST, Family.IPV6_UNICAST)
# what the site's router is asked to wait for the gateway after its session goes silent (the tenant's prefixes kept,
# stale): a failover, or a restart of the gateway's daemon, takes seconds
RESTART_TIME = 120


def speaker_config(tenant: str, site: Site, asn: int, router_id: str, hold_time: int) -> SpeakerConfig:
    """Pure: the speaker of one site's session (what decides whether a change restarts it)."""
    assert site.bgp is not None
    b = site.bgp
    return SpeakerConfig(asn=b.local_as if b.local_as is not None else asn, router_id=router_id, families=FAMILIES,
                         neighbors=(sitebgp.neighbor(site, vrf_name(tenant)),),
                         hold_time=b.hold_time if b.hold_time is not None else hold_time,
                         graceful_restart=GracefulRestartConfig(enabled=True, restart_time=RESTART_TIME,
                                                                forwarding_preserved=True))


@dataclass
class _Session:
    config: SpeakerConfig
    client: Client
    announced: Announced
    task: asyncio.Task[None]
    connection: str  # the site's connection in charon (gateway/sites.py connection_name)


class SitePeers:
    def __init__(self, asn: int, router_id: str, hold_time: int, on_learned: Callable[[str], None],
                 serving: bool = True) -> None:
        self.asn = asn
        self.router_id = router_id
        self.hold_time = hold_time
        self.on_learned = on_learned
        self.serving = serving  # sessions run only while this gateway serves (`serve`)
        self._tenants: dict[str, Tenant] = {}  # the tenants with BGP sites, whatever the role
        self._sessions: dict[tuple[str, str], _Session] = {}  # (tenant, site) -> its session

    async def serve(self, on: bool) -> None:
        """This gateway became serving (on: every BGP site's session started, each dials at once) or stands by
        (every session ended without a NOTIFICATION: the site's router keeps the tenant's prefixes, stale, until
        the serving gateway's session replaces this one)."""
        if on == self.serving:
            return
        self.serving = on
        for name in sorted(self._tenants.keys() | {t for t, _ in self._sessions}):
            await self.put(name, self._tenants.get(name), notify=False)

    def sa_up(self, connection: str) -> None:
        """charon installed a child SA of `connection` (`<tenant>.<site>`): its session, if not Established,
        dials now (the tunnel carries it from now on)."""
        for session in self._sessions.values():
            if session.connection != connection:
                continue
            peer = session.client.speaker.peers.get(session.config.neighbors[0].address)
            if peer is not None and peer.established is None:
                log.info("site %s: its SA is up, dialling its router now", connection)
                peer.dial_now()

    async def put(self, name: str, tenant: Tenant | None, notify: bool = True) -> None:
        """One tenant's sessions to what `tenant` wants (None: none; none either while standing by). `notify`:
        a session that ends sends a NOTIFICATION (the site's router drops what it learned from it at once)."""
        want = {s.name: s for s in (tenant.sites if tenant is not None else ()) if s.bgp is not None}
        if want:
            assert tenant is not None
            self._tenants[name] = tenant
        else:
            self._tenants.pop(name, None)
        if not self.serving:
            want = {}
        for (t, site_name), session in list(self._sessions.items()):
            if t != name:
                continue
            site = want.get(site_name)
            if site is None or speaker_config(name, site, self.asn, self.router_id, self.hold_time) != session.config:
                await self._end((t, site_name), notify)
        for site_name, site in want.items():
            assert tenant is not None
            key = (name, site_name)
            if key not in self._sessions:
                config = speaker_config(name, site, self.asn, self.router_id, self.hold_time)
                client = Client(config)
                await client.start()
                task = asyncio.get_running_loop().create_task(self._consume(name, client), name=f"site-bgp {name}")
                self._sessions[key] = _Session(config, client, Announced(), task,
                                               sitemodel.connection_name(name, site))
            session = self._sessions[key]
            await session.announced.update(session.client, {"tenant": sitebgp.to_site(tenant, site)})

    async def _end(self, key: tuple[str, str], notify: bool = True) -> None:
        session = self._sessions.pop(key)
        session.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await session.task
        await session.client.stop(notify)
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
