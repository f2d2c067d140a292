"""Pure parts of the connection state replication (gateway/conntrackd.py): the `sync:` configuration (errors
name the field), conntrackd's configuration, its statistics, the status document and the metrics."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from nvfabric.bgp.config import ConfigError
from nvfabric.gateway.api import _SyncCollector
from nvfabric.gateway.config import GatewayConfig, SyncConfig
from nvfabric.gateway.conntrackd import (ConntrackdStats, SyncFiles, SyncStatus, conntrackd_conf, own_addresses,
                                         parse_stats)
from nvfabric.gateway.peerids import IdExchange, decode, differ, encode
from tests.waits import until

SYNC = {"interface": "eth3", "local_address": "192.0.2.21", "peer_address": "192.0.2.22"}
TENANT = {"name": "blue", "route_targets": ["65001:1"], "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}],
          "snat": [{"address": "203.0.113.11"}]}


def config(**extra: object) -> dict:
    return {"asn": 65001, "router_id": "198.51.100.21", "provider_addresses": ["198.51.100.21", "2001:db8::21"],
            "external": {"interfaces": ["eth2"], "address4": "203.0.113.2"},
            "api": {"listen": "127.0.0.1:8510"}, **extra}


def test_sync_is_read_with_its_default_port() -> None:
    c = GatewayConfig.from_dict(config(sync=SYNC))
    assert c.sync == SyncConfig("eth3", ipaddress.ip_address("192.0.2.21"), ipaddress.ip_address("192.0.2.22"), 3780)
    assert GatewayConfig.from_dict(config()).sync is None
    v6 = GatewayConfig.from_dict(config(sync={**SYNC, "local_address": "fd00:5::1", "peer_address": "fd00:5::2",
                                              "port": 3790}))
    assert v6.sync is not None and v6.sync.port == 3790 and v6.sync.peer_address.version == 6


@pytest.mark.parametrize("change, field", [
    ({"peer_address": "fd00::2"}, "sync.peer_address"),  # another family than local_address
    ({"peer_address": "192.0.2.21"}, "sync.peer_address"),
    ({"local_address": "nope"}, "sync.local_address"),
    ({"local_address": "224.0.0.5"}, "sync.local_address"),
    ({"interface": "bad name!"}, "sync.interface"),
    ({"interface": "eth2"}, "sync.interface"),  # the external interface
    ({"port": 0}, "sync.port"),
    ({"port": "3780"}, "sync.port"),
    ({"peer": "192.0.2.22"}, "sync.peer"),
    ({"interface": None}, "sync.interface"),
])
def test_a_bad_sync_is_refused_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(ConfigError) as refused:
        GatewayConfig.from_dict(config(sync={**SYNC, **change}))
    assert refused.value.field == field


def test_a_tenant_may_not_claim_the_sync_link_or_its_addresses() -> None:
    with pytest.raises(ConfigError) as refused:
        GatewayConfig.from_dict(config(sync=SYNC, tenants=[{**TENANT, "interfaces": ["eth3"]}]))
    assert refused.value.field == "tenants[0].interfaces[0]" and "sync.interface" in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        GatewayConfig.from_dict(config(sync=SYNC, tenants=[{**TENANT, "snat": [{"address": "192.0.2.22"}]}]))
    assert refused.value.field == "tenants[0].snat[0].address" and "sync.peer_address" in str(refused.value)


def test_conntrackd_conf_replicates_over_the_link_without_external_cache_and_ignores_the_gateway() -> None:
    c = GatewayConfig.from_dict(config(sync=SYNC))
    assert c.sync is not None
    ignore = own_addresses(c)
    assert [str(a) for a in ignore] == ["127.0.0.1", "::1", "198.51.100.21", "2001:db8::21", "203.0.113.2",
                                        "192.0.2.21", "192.0.2.22"]
    text = conntrackd_conf(c.sync, SyncFiles(Path("/run/nvfabric/conntrackd-gw1")), ignore)
    lines = [line.strip() for line in text.splitlines()]
    for expected in ("Mode FTFW {", "DisableExternalCache On", "StartupResync On", "UDP {",
                     "IPv4_address 192.0.2.21", "IPv4_Destination_Address 192.0.2.22", "Port 3780", "Interface eth3",
                     "LockFile /run/nvfabric/conntrackd-gw1/conntrackd.lock",
                     "Path /run/nvfabric/conntrackd-gw1/conntrackd.ctl", "Filter From Kernelspace {",
                     "Address Ignore {", "IPv6_address 2001:db8::21", "IPv4_address 203.0.113.2",
                     "TCP UDP ICMP IPv6-ICMP SCTP"):
        assert expected in lines, expected
    assert text.count("{") == text.count("}")
    v6 = SyncConfig("eth3", ipaddress.ip_address("fd00:5::1"), ipaddress.ip_address("fd00:5::2"), 3790)
    lines = [line.strip() for line in conntrackd_conf(v6, SyncFiles(Path("/x")), ()).splitlines()]
    assert "IPv6_address fd00:5::1" in lines and "IPv6_Destination_Address fd00:5::2" in lines and "Port 3790" in lines


# `conntrackd -C ... -s` and `-s queue` of conntrackd 1.4.7 (Debian), a standby after two flows
GENERAL = """cache internal:
current active connections:\t           3
connections created:\t\t           5\tfailed:\t           0
connections updated:\t\t           7\tfailed:\t           0
connections destroyed:\t\t           2\tfailed:\t           0

external inject:
connections created:\t\t           1\tfailed:\t           0
connections updated:\t\t           2\tfailed:\t           1
connections destroyed:\t\t           0\tfailed:\t           0

traffic processed:
                   0 Bytes                         0 Pckts

UDP traffic (active device=eth3):
                 524 Bytes sent                  272 Bytes recv
                  18 Pckts sent                   17 Pckts recv
                   0 Error send                    2 Error recv

message tracking:
                   4 Malformed msgs                    6 Lost msgs

"""
QUEUE = """allocated queue nodes:\t\t           0

queue txqueue:
current elements:\t\t           1
maximum elements:\t\t  2147483647
not enough space errors:\t           0

queue rsqueue:
current elements:\t\t           9
maximum elements:\t\t      131072
not enough space errors:\t           0
"""


def test_statistics_are_read_from_conntrackds_output() -> None:
    assert parse_stats(GENERAL, QUEUE) == ConntrackdStats(
        internal=3, injected_created=1, injected_updated=2, injected_destroyed=0, inject_failed=1, bytes_sent=524,
        bytes_received=272, sent=18, received=17, send_errors=0, receive_errors=2, lost=6, malformed=4,
        resend_queue=9)
    assert parse_stats("") == ConntrackdStats()


def status(**extra: object) -> SyncStatus:
    values = {"interface": "eth3", "local_address": "192.0.2.21", "peer_address": "192.0.2.22", "port": 3780,
              "running": True, "talking": True, "role": "standby", "pid": 42, "restarts": 1,
              "stats": parse_stats(GENERAL, QUEUE), "sampled_at": None, "last_heard": None, "last_error": None,
              "kernel_entries": 10, **extra}
    return SyncStatus(**values)  # type: ignore[arg-type]


def test_status_document_and_metrics() -> None:
    doc = status().as_dict()
    assert doc["up"] is True and doc["role"] == "standby"
    assert doc["entries"] == {"internal": 3, "external": 7, "kernel": 10}
    assert doc["messages"]["received"] == 17 and doc["injected"]["failed"] == 1 and doc["resend_queue"] == 9
    assert status(talking=False).up is False and status(kernel_entries=None).external == 0
    registry = CollectorRegistry()
    registry.register(_SyncCollector(status()))
    text = generate_latest(registry).decode()
    for line in ('nvfabric_gateway_conntrack_sync_up 1.0',
                 'nvfabric_gateway_conntrack_sync_entries{cache="internal"} 3.0',
                 'nvfabric_gateway_conntrack_sync_entries{cache="external"} 7.0',
                 'nvfabric_gateway_conntrack_sync_messages_total{direction="sent"} 18.0',
                 'nvfabric_gateway_conntrack_sync_messages_total{direction="received"} 17.0',
                 'nvfabric_gateway_conntrack_sync_messages_total{direction="lost"} 6.0',
                 'nvfabric_gateway_conntrack_sync_restarts_total 1.0',
                 'nvfabric_gateway_conntrack_sync_resend_queue 9.0'):
        assert line in text.splitlines(), line
    registry = CollectorRegistry()
    registry.register(_SyncCollector(status(running=False)))
    assert "nvfabric_gateway_conntrack_sync_up 0.0" in generate_latest(registry).decode().splitlines()


def test_each_gateway_of_a_host_has_its_own_files() -> None:
    v4 = SyncConfig("eth3", ipaddress.ip_address("192.0.2.21"), ipaddress.ip_address("192.0.2.22"))
    v4b = SyncConfig("eth3", ipaddress.ip_address("192.0.2.22"), ipaddress.ip_address("192.0.2.21"))
    assert SyncFiles.for_gateway(v4, None).directory == Path("/run/nvfabric/conntrackd-192.0.2.21")
    assert SyncFiles.for_gateway(v4, "gw1").socket == Path("/run/nvfabric/conntrackd-gw1-192.0.2.21/conntrackd.ctl")
    assert SyncFiles.for_gateway(v4, None) != SyncFiles.for_gateway(v4b, None)
    long = SyncFiles.for_gateway(v4, "n" * 100)
    assert len(str(long.socket)) <= 107 and long != SyncFiles.for_gateway(v4, "m" * 100)


def test_tenant_id_maps_round_trip_and_differences_are_found() -> None:
    ids = {"blue": 1000, "red": 1001}
    assert decode(encode(ids)) == ids
    for bad in (b"", b"[]", b'{"v": 2, "ids": {}}', b'{"v": 1, "ids": {"blue": "1000"}}',
                b'{"v": 1, "ids": {"x": true}}'):
        assert decode(bad) is None
    assert differ(ids, {"blue": 1000, "red": 1002, "green": 1003}) == {"red": (1001, 1002)}
    many = {f"tenant-{i:05d}-with-a-long-name": 1000 + i for i in range(5000)}
    data = encode(many)
    assert len(data) <= 65000 and json.loads(data)["partial"] is True
    assert set(decode(data) or {}) < set(many)


async def test_two_gateways_exchange_their_ids_over_the_sync_link() -> None:
    a, b = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("127.0.0.2")
    port = 40000 + os.getpid() % 20000
    mine, theirs = {"blue": 1000, "red": 1001}, {"blue": 1000, "red": 1002}
    one = IdExchange(a, b, port, lambda: mine, interval=0.05)
    two = IdExchange(b, a, port, lambda: theirs, interval=0.05)
    await one.start()
    await two.start()
    try:
        await until(lambda: one.theirs is not None and two.theirs is not None, what="both have the other's ids")
        assert one.differ() == {"red": (1001, 1002)} and two.differ() == {"red": (1002, 1001)}
        theirs["red"] = 1001
        await until(lambda: not one.differ(), what="the ids agree")
    finally:
        await one.stop()
        await two.stop()
