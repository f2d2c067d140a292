"""Which devices may become a VM port, decided from what the kernel says about them (vnet/kernel/
interfaces.py), before anything is written: enslaving the wrong device to a tenant's VRF (the underlay's
eth0, the loopback, a bridge member) cuts the host off or hands a tenant another network."""

from __future__ import annotations

from collections.abc import Iterable

from nvfabric.vnet.errors import ConflictError, ModelError
from nvfabric.vnet.kernel.interfaces import InterfaceFacts

OURS = "nvf-"  # the prefix of every device nvfabric creates (VRFs, NVGRE devices)
# kinds that are never a VM's port: routing and switching devices, tunnels (the NVGRE devices among them)
NOT_PORTS = {
    "vrf": "a VRF", "bridge": "a bridge", "bond": "a bond", "team": "a team device", "macsec": "a MACsec device",
    **{kind: "a tunnel device" for kind in ("gre", "gretap", "ip6gre", "ip6gretap", "ipip", "sit", "ip6tnl",
                                            "vxlan", "geneve", "erspan", "ip6erspan", "wireguard")},
}


def check_port_interface(facts: InterfaceFacts, provider_addresses: Iterable[object]) -> None:
    """Raise ModelError (400: never a port) or ConflictError (409: in use by the host) naming `interface`."""
    name = facts.name
    if name.startswith(OURS):
        raise ModelError("interface", name, "is a device of nvfabric, not a VM port")
    if facts.loopback:
        raise ModelError("interface", name, "is the loopback device, not a VM port")
    if facts.kind in NOT_PORTS:
        raise ModelError("interface", name, f"is {NOT_PORTS[facts.kind]} ({facts.kind}), not a VM port")
    underlay = sorted(str(a) for a in set(facts.addresses) & set(provider_addresses))
    if underlay:
        raise ConflictError("interface", name, f"carries the provider address {', '.join(underlay)} (the "
                            "underlay): a port is moved into a tenant's VRF")
    if facts.master is not None and not facts.master.startswith(OURS):
        what = f"a {facts.master_kind}" if facts.master_kind else "a device"
        raise ConflictError("interface", name, f"is enslaved to {facts.master} ({what}): a bridge or bond "
                            "member, or another VRF's")
