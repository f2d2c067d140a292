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


async def test_a_connect_in_progress_when_the_path_comes_up_is_given_up_for_a_new_one() -> None:
    # A listener whose accept queue is full drops new SYNs, as a tunnel without its SA does: the peer's first SYN is
    # lost, and TCP would send it again only after a second. Room is made (the path comes up) and the peer is told:
    # it gives that attempt up and dials again, and the new connection arrives.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):  # the accept queue full (its length is the backlog + 1)
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        await asyncio.sleep(0.05)
        peer = Peer(PeerSettings("127.0.0.1", port, 65020, LOCAL, connect_retry_initial=60.0), Inbox())
        peer.start()
        try:
            await until(lambda: peer.connect_attempts == 1, 10, "the first attempt")
            await asyncio.sleep(0.1)  # its SYN dropped
            listener.setblocking(False)
            while True:  # room made: the queue emptied
                try:
                    conn, _ = listener.accept()
                    conn.close()
                except BlockingIOError:
                    break
            for s in fillers:
                s.close()
            peer.dial_now()
            await until(lambda: peer.connect_attempts == 2, 10, "a new attempt")
            await until(lambda: peer.state.name != "ACTIVE", 10, "the new attempt connected")
        finally:
            await peer.stop(notify=False)
    finally:
        listener.close()
        for s in fillers:
            s.close()
