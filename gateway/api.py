"""The gateway's REST API (docs/gateway.md#rest-api): tenants PUT/GET/DELETE, each change atomic; a NAT trace;
the gateway's status (role, BGP and BFD sessions, conntrack replication); Prometheus metrics.

The request handling is service/rest.py's, shared with the host agent and the reflector: the same error
middleware (a typed error -> its 4xx naming the field, a 500 only for bugs), bearer token, JSON bodies, PUT
responses, serving; vnet's errors are refused as vnet/refusals.py says, the gateway's own (not running,
nft/kernel refusal) below.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nvfabric.gateway import nat
from nvfabric.gateway.conntrackd import SyncStatus
from nvfabric.gateway.gateway import Gateway, TenantStatus
from nvfabric.gateway import sitestatus
from nvfabric.gateway.sites import HIDDEN
from nvfabric.gateway.state import StateSaveError
from nvfabric.gateway.tenants import Tenant
from nvfabric.service import conditional, health, pages
from nvfabric.service.conditional import ETAG
from nvfabric.service.openapi import (ANY_OBJECT, BOOLEAN, INTEGER, NUMBER, STRING, Operation, Param, array,
                                      nullable, obj, register)
from nvfabric.service.rest import ApiError, ApiServer, application, json_body, query, serve_if_token
from nvfabric.bgp.bfd.metrics import BfdCollector
from nvfabric.bgp.metrics import SessionCollector
from nvfabric.service.build import register_process
from nvfabric.vnet.decap import DecapCollector
from nvfabric.vnet.errors import ModelError
from nvfabric.vnet.policy import REASONS
from nvfabric.vnet.model import check_address
from nvfabric.vnet.refusals import REFUSALS

log = logging.getLogger(__name__)

GATEWAY = web.AppKey("gateway", Gateway)
TRACE_FIELDS = ("tenant", "proto", "src", "sport", "dst", "dport")



def _gw(request: web.Request) -> Gateway:
    return request.app[GATEWAY]


def _view(tenant: Tenant, status: TenantStatus | None) -> dict[str, Any]:
    """A tenant as PUT takes it, its ETag (of that, not of the counters), and its read-only status."""
    out = tenant.as_dict(secrets=False)  # the sites' keys are never shown; a PUT of `<secret>` keeps them
    out[ETAG] = conditional.etag(tenant.as_dict())
    if status is not None:
        out["status"] = status.as_dict()  # read-only; a PUT of a GET body ignores it
    return out


def _tag(gw: Gateway, name: str) -> str | None:
    tenant = gw.tenants.get(name)
    return None if tenant is None else conditional.etag(tenant.as_dict())


async def _statuses(gw: Gateway) -> dict[str, TenantStatus]:
    return {s.name: s for s in await gw.status()}


async def list_tenants(request: web.Request) -> web.Response:
    wanted = pages.page_request(query(request, ("limit", "after")))
    gw = _gw(request)
    found, after = pages.page(sorted(gw.tenants.items()), wanted)
    statuses = await _statuses(gw)
    return web.json_response({"tenants": [_view(t, statuses.get(t.name)) for t in found], "next": after})


async def get_tenant(request: web.Request) -> web.StreamResponse:
    gw = _gw(request)
    tenant = gw.tenant(request.match_info["name"])
    view = _view(tenant, (await _statuses(gw)).get(tenant.name))
    if tenant.sites and "status" in view:  # charon asked once per tenant read, not per page of tenants
        view["status"]["sites"] = await gw.site_status(tenant.name)
    return conditional.read(request, view)


def keep_secrets(body: Any, current: Tenant | None) -> Any:
    """A site whose `psk` (or `private_key`) is the hidden value GET shows keeps the secret it has (same tenant,
    same site name)."""
    if not isinstance(body, dict) or not isinstance(body.get("sites"), list):
        return body
    held = {s.name: s for s in current.sites} if current is not None else {}

    def kept(site: Any) -> Any:
        name = site.get("name") if isinstance(site, dict) else None
        old = held.get(name) if isinstance(name, str) else None
        if old is None:
            return site
        if site.get("psk") == HIDDEN:
            site = {**site, "psk": old.psk}
        if site.get("private_key") == HIDDEN and old.certs is not None:
            site = {**site, "private_key": old.certs.private_key}
        return site

    return {**body, "sites": [kept(s) for s in body["sites"]]}


async def put_tenant(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    gw = _gw(request)
    body = keep_secrets(conditional.without_read_only(await json_body(request), "status"), gw.tenants.get(name))
    tenant = Tenant.from_dict(body, name=name)
    async with conditional.write(request, lambda: _tag(gw, name)):
        created = await gw.put_tenant(tenant)
        body = _view(gw.tenant(name), None)
    return conditional.written(request, created, body)


async def delete_tenant(request: web.Request) -> web.Response:
    gw, name = _gw(request), request.match_info["name"]
    async with conditional.write(request, lambda: _tag(gw, name)):
        await gw.delete_tenant(name)
    return web.Response(status=204)


def readiness(request: web.Request) -> tuple[str, ...]:
    return _gw(request).readiness()


async def get_status(request: web.Request) -> web.Response:
    gw = _gw(request)
    sync = gw.sync_status()
    return web.json_response({"role": gw.role_status().as_dict(), "bfd": [s.as_dict() for s in gw.bfd_status()],
                              "conntrack_sync": None if sync is None else sync.as_dict(),
                              "sessions": [s.as_dict() for s in gw.sessions()]})


def _port(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ModelError(name, value, "must be a port number 0..65535")
    return value


async def trace(request: web.Request) -> web.Response:
    """The NAT decision for a flow's first packet: from a tenant (`tenant` set) or from outside (absent).
    GET with the fields as query parameters, as the agent's trace; POST with them as a JSON body is kept."""
    if request.method == "GET":
        fields: dict[str, Any] = query(request, TRACE_FIELDS)
        for name in ("sport", "dport"):
            if name in fields:
                fields[name] = _number(fields[name], name)
    else:
        fields = await json_body(request)
        if not isinstance(fields, dict):
            raise ModelError("body", fields, "must be an object")
        unknown = sorted(set(fields) - set(TRACE_FIELDS))
        if unknown:
            raise ModelError(unknown[0], fields[unknown[0]], f"unknown field (known: {', '.join(TRACE_FIELDS)})")
    gw = _gw(request)
    tenant = fields.get("tenant")
    if tenant is not None:
        if not isinstance(tenant, str):  # (a JSON object here once reached the tenant lookup: a 500)
            raise ModelError("tenant", tenant, "must be a tenant's name (a string)")
        gw.tenant(tenant)  # 404 when unknown
    proto = fields.get("proto", "tcp")
    if proto not in ("tcp", "udp", "icmp", "icmpv6"):
        raise ModelError("proto", proto, "must be tcp, udp, icmp or icmpv6")
    flow = nat.FiveTuple(proto, check_address(fields.get("src"), "src"), _port(fields.get("sport", 0), "sport"),
                         check_address(fields.get("dst"), "dst"), _port(fields.get("dport", 0), "dport"))
    if flow.src.version != flow.dst.version:
        raise ModelError("dst", str(flow.dst), f"is not of the same family as src {flow.src}")
    if tenant is not None and (path := await _site_trace(gw, tenant, flow)) is not None:
        return web.json_response(path)
    return web.json_response(nat.trace(gw.nat_view(), flow, tenant).as_dict())


async def _site_trace(gw: Gateway, name: str, flow: nat.FiveTuple) -> dict[str, Any] | None:
    """From a tenant to one of its sites' prefixes: no NAT, the tunnel's path (None: no site routes `dst`)."""
    tenant, tid = gw.tenant(name), gw.tenant_id(name)
    learned = gw.site_verdicts(name)
    if sitestatus.site_route(tenant, flow.dst, learned) is None:
        return None
    hop = sitestatus.trace(tenant, tid, flow.src, flow.dst, await gw.site_sas(), gw.config.external, learned)
    assert hop is not None
    decision = nat.trace(gw.nat_view(), flow, name)
    if decision.action != "drop":  # a spoofed source is dropped before any route
        decision = nat.NatDecision(name, "outbound", "route", flow, tid, tid, f"site {hop.site}: {hop.reason}")
    return {**decision.as_dict(), "site": hop.as_dict()}


def _number(text: str, name: str) -> int | str:
    """A query parameter's port as an int; left as text (refused by _port naming it) when not a number."""
    return int(text) if text.isascii() and text.isdigit() else text  # ('²' is a digit to isdigit, not to int)


class _TenantCollector(Collector):
    def __init__(self, statuses: list[TenantStatus], gateway: Gateway) -> None:
        self.statuses = statuses
        self.gateway = gateway

    def collect(self) -> Iterator[Any]:
        labels = ["tenant"]
        families = {
            "packets": CounterMetricFamily("nvfabric_gateway_tenant_packets", "packets through the gateway",
                                           labels=["tenant", "direction"]),
            "bytes": CounterMetricFamily("nvfabric_gateway_tenant_bytes", "bytes through the gateway",
                                         labels=["tenant", "direction"]),
            "drops": CounterMetricFamily("nvfabric_gateway_tenant_drops", "tenant packets dropped (invalid "
                                         "conntrack state, spoofed source)", labels=labels),
            "sessions": GaugeMetricFamily("nvfabric_gateway_tenant_nat_sessions", "conntrack entries of the tenant",
                                          labels=labels),
        }
        for s in self.statuses:
            c = s.counters
            families["packets"].add_metric([s.name, "out"], c.packets_out)
            families["packets"].add_metric([s.name, "in"], c.packets_in)
            families["bytes"].add_metric([s.name, "out"], c.bytes_out)
            families["bytes"].add_metric([s.name, "in"], c.bytes_in)
            families["drops"].add_metric([s.name], c.drops)
            families["sessions"].add_metric([s.name], s.sessions)
        tenants = GaugeMetricFamily("nvfabric_gateway_tenants", "tenants configured")
        tenants.add_metric([], len(self.statuses))
        yield tenants
        suspended = GaugeMetricFamily("nvfabric_gateway_tenants_suspended", "tenants created through the API, "
                                      "kept in the state directory but not served (they no longer fit)")
        suspended.add_metric([], len(self.gateway.suspended))
        yield suspended
        problems = GaugeMetricFamily("nvfabric_gateway_state_problems", "state files passed over at start "
                                     "(corrupt or unreadable; the previous copy or none used)")
        problems.add_metric([], len(self.gateway.state_problems))
        yield problems
        refused = GaugeMetricFamily("nvfabric_gateway_routes_refused", "learned routes the import policy "
                                    "refuses now (docs/agent.md, import policy)", labels=["reason"])
        counts = self.gateway.refused_routes
        for reason in REASONS:
            refused.add_metric([reason], counts.get(reason, 0))
        yield refused
        role = self.gateway.role_status()
        serving = GaugeMetricFamily("nvfabric_gateway_serving", "1 when this gateway announces its tenants' default "
                                    "routes (docs/gateway.md, Failover)")
        serving.add_metric([], 1 if role.serving else 0)
        yield serving
        changes = CounterMetricFamily("nvfabric_gateway_role_changes", "changes of the role (serving or not) since "
                                      "the start")
        changes.add_metric([], role.changes)
        yield changes
        yield from families.values()


class _SyncCollector(Collector):
    """The connection state replication (gateway/conntrackd.py), when the gateway has `sync`."""

    def __init__(self, status: SyncStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        s = self.status
        up = GaugeMetricFamily("nvfabric_gateway_conntrack_sync_up", "1 when conntrackd runs, answers and hears "
                               "the other gateway")
        up.add_metric([], 1 if s.up else 0)
        entries = GaugeMetricFamily("nvfabric_gateway_conntrack_sync_entries", "conntrackd's entries: internal = "
                                    "the flows this gateway sends, external = the other gateway's, held in this "
                                    "kernel", labels=["cache"])
        entries.add_metric(["internal"], s.stats.internal)
        entries.add_metric(["external"], s.external)
        messages = CounterMetricFamily("nvfabric_gateway_conntrack_sync_messages", "conntrackd's messages on the "
                                       "sync link (lost: sequence gaps, recovered by retransmission)",
                                       labels=["direction"])
        for direction, value in (("sent", s.stats.sent), ("received", s.stats.received), ("lost", s.stats.lost)):
            messages.add_metric([direction], value)
        restarts = CounterMetricFamily("nvfabric_gateway_conntrack_sync_restarts", "conntrackd restarts after it died")
        restarts.add_metric([], s.restarts)
        resend = GaugeMetricFamily("nvfabric_gateway_conntrack_sync_resend_queue", "messages sent and not yet "
                                   "acknowledged by the other gateway")
        resend.add_metric([], s.stats.resend_queue)
        injected = CounterMetricFamily("nvfabric_gateway_conntrack_sync_injected", "the other gateway's entries "
                                       "applied to this kernel", labels=["op"])
        for op, value in (("created", s.stats.injected_created), ("updated", s.stats.injected_updated),
                          ("destroyed", s.stats.injected_destroyed), ("failed", s.stats.inject_failed)):
            injected.add_metric([op], value)
        differ = GaugeMetricFamily("nvfabric_gateway_conntrack_sync_tenant_ids_differ", "tenants both gateways "
                                   "serve with different ids (their connections do not survive a failover)")
        differ.add_metric([], len(s.tenant_ids_differ or {}))
        yield from (up, entries, messages, injected, restarts, resend, differ)


async def metrics(request: web.Request) -> web.Response:
    # nftables' counters read at scrape time (no copy to drift); sessions from the conntrack sampler's last count
    registry = register_process(CollectorRegistry())
    registry.register(_TenantCollector(await _gw(request).status(), _gw(request)))
    registry.register(SessionCollector(_gw(request).session_samples))
    registry.register(BfdCollector(_gw(request).bfd_status))
    decap = DecapCollector()
    decap.counts = await _gw(request).decap_counters()
    registry.register(decap)
    gw = _gw(request)
    registry.register(sitestatus.CertificateCollector(gw.tenants.values()))  # the configuration's: no charon read
    if any(t.sites for t in gw.tenants.values()):  # charon asked only when there are sites
        registry.register(sitestatus.SiteCollector(sitestatus.samples(gw.tenants.values(), await gw.site_sas())))
        registry.register(sitestatus.SiteBgpCollector(gw.site_bgp_samples()))
    sync = _gw(request).sync_status()
    if sync is not None:
        registry.register(_SyncCollector(sync))
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


_ADDRESS = {**STRING, "description": "an IPv4 or IPv6 address"}
_SUBNET = obj(["vsid", "prefixes"], True, vsid=INTEGER, prefixes=array(STRING), gateways=array(_ADDRESS),
              dhcp=ANY_OBJECT)
_SNAT = {"anyOf": [_ADDRESS, obj(["address"], True, address=_ADDRESS, ports={"anyOf": [STRING, INTEGER]})]}
_SITE_BGP = obj(["peer_address", "peer_as", "local_address"], True, peer_address=_ADDRESS, peer_as=INTEGER,
                local_address={**STRING, "description": "the gateway's address in the tunnel, with its prefix length"},
                local_as=INTEGER, hold_time=INTEGER, max_prefixes=INTEGER, accept=array(STRING))
_SITE = obj(["name", "remote_address"], True, name=STRING,
            kind={"type": "string", "enum": ["ipsec", "gre", "wireguard"]}, remote_address=_ADDRESS,
            auth={"type": "string", "enum": ["psk", "certificate"]},
            psk={**STRING, "description": "the pre-shared key, required for kind ipsec (shown as <secret>; a PUT of "
                 "<secret> keeps it)"},
            prefixes=array(STRING), local_ts=array(STRING), remote_ts=array(STRING), ike_proposals=array(STRING),
            esp_proposals=array(STRING), slot=INTEGER,
            key={**INTEGER, "description": "a GRE site's key (kind gre only; 32 bits)"}, bgp=_SITE_BGP,
            certificate={**STRING, "description": "auth certificate: the gateway's certificate for this site (PEM)"},
            private_key={**STRING, "description": "auth certificate: its private key (PEM, unencrypted; shown as "
                         "<secret>; a PUT of <secret> keeps it)"},
            ca_certificates={**array(STRING), "description": "auth certificate: the CAs that sign the site's "
                             "certificate (PEM each)"},
            remote_id={**STRING, "description": "auth certificate: the identity the site's certificate carries"},
            local_id={**STRING, "description": "auth certificate: the gateway's identity, one of its certificate's "
                      "subjectAltNames (default: its subject)"})
TENANT = obj(["route_targets", "subnets"], True, name=STRING, route_targets=array(STRING), subnets=array(_SUBNET),
             snat=array(_SNAT), floating_ips=array(obj(["public", "private"], True, public=_ADDRESS,
                                                       private=_ADDRESS)),
             public_prefixes=array(STRING), interfaces=array(STRING), sites=array(_SITE), status=ANY_OBJECT,
             etag=STRING)
_SITE_STATUS = obj(["name", "kind", "remote_address", "if_id", "device", "prefixes", "sa"], name=STRING, kind=STRING,
                   remote_address=_ADDRESS, if_id=INTEGER, device=STRING, prefixes=array(STRING),
                   sa={**nullable(ANY_OBJECT), "description": "the IKE SA (state, local, remote, spis, "
                       "established_at, rekey_at, children with state, spi_in, spi_out, bytes_in, bytes_out, "
                       "packets_in, packets_out, local_ts, remote_ts, installed_at: the last rekey, rekey_at); "
                       "null: none"},
                   bgp={**nullable(ANY_OBJECT), "description": "the eBGP session with the site (peer, state, "
                        "learned: count, prefixes: accepted, refused: with reasons); null: no bgp"},
                   certificates={**ANY_OBJECT, "description": "auth certificate: local_id, remote_id, not_after "
                                 "(when the first of its certificates expires) and first_to_expire (its subject)"})
_TENANT_VIEW = obj(["name", "route_targets", "subnets", "snat", "floating_ips", "public_prefixes", "interfaces",
                    "etag"],
                   name=STRING, route_targets=array(STRING), subnets=array(ANY_OBJECT), snat=array(ANY_OBJECT),
                   floating_ips=array(ANY_OBJECT), public_prefixes=array(STRING), interfaces=array(STRING),
                   sites=array(ANY_OBJECT),
                   etag={**STRING, "description": "the ETag (read-only; ignored in a PUT body: send it as If-Match)"},
                   status=obj(["name", "id"], name=STRING, id=INTEGER, vsids=array(INTEGER), nat_sessions=INTEGER,
                              sites=array(_SITE_STATUS)))
_PORT_PARAM = {**STRING, "pattern": "^[0-9]+$"}
_TRACE_QUERY = (Param("tenant", description="from this tenant (absent: from outside)"),
                Param("proto", {"type": "string", "enum": ["tcp", "udp", "icmp", "icmpv6"]}),
                Param("src", _ADDRESS, required=True), Param("sport", _PORT_PARAM),
                Param("dst", _ADDRESS, required=True), Param("dport", _PORT_PARAM))
_TRACE_BODY = obj(["src", "dst"], True, tenant=STRING, proto=STRING, src=_ADDRESS, dst=_ADDRESS, sport=INTEGER,
                  dport=INTEGER)
_SITE_HOP = obj(["site", "vrf", "table", "prefix", "device", "if_id", "ike_state", "spi_out", "outer", "up", "reason"],
                site=STRING, kind={"type": "string", "enum": ["ipsec", "gre"]}, key=nullable(INTEGER),
                vrf=STRING, table=INTEGER, prefix=STRING, device=STRING, if_id=INTEGER,
                ike_state=nullable(STRING), spi_out=nullable(STRING), spi_in=nullable(STRING),
                local_ts=array(STRING), remote_ts=array(STRING),
                outer=obj(["src", "dst"], src=nullable(_ADDRESS), dst=_ADDRESS), up=BOOLEAN, reason=STRING)
_DECISION = obj(["tenant", "direction", "action", "reason", "translated"], tenant=nullable(STRING),
                direction=STRING, action=STRING, zone=nullable(INTEGER), mark=nullable(INTEGER),
                reason=STRING, translated=nullable(ANY_OBJECT),
                site={**_SITE_HOP, "description": "from a tenant to a site's prefix (static or learned over BGP): the "
                                   "tunnel's path and, for an IPsec site, its SA"})


_ROLE = obj(["serving", "configured", "reason", "since", "changes", "upstream"], serving=BOOLEAN,
            configured={"type": "string", "enum": ["active", "standby"]}, reason=STRING,
            since={**NUMBER, "description": "wall clock (Unix seconds) of the last change of serving"},
            changes=INTEGER, upstream={"type": "string", "enum": ["announce", "depreferred", "withdrawn"]})
_SESSION = obj(["peer", "kind", "state", "uptime"], peer=STRING,
               kind={"type": "string", "enum": ["reflector", "upstream"]}, state=STRING,
               uptime=nullable({**NUMBER, "description": "seconds since established"}))
_BFD = obj(["peer", "state", "remote_state", "diagnostic", "transmit_interval_ms", "detect_time_ms", "up_since",
            "transitions", "downs"], peer=STRING, local_address=nullable(STRING),
           state={"type": "string", "enum": ["admin-down", "down", "init", "up"]},
           remote_state={"type": "string", "enum": ["admin-down", "down", "init", "up"]},
           local_discriminator=INTEGER, remote_discriminator=INTEGER, diagnostic=STRING, remote_diagnostic=STRING,
           transmit_interval_ms=NUMBER, detect_time_ms=NUMBER,
           up_since=nullable({**NUMBER, "description": "wall clock (Unix seconds) the session came up"}),
           transitions=INTEGER, downs=INTEGER, packets_in=INTEGER, packets_out=INTEGER, dropped=INTEGER)
_SYNC = obj(["up", "running", "talking", "role", "restarts", "entries", "messages"], up=BOOLEAN, running=BOOLEAN,
            talking=BOOLEAN, role={"type": "string", "enum": ["active", "standby"]}, interface=nullable(STRING),
            local_address=nullable(STRING), peer_address=nullable(STRING), port=nullable(INTEGER),
            pid=nullable(INTEGER), restarts=INTEGER, entries=ANY_OBJECT, messages=ANY_OBJECT)
_STATUS = obj(["role", "bfd", "conntrack_sync", "sessions"], role=_ROLE, bfd=array(_BFD),
              conntrack_sync={**nullable(_SYNC), "description": "the conntrack replication (null without `sync`)"},
              sessions=array(_SESSION))


def operations(metrics_token: bool = False) -> list[Operation]:
    """Every route of the API with its schemas: what make_app registers and /v1/openapi.json documents."""
    write = (409, 422, 503)
    return [
        Operation("GET", "/v1/tenants", list_tenants, "the tenants, a page at a time",
                  {200: obj(["tenants", "next"], tenants=array(_TENANT_VIEW), next=pages.NEXT)}, query=pages.PARAMS),
        Operation("GET", "/v1/tenants/{name}", get_tenant, "one tenant with its counters", {200: _TENANT_VIEW},
                  conditional=True),
        Operation("PUT", "/v1/tenants/{name}", put_tenant, "create or replace a tenant (atomic)",
                  {200: _TENANT_VIEW, 201: _TENANT_VIEW}, body=TENANT, errors=write, conditional=True),
        Operation("DELETE", "/v1/tenants/{name}", delete_tenant, "delete a tenant", {204: None}, errors=write,
                  conditional=True),
        Operation("GET", "/v1/trace", trace, "the NAT decision for a flow's first packet", {200: _DECISION},
                  query=_TRACE_QUERY, errors=(404,)),
        Operation("POST", "/v1/trace", trace, "the same, with the fields in a JSON body", {200: _DECISION},
                  body=_TRACE_BODY, errors=(404,)),
        Operation("GET", "/v1/status", get_status, "the gateway's role, BGP and BFD sessions, conntrack replication",
                  {200: _STATUS}),
        Operation("GET", "/metrics", metrics, "Prometheus text", {200: STRING}, public=not metrics_token, text=True),
        *health.operations(readiness),
    ]


def state_refusal(exc: Exception) -> ApiError | None:
    """The state directory could not be written (a full disk): 503, the change was put back; a retry may work
    once the operator has made room."""
    if isinstance(exc, StateSaveError):
        return ApiError(503, "state-not-saved", str(exc))
    return None


def make_app(gateway: Gateway, token: str, *, metrics_token: bool = False) -> web.Application:
    """`metrics_token`: /metrics needs the token too (by default Prometheus scrapes it without one)."""
    app = application(token, refusals=(*REFUSALS, state_refusal), metrics_token=metrics_token)
    app[GATEWAY] = gateway
    register(app, "nvfabric gateway", "docs/gateway.md#rest-api", operations(metrics_token))
    return app


async def start_api(gateway: Gateway, listen: str, token: str | None) -> ApiServer | None:
    """Serve the API on `listen` in the gateway's loop; no token, no API (logged)."""
    return await serve_if_token(lambda t: make_app(gateway, t), listen, token, "gateway")


__all__ = ["ApiError", "make_app", "start_api"]
