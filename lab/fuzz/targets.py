"""Fuzzing a listening BGP target (the reflector, a speaker with dynamic neighbours) from loopback, with
its second, well-behaved session and the end check that a well-formed route still goes through. The
host-phase test and bench/bgp_fuzz.py share it; the agent and gateway run (they dial, we listen) is in
tests/kernel/test_bgp_fuzz.py.

Addresses (the target accepts 127.0.1.0/24 as dynamic neighbours): 127.0.1.1 the well-behaved session,
127.0.1.2 the fuzzed one, 127.0.1.3 the one announcing the well-formed route at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nvfabric.bgp import wire
from nvfabric.bgp.routes import MacIpRoute
from nvfabric.lab.fuzz.campaign import Campaign, Dialer, Finding, Report, session_health
from nvfabric.lab.fuzz.session import RawSession, SessionClosed, capabilities

WATCHER, FUZZER, PROBE = "127.0.1.1", "127.0.1.2", "127.0.1.3"
DYNAMIC_PREFIX = "127.0.1.0/24"


def route(n: int, source: str) -> MacIpRoute:
    """A well-formed type-2 route (next hop and RD of `source`'s identifier)."""
    return MacIpRoute(rd=f"{source}:1", mac=f"02:00:00:00:{n // 256:02x}:{n % 256:02x}",
                      ip=f"10.1.{n // 256}.{n % 256}", vsid=5001, next_hop=source, route_targets=("65000:5001",))


async def fuzz_listener(name: str, host: str, port: int, seed: int, messages: int, seconds: float, *,
                        reflects: bool, learned: Callable[[MacIpRoute], Awaitable[bool]] | None = None,
                        four_octet: bool = True, log: Callable[[str], None] = lambda line: None) -> Report:
    """Fuzz the target at host:port. A reflector (`reflects`) must pass the final route to the well-behaved
    session; otherwise `learned(route)` says whether the target holds it. Without `four_octet` the fuzzed
    session is a 2-octet AS speaker (the well-behaved one never is)."""
    watcher = await RawSession.connect(host, port, WATCHER, capabilities("198.51.100.1"))
    assert watcher.negotiated is not None
    # A route of its own, so a reflector has a table to answer the fuzzer's ROUTE-REFRESH with.
    watcher.send(wire.encode_update(watcher.negotiated, [route(1, "198.51.100.1")])[0])
    campaign = Campaign(name, Dialer(host, port, FUZZER), capabilities("198.51.100.2", four_octet=four_octet), seed,
                        health=session_health(watcher, reflected=reflects), log=log)
    try:
        report = await campaign.run(messages, seconds)
        problem = await _still_propagates(host, port, watcher, reflects, learned)
        if problem:
            report.findings.append(Finding("no-propagation", "-", "", problem, report.messages))
    finally:
        await watcher.close()
    return report


async def _still_propagates(host: str, port: int, watcher: RawSession, reflects: bool,
                            learned: Callable[[MacIpRoute], Awaitable[bool]] | None) -> str | None:
    try:
        probe = await RawSession.connect(host, port, PROBE, capabilities("198.51.100.3"))
    except (OSError, TimeoutError, SessionClosed) as err:
        return f"a well-behaved session could not be set up after the run: {err!r}"
    assert probe.negotiated is not None and watcher.negotiated is not None
    good = route(2, "198.51.100.3")
    start = len(watcher.received)
    probe.send(wire.encode_update(probe.negotiated, [good])[0])
    try:
        if reflects:
            negotiated = watcher.negotiated

            def carries(kind: int, body: bytes) -> bool:
                return kind == wire.MessageType.UPDATE and any(
                    p.route == good for p in wire.decode_update(negotiated, body).announced)

            try:
                await watcher.wait_for(carries, 15, start)
            except (TimeoutError, SessionClosed) as err:
                return f"a well-formed route was not reflected after the run: {err!r}"
        elif learned is not None:
            async with asyncio.timeout(15):
                while not await learned(good):
                    await asyncio.sleep(0.05)
    except TimeoutError:
        return "a well-formed route was not learned after the run"
    finally:
        await probe.close()
    return None
