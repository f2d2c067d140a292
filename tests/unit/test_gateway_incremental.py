"""A one-tenant change does the work of that tenant only (docs/benchmarks.md "Gateway scale"), and what it computes is
what the whole recomputation gives: the claims index against the full check, the per-tenant vnet partition
against vnet's whole desired state, the per-tenant upstream and type-5 updates against the whole sets."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.dataplane import Dataplane, gateway_globals, tenant_extras
from nvfabric.gateway.evpn import Fabric, default_routes
from nvfabric.gateway.tenants import Claims, Tenant, check_tenants
from nvfabric.gateway.upstream import Upstream, public_routes
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.desired import HostIdentity, allocate_tables, desired_state
from nvfabric.vnet.errors import ConflictError
from nvfabric.vnet.model import LookupRecord


def tenant(name: str, vsid: int, snat: str, fip: str | None = None, **extra: object) -> Tenant:
    return Tenant.from_dict({"name": name, "route_targets": [f"65001:{vsid}"],
                             "subnets": [{"vsid": vsid, "prefixes": ["10.0.0.0/24", "2001:db8:1000::/36"]}],
                             "snat": [snat],
                             "floating_ips": [] if fip is None else [{"public": fip, "private": "10.0.0.5"}],
                             **extra})


BLUE = tenant("blue", 5001, "203.0.113.11", "203.0.113.21")
RED = tenant("red", 6001, "203.0.113.12", "203.0.113.22")


@pytest.mark.parametrize("other, field, shown", [
    (tenant("red", 6001, "203.0.113.11"), "snat[0].address", "203.0.113.11"),
    (tenant("red", 6001, "203.0.113.12", "203.0.113.21"), "floating_ips[0].public", "203.0.113.21"),
    (tenant("red", 6001, "203.0.113.21"), "snat[0].address", "203.0.113.21"),
    (tenant("red", 5001, "203.0.113.12"), "subnets[0].vsid", "5001"),
])
def test_claims_refuse_what_another_tenant_holds(other: Tenant, field: str, shown: str) -> None:
    claims = Claims.of({"blue": BLUE})
    with pytest.raises(ConflictError) as refused:
        claims.check(other)
    assert (refused.value.field, str(refused.value.value)) == (field, shown)
    assert "tenant 'blue'" in str(refused.value)


def test_claims_let_a_tenant_keep_its_own_and_free_them_when_it_goes() -> None:
    claims = Claims.of({"blue": BLUE, "red": RED})
    claims.check(tenant("blue", 5001, "203.0.113.11", "203.0.113.23"))  # a replacement keeps its own
    claims.put(tenant("blue", 5001, "203.0.113.11", "203.0.113.23"))
    claims.check(tenant("green", 7001, "203.0.113.13", "203.0.113.21"))  # blue's old floating IP is free
    claims.remove("blue")
    claims.check(tenant("green", 5001, "203.0.113.11"))  # and its VSID and SNAT address


@pytest.mark.parametrize("mine, theirs, overlap", [
    ("2001:db8:1000::/48", "2001:db8:1000::/48", True),
    ("2001:db8:1000::/48", "2001:db8:1000:5::/64", True),  # theirs inside mine
    ("2001:db8:1000:5::/64", "2001:db8:1000::/40", True),  # mine inside theirs
    ("2001:db8:1000::/48", "2001:db8:1001::/48", False),
    ("2001:db8:1000:5::/64", "2001:db8:1000:4::/64", False),
])
def test_claims_find_overlapping_public_prefixes_either_way(mine: str, theirs: str, overlap: bool) -> None:
    claims = Claims.of({"red": Tenant.from_dict({**RED.as_dict(), "public_prefixes": [theirs]})})
    blue = Tenant.from_dict({**BLUE.as_dict(), "public_prefixes": [mine]})
    if overlap:
        with pytest.raises(ConflictError, match="overlaps tenant 'red'") as refused:
            claims.check(blue)
        assert refused.value.field == "public_prefixes[0]"
    else:
        claims.check(blue)
    claims.remove("red")
    claims.check(blue)


def test_check_tenants_is_the_claims_in_name_order() -> None:
    with pytest.raises(ConflictError) as refused:
        check_tenants({"red": tenant("red", 6001, "203.0.113.11"), "blue": BLUE}, {"red": "tenants[1]"})
    assert refused.value.field == "tenants[1].snat[0].address"


IDENTITY = HostIdentity("02:00:5e:10:00:01", (ipaddress.ip_address("198.51.100.21"),
                                              ipaddress.ip_address("2001:db8::21")))


def _records(name: str, vsid: int, cas: list[str]) -> tuple[LookupRecord, ...]:
    return tuple(LookupRecord(name, vsid, ipaddress.ip_address(ca), "02:00:00:00:00:01",
                              ipaddress.ip_address("198.51.100.11")) for ca in cas)


def test_the_per_tenant_partitions_make_vnets_whole_desired_state() -> None:
    tenants = {"blue": BLUE, "red": RED, "green": tenant("green", 7001, "203.0.113.13")}
    ids = allocate_tables(tenants, {})
    records = {"blue": _records("blue", 5001, ["10.0.0.5", "2001:db8:1000::5"]),
               "red": _records("red", 6001, ["10.0.0.5"])}
    dp = Dataplane(None, IDENTITY, GatewayConfig.from_dict(
        {"asn": 65001, "router_id": "198.51.100.21", "external": {"interfaces": ["eth2"]}}).external)
    whole = desired_state(Catalog.build({n: t.routing_domain for n, t in tenants.items()}, {}),
                          [r for rs in records.values() for r in rs], (), {}, IDENTITY, ids).objects
    whole |= frozenset().union(*(tenant_extras(tenants[n], ids[n], dp.external) for n in tenants))  # fwmark rules etc.
    whole |= gateway_globals(dp.devices)  # the tc hooks
    assert frozenset().union(*dp.parts(tenants, ids, records).values()) == whole
    # one tenant at a time: only its partition, and the partitions make the whole
    one = {n: dp.parts(tenants, ids, records, only=[n]) for n in tenants}
    assert all(list(p) == [n] for n, p in one.items())
    assert frozenset().union(*dp.parts({}, ids, {}).values(), *(p[n] for n, p in one.items())) == whole
    assert one["blue"]["blue"] != one["red"]["red"] and len(one["blue"]["blue"]) > len(one["green"]["green"])
    # a deleted tenant's partition is empty (vnet.reconcile removes its objects)
    assert dp.parts({"blue": BLUE}, ids, records, only=["green"]) == {"green": frozenset()}


class Recorder:
    """Stands for bgp.client.Client: what was announced and withdrawn, in calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list]] = []

    async def announce(self, routes) -> None:
        self.calls.append(("announce", list(routes)))

    async def withdraw(self, keys) -> None:
        self.calls.append(("withdraw", list(keys)))


CONFIG_BODY = {
    "asn": 65001, "router_id": "198.51.100.21", "provider_addresses": ["198.51.100.21"],
    "route_reflectors": [{"address": "198.51.100.100"}],
    "external": {"interfaces": ["eth2"], "address4": "203.0.113.2"},
    "upstream": [{"address": "203.0.113.1", "asn": 64496}]}
CONFIG = GatewayConfig.from_dict(CONFIG_BODY)


def test_upstream_update_announces_only_the_changed_tenant() -> None:
    up = Upstream(CONFIG)
    up.client = Recorder()  # type: ignore[assignment]
    asyncio.run(up.sync([BLUE, RED]))
    assert up.announced == public_routes([BLUE, RED], *up.next_hops)
    moved = tenant("blue", 5001, "203.0.113.11", "203.0.113.23")
    up.client.calls.clear()
    asyncio.run(up.update({"blue": moved}))
    assert [(what, sorted(str(getattr(r, "prefix", r)) for r in rs)) for what, rs in up.client.calls] == [
        ("withdraw", ["203.0.113.21/32"]), ("announce", ["203.0.113.23/32"])]
    assert up.announced == public_routes([moved, RED], *up.next_hops)
    asyncio.run(up.update({"red": None}))
    assert up.announced == public_routes([moved], *up.next_hops)
    asyncio.run(up.sync([]))  # a standby giving back: nothing announced
    assert up.announced == {}


def test_fabric_update_announces_only_the_changed_tenants_default_routes() -> None:
    async def go() -> None:
        fabric = Fabric(CONFIG, on_records=lambda records: asyncio.sleep(0))
        fabric.client = Recorder()  # type: ignore[assignment]
        fabric.serving = True  # as applied once the role (gateway/role.py) says this gateway serves
        await fabric.sync({"blue": BLUE, "red": RED})
        assert fabric.announced == default_routes([BLUE, RED], CONFIG)
        green = tenant("green", 7001, "203.0.113.13")
        fabric.client.calls.clear()
        await fabric.update({"green": green}, {"blue": BLUE, "red": RED, "green": green})
        assert [what for what, _ in fabric.client.calls] == ["announce"]
        assert {r.vsid for _, rs in fabric.client.calls for r in rs} == {7001}
        await fabric.update({"red": None}, {"blue": BLUE, "green": green})
        assert fabric.announced == default_routes([BLUE, green], CONFIG)
    asyncio.run(go())


def test_keep_records_while_the_reflectors_refill() -> None:
    from nvfabric.gateway.evpn import keep_records

    old = _records("blue", 5001, ["10.0.0.5", "10.0.0.6"])
    moved = tuple(LookupRecord("blue", 5001, r.ca, r.mac, ipaddress.ip_address("198.51.100.13")) for r in old[:1])
    assert keep_records(old, moved) == (moved[0], old[1])  # replaced where learned, kept where not (yet)
    assert keep_records((), moved) == moved


def test_the_role_judges_an_end_of_rib_with_the_routes_delivered_before_it() -> None:
    """The table as delivered up to the End-of-RIB is the role's input (a route still on its way to the
    learner must not make a gateway announce); and no learned CA is removed while the table is incomplete."""
    import time

    from nvfabric.bgp.routes import PrefixRoute
    from nvfabric.bgp.speaker import PeerStatus
    from nvfabric.gateway.role import HOLD_WAIT

    other = PrefixRoute(rd="198.51.100.22:1", prefix=ipaddress.ip_network("0.0.0.0/0"), vsid=5001,
                        next_hop=ipaddress.ip_address("198.51.100.22"), route_targets=("65001:5001",))
    config = GatewayConfig.from_dict({**CONFIG_BODY, "provider_prefixes": ["198.51.100.0/24"]})

    async def go() -> None:
        fabric = Fabric(config, on_records=lambda records: asyncio.sleep(0))  # configured active
        fabric._tenants = {"blue": BLUE, "red": RED}  # (start's, with the default routes)
        t0 = time.monotonic()
        assert fabric.hold.holding
        fabric.on_status(PeerStatus("198.51.100.100", "established"), t0)
        fabric.client = Learned([other])  # type: ignore[assignment]
        fabric.on_status(PeerStatus("198.51.100.100", "end-of-rib"), t0 + 0.1)
        assert not fabric.role.serving and fabric.role.reason == "standing by: gateway 198.51.100.22 serves"
        assert not fabric.hold.holding and not fabric.recovering(t0 + 0.1)
        # no reflector session at all, then back with a table that may be empty: hold, judge nothing
        fabric.client = Learned([])  # type: ignore[assignment]
        fabric.on_status(PeerStatus("198.51.100.100", "down"), t0 + 10)
        assert fabric.hold.holding and not fabric.role.serving
        fabric.on_status(PeerStatus("198.51.100.100", "established"), t0 + 20)
        fabric.on_status(PeerStatus("198.51.100.100", "end-of-rib"), t0 + 20.5)
        assert fabric.hold.holding and fabric.recovering(t0 + 20.5) and not fabric.role.serving
        fabric.role = fabric.role.on_timer(t0 + 20 + HOLD_WAIT)
        assert not fabric.hold.holding and fabric.role.serving  # nobody serves: the configured active
    asyncio.run(go())


class Learned:
    """Stands for bgp.client.Client's delivered table: what the reflectors sent."""

    def __init__(self, routes) -> None:
        self._routes = {i: r for i, r in enumerate(routes)}

    def routes(self):
        return self._routes


def test_the_gateway_imports_only_what_the_hosts_import() -> None:
    from nvfabric.bgp.routes import MacIpRoute, PrefixRoute

    config = GatewayConfig.from_dict({**CONFIG_BODY, "provider_prefixes": ["198.51.100.0/24"]})
    fabric = Fabric(config, on_records=lambda records: asyncio.sleep(0))

    def t2(ip: str, next_hop: str, rt: str = "65001:5001", vsid: int = 5001) -> MacIpRoute:
        return MacIpRoute(rd=f"{next_hop}:1", mac="02:00:00:00:00:05", ip=ipaddress.ip_address(ip), vsid=vsid,
                          next_hop=ipaddress.ip_address(next_hop), route_targets=(rt,))

    fabric.client = Learned([  # type: ignore[assignment]
        t2("10.0.0.5", "198.51.100.11"),  # a host of the fabric: learned
        t2("10.0.0.6", "192.0.2.66"),  # a next hop outside the provider prefixes
        t2("10.0.0.7", "198.51.100.12", rt="65001:6001"),  # blue's VSID with red's route target
        t2("10.0.0.1", "198.51.100.12"),  # blue's subnet gateway
    ])
    fabric._tenants = {"blue": BLUE, "red": RED}
    assert [(str(r.ca), str(r.pa)) for r in fabric.records()] == [("10.0.0.5", "198.51.100.11")]
    assert fabric.screened.counts == {"next_hop": 1, "route_target": 1, "reserved_address": 1}

    # a default route from outside the provider's space does not make a standby stand aside
    rogue = PrefixRoute(rd="192.0.2.66:1", prefix=ipaddress.ip_network("0.0.0.0/0"), vsid=5001,
                        next_hop=ipaddress.ip_address("192.0.2.66"), route_targets=("65001:5001",))
    fabric.client = Learned([rogue])  # type: ignore[assignment]
    assert fabric._fabric_routes() == []
    other = PrefixRoute(rd="198.51.100.22:1", prefix=ipaddress.ip_network("0.0.0.0/0"), vsid=5001,
                        next_hop=ipaddress.ip_address("198.51.100.22"), route_targets=("65001:5001",))
    fabric.client = Learned([rogue, other])  # type: ignore[assignment]
    assert fabric._fabric_routes() == [other]
    # nor one inside it for a VSID no tenant has, or with another tenant's route target (a fuzzer's, a
    # compromised host's: the hosts refuse them too)
    stray = PrefixRoute(rd="198.51.100.9:1", prefix=ipaddress.ip_network("0.0.0.0/0"), vsid=4242,
                        next_hop=ipaddress.ip_address("198.51.100.9"), route_targets=("65001:5001",))
    crossed = PrefixRoute(rd="198.51.100.9:2", prefix=ipaddress.ip_network("0.0.0.0/0"), vsid=5001,
                          next_hop=ipaddress.ip_address("198.51.100.9"), route_targets=("65001:6001",))
    fabric.client = Learned([stray, crossed, other])  # type: ignore[assignment]
    assert fabric._fabric_routes() == [other]
    assert fabric.others() == {ipaddress.ip_address("198.51.100.22")}
