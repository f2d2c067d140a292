"""The GRE sites' tunnel end that follows the serving role (external.sites_address4/6): what the configuration
refuses, what the dataplane holds whatever the role (gateway/dataplane.py), and its announcement upstream, which
follows the role as the tenants' public addresses do (gateway/upstream.py, with the role applied by an unstarted
Gateway whose BGP clients are stand-ins, as tests/unit/test_gateway_status.py does)."""

from __future__ import annotations

import ipaddress
import time

import pytest

from nvfabric.bgp.routes import Path
from nvfabric.bgp.speaker import PeerStatus
from nvfabric.gateway.config import ConfigError, GatewayConfig, parse
from nvfabric.gateway.dataplane import SITES_DEVICE, decap_filter, gateway_globals, site_objects, site_tunnels
from nvfabric.gateway.gateway import Gateway
from nvfabric.gateway.role import DEPREFERRED
from nvfabric.gateway.tenants import Tenant
from nvfabric.gateway.upstream import own_routes
from nvfabric.vnet import decap
from nvfabric.vnet.desired import GLOBAL
from nvfabric.vnet.kernel import messages as m
from nvfabric.vnet.kernel.apply import _phases
from nvfabric.vnet.kernel.diff import Action, Op, order
from nvfabric.vnet.kernel.encode import encoder
from nvfabric.vnet.kernel.objects import Clsact, DummyDevice, GreTunnel, Sysctl, TunnelAddress
from tests.unit.test_gateway_status import RR, Client, other_gateway, settle

SITES4, SITES6 = "203.0.113.250", "2001:db8:b00::250"
BLUE = {"name": "blue", "route_targets": ["65001:1"], "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}],
        "snat": ["203.0.113.140"],
        "sites": [{"name": "depot", "kind": "gre", "remote_address": "203.0.113.60", "key": 4711,
                   "prefixes": ["10.40.0.0/24"]},
                  {"name": "paris", "remote_address": "203.0.113.50", "psk": "a-site-key-of-24-chars!!",
                   "prefixes": ["10.20.0.0/24"]}]}
BODY = {
    "asn": 65001, "router_id": "198.51.100.22", "provider_addresses": ["198.51.100.22"],
    "provider_prefixes": ["198.51.100.0/24"], "standby": True, "route_reflectors": [{"address": RR}],
    "external": {"interfaces": ["eth2"], "address4": "203.0.113.22", "address6": "2001:db8:113::22",
                 "sites_address4": SITES4, "sites_address6": SITES6},
    "upstream": [{"address": "203.0.113.1", "asn": 64496}],
    "public_prefixes": ["203.0.113.0/24", "2001:db8:b00::/40"], "tenants": [BLUE]}


def external(**change: object) -> dict:
    return {**BODY, "external": {**BODY["external"], **change}}


@pytest.mark.parametrize(("body", "field", "match"), [
    (external(sites_address4="2001:db8:b00::9"), "external.sites_address4", "not an IPv4 address"),
    (external(sites_address4="198.18.0.1"), "external.sites_address4", "outside public_prefixes"),
    ({**BODY, "public_prefixes": []}, "external.sites_address4", r"outside public_prefixes \(none set\)"),
    (external(sites_address4="203.0.113.22"), "external.sites_address4", "is external.address4"),
    (external(sites_address4="203.0.113.1"), "external.sites_address4", r"is upstream\[0\].address"),
    (external(sites_address4="224.0.0.9"), "external.sites_address4", "not a unicast address"),
    (external(address6=None), "external.sites_address6", "needs external.address6: the next hop"),
    ({**BODY, "upstream": []}, "external.sites_address4", "needs an upstream"),
    ({**BODY, "provider_addresses": [], "tenants": []}, "external.sites_address4", "no VRFs"),
    # a tenant may not claim it: not as SNAT, not as a floating IP, not inside its public prefix
    ({**BODY, "tenants": [{**BLUE, "snat": [SITES4]}]}, "tenants[0].snat[0].address", "external.sites_address4"),
    ({**BODY, "tenants": [{**BLUE, "floating_ips": [{"public": SITES4, "private": "10.0.0.5"}]}]},
     "tenants[0].floating_ips[0].public", "external.sites_address4"),
    ({**BODY, "tenants": [{**BLUE, "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24", "2001:db8:b00::/64"]}],
                           "public_prefixes": ["2001:db8:b00::/64"]}]}, "tenants[0].public_prefixes[0]",
     "external.sites_address6"),
    # nor a site's far end
    ({**BODY, "tenants": [{**BLUE, "sites": [{**BLUE["sites"][0], "remote_address": SITES4}]}]},
     "tenants[0].sites[0].remote_address", "external.sites_address4"),
])
def test_a_sites_address_that_cannot_work_is_refused_naming_its_field(body: dict, field: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse(body)
    assert info.value.field == field, info.value


def test_gre_sites_end_on_the_sites_address_and_ipsec_sites_on_the_external_address() -> None:
    config = parse(BODY)
    ext = config.external
    tenant = config.tenants[0]
    (tunnel,) = [o for o in site_objects(tenant, 1000, ext) if isinstance(o, GreTunnel)]
    assert (tunnel.local, tunnel.remote, tunnel.gre_key) == (SITES4, "203.0.113.60", 4711)
    # the decapsulation table lets the site's GRE through to the sites address, not to the external address
    assert site_tunnels([tenant], ext) == {decap.SiteTunnel(ipaddress.ip_address("203.0.113.60"),
                                                            ipaddress.ip_address(SITES4), 4711)}
    assert decap_filter({"blue": tenant}, {"blue": 1000}, {}, False, None, ext).sites == site_tunnels([tenant], ext)
    # without a sites address a GRE site ends on the external address, as before
    plain = parse(external(sites_address4=None, sites_address6=None))
    (tunnel,) = [o for o in site_objects(plain.tenants[0], 1000, plain.external) if isinstance(o, GreTunnel)]
    assert tunnel.local == "203.0.113.22"
    assert gateway_globals(["nvf-gre4"], plain.external) == {Clsact("nvf-gre4", 7637)}


def test_the_sites_address_is_on_a_dummy_device_with_no_arp_answered_on_the_external_link() -> None:
    ext = parse(BODY).external
    assert gateway_globals(["nvf-gre4"], ext) == {
        Clsact("nvf-gre4", 7637), DummyDevice(SITES_DEVICE), TunnelAddress(SITES_DEVICE, SITES4, 32),
        TunnelAddress(SITES_DEVICE, SITES6, 128), Sysctl("net/ipv4/conf/eth2/arp_ignore", "1"),
        Sysctl("net/ipv4/conf/eth2/arp_announce", "2")}
    # the device encodes as a dummy link, up, and reads back as one
    (request,) = encoder(DummyDevice(SITES_DEVICE)).encode(Op(Action.CREATE, DummyDevice(SITES_DEVICE)), _Wire())  # type: ignore[arg-type]
    fields = m.parse_link(request[1])
    assert (fields.name, fields.kind) == (SITES_DEVICE, "dummy")


class _Wire:
    """What a device's create needs of encode.Wire: the message (no socket, no index)."""

    def msg(self, kind: int, flags: int, body: bytes) -> tuple[int, bytes]:
        return 1, m.message(kind, flags, 1, body)


def sites_routes(gw: Gateway) -> set[str]:
    return {str(k.prefix) for k in gw._upstream.announced if str(k.prefix) in (f"{SITES4}/32", f"{SITES6}/128")}


async def test_the_sites_address_is_held_by_both_roles_and_announced_by_the_serving_one() -> None:
    gw = Gateway(GatewayConfig.from_dict(BODY))
    log: list[tuple] = []
    assert gw._fabric is not None and gw._upstream is not None and gw._dp is not None
    gw._fabric.client = Client(log, "fabric")  # type: ignore[assignment]
    gw._upstream.client = Client(log, "upstream")  # type: ignore[assignment]
    gw._fabric._tenants = gw.tenants
    held = gateway_globals(gw._dp.devices, gw.config.external)

    def holds() -> bool:
        return held <= gw._dp.parts(gw.tenants, {"blue": 1000}, {})[GLOBAL]

    t0 = time.monotonic()
    f = gw._fabric
    f.client.table = {1: other_gateway("198.51.100.21")}
    f.on_status(PeerStatus(RR, "established"), t0)
    f.on_status(PeerStatus(RR, "end-of-rib"), t0)
    await settle(gw)
    assert not gw.serving and sites_routes(gw) == set() and holds()  # a standby: held, not announced
    f.client.table = {}
    await settle(gw)  # taking over: announced with the tenants' public addresses, next hop the external address
    assert gw.serving and sites_routes(gw) == {f"{SITES4}/32", f"{SITES6}/128"} and holds()
    assert set(own_routes(gw.config.external).values()) <= set(gw._upstream.announced.values())
    assert {str(r.next_hop) for r in own_routes(gw.config.external).values()} == {"203.0.113.22", "2001:db8:113::22"}
    # a tenant change leaves the gateway's own announcement alone
    log.clear()
    await gw._upstream.update({"blue": Tenant.from_dict({**BLUE, "snat": ["203.0.113.141"]})})
    assert sites_routes(gw) == {f"{SITES4}/32", f"{SITES6}/128"}
    assert all(SITES4 not in str(entry) for entry in log)
    # isolated: announced depreferred (our AS prepended), as the public addresses are
    log.clear()
    f.on_status(PeerStatus(RR, "down"), time.monotonic())
    await settle(gw)
    assert gw.upstream_mode == DEPREFERRED and sites_routes(gw) == {f"{SITES4}/32", f"{SITES6}/128"}
    (announced,) = [e[2] for e in log if e[:2] == ("upstream", "announce")]
    own = [p for p in announced if isinstance(p, Path) and str(p.route.prefix) == f"{SITES4}/32"]
    assert own and len(own[0].attrs.as_path[0].asns) > 1
    # back from isolation the role is judged later: the sites address stays with the public addresses
    f.on_status(PeerStatus(RR, "established"), time.monotonic())
    await settle(gw)
    assert ("203.0.113.140/32" in {str(k.prefix) for k in gw._upstream.announced}) == bool(sites_routes(gw))
    assert holds()


def test_sysctls_are_applied_apart_from_the_netlink_objects_of_their_level() -> None:
    """The sites address (a TunnelAddress) and the external links' ARP sysctls share a dependency level: the
    writer must send the one over netlink and write the others to /proc, never take one for the other."""
    ext = parse(BODY).external
    plan = order([Op(Action.CREATE, o) for o in gateway_globals([], ext)])
    phases = [{type(op.obj) for op in phase} for phase in _phases(plan)]
    assert phases == [{DummyDevice}, {Sysctl}, {TunnelAddress}]
