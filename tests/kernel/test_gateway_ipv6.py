"""IPv6 out of the tenants through the gateway (VM phase, default topology): without NAT for a tenant with a
global prefix, NAT66 for a tenant configured with an IPv6 SNAT address.

The default topology with lab/fabric.py's reflectors, agents and tenants, gw1 as the gateway, FRR on `internet`
as the upstream router (eBGP over IPv4 and over IPv6, nothing static), and one more tenant, green, whose VM
g1 on hv1 has only a global address, 2001:db8:b00::11 in green's public prefix 2001:db8:b00::/64. Blue's
b2 (fd00:b::12, unique local) leaves by NAT66 as 2001:db8:113::140. Checked: the upstream's BGP table and
kernel have green's prefix and blue's NAT66 address towards gw1; the internet server sees g1's own address
and b2 as the NAT66 address; the internet reaches g1 by its own address (no NAT either way).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.strongswan import Charon, CharonFiles, SiteSa
from nvfabric.gateway.tenants import Tenant
from nvfabric.lab.gateway_scene import frr_upstream_conf, tenant
from nvfabric.lab.fabric import ASN, BLUE, Fabric, RED, RR, wait_for
from nvfabric.lab import netns, runner
from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.topology import load
from nvfabric.lab.daemons import GatewayThread, LoopThread
from nvfabric.lab.probe import Server, connect_retrying
from nvfabric.lab.peers import Frr, Lab
from nvfabric.vnet.model import Port, RoutingDomain

pytestmark = pytest.mark.kernel

GW_PA, GW4, GW6 = "198.51.100.21", "203.0.113.21", "2001:db8:113::21"
UP4, UP6 = "203.0.113.1", "2001:db8:113::1"
SERVER6 = (UP6, 8080)
NAT66 = "2001:db8:113::140"
GREEN_PREFIX = "2001:db8:b00::/64"
G1 = ("g1", "hv1", "02:00:00:00:0c:01", "2001:db8:b00::11")
GREEN = RoutingDomain.from_dict({"name": "green", "route_targets": ["65000:3"],
                                 "subnets": [{"vsid": 7001, "prefixes": [GREEN_PREFIX]}]})

FRR_CONF = frr_upstream_conf(UP4, ASN, (GW4,), (GW6,))


def upstream_v6(frr: Frr) -> dict[str, list[str]]:
    """prefix -> the next hops of the upstream's best path (`show bgp ipv6 unicast json`)."""
    data = frr.json("show bgp ipv6 unicast")
    return {prefix: sorted(h.get("ip", "") for p in paths if p.get("bestpath") or p.get("best")
                           for h in p.get("nexthops", []) if h.get("scope", "global") == "global")
            for prefix, paths in (data.get("routes") or {}).items()}


def plug_green(fab: Fabric) -> str:
    """g1: a VM of green on hv1 with only its global address (the fabric's VMs are blue and red)."""
    name, host, mac, ca = G1
    ns = f"{fab.topology.name}.vm-{name}"
    fab.vm_ns[name] = ns  # Fabric.close destroys it
    netns.create(ns)
    netns.ip_batch([netns.veth_line(fab.ns(host), f"tap-{name}", ns, "eth0")])
    netns.ip_batch([f"link set eth0 address {mac}", "link set lo up", "link set eth0 up",
                    f"addr add {ca}/64 dev eth0 nodad", "route add ::/0 via 2001:db8:b00::1"], ns)
    netns.run(["ip", "-n", fab.ns(host), "link", "set", f"tap-{name}", "up"])
    agent = fab.agents[host]
    agent.call(lambda a: a.put_routing_domain(GREEN))
    agent.call(lambda a: a.put_port(Port(name, f"tap-{name}", mac, 7001, (ipaddress.ip_address(ca),))))
    return ns


@pytest.fixture(scope="module")
def six(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fabric, GatewayThread, Frr, str]]:
    topology = load(DEFAULT_TOPOLOGY)
    runner.up(topology)
    fab = Fabric(topology)
    lab = Lab(tmp=Path(tmp_path_factory.mktemp("frr")), prefix="")
    gw = None
    try:
        # FRR first, while the VM is idle (its zebra must come up within peers.Frr's 10 s; it did not once,
        # started while the agents and reflectors were converging)
        frr = Frr(lab, fab.ns("internet"), "upstream", FRR_CONF)
        fab.up()
        g1 = plug_green(fab)
        blue = tenant(BLUE, "203.0.113.140", "203.0.113.131", "10.0.0.11").as_dict()
        blue["snat"].append({"address": NAT66})  # NAT66 for blue's fd00:b::/64
        green = {"name": "green", "route_targets": ["65000:3"],
                 "subnets": [{"vsid": 7001, "prefixes": [GREEN_PREFIX]}], "public_prefixes": [GREEN_PREFIX]}
        config = GatewayConfig.from_dict({
            "asn": ASN, "router_id": GW_PA, "provider_addresses": [GW_PA],
            "route_reflectors": [{"address": a} for a in RR.values()],
            "external": {"interfaces": ["eth2"], "next_hop4": UP4, "next_hop6": UP6, "address4": GW4,
                         "address6": GW6},
            "upstream": [{"address": UP4, "asn": 64496}, {"address": UP6, "asn": 64496}],
            # the provider's ranges: the tenants' public addresses and green's prefix lie inside
            "public_prefixes": ["203.0.113.128/25", "2001:db8:113::/64", "2001:db8:b00::/48"],
            "netns": fab.ns("gw1"),
            "tenants": [blue, tenant(RED, "203.0.113.141", "203.0.113.132", "10.0.0.12").as_dict(), green]})
        gw = GatewayThread(config, fab.ns("gw1"))
        gw.call(lambda g: g.start(), timeout=120)
        # the hosts' IPv6 default routes into blue and green, the gateway's return routes for b2 and g1
        for host, domain in (("hv2", "blue"), ("hv1", "green")):
            wait_for(lambda h=host, domain=domain: _default6(fab, h, domain), 90, f"{domain}'s ::/0 on {host}")
        for ca in ("fd00:b::12", G1[3]):
            wait_for(lambda ca=ca: any(str(r.ca) == ca for r in gw.gateway.records), 60,
                              f"the gateway learns {ca}")
        yield fab, gw, frr, g1
    finally:
        if gw is not None:
            gw.stop()
        lab.close()
        fab.close()
        runner.down(topology.name)


def _default6(fab: Fabric, host: str, domain: str) -> bool:
    out = netns.run(["ip", "-6", "-n", fab.ns(host), "route", "show", "vrf", f"nvf-{domain}"], check=False).output
    return any(line.startswith("default") and "encap" in line for line in out.splitlines())


def _diagnostics(fab: Fabric, frr: Frr) -> str:
    out = [frr.vtysh("show bgp ipv6 unicast"), frr.vtysh("show bgp summary")]
    for node, cmd in (("gw1", "ip -6 rule"), ("gw1", "ip -6 route show table all"), ("internet", "ip -6 route"),
                      ("gw1", "nft list ruleset"), ("hv1", "ip -6 route show vrf nvf-green")):
        out.append(f"== {node}: {cmd}\n" + netns.run(["ip", "netns", "exec", fab.ns(node), *cmd.split()],
                                                     check=False).output[-3000:])
    return "\n".join(out)


def test_global_prefix_leaves_without_nat_and_nat66_with_its_address(six) -> None:
    fab, gw, frr, g1 = six
    server = Server(fab.ns("internet"), SERVER6)
    vm = Server(g1, ("::", 9000), "g1 ")
    try:
        # the upstream learned green's prefix and blue's NAT66 address from gw1, and installed them
        wait_for(lambda: upstream_v6(frr).get(GREEN_PREFIX) == [GW6]
                          and upstream_v6(frr).get(f"{NAT66}/128") == [GW6], 60,
                          "the upstream learns green's prefix and blue's NAT66 address")
        kernel = json.loads(netns.run(["ip", "-6", "-j", "-n", fab.ns("internet"), "route", "show", "proto",
                                       "bgp"]).output)
        assert {(r["dst"], r.get("gateway")) for r in kernel} >= {(GREEN_PREFIX, GW6), (NAT66, GW6)}, kernel
        # g1 leaves with its own global address: no NAT
        s, line = connect_retrying(g1, SERVER6)
        s.close()
        assert line.rsplit(":", 1)[0] == G1[3], line
        # the internet reaches g1 by its own address, and g1 sees the client's own address
        s, line = connect_retrying(fab.ns("internet"), (G1[3], 9000))
        s.close()
        assert line.startswith("g1 ") and line[3:].rsplit(":", 1)[0] == UP6, line
        # blue's b2 (unique local fd00:b::12) leaves by NAT66 as blue's IPv6 SNAT address
        s, line = connect_retrying(fab.vm_ns["b2"], SERVER6)
        s.close()
        assert line.rsplit(":", 1)[0] == NAT66, line
        assert not [p for p in server.seen if p[0].startswith("fd00:")]
    except AssertionError:
        print(_diagnostics(fab, frr))
        raise
    finally:
        server.close()
        vm.close()


# Sites over an IPv6 underlay, in one namespace behind the internet router: green's IPsec site (IPv6 inside
# too: green's prefix to the site's 2001:db8:5e::/64) and blue's GRE site (ip6gre, IPv4 inside)
SITE_LINK, SITE_ROUTER = "2001:db8:5::/64", "2001:db8:5::1"
IPSEC6, GRE6, GRE6_KEY = "2001:db8:5::50", "2001:db8:5::60", 77
IPSEC6_HOST, GRE6_HOST = ("2001:db8:5e::10", 9000), ("10.60.0.10", 9000)
PSK6 = "green-site-key-0123456789"


def site6_swanctl(site: str) -> str:
    """What the site's administrator writes: policy-based, its prefix to green's."""
    return f"""connections {{
    gateway {{
        version = 2
        local_addrs = {IPSEC6}
        remote_addrs = {GW6}
        proposals = aes256gcm16-prfsha384-ecp384
        local {{
            auth = psk
            id = {IPSEC6}
        }}
        remote {{
            auth = psk
            id = {GW6}
        }}
        children {{
            gateway {{
                local_ts = 2001:db8:5e::/64
                remote_ts = {GREEN_PREFIX}
                esp_proposals = aes256gcm16
            }}
        }}
    }}
}}
secrets {{
    ike-gateway {{
        id = {GW6}
        secret = {PSK6}
    }}
}}
"""


def _established(sa: SiteSa | None) -> bool:
    return sa is not None and sa.state == "ESTABLISHED" and any(c.state == "INSTALLED" for c in sa.children)


def with_sites(gw: GatewayThread, name: str, sites: list[dict]) -> Tenant:
    return Tenant.from_dict({**gw.gateway.tenants[name].as_dict(), "sites": sites})


def test_sites_over_an_ipv6_underlay(six) -> None:
    fab, gw, frr, g1 = six
    for module in ("xfrm_interface", "ip6_gre"):
        netns.run(["modprobe", module], check=False)
    site = f"{fab.topology.name}.site6"
    inet = fab.ns("internet")
    netns.create(site)
    thread = charon = None
    servers: list[Server] = []
    try:
        netns.ip_batch([netns.veth_line(inet, "s6", site, "e0")])
        netns.ip_batch(["link set s6 up", f"addr add {SITE_ROUTER}/64 dev s6 nodad"], inet)
        netns.run(["ip", "netns", "exec", inet, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        netns.ip_batch(["link set lo up", f"addr add {IPSEC6_HOST[0]}/128 dev lo", f"addr add {GRE6_HOST[0]}/32 dev lo",
                        "link set e0 up", f"addr add {IPSEC6}/64 dev e0 nodad", f"addr add {GRE6}/64 dev e0 nodad",
                        f"route add ::/0 via {SITE_ROUTER}",
                        f"link add gs6 type ip6gre local {GRE6} remote {GW6} key {GRE6_KEY} hoplimit 64",
                        "link set gs6 up", "route add 10.0.0.0/24 dev gs6"], site)
        # the gateway reaches the sites' link through the internet router
        netns.run(["ip", "-6", "-n", fab.ns("gw1"), "route", "add", SITE_LINK, "via", UP6])
        thread = LoopThread(site)
        charon = Charon(site, CharonFiles.named(f"{fab.topology.name}-site6"))
        thread.run(charon.start(), timeout=60)
        conf = charon.files.directory / "swanctl.conf"
        conf.write_text(site6_swanctl(site))
        netns.run(["ip", "netns", "exec", site, "swanctl", "--load-all", "--noprompt", "--file", str(conf),
                   "--uri", f"unix://{charon.files.socket}"])
        servers = [Server(site, IPSEC6_HOST, "ipsec6 "), Server(site, GRE6_HOST, "gre6 ")]
        # green's IPsec site over IPv6: g1 reaches the site's host with its own address, through the SA
        gw.call(lambda g: g.put_tenant(with_sites(gw, "green", [
            {"name": "office6", "remote_address": IPSEC6, "psk": PSK6, "prefixes": ["2001:db8:5e::/64"]}])),
            timeout=120)
        wait_for(lambda: _established(gw.call(lambda g: g.site_sas()).get("green.office6")), 90, "green's site SA")
        s, line = connect_retrying(g1, IPSEC6_HOST)
        s.close()
        assert line.startswith("ipsec6 ") and line[7:].rsplit(":", 1)[0] == G1[3], line
        (status,) = gw.call(lambda g: g.site_status("green"))
        assert (status["sa"]["state"], status["sa"]["remote"]) == ("ESTABLISHED", IPSEC6), status
        assert any(c["bytes_out"] > 0 and c["bytes_in"] > 0 for c in status["sa"]["children"]), status
        # blue's GRE site over IPv6 (ip6gre): b2 reaches it unNATed; red's r1, with b2's very address, does not
        gw.call(lambda g: g.put_tenant(with_sites(gw, "blue", [
            {"name": "depot6", "kind": "gre", "remote_address": GRE6, "key": GRE6_KEY,
             "prefixes": ["10.60.0.0/24"]}])), timeout=120)
        s, line = connect_retrying(fab.vm_ns["b2"], GRE6_HOST)
        s.close()
        assert line.startswith("gre6 10.0.0.12:"), line
        with pytest.raises(ConnectionError):
            connect_retrying(fab.vm_ns["r1"], GRE6_HOST, tries=1)
        # both sites removed: neither host is reached any more
        for name in ("green", "blue"):
            gw.call(lambda g, name=name: g.put_tenant(with_sites(gw, name, [])), timeout=120)
        with pytest.raises(ConnectionError):
            connect_retrying(fab.vm_ns["b2"], GRE6_HOST, tries=1)
        with pytest.raises(ConnectionError):
            connect_retrying(g1, IPSEC6_HOST, tries=1)
    except (AssertionError, ConnectionError):
        print(_diagnostics(fab, frr))
        for node, cmd in ((site, "ip -s xfrm state"), (site, "ip -6 route"), (site, "ip -s -d link show gs6"),
                          (fab.ns("gw1"), "ip -s -d link show"), (fab.ns("gw1"), "ip route show vrf nvf-blue"),
                          (fab.ns("gw1"), "ip -6 route"), (fab.ns("gw1"), "nft list table inet nvfabric"),
                          (fab.ns("internet"), "ip -6 neigh")):
            print(f"== {node}: {cmd}\n", netns.run(["ip", "netns", "exec", node, *cmd.split()], check=False).output)
        raise
    finally:
        for server in servers:
            server.close()
        if charon is not None and thread is not None:
            thread.run(charon.stop(), timeout=30)
        if thread is not None:
            thread.close()
        netns.run(["ip", "-6", "-n", fab.ns("gw1"), "route", "del", SITE_LINK], check=False)
        netns.destroy(site)
