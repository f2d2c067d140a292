"""Pure: what a tenant may not claim because the gateway keeps it for itself, and the public space the
gateway may announce upstream (docs/gateway.md "What a tenant may claim").

A tenant's interfaces, public addresses (SNAT, floating IPs) and public IPv6 prefixes are checked here
against the gateway's own configuration, before anything is written: the configuration file is refused
naming the tenant's field (exit 2), an API PUT with a 400 naming it. Checks between tenants are
tenants.Claims'; this one is between a tenant and the gateway.

Public space: `public_prefixes` at the gateway's top level lists the provider's ranges this gateway may use
and announce. Set, every tenant public address and prefix must lie inside one of them. Unset, tenants keep
their single public addresses (SNAT and floating IPs, announced as /32 and /128, as before the setting
existed) but a tenant's public IPv6 prefix is refused: a routed prefix is announced as it is, and only the
operator can say which ranges are the provider's. A default route is never a public prefix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from nvfabric.gateway.tenants import Tenant
from nvfabric.vnet.desired import NVGRE_DEVICES
from nvfabric.vnet.errors import ModelError
from nvfabric.vnet.model import Address, Network

# never a tenant's: the loopback and the NVGRE devices every tenant's traffic arrives on
ALWAYS_RESERVED = {"lo": "the loopback", **{dev: "the gateway's NVGRE device" for dev in NVGRE_DEVICES.values()}}


def within(address_or_prefix: Address | Network, space: Iterable[Network]) -> bool:
    """True when the address (or the whole prefix) lies inside one of `space`'s prefixes."""
    for p in space:
        if p.version != address_or_prefix.version:
            continue
        if isinstance(address_or_prefix, ipaddress.IPv4Network | ipaddress.IPv6Network):
            if address_or_prefix.subnet_of(p):  # type: ignore[arg-type]
                return True
        elif address_or_prefix in p:
            return True
    return False


@dataclass(frozen=True)
class Reserved:
    """The gateway's own things, each with the configuration field that names it (for the error)."""

    interfaces: Mapping[str, str] = field(default_factory=dict)  # name -> what it is
    addresses: Mapping[Address, str] = field(default_factory=dict)  # address -> configuration field
    public_prefixes: tuple[Network, ...] = ()  # empty: single public addresses only (module docstring)
    # the gateway's end of a site's tunnel by family (external.address4/6); None: no sites at all (why)
    tunnel_ends: Mapping[int, Address] = field(default_factory=dict)
    no_sites: str | None = None

    @classmethod
    def build(cls, external_interfaces: Iterable[str], addresses: Iterable[tuple[str, Address | None]],
              public_prefixes: Iterable[Network], other_interfaces: Mapping[str, str] | None = None,
              tunnel_ends: Iterable[Address | None] = (), no_sites: str | None = None) -> Reserved:
        """`addresses`: (configuration field, address) pairs; None values (unset fields) are skipped.
        `other_interfaces`: the gateway's other own interfaces, name -> what it is. `tunnel_ends`: the external
        addresses sites' tunnels may start from; `no_sites`: why this gateway can have no sites (None: it can)."""
        ifaces = {**ALWAYS_RESERVED, **(other_interfaces or {})}
        for i, name in enumerate(external_interfaces):
            ifaces[name] = f"the gateway's external interface (external.interfaces[{i}])"
        own: dict[Address, str] = {}
        for where, address in addresses:
            if address is not None:
                own.setdefault(address, where)
        return cls(ifaces, own, tuple(public_prefixes), {a.version: a for a in tunnel_ends if a is not None}, no_sites)

    def check(self, tenant: Tenant, where: str = "") -> None:
        """Raise ModelError naming the tenant's field (prefixed with `where`) for the first thing it claims
        that is the gateway's, or public space outside what the gateway may announce."""
        try:
            self._check(tenant)
        except ModelError as exc:
            raise exc.within(where) from None

    def _check(self, tenant: Tenant) -> None:
        for i, site in enumerate(tenant.sites):
            if self.no_sites is not None:
                raise ModelError(f"sites[{i}]", site.name, f"this gateway can have no sites: {self.no_sites}")
            remote = site.remote_address
            if remote in self.addresses:
                raise ModelError(f"sites[{i}].remote_address", str(remote),
                                 f"is the gateway's own address ({self.addresses[remote]})")
            if remote.version not in self.tunnel_ends:
                raise ModelError(f"sites[{i}].remote_address", str(remote), f"needs the gateway's "
                                 f"external.address{remote.version}: its end of the tunnel")
        for i, ifname in enumerate(tenant.interfaces):
            if ifname in self.interfaces:
                raise ModelError(f"interfaces[{i}]", ifname, f"is {self.interfaces[ifname]}: not a tenant's")
        publics = [(f"snat[{i}].address", s.address) for i, s in enumerate(tenant.snat)]
        publics += [(f"floating_ips[{i}].public", f.public) for i, f in enumerate(tenant.floating_ips)]
        for name, address in publics:
            if address in self.addresses:
                raise ModelError(name, str(address), f"is the gateway's own address ({self.addresses[address]})")
            if self.public_prefixes and not within(address, self.public_prefixes):
                raise ModelError(name, str(address), "is outside the gateway's public_prefixes "
                                 f"({', '.join(map(str, self.public_prefixes))}): it would be announced upstream")
        for i, prefix in enumerate(tenant.public_prefixes):
            name = f"public_prefixes[{i}]"
            if prefix.prefixlen == 0:
                raise ModelError(name, str(prefix), "a default route is never announced upstream")
            mine = sorted((str(a), f) for a, f in self.addresses.items() if a.version == prefix.version and a in prefix)
            if mine:
                raise ModelError(name, str(prefix), f"contains the gateway's own address {mine[0][0]} ({mine[0][1]})")
            if not self.public_prefixes:
                raise ModelError(name, str(prefix), "the gateway has no public_prefixes: set them to the provider's "
                                 "ranges this gateway may announce")
            if not within(prefix, self.public_prefixes):
                raise ModelError(name, str(prefix), "is outside the gateway's public_prefixes "
                                 f"({', '.join(map(str, self.public_prefixes))})")
