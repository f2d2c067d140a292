"""`nvfabric rr`: a bad file exits 2 naming the field; logs are one JSON object per line with the peer;
`nvfabric rr status` prints the neighbors of a running reflector as a table, or the API's JSON."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from aiohttp import web

from nvfabric.bgp.reflector import api
from nvfabric.service.logs import JsonLines
from nvfabric.bgp.reflector.daemon import Reflector
from nvfabric.cli import main
from tests.unit.test_reflector_daemon import DYNAMIC, TOKEN, held, route, rr_cfg, speaker, until


def test_bad_config_exits_2_naming_the_field(tmp_path: Path, capsys):
    bad = tmp_path / "rr.yaml"
    bad.write_text("asn: 65000\nrouter_id: 198.51.100.100\nlisten: {address: 127.0.0.1}\n"
                   "neighbors: [{prefix: 198.51.100.0/24, asn: 65000, client: maybe}]\n")
    assert main(["rr", "--config", str(bad)]) == 2
    assert "neighbors[0].client" in capsys.readouterr().err


def test_log_lines_are_json_with_the_peer():
    formatter = JsonLines()
    record = logging.LogRecord("bgp.speaker", logging.INFO, __file__, 1,
                               "peer %s: session down: %s", ("2001:db8::7", "hold timer expired"), None)
    line = json.loads(formatter.format(record))
    assert line["peer"] == "2001:db8::7" and line["msg"].endswith("hold timer expired") and line["level"] == "INFO"
    record = logging.LogRecord("bgp.reflector.daemon", logging.WARNING, __file__, 1, "over the limit", (), None)
    record.event, record.peer = "max-prefix", "198.51.100.5"
    assert json.loads(formatter.format(record))["event"] == "max-prefix"


async def test_status_prints_the_neighbors(capsys):
    rr = Reflector(rr_cfg(DYNAMIC))
    await rr.start()
    a = speaker("198.51.100.1", "127.0.1.1", rr.listen_port)
    b = speaker("198.51.100.2", "127.0.1.2", rr.listen_port)
    await a.start()
    await b.start()
    runner = web.AppRunner(api.build_app(rr, TOKEN))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        await a.announce([route(1), route(2)])
        await until(lambda: len(held(b)) == 2, what="reflection")
        status_cmd = ["rr", "status", "--api", f"http://127.0.0.1:{port}", "--token", TOKEN]
        status = await asyncio.to_thread(main, status_cmd)
        out = capsys.readouterr().out
        assert status == 0
        row = next(line for line in out.splitlines() if "127.0.1.1" in line)
        assert "established" in row and "198.51.100.1" in row and " 2 " in row
        for as_json in (["-o", "json"], ["--json"]):  # --json kept as the alias it was
            assert await asyncio.to_thread(main, [*status_cmd, *as_json]) == 0
            listed = json.loads(capsys.readouterr().out)
            assert {n["address"] for n in listed} == {"127.0.1.1", "127.0.1.2"}
        # the reflector's API wants the token like the agent's: refused (1) without the right one
        assert await asyncio.to_thread(main, [*status_cmd[:-1], "wrong"]) == 1
        assert "401 unauthorized" in capsys.readouterr().err
    finally:
        await runner.cleanup()
        for s in (a, b, rr):
            await s.stop()
    assert await asyncio.to_thread(main, status_cmd) == 3  # as `nvfabric ctl`: 3 when it cannot be reached
    assert "cannot reach the reflector API" in capsys.readouterr().err
