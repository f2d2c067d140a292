"""Connection state replication between two gateways with conntrackd, on this machine's kernel (no VRF).

Two real gateways (gateway.Gateway in threads inside their namespaces, each running its conntrackd) serve
the same tenants, blue and red, which use the SAME addresses; a dedicated veth joins them (`sync`). Each
tenant's "VM" namespace is a bridge with one leg to each gateway (the gateways' legs share one MAC, like a
virtual router's, and only the one to the active gateway is up); the `internet` namespace bridges both gateways'
external sides and routes the public pool to the active one. Per-tenant routing tables stand in for the
VRFs, as in test_gateway_nat.py.

Checked: a flow NATed by gw1 appears in gw2's kernel with the same conntrack zone, mark and NAT mapping
(both tenants with the same 5-tuple, so a lost zone could not pass), its deletion follows; after the active
gateway's links go down and the routes move, an established TCP connection through SNAT and one through a
floating IP go on through gw2.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import struct
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nvfabric.gateway.config import GatewayConfig, SyncConfig
from nvfabric.gateway.conntrackd import REQUESTS, SyncFiles, conntrackd_conf
from nvfabric.gateway.gateway import Gateway
from nvfabric.lab.daemons import GatewayThread
from nvfabric.lab.fabric import wait_for
from nvfabric.lab.netns import run
from nvfabric.lab.probe import Server, connect, echo
from tests.integration.conftest import need

SERVER = ("203.0.113.1", 8080)
TENANT_MAC = "02:00:5e:00:01:01"  # both gateways' leg into a tenant: the VM's gateway moves without ARP
EXT = {"gw1": "203.0.113.2", "gw2": "203.0.113.3"}
SYNC = {"gw1": ("192.0.2.21", "192.0.2.22"), "gw2": ("192.0.2.22", "192.0.2.21")}


def tenant_body(name: str, vsid: int, snat: str, fip_public: str) -> dict[str, Any]:
    return {"name": name, "route_targets": ["65001:1"], "subnets": [{"vsid": vsid, "prefixes": ["10.0.0.0/24"]}],
            "snat": [{"address": snat}], "floating_ips": [{"public": fip_public, "private": "10.0.0.5"}],
            "interfaces": [f"t-{name}"]}


TENANTS = {"blue": tenant_body("blue", 5001, "203.0.113.140", "203.0.113.131"),
           "red": tenant_body("red", 6001, "203.0.113.141", "203.0.113.132")}


@dataclass
class Pair:
    ns: dict[str, str]  # node -> namespace
    gws: dict[str, GatewayThread]

    def conntrack(self, gw: str, zone: int) -> list[dict[str, str]]:
        """The TCP entries of one zone in a gateway's kernel: the original and reply tuples, mark and zone."""
        out = run(["ip", "netns", "exec", self.ns[gw], "conntrack", "-L", "-p", "tcp", "-w", str(zone)],
                  check=False).output
        found = []
        for line in out.splitlines():
            fields = re.findall(r"(\w+)=(\S+)", line)
            if len(fields) < 8:
                continue
            names = ["src", "dst", "sport", "dport", "rsrc", "rdst", "rsport", "rdport"]
            entry = {n: v for n, (_, v) in zip(names, fields[:8], strict=True)}
            entry.update({k: v for k, v in fields[8:] if k in ("mark", "zone")})
            found.append(entry)
        return found

    def take_over(self) -> None:
        """gw1 dies (its links down); the tenants' bridges and the internet's route move to gw2, which is told."""
        for dev in ("ext", "t-blue", "t-red"):
            run(["ip", "-n", self.ns["gw1"], "link", "set", dev, "down"])
        for tenant in ("blue", "red"):
            run(["ip", "-n", self.ns[tenant], "link", "set", "v2", "up"])
        run(["ip", "-n", self.ns["inet"], "route", "replace", "203.0.113.128/25", "via", EXT["gw2"]])
        self.tell("gw2", active=True)

    def tell(self, gw: str, active: bool) -> None:
        """What the gateway's role does when it changes (the role machine is not under test here)."""
        self.gws[gw].call(lambda g: g._sync.became_active() if active else g._sync.became_standby())
        self.gws[gw].call(lambda g: g._sync.settled())


def _batch(lines: list[str]) -> None:
    for line in lines:
        run(["ip", *line.split()])


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    need("conntrackd", "conntrack")
    p = f"cts{os.getpid() % 10000}{zlib.crc32(request.node.name.encode()) % 1000}-"
    ns = {n: p + n for n in ("gw1", "gw2", "inet", "blue", "red")}
    gws: dict[str, GatewayThread] = {}
    try:
        lines = [f"netns add {n}" for n in ns.values()]
        lines += [f"-n {n} link set lo up" for n in ns.values()]
        lines += [f"-n {ns['inet']} link add br0 type bridge", f"-n {ns['inet']} link set br0 up",
                  f"-n {ns['inet']} addr add 203.0.113.1/25 dev br0",
                  f"-n {ns['inet']} route add 203.0.113.128/25 via {EXT['gw1']}",
                  f"link add sync0 netns {ns['gw1']} type veth peer name sync0 netns {ns['gw2']}"]
        for i, gw in enumerate(("gw1", "gw2"), 1):
            lines += [f"link add ext netns {ns[gw]} type veth peer name e{i} netns {ns['inet']}",
                      f"-n {ns['inet']} link set e{i} master br0", f"-n {ns['inet']} link set e{i} up",
                      f"-n {ns[gw]} addr add {EXT[gw]}/25 dev ext", f"-n {ns[gw]} link set ext up",
                      f"-n {ns[gw]} addr add {SYNC[gw][0]}/24 dev sync0", f"-n {ns[gw]} link set sync0 up"]
            for tenant in TENANTS:
                lines += [f"link add t-{tenant} netns {ns[gw]} address {TENANT_MAC} type veth peer name v{i} "
                          f"netns {ns[tenant]}",
                          f"-n {ns[gw]} addr add 10.0.0.1/24 dev t-{tenant} noprefixroute",
                          f"-n {ns[gw]} link set t-{tenant} up"]
                if gw == "gw1":  # the tenant's leg to the standby stays down until it takes over
                    lines.append(f"-n {ns[tenant]} link set v{i} up")
        for tenant in TENANTS:
            lines += [f"-n {ns[tenant]} link add br0 type bridge", f"-n {ns[tenant]} link set v1 master br0",
                      f"-n {ns[tenant]} link set v2 master br0", f"-n {ns[tenant]} link set br0 up",
                      f"-n {ns[tenant]} addr add 10.0.0.5/24 dev br0", f"-n {ns[tenant]} addr add 10.0.0.6/24 dev br0",
                      f"-n {ns[tenant]} route add default via 10.0.0.1"]
        _batch(lines)
        for gw in ("gw1", "gw2"):
            run(["ip", "netns", "exec", ns[gw], "sysctl", "-qw", "net.ipv4.ip_forward=1",
                 "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])
            config = GatewayConfig.from_dict({
                "asn": 65001, "router_id": f"198.51.100.2{gw[-1]}", "netns": ns[gw],
                "external": {"interfaces": ["ext"], "address4": EXT[gw]}, "public_prefixes": ["203.0.113.128/25"],
                "tenants": list(TENANTS.values()),
                "sync": {"interface": "sync0", "local_address": SYNC[gw][0], "peer_address": SYNC[gw][1]}})
            gws[gw] = GatewayThread(config, ns[gw])
            gws[gw].call(lambda g: g.start())
        routes = []
        for gw in ("gw1", "gw2"):
            for tenant in TENANTS:
                tid = gws[gw].gateway.tenant_id(tenant)
                routes += [f"-n {ns[gw]} route add 10.0.0.0/24 dev t-{tenant} src 10.0.0.1 table {tid}",
                           f"-n {ns[gw]} route add default via 203.0.113.1 dev ext table {tid}",
                           f"-n {ns[gw]} rule add iif t-{tenant} lookup {tid} pref 100",
                           f"-n {ns[gw]} rule add fwmark {tid} lookup {tid} pref 110"]
        _batch(routes)
        yield Pair(ns, gws)
    finally:
        for gw in gws.values():
            try:
                gw.stop()
            except Exception:  # noqa: BLE001 - teardown goes on
                gw.close()
        for n in ns.values():
            run(["ip", "netns", "del", n], check=False)


async def _send_ids(g: Gateway) -> None:
    g._sync._ids.send()


def _ids(pair: Pair, gw: str) -> dict[str, int]:
    return {t: pair.gws[gw].gateway.tenant_id(t) for t in TENANTS}


def test_a_natted_flow_is_replicated_with_its_zone_mark_and_mapping_and_its_deletion_follows(pair: Pair) -> None:
    ids = _ids(pair, "gw1")
    assert ids == _ids(pair, "gw2") and len(set(ids.values())) == 2  # one zone each, the same on both gateways
    server = Server(pair.ns["inet"], SERVER)
    try:
        flows = {}
        for tenant in TENANTS:  # the same 5-tuple inside both tenants: only their zones keep them apart
            flows[tenant], line = connect(pair.ns[tenant], SERVER, ("10.0.0.6", 40000))
            assert line.split(":")[0] == TENANTS[tenant]["snat"][0]["address"]
        for tenant, tid in ids.items():
            [made] = [e for e in pair.conntrack("gw1", tid) if e["dport"] == "8080"]
            assert made["mark"] == made["zone"] == str(tid) and made["rdst"] == TENANTS[tenant]["snat"][0]["address"]
            wait_for(lambda t=tid, m=made: m in pair.conntrack("gw2", t), 10, f"{tenant}'s flow on gw2")
        for gw in ("gw1", "gw2"):
            pair.gws[gw].call(lambda g: g._sync.sample())
            status = pair.gws[gw].gateway.sync_status()
            assert status is not None and status.up and status.stats.received > 0, status
            pair.gws[gw].call(_send_ids)
        # each has the other's tenant ids, and they are the same
        for gw in ("gw1", "gw2"):
            wait_for(lambda g=gw: pair.gws[g].gateway.sync_status().tenant_ids_differ == {}, 10, f"{gw} heard ids")
        injected = pair.gws["gw2"].gateway.sync_status().stats
        assert injected.injected_created + injected.injected_updated >= 2 and injected.inject_failed == 0
        assert pair.gws["gw1"].gateway.sync_status().stats.internal >= 2
        # the gateway's own connections (the sync link's, here) are not replicated: gw2's zone 0 has no TCP
        assert pair.conntrack("gw2", 0) == []
        # deleting the entry on gw1 deletes the replica
        blue = ids["blue"]
        run(["ip", "netns", "exec", pair.ns["gw1"], "conntrack", "-D", "-p", "tcp", "-w", str(blue),
             "--orig-port-dst", "8080"])
        wait_for(lambda: not [e for e in pair.conntrack("gw2", blue) if e["dport"] == "8080"], 10,
                 "blue's flow gone from gw2")
        assert [e for e in pair.conntrack("gw2", ids["red"]) if e["dport"] == "8080"]  # red's stays
        for s in flows.values():
            s.close()
    finally:
        server.close()


def test_established_tcp_through_snat_and_a_floating_ip_survives_the_takeover(pair: Pair) -> None:
    tid = pair.gws["gw1"].gateway.tenant_id("blue")
    server = Server(pair.ns["inet"], SERVER)
    vm = Server(pair.ns["blue"], ("10.0.0.5", 9000), "blue ")
    try:
        outbound, line = connect(pair.ns["blue"], SERVER, ("10.0.0.6", 0))
        assert line.startswith("203.0.113.140:")
        inbound, line = connect(pair.ns["inet"], ("203.0.113.131", 9000))
        assert line.startswith("blue 203.0.113.1:")
        assert echo(outbound, "before") == "before" and echo(inbound, "before") == "before"
        wait_for(lambda: len(pair.conntrack("gw2", tid)) >= 2, 10, "both flows on gw2")
        # no mid-stream pickup on gw2 (the gateway sets it on): only the replicated entries can carry the flows
        run(["ip", "netns", "exec", pair.ns["gw2"], "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"])
        pair.take_over()
        # the same sockets: the standby's kernel had their entries (zone, mark, NAT mapping) before any packet
        assert echo(outbound, "after") == "after"
        assert echo(inbound, "after") == "after"
        status = pair.gws["gw2"].gateway.sync_status()
        assert status is not None and status.role == "active"
        outbound.close()
        inbound.close()
    finally:
        server.close()
        vm.close()


def test_a_dead_conntrackd_is_restarted_and_a_gateway_back_as_standby_gets_the_active_ones_flows(pair: Pair) -> None:
    tid = pair.gws["gw1"].gateway.tenant_id("blue")
    server = Server(pair.ns["inet"], SERVER)
    try:
        first, _ = connect(pair.ns["blue"], SERVER, ("10.0.0.6", 0))
        wait_for(lambda: pair.conntrack("gw2", tid), 10, "the flow on gw2")
        pair.take_over()
        second, line = connect(pair.ns["blue"], SERVER, ("10.0.0.6", 0))  # a flow gw1 never saw
        assert line.startswith("203.0.113.140:")
        # gw1's conntrackd dies (SIGKILL: its lock file stays behind) and comes back
        old = pair.gws["gw1"].gateway.sync_status()
        assert old is not None and old.pid is not None
        os.kill(old.pid, 9)
        wait_for(lambda: (s := pair.gws["gw1"].gateway.sync_status()) is not None and s.running
                 and s.pid != old.pid, 15, "gw1's conntrackd restarted")
        assert pair.gws["gw1"].gateway.sync_status().restarts == 1
        # gw1 comes back with an empty table (as after a reboot) as the standby: it asks gw2 for everything (the
        # tenants' traffic stays with gw2, the serving one: gw1's legs into the tenants stay down)
        run(["ip", "netns", "exec", pair.ns["gw1"], "conntrack", "-F"])
        pair.tell("gw1", active=False)
        wait_for(lambda: len([e for e in pair.conntrack("gw1", tid) if e["dport"] == "8080"]) >= 2, 15,
                 "both flows back on gw1")
        assert pair.gws["gw1"].gateway.sync_status().role == "standby"
        assert echo(first, "still") == "still" and echo(second, "still") == "still"
        first.close()
        second.close()
    finally:
        server.close()
    # stopping the gateway stops its conntrackd (and its lock and socket go with it)
    pid = pair.gws["gw2"].gateway.sync_status().pid
    pair.gws["gw2"].call(lambda g: g.stop())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not pair.gws["gw2"].gateway._sync.files.lock.exists()


def test_our_requests_are_the_ones_conntrackds_own_client_sends(tmp_path: Path) -> None:
    """The gateway talks to conntrackd's UNIX socket itself (no client process): each request must be the
    int that `conntrackd -C FILE ARGS` sends. A fake daemon's socket records what the real client sends."""
    need("conntrackd")
    files = SyncFiles(tmp_path)
    sync = SyncConfig("lo", ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("127.0.0.2"))
    files.config.write_text(conntrackd_conf(sync, files, ()))
    for args, code in REQUESTS.items():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(str(files.socket))
            server.listen(1)
            server.settimeout(10)
            client = subprocess.Popen(["conntrackd", "-C", str(files.config), *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
            conn, _ = server.accept()
            with conn:
                conn.settimeout(10)
                sent = conn.recv(64)
                conn.sendall(b"answer\n")
            out, _ = client.communicate(timeout=10)
        files.socket.unlink()
        assert sent == struct.pack("=i", code), (args, sent)
        assert b"answer" in out or args == ("-k",), (args, out)
