"""The parts of the agent's and the gateway's configuration that describe this host in the virtual network:
its provider addresses and the fabric's router MAC. Read with bgp/config.py's Reader, errors naming the field."""

from __future__ import annotations

import ipaddress

from nvfabric.bgp.config import ConfigError, Reader
from nvfabric.bgp.mac import Mac
from nvfabric.vnet.errors import ModelError
from nvfabric.vnet.model import Address, Network, check_mac

DEFAULT_ROUTER_MAC = "02:00:5e:10:00:01"  # fabric-wide: every inner frame is addressed to it


def read_provider_addresses(top: Reader) -> list[Address]:
    """`provider_addresses`: at most one per family (one NVGRE device per family)."""
    pas: list[Address] = []
    for where, value in top.items("provider_addresses"):
        try:
            pas.append(ipaddress.ip_address(value))
        except ValueError:
            raise ConfigError(where, f"{value!r} is not an IPv4 or IPv6 address") from None
    if len({pa.version for pa in pas}) != len(pas):
        raise ConfigError("provider_addresses", "at most one IPv4 and one IPv6 address (one NVGRE device per family)")
    return pas


def read_router_mac(top: Reader) -> Mac:
    try:
        return check_mac(top.get("router_mac", str, DEFAULT_ROUTER_MAC), "router_mac")
    except ModelError as exc:
        raise ConfigError("router_mac", exc.problem) from None


def read_provider_prefixes(top: Reader) -> tuple[Network, ...] | None:
    """`provider_prefixes`: where the fabric's provider addresses are; a learned route's next hop must be
    inside one (vnet/policy.py). Absent: None, the daemon takes the prefixes of its own PAs' interfaces."""
    if top.get("provider_prefixes", list, None) is None:
        return None
    out: list[Network] = []
    for where, value in top.items("provider_prefixes"):
        try:
            out.append(ipaddress.ip_network(value, strict=True))
        except (ValueError, TypeError) as exc:
            raise ConfigError(where, f"{value!r} is not a network prefix ({exc})") from None
    if not out:
        raise ConfigError("provider_prefixes", "an empty list would refuse every route: omit it for the default")
    return tuple(out)
