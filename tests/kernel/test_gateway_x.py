"""The gateway on a real kernel (VM phase): VRFs, a flow-based NVGRE device, tc marks per VSID, per-tenant NAT.

A hypervisor `hv` with two tenants' VMs that use the SAME addresses (blue and red: 10.0.0.5 with a floating
IP, 10.0.0.6 without), red also has 10.0.9.9 (VSID 6002). The host's dataplane is vnet's desired state, with
each tenant's default route to the gateway's PA as a host installs it from the gateway's EVPN type-5 route.
The gateway `gw` is gateway.Gateway with provider addresses, so it builds the VRF/NVGRE side through vnet and
steers each VSID's decapsulated traffic to its tenant's mark with tc. The tenant CAs are given to the gateway
with set_records (tests/kernel/test_gateway_fabric.py learns them from reflectors). `inet` is the internet: a
server and, as an upstream router would after the gateway's announcements, a route to the public pool
203.0.113.128/25 via gw.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.dataplane import TC_BLOCK
from nvfabric.gateway.tenants import Tenant
from nvfabric.lab import netns
from nvfabric.lab.daemons import GatewayThread
from nvfabric.lab.fabric import wait_for
from nvfabric.lab.probe import Server, connect_retrying, echo
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import HostIdentity, desired_state
from nvfabric.vnet.kernel.netns import RtnlSocket
from nvfabric.vnet.kernel.objects import Clsact, FlowerMark
from nvfabric.vnet.kernel.observe import observe
from nvfabric.vnet.model import LookupRecord, Port, RemotePrefix
from nvfabric.vnet.reconcile import Reconciler

pytestmark = pytest.mark.kernel

RMAC = "02:00:5e:10:00:01"
HV_PA, GW_PA = "198.51.100.11", "198.51.100.21"
TAG = f"gx{os.getpid() % 100000}"
NS = {n: f"{TAG}-{n}" for n in ("hv", "gw", "inet", "vb", "vr", "vr9")}
SERVER = ("203.0.113.1", 8080)

BLUE = {"name": "blue", "route_targets": ["65000:1"], "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}],
        "snat": [{"address": "203.0.113.140"}], "floating_ips": [{"public": "203.0.113.131", "private": "10.0.0.5"}]}
RED = {"name": "red", "route_targets": ["65000:2"], "subnets": [{"vsid": 6001, "prefixes": ["10.0.0.0/24"]},
                                                                {"vsid": 6002, "prefixes": ["10.0.9.0/24"]}],
       "snat": [{"address": "203.0.113.141"}], "floating_ips": [{"public": "203.0.113.132", "private": "10.0.0.5"}]}
# (vm namespace, tenant, vsid, tap, mac, CAs)
VMS = (("vb", "blue", 5001, "tap-b", "02:00:00:00:0b:01", ("10.0.0.5", "10.0.0.6")),
       ("vr", "red", 6001, "tap-r", "02:00:00:00:0a:01", ("10.0.0.5", "10.0.0.6")),
       ("vr9", "red", 6002, "tap-r9", "02:00:00:00:0a:09", ("10.0.9.9",)))


def _ip(a: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(a)


def hv_state(tables: dict[str, int]):
    tenants = {t.name: t for t in (Tenant.from_dict(BLUE), Tenant.from_dict(RED))}
    ports = {tap: Port(tap, tap, mac, vsid, tuple(_ip(a) for a in cas)) for _, _, vsid, tap, mac, cas in VMS}
    catalog = Catalog.build({n: t.routing_domain for n, t in tenants.items()}, ports)
    records = [LookupRecord(tenant, vsid, _ip(ca), mac, local=True, port=tap)
               for _, tenant, vsid, tap, mac, cas in VMS for ca in cas]
    # what a host installs from the gateway's type-5 0.0.0.0/0 (one per tenant, in its first VSID)
    prefixes = [RemotePrefix(name, ipaddress.ip_network("0.0.0.0/0"), t.vsids[0], _ip(GW_PA), RMAC)
                for name, t in tenants.items()]
    return desired_state(catalog, records, prefixes, {}, HostIdentity(RMAC, (_ip(HV_PA),)), tables).partitions


@dataclass
class Lab:
    gateway: GatewayThread  # a test that restarts the gateway puts the new one here (the fixture stops it)
    config: dict
    records: tuple[LookupRecord, ...]

    def nft_rules(self, tenant: str) -> list[tuple]:
        out = netns.run(["ip", "netns", "exec", NS["gw"], "nft", "-j", "-a", "list", "table", "inet", "nvfgw"]).output
        return [(x["rule"]["chain"], x["rule"]["handle"]) for x in json.loads(out)["nftables"]
                if "rule" in x and x["rule"]["chain"].startswith(f"{tenant}_")]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for m in ("vrf", "ip_gre", "ip6_gre", "cls_flower", "act_skbedit"):
        netns.run(["modprobe", m], check=False)
    for ns in NS.values():
        netns.create(ns)
    gateway = lab = None
    try:
        netns.ip_batch([netns.veth_line(NS["hv"], "u0", NS["gw"], "u0"),
                        netns.veth_line(NS["gw"], "ext", NS["inet"], "e0"),
                        *(netns.veth_line(NS["hv"], tap, NS[vm], "eth0") for vm, _, _, tap, _, _ in VMS)])
        netns.ip_batch([f"addr add {HV_PA}/24 dev u0", "link set u0 up"], NS["hv"])
        netns.ip_batch([f"addr add {GW_PA}/24 dev u0", "link set u0 up", "addr add 203.0.113.2/25 dev ext",
                        "link set ext up"], NS["gw"])
        netns.ip_batch(["addr add 203.0.113.1/25 dev e0", "link set e0 up",
                        "route add 203.0.113.128/25 via 203.0.113.2"], NS["inet"])
        for vm, _, vsid, tap, mac, cas in VMS:
            prefix = "10.0.9" if vsid == 6002 else "10.0.0"
            netns.ip_batch([f"link set eth0 address {mac}", "link set eth0 up",
                            *(f"addr add {ca}/24 dev eth0" for ca in cas), f"route add default via {prefix}.1"],
                           NS[vm])
            netns.run(["ip", "-n", NS["hv"], "link", "set", tap, "up"])
        netns.run(["ip", "netns", "exec", NS["gw"], "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0",
                   "net.ipv4.conf.default.rp_filter=0"])
        # the hypervisor: vnet's desired state, as the host agent would program it
        sock = RtnlSocket(NS["hv"])
        outcome = asyncio.run(Reconciler(sock).reconcile(hv_state({"blue": 100, "red": 101}), hold=False))
        sock.close()
        assert outcome.ok, outcome.errors
        config = {"asn": 65000, "router_id": GW_PA, "provider_addresses": [GW_PA], "router_mac": RMAC,
                  "external": {"interfaces": ["ext"], "next_hop4": "203.0.113.1", "address4": "203.0.113.2"},
                  "public_prefixes": ["203.0.113.128/25"], "netns": NS["gw"], "sessions_interval": 1}
        gateway = GatewayThread(GatewayConfig.from_dict({**config, "tenants": [BLUE, RED]}), NS["gw"])
        gateway.call(lambda g: g.start(), timeout=120)
        records = tuple(LookupRecord(tenant, vsid, _ip(ca), mac, pa=_ip(HV_PA))
                        for _, tenant, vsid, _, mac, cas in VMS for ca in cas)
        gateway.call(lambda g: g.set_records(records), timeout=60)
        lab = Lab(gateway, config, records)
        yield lab
    finally:
        if lab is not None:
            lab.gateway.stop()
        elif gateway is not None:
            gateway.stop()
        for ns in NS.values():
            netns.destroy(ns)


def diagnostics() -> str:
    """What the kernels hold, printed when a check fails (the VM run is too slow to guess twice)."""
    cmds = [("hv", "ip -d link show"), ("hv", "ip rule"), ("hv", "ip route show vrf nvf-blue"),
            ("hv", "ip -s link show nvf-gre4"), ("gw", "ip -d link show"), ("gw", "ip rule"),
            ("gw", "ip route show table all"), ("gw", "ip neigh"), ("gw", "tc -s filter show block 7637"),
            ("gw", "ip -s link show nvf-gre4"), ("gw", "nft list ruleset"), ("gw", "cat /proc/net/nf_conntrack"),
            ("inet", "ip route")]
    out = []
    for node, cmd in cmds:
        r = netns.run(["ip", "netns", "exec", NS[node], *cmd.split()], check=False)
        out.append(f"== {node}: {cmd}\n{r.output[-3000:]}")
    return "\n".join(out)


def test_gateway_over_nvgre_with_vrfs(lab: Lab) -> None:
    """One test, several checks: the VM run is slow, the setup is shared (docs/lab.md)."""
    server = Server(NS["inet"], SERVER)
    vms = [Server(NS["vb"], ("10.0.0.5", 9000), "blue "), Server(NS["vr"], ("10.0.0.5", 9000), "red "),
           Server(NS["vr9"], ("10.0.9.9", 9000), "red9 ")]
    try:
        _checks(lab, vms)
    except AssertionError:
        print(diagnostics())
        raise
    finally:
        for v in (server, *vms):
            v.close()


def _checks(lab: Lab, vms: list[Server]) -> None:
    # 0. the tc hook and the filters read back from the kernel's dumps as they were wanted (vnet objects over
    # netlink: a later full pass finds nothing to change)
    ids = {n: lab.gateway.gateway.tenant_id(n) for n in ("blue", "red")}
    with RtnlSocket(NS["gw"]) as sock:
        seen = asyncio.run(observe(sock))
    assert {o for o in seen if isinstance(o, (Clsact, FlowerMark))} == {
        Clsact("nvf-gre4", TC_BLOCK), FlowerMark(TC_BLOCK, 5001, ids["blue"]), FlowerMark(TC_BLOCK, 6001, ids["red"]),
        FlowerMark(TC_BLOCK, 6002, ids["red"])}
    # 1. both tenants (same private addresses, same source port) leave with their own SNAT address
    blue, line_b = connect_retrying(NS["vb"], SERVER, ("10.0.0.6", 40000))
    red, line_r = connect_retrying(NS["vr"], SERVER, ("10.0.0.6", 40000))
    assert (line_b, line_r) == ("203.0.113.140:40000", "203.0.113.141:40000")
    # 2. floating IPs from outside reach the right tenant's VM; its outbound leaves with the floating IP
    for public, banner in (("203.0.113.131", "blue "), ("203.0.113.132", "red ")):
        s, line = connect_retrying(NS["inet"], (public, 9000))
        s.close()
        assert line.startswith(banner + "203.0.113.1:"), line
    s, line = connect_retrying(NS["vb"], SERVER, ("10.0.0.5", 0))
    s.close()
    assert line.startswith("203.0.113.131:")
    # 3. tenants cannot reach each other through the gateway: blue -> red's 10.0.9.9 goes nowhere
    with pytest.raises(ConnectionError, match="cannot reach"):
        connect_retrying(NS["vb"], ("10.0.9.9", 9000), tries=1)
    assert not [p for p in vms[2].seen if p[0] != "10.0.0.6"]
    # 4. a change to blue leaves red's rules (handles) and both established flows untouched
    red_rules = lab.nft_rules("red")
    changed = Tenant.from_dict({**BLUE, "floating_ips": [{"public": "203.0.113.133", "private": "10.0.0.5"}]})
    lab.gateway.call(lambda g: g.put_tenant(changed), timeout=60)
    assert lab.nft_rules("red") == red_rules
    assert echo(blue, "b") == "b" and echo(red, "r") == "r"
    s, line = connect_retrying(NS["inet"], ("203.0.113.133", 9000))
    s.close()
    assert line.startswith("blue ")
    # 5. a tenant added and deleted at run time (its own VRF, tc filter, NAT chains) disturbs neither the
    # other tenants' rules nor their established flows
    green = Tenant.from_dict({"name": "green", "route_targets": ["65000:3"],
                              "subnets": [{"vsid": 7001, "prefixes": ["10.0.0.0/24"]}],
                              "snat": [{"address": "203.0.113.142"}],
                              "floating_ips": [{"public": "203.0.113.134", "private": "10.0.0.5"}]})
    red_rules, blue_rules = lab.nft_rules("red"), lab.nft_rules("blue")

    def green_in_kernel() -> tuple[bool, bool, bool]:
        vrf = netns.run(["ip", "-n", NS["gw"], "link", "show", "nvf-green"], check=False).returncode == 0
        tc = netns.run(["ip", "netns", "exec", NS["gw"], "tc", "filter", "show", "block", "7637"]).output
        return bool(lab.nft_rules("green")), vrf, re.search(rf"handle {hex(7001)}\b", tc) is not None

    assert lab.gateway.call(lambda g: g.put_tenant(green), timeout=60) is True
    assert green_in_kernel() == (True, True, True)
    assert echo(blue, "b2") == "b2" and echo(red, "r2") == "r2"
    lab.gateway.call(lambda g: g.delete_tenant("green"), timeout=60)
    assert green_in_kernel() == (False, False, False)
    assert (lab.nft_rules("red"), lab.nft_rules("blue")) == (red_rules, blue_rules)
    assert echo(blue, "b3") == "b3" and echo(red, "r3") == "r3"
    # 6. per-tenant counters and sessions
    status = {st.name: st for st in lab.gateway.call(lambda g: g.status())}
    assert status["blue"].counters.packets_out > 0 and status["red"].counters.packets_in > 0
    # sessions: the conntrack sampler's count (every second here), not a dump per call
    wait_for(lambda: sessions(lab.gateway).get("red", 0) >= 1, 10, "red's NAT sessions counted")
    blue.close()
    red.close()


def sessions(gateway: GatewayThread) -> dict[str, int]:
    """Conntrack entries per tenant, as the gateway's sampler last counted them (entries whose mark is the
    tenant's id)."""
    return {st.name: st.sessions for st in gateway.call(lambda g: g.status())}


def test_api_tenants_and_their_ids_survive_restarts_with_live_flows(lab: Lab, tmp_path) -> None:
    """Blue and red created through the API (the configuration names no tenant), a flow through red, blue
    deleted, the gateway restarted: red keeps its id (from the sorted names it would get blue's lower one),
    so its flow's conntrack entries, whose zone and mark are red's id, still belong to red and the flow
    keeps working; created tenants survive the restart, a deleted one stays deleted."""
    target = (SERVER[0], SERVER[1] + 1)  # the first test's server may still hold its port (a blocked accept)
    server = Server(NS["inet"], target)
    config = GatewayConfig.from_dict({**lab.config, "tenants": [], "state_dir": str(tmp_path / "state")})

    def restart() -> GatewayThread:
        lab.gateway.stop()
        lab.gateway = GatewayThread(config, NS["gw"])
        lab.gateway.call(lambda g: g.start(), timeout=120)
        lab.gateway.call(lambda g: g.set_records(lab.records), timeout=60)  # the reflectors' part
        return lab.gateway

    try:
        gw = restart()
        assert gw.gateway.tenants == {}
        for body in (BLUE, RED):
            assert gw.call(lambda g, b=body: g.put_tenant(Tenant.from_dict(b)), timeout=60) is True
        ids = {n: gw.gateway.tenant_id(n) for n in ("blue", "red")}
        assert ids["blue"] < ids["red"]
        red, line = connect_retrying(NS["vr"], target, ("10.0.0.6", 0))
        assert line.startswith("203.0.113.141:")
        blue, line = connect_retrying(NS["vb"], target, ("10.0.0.6", 0))
        assert line.startswith("203.0.113.140:")
        blue.close()
        wait_for(lambda: sessions(gw).get("red", 0) >= 1, 10, "red's flow counted under red's id")

        gw = restart()  # the API tenants come back with their ids
        assert set(gw.gateway.tenants) == {"blue", "red"}
        assert {n: gw.gateway.tenant_id(n) for n in ids} == ids
        assert echo(red, "r1") == "r1"
        gw.call(lambda g: g.delete_tenant("blue"), timeout=60)

        gw = restart()  # blue deleted: red alone, still with its own id
        assert set(gw.gateway.tenants) == {"red"} and gw.gateway.tenant_id("red") == ids["red"]
        assert netns.run(["ip", "-n", NS["gw"], "link", "show", "nvf-blue"], check=False).returncode != 0
        assert echo(red, "r2") == "r2"  # zone and mark of the flow's entry are red's id: still red's
        wait_for(lambda: sessions(gw).get("red", 0) >= 1, 10, "red's flow still counted under red's id")
        s, line = connect_retrying(NS["vr"], target, ("10.0.0.5", 0))  # new flows too (floating IP)
        s.close()
        assert line.startswith("203.0.113.132:")
        red.close()
    except AssertionError:
        print(diagnostics())
        raise
    finally:
        server.close()
