"""The reflector's REST API and Prometheus metrics, served by service/rest.py's app factory like the agent's
and the gateway's: the same bearer token (`api.token`) and the same JSON error body.

GET  /v1/summary                      identity, sessions by state, routes per family, counters
GET  /v1/neighbors                    one object per peer (configured or dynamic, seen so far)
GET  /v1/routes?family=&vsid=&rt=&mac=&ip=&limit=   best routes, decoded for display from their bytes
POST /v1/reload                       re-read the configuration file (as SIGHUP); 400 names the bad field
GET  /metrics                         Prometheus text format (without the token unless metrics_token)

Everything is read at request time from the reflector (no copies kept up to date on the hot path); the
metrics registry belongs to the app (no process-wide default registry).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from nvfabric.bgp import fsm, wire
from nvfabric.bgp.config import ConfigError
from nvfabric.bgp.mac import Mac, MacError
from nvfabric.bgp.reflector.config import route_target_bytes
from nvfabric.bgp.reflector.daemon import Reflector, ReloadResult
from nvfabric.bgp.reflector.table import AttrSet
from nvfabric.bgp.routes import Family, MacIpKey, PrefixKey, UnicastKey
from nvfabric.service.rest import ApiError, application

FAMILY_NAMES = {Family.L2VPN_EVPN: "l2vpn-evpn", Family.IPV4_UNICAST: "ipv4-unicast",
                Family.IPV6_UNICAST: "ipv6-unicast"}
REFLECTOR = web.AppKey("reflector", Reflector)
ROUTES_LIMIT = 1000


# ---------------------------------------------------------------- views (pure functions of the reflector)


def neighbors(rr: Reflector) -> list[dict[str, Any]]:
    out = []
    for address, peer in sorted(rr.peers.items()):
        pol = rr.policy(address)
        ref = rr._refs.get(address)
        counters = rr.stats.per_peer.get(address)
        out.append({
            "address": address,
            "name": peer.name,
            "state": peer.state.name.lower(),
            "client": pol.client,
            "asn": peer.settings.peer_asn,
            "router_id": str(ref.router_id) if ref else None,
            "routes_received": rr.rib.counts.get(address, 0),
            "updates_in": counters.updates_in if counters else 0,
            "updates_out": counters.updates_out if counters else 0,
            "bytes_out": counters.bytes_out if counters else 0,
            "loops_ignored": counters.loops if counters else 0,
            "policy_dropped": counters.policy_dropped if counters else 0,
            "write_stall_resets": peer.write_stall_resets,
            "established_count": peer.establishments,
            "families": sorted(FAMILY_NAMES[f] for f in peer.negotiated.families) if peer.established and
            peer.negotiated else [],
            "route_targets": sorted(rt_text(rt) for rt in pol.route_targets) if pol.route_targets is not None
            else None,
            "announce_route_targets": sorted(rt_text(rt) for rt in pol.announce_route_targets)
            if pol.announce_route_targets is not None else None,
            "max_prefix": {"limit": pol.max_prefix.limit, "action": pol.max_prefix.action.value,
                           "restart": pol.max_prefix.restart},
        })
    return out


def summary(rr: Reflector) -> dict[str, Any]:
    states: dict[str, int] = {}
    for peer in rr.peers.values():
        states[peer.state.name.lower()] = states.get(peer.state.name.lower(), 0) + 1
    c = rr.counters
    return {
        "asn": rr.rr_config.asn,
        "router_id": rr.rr_config.router_id,
        "cluster_id": rr.rr_config.cluster_id,
        "uptime_seconds": round(time.time() - rr.started, 1),
        "sessions": states,
        "routes": {FAMILY_NAMES[f]: len(t) for f, t in rr.rib.best.items()},
        "updates_in": c.updates_in,
        "updates_out": rr.stats.updates_out,
        "routes_in": c.routes_in,
        "withdrawals_in": c.withdrawals_in,
        "update_errors": c.update_errors,
        "loops_ignored": rr.stats.loops,
        "max_prefix_events": rr.stats.max_prefix_events,
        "policy_dropped": rr.stats.policy_dropped,
        "refused": {"unknown": c.refused, "opening": c.refused_opening, "prefix_full": c.refused_prefix_full,
                    "held_down": c.refused_held_down},
        "update_groups": len(rr.groups.groups),
        "reloads": rr.stats.reloads,
    }


def rt_text(rt: bytes) -> str:
    kind = rt[0]
    if kind == 0x00:
        return f"{int.from_bytes(rt[2:4], 'big')}:{int.from_bytes(rt[4:8], 'big')}"
    admin = ipaddress.IPv4Address(rt[2:6]) if kind == 0x01 else int.from_bytes(rt[2:6], "big")
    return f"{admin}:{int.from_bytes(rt[6:8], 'big')}"


def _next_hop(data: bytes) -> str | None:
    if len(data) == 4:
        return str(ipaddress.IPv4Address(data))
    if len(data) in (16, 32):
        return str(ipaddress.IPv6Address(data[:16]))
    return None


def _vsid(raw: bytes) -> int | None:
    """The 3-byte label field (RFC 8365 5.1.3: the VSID, unshifted) of a type-2 or type-5 NLRI."""
    if raw[0] == 2 and len(raw) >= 35:
        ip_bytes = raw[31] // 8
        return int.from_bytes(raw[32 + ip_bytes : 35 + ip_bytes], "big")
    if raw[0] == 5:
        return int.from_bytes(raw[-3:], "big")
    return None


def route_json(family: Family, attrs: AttrSet, raw: bytes) -> dict[str, Any]:
    key = wire.typed_key(family, raw)
    out: dict[str, Any] = {"family": FAMILY_NAMES[family]}
    if isinstance(key, MacIpKey):
        out.update(type="mac-ip", rd=key.rd, ethernet_tag=key.ethernet_tag, mac=key.mac,
                   ip=str(key.ip) if key.ip is not None else None, vsid=_vsid(raw))
    elif isinstance(key, PrefixKey):
        out.update(type="prefix", rd=key.rd, ethernet_tag=key.ethernet_tag, prefix=str(key.prefix), vsid=_vsid(raw))
    elif isinstance(key, UnicastKey):
        out.update(type="unicast", prefix=str(key.prefix))
    else:
        out.update(type="evpn-other", nlri=raw.hex())
    a = attrs.attrs
    out.update(
        next_hop=_next_hop(attrs.next_hop),
        route_targets=sorted(rt_text(rt) for rt in attrs.rts),
        source=attrs.address,
        originator_id=str(a.originator_id) if a.originator_id else str(attrs.ref.router_id),
        cluster_list=[str(c) for c in a.cluster_list],
        local_pref=a.local_pref,
    )
    return out


def routes(rr: Reflector, query: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Best routes matching every given filter (vsid, rt, mac, ip, family)."""
    families = list(rr.rib.best)
    if "family" in query:
        wanted = {v: f for f, v in FAMILY_NAMES.items()}.get(query["family"])
        if wanted is None:
            raise ValueError(f"family: expected one of {', '.join(FAMILY_NAMES.values())}")
        families = [wanted] if wanted in rr.rib.best else []
    vsid = _int(query, "vsid")
    rt = route_target_bytes(query["rt"], "rt") if "rt" in query else None
    mac = _mac(query.get("mac"))
    ip = _ip(query.get("ip"))
    for family in families:
        for _key, (attrs, raw) in list(rr.rib.routes(family)):
            if rt is not None and rt not in attrs.rts:
                continue
            if (vsid is not None or mac or ip) and family is not Family.L2VPN_EVPN and not ip:
                continue
            if vsid is not None and _vsid(raw) != vsid:
                continue
            if mac or ip:
                route = route_json(family, attrs, raw)
                if mac and route.get("mac") != mac:
                    continue
                if ip and route.get("ip") != ip and not _prefix_holds(route.get("prefix"), ip):
                    continue
                yield route
            else:
                yield route_json(family, attrs, raw)


def _prefix_holds(prefix: str | None, ip: str) -> bool:
    return prefix is not None and ipaddress.ip_address(ip) in ipaddress.ip_network(prefix)


def _int(query: dict[str, str], name: str) -> int | None:
    if name not in query:
        return None
    if not query[name].isdigit():
        raise ValueError(f"{name}: expected a non-negative integer, got {query[name]!r}")
    return int(query[name])


def _mac(text: str | None) -> Mac | None:
    if not text:
        return None
    try:
        return Mac(text)
    except MacError as exc:
        raise ValueError(f"mac: {exc.problem}, got {text!r}") from None


def _ip(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"ip: {text!r} is not an IP address") from None


# ---------------------------------------------------------------- Prometheus


class _Collector:
    """Reads the reflector at scrape time."""

    def __init__(self, rr: Reflector) -> None:
        self.rr = rr

    def collect(self) -> Iterator[Any]:
        rr = self.rr
        sessions = GaugeMetricFamily("nvfabric_rr_sessions", "BGP sessions by state", labels=["state"])
        states = {s.name.lower(): 0 for s in fsm.State}
        for peer in rr.peers.values():
            states[peer.state.name.lower()] += 1
        for state, count in sorted(states.items()):
            sessions.add_metric([state], count)
        yield sessions
        table = GaugeMetricFamily("nvfabric_rr_routes", "best routes in the table per family", labels=["family"])
        for family, t in rr.rib.best.items():
            table.add_metric([FAMILY_NAMES[family]], len(t))
        yield table
        received = GaugeMetricFamily("nvfabric_rr_neighbor_routes", "routes received per neighbour (all families)",
                                     labels=["neighbor"])
        upd_in = CounterMetricFamily("nvfabric_rr_updates_in", "UPDATE messages received", labels=["neighbor"])
        upd_out = CounterMetricFamily("nvfabric_rr_updates_out", "UPDATE messages sent", labels=["neighbor"])
        bytes_out = CounterMetricFamily("nvfabric_rr_bytes_out", "UPDATE bytes sent", labels=["neighbor"])
        for address in sorted(rr.peers):
            counters = rr.stats.per_peer.get(address)
            received.add_metric([address], rr.rib.counts.get(address, 0))
            upd_in.add_metric([address], counters.updates_in if counters else 0)
            upd_out.add_metric([address], counters.updates_out if counters else 0)
            bytes_out.add_metric([address], counters.bytes_out if counters else 0)
        yield received
        yield upd_in
        yield upd_out
        yield bytes_out
        loops = CounterMetricFamily("nvfabric_rr_loops_ignored", "routes ignored by RFC 4456 loop checks")
        loops.add_metric([], rr.stats.loops)
        yield loops
        dropped = CounterMetricFamily("nvfabric_rr_policy_dropped",
                                      "routes outside a neighbour's announce_route_targets (treated as withdrawn)")
        dropped.add_metric([], rr.stats.policy_dropped)
        yield dropped
        errors = CounterMetricFamily("nvfabric_rr_update_errors", "malformed UPDATEs (RFC 7606)")
        errors.add_metric([], rr.counters.update_errors)
        yield errors


def metrics_registry(rr: Reflector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(rr))  # type: ignore[arg-type]
    latency = Histogram(
        "nvfabric_rr_reflection_latency_seconds",
        "time from an UPDATE reaching the owner task to its reflection being written to every peer",
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        registry=registry,
    )
    rr.latency_observer = latency.observe
    return registry


# ---------------------------------------------------------------- the app


def config_refusal(exc: Exception) -> ApiError | None:
    """A bad filter or a refused reload names its field: 400."""
    if isinstance(exc, ConfigError):
        return ApiError(400, "invalid", exc.reason, field=exc.field)
    return None


def build_app(rr: Reflector, token: str, reload: Callable[[], Awaitable[ReloadResult]] | None = None, *,
              metrics_token: bool = False) -> web.Application:
    """`metrics_token`: /metrics needs the token too (by default Prometheus scrapes it without one)."""
    registry = metrics_registry(rr)

    async def get_summary(request: web.Request) -> web.Response:
        return web.json_response(await rr.call(lambda: summary(rr)))

    async def get_neighbors(request: web.Request) -> web.Response:
        return web.json_response(await rr.call(lambda: neighbors(rr)))

    async def get_routes(request: web.Request) -> web.Response:
        query = dict(request.query)
        try:
            limit = _int(query, "limit")
            query.pop("limit", None)

            def collect() -> dict[str, Any]:
                found = []
                for route in routes(rr, query):
                    if len(found) >= (ROUTES_LIMIT if limit is None else limit):
                        return {"routes": found, "truncated": True}
                    found.append(route)
                return {"routes": found, "truncated": False}

            return web.json_response(await rr.call(collect))
        except ConfigError:
            raise  # config_refusal names its field
        except ValueError as err:
            raise ApiError(400, "invalid", str(err)) from None

    async def post_reload(request: web.Request) -> web.Response:
        if reload is None:
            raise ApiError(409, "no-configuration-file", "no configuration file to reload")
        result = await reload()
        return web.json_response({"added": list(result.added), "removed": list(result.removed)})

    async def get_metrics(request: web.Request) -> web.Response:
        body = await rr.call(lambda: generate_latest(registry))
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app = application(token, refusals=(config_refusal,), metrics_token=metrics_token)
    app[REFLECTOR] = rr
    app.router.add_get("/v1/summary", get_summary)
    app.router.add_get("/v1/neighbors", get_neighbors)
    app.router.add_get("/v1/routes", get_routes)
    app.router.add_post("/v1/reload", post_reload)
    app.router.add_get("/metrics", get_metrics)
    return app
