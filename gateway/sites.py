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
        auth: psk                   # or certificate (gateway/sitecerts.py: certificate, private_key, ...)
        psk: "at least 20 characters of secret"
        prefixes: [10.20.0.0/24]    # the site's networks, routed into the tunnel
        local_ts: [0.0.0.0/0]       # traffic selectors; default 0.0.0.0/0 and ::/0 (route-based)
        remote_ts: [0.0.0.0/0]
        ike_proposals: [aes256gcm16-prfsha384-ecp384]
        esp_proposals: [aes256gcm16]
        slot: 1                     # 1..15, default the site's position + 1: the tunnel's if_id and device
        bgp: {peer_address: 10.255.0.2, peer_as: 65020, local_address: 10.255.0.1/30}  # gateway/sitebgp.py
      - name: depot
        kind: gre                   # plain GRE (HNV's "GRE tunnel" mode): NOT encrypted, NOT authenticated
        remote_address: 198.18.0.9  # the provider's router at the other end
        key: 4711                   # optional GRE key (32 bits), the same at both ends
        prefixes: [10.30.0.0/24]
```

A GRE site is a `gre` (`ip6gre` for an IPv6 remote) device in the tenant's VRF from the gateway's external address
to the site's, with the key if given; it takes no psk, traffic selectors or proposals (refused by name). Several
GRE sites may share a remote address with different keys (one provider router for several tenants, told apart
by the key, as in HNV). Plain GRE proves nothing about its sender: anyone who can send packets with the site's
source address (and the key, which travels in the clear) can put packets into the tenant's routing domain. Use it
only where the path to the site is the provider's own (docs/gateway.md, "GRE sites").

Each site's tunnel is `if_id = tid << 4 | slot`, its device `nvf-s<if_id in hex>` (`nvf-g...` for GRE; vnet objects,
gateway/dataplane.py):
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
from nvfabric.gateway.sitecerts import FIELDS as CERT_FIELDS, HIDDEN, SiteCertificates
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

KINDS = ("ipsec", "gre")
PLANNED_KINDS = ("wireguard",)
IPSEC_ONLY = ("auth", "psk", "local_ts", "remote_ts", "ike_proposals", "esp_proposals", *CERT_FIELDS)
AUTHS = ("psk", "certificate")
KEY_MAX = (1 << 32) - 1  # the GRE key field
DEFAULT_IKE_PROPOSALS = ("aes256gcm16-prfsha384-ecp384",)
DEFAULT_ESP_PROPOSALS = ("aes256gcm16",)
ROUTE_BASED = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
PSK_MIN, PSK_MAX = 20, 256  # a pre-shared key is only as strong as it is long: no short passwords
SLOT_MAX = 15  # 4 bits of the if_id beside the tenant's 28-bit id (vnet.desired.TABLE_MAX)
# strongSwan's proposal syntax: algorithm keywords joined by '-' (charon judges the keywords at load time)
PROPOSAL_RE = re.compile(r"^[a-z0-9_]+(-[a-z0-9_]+)*!?$")
GRE_NO_PSK = ("a GRE site has no key exchange and no encryption (plain GRE carries the traffic in the clear): "
              "no psk; use kind ipsec for a pre-shared key")


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
    key: int | None = None  # a GRE site's key (None: no key)
    bgp: SiteBgp | None = None  # eBGP with the site's router across the tunnel (gateway/sitebgp.py)
    auth: str = "psk"  # or "certificate": then `certs` and no psk
    certs: SiteCertificates | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "name", NAME_RE)
        if self.kind in PLANNED_KINDS:
            raise ModelError("kind", self.kind, f"not supported yet (supported: {', '.join(KINDS)})")
        if self.kind not in KINDS:
            raise ModelError("kind", self.kind, f"must be one of {', '.join(KINDS)}")
        a = self.remote_address
        if a.is_multicast or a.is_unspecified or a.is_loopback or a.is_link_local:
            raise ModelError("remote_address", str(a), "is not a unicast address a site can have")
        if self.kind == "gre":
            self._check_gre()
        else:
            self._check_ipsec()
        if isinstance(self.slot, bool) or not isinstance(self.slot, int) or not 1 <= self.slot <= SLOT_MAX:
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
        if self.kind == "ipsec":
            self._check_selectors()

    def _check_ipsec(self) -> None:
        if self.auth not in AUTHS:
            raise ModelError("auth", self.auth, f"must be {' or '.join(AUTHS)}")
        if self.auth == "certificate":
            self._check_certificate()
            return
        if self.certs is not None:
            raise ModelError("certificate", "...", "only with auth certificate")
        if not isinstance(self.psk, str) or not PSK_MIN <= len(self.psk) <= PSK_MAX:
            raise ModelError("psk", HIDDEN, f"must be a string of {PSK_MIN} to {PSK_MAX} characters")
        if not self.psk.isprintable():
            raise ModelError("psk", HIDDEN, "must be printable characters")
        if self.key is not None:
            raise ModelError("key", self.key, "a GRE key is for kind gre only")

    def _check_certificate(self) -> None:
        if self.psk:
            raise ModelError("psk", HIDDEN, "not with auth certificate (the site proves itself by its certificate)")
        if not isinstance(self.certs, SiteCertificates):
            raise ModelError("certificate", None, "required with auth certificate")
        if self.key is not None:
            raise ModelError("key", self.key, "a GRE key is for kind gre only")

    def _check_gre(self) -> None:
        if self.auth != "psk" or self.certs is not None:
            raise ModelError("auth", self.auth, "only for kind ipsec (a GRE site has no IKE)")
        if self.psk:
            raise ModelError("psk", HIDDEN, GRE_NO_PSK)
        if self.key is not None and (isinstance(self.key, bool) or not isinstance(self.key, int)
                                     or not 0 <= self.key <= KEY_MAX):
            raise ModelError("key", self.key, f"must be an integer 0..{KEY_MAX} (the 32-bit GRE key)")

    def _check_selectors(self) -> None:
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
    def claim(self) -> tuple:
        """What no other site may have: an IPsec peer is one site (charon tells connections by the peer); a GRE
        tunnel is its remote address and key (the kernel tells tunnels by them)."""
        if self.kind == "gre":
            return ("gre", self.remote_address, self.key)
        return ("site", self.remote_address)

    @property
    def families(self) -> tuple[int, ...]:
        return tuple(sorted({p.version for p in self.prefixes}))

    @classmethod
    def from_dict(cls, body: Any, where: str, position: int) -> Site:
        body = check_object(body, where)
        known = {"name", "kind", "remote_address", "auth", "psk", "prefixes", "local_ts", "remote_ts",
                 "ike_proposals", "esp_proposals", "slot", "key", "bgp", *CERT_FIELDS}
        reject_unknown(body, known, where)

        def path(key: str) -> str:
            return field_path(where, key)

        if body.get("kind") == "gre":
            return cls._gre_from_dict(body, where, position)
        auth = body.get("auth", "psk")
        if auth not in AUTHS:
            raise ModelError(path("auth"), auth, f"must be {' or '.join(AUTHS)}")
        certs = None
        if auth == "certificate":
            if "psk" in body:
                raise ModelError(path("psk"), HIDDEN, "not with auth certificate (the site proves itself by its "
                                 "certificate)")
            certs = SiteCertificates.from_dict(body, where)
        else:
            for key in CERT_FIELDS:
                if key in body:
                    raise ModelError(path(key), HIDDEN if key == "private_key" else "...",
                                     "only with auth certificate (this site's auth is psk)")
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
                       psk=body.get("psk", ""), prefixes=networks("prefixes", ()), slot=slot,
                       local_ts=networks("local_ts", ROUTE_BASED), remote_ts=networks("remote_ts", ROUTE_BASED),
                       ike_proposals=strings("ike_proposals", DEFAULT_IKE_PROPOSALS),
                       esp_proposals=strings("esp_proposals", DEFAULT_ESP_PROPOSALS), key=body.get("key"),
                       bgp=bgp, auth=auth, certs=certs)
        except ModelError as exc:
            raise exc.within(where) from None

    @classmethod
    def _gre_from_dict(cls, body: dict, where: str, position: int) -> Site:
        for key in IPSEC_ONLY:
            if key in body:
                raise ModelError(field_path(where, key), HIDDEN if key == "psk" else body[key],
                                 GRE_NO_PSK if key == "psk" else "only for kind ipsec (a GRE site has no IKE)")
        bgp = SiteBgp.from_dict(body["bgp"], field_path(where, "bgp")) if body.get("bgp") is not None else None
        try:
            return cls(name=body.get("name"), kind="gre",
                       remote_address=check_address(body.get("remote_address"), "remote_address"), psk="",
                       prefixes=_networks(body, "prefixes"), slot=body.get("slot", position + 1),
                       key=body.get("key"), bgp=bgp)
        except ModelError as exc:
            raise exc.within(where) from None

    def as_dict(self, secrets: bool = True) -> dict[str, Any]:
        """The body a PUT takes; `secrets=False` for what is shown (the API's GET), the key hidden."""
        if self.kind == "gre":
            gre = {"name": self.name, "kind": "gre", "remote_address": str(self.remote_address),
                   "prefixes": [str(p) for p in self.prefixes], "slot": self.slot}
            if self.bgp is not None:
                gre["bgp"] = self.bgp.as_dict()
            return gre if self.key is None else {**gre, "key": self.key}
        auth = ({"auth": "psk", "psk": self.psk if secrets else HIDDEN} if self.certs is None
                else {"auth": "certificate", **self.certs.as_dict(secrets)})
        return {"name": self.name, "kind": self.kind, "remote_address": str(self.remote_address), **auth,
                "prefixes": [str(p) for p in self.prefixes],
                "local_ts": [str(p) for p in self.local_ts], "remote_ts": [str(p) for p in self.remote_ts],
                "ike_proposals": list(self.ike_proposals), "esp_proposals": list(self.esp_proposals),
                "slot": self.slot, **({"bgp": self.bgp.as_dict()} if self.bgp is not None else {})}


def _networks(body: dict, key: str) -> tuple[Network, ...]:
    return tuple(check_network(v, f"{key}[{i}]") for i, v in enumerate(check_list(body.get(key, []), key)))


def ipsec_sites(sites: tuple[Site, ...]) -> tuple[Site, ...]:
    """The sites charon makes tunnels for (gateway/strongswan.py); the rest are kernel devices only."""
    return tuple(s for s in sites if s.kind == "ipsec")


def bgp_sites(sites: tuple[Site, ...]) -> tuple[Site, ...]:
    """The sites with eBGP across their tunnel (gateway/sitepeers.py), of either kind."""
    return tuple(s for s in sites if s.bgp is not None)


def check_sites(sites: tuple[Site, ...], own: tuple[Network, ...]) -> None:
    """A tenant's sites together: names and slots unique, no site prefix overlapping the tenant's own subnets
    (the tunnel route would shadow them) or another site's."""
    for attr in ("name", "slot", "claim"):
        if (repeat := first_repeat(getattr(s, attr) for s in sites)) is not None:
            i, j = repeat
            if attr == "claim":
                same = " with the same key" if sites[i].kind == "gre" else ""
                raise ModelError(f"sites[{i}].remote_address", str(sites[i].remote_address),
                                 f"already used by sites[{j}]{same}")
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
    """`nvf-s<if_id in hex>` for an IPsec site, `nvf-g...` for a GRE site: a site whose kind changes gets a new
    device (made before its routes move to it, the old one deleted after), never a device of another kind under
    the same name (the writer would take the old one for the new: EEXIST is "already there")."""
    return f"nvf-{'g' if site.kind == 'gre' else 's'}{if_id(tid, site):x}"


def connection_name(tenant: str, site: Site) -> str:
    """The site's name in charon (IKE and child): one per tenant and site."""
    return f"{tenant}.{site.name}"
