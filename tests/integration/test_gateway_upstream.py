"""The gateway's eBGP upstream against FRR (this machine's kernel): the upstream table follows the tenants.

FRR (bgpd + zebra) in an `internet` namespace is the upstream router, AS 64496; the gateway, AS 65001, runs
NAT-only (no VRF here) in its namespace. FRR must learn each tenant's SNAT address and floating IPs as /32
(and the IPv6 ones as /128) with the gateway's external address as next hop, install them, lose the
deleted tenant's, and lose all of them when the gateway stops.
"""

from __future__ import annotations

from typing import Any

from nvfabric.gateway.config import GatewayConfig
from nvfabric.lab.gateway_scene import frr_upstream_conf
from nvfabric.lab import netns
from nvfabric.lab.daemons import GatewayThread
from tests.integration.conftest import need
from nvfabric.lab.peers import Frr, Lab, wait_for

GW4, GW6, UP4, UP6 = "203.0.113.2", "2001:db8:113::2", "203.0.113.1", "2001:db8:113::1"


def tenant(name: str, vsid: int, snat: str, fip: str, snat6: str | None = None) -> dict[str, Any]:
    return {"name": name, "route_targets": ["65001:1"],
            "subnets": [{"vsid": vsid, "prefixes": ["10.0.0.0/24", "fd00:1::/64"]}],
            "snat": [snat] + ([snat6] if snat6 else []), "floating_ips": [{"public": fip, "private": "10.0.0.5"}]}


FRR_CONF = frr_upstream_conf(UP4, 65001, (GW4,), (GW6,), timers=(3, 9))


def frr_routes(frr: Frr, family: str) -> dict[str, list[str]]:
    """prefix -> next hops FRR selected, from `show bgp <family> unicast json`."""
    data = frr.json(f"show bgp {family} unicast")
    out = {}
    for prefix, paths in (data.get("routes") or {}).items():
        best = [p for p in paths if p.get("bestpath") or p.get("best")]
        out[prefix] = sorted(h.get("ip", "") for p in best for h in p.get("nexthops", []))
    return out


def as_path(frr: Frr, prefix: str) -> str:
    data = frr.json(f"show bgp ipv4 unicast {prefix}")
    return next((p.get("aspath", {}).get("string", "") for p in data.get("paths", [])), "")


def test_upstream_learns_and_forgets_the_tenants_public_addresses(lab: Lab) -> None:
    need("/usr/lib/frr/bgpd", "/usr/lib/frr/zebra")
    gw, inet = lab.namespace("gw"), lab.namespace("inet")
    lab.link(gw, [f"{GW4}/24", f"{GW6}/64"], inet, [f"{UP4}/24", f"{UP6}/64"])
    frr = Frr(lab, inet, "upstream", FRR_CONF)
    ext = next(line.split(":")[1].strip().split("@")[0]
               for line in netns.run(["ip", "-n", gw, "-o", "link"]).output
               .splitlines() if "lo:" not in line)
    config = GatewayConfig.from_dict({
        "asn": 65001, "router_id": "198.51.100.21",
        "external": {"interfaces": [ext], "next_hop4": UP4, "address4": GW4, "address6": GW6},
        "upstream": [{"address": UP4, "asn": 64496}, {"address": UP6, "asn": 64496}],
        "tenants": [tenant("blue", 5001, "203.0.113.140", "203.0.113.131", "2001:db8:113::140"),
                    tenant("red", 6001, "203.0.113.141", "203.0.113.132")]})
    gateway = GatewayThread(config, gw)
    try:
        gateway.call(lambda g: g.start())
        want4 = {f"203.0.113.{a}/32": [GW4] for a in (131, 132, 140, 141)}
        wait_for(lambda: frr_routes(frr, "ipv4") == want4, 30, what="FRR learns the four IPv4 public addresses")
        wait_for(lambda: list(frr_routes(frr, "ipv6")) == ["2001:db8:113::140/128"], 30,
                 what="FRR learns blue's NAT66 address")
        # installed in the upstream's kernel, towards the gateway
        out = netns.run(["ip", "-n", inet, "route", "show", "proto", "bgp"]).output
        assert "203.0.113.131 " in out and f"via {GW4}" in out
        # isolated from the fabric (gateway/role.py): the same addresses, our AS prepended, so that FRR would
        # prefer another gateway's; then back to normal
        gateway.call(lambda g: g._upstream.sync(list(g.tenants.values()), depreferred=True))
        wait_for(lambda: as_path(frr, "203.0.113.131/32") == "65001 65001 65001 65001", 30,
                 what="the depreferred announcement's AS path")
        assert frr_routes(frr, "ipv4") == want4
        gateway.call(lambda g: g._upstream.sync(list(g.tenants.values())))
        wait_for(lambda: as_path(frr, "203.0.113.131/32") == "65001", 30, what="the normal AS path again")
        # a tenant deleted: its addresses withdrawn, the other tenant's kept
        gateway.call(lambda g: g.delete_tenant("red"))
        wait_for(lambda: frr_routes(frr, "ipv4") == {f"203.0.113.{a}/32": [GW4] for a in (131, 140)}, 30,
                 what="red's addresses withdrawn")
        # a floating IP moved: the old one withdrawn, the new one announced
        moved = {**tenant("blue", 5001, "203.0.113.140", "203.0.113.133", "2001:db8:113::140")}
        from nvfabric.gateway.tenants import Tenant
        gateway.call(lambda g: g.put_tenant(Tenant.from_dict(moved)))
        wait_for(lambda: set(frr_routes(frr, "ipv4")) == {"203.0.113.133/32", "203.0.113.140/32"}, 30,
                 what="the moved floating IP follows")
        # the gateway stops: the upstream forgets all of it (session closed, no graceful restart)
        gateway.call(lambda g: g.stop())
        wait_for(lambda: not frr_routes(frr, "ipv4") and not frr_routes(frr, "ipv6"), 30,
                 what="everything withdrawn when the gateway stops")
    finally:
        gateway.close()
