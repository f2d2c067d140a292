"""The reflector's REST API and Prometheus metrics, served by service/rest.py's app factory like the agent's
and the gateway's: the same bearer token (`api.token`) and the same JSON error body.

GET  /v1/summary                      identity, sessions by state, routes per family, counters, BFD sessions
GET  /v1/neighbors?limit=&after=      one object per peer (configured or dynamic, seen so far), its BFD state
GET  /v1/neighbors/{address}          one of them, with its ETag (service/conditional.py)
GET  /v1/routes?family=&vsid=&rt=&mac=&ip=&limit=&after=   best routes, a page at a time (service/pages.py)
POST /v1/reload                       re-read the configuration file (as SIGHUP); 400 names the bad field
GET  /metrics                         Prometheus text format (without the token unless metrics_token)
GET  /healthz, /readyz               health probes, without the token (service/health.py)
GET  /v1/openapi.json                 the OpenAPI document of all of the above (service/openapi.py)

Everything is read at request time from the reflector (no copies kept up to date on the hot path); the
metrics registry belongs to the app (no process-wide default registry). The owner task is asked only for
what is O(peers) or a copy of the table's references; a page of routes is filtered outside it.
"""

from __future__ import annotations

import asyncio
import heapq
import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from nvfabric.bgp import fsm, wire
from nvfabric.bgp.bfd.metrics import BfdCollector
from nvfabric.bgp.metrics import SessionCollector, samples
from nvfabric.service.build import register_process
from nvfabric.bgp.config import ConfigError
from nvfabric.bgp.mac import Mac, MacError
from nvfabric.bgp.reflector.config import route_target_bytes
from nvfabric.bgp.reflector.daemon import Reflector, ReloadResult
from nvfabric.bgp.reflector.table import AttrSet, Entry
from nvfabric.bgp.routes import Family, MacIpKey, PrefixKey, UnicastKey
from nvfabric.service import conditional, health, pages
from nvfabric.service.openapi import (ANY_OBJECT, BOOLEAN, INTEGER, NUMBER, STRING, Operation, Param, array, nullable,
                                      obj, register)
from nvfabric.service.rest import ApiError, application, query

FAMILY_NAMES = {Family.L2VPN_EVPN: "l2vpn-evpn", Family.IPV4_UNICAST: "ipv4-unicast",
                Family.IPV6_UNICAST: "ipv6-unicast"}
REFLECTOR = web.AppKey("reflector", Reflector)
ROUTE_FILTERS = ("family", "vsid", "rt", "mac", "ip")
SLICE = 4096  # table entries filtered between two yields to the loop


# ---------------------------------------------------------------- views (pure functions of the reflector)


def neighbors(rr: Reflector, only: str | None = None) -> list[dict[str, Any]]:
    """Every neighbour (or the one at `only`), each with its ETag: of all of it, counters included (nothing
    in it is written through the API, so nothing is left out)."""
    out = []
    bfd = {status.peer: status for status in rr.bfd_status()}
    for address, peer in sorted(rr.peers.items()):
        if only is not None and address != only:
            continue
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
            "bfd": bfd[address].state.label if address in bfd else None,
        })
        out[-1][conditional.ETAG] = conditional.etag(out[-1])
    return out


def readiness(rr: Reflector) -> tuple[str, ...]:
    """Why the reflector is not ready (GET /readyz; none: ready): its configuration is loaded (it could not
    run otherwise) and it listens for BGP, its owner task running."""
    reasons = []
    if not rr.running:
        reasons.append("the BGP owner task is not running (starting, stopping, or it failed: see the log)")
    if rr.rr_config.listen is not None and rr.listen_port is None:
        listen = rr.rr_config.listen
        reasons.append(f"not listening for BGP on listen.address {listen.address} port {listen.port}")
    return tuple(reasons)


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
        "bfd_teardowns": c.bfd_teardowns,
        "bfd": [status.as_dict() for status in rr.bfd_status()],
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


@dataclass(frozen=True)
class RouteFilter:
    """The filters of GET /v1/routes, parsed (each names its query parameter when refused)."""

    families: tuple[Family, ...]
    vsid: int | None = None
    rt: bytes | None = None
    mac: Mac | None = None
    ip: str | None = None

    @classmethod
    def parse(cls, query: dict[str, str], available: Iterable[Family]) -> RouteFilter:
        families = tuple(f for f in FAMILY_NAMES if f in set(available))  # one fixed order: the pages'
        if "family" in query:
            wanted = {v: f for f, v in FAMILY_NAMES.items()}.get(query["family"])
            if wanted is None:
                raise ApiError.invalid("family", query["family"], f"expected one of {', '.join(FAMILY_NAMES.values())}")
            families = tuple(f for f in families if f is wanted)
        rt = route_target_bytes(query["rt"], "rt") if "rt" in query else None
        return cls(families, _int(query, "vsid"), rt, _mac(query.get("mac")), _ip(query.get("ip")))

    def matches(self, family: Family, attrs: AttrSet, raw: bytes) -> bool:
        if self.rt is not None and self.rt not in attrs.rts:
            return False
        if (self.vsid is not None or self.mac) and family is not Family.L2VPN_EVPN:
            return False
        if self.vsid is not None and _vsid(raw) != self.vsid:
            return False
        if self.mac or self.ip:
            route = route_json(family, attrs, raw)
            if self.mac and route.get("mac") != self.mac:
                return False
            if self.ip and route.get("ip") != self.ip and not _prefix_holds(route.get("prefix"), self.ip):
                return False
        return True


def _cursor(family: Family, key: bytes) -> str:
    return f"{FAMILY_NAMES[family]}/{key.hex()}"


def _parse_cursor(text: str | None) -> tuple[int, bytes] | None:
    """`after`: (the family's place in FAMILY_NAMES, the last key returned)."""
    if text is None:
        return None
    name, _, key = text.partition("/")
    order = list(FAMILY_NAMES.values())
    try:
        return order.index(name), bytes.fromhex(key)
    except ValueError:
        raise ApiError.invalid("after", text, "not a cursor of this API (the `next` of a previous page)") from None


async def routes_page(snapshot: dict[Family, dict[bytes, Entry]], wanted: RouteFilter, after: str | None,
                      limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """The best routes matching `wanted`, in (family, key) order after the cursor: at most `limit`, and the
    cursor of the next page (None on the last). Runs outside the owner task, on a snapshot it handed over,
    SLICE entries at a time, giving the loop back between slices: a large table never stalls BGP."""
    start = _parse_cursor(after)
    order = list(FAMILY_NAMES)
    chosen: list[tuple[Family, bytes, Entry]] = []
    for family in wanted.families:
        place = order.index(family)
        if start is not None and place < start[0]:
            continue
        floor = start[1] if start is not None and place == start[0] else None
        best: list[tuple[bytes, Entry]] = []  # the limit+1 smallest matching keys of this family so far
        items = list(snapshot.get(family, {}).items())
        for i in range(0, len(items), SLICE):
            found = [(key, entry) for key, entry in items[i : i + SLICE]
                     if (floor is None or key > floor) and wanted.matches(family, entry[0], entry[1])]
            if found:
                best = heapq.nsmallest(limit + 1 - len(chosen), best + found, key=lambda kv: kv[0])
            await asyncio.sleep(0)
        chosen += [(family, key, entry) for key, entry in best]
        if len(chosen) > limit:
            break
    more = len(chosen) > limit
    chosen = chosen[:limit]
    page = [route_json(family, attrs, raw) for family, _key, (attrs, raw) in chosen]
    return page, _cursor(chosen[-1][0], chosen[-1][1]) if more else None


def _prefix_holds(prefix: str | None, ip: str) -> bool:
    return prefix is not None and ipaddress.ip_address(ip) in ipaddress.ip_network(prefix)


def _int(query: dict[str, str], name: str) -> int | None:
    if name not in query:
        return None
    if not (query[name].isascii() and query[name].isdigit()):  # (str.isdigit alone takes '²', int() does not)
        raise ApiError.invalid(name, query[name], "expected a non-negative integer")
    return int(query[name])


def _mac(text: str | None) -> Mac | None:
    if not text:
        return None
    try:
        return Mac(text)
    except MacError as exc:
        raise ApiError.invalid("mac", text, exc.problem) from None


def _ip(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ApiError.invalid("ip", text, "is not an IP address") from None


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
        bytes_out = CounterMetricFamily("nvfabric_rr_updates_out_bytes", "UPDATE bytes sent", labels=["neighbor"])
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
    registry.register(BfdCollector(rr.bfd_status))
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
        wanted = pages.page_request(query(request, ("limit", "after")))
        found, after = pages.page(((n["address"], n) for n in await rr.call(lambda: neighbors(rr))), wanted)
        return web.json_response({"neighbors": found, "next": after})

    async def get_neighbor(request: web.Request) -> web.StreamResponse:
        address = request.match_info["address"]
        found = await rr.call(lambda: neighbors(rr, address))
        if not found:
            raise ApiError(404, "not-found", f"no neighbor {address!r} (configured, or dynamic and seen)")
        return conditional.read(request, found[0])

    async def get_routes(request: web.Request) -> web.Response:
        params = query(request, ROUTE_FILTERS + ("limit", "after"))
        page_wanted = pages.page_request(params)
        wanted = RouteFilter.parse(params, rr.rib.best)  # ApiError or ConfigError (`rt`) naming the field
        # the owner task only copies the tables' references (C speed); filtering and encoding happen here
        snapshot = await rr.call(lambda: {f: dict(rr.rib.best[f]) for f in wanted.families})
        found, after = await routes_page(snapshot, wanted, page_wanted.after, page_wanted.limit)
        return web.json_response({"routes": found, "next": after, "truncated": after is not None})

    async def post_reload(request: web.Request) -> web.Response:
        if reload is None:
            raise ApiError(409, "no-configuration-file", "no configuration file to reload")
        result = await reload()
        return web.json_response({"added": list(result.added), "removed": list(result.removed)})

    async def get_metrics(request: web.Request) -> web.Response:
        body, taken = await rr.call(lambda: (generate_latest(registry), samples(rr.peers.items())))
        # The sessions' text (8 series a neighbour: some 35 ms per 1000 neighbours), the build and the process
        # are written outside the owner task, from the snapshot it took.
        outside = register_process(CollectorRegistry(auto_describe=False))
        outside.register(SessionCollector(lambda: taken))
        body += generate_latest(outside)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app = application(token, refusals=(config_refusal,), metrics_token=metrics_token)
    app[REFLECTOR] = rr
    register(app, "nvfabric route reflector", "docs/rr.md#rest-api-and-metrics", [
        Operation("GET", "/v1/summary", get_summary, "identity, sessions by state, routes per family, counters",
                  {200: SUMMARY}),
        Operation("GET", "/v1/neighbors", get_neighbors, "one object per peer, a page at a time",
                  {200: obj(["neighbors", "next"], neighbors=array(NEIGHBOR), next=pages.NEXT)}, query=pages.PARAMS),
        Operation("GET", "/v1/neighbors/{address}", get_neighbor, "one peer", {200: NEIGHBOR}, conditional=True),
        Operation("GET", "/v1/routes", get_routes, "best routes, a page at a time",
                  {200: obj(["routes", "next", "truncated"], routes=array(ROUTE), next=pages.NEXT,
                            truncated=BOOLEAN)},
                  query=(Param("family", {"type": "string", "enum": list(FAMILY_NAMES.values())}),
                         Param("vsid", {**STRING, "pattern": "^[0-9]+$"}), Param("rt", description="ASN:NUMBER"),
                         Param("mac"), Param("ip"), *pages.PARAMS)),
        Operation("POST", "/v1/reload", post_reload, "re-read the configuration file (as SIGHUP)",
                  {200: obj(["added", "removed"], added=array(STRING), removed=array(STRING))}, errors=(400, 409)),
        Operation("GET", "/metrics", get_metrics, "Prometheus text", {200: STRING}, public=not metrics_token,
                  text=True),
        *health.operations(lambda request: readiness(rr)),
    ])
    return app


SUMMARY = obj(["asn", "router_id", "cluster_id", "uptime_seconds", "sessions", "routes"], asn=INTEGER,
              router_id=STRING, cluster_id=STRING, uptime_seconds=NUMBER, sessions=ANY_OBJECT, routes=ANY_OBJECT,
              bfd=array(ANY_OBJECT))
NEIGHBOR = obj(["address", "state", "client", "routes_received", "etag"], address=STRING, name=STRING, state=STRING,
               etag={**STRING, "description": "the ETag: of the whole object, counters included"},
               client=BOOLEAN, asn=nullable(INTEGER), router_id=nullable(STRING), routes_received=INTEGER,
               route_targets=nullable(array(STRING)), max_prefix=nullable(ANY_OBJECT), bfd=nullable(STRING))
ROUTE = obj(["family", "type", "route_targets", "source"], family=STRING, type=STRING,
            next_hop=nullable(STRING), route_targets=array(STRING), source=STRING, vsid=nullable(INTEGER),
            mac=STRING, ip=nullable(STRING), prefix=STRING, local_pref=nullable(INTEGER))
