"""The gateway on the default topology, for the demo and the kernel tests: lab/fabric.py's fabric
(reflectors, agents on hv1-hv3, tenants blue and red with overlapping addresses) plus the gateway on gw1.

The reflectors are the fabric's (`nvfabric rr`, which accepts any client of the fabric's PA prefix). In the
demo, `internet` routes the public pool 203.0.113.128/25 to gw1 statically (what the upstream router does
once the gateway announces it; the failover and IPv6 kernel tests run FRR for that instead).
"""

from __future__ import annotations

from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.tenants import Tenant
from nvfabric.lab import netns
from nvfabric.lab.daemons import GatewayThread
from nvfabric.lab.fabric import BLUE, DHCP_VMS, HV, RED, VMS, Fabric, bound_config, wait_for
from nvfabric.lab.probe import Server, connect_retrying
from nvfabric.lab.topology import Topology
from nvfabric.vnet.model import RoutingDomain

GW1 = "198.51.100.21"
SERVER = ("203.0.113.1", 8080)
PUBLIC_POOL = "203.0.113.128/25"


def tenant(domain: RoutingDomain, snat: str, fip: str, private: str) -> Tenant:
    """A gateway tenant for one of the fabric's routing domains: its SNAT address and one floating IP."""
    body = {"name": domain.name, "route_targets": list(domain.route_targets),
            "subnets": [{"vsid": s.vsid, "prefixes": [str(p) for p in s.prefixes]} for s in domain.subnets],
            "snat": [snat], "floating_ips": [{"public": fip, "private": private}]}
    return Tenant.from_dict(body)


TENANTS = (tenant(BLUE, "203.0.113.140", "203.0.113.131", "10.0.0.11"),  # b1's floating IP
           tenant(RED, "203.0.113.141", "203.0.113.132", "10.0.0.12"))  # r1's (b2's address in blue)


def gateway_config(fab: Fabric) -> GatewayConfig:
    """gw1's bound configuration (lab/topologies/hnv/gw1.yaml: the tenants of TENANTS, the pool PUBLIC_POOL),
    run as a thread of this process in gw1's namespace, keeping no state across runs."""
    config = bound_config(fab.topology, "gw1")
    config.pop("state_dir", None)
    return GatewayConfig.from_dict({**config, "netns": fab.ns("gw1")})


def frr_upstream_conf(router_id: str, gateway_asn: int, peers4: tuple[str, ...] = (), peers6: tuple[str, ...] = (),
                      timers: tuple[int, int] | None = None) -> str:
    """bgpd.conf for FRR as the gateways' upstream router (AS 64496): eBGP with each gateway address, IPv4
    unicast with the IPv4 peers and IPv6 unicast with the IPv6 ones; `timers` (keepalive, hold), else FRR's
    defaults (60 s, 180 s; the session uses the lower of the two sides' hold times)."""
    lines = ["hostname upstream", "router bgp 64496", f" bgp router-id {router_id}", " no bgp ebgp-requires-policy"]
    for peer in (*peers4, *peers6):
        lines.append(f" neighbor {peer} remote-as {gateway_asn}")
        if timers is not None:
            lines.append(f" neighbor {peer} timers {timers[0]} {timers[1]}")
    lines += [" address-family ipv4 unicast", *(f"  neighbor {p} activate" for p in peers4),
              *(f"  no neighbor {p} activate" for p in peers6), " exit-address-family"]
    if peers6:
        lines += [" address-family ipv6 unicast", *(f"  neighbor {p} activate" for p in peers6), " exit-address-family"]
    return "\n".join(lines) + "\n"


def default_via(fab: Fabric, host: str, domain: str = "blue") -> bool:
    out = netns.run(["ip", "-n", fab.ns(host), "route", "show", "vrf", f"nvf-{domain}"], check=False).output
    return any(line.startswith("default") and "encap" in line for line in out.splitlines())


def _seen(ns: str, dst: tuple[str, int], src: tuple[str, int] | None = None) -> str:
    """The first line a server answers (the address it saw us as), or '' when it cannot be reached."""
    try:
        sock, line = connect_retrying(ns, dst, src)
    except OSError:
        return ""
    sock.close()
    return line


def gateway_scene(topology: Topology) -> list[tuple[str, str, str, str, str]]:
    """For lab/demo.py: both tenants reach the internet server through gw1, which sees each tenant's public
    address, and a floating IP is reached from outside; the VMs lease their addresses by DHCP (a VM without a
    lease shows as "no answer"). Rows: (from, to, what, expected, observed)."""
    fab = Fabric(topology, vms=DHCP_VMS)
    gw: GatewayThread | None = None
    servers: list[Server] = []
    try:
        fab.up()
        fab.lease_all()
        netns.run(["ip", "-n", fab.ns("internet"), "route", "add", PUBLIC_POOL, "via", "203.0.113.21"])
        gw = GatewayThread(gateway_config(fab), fab.ns("gw1"))
        gw.call(lambda g: g.start(), timeout=120)
        for host in HV:
            wait_for(lambda h=host: default_via(fab, h), 60, f"the gateway's default route on {host}")
        wait_for(lambda: len(gw.gateway.records) >= len([ca for vm in VMS for ca in vm.cas if ":" not in ca]),
                          60, "the gateway learns the tenants' CAs")
        servers = [Server(fab.ns("internet"), SERVER), Server(fab.vm_ns["b1"], ("10.0.0.11", 9000), "b1 ")]
        rows = []
        for vm, src, want, what in (
            ("b2", "10.0.0.12", "203.0.113.140", "blue b2 10.0.0.12 -> internet: blue's SNAT address"),
            ("r1", "10.0.0.12", "203.0.113.132", "red r1 10.0.0.12 (same address) -> internet: its floating IP"),
            ("r3", "10.0.0.13", "203.0.113.141", "red r3 -> internet: red's SNAT address"),
            ("b1", "10.0.0.11", "203.0.113.131", "blue b1 -> internet: its floating IP"),
        ):
            seen = _seen(fab.vm_ns[vm], SERVER, (src, 0)).split(":")[0]
            rows.append((vm, f"{SERVER[0]}:{SERVER[1]}", what, want, seen or "no answer"))
        seen = _seen(fab.ns("internet"), ("203.0.113.131", 9000))
        rows.append(("internet", "203.0.113.131:9000", "floating IP from outside -> blue b1",
                     "b1", seen.split(" ")[0] if seen else "no answer"))
        return rows
    finally:
        for server in servers:
            server.close()
        if gw is not None:
            gw.stop()
        fab.close()
        netns.run(["ip", "-n", fab.ns("internet"), "route", "del", PUBLIC_POOL], check=False)

