"""What the kernel says about one network device, read by name: what decides whether it may become a VM
port (hostagent) or a tenant interface. One link and its addresses, not a dump of every device."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from nvfabric.vnet.kernel.netns import inside

IFF_LOOPBACK = 0x8


@dataclass(frozen=True)
class InterfaceFacts:
    name: str
    kind: str | None  # the rtnetlink kind (vrf, bridge, bond, gretap, veth, ...); None for a plain device
    loopback: bool
    master: str | None  # the device it is enslaved to (a VRF, a bridge, a bond), if any
    master_kind: str | None
    addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]


def _kind(link: object) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")  # type: ignore[attr-defined]
    return info.get_attr("IFLA_INFO_KIND") if info else None


def _read(netns: str | None, name: str) -> InterfaceFacts | None:
    with inside(netns), IPRoute() as ipr:
        try:
            (link,) = ipr.link("get", ifname=name)
        except NetlinkError:
            return None  # no such device (or a name the kernel refuses): the caller's "does not exist"
        master_index = link.get_attr("IFLA_MASTER")
        master = master_kind = None
        if master_index:
            try:
                (up,) = ipr.link("get", index=master_index)
                master, master_kind = up.get_attr("IFLA_IFNAME"), _kind(up)
            except NetlinkError:
                master = f"ifindex {master_index}"  # removed meanwhile: still not free
        addresses = tuple(ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
                          for a in ipr.get_addr(index=link["index"]) if a.get_attr("IFA_ADDRESS"))
        return InterfaceFacts(name, _kind(link), bool(link["flags"] & IFF_LOOPBACK), master, master_kind,
                              addresses)


async def read_interface(netns: str | None, name: str) -> InterfaceFacts | None:
    """The device `name` in `netns` (None when there is none), read in a worker thread that enters the
    namespace itself: pyroute2's synchronous socket runs its own event loop, which cannot nest in ours."""
    return await asyncio.to_thread(_read, netns, name)
