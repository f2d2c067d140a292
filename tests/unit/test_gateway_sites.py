"""A tenant's sites as values (gateway/sites.py), what they become in the kernel (gateway/dataplane.py), in
nftables (nat.py), in charon (gateway/strongswan.py), and what the gateway refuses (gateway/reserved.py)."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from nvfabric.gateway import nat
from nvfabric.gateway.api import keep_secrets
from nvfabric.gateway.config import ConfigError, External, parse
from nvfabric.gateway.dataplane import site_objects
from nvfabric.gateway.sites import DEFAULT_ESP_PROPOSALS, DEFAULT_IKE_PROPOSALS, HIDDEN, device_name, if_id
from nvfabric.gateway.strongswan import CharonFiles, charon_conf, connections, parse_sas
from nvfabric.gateway.tenants import Claims, Tenant
from nvfabric.vnet.errors import ConflictError, ModelError
from nvfabric.vnet.kernel import messages as m
from nvfabric.vnet.kernel.objects import GreTunnel, LocalPortRoute, XfrmInterface

KEY = "a-site-key-of-24-chars!!"
SITE = {"name": "paris", "remote_address": "203.0.113.50", "psk": KEY, "prefixes": ["10.20.0.0/24"]}
BLUE = {"name": "blue", "route_targets": ["65000:1"], "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}]}
EXTERNAL = External(("ext",), address4=ipaddress.ip_address("203.0.113.2"))


def tenant(*sites: dict, **over) -> Tenant:
    return Tenant.from_dict({**BLUE, **over, "sites": list(sites)})


def refused(body: dict, field: str, match: str = "") -> ModelError:
    with pytest.raises(ModelError, match=match) as info:
        tenant(body)
    assert info.value.field == field, info.value
    assert KEY not in str(info.value)  # the key is never in an error
    return info.value


def test_a_site_defaults_to_route_based_ipsec_with_modern_proposals() -> None:
    site = tenant(SITE).sites[0]
    assert (site.kind, site.slot) == ("ipsec", 1)
    assert [str(p) for p in site.local_ts + site.remote_ts] == ["0.0.0.0/0", "::/0"] * 2
    assert (site.ike_proposals, site.esp_proposals) == (DEFAULT_IKE_PROPOSALS, DEFAULT_ESP_PROPOSALS)
    assert DEFAULT_IKE_PROPOSALS == ("aes256gcm16-prfsha384-ecp384",)
    assert KEY not in repr(site)
    assert Tenant.from_dict(tenant(SITE).as_dict()) == tenant(SITE)  # GET gives what PUT takes


@pytest.mark.parametrize(("change", "field", "match"), [
    ({"psk": "short"}, "sites[0].psk", "20 to 256"),
    ({"psk": None}, "sites[0].psk", "20 to 256"),
    ({"auth": "certificate"}, "sites[0].psk", "not with auth certificate"),
    ({"auth": "rsa"}, "sites[0].auth", "psk or certificate"),
    ({"kind": "gre"}, "sites[0].psk", "no psk"),
    ({"kind": "wireguard"}, "sites[0].kind", "not supported yet"),
    ({"key": 5}, "sites[0].key", "kind gre only"),
    ({"kind": "l2tp"}, "sites[0].kind", "must be one of"),
    ({"remote_address": "224.0.0.5"}, "sites[0].remote_address", "unicast"),
    ({"remote_address": "nowhere"}, "sites[0].remote_address", "not an IPv4"),
    ({"prefixes": []}, "sites[0].prefixes", "at least one"),
    ({"prefixes": ["0.0.0.0/0"]}, "sites[0].prefixes[0]", "default route"),
    ({"prefixes": ["10.0.0.128/25"]}, "sites[0].prefixes[0]", "overlaps the tenant's subnet"),
    ({"prefixes": ["10.20.0.1/24"]}, "sites[0].prefixes[0]", "not a network prefix"),
    ({"remote_ts": ["10.30.0.0/16"]}, "sites[0].prefixes[0]", "outside every remote_ts"),
    ({"ike_proposals": ["AES GCM"]}, "sites[0].ike_proposals[0]", "not a proposal"),
    ({"esp_proposals": []}, "sites[0].esp_proposals", "at least one"),
    ({"slot": 16}, "sites[0].slot", "1..15"),
    ({"slot": True}, "sites[0].slot", "integer"),
    ({"colour": "blue"}, "sites[0].colour", "unknown field"),
])
def test_a_wrong_site_is_refused_naming_its_field(change: dict, field: str, match: str) -> None:
    refused({**SITE, **change}, field, match)


def test_a_missing_key_is_named() -> None:
    refused({k: v for k, v in SITE.items() if k != "psk"}, "sites[0].psk", "required")


def test_sites_of_one_tenant_differ_in_name_slot_address_and_prefixes() -> None:
    other = {**SITE, "name": "lyon", "remote_address": "203.0.113.51", "prefixes": ["10.21.0.0/24"]}
    assert [s.slot for s in tenant(SITE, other).sites] == [1, 2]
    for change, field in (({"name": "paris"}, "sites[1].name"), ({"slot": 1}, "sites[1].slot"),
                          ({"remote_address": "203.0.113.50"}, "sites[1].remote_address")):
        with pytest.raises(ModelError) as info:
            tenant(SITE, {**other, **change})
        assert info.value.field == field
    with pytest.raises(ModelError, match="overlaps sites") as info:
        tenant(SITE, {**other, "prefixes": ["10.20.0.0/25"]})
    assert info.value.field == "sites[1].prefixes[0]"


def test_two_tenants_may_share_site_prefixes_but_not_a_site_address() -> None:
    red = Tenant.from_dict({"name": "red", "route_targets": ["65000:2"], "subnets": [{"vsid": 6001, "prefixes":
                           ["10.0.0.0/24"]}], "sites": [{**SITE, "name": "office"}]})
    claims = Claims.of({"blue": tenant(SITE)})
    with pytest.raises(ConflictError, match="tenant 'blue'") as info:
        claims.check(red)
    assert info.value.field == "sites[0].remote_address"
    claims.check(Tenant.from_dict({**red.as_dict(), "sites": [{**SITE, "remote_address": "203.0.113.51"}]}))


def test_the_tunnel_is_an_xfrm_interface_in_the_tenants_vrf_with_the_site_prefixes_routed_to_it() -> None:
    site = tenant(SITE).sites[0]
    assert (if_id(1000, site), device_name(1000, site)) == (16001, "nvf-s3e81")
    assert site_objects(tenant(SITE), 1000, EXTERNAL) == {XfrmInterface("nvf-s3e81", 16001, "nvf-blue"),
                                                LocalPortRoute(1000, "10.20.0.0/24", "nvf-s3e81")}
    # another site of the tenant, and the tenant's id, give other if_ids
    other = tenant(SITE, {**SITE, "name": "lyon", "remote_address": "203.0.113.51", "prefixes": ["10.21.0.0/24"]})
    assert len({o.if_id for o in site_objects(other, 1000, EXTERNAL) if isinstance(o, XfrmInterface)} |
               {o.if_id for o in site_objects(other, 1001, EXTERNAL) if isinstance(o, XfrmInterface)}) == 4


def test_the_tunnel_attaches_the_tenant_in_nftables_and_is_never_natted() -> None:
    elements = nat._elements(nat.TenantNat(tenant(SITE, snat=["203.0.113.140"]), 1000))
    assert ("nvf-s3e81", "blue_in") in elements["i_in"]
    doc = nat.full_document([nat.TenantNat(tenant(SITE, snat=["203.0.113.140"]), 1000)], ("ext",))
    # SNAT is dispatched from the external interfaces only: the tunnel is not one of them
    assert '"nvf-s3e81"' not in str([r for r in doc["nftables"] if "rule" in r and r["rule"]["chain"] == "snat"])


def test_a_site_becomes_one_charon_connection_with_its_if_id_both_ways() -> None:
    (conn,) = connections("blue", tenant(SITE), 1000, EXTERNAL).values()
    assert conn.name == "blue.paris" and KEY not in repr(conn)
    body = conn.conn["blue.paris"]
    assert (body["local_addrs"], body["remote_addrs"]) == (["203.0.113.2"], ["203.0.113.50"])
    assert body["local-1"] == {"auth": "psk", "id": "203.0.113.2"}
    child = body["children"]["blue.paris"]
    assert (child["if_id_in"], child["if_id_out"]) == ("16001", "16001")
    assert child["remote_ts"] == ["0.0.0.0/0", "::/0"] and child["esp_proposals"] == ["aes256gcm16"]
    assert child["set_mark_out"] == "0/0xffffffff"  # the ESP packets leave without the tenant's mark
    assert conn.secret == {"id": "blue.paris", "type": "IKE", "data": KEY, "owners": ["203.0.113.50"]}
    assert connections("blue", None, 1000, EXTERNAL) == {}


def test_charons_configuration_names_its_own_socket() -> None:
    files = CharonFiles.for_gateway("gw1", "198.51.100.21")
    text = charon_conf(files)
    assert f"socket = unix://{files.socket}" in text and "install_routes = no" in text
    assert str(files.socket).startswith("/run/nvfabric/charon-gw1/")
    assert len(str(CharonFiles.for_gateway("n" * 200, "x").socket)) <= 107


def test_list_sas_events_become_site_sas() -> None:
    events = [{"blue.paris": {"state": "CONNECTING", "remote-host": "203.0.113.50"}},
              {"blue.paris": {"state": "ESTABLISHED", "remote-host": "203.0.113.50", "child-sas": {
                  "blue.paris-3": {"name": "blue.paris", "state": "INSTALLED", "spi-in": "c1a2b3c4",
                                   "spi-out": "d1e2f3a4", "bytes-in": "84", "bytes-out": "168",
                                   "install-time": "5"}}}}]
    sa = parse_sas(events, 1000.0)["blue.paris"]
    assert sa.state == "ESTABLISHED" and sa.children[0].spi_in == "c1a2b3c4"
    assert (sa.children[0].bytes_in, sa.children[0].installed_at) == (84, 995.0)


def test_the_api_keeps_a_hidden_key_and_never_shows_it() -> None:
    current = tenant(SITE)
    shown = current.as_dict(secrets=False)
    assert shown["sites"][0]["psk"] == HIDDEN and KEY not in str(shown)
    assert Tenant.from_dict(keep_secrets(shown, current)) == current
    # a new key is taken; a hidden one for a site the tenant does not have is refused (too short)
    assert Tenant.from_dict(keep_secrets({**shown, "sites": [{**shown["sites"][0], "psk": "b" * 20}]},
                                         current)).sites[0].psk == "b" * 20
    with pytest.raises(ModelError):
        Tenant.from_dict(keep_secrets({**shown, "sites": [{**shown["sites"][0], "name": "lyon"}]}, current))


def _config(**over) -> dict:
    return {"asn": 65000, "router_id": "198.51.100.21", "provider_addresses": ["198.51.100.21"],
            "external": {"interfaces": ["ext"], "address4": "203.0.113.2"}, **over,
            "tenants": [{**BLUE, "sites": [SITE]}]}


def test_the_gateway_refuses_sites_it_cannot_end() -> None:
    assert parse(_config()).tenants[0].sites[0].name == "paris"
    with pytest.raises(ConfigError, match="no sites: without provider_addresses"):
        parse({**_config(), "provider_addresses": []})
    with pytest.raises(ConfigError, match="external.address4") as info:
        parse(_config(external={"interfaces": ["ext"]}))
    assert info.value.field == "tenants[0].sites[0].remote_address"
    with pytest.raises(ConfigError, match="gateway's own address"):
        parse({**_config(), "tenants": [{**BLUE, "sites": [{**SITE, "remote_address": "203.0.113.2"}]}]})


def test_an_xfrm_interface_is_encoded_and_read_back() -> None:
    body = m.link_body(name="nvf-s3e81", kind="xfrm", info_data=m.xfrm_info(16001), master=7, up=True)
    msg = struct.pack("=IHHII", 16 + len(body), m.RTM_NEWLINK, 0, 0, 0) + body
    fields = m.parse_link(msg)
    assert (fields.name, fields.kind, fields.if_id, fields.master) == ("nvf-s3e81", "xfrm", 16001, 7)


GRE = {"name": "depot", "kind": "gre", "remote_address": "198.18.0.9", "key": 4711, "prefixes": ["10.30.0.0/24"]}


def test_a_gre_site_has_a_key_and_prefixes_and_nothing_of_ipsec() -> None:
    site = tenant(GRE).sites[0]
    assert (site.kind, site.key, site.slot, site.psk) == ("gre", 4711, 1, "")
    assert tenant(GRE).as_dict()["sites"] == [{**GRE, "slot": 1}]  # GET gives what PUT takes, no psk
    assert Tenant.from_dict(tenant(GRE).as_dict()) == tenant(GRE)
    keyless = tenant({k: v for k, v in GRE.items() if k != "key"}).sites[0]
    assert keyless.key is None and "key" not in keyless.as_dict()


@pytest.mark.parametrize(("change", "field", "match"), [
    ({"psk": KEY}, "sites[0].psk", "no key exchange and no encryption"),
    ({"auth": "psk"}, "sites[0].auth", "only for kind ipsec"),
    ({"esp_proposals": ["aes256gcm16"]}, "sites[0].esp_proposals", "only for kind ipsec"),
    ({"remote_ts": ["10.30.0.0/24"]}, "sites[0].remote_ts", "only for kind ipsec"),
    ({"bgp": {"peer_address": "10.255.0.2", "peer_as": 65020, "local_address": "10.255.0.1/30", "local_as": 65020}},
     "sites[0].bgp.peer_as", "eBGP"),
    ({"key": -1}, "sites[0].key", "0..4294967295"),
    ({"key": 1 << 32}, "sites[0].key", "0..4294967295"),
    ({"key": "4711"}, "sites[0].key", "integer"),
    ({"key": True}, "sites[0].key", "integer"),
    ({"remote_address": "127.0.0.1"}, "sites[0].remote_address", "unicast"),
    ({"prefixes": []}, "sites[0].prefixes", "at least one"),
    ({"prefixes": ["10.0.0.0/25"]}, "sites[0].prefixes[0]", "overlaps the tenant's subnet"),
    ({"slot": 0}, "sites[0].slot", "1..15"),
    ({"slot": "2"}, "sites[0].slot", "1..15"),
])
def test_a_wrong_gre_site_is_refused_naming_its_field(change: dict, field: str, match: str) -> None:
    refused({**GRE, **change}, field, match)


def test_gre_sites_may_share_a_remote_address_with_different_keys() -> None:
    """One provider router for several tunnels (HNV: told apart by the key); the same remote and key twice is
    one tunnel to the kernel, refused within a tenant and across tenants."""
    other = {**GRE, "name": "annex", "key": 4712, "prefixes": ["10.31.0.0/24"]}
    assert len(tenant(GRE, other).sites) == 2
    with pytest.raises(ModelError, match="same key") as info:
        tenant(GRE, {**other, "key": 4711})
    assert info.value.field == "sites[1].remote_address"
    red = {"name": "red", "route_targets": ["65000:2"], "subnets": [{"vsid": 6001, "prefixes": ["10.0.0.0/24"]}]}
    claims = Claims.of({"blue": tenant(GRE)})
    with pytest.raises(ConflictError, match="tenant 'blue'"):
        claims.check(Tenant.from_dict({**red, "sites": [GRE]}))
    claims.check(Tenant.from_dict({**red, "sites": [{**GRE, "key": 4712}]}))
    claims.check(Tenant.from_dict({**red, "sites": [{**SITE, "remote_address": "198.18.0.9"}]}))  # IPsec: its own


def test_a_gre_site_is_a_gre_tunnel_from_the_external_address_in_the_tenants_vrf() -> None:
    both = tenant(SITE, GRE | {"prefixes": ["10.30.0.0/24", "fd30::/64"]})
    external = External(("ext",), address4=ipaddress.ip_address("203.0.113.2"),
                        address6=ipaddress.ip_address("2001:db8::2"))
    assert site_objects(both, 1000, external) == {
        XfrmInterface("nvf-s3e81", 16001, "nvf-blue"), LocalPortRoute(1000, "10.20.0.0/24", "nvf-s3e81"),
        GreTunnel("nvf-g3e82", "nvf-blue", "203.0.113.2", "198.18.0.9", 4711),
        LocalPortRoute(1000, "10.30.0.0/24", "nvf-g3e82"), LocalPortRoute(1000, "fd30::/64", "nvf-g3e82")}
    v6 = tenant({**GRE, "remote_address": "2001:db8:9::9", "key": None})
    (tunnel,) = [o for o in site_objects(v6, 1000, external) if isinstance(o, GreTunnel)]
    assert (tunnel.kind, tunnel.local, tunnel.gre_key) == ("ip6gre", "2001:db8::2", None)
    # the tunnel attaches the tenant in nftables as the XFRM interface does: what comes from it is the tenant's
    assert ("nvf-g3e82", "blue_in") in nat._elements(nat.TenantNat(both, 1000))["i_in"]
    # a site that changes kind on the same slot changes device name: the routes move to a new device
    as_gre = tenant({**GRE, "prefixes": ["10.20.0.0/24"]})
    assert {o.dev for o in site_objects(as_gre, 1000, external) if isinstance(o, LocalPortRoute)} == {"nvf-g3e81"}


def test_charon_has_no_connection_for_a_gre_site() -> None:
    assert list(connections("blue", tenant(SITE, GRE), 1000, EXTERNAL)) == ["blue.paris"]
    assert connections("blue", tenant(GRE), 1000, EXTERNAL) == {}
