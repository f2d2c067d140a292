"""RFC 4456 reflection rules, pure: who gets a route, and which received routes are loops."""

from __future__ import annotations

from ipaddress import IPv4Address

from nvfabric.bgp.routes import PathAttributes


def reflects_to(source_is_client: bool, target_is_client: bool) -> bool:
    """RFC 4456 section 6: a route from a client goes to every peer (clients and non-clients, the source
    excepted); a route from a non-client goes to the clients only (non-clients form a full mesh)."""
    return source_is_client or target_is_client


def loop_reason(attrs: PathAttributes, router_id: IPv4Address, cluster_id: IPv4Address) -> str | None:
    """RFC 4456 section 8: a route carrying our own BGP identifier as ORIGINATOR_ID, or our CLUSTER_ID in
    its CLUSTER_LIST, has been round a loop and is ignored (treated as withdrawn from that peer)."""
    if attrs.originator_id == router_id:
        return f"ORIGINATOR_ID {router_id} is our own BGP identifier"
    if cluster_id in attrs.cluster_list:
        return f"our CLUSTER_ID {cluster_id} is in CLUSTER_LIST"
    return None
