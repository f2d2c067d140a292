"""A tenant's own sites: site-to-site tunnels from the tenant's routing domain on the gateway.

```yaml
tenants:
  - name: blue
    route_targets: ["65001:1"]
    subnets: [{vsid: 5001, prefixes: [10.0.0.0/24]}]
    sites:
      - name: paris
        kind: ipsec                 # IKEv2 by strongSwan, route-based (an XFRM interface in the tenant's VRF)
        remote_address: 203.0.113.50
        auth: psk                   # certificate: not yet
        psk: "at least 20 characters of secret"
        prefixes: [10.20.0.0/24]    # the site's networks, routed into the tunnel
        local_ts: [0.0.0.0/0]       # traffic selectors; default 0.0.0.0/0 and ::/0 (route-based)
        remote_ts: [0.0.0.0/0]
        ike_proposals: [aes256gcm16-prfsha384-ecp384]
        esp_proposals: [aes256gcm16]
        slot: 1                     # 1..15, default the site's position + 1: the tunnel's if_id and device
        bgp: {peer_address: 10.255.0.2, peer_as: 65020, local_address: 10.255.0.1/30}  # gateway/sitebgp.py
```

Each site's tunnel is `if_id = tid << 4 | slot`, its device `nvf-s<if_id in hex>` (vnet objects, gateway/dataplane.py):
derived from the tenant's id and the site's slot only, so a site keeps its SAs and device while other sites and
tenants come and go. Give `slot` explicitly to remove a site other than the last without renumbering the later
ones. Tenant-to-site traffic is never NATed (the tunnel is not an external interface).

Values are frozen and validated on construction; every error is a vnet.errors.ModelError naming the field, and
never shows the secret.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from nvfabric.gateway.sitebgp import SiteBgp, check_tenant as check_bgp
from nvfabric.vnet.errors import ModelError
from nvfabric.vnet.model import (
    Address,
    Network,
    NAME_RE,
    check_address,
    check_list,
    check_name,
    check_network,
    check_object,
    field_path,
    first_repeat,
    reject_unknown,
)

KINDS = ("ipsec",)  # GRE site tunnels: not yet (refused by name)
PLANNED_KINDS = ("gre", "wireguard")
DEFAULT_IKE_PROPOSALS = ("aes256gcm16-prfsha384-ecp384",)
DEFAULT_ESP_PROPOSALS = ("aes256gcm16",)
ROUTE_BASED = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
PSK_MIN, PSK_MAX = 20, 256  # a pre-shared key is only as strong as it is long: no short passwords
SLOT_MAX = 15  # 4 bits of the if_id beside the tenant's 28-bit id (vnet.desired.TABLE_MAX)
# strongSwan's proposal syntax: algorithm keywords joined by '-' (charon judges the keywords at load time)
PROPOSAL_RE = re.compile(r"^[a-z0-9_]+(-[a-z0-9_]+)*!?$")
HIDDEN = "<secret>"


@dataclass(frozen=True)
class Site:
    name: str
    remote_address: Address
    psk: str = field(repr=False)
    prefixes: tuple[Network, ...]
    slot: int
    kind: str = "ipsec"
    local_ts: tuple[Network, ...] = ROUTE_BASED
    remote_ts: tuple[Network, ...] = ROUTE_BASED
    ike_proposals: tuple[str, ...] = DEFAULT_IKE_PROPOSALS
    esp_proposals: tuple[str, ...] = DEFAULT_ESP_PROPOSALS
    bgp: SiteBgp | None = None  # eBGP with the site's router across the tunnel (gateway/sitebgp.py)

    def __post_init__(self) -> None:
        check_name(self.name, "name", NAME_RE)
        if self.kind in PLANNED_KINDS:
            raise ModelError("kind", self.kind, f"not supported yet (supported: {', '.join(KINDS)})")
        if self.kind not in KINDS:
            raise ModelError("kind", self.kind, f"must be one of {', '.join(KINDS)}")
        a = self.remote_address
        if a.is_multicast or a.is_unspecified or a.is_loopback or a.is_link_local:
            raise ModelError("remote_address", str(a), "is not a unicast address a site can have")
        if not isinstance(self.psk, str) or not PSK_MIN <= len(self.psk) <= PSK_MAX:
            raise ModelError("psk", HIDDEN, f"must be a string of {PSK_MIN} to {PSK_MAX} characters")
        if not self.psk.isprintable():
            raise ModelError("psk", HIDDEN, "must be printable characters")
        if not 1 <= self.slot <= SLOT_MAX:
            raise ModelError("slot", self.slot, f"must be 1..{SLOT_MAX}")
        if not self.prefixes and self.bgp is None:
            raise ModelError("prefixes", [], "at least one site prefix (routed into the tunnel) is required "
                             "without bgp")
        for i, p in enumerate(self.prefixes):
            if p.prefixlen == 0:
                raise ModelError(f"prefixes[{i}]", str(p), "a default route by a site is not supported: the "
                                 "tenant's default route leaves by the gateway's NAT")
        if (repeat := first_repeat(self.prefixes)) is not None:
            raise ModelError(f"prefixes[{repeat[0]}]", str(self.prefixes[repeat[0]]), f"repeats prefixes[{repeat[1]}]")
        for name in ("local_ts", "remote_ts"):
            if not getattr(self, name):
                raise ModelError(name, [], "at least one traffic selector")
        for name in ("ike_proposals", "esp_proposals"):
            values = getattr(self, name)
            if not values:
                raise ModelError(name, [], "at least one proposal")
            for i, p in enumerate(values):
                if not isinstance(p, str) or not PROPOSAL_RE.match(p):
                    raise ModelError(f"{name}[{i}]", p, "is not a proposal (algorithms joined by '-', e.g. "
                                     f"{DEFAULT_IKE_PROPOSALS[0]})")
        for i, p in enumerate(self.prefixes):
            if not any(p.version == ts.version and p.subnet_of(ts) for ts in self.remote_ts):  # type: ignore[arg-type]
                raise ModelError(f"prefixes[{i}]", str(p), "is outside every remote_ts: the tunnel would not "
                                 "carry it")
        if self.bgp is not None:
            self.bgp.check_selectors(self.local_ts, self.remote_ts)

    @property
    def families(self) -> tuple[int, ...]:
        return tuple(sorted({p.version for p in self.prefixes}))

    @classmethod
    def from_dict(cls, body: Any, where: str, position: int) -> Site:
        body = check_object(body, where)
        known = {"name", "kind", "remote_address", "auth", "psk", "prefixes", "local_ts", "remote_ts",
                 "ike_proposals", "esp_proposals", "slot", "bgp"}
        reject_unknown(body, known, where)

        def path(key: str) -> str:
            return field_path(where, key)

        auth = body.get("auth", "psk")
        if auth == "certificate":
            raise ModelError(path("auth"), auth, "not supported yet (supported: psk)")
        if auth != "psk":
            raise ModelError(path("auth"), auth, "must be psk or certificate")
        if "psk" not in body:
            raise ModelError(path("psk"), None, "required with auth psk")

        def networks(key: str, default: tuple[Network, ...]) -> tuple[Network, ...]:
            if key not in body:
                return default
            return tuple(check_network(v, f"{path(key)}[{i}]") for i, v in enumerate(check_list(body[key], path(key))))

        def strings(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(check_list(body[key], path(key))) if key in body else default

        slot = body.get("slot", position + 1)
        if isinstance(slot, bool) or not isinstance(slot, int):
            raise ModelError(path("slot"), slot, f"must be an integer 1..{SLOT_MAX}")
        kind = body.get("kind", "ipsec")
        bgp = SiteBgp.from_dict(body["bgp"], path("bgp")) if body.get("bgp") is not None else None
        try:
            return cls(name=body.get("name"), kind=kind, remote_address=check_address(body.get("remote_address"),
                                                                                        path("remote_address")),
                       psk=body["psk"], prefixes=networks("prefixes", ()), slot=slot,
                       local_ts=networks("local_ts", ROUTE_BASED), remote_ts=networks("remote_ts", ROUTE_BASED),
                       ike_proposals=strings("ike_proposals", DEFAULT_IKE_PROPOSALS),
                       esp_proposals=strings("esp_proposals", DEFAULT_ESP_PROPOSALS), bgp=bgp)
        except ModelError as exc:
            raise exc.within(where) from None

    def as_dict(self, secrets: bool = True) -> dict[str, Any]:
        """The body a PUT takes; `secrets=False` for what is shown (the API's GET), the key hidden."""
        return {"name": self.name, "kind": self.kind, "remote_address": str(self.remote_address), "auth": "psk",
                "psk": self.psk if secrets else HIDDEN, "prefixes": [str(p) for p in self.prefixes],
                "local_ts": [str(p) for p in self.local_ts], "remote_ts": [str(p) for p in self.remote_ts],
                "ike_proposals": list(self.ike_proposals), "esp_proposals": list(self.esp_proposals),
                "slot": self.slot, **({"bgp": self.bgp.as_dict()} if self.bgp is not None else {})}


def check_sites(sites: tuple[Site, ...], own: tuple[Network, ...]) -> None:
    """A tenant's sites together: names and slots unique, no site prefix overlapping the tenant's own subnets
    (the tunnel route would shadow them) or another site's."""
    for attr in ("name", "slot", "remote_address"):
        if (repeat := first_repeat(getattr(s, attr) for s in sites)) is not None:
            i, j = repeat
            raise ModelError(f"sites[{i}].{attr}", str(getattr(sites[i], attr)), f"already used by sites[{j}]")
    seen: list[tuple[Network, str]] = []
    for i, site in enumerate(sites):
        for k, p in enumerate(site.prefixes):
            where = f"sites[{i}].prefixes[{k}]"
            for q in own:
                if q.version == p.version and q.overlaps(p):  # type: ignore[arg-type]
                    raise ModelError(where, str(p), f"overlaps the tenant's subnet {q}")
            for q, other in seen:
                if q.version == p.version and q.overlaps(p):  # type: ignore[arg-type]
                    raise ModelError(where, str(p), f"overlaps {other} ({q})")
        seen.extend((p, f"sites[{i}].prefixes[{k}]") for k, p in enumerate(site.prefixes))
    check_bgp(sites, own)


def if_id(tid: int, site: Site) -> int:
    """The site's XFRM if_id: the tenant's id and the site's slot, stable while both are."""
    return tid << 4 | site.slot


def device_name(tid: int, site: Site) -> str:
    return f"nvf-s{if_id(tid, site):x}"


def connection_name(tenant: str, site: Site) -> str:
    """The site's name in charon (IKE and child): one per tenant and site."""
    return f"{tenant}.{site.name}"
