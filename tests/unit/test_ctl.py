"""`nvfabric ctl` against the real API and the real (unstarted) Agent: what an operator reads and the exit
status, for listings, refusals (the API's message, not a traceback), a missing token and an absent API."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from nvfabric.hostagent.api import start_api
from nvfabric.cli import main
from tests.unit.test_api import TOKEN, VM1, make_agent


@pytest.fixture
async def api(tmp_path, monkeypatch):
    monkeypatch.delenv("NVFABRIC_TOKEN", raising=False)
    monkeypatch.delenv("NVFABRIC_API", raising=False)
    server = await start_api(make_agent(tmp_path), "127.0.0.1:0", TOKEN)
    assert server is not None
    yield server.url
    await server.stop()


async def ctl(capsys, *argv: str) -> tuple[int, str, str]:
    # urllib blocks: run the client in a thread while this loop serves the API
    status = await asyncio.to_thread(main, ["ctl", *argv])
    out, err = capsys.readouterr()
    return status, out, err


async def test_tables_by_default(api, capsys):
    status, out, err = await ctl(capsys, "--api", api, "--token", TOKEN, "routing-domains")
    assert (status, err) == (0, "")
    assert "blue" in out and "5001" in out and "10.1.0.0/24 fd00:b::/64" in out and "nvf-blue" in out
    status, out, _ = await ctl(capsys, "ports", "--api", api, "--token", TOKEN)  # options after the subcommand
    assert status == 0 and "vm1" in out and "02:00:00:00:01:01" in out and "tap1" in out
    assert "port security" in out and " on " in out


async def test_json_output_is_the_api_body(api, capsys, monkeypatch):
    monkeypatch.setenv("NVFABRIC_API", api)
    monkeypatch.setenv("NVFABRIC_TOKEN", TOKEN)
    status, out, _ = await ctl(capsys, "-o", "json", "port", "get", "vm1")
    assert status == 0
    body = json.loads(out)
    assert {k: v for k, v in body.items() if k not in ("status", "etag")} == {**VM1, "port_security": True,
                                                                             "allowed_addresses": []}
    status, out, _ = await ctl(capsys, "provider-addresses", "-o", "json")
    assert json.loads(out)["provider_addresses"][0] == {"address": "198.51.100.11", "next_hop": True}


async def test_a_refusal_prints_the_api_message_and_exits_1(api, capsys):
    status, out, err = await ctl(capsys, "--api", api, "--token", TOKEN, "port", "put", "vm9", "--interface", "tap9",
                                 "--mac", "02:00:00:00:09:09", "--vsid", "5001", "--address", "10.1.0.300")
    assert status == 1 and out == ""
    assert err.strip() == ("nvfabric ctl port put: PUT /v1/ports/vm9: 400 invalid: addresses[0]: is not an IPv4 or "
                           "IPv6 address (got '10.1.0.300')")
    status, _, err = await ctl(capsys, "--api", api, "--token", TOKEN, "port", "put", "vm9", "--interface", "tap9",
                               "--mac", "02:00:00:00:09:09", "--vsid", "5001", "--address", "10.1.0.9",
                               "--no-port-security", "--allowed-address", "10.9.0.1/24")
    assert status == 1 and "400 invalid: allowed_addresses[0]: is not a network prefix" in err and "host bits" in err
    status, _, err = await ctl(capsys, "--api", api, "--token", TOKEN, "port", "delete", "nope")
    assert status == 1 and "404 not-found: no port named 'nope'" in err
    status, _, err = await ctl(capsys, "--api", api, "--token", TOKEN, "routing-domain", "delete", "blue")
    assert status == 1 and "409 conflict" in err and "vm1" in err
    status, _, err = await ctl(capsys, "--api", api, "--token", TOKEN, "lookup-records", "--vsid", "12")
    assert status == 1 and "400 invalid: vsid:" in err


async def test_a_put_from_a_yaml_file_reaches_the_agent(api, capsys, tmp_path):
    path = tmp_path / "vm2.yaml"
    path.write_text("name: vm2\ninterface: tap2\nmac: 02:00:00:00:01:02\nvsid: 5001\naddresses: [10.1.0.20]\n")
    status, _, err = await ctl(capsys, "--api", api, "--token", TOKEN, "port", "put", "-f", str(path))
    # accepted by the API and the catalog; the unstarted agent answers 503 (the kernel phase programs it)
    assert status == 1 and "503 not-running" in err


async def test_routing_domain_put_from_flags(api, capsys):
    status, _, err = await ctl(capsys, "--api", api, "--token", TOKEN, "routing-domain", "put", "green",
                               "--route-target", "65001:3", "--subnet", "5001=10.3.0.0/24")
    assert status == 1 and "409 conflict: subnets[0].vsid" in err and "blue" in err
    status, _, err = await ctl(capsys, "--api", api, "--token", TOKEN, "routing-domain", "put", "green",
                               "--route-target", "65001:3", "--subnet", "x=10.3.0.0/24")
    assert status == 1 and "400 invalid: subnets[0].vsid: must be an integer" in err


async def test_trace_table(api, capsys):
    status, out, _ = await ctl(capsys, "--api", api, "--token", TOKEN, "trace", "blue", "10.1.0.99", "10.1.0.10")
    assert status == 0 and "dropped" in out and "source not a CA of routing domain blue" in out


async def test_a_wrong_or_missing_token(api, capsys):
    status, _, err = await ctl(capsys, "--api", api, "--token", "wrong", "status")
    assert status == 1 and "401 unauthorized: wrong bearer token" in err
    status, _, err = await ctl(capsys, "--api", api, "status")
    assert status == 2 and "no API token" in err


async def test_an_absent_api_is_exit_3(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        status, _, err = await ctl(capsys, "--api", f"http://127.0.0.1:{port}", "--token", TOKEN, "ports")
    assert status == 3 and "cannot reach the agent API" in err


@pytest.mark.parametrize("content, name, words", [
    ("name: [unclosed", "bad.yaml", "not valid YAML"), ("{", "bad.json", "not valid JSON"),
    ("- a\n- b\n", "list.yaml", "must hold one object"),
])
async def test_unreadable_files_are_usage_errors(api, capsys, tmp_path, content, name, words):
    path = tmp_path / name
    path.write_text(content)
    status, _, err = await ctl(capsys, "--api", api, "--token", TOKEN, "port", "put", "vm9", "-f", str(path))
    assert status == 2 and words in err
    status, _, err = await ctl(capsys, "--api", api, "--token", TOKEN, "port", "put", "-f", str(tmp_path / "none"))
    assert status == 2 and "cannot read" in err
