"""The gateway's role as applied (gateway/evpn.py Fabric: the announcements follow gateway/role.py's answer,
in order), its status (`GET /v1/status`, `nvfabric gateway status`) and its role metrics, with the real API
and an unstarted Gateway whose BGP clients are stand-ins."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest

from nvfabric.bgp.routes import Path, PrefixRoute
from nvfabric.bgp.speaker import PeerStatus
from nvfabric.cli import main
from nvfabric.gateway import api as gw_api
from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.evpn import default_routes
from nvfabric.gateway.gateway import Gateway
from nvfabric.gateway.role import DEPREFERRED, PREPEND
from nvfabric.gateway.upstream import public_routes
from tests.unit.test_api import TOKEN

RR = "198.51.100.100"
BODY = {
    "asn": 65001, "router_id": "198.51.100.22", "provider_addresses": ["198.51.100.22"],
    "provider_prefixes": ["198.51.100.0/24"], "standby": True,
    "route_reflectors": [{"address": RR}],
    "external": {"interfaces": ["eth2"], "address4": "203.0.113.22"},
    "upstream": [{"address": "203.0.113.1", "asn": 64496}],
    "public_prefixes": ["203.0.113.0/24"],
    "tenants": [{"name": "blue", "route_targets": ["65001:1"], "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}],
                 "snat": ["203.0.113.140"], "floating_ips": [{"public": "203.0.113.131", "private": "10.0.0.5"}]}]}


class Client:
    """Stands for bgp.client.Client: the delivered table (set by the test) and the calls, in one log shared
    with the gateway's role callback, so that the order of what is done is seen."""

    def __init__(self, log: list[tuple], name: str) -> None:
        self.log, self.name, self.table = log, name, {}

    def routes(self):
        return dict(self.table)

    async def announce(self, routes) -> None:
        self.log.append((self.name, "announce", list(routes)))

    async def withdraw(self, keys) -> None:
        self.log.append((self.name, "withdraw", list(keys)))


def other_gateway(pa: str) -> PrefixRoute:
    return PrefixRoute(rd=f"{pa}:5001", prefix=ipaddress.ip_network("0.0.0.0/0"), vsid=5001,
                       next_hop=ipaddress.ip_address(pa), route_targets=("65001:1",))


def gateway() -> tuple[Gateway, list[tuple]]:
    gw = Gateway(GatewayConfig.from_dict(BODY))
    log: list[tuple] = []
    assert gw._fabric is not None and gw._upstream is not None
    gw._fabric.client = Client(log, "fabric")  # type: ignore[assignment]
    gw._upstream.client = Client(log, "upstream")  # type: ignore[assignment]
    gw._fabric._tenants = gw.tenants

    class Sync:  # the conntrack replication's hooks, as gateway/conntrackd.py has them
        async def became_active(self) -> None:
            log.append(("sync", "active"))

        async def became_standby(self) -> None:
            log.append(("sync", "standby"))

        def status(self, tenants):
            class Status:
                def as_dict(self):
                    return {"up": True, "role": "standby", "entries": {"internal": 3, "external": 5}}
            return Status()

    gw._sync = Sync()
    return gw, log


async def settle(gw: Gateway) -> None:
    """One pass of the fabric's learner: the role judged on the table, then applied."""
    f = gw._fabric
    f.role = f.role.on_routes(f.others(), time.monotonic())
    await f._apply_role()


async def test_the_role_is_applied_in_order_and_the_upstream_depreferred_while_isolated() -> None:
    gw, log = gateway()
    f = gw._fabric
    t0 = time.monotonic()
    f.client.table = {1: other_gateway("198.51.100.21")}
    f.on_status(PeerStatus(RR, "established"), t0)
    f.on_status(PeerStatus(RR, "end-of-rib"), t0)
    await settle(gw)
    assert not gw.serving and gw.role_status().reason == "standing by: gateway 198.51.100.21 serves"
    # the first judgement is told even though nothing is announced: a restarted gateway's replication asks
    # the serving one for its state
    assert log == [("sync", "standby")] and gw.role_status().changes == 0
    log.clear()
    await settle(gw)
    assert log == []  # told once

    # the active one's routes leave the fabric: taking over; the replication first, then the upstream, then
    # the default routes that bring the hosts' traffic
    f.client.table = {}
    await settle(gw)
    assert gw.serving and [entry[:2] for entry in log] == [("sync", "active"), ("upstream", "announce"),
                                                           ("fabric", "announce")]
    assert log[1][2] == list(public_routes(gw.tenants.values(), *gw._upstream.next_hops).values())
    assert log[2][2] == list(default_routes(gw.tenants.values(), gw.config).values())
    assert f.takeovers and gw.role_status().changes == 1

    # isolated: the default routes withdrawn (nothing re-sent when a session returns), the public
    # addresses announced again with our AS prepended, the replication told last
    log.clear()
    f.on_status(PeerStatus(RR, "down"), time.monotonic())
    await settle(gw)
    assert not gw.serving and gw.upstream_mode == DEPREFERRED
    assert [entry[:2] for entry in log] == [("fabric", "withdraw"), ("upstream", "announce"), ("sync", "standby")]
    worse = log[1][2]
    assert all(isinstance(p, Path) and [list(s.asns) for s in p.attrs.as_path] == [[65001] * (1 + PREPEND)]
               for p in worse) and len(worse) == 2
    status = gw.role_status()
    assert status.upstream == "depreferred" and status.reason.startswith("isolated") and status.changes == 2
    # a tenant changed meanwhile keeps the depreferred announcement
    assert gw._upstream.depreferred


async def test_status_endpoint_and_role_metrics() -> None:
    gw, _ = gateway()
    async with TestClient(TestServer(gw_api.make_app(gw, TOKEN))) as client:
        answer = await client.get("/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status == 200
        body = await answer.json()
    role = body["role"]
    assert role == {"serving": False, "configured": "standby", "reason": "starting: waiting for a reflector session",
                    "since": role["since"], "changes": 0, "upstream": "withdrawn"}
    assert abs(role["since"] - time.time()) < 60
    assert body["sessions"] == [{"peer": RR, "kind": "reflector", "state": "idle", "uptime": None},
                                {"peer": "203.0.113.1", "kind": "upstream", "state": "idle", "uptime": None}]
    assert body["bfd"] == []  # no peer with `bfd`
    assert body["conntrack_sync"] == {"up": True, "role": "standby", "entries": {"internal": 3, "external": 5}}

    registry = CollectorRegistry()
    registry.register(gw_api._TenantCollector([], gw))
    text = generate_latest(registry).decode()
    assert "nvfabric_gateway_serving 0.0" in text and "nvfabric_gateway_role_changes_total 0.0" in text


def test_a_gateway_without_reflectors_always_serves() -> None:
    gw = Gateway(GatewayConfig.from_dict({"asn": 65001, "router_id": "198.51.100.21",
                                          "external": {"interfaces": ["ext"]}}))
    status = gw.role_status()
    assert status.serving and status.upstream == "announce" and gw.sessions() == []


@pytest.fixture
async def api(monkeypatch):
    monkeypatch.delenv("NVFABRIC_TOKEN", raising=False)
    monkeypatch.delenv("NVFABRIC_GATEWAY_API", raising=False)
    gw, _ = gateway()
    server = await gw_api.start_api(gw, "127.0.0.1:0", TOKEN)
    assert server is not None
    yield server.url
    await server.stop()


async def test_nvfabric_gateway_status(api, capsys) -> None:
    status = await asyncio.to_thread(main, ["gateway", "status", "--api", api, "--token", TOKEN])
    out, err = capsys.readouterr()
    assert (status, err) == (0, "")
    for words in ("serving", "no", "configured", "standby", "upstream", "withdrawn",
                  "starting: waiting for a reflector session", "BGP sessions", RR, "reflector", "idle",
                  "203.0.113.1", "upstream", "BFD sessions", "conntrack replication", 'internal 3, external 5'):
        assert words in out, words
    status = await asyncio.to_thread(main, ["gateway", "status", "-o", "json", "--api", api, "--token", TOKEN])
    out, _ = capsys.readouterr()
    assert status == 0 and json.loads(out)["role"]["configured"] == "standby"
    status = await asyncio.to_thread(main, ["ctl", "gateway", "status", "--api", api, "--token", TOKEN])
    assert status == 0 and "BGP sessions" in capsys.readouterr().out


async def test_a_role_change_that_failed_is_applied_again_and_counted_once() -> None:
    gw, log = gateway()
    f = gw._fabric
    calls = []

    async def flaky(role) -> None:
        calls.append(role.serving)
        if len(calls) == 1:
            raise OSError("the upstream speaker is gone")
    f.on_role = flaky
    t0 = time.monotonic()
    f.on_status(PeerStatus(RR, "established"), t0)
    f.on_status(PeerStatus(RR, "end-of-rib"), t0)
    f.role = f.role.on_timer(t0 + 10)  # the standby's start-up grace is over: nobody serves
    with pytest.raises(OSError):
        await settle(gw)
    assert not gw.serving and gw.upstream_mode == "withdrawn" and [e[:2] for e in log] == []
    await settle(gw)
    assert gw.serving and gw.upstream_mode == "announce" and calls == [True, True]
    assert gw.role_status().changes == 1 and len(f.takeovers) == 1
