"""The daemons' service runtime, pure and in-process: what a reload may change (agent, gateway), the
notify protocol's datagrams, the log formats, the runner's options."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import socket
from pathlib import Path

import pytest

from nvfabric.bgp.config import ConfigError
from nvfabric.cli import build_parser, main
from nvfabric.gateway import reload as gateway_reload
from nvfabric.gateway.config import GatewayConfig
from nvfabric.hostagent import reload as agent_reload
from nvfabric.hostagent.config import AgentConfig
from nvfabric.service import daemon, logs, version
from nvfabric.service.notify import Notifier

BLUE = {"name": "blue", "route_targets": ["65000:1"], "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}]}
RED = {"name": "red", "route_targets": ["65000:2"], "subnets": [{"vsid": 6001, "prefixes": ["10.0.0.0/24"]}]}


def agent(**changed: object) -> AgentConfig:
    return AgentConfig.from_dict({"asn": 65000, "router_id": "198.51.100.11", "provider_addresses": ["198.51.100.11"],
                                  "route_reflectors": [{"address": "198.51.100.100"}], "state_dir": "/var/lib/nvfabric",
                                  "routing_domains": [BLUE], **changed})


def gateway(**changed: object) -> GatewayConfig:
    return GatewayConfig.from_dict({"asn": 65000, "router_id": "198.51.100.21", "external": {"interfaces": ["eth2"]},
                                    "tenants": [BLUE], **changed})


def test_agent_reload_puts_and_deletes_only_what_the_file_changed():
    change = agent_reload.plan(agent(), agent(routing_domains=[BLUE, RED], resync_interval=30))
    assert [d.name for d in change.put] == ["red"] and change.delete == () and change.config.resync_interval == 30
    changed_blue = {**BLUE, "route_targets": ["65000:9"]}
    change = agent_reload.plan(agent(routing_domains=[BLUE, RED]), agent(routing_domains=[changed_blue]))
    assert [d.name for d in change.put] == ["blue"] and change.delete == ("red",)
    assert change.summary == "routing domains put blue; deleted red"
    assert agent_reload.plan(agent(), agent()).summary == "no routing domain changed"


@pytest.mark.parametrize(("field", "value"), [("router_id", "198.51.100.12"), ("asn", 65001),
                                              ("provider_addresses", ["198.51.100.12"]), ("eor_timeout", 5),
                                              ("api", {"listen": "127.0.0.1:9000"})])
def test_agent_reload_refuses_a_field_that_needs_a_restart_by_name(field: str, value: object):
    with pytest.raises(ConfigError) as refused:
        agent_reload.plan(agent(), agent(**{field: value}, routing_domains=[BLUE, RED]))
    assert refused.value.field == field and "cannot change without a restart" in str(refused.value)


def test_gateway_reload_puts_and_deletes_only_the_tenants_the_file_changed():
    change = gateway_reload.plan(gateway(tenants=[BLUE, RED]), gateway(tenants=[RED]))
    assert change.put == () and change.delete == ("blue",) and change.summary == "tenants deleted blue"
    with pytest.raises(ConfigError, match=r"^sync: cannot change without a restart"):
        gateway_reload.plan(gateway(), gateway(sync={"interface": "eth3", "local_address": "192.0.2.21",
                                                     "peer_address": "192.0.2.22"}))


class Manager:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(10)

    def next(self) -> list[str]:
        return self.sock.recv(4096).decode().splitlines()


def test_the_notifier_sends_one_datagram_per_state_and_leaves_no_socket_to_children(tmp_path: Path, monkeypatch):
    manager = Manager(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    notifier = Notifier()
    assert "NOTIFY_SOCKET" not in os.environ  # a child the daemon starts does not inherit it
    assert notifier.ready("serving 3 tenants")
    assert manager.next() == ["READY=1", "STATUS=serving 3 tenants"]
    assert notifier.reloading()
    reloading = manager.next()
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
    assert notifier.stopping() and manager.next() == ["STOPPING=1"]
    assert not Notifier(socket_path="").ready()  # no manager: nothing sent, nothing raised
    assert not Notifier(socket_path=str(tmp_path / "gone")).ready()  # a manager gone: logged, not raised


async def test_a_reload_is_framed_by_reloading_and_ready_and_a_stop_says_stopping(tmp_path: Path):
    manager = Manager(tmp_path / "notify")

    async def reload() -> str:
        raise RuntimeError("a bug in the reload")

    default = signal.getsignal(signal.SIGHUP)
    waiting = asyncio.ensure_future(daemon.until_stopped(reload, Notifier(str(tmp_path / "notify")), "up"))
    while signal.getsignal(signal.SIGHUP) is default:
        await asyncio.sleep(0)
    assert await asyncio.to_thread(manager.next) == ["READY=1", "STATUS=up"]
    os.kill(os.getpid(), signal.SIGHUP)
    assert (await asyncio.to_thread(manager.next))[0] == "RELOADING=1"
    # an unexpected failure of the reload: the daemon keeps running and says why
    assert await asyncio.to_thread(manager.next) == ["READY=1", "STATUS=running; reload failed: RuntimeError: "
                                                     "a bug in the reload"]
    os.kill(os.getpid(), signal.SIGTERM)
    assert (await asyncio.to_thread(manager.next))[0] == "STOPPING=1"
    await asyncio.wait_for(waiting, 5)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_log_format_is_text_at_a_terminal_and_json_elsewhere():
    record = logging.LogRecord("nvfabric.gateway", logging.INFO, __file__, 1, "tenant %s put", ("blue",), None)
    record.event, record.tenant = "tenant-put", "blue"
    assert json.loads(logs.formatter("auto", io.StringIO()).format(record)) | {"ts": None} == {
        "ts": None, "level": "INFO", "logger": "nvfabric.gateway", "event": "tenant-put", "tenant": "blue",
        "msg": "tenant blue put"}
    assert logs.formatter("auto", Terminal()).format(record).endswith("nvfabric.gateway INFO tenant blue put")
    assert logs.formatter("json", Terminal()).format(record).startswith("{")
    with pytest.raises(ValueError, match="--log-format"):
        logs.formatter("xml")


@pytest.mark.parametrize("argv", [["--version"], ["rr", "--version"], ["agent", "--version"],
                                  ["gateway", "--version"]])
def test_version_everywhere(argv: list[str], capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0 and capsys.readouterr().out == f"nvfabric {version()}\n"


@pytest.mark.parametrize("name", ["rr", "agent", "gateway"])
def test_without_config_the_daemon_reads_etc_nvfabric_and_a_missing_file_is_one_line(name: str, capsys,
                                                                                     monkeypatch):
    args = build_parser().parse_args([name])
    assert args.config is None and args.log_format == "auto"
    monkeypatch.setattr(daemon, "CONFIG_DIR", "/nonexistent/nvfabric")
    assert main([name]) == daemon.EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.count(f"/nonexistent/nvfabric/{name}.yaml") == 1, err
