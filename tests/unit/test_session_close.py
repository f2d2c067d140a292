"""A session closed on an error delivers its NOTIFICATION even when the peer is still reading a large table
and has already sent its next message (over loopback TCP, against a speaker)."""

from __future__ import annotations

import asyncio
import socket

from nvfabric.bgp import config as bgp_config
from nvfabric.bgp import wire
from nvfabric.bgp.routes import Family
from nvfabric.bgp.speaker import Speaker
from nvfabric.lab.fuzz.session import RawSession, capabilities
from nvfabric.lab.fuzz.targets import route
from tests.waits import until

TABLE = 5000  # routes: far more than our small receive buffer holds, so the NOTIFICATION queues behind them


async def test_the_notification_arrives_after_the_table_when_the_peer_has_sent_more():
    # Found by fuzzing an agent in the VM: the connection was closed with the peer's next message unread,
    # so the kernel reset it and dropped the unsent NOTIFICATION; the peer saw a dropped connection.
    speaker = Speaker(bgp_config.parse({
        "asn": 65000, "router_id": "198.51.100.11", "hold_time": 9, "families": ["l2vpn-evpn"],
        "listen": {"address": "127.0.0.1", "port": 0},
        "dynamic_neighbors": [{"prefix": "127.0.1.0/24", "asn": 65000}]}))
    await speaker.start()
    try:
        await speaker.announce([route(i, "198.51.100.11") for i in range(TABLE)])
        session = RawSession(capabilities("198.51.100.2"))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.1.2", 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", speaker.listen_port))
        await asyncio.get_running_loop().create_connection(lambda: session, sock=sock)
        await session.start(wire.encode_open(session.caps))
        await session.wait_for(lambda kind, _: kind == wire.MessageType.KEEPALIVE, 10)
        assert session.transport is not None
        session.transport.pause_reading()  # a peer busy elsewhere: the table waits in the buffers
        session.send(wire.encode_keepalive())
        # The speaker writes the whole table, then the peer joins its update group.
        await until(lambda: any(p.settings.address == "127.0.1.2" for g in speaker.groups.groups.values()
                                for p in g.members), what="the table written by the speaker")
        peer = speaker.peers["127.0.1.2"]
        # Attribute length overruns the UPDATE: NOTIFICATION 3/1 (RFC 4271 section 6.3).
        session.send(wire.MARKER + (23).to_bytes(2, "big") + b"\x02" + b"\x00\x00\x00\x05")
        await until(lambda: peer.established is None, what="the speaker closing the session")
        session.send(wire.encode_route_refresh(Family.L2VPN_EVPN))  # already on its way when it closed
        session.transport.resume_reading()
        notification = await session.wait_closed(30)
        assert notification is not None and notification[:2] == (3, 1)
    finally:
        await speaker.stop()
