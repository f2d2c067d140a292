"""The three daemons' clients as one contract (service/ctl.py): `-o table|json|yaml` on every command, exit
statuses in every command's --help, one pair of environment variables per daemon, and a daemon that is not
there named as the one to start. The commands run for real: `main()` against the real APIs (the reflector
with a speaker, an unstarted agent and gateway), the installed `nvfabric` script against no daemon."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from nvfabric.bgp.reflector import api as rr_api
from nvfabric.cli import build_parser, main
from nvfabric.gateway import api as gw_api
from nvfabric.hostagent.api import start_api
from tests.unit.test_api import TOKEN, make_agent
from tests.unit.test_gateway_status import gateway
from tests.unit.test_reflector_daemon import DYNAMIC, lab, route, rr_cfg, until  # noqa: F401 - lab: a fixture

ENV = ("NVFABRIC_RR_API", "NVFABRIC_RR_TOKEN", "NVFABRIC_AGENT_API", "NVFABRIC_AGENT_TOKEN", "NVFABRIC_GATEWAY_API",
       "NVFABRIC_GATEWAY_TOKEN", "NVFABRIC_API", "NVFABRIC_TOKEN")
NVFABRIC = str(Path(sys.executable).parent / "nvfabric")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def client_commands() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every leaf of the command tree that talks to a daemon's API (service/ctl.py sets its `action`)."""
    found = []

    def walk(parser: argparse.ArgumentParser) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs and parser.get_default("action") is not None or parser.prog == "nvfabric rr status":
            found.append((parser.prog, parser))
        for sub in subs:
            for child in sub.choices.values():
                walk(child)

    walk(build_parser())
    return found


def test_every_client_command_has_one_output_option_and_its_exit_statuses_in_its_help() -> None:
    commands = client_commands()
    names = {prog for prog, _ in commands}
    assert {"nvfabric rr status", "nvfabric ctl ports", "nvfabric ctl port put", "nvfabric ctl gateway tenants",
            "nvfabric gateway tenants", "nvfabric gateway status", "nvfabric gateway tenant delete",
            "nvfabric gateway trace"} <= names, names
    for prog, parser in commands:
        text = parser.format_help()
        assert "-o {table,json,yaml}" in text, prog
        for line in ("exit status:", "  0  done", "  1  the ", "  2  usage", "  3  the "):
            assert line in text, (prog, line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("argv, daemon, command, unit, env", [
    (["gateway", "tenants"], "gateway", "nvfabric gateway", "nvfabric-gateway", "NVFABRIC_GATEWAY"),
    (["ctl", "gateway", "status"], "gateway", "nvfabric gateway", "nvfabric-gateway", "NVFABRIC_GATEWAY"),
    (["rr", "status"], "reflector", "nvfabric rr", "nvfabric-rr", "NVFABRIC_RR"),
    (["ctl", "ports"], "agent", "nvfabric agent", "nvfabric-agent", "NVFABRIC_AGENT"),
])
def test_no_daemon_there_names_the_daemon_to_start_and_exits_3(argv, daemon, command, unit, env) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run([NVFABRIC, *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, f"{env}_API": url, f"{env}_TOKEN": "t"})
    assert done.returncode == 3 and done.stdout == "", done
    err = done.stderr
    assert err.startswith(f"nvfabric {' '.join(argv)}: cannot reach the {daemon} API at {url}"), err
    assert f"`systemctl start {unit}`" in err and f"`{command}`" in err and f"{env}_API" in err, err
    for other in {"agent", "gateway", "reflector"} - {daemon}:
        assert other not in err, err
    # without a token: a usage error (2) naming the daemon's own variable
    done = subprocess.run([NVFABRIC, *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, f"{env}_API": url})
    assert done.returncode == 2 and f"set {env}_TOKEN (the {daemon}'s api.token)" in done.stderr, done


async def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = await asyncio.to_thread(main, list(argv))  # urllib blocks; this loop serves the API meanwhile
    out, err = capsys.readouterr()
    return status, out, err


async def outputs(capsys, *argv: str) -> dict[str, str]:
    """The command's output in the three forms; the JSON and the YAML say the same."""
    found = {}
    for form in ("table", "json", "yaml"):
        status, out, err = await run(capsys, *argv, "-o", form)
        assert (status, err) == (0, ""), (form, err)
        found[form] = out
    assert yaml.safe_load(found["yaml"]) == json.loads(found["json"])
    return found


async def test_the_gateway_client_reads_its_own_variables(capsys, monkeypatch) -> None:
    gw, _ = gateway()

    async def counters():  # the nftables table a started gateway reads its tenants' counters from
        return {}
    monkeypatch.setattr(gw, "counters", counters)
    server = await gw_api.start_api(gw, "127.0.0.1:0", TOKEN)
    assert server is not None
    try:
        monkeypatch.setenv("NVFABRIC_GATEWAY_API", server.url)
        monkeypatch.setenv("NVFABRIC_TOKEN", TOKEN)  # the agent's older name: not the gateway's
        status, _, err = await run(capsys, "gateway", "status")
        assert status == 2 and "NVFABRIC_GATEWAY_TOKEN" in err
        monkeypatch.setenv("NVFABRIC_GATEWAY_TOKEN", TOKEN)
        found = await outputs(capsys, "gateway", "status")
        assert "BGP sessions" in found["table"] and yaml.safe_load(found["yaml"])["role"]["configured"] == "standby"
        found = await outputs(capsys, "ctl", "gateway", "tenants")
        assert [t["name"] for t in json.loads(found["json"])["tenants"]] == ["blue"]
    finally:
        await server.stop()


async def test_the_agent_client_reads_its_own_variables_then_the_older_ones(capsys, monkeypatch, tmp_path) -> None:
    server = await start_api(make_agent(tmp_path), "127.0.0.1:0", TOKEN)
    assert server is not None
    try:
        monkeypatch.setenv("NVFABRIC_AGENT_API", server.url)
        monkeypatch.setenv("NVFABRIC_AGENT_TOKEN", TOKEN)
        found = await outputs(capsys, "ctl", "ports")
        assert "vm1" in found["table"] and yaml.safe_load(found["yaml"])["ports"][0]["name"] == "vm1"
        # NVFABRIC_API and NVFABRIC_TOKEN still serve the agent when its own are not set
        monkeypatch.delenv("NVFABRIC_AGENT_API")
        monkeypatch.delenv("NVFABRIC_AGENT_TOKEN")
        monkeypatch.setenv("NVFABRIC_API", server.url)
        monkeypatch.setenv("NVFABRIC_TOKEN", TOKEN)
        status, out, _ = await run(capsys, "ctl", "routing-domains", "-o", "yaml")
        assert status == 0 and [d["name"] for d in yaml.safe_load(out)["routing_domains"]] == ["blue", "red"]
        # ... and the agent's own win over them
        monkeypatch.setenv("NVFABRIC_AGENT_TOKEN", "wrong")
        status, _, err = await run(capsys, "ctl", "ports")
        assert status == 1 and "401 unauthorized" in err
    finally:
        await server.stop()


async def test_the_reflector_client_reads_its_own_variables(capsys, monkeypatch, lab) -> None:  # noqa: F811
    rr = await lab("rr", rr_cfg(DYNAMIC))
    a = await lab("speaker", "198.51.100.1", "127.0.1.1", rr.listen_port)
    await a.announce([route(1)])
    await until(lambda: rr.rib.counts.get("127.0.1.1") == 1, what="the route in")
    runner = web.AppRunner(rr_api.build_app(rr, TOKEN))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        monkeypatch.setenv("NVFABRIC_RR_API", f"http://127.0.0.1:{runner.addresses[0][1]}")
        monkeypatch.setenv("NVFABRIC_RR_TOKEN", TOKEN)
        found = await outputs(capsys, "rr", "status")
        listed = yaml.safe_load(found["yaml"])
        listed = listed["neighbors"] if isinstance(listed, dict) else listed  # (a page, where the API pages it)
        assert "127.0.1.1" in found["table"] and listed[0]["routes_received"] == 1
        status, out, _ = await run(capsys, "rr", "status", "--json")  # the deprecated alias of -o json
        assert status == 0 and json.loads(out) == json.loads(found["json"])
    finally:
        await runner.cleanup()
