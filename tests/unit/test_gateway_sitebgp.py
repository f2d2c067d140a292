"""eBGP with a tenant's site as values (gateway/sitebgp.py): the `bgp:` of a site and what is refused, the
judgement of what a site announces (a hostile site takes neither the tenant's subnets nor its default route),
and what the accepted prefixes become: routes to the tunnel in the tenant's VRF (gateway/dataplane.py), EVPN
type-5 routes into the tenant (gateway/evpn.py), the tenant's subnets announced to the site, the session's
speaker (gateway/sitepeers.py); and the tunnel's address on its device, on this machine's kernel."""

from __future__ import annotations

import ipaddress

import pytest

from nvfabric.bgp.config import MaxPrefixAction
from nvfabric.bgp.routes import PrefixRoute, UnicastRoute
from nvfabric.gateway.config import ConfigError, External, GatewayConfig, parse
from nvfabric.gateway.dataplane import Dataplane, learned_routes, site_objects
from nvfabric.gateway.evpn import Fabric
from nvfabric.gateway.sitebgp import Verdict, judge, prefix_routes, to_site
from nvfabric.gateway.sitepeers import speaker_config
from nvfabric.gateway.tenants import Tenant
from nvfabric.lab import netns
from nvfabric.vnet.desired import HostIdentity
from nvfabric.vnet.errors import ModelError
from nvfabric.vnet.kernel.apply import apply, link_indexes
from nvfabric.vnet.kernel.diff import Action, Op, Plan, diff
from nvfabric.vnet.kernel.netns import RtnlSocket
from nvfabric.vnet.kernel.objects import GreTunnel, LocalPortRoute, TunnelAddress, XfrmInterface
from nvfabric.vnet.kernel.observe import vrf_addresses
from tests.unit.test_vnet_vrf_address import ns  # noqa: F401 - the fixture (a namespace with our veths)

KEY = "a-site-key-of-24-chars!!"
BGP = {"peer_address": "10.255.0.2", "peer_as": 65020, "local_address": "10.255.0.1/30"}
SITE = {"name": "paris", "remote_address": "203.0.113.50", "psk": KEY, "prefixes": ["10.20.0.0/24"], "bgp": BGP}
BLUE = {"name": "blue", "route_targets": ["65000:1"], "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}]}
DEV = "nvf-s3e81"  # tenant id 1000, slot 1


def tenant(*sites: dict) -> Tenant:
    return Tenant.from_dict({**BLUE, "sites": list(sites)})


def net(*prefixes: str) -> tuple:
    return tuple(ipaddress.ip_network(p) for p in prefixes)


def test_a_sites_bgp_is_read_with_its_defaults_and_given_back() -> None:
    site = tenant(SITE).sites[0]
    assert site.bgp is not None
    b = site.bgp
    assert (str(b.peer_address), b.peer_as, str(b.local_address), b.local_as, b.hold_time, b.max_prefixes, b.accept) \
        == ("10.255.0.2", 65020, "10.255.0.1/30", None, None, 1000, ())
    assert Tenant.from_dict(tenant(SITE).as_dict()) == tenant(SITE)  # GET gives what PUT takes
    # with bgp, static prefixes are optional
    assert tenant({**SITE, "prefixes": []}).sites[0].prefixes == ()
    full = {**BGP, "local_as": 64999, "hold_time": 30, "max_prefixes": 10, "accept": ["10.30.0.0/16"]}
    assert Tenant.from_dict(tenant({**SITE, "bgp": full}).as_dict()).sites[0].bgp.as_dict() == {**full}


@pytest.mark.parametrize(("change", "site_change", "field", "match"), [
    ({"peer_as": 0}, {}, "sites[0].bgp.peer_as", "AS number"),
    ({"peer_as": 23456}, {}, "sites[0].bgp.peer_as", "AS_TRANS"),
    ({"peer_as": "65020"}, {}, "sites[0].bgp.peer_as", "AS number"),
    ({"local_as": 65020}, {}, "sites[0].bgp.peer_as", "eBGP"),
    ({"local_as": 2 ** 32}, {}, "sites[0].bgp.local_as", "AS number"),
    ({"peer_address": "fd00::2"}, {}, "sites[0].bgp.peer_address", "family"),
    ({"peer_address": "10.255.0.9"}, {}, "sites[0].bgp.peer_address", "outside local_address's prefix"),
    ({"peer_address": "10.255.0.1"}, {}, "sites[0].bgp.peer_address", "local_address itself"),
    ({"peer_address": "10.255.0.3"}, {}, "sites[0].bgp.peer_address", "broadcast"),
    ({"local_address": "10.255.0.1/32"}, {}, "sites[0].bgp.local_address", "prefix length"),
    ({"local_address": "10.255.0.1"}, {}, "sites[0].bgp.local_address", "prefix length"),
    ({"local_address": "nowhere/30"}, {}, "sites[0].bgp.local_address", "not an address"),
    ({"peer_address": "there"}, {}, "sites[0].bgp.peer_address", "not an IPv4"),
    ({"hold_time": 2}, {}, "sites[0].bgp.hold_time", "RFC 4271"),
    ({"max_prefixes": 0}, {}, "sites[0].bgp.max_prefixes", "1..100000"),
    ({"accept": ["10.30.0.1/16"]}, {}, "sites[0].bgp.accept[0]", "not a network prefix"),
    ({"colour": "red"}, {}, "sites[0].bgp.colour", "unknown field"),
    # the tunnel must carry the session and what is accepted
    ({"accept": ["10.40.0.0/16"]}, {"remote_ts": ["10.20.0.0/16", "10.255.0.2/32"]}, "sites[0].bgp.accept[0]",
     "outside every remote_ts"),
    ({}, {"remote_ts": ["10.20.0.0/16"]}, "sites[0].bgp.peer_address", "outside every remote_ts"),
    ({}, {"local_ts": ["10.0.0.0/24"]}, "sites[0].bgp.local_address", "outside every local_ts"),
    # the tunnel's prefix is neither the tenant's nor a site's
    ({"local_address": "10.0.0.1/30", "peer_address": "10.0.0.2"}, {}, "sites[0].bgp.local_address",
     "the tenant's subnet"),
    ({"local_address": "10.20.0.1/30", "peer_address": "10.20.0.2"}, {}, "sites[0].bgp.local_address",
     r"sites\[0\]\.prefixes\[0\]"),
])
def test_a_wrong_bgp_is_refused_naming_its_field(change: dict, site_change: dict, field: str, match: str) -> None:
    with pytest.raises(ModelError, match=match) as info:
        tenant({**SITE, **site_change, "bgp": {**BGP, **change}})
    assert info.value.field == field, info.value
    assert KEY not in str(info.value)


def test_missing_bgp_fields_and_a_site_with_neither_prefixes_nor_bgp_are_named() -> None:
    for key in ("peer_address", "peer_as", "local_address"):
        with pytest.raises(ModelError, match="required with bgp") as info:
            tenant({**SITE, "bgp": {k: v for k, v in BGP.items() if k != key}})
        assert info.value.field == f"sites[0].bgp.{key}"
    with pytest.raises(ModelError, match="without bgp") as info:
        tenant({**SITE, "prefixes": [], "bgp": None})
    assert info.value.field == "sites[0].prefixes"


def test_two_sites_may_not_share_a_tunnel_prefix() -> None:
    lyon = {**SITE, "name": "lyon", "remote_address": "203.0.113.51", "prefixes": ["10.21.0.0/24"],
            "bgp": {**BGP, "local_address": "10.255.0.2/30", "peer_address": "10.255.0.1"}}
    with pytest.raises(ModelError, match=r"overlaps sites\[0\].bgp.local_address") as info:
        tenant(SITE, lyon)
    assert info.value.field == "sites[1].bgp.local_address"


def _config(**bgp) -> dict:
    return {"asn": 65000, "router_id": "198.51.100.21", "provider_addresses": ["198.51.100.21"],
            "external": {"interfaces": ["ext"], "next_hop4": "203.0.113.1", "address4": "203.0.113.2"},
            "tenants": [{**BLUE, "sites": [{**SITE, "bgp": {**BGP, **bgp}}]}]}


def test_a_site_in_the_gateways_own_as_is_refused_unless_local_as_says_otherwise() -> None:
    with pytest.raises(ConfigError, match="gateway's own AS") as info:
        parse(_config(peer_as=65000))
    assert info.value.field == "tenants[0].sites[0].bgp.peer_as"
    assert parse(_config(peer_as=65000, local_as=65010)).tenants[0].sites[0].bgp.local_as == 65010


def test_what_a_site_announces_is_judged_hostile_announcements_refused() -> None:
    t = tenant({**SITE, "bgp": {**BGP, "accept": ["10.0.0.0/8"]}},
               {**SITE, "name": "lyon", "remote_address": "203.0.113.51", "prefixes": ["10.21.0.0/24"], "slot": 2,
                "bgp": {**BGP, "local_address": "10.255.1.1/30", "peer_address": "10.255.1.2"}})
    verdicts = judge(t, {
        "paris": net("10.30.0.0/24", "0.0.0.0/0", "10.0.0.0/24", "10.0.0.128/25", "10.0.0.0/8", "192.168.1.0/24",
                     "10.21.0.0/24", "10.20.0.0/24", "10.255.1.0/30", "10.40.0.0/16"),
        "lyon": net("10.40.1.0/24", "10.50.0.0/24", "fd00:50::/64"),
        "gone": net("10.60.0.0/24"),  # a site the tenant no longer has: ignored
    })
    assert set(verdicts) == {"paris", "lyon"}
    paris = verdicts["paris"]
    assert paris.accepted == net("10.20.0.0/24", "10.30.0.0/24", "10.40.0.0/16")
    reasons = {str(p): r for p, r in paris.refused}
    assert reasons == {
        "0.0.0.0/0": "a default route: the tenant's way out is the gateway's",
        "10.0.0.0/24": "overlaps the tenant's subnet 10.0.0.0/24",
        "10.0.0.128/25": "overlaps the tenant's subnet 10.0.0.0/24",
        "10.0.0.0/8": "overlaps the tenant's subnet 10.0.0.0/24",
        "192.168.1.0/24": "outside the site's accept (or remote_ts)",
        "10.21.0.0/24": "overlaps the prefix 10.21.0.0/24 of site lyon",
        "10.255.1.0/30": "overlaps the tunnel addresses of site lyon (10.255.1.0/30)",
    }
    # lyon (slot 2) loses what overlaps paris's; its remote_ts (default 0/0, ::/0) allows the rest
    assert verdicts["lyon"].accepted == net("10.50.0.0/24", "fd00:50::/64")
    assert verdicts["lyon"].refused == ((ipaddress.ip_network("10.40.1.0/24"),
                                         "overlaps 10.40.0.0/16, learned from site paris"),)
    assert Verdict((ipaddress.ip_network("10.30.0.0/24"),), ()).as_dict() == {"accepted": ["10.30.0.0/24"],
                                                                             "refused": []}


def test_accepted_prefixes_are_routed_to_the_tunnel_in_the_tenants_vrf() -> None:
    t = tenant(SITE)
    learned = {"paris": net("10.30.0.0/24", "10.20.0.0/24", "10.0.0.0/24", "0.0.0.0/0")}
    # the static prefix is its route already; the tenant's own subnet and a default route never are
    assert learned_routes(t, 1000, learned) == {LocalPortRoute(1000, "10.30.0.0/24", DEV)}
    assert learned_routes(t, 1000, {}) == frozenset()
    # the tunnel's device carries the gateway's inside address (its connected prefix reaches the peer)
    external = External(("ext",), address4=ipaddress.ip_address("203.0.113.2"))
    assert site_objects(t, 1000, external) == {XfrmInterface(DEV, 16001, "nvf-blue"),
                                               LocalPortRoute(1000, "10.20.0.0/24", DEV),
                                               TunnelAddress(DEV, "10.255.0.1", 30)}


def test_a_gre_site_runs_bgp_across_its_tunnel_as_an_ipsec_site_does() -> None:
    gre = {"name": "depot", "kind": "gre", "remote_address": "198.18.0.9", "key": 4711, "prefixes": [], "bgp": BGP}
    t = tenant(gre)
    site = t.sites[0]
    assert Tenant.from_dict(t.as_dict()) == t and t.as_dict()["sites"][0]["bgp"] == site.bgp.as_dict()
    # its GRE device carries the gateway's inside address; the session is dialled from it, in the tenant's VRF
    external = External(("ext",), address4=ipaddress.ip_address("203.0.113.2"))
    assert site_objects(t, 1000, external) == {GreTunnel("nvf-g3e81", "nvf-blue", "203.0.113.2", "198.18.0.9", 4711),
                                               TunnelAddress("nvf-g3e81", "10.255.0.1", 30)}
    (n,) = speaker_config("blue", site, 65000, "198.51.100.21", 90).neighbors
    assert (n.address, n.local_address, n.bind_device) == ("10.255.0.2", "10.255.0.1", "nvf-blue")
    # what it announces is judged alike (a GRE site has no selectors: accept, else anything but the refusals)
    verdict = judge(t, {"depot": net("10.30.0.0/24", "10.0.0.0/24")})["depot"]
    assert verdict.accepted == net("10.30.0.0/24") and [str(p) for p, _ in verdict.refused] == ["10.0.0.0/24"]
    assert learned_routes(t, 1000, {"depot": net("10.30.0.0/24")}) == {LocalPortRoute(1000, "10.30.0.0/24",
                                                                                        "nvf-g3e81")}


def test_the_sites_prefixes_become_type5_routes_into_the_tenant_with_the_gateway_as_next_hop() -> None:
    t = tenant(SITE)
    pa = ipaddress.ip_address("198.51.100.21")
    verdicts = judge(t, {"paris": net("10.30.0.0/24", "0.0.0.0/0", "10.0.0.0/25", "fd00:30::/64")})
    routes = prefix_routes(t, verdicts, "198.51.100.21", pa, "02:00:5e:10:00:01")
    # static and learned; the tenant has no IPv6 subnet: no IPv6 route; nothing hostile
    assert sorted(str(r.prefix) for r in routes.values()) == ["10.20.0.0/24", "10.30.0.0/24"]
    for r in routes.values():
        assert isinstance(r, PrefixRoute)
        assert (r.vsid, r.next_hop, r.route_targets) == (5001, pa, t.routing_domain.route_targets)
    # the fabric announces them beside the tenant's default route
    config = GatewayConfig.from_dict({**_config(), "route_reflectors": [{"address": "198.51.100.1"}],
                                      "tenants": []})
    fabric = Fabric(config, records_sink)
    fabric.site_learned = lambda name: {"paris": net("10.30.0.0/24", "10.0.0.0/24")} if name == "blue" else {}
    assert sorted(str(r.prefix) for r in fabric.site_routes(t).values()) == ["10.20.0.0/24", "10.30.0.0/24"]


async def records_sink(records: tuple) -> None:
    del records


def test_the_tenants_subnets_are_announced_to_the_site_from_the_tunnel_address() -> None:
    t = Tenant.from_dict({**BLUE, "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24", "fd00:b::/64"]},
                                              {"vsid": 5002, "prefixes": ["10.0.1.0/24"]}], "sites": [SITE]})
    routes = to_site(t, t.sites[0])
    assert sorted(str(r.prefix) for r in routes.values()) == ["10.0.0.0/24", "10.0.1.0/24"]  # the session's family
    assert all(isinstance(r, UnicastRoute) and str(r.next_hop) == "10.255.0.1" for r in routes.values())


def test_the_session_is_dialled_from_the_tunnel_address_in_the_tenants_vrf() -> None:
    site = tenant(SITE).sites[0]
    config = speaker_config("blue", site, 65000, "198.51.100.21", 90)
    (n,) = config.neighbors
    assert (config.asn, config.hold_time, config.graceful_restart.enabled) == (65000, 90, True)
    assert (n.address, n.asn, n.local_address, n.bind_device) == ("10.255.0.2", 65020, "10.255.0.1", "nvf-blue")
    assert (n.max_prefix.limit, n.max_prefix.action) == (1000, MaxPrefixAction.TEARDOWN)
    own = tenant({**SITE, "bgp": {**BGP, "local_as": 64999, "hold_time": 9, "max_prefixes": 5}}).sites[0]
    config = speaker_config("blue", own, 65000, "198.51.100.21", 90)
    assert (config.asn, config.hold_time, config.neighbors[0].max_prefix.limit) == (64999, 9, 5)


async def _observed(sock: RtnlSocket) -> set:
    index = await link_indexes(sock)
    return {a async for a in vrf_addresses(sock, {}, {index["nvf-v0"]: "nvf-v0"})}


async def test_a_tunnel_address_is_created_read_back_replaced_and_deleted(ns):  # noqa: F811 - the fixture
    # (this kernel has no XFRM interface: the address goes on one of our veths, read back as a tunnel's)
    want = {TunnelAddress("nvf-v0", "10.255.0.1", 30), TunnelAddress("nvf-v0", "fd00:ff::1", 127)}
    report = await apply(ns, diff(want, await _observed(ns)))
    assert report.ok, report.errors
    assert await _observed(ns) == want
    assert diff(want, await _observed(ns)) == Plan(())
    shown = netns.run(["ip", "-n", ns.netns, "route", "show", "10.255.0.0/30"]).output
    assert shown.startswith("10.255.0.0/30 dev nvf-v0"), shown  # the peer is reached on the tunnel
    wider = {TunnelAddress("nvf-v0", "10.255.0.1", 29), TunnelAddress("nvf-v0", "fd00:ff::1", 127)}
    plan = diff(wider, await _observed(ns))
    assert [op.action for op in plan.ops] == [Action.REPLACE]
    assert (await apply(ns, plan)).ok and await _observed(ns) == wider
    assert (await apply(ns, diff(set(), await _observed(ns)))).ok and await _observed(ns) == set()
    again = await apply(ns, Plan((Op(Action.DELETE, TunnelAddress("nvf-v0", "10.255.0.1", 29)),)))
    assert again.ok, again.errors


async def test_the_routes_a_tunnel_address_took_with_it_are_put_back(ns):  # noqa: F811 - the fixture
    # the kernel deletes a device's IPv4 routes with its last IPv4 address: the site's static prefix routed to the
    # tunnel must survive its bgp being removed (seen in the VM before the dataplane read the kernel back)
    dp = Dataplane(ns.netns, HostIdentity("02:00:5e:10:00:01", ()), External(("ext",)))
    await dp.start()
    try:
        route = LocalPortRoute(100, "10.20.0.0/24", "nvf-v0")
        await dp._reconcile({"blue": {TunnelAddress("nvf-v0", "10.255.0.1", 30), route}})
        table = ["ip", "-n", ns.netns, "route", "show", "table", "100"]
        assert "10.20.0.0/24 dev nvf-v0" in netns.run(table).output
        await dp._reconcile({"blue": {route}})
        assert "10.20.0.0/24 dev nvf-v0" in netns.run(table).output
        assert await _observed(ns) == set()
    finally:
        dp.close()
