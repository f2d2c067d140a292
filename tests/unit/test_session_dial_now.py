"""A neighbour told that its path just came up (a site's SA: gateway/sitepeers.py `sa_up`) dials at once instead of
when its connect-retry delay runs out (bgp/session.py `Peer.dial_now`), over loopback TCP."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from nvfabric.bgp import wire
from nvfabric.bgp.routes import Family
from nvfabric.bgp.session import Inbox, Peer, PeerSettings
from tests.waits import until

LOCAL = wire.Capabilities(asn=65000, router_id=ipaddress.IPv4Address("198.51.100.21"), hold_time=90,
                          families=frozenset({Family.IPV4_UNICAST}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_peer_whose_path_comes_up_dials_at_once_not_after_its_retry_delay() -> None:
    port = free_port()
    # nobody listens yet: the first attempt is refused and the next one waits 30..60 s (the backoff, jittered)
    peer = Peer(PeerSettings("127.0.0.1", port, 65020, LOCAL, connect_retry_initial=60.0, connect_retry_max=60.0),
                Inbox())
    accepted: list[object] = []
    server: asyncio.Server | None = None
    peer.start()
    try:
        await until(lambda: peer.connect_attempts == 1 and peer.state.name == "ACTIVE", 10, "the refused attempt")
        await asyncio.sleep(0)  # (the loop now sleeps its backoff)
        server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", port)
        peer.dial_now()
        await until(lambda: accepted, 10, "a connection well before the retry delay")
        assert peer.connect_attempts == 2
    finally:
        await peer.stop(notify=False)
        for w in accepted:
            w.close()  # type: ignore[attr-defined]
        if server is not None:
            server.close()
