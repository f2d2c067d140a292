"""JSON views of the agent's values: the REST API's response bodies (docs/agent.md#rest-api).

A routing domain's or port's view is exactly the body PUT accepts (hostagent/state.py's encoding), plus a
read-only `status` object that PUT ignores, as Kubernetes does with spec and status: `GET` a port, edit it,
`PUT` it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nvfabric.hostagent.state import port_to_dict, routing_domain_to_dict
from nvfabric.hostagent.trace import Arrival, Trace
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import vrf_name
from nvfabric.vnet.model import LookupRecord, Port, RemotePrefix, RoutingDomain

STATUS = "status"  # the read-only key of routing domain and port views


def routing_domain(domain: RoutingDomain, catalog: Catalog) -> dict[str, Any]:
    vsids = {s.vsid for s in domain.subnets}
    ports = sorted(p.name for p in catalog.ports.values() if p.vsid in vsids)
    return {**routing_domain_to_dict(domain), STATUS: {"vrf": vrf_name(domain.name), "ports": ports}}


def port(p: Port, catalog: Catalog, records: list[LookupRecord],
         drops: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, Any]:
    """`drops`: packets port security dropped, by port name and reason (Agent.port_drops)."""
    found = catalog.subnet(p.vsid)
    # active: this host routes the port (it has a local record); inactive after its MAC moved elsewhere
    active = any(r.local and r.port == p.name for r in records)
    # null when the port is not guarded (port_security false) or its counters are not there yet
    dropped = dict((drops or {}).get(p.name, {})) or None
    return {**port_to_dict(p), STATUS: {"routing_domain": found[0].name if found else None, "active": active,
                                        "port_security_drops": dropped}}


def lookup_record(r: LookupRecord) -> dict[str, Any]:
    return {"routing_domain": r.routing_domain, "vsid": r.vsid, "ca": str(r.ca), "mac": r.mac,
            "pa": str(r.pa) if r.pa is not None else None, "local": r.local, "port": r.port}


def customer_routes(domain: RoutingDomain, prefixes: list[RemotePrefix]) -> list[dict[str, Any]]:
    """HNV's customer routes of one routing domain: each subnet on-link, the configured ones, then the learned
    prefixes."""
    out: list[dict[str, Any]] = [
        {"routing_domain": domain.name, "prefix": str(prefix), "vsid": s.vsid, "next_hop": "on-link", "pa": None,
         "origin": "subnet"}
        for s in domain.subnets for prefix in s.prefixes
    ]
    for r in domain.customer_routes:
        found = next((s for s in domain.subnets if r.next_hop is not None and s.prefix_of(r.next_hop)), None)
        out.append({"routing_domain": domain.name, **r.to_dict(), "vsid": found.vsid if found else None, "pa": None,
                    "origin": "config"})
    out += [
        {"routing_domain": p.routing_domain, "prefix": str(p.prefix), "vsid": p.vsid,
         "next_hop": str(p.gateway_ip) if p.gateway_ip else None, "pa": str(p.pa), "origin": "bgp",
         "router_mac": p.router_mac}
        for p in prefixes if p.routing_domain == domain.name
    ]
    return out


def trace(t: Trace) -> dict[str, Any]:
    return {"routing_domain": t.routing_domain, "src": str(t.src), "dst": str(t.dst), "verdict": str(t.verdict),
            "reason": t.reason, "vsid": t.vsid, "gre_key": t.vsid << 8 if t.vsid is not None else None,
            "pa": str(t.pa) if t.pa is not None else None, "mac": t.mac, "device": t.device, "route": t.route,
            "src_vsid": t.src_vsid, "ingress": t.ingress, "drops": t.drops}


def arrival(a: Arrival) -> dict[str, Any]:
    return {"pa": str(a.pa), "gre_key": a.key, "vsid": a.key >> 8, "flow_id": a.key & 0xFF, "src": str(a.src),
            "dst": str(a.dst), "verdict": a.verdict, "reason": a.reason, "counter": a.counter,
            "routing_domain": a.routing_domain, "inner": trace(a.inner) if a.inner is not None else None}
