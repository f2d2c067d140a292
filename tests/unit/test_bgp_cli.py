"""`nvfabric bgp speak`: configuration errors name the field and exit 2; output lines are JSON values."""

from __future__ import annotations

from nvfabric.bgp import cli
from nvfabric.bgp.client import RouteUpdate
from nvfabric.bgp.routes import MacIpRoute
from nvfabric.bgp.speaker import PeerStatus
from nvfabric.cli import main

ROUTE = MacIpRoute(rd="198.51.100.1:1", mac="00:15:5d:01:02:03", ip="fd00:b::10", vsid=5001,
                   next_hop="2001:db8::1", route_targets=("65000:5001",), router_mac="02:00:5e:10:00:01")


def test_config_error_names_the_field_and_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("asn: 65000\nrouter_id: 198.51.100.1\nneighbours:\n  - {address: 198.51.100.2}\n")
    assert main(["bgp", "speak", "--config", str(path)]) == 2
    assert "neighbours[0].asn: is required" in capsys.readouterr().err


def test_json_lines_for_announce_withdraw_and_status():
    announce = cli.event_json(RouteUpdate(ROUTE.key, ROUTE))
    assert announce == {
        "action": "announce", "key": "mac-ip 198.51.100.1:1 0 00:15:5d:01:02:03 fd00:b::10",
        "route": {"type": "mac-ip", "rd": "198.51.100.1:1", "mac": "00:15:5d:01:02:03", "ip": "fd00:b::10",
                  "vsid": 5001, "next_hop": "2001:db8::1", "route_targets": ["65000:5001"],
                  "router_mac": "02:00:5e:10:00:01", "mobility_seq": 0, "sticky": False, "ethernet_tag": 0,
                  "esi": "00" * 10},
    }
    withdraw = cli.event_json(RouteUpdate(ROUTE.key, None))
    assert withdraw["action"] == "withdraw" and withdraw["route"]["mac"] == "00:15:5d:01:02:03"
    assert cli.event_json(PeerStatus("198.51.100.254", "down", reason="hold timer expired")) == {
        "event": "down", "peer": "198.51.100.254", "reason": "hold timer expired"}
