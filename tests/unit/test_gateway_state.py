"""The gateway's state directory and tenant ids (pure and file level), and what a tenant may claim: the
gateway's own interfaces and addresses are refused, public space only inside `public_prefixes`."""

from __future__ import annotations

import ipaddress
import json

import pytest

from nvfabric.bgp.config import ConfigError
from nvfabric.gateway import nat
from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.state import FILE, PREVIOUS, SavedState, StateDir, assign_ids, dumps
from nvfabric.gateway.tenants import Tenant
from nvfabric.gateway.upstream import public_routes
from nvfabric.vnet.errors import ModelError


def body(name: str = "blue", vsid: int = 5001, **extra: object) -> dict:
    return {"name": name, "route_targets": ["65001:1"],
            "subnets": [{"vsid": vsid, "prefixes": ["10.0.0.0/24", "2001:db8:b00::/56"]}],
            "snat": ["203.0.113.11"], "floating_ips": [{"public": "203.0.113.21", "private": "10.0.0.5"}], **extra}


GATEWAY = {"asn": 65001, "router_id": "198.51.100.21", "provider_addresses": ["198.51.100.21", "2001:db8::21"],
           "external": {"interfaces": ["eth2"], "next_hop4": "203.0.113.1", "address4": "203.0.113.2",
                        "address6": "2001:db8:b00::2"},
           "upstream": [{"address": "203.0.113.1", "asn": 64496}],
           "public_prefixes": ["203.0.113.0/24", "2001:db8:b00::/40"]}


# ---------------------------------------------------------------------- ids


def test_ids_are_kept_across_changes_of_the_set_of_tenants() -> None:
    ids, last = assign_ids(["blue", "red", "green"], {}, {}, 999)
    assert ids == {"blue": 1000, "green": 1001, "red": 1002} and last == 1002
    # blue deleted, amber added: red and green keep theirs (from the sorted names amber would take 1000,
    # green 1001, red 1002: by accident the same here, so check one that moves)
    ids2, last2 = assign_ids(["red", "green", "amber"], ids, {}, last)
    assert (ids2["red"], ids2["green"]) == (1002, 1001)
    assert ids2["amber"] == 1003 and last2 == 1003  # not blue's 1000: blue's leftover flows may carry it
    ids3, _ = assign_ids(["red"], {"red": ids2["red"]}, {}, last2)
    assert ids3 == {"red": 1002}  # alone, still not 1000


def test_ids_are_adopted_from_the_kernel_when_the_state_has_none() -> None:
    ids, last = assign_ids(["blue", "red", "new"], {"blue": 1005}, {"red": 1003, "blue": 1004, "gone": 1010}, 999)
    assert ids["blue"] == 1005  # the state wins over the kernel
    assert ids["red"] == 1003
    assert ids["new"] == 1011 and last == 1011  # above every id the kernel still has ("gone"'s flows)
    # an adopted id another tenant already holds is not taken twice
    ids, _ = assign_ids(["blue", "red"], {"blue": 1003}, {"red": 1003}, 1003)
    assert ids == {"blue": 1003, "red": 1004}


def test_ids_wrap_to_the_lowest_free_one_at_the_top() -> None:
    ids, last = assign_ids(["a", "b"], {"a": nat.ZONE_MAX}, {}, nat.ZONE_MAX)
    assert ids == {"a": nat.ZONE_MAX, "b": nat.MARK_MIN} and last == nat.ZONE_MAX


def test_adopted_ids_read_from_the_nat_table() -> None:
    doc = {"nftables": [{"metainfo": {}}, {"map": {"family": "inet", "table": "nvfgw", "name": "m_zone", "elem": [
        [1000, {"jump": {"target": "blue_zone"}}], [1002, {"jump": {"target": "my_t_zone"}}],
        [7, {"jump": {"target": "low_zone"}}], [1003, {"goto": {"target": "x_zone"}}]]}}]}
    assert nat.adopted_ids(doc) == {"blue": 1000, "my_t": 1002}


# ---------------------------------------------------------------------- the state file


def state(*names: str) -> SavedState:
    tenants = tuple(Tenant.from_dict(body(n, 5001 + i, snat=[f"203.0.113.{11 + i}"], floating_ips=[]))
                    for i, n in enumerate(names))
    return SavedState(tenants, {n: 1000 + i for i, n in enumerate(names)}, 1000 + len(names))


def test_state_round_trip_and_previous_copy(tmp_path) -> None:
    sd = StateDir(tmp_path)
    assert sd.load().state is None and sd.load().problems == ()
    sd.save(state("blue"))
    assert not (tmp_path / PREVIOUS).exists()  # nothing good before it
    sd.save(state("blue", "red"))
    assert StateDir(tmp_path).load().state == state("blue", "red")
    assert json.loads((tmp_path / PREVIOUS).read_text())["ids"] == {"blue": 1000}


@pytest.mark.parametrize("damage", ["{\"version\": 1, \"api_", "[]", "{\"version\": 9}",
                                    json.dumps({"version": 1, "api_tenants": [], "ids": {"a": 7}, "last_id": 7}),
                                    json.dumps({"version": 1, "api_tenants": [{"name": "x"}], "ids": {},
                                                "last_id": 999})])
def test_a_corrupt_state_file_is_reported_and_the_previous_copy_used(tmp_path, damage: str) -> None:
    sd = StateDir(tmp_path)
    sd.save(state("blue"))
    sd.save(state("blue", "red"))
    (tmp_path / FILE).write_text(damage)
    sd = StateDir(tmp_path)
    loaded = sd.load()
    assert loaded.state == state("blue")
    assert len(loaded.problems) == 1 and str(tmp_path / FILE) in loaded.problems[0]
    sd.set_aside()  # kept for the operator, not overwritten by the next save
    assert (tmp_path / (FILE + ".corrupt")).read_text() == damage
    sd.save(state("blue", "green"))
    assert StateDir(tmp_path).load().state == state("blue", "green")
    assert json.loads((tmp_path / PREVIOUS).read_text())["ids"] == {"blue": 1000}  # the good copy stays


def test_no_usable_copy_is_reported_not_fatal(tmp_path) -> None:
    (tmp_path / FILE).mkdir()  # unreadable: a directory where the file should be
    (tmp_path / PREVIOUS).write_text("garbage")
    loaded = StateDir(tmp_path).load()
    assert loaded.state is None and len(loaded.problems) == 2


def test_a_failed_save_leaves_the_current_file(tmp_path, monkeypatch) -> None:
    sd = StateDir(tmp_path)
    sd.save(state("blue"))

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("nvfabric.gateway.state.os.fsync", full)
    with pytest.raises(OSError):
        sd.save(state("blue", "red"))
    monkeypatch.undo()
    assert StateDir(tmp_path).load().state == state("blue")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_dumps_is_what_loads_reads() -> None:
    text = dumps(state("blue"))
    assert json.loads(text)["api_tenants"][0]["name"] == "blue"


# ---------------------------------------------------------------------- what a tenant may claim


@pytest.mark.parametrize("change, field, problem", [
    ({"interfaces": ["eth2"]}, "interfaces[0]", "external interface"),
    ({"interfaces": ["nvf-gre4"]}, "interfaces[0]", "NVGRE device"),
    ({"interfaces": ["lo"]}, "interfaces[0]", "loopback"),
    ({"snat": ["203.0.113.2"]}, "snat[0].address", "external.address4"),
    ({"snat": ["203.0.113.1"]}, "snat[0].address", "external.next_hop4"),
    ({"floating_ips": [{"public": "198.51.100.21", "private": "10.0.0.5"}]}, "floating_ips[0].public",
     "router_id"),
    ({"floating_ips": [{"public": "2001:db8::21", "private": "2001:db8:b00::5"}]}, "floating_ips[0].public",
     "provider_addresses[1]"),
    ({"public_prefixes": ["2001:db8:b00::/56"]}, "public_prefixes[0]", "external.address6"),
    ({"snat": ["192.0.2.7"]}, "snat[0].address", "outside the gateway's public_prefixes"),
    ({"floating_ips": [{"public": "8.8.8.8", "private": "10.0.0.5"}]}, "floating_ips[0].public", "outside"),
])
def test_the_gateways_own_things_and_foreign_space_are_refused_naming_the_field(
        change: dict, field: str, problem: str) -> None:
    gw = GatewayConfig.from_dict(GATEWAY)
    tenant = Tenant.from_dict(body(**change))
    with pytest.raises(ModelError) as refused:
        gw.reserved.check(tenant)
    assert refused.value.field == field and problem in refused.value.problem
    # the same in the configuration file: exit 2 naming the tenant's field
    with pytest.raises(ConfigError) as bad:
        red = {"snat": ["203.0.113.12"], "floating_ips": [{"public": "203.0.113.22", "private": "10.0.0.5"}], **change}
        GatewayConfig.from_dict({**GATEWAY, "tenants": [body(), body("red", 6001, **red)]})
    assert bad.value.field == f"tenants[1].{field}"


def test_public_prefixes_default_single_addresses_only_and_never_a_default_route() -> None:
    unset = {k: v for k, v in GATEWAY.items() if k != "public_prefixes"}
    # unset: SNAT and floating IPs anywhere (as before), a tenant's routed prefix refused
    GatewayConfig.from_dict({**unset, "tenants": [body(snat=["192.0.2.7"])]})
    with pytest.raises(ConfigError, match="has no public_prefixes") as bad:
        GatewayConfig.from_dict({**unset, "tenants": [body(snat=[], public_prefixes=["2001:db8:b00:1::/64"])]})
    assert bad.value.field == "tenants[0].public_prefixes[0]"
    # set: inside them
    GatewayConfig.from_dict({**GATEWAY, "tenants": [body(snat=[], public_prefixes=["2001:db8:b00:1::/64"])]})
    with pytest.raises(ConfigError, match="outside") as bad:
        GatewayConfig.from_dict({**GATEWAY, "public_prefixes": ["203.0.113.0/24", "2001:db8:c00::/40"],
                                 "tenants": [body(snat=[], public_prefixes=["2001:db8:b00:1::/64"])]})
    for default in ("0.0.0.0/0", "::/0"):
        with pytest.raises(ConfigError, match="never announced") as bad:
            GatewayConfig.from_dict({**GATEWAY, "public_prefixes": [default]})
        assert bad.value.field == "public_prefixes[0]"
    wide = Tenant.from_dict(body(subnets=[{"vsid": 5001, "prefixes": ["10.0.0.0/24", "::/0"]}], snat=[],
                                 public_prefixes=["::/0"]))
    with pytest.raises(ModelError, match="never announced"):
        GatewayConfig.from_dict(GATEWAY).reserved.check(wide)


def test_upstream_announces_only_inside_public_prefixes_and_never_a_default() -> None:
    t = Tenant.from_dict(body(snat=["203.0.113.11"], floating_ips=[{"public": "192.0.2.7", "private": "10.0.0.5"}]))
    nh = ipaddress.ip_address("203.0.113.2")
    allowed = (ipaddress.ip_network("203.0.113.0/24"),)
    assert sorted(str(r.prefix) for r in public_routes([t], nh, None, allowed).values()) == ["203.0.113.11/32"]
    assert len(public_routes([t], nh, None).values()) == 2  # unset: single addresses as they are
    wide = Tenant.from_dict(body(subnets=[{"vsid": 5001, "prefixes": ["10.0.0.0/24", "::/0"]}], snat=[],
                                 floating_ips=[], public_prefixes=["::/0"]))
    assert public_routes([wide], nh, ipaddress.ip_address("2001:db8::2")) == {}


def test_config_state_dir_and_sessions_interval() -> None:
    c = GatewayConfig.from_dict({**GATEWAY, "state_dir": "/var/lib/nvfabric/gateway", "sessions_interval": 5})
    assert str(c.state_dir) == "/var/lib/nvfabric/gateway" and c.sessions_interval == 5
    assert GatewayConfig.from_dict(GATEWAY).state_dir is None
    with pytest.raises(ConfigError) as bad:
        GatewayConfig.from_dict({**GATEWAY, "sessions_interval": 0})
    assert bad.value.field == "sessions_interval"
