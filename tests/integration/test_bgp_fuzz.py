"""BGP fuzzing over real sessions (loopback TCP), host phase: the reflector (`nvfabric rr`'s daemon object)
and a speaker with the typed decoder (the BGP side of the agent and the gateway), each in this process so
an exception escaping anywhere is seen. Seeded and bounded: NVFABRIC_FUZZ_SEED and NVFABRIC_FUZZ_MESSAGES
change the run; the seed is printed. The agent and the gateway with their kernel are fuzzed in
tests/kernel/test_bgp_fuzz.py, the long run is bench/bgp_fuzz.py."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nvfabric.bgp import config as bgp_config
from nvfabric.bgp.reflector import config as rr_config
from nvfabric.bgp.reflector.daemon import Reflector
from nvfabric.bgp.routes import MacIpRoute
from nvfabric.bgp.speaker import Speaker
from nvfabric.lab.fuzz.campaign import Report
from nvfabric.lab.fuzz.targets import DYNAMIC_PREFIX, fuzz_listener, route

SEED = int(os.environ.get("NVFABRIC_FUZZ_SEED", "20261202"))
MESSAGES = int(os.environ.get("NVFABRIC_FUZZ_MESSAGES", "600"))
SECONDS = 40.0


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What asyncio reports as unhandled (an exception out of a protocol callback or a task)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)


def assert_clean(report: Report, daemon: Speaker, loop_errors: list[dict[str, Any]]) -> None:
    print(report.summary())
    assert daemon._task is not None and not daemon._task.done(), "the owner task ended"
    assert report.messages >= min(MESSAGES, 100), report.summary()
    assert report.findings == [], report.summary()
    assert loop_errors == []


@pytest.mark.parametrize("four_octet", [True, False], ids=["4-octet-as", "2-octet-as"])
async def test_fuzzing_the_reflector_resets_only_the_fuzzed_session(loop_errors, four_octet):
    rr = Reflector(rr_config.parse({
        "asn": 65000, "router_id": "198.51.100.100", "cluster_id": "192.0.2.100", "hold_time": 9,
        "listen": {"address": "127.0.0.1", "port": 0},
        "neighbors": [{"prefix": DYNAMIC_PREFIX, "asn": 65000, "client": True}]}))
    await rr.start()
    try:
        report = await fuzz_listener("nvfabric rr", "127.0.0.1", rr.listen_port, SEED, MESSAGES, SECONDS,
                                     reflects=True, four_octet=four_octet)
        assert_clean(report, rr, loop_errors)
    finally:
        await rr.stop()


async def test_fuzzing_a_speaker_resets_only_the_fuzzed_session(loop_errors):
    speaker = Speaker(bgp_config.parse({
        "asn": 65000, "router_id": "198.51.100.11", "hold_time": 9,
        "families": ["l2vpn-evpn", "ipv4-unicast", "ipv6-unicast"],
        "listen": {"address": "127.0.0.1", "port": 0},
        "dynamic_neighbors": [{"prefix": DYNAMIC_PREFIX, "asn": 65000}]}))
    await speaker.start()
    await speaker.announce([route(11, "198.51.100.11")])  # the table the fuzzer's ROUTE-REFRESH gets

    async def learned(good: MacIpRoute) -> bool:
        return any(p.route == good for p in speaker.rib.loc.best_paths())

    try:
        report = await fuzz_listener("speaker", "127.0.0.1", speaker.listen_port, SEED + 1, MESSAGES, SECONDS,
                                     reflects=False, learned=learned)
        assert_clean(report, speaker, loop_errors)
    finally:
        await speaker.stop()
