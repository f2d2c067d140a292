"""The actual state: one dump per object class -> the set of objects that are OURS (objects.py tags).

Everything else in the namespace (other protocols' routes, other VRFs, neighbours learnt by the kernel)
is invisible here, so `diff` can never plan to touch it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from collections.abc import AsyncIterator, Iterable

from pyroute2.netlink.rtnl.fibmsg import fibmsg

from nvfabric.vnet.kernel import apart
from nvfabric.vnet.kernel import messages as m
from nvfabric.vnet.kernel import objects as k
from nvfabric.vnet.kernel.netns import RtnlSocket, read_sysctls

log = logging.getLogger(__name__)


async def address_prefixes(sock: RtnlSocket) -> dict[str, int]:
    """Every interface address of the namespace (text) -> its prefix length (one dump, both families)."""
    out: dict[str, int] = {}
    async for raw in sock.dump(m.RTM_GETADDR, struct.pack("=BBBBI", 0, 0, 0, 0, 0)):
        parsed = m.parse_address(raw)
        if parsed is not None:
            out[parsed[0]] = parsed[1]
    return out


async def vrf_addresses(sock: RtnlSocket, vrfs: dict[int, str],
                        tunnels: dict[int, str] | None = None) -> AsyncIterator[k.VrfAddress | k.TunnelAddress]:
    """The addresses on our VRF devices and tunnel devices (ifindex -> name), but IPv6 link-local ones (the
    kernel's own)."""
    tunnels = tunnels or {}
    if not vrfs and not tunnels:
        return
    async for raw in sock.dump(m.RTM_GETADDR, struct.pack("=BBBBI", 0, 0, 0, 0, 0)):
        a = m.parse_address_fields(raw)
        if a is None or ipaddress.ip_address(a.address).is_link_local:
            continue
        if a.ifindex in vrfs:
            yield k.VrfAddress(vrfs[a.ifindex], a.address, a.prefixlen)
        elif a.ifindex in tunnels:
            yield k.TunnelAddress(tunnels[a.ifindex], a.address, a.prefixlen)


async def links(sock: RtnlSocket) -> AsyncIterator[m.LinkFields]:
    async for raw in sock.dump(m.RTM_GETLINK, struct.pack("=BBHiII", 0, 0, 0, 0, 0, 0)):
        yield m.parse_link(raw)


async def devices(sock: RtnlSocket) -> tuple[list[k.KernelObject], dict[int, str]]:
    """Our VRFs, NVGRE devices, XFRM interfaces and GRE tunnels, the ports enslaved to our VRFs, and every
    ifindex -> name."""
    all_links = [link async for link in links(sock)]
    names = {link.index: link.name for link in all_links}
    out: list[k.KernelObject] = []
    our_vrfs: dict[int, str] = {}
    for link in all_links:
        if not link.name.startswith(k.DEVICE_PREFIX):
            continue
        if link.kind == "vrf" and link.vrf_table is not None:
            out.append(k.Vrf(link.name, link.vrf_table))
            our_vrfs[link.index] = link.name
        elif link.kind in ("gretap", "ip6gretap"):
            out.append(k.NvgreDevice(link.name, 4 if link.kind == "gretap" else 6, link.address, link.collect_md,
                                     link.mtu))
        elif link.kind == "dummy":
            out.append(k.DummyDevice(link.name))
    for link in all_links:
        if link.kind == "xfrm" and link.name.startswith(k.DEVICE_PREFIX) and link.if_id:
            # ours wherever it is: one out of its VRF ("") is put back in, or deleted
            out.append(k.XfrmInterface(link.name, link.if_id, our_vrfs.get(link.master, "")))
        elif link.kind in m.PLAIN_GRE_KINDS and link.name.startswith(k.DEVICE_PREFIX) and link.gre is not None:
            out.append(k.GreTunnel(link.name, our_vrfs.get(link.master, ""), *link.gre))
        elif link.master in our_vrfs:
            out.append(k.VrfPort(link.name, our_vrfs[link.master], link.mtu))
    return out, names


async def rules(sock: RtnlSocket) -> AsyncIterator[k.KernelObject]:
    for family in (4, 6):
        local_zero = local_ours = False
        async for raw in sock.dump(m.RTM_GETRULE, struct.pack("=BBBBBBBBI", m.FAMILY[family], 0, 0, 0, 0, 0, 0, 0, 0)):
            msg = fibmsg(raw)
            msg.decode()
            priority = msg.get_attr("FRA_PRIORITY") or 0
            table = msg.get_attr("FRA_TABLE") or msg["table"]
            if table == m.RT_TABLE_LOCAL and msg["action"] == m.FR_ACT_TO_TBL and not msg.get_attr("FRA_IIFNAME"):
                local_zero |= priority == 0
                local_ours |= priority == k.LOCAL_RULE_PRIORITY and msg.get_attr("FRA_PROTOCOL") == k.PROTO
            if msg.get_attr("FRA_PROTOCOL") != k.PROTO or priority not in k.RULE_PRIORITIES:
                continue
            tun_id = msg.get_attr("FRA_TUN_ID")
            fwmark = msg.get_attr("FRA_FWMARK")
            if msg["action"] == m.FR_ACT_UNREACHABLE and msg.get_attr("FRA_IIFNAME"):
                yield k.UnreachableIifRule(family, msg.get_attr("FRA_IIFNAME"), priority)
            elif tun_id is not None:
                yield k.TunIdRule(family, msg.get_attr("FRA_IIFNAME"), tun_id, msg.get_attr("FRA_TABLE"),
                                  msg.get_attr("FRA_PRIORITY"))
            elif fwmark:
                yield k.FwmarkRule(family, fwmark, msg.get_attr("FRA_TABLE"), msg.get_attr("FRA_PRIORITY"),
                                   msg.get_attr("FRA_IIFNAME"), msg.get_attr("FRA_IP_PROTO") or None)
        if local_ours:
            yield k.LocalTableRule(family, zero=local_zero)


async def neighbours(sock: RtnlSocket, names: dict[int, str], ports: set[str]) -> AsyncIterator[k.KernelObject]:
    for flags in (0, m.NTF_PROXY):
        body = struct.pack("=BBHiHBB", socket.AF_UNSPEC, 0, 0, 0, 0, flags, 0)
        async for raw in sock.dump(m.RTM_GETNEIGH, body):
            n = m.parse_neighbour(raw)
            dev = names.get(n.ifindex)
            if n.flags & m.NTF_PROXY:
                # proxy entries carry NDA_PROTOCOL on kernels that keep it; otherwise a proxy entry on
                # one of our ports is ours (the port belongs to our routing domain)
                if n.protocol == k.PROTO or (n.protocol is None and dev in ports):
                    yield k.ProxyNeighbour(dev, n.dst)
            elif n.protocol == k.PROTO and n.state & m.NUD_PERMANENT:
                yield k.PermanentNeighbour(dev, n.dst, n.lladdr)


def _route(r: m.RouteFields, names: dict[int, str]) -> k.KernelObject | None:
    prefix = f"{r.dst or ('0.0.0.0' if r.family == 4 else '::')}/{r.dst_len}"
    if r.rtype == m.RTN_UNREACHABLE and r.dst_len == 0:
        return k.UnreachableRoute(r.table, r.family, r.metric)
    dev = names.get(r.oif) if r.oif is not None else None
    if r.encap_type in (m.LWTUNNEL_ENCAP_IP, m.LWTUNNEL_ENCAP_IP6) and r.tun_id is not None:
        if not 0 < r.tun_id >> 8 < 1 << 24 or r.tun_dst is None:
            return None  # (not one we write: someone else's with our protocol number; never ours to touch)
        return k.encap_route_read(r.table, prefix, r.family, r.tun_id >> 8, r.tun_dst, dev, r.tun_ttl, r.metric)
    if dev is not None and r.rtype == m.RTN_UNICAST and r.gateway is not None:
        return k.ViaRoute(r.table, prefix, r.gateway, dev, r.metric)
    if dev is not None and r.rtype == m.RTN_UNICAST:
        return k.LocalPortRoute(r.table, prefix, dev, r.metric, r.prefsrc)
    return None


async def routes(sock: RtnlSocket, names: dict[int, str]) -> AsyncIterator[k.KernelObject]:
    for family in (4, 6):
        async for raw in sock.dump(m.RTM_GETROUTE, m.route_dump_body(family, k.PROTO)):
            fields = m.parse_route(raw)
            if fields.proto != k.PROTO:
                continue
            obj = _route(fields, names)
            if obj is not None:
                yield obj


async def routes_apart(sock: RtnlSocket, names: dict[int, str]) -> list[k.KernelObject]:
    """`routes`, with the dump and its parsing in a child process (vnet/kernel/apart.py): the loop builds the
    objects only. If the child fails, the routes are read here instead."""
    out: list[k.KernelObject] = []
    try:
        async for batch in apart.route_fields(sock.netns):
            for fields in batch:
                obj = _route(fields, names)
                if obj is not None:
                    out.append(obj)
            await asyncio.sleep(0)  # (a batch at a time: the loop's other work goes on between them)
        return out
    except apart.ApartError as exc:
        log.warning("reading the routes in a child process: %s (read here instead)", exc)
    return [r async for r in routes(sock, names)]


async def clsacts(sock: RtnlSocket, names: dict[int, str]) -> AsyncIterator[k.Clsact]:
    """The clsact qdiscs on our devices (by name), with their shared ingress block (0: none)."""
    async for raw in sock.dump(m.RTM_GETQDISC, m.tc_dump_body()):
        q = m.parse_qdisc(raw)
        dev = names.get(q.ifindex)
        if q.kind == "clsact" and dev is not None and dev.startswith(k.DEVICE_PREFIX):
            yield k.Clsact(dev, q.ingress_block)


async def flower_marks(sock: RtnlSocket, block: int) -> AsyncIterator[k.FlowerMark]:
    """Our flower filters on one of our clsacts' shared blocks (preference k.TC_PREF)."""
    async for raw in sock.dump(m.RTM_GETTFILTER, m.tc_dump_body(m.TCM_IFINDEX_MAGIC_BLOCK, block)):
        f = m.parse_flower(raw)
        # handle 0: the header of a preference's filter list; a VSID handle outside 24 bits is not one of ours
        if f is None or f.pref != k.TC_PREF or not 0 < f.handle < 1 << 24:
            continue
        yield k.FlowerMark(block, f.handle, f.mark or 0, f.key_id or 0)


async def observe(sock: RtnlSocket, sysctls: Iterable[str] = (), routes_in_child: bool = False) -> set[k.KernelObject]:
    """All our objects in the socket's namespace, plus the current values of the given sysctl paths.
    `routes_in_child`: the routes are read by a child process (`routes_apart`: a table of a route per remote CA)."""
    out: set[k.KernelObject] = set()
    devs, names = await devices(sock)
    out.update(devs)
    our_vrfs = {d.name for d in devs if isinstance(d, k.Vrf)}
    vrfs = {index: name for index, name in names.items() if name in our_vrfs}
    # a site's tunnel of either kind carries the gateway's inside address of a BGP session; the dummy device the
    # GRE sites' tunnel end
    our_tunnels = {d.name for d in devs if isinstance(d, (k.XfrmInterface, k.GreTunnel, k.DummyDevice))}
    tunnels = {index: name for index, name in names.items() if name in our_tunnels}
    out.update([a async for a in vrf_addresses(sock, vrfs, tunnels)])
    ports = {d.name for d in devs if isinstance(d, k.VrfPort)}
    out.update([r async for r in rules(sock)])
    out.update([n async for n in neighbours(sock, names, ports)])
    out.update(await routes_apart(sock, names) if routes_in_child else [r async for r in routes(sock, names)])
    hooks = [c async for c in clsacts(sock, names)]
    out.update(hooks)
    for block in sorted({c.block for c in hooks if c.block}):
        out.update([f async for f in flower_marks(sock, block)])
    for path, value in read_sysctls(sock.netns, sysctls).items():
        if value is not None:
            out.add(k.Sysctl(path, value))
    return out
