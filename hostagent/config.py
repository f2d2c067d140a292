"""`nvfabric agent --config agent.yaml`: the host agent's configuration, typed, every error naming its field.

```yaml
asn: 65001
router_id: 198.51.100.11
provider_addresses: [198.51.100.11, "2001:db8::11"]   # the first is the next hop we announce
provider_prefixes: [198.51.100.0/24, "2001:db8::/64"] # optional: learned next hops must be inside (default:
                                                      # the prefixes of the PAs' own interface addresses)
router_mac: "02:00:5e:10:00:01"                       # fabric-wide: every inner frame is addressed to it
route_reflectors:
  - {address: 198.51.100.100, asn: 65001, md5_password: s3cret}
  - {address: 198.51.100.101, bfd: true}              # asn defaults to ours (iBGP); BFD 300 ms x 3
api: {listen: "127.0.0.1:8500", token: change-me}
state_dir: /var/lib/nvfabric/agent
underlay_mtu: 1500
routing_domains: [{name: blue, route_targets: ["65001:1"], subnets: [{vsid: 5001, prefixes: [10.0.0.0/24]}]}]
netns: hv1          # optional: lab and tests only (netlink, BGP and API sockets in this namespace)
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nvfabric.bgp.config import ConfigError, Peer, Reader, read_api, read_peers, read_yaml
from nvfabric.service.config import ApiConfig
from nvfabric.vnet.config import (
    DEFAULT_ROUTER_MAC,
    read_provider_addresses,
    read_provider_prefixes,
    read_router_mac,
)
from nvfabric.vnet.errors import ModelError
from nvfabric.vnet.model import Address, Network, RoutingDomain

DEFAULT_LISTEN = "127.0.0.1:8500"

__all__ = ["AgentConfig", "ConfigError", "DEFAULT_LISTEN", "load"]


@dataclass(frozen=True)
class AgentConfig:
    asn: int
    router_id: str
    provider_addresses: tuple[Address, ...]
    route_reflectors: tuple[Peer, ...]
    state_dir: Path
    router_mac: str = DEFAULT_ROUTER_MAC
    api: ApiConfig = field(default_factory=lambda: ApiConfig(DEFAULT_LISTEN))
    underlay_mtu: int = 1500
    routing_domains: tuple[RoutingDomain, ...] = ()
    netns: str | None = None
    # Seconds to hold deletes of learned state after a (re)start when no End-of-RIB arrives.
    eor_timeout: float = 60.0
    # Level-triggered safety nets, both periodic. Resync: the kernel read back in full and compared with the
    # desired state held (strays removed, drift repaired): O(kernel objects). Verify: the desired state
    # computed again from scratch (the learned table from the client's, every partition, the decapsulation
    # table) and compared with the incremental one: O(the fabric), so much rarer.
    resync_interval: float = 60.0
    verify_interval: float = 1800.0
    # Learned next hops must be inside these (vnet/policy.py); None: the prefixes of the PAs' interfaces.
    provider_prefixes: tuple[Network, ...] | None = None

    @property
    def next_hop(self) -> Address:
        return self.provider_addresses[0]

    @classmethod
    def from_dict(cls, data: Any) -> AgentConfig:
        return parse(data)


def parse(data: Any) -> AgentConfig:
    top = Reader(data, "")
    asn = top.integer("asn", 1, 0xFFFFFFFF)
    router_id = top.address("router_id", version=4)
    pas = read_provider_addresses(top)
    if not pas:
        raise ConfigError("provider_addresses", "at least one provider address is required (the first is the next hop)")
    provider_prefixes = read_provider_prefixes(top)
    router_mac = read_router_mac(top)
    reflectors = read_peers(top, "route_reflectors", asn)
    if not reflectors:
        raise ConfigError("route_reflectors", "at least one route reflector is required")
    api = read_api(top, DEFAULT_LISTEN)
    state_dir = Path(top.get("state_dir", str))
    mtu = top.integer("underlay_mtu", 1280, 65535, 1500)
    domains: list[RoutingDomain] = []
    for where, value in top.items("routing_domains"):
        try:
            domains.append(RoutingDomain.from_dict(value, where=where))
        except ModelError as exc:
            raise ConfigError(exc.within(where).field, f"{exc.problem} (got {exc.value!r})") from None
        if domains[-1].name in {domain.name for domain in domains[:-1]}:
            raise ConfigError(f"{where}.name", f"routing domain {domains[-1].name!r} is defined twice")
    netns = top.get("netns", str, None)
    eor_timeout = top.seconds("eor_timeout", 1, 3600, 60.0)
    resync = top.seconds("resync_interval", 1, 86400, 60.0)
    verify = top.seconds("verify_interval", 1, 7 * 86400, 1800.0)
    top.done()
    return AgentConfig(
        asn=asn, router_id=router_id, provider_addresses=tuple(pas), route_reflectors=tuple(reflectors),
        state_dir=state_dir, router_mac=router_mac, api=api, underlay_mtu=mtu, routing_domains=tuple(domains),
        netns=netns, eor_timeout=eor_timeout, resync_interval=resync, verify_interval=verify,
        provider_prefixes=provider_prefixes,
    )


def load(path: str | Path) -> AgentConfig:
    return parse(read_yaml(path))
