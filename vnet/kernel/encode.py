"""One encoder per kernel object kind: an Op -> its netlink request(s).

A kind is a class in objects.py, its dump in observe.py and its encoder here (registered in `ENCODERS`), so a
new kind touches no other kind's code. Each encoder also says what the writer must know about the kind: whether
its ops create or delete devices (later phases then read the ifindexes again) and whether EEXIST on a create
means "already there" (kinds that cannot be created with NLM_F_REPLACE).
"""

from __future__ import annotations

import errno as errno_mod
import ipaddress

from nvfabric.vnet.kernel import messages as m
from nvfabric.vnet.kernel import objects as k
from nvfabric.vnet.kernel.diff import Action, Op
from nvfabric.vnet.kernel.netns import GONE, RtnlSocket

CREATE_OR_REPLACE = m.NLM_F_CREATE | m.NLM_F_REPLACE | m.NLM_F_ACK
CREATE_NEW = m.NLM_F_CREATE | m.NLM_F_EXCL | m.NLM_F_ACK

Request = tuple[int, bytes]  # (sequence number, the whole message)


class Wire:
    """What an encoder needs from the writer: sequence numbers and the current name -> ifindex map."""

    def __init__(self, sock: RtnlSocket, index: dict[str, int]) -> None:
        self.sock = sock
        self.index = index

    def ifindex(self, name: str) -> int:
        try:
            return self.index[name]
        except KeyError:
            raise LookupError(f"device {name!r} does not exist") from None

    def msg(self, kind: int, flags: int, body: bytes) -> Request:
        seq = self.sock.next_seq()
        return seq, m.message(kind, flags, seq, body)


class Encoder:
    makes_devices = False  # its ops create or delete devices
    exists_is_done = False  # EEXIST on a create: the object is there (made meanwhile, or by an interrupted run)

    def encode(self, op: Op, wire: Wire) -> list[Request]:
        raise NotImplementedError

    def tolerated(self, op: Op, errno: int) -> bool:
        """An error that means the op's work is done."""
        if op.action is Action.DELETE:
            return errno in GONE
        # an object created meanwhile (or by an earlier, interrupted run) is what we wanted
        return errno == errno_mod.EEXIST and self.exists_is_done


class DeviceEncoder(Encoder):
    """Devices we create: created new, deleted by ifindex, replaced in place where the kernel can change
    the attribute, else by delete + create."""

    makes_devices = True
    exists_is_done = True

    def create_body(self, obj: k.KernelObject) -> bytes:
        raise NotImplementedError

    def change_body(self, old: k.KernelObject, obj: k.KernelObject, wire: Wire) -> bytes | None:
        """The in-place change from `old` to `obj`, or None when only a new device can have it."""
        return None

    def encode(self, op: Op, wire: Wire) -> list[Request]:
        assert isinstance(op.obj, (k.Vrf, k.NvgreDevice, k.XfrmInterface, k.GreTunnel, k.DummyDevice))
        name = op.obj.name
        create = [wire.msg(m.RTM_NEWLINK, CREATE_NEW, self.create_body(op.obj))] \
            if op.action is not Action.DELETE else []
        change = self.change_body(op.old, op.obj, wire) if op.action is Action.REPLACE and op.old else None
        if change is not None:
            return [wire.msg(m.RTM_NEWLINK, m.NLM_F_ACK, change)]
        if op.action is Action.CREATE:
            return create
        return [wire.msg(m.RTM_DELLINK, m.NLM_F_ACK, m.link_body(ifindex=wire.ifindex(name))), *create]


class VrfEncoder(DeviceEncoder):
    # a VRF's table cannot change in place: replace is delete + create
    def create_body(self, obj: k.KernelObject) -> bytes:
        assert isinstance(obj, k.Vrf)
        return m.link_body(name=obj.name, kind="vrf", info_data=m.vrf_info(obj.table), up=True)


class DummyDeviceEncoder(DeviceEncoder):
    def create_body(self, obj: k.KernelObject) -> bytes:
        assert isinstance(obj, k.DummyDevice)
        return m.link_body(name=obj.name, kind="dummy", up=True)


class XfrmInterfaceEncoder(DeviceEncoder):
    """Created in its VRF; a new VRF is a new master in place, a new if_id a new device (the kernel cannot
    change it)."""

    def create_body(self, obj: k.KernelObject) -> bytes:
        raise AssertionError("an XFRM interface needs its VRF's index: encode() builds it")

    def encode(self, op: Op, wire: Wire) -> list[Request]:
        obj = op.obj
        assert isinstance(obj, k.XfrmInterface)
        if op.action is Action.REPLACE and isinstance(op.old, k.XfrmInterface) and op.old.if_id == obj.if_id:
            return [wire.msg(m.RTM_NEWLINK, m.NLM_F_ACK,
                             m.link_body(ifindex=wire.ifindex(obj.name), master=wire.ifindex(obj.vrf), up=True))]
        out = [] if op.action is Action.CREATE else \
            [wire.msg(m.RTM_DELLINK, m.NLM_F_ACK, m.link_body(ifindex=wire.ifindex(obj.name)))]
        if op.action is not Action.DELETE:
            out.append(wire.msg(m.RTM_NEWLINK, CREATE_NEW, m.link_body(
                name=obj.name, kind="xfrm", info_data=m.xfrm_info(obj.if_id), master=wire.ifindex(obj.vrf),
                up=True)))
        return out


class GreTunnelEncoder(DeviceEncoder):
    """Created in its VRF; changed in place (new ends or key, another VRF): the device and the routes through it
    stay. Only a change of family (gre <-> ip6gre) is a new device."""

    def create_body(self, obj: k.KernelObject) -> bytes:
        raise AssertionError("a GRE tunnel needs its VRF's index: encode() builds it")

    def encode(self, op: Op, wire: Wire) -> list[Request]:
        obj = op.obj
        assert isinstance(obj, k.GreTunnel)
        old = op.old if isinstance(op.old, k.GreTunnel) else None
        if op.action is Action.REPLACE and old is not None and old.kind == obj.kind:
            return [wire.msg(m.RTM_NEWLINK, m.NLM_F_ACK, m.link_body(
                ifindex=wire.ifindex(obj.name), kind=obj.kind, info_data=m.gre_info(obj.local, obj.remote, obj.gre_key),
                master=wire.ifindex(obj.vrf), up=True))]
        out = [] if op.action is Action.CREATE else \
            [wire.msg(m.RTM_DELLINK, m.NLM_F_ACK, m.link_body(ifindex=wire.ifindex(obj.name)))]
        if op.action is not Action.DELETE:
            out.append(wire.msg(m.RTM_NEWLINK, CREATE_NEW, m.link_body(
                name=obj.name, kind=obj.kind, info_data=m.gre_info(obj.local, obj.remote, obj.gre_key),
                master=wire.ifindex(obj.vrf), up=True)))
        return out


class NvgreDeviceEncoder(DeviceEncoder):
    def create_body(self, obj: k.KernelObject) -> bytes:
        assert isinstance(obj, k.NvgreDevice)
        return m.link_body(name=obj.name, kind=obj.kind, info_data=m.collect_md_info(), address=obj.router_mac,
                           mtu=obj.mtu, up=True)

    def change_body(self, old: k.KernelObject, obj: k.KernelObject, wire: Wire) -> bytes | None:
        assert isinstance(old, k.NvgreDevice) and isinstance(obj, k.NvgreDevice)
        if (old.family, old.external) != (obj.family, obj.external):
            return None  # the kind and collect_md cannot change in place
        return m.link_body(ifindex=wire.ifindex(obj.name), address=obj.router_mac, mtu=obj.mtu, up=True)


class VrfPortEncoder(Encoder):
    def encode(self, op: Op, wire: Wire) -> list[Request]:
        obj = op.obj
        assert isinstance(obj, k.VrfPort)
        if op.action is Action.DELETE:  # release the port from the routing domain; the device is not ours
            body = m.link_body(ifindex=wire.ifindex(obj.name), master=0)
        else:
            body = m.link_body(ifindex=wire.ifindex(obj.name), master=wire.ifindex(obj.vrf), mtu=obj.mtu, up=True)
        return [wire.msg(m.RTM_NEWLINK, m.NLM_F_ACK, body)]


class RuleEncoder(Encoder):
    exists_is_done = True

    @staticmethod
    def _rule(wire: Wire, r: k.KernelObject, kind: int, flags: int) -> Request:
        if isinstance(r, k.TunIdRule):
            body = m.rule_body(r.family, r.iif, r.tun_id, r.table, r.priority, k.PROTO)
        elif isinstance(r, k.UnreachableIifRule):
            body = m.rule_body(r.family, r.iif, None, 0, r.priority, k.PROTO, action=m.FR_ACT_UNREACHABLE)
        else:
            assert isinstance(r, k.FwmarkRule)
            body = m.rule_body(r.family, r.iif, None, r.table, r.priority, k.PROTO, fwmark=r.fwmark,
                               ip_proto=r.ip_proto)
        return wire.msg(kind, flags, body)

    def encode(self, op: Op, wire: Wire) -> list[Request]:
        if op.action is Action.CREATE:
            return [self._rule(wire, op.obj, m.RTM_NEWRULE, CREATE_NEW)]
        if op.action is Action.DELETE:
            return [self._rule(wire, op.obj, m.RTM_DELRULE, m.NLM_F_ACK)]
        # rules have no NLM_F_REPLACE: delete the old value, add the new one, back to back
        assert op.old is not None
        return [self._rule(wire, op.old, m.RTM_DELRULE, m.NLM_F_ACK),
                self._rule(wire, op.obj, m.RTM_NEWRULE, CREATE_NEW)]


class LocalTableRuleEncoder(Encoder):
    """Create (or replace an observed one that left preference 0 in place): ours at 1100, then the kernel's
    preference 0 deleted. Delete: preference 0 back first, then ours. Each step is idempotent (a rule already
    there or already gone is done), so an interrupted run is finished by the next."""

    @staticmethod
    def _ours(wire: Wire, r: k.LocalTableRule, kind: int, flags: int) -> Request:
        return wire.msg(kind, flags, m.rule_body(r.family, None, None, m.RT_TABLE_LOCAL, r.priority, k.PROTO))

    @staticmethod
    def _zero(wire: Wire, r: k.LocalTableRule, kind: int, flags: int) -> Request:
        # The kernel's own rule, as the kernel makes it (protocol kernel). The protocol is what selects it for
        # a delete: the kernel does not compare a preference of 0, so a delete without it would take the first
        # rule of the local table, ours when preference 0 is already gone.
        return wire.msg(kind, flags, m.rule_body(r.family, None, None, m.RT_TABLE_LOCAL, 0, m.RTPROT_KERNEL))

    def encode(self, op: Op, wire: Wire) -> list[Request]:
        r = op.obj
        assert isinstance(r, k.LocalTableRule)
        if op.action is Action.DELETE:
            return [self._zero(wire, r, m.RTM_NEWRULE, CREATE_NEW), self._ours(wire, r, m.RTM_DELRULE, m.NLM_F_ACK)]
        return [self._ours(wire, r, m.RTM_NEWRULE, CREATE_NEW), self._zero(wire, r, m.RTM_DELRULE, m.NLM_F_ACK)]

    def tolerated(self, op: Op, errno: int) -> bool:
        return errno == errno_mod.EEXIST or errno in GONE


class VrfAddressEncoder(Encoder):
    """Created or replaced with NLM_F_REPLACE (the same address again is no error); a replace of another
    prefix length is a delete of the old one first (a length is part of an address's identity); deleted by
    address and length on its device (the VRF's; a TunnelAddress: the tunnel's). IPv6 `nodad`: the gateway
    answers at once, and a VM probing for the address (DAD) can never make the host's copy fail: the host
    answers, the VM's probe fails."""

    @staticmethod
    def _body(obj: k.VrfAddress | k.TunnelAddress, wire: Wire) -> bytes:
        assert obj.prefixlen is not None
        dev = obj.vrf if isinstance(obj, k.VrfAddress) else obj.dev
        return m.addr_body(obj.family, wire.ifindex(dev), obj.address, obj.prefixlen, nodad=obj.family == 6)

    def encode(self, op: Op, wire: Wire) -> list[Request]:
        obj = op.obj
        assert isinstance(obj, (k.VrfAddress, k.TunnelAddress))
        if op.action is Action.DELETE:
            return [wire.msg(m.RTM_DELADDR, m.NLM_F_ACK, self._body(obj, wire))]
        out = []
        if op.action is Action.REPLACE and isinstance(op.old, type(obj)) and op.old.prefixlen != obj.prefixlen:
            out.append(wire.msg(m.RTM_DELADDR, m.NLM_F_ACK, self._body(op.old, wire)))
        return [*out, wire.msg(m.RTM_NEWADDR, CREATE_OR_REPLACE, self._body(obj, wire))]

    def tolerated(self, op: Op, errno: int) -> bool:
        # a replace's delete of the old length when that is already gone (EADDRNOTAVAIL)
        return errno == errno_mod.EADDRNOTAVAIL if op.action is Action.REPLACE else super().tolerated(op, errno)


class NeighbourEncoder(Encoder):
    def encode(self, op: Op, wire: Wire) -> list[Request]:
        obj = op.obj
        assert isinstance(obj, (k.PermanentNeighbour, k.ProxyNeighbour))
        proxy = isinstance(obj, k.ProxyNeighbour)
        lladdr = None if isinstance(obj, k.ProxyNeighbour) or op.action is Action.DELETE else obj.lladdr
        body = m.neigh_body(ipaddress.ip_address(obj.address).version, wire.ifindex(obj.dev), obj.address,
                            lladdr=lladdr, proxy=proxy, proto=k.PROTO)
        if op.action is Action.DELETE:
            return [wire.msg(m.RTM_DELNEIGH, m.NLM_F_ACK, body)]
        return [wire.msg(m.RTM_NEWNEIGH, CREATE_OR_REPLACE, body)]


class RouteEncoder(Encoder):
    """Routes are replaced in place (NLM_F_REPLACE) and deleted by their key."""

    def encode(self, op: Op, wire: Wire) -> list[Request]:
        obj = op.obj
        assert isinstance(obj, (k.EncapRoute, k.LocalPortRoute, k.ViaRoute, k.UnreachableRoute))
        if op.action is Action.DELETE:
            return [wire.msg(m.RTM_DELROUTE, m.NLM_F_ACK, self._delete_body(obj))]
        return [wire.msg(m.RTM_NEWROUTE, CREATE_OR_REPLACE, self.body(obj, wire))]

    @staticmethod
    def _delete_body(obj: k.EncapRoute | k.LocalPortRoute | k.ViaRoute | k.UnreachableRoute) -> bytes:
        address, _, length = obj.prefix.partition("/")  # prefixes are normalised by the objects
        # A delete is selected by its key (table, prefix, metric) and our protocol; the kernel also compares
        # an IPv4 route's scope unless the request says RT_SCOPE_NOWHERE, and a scope-link local route
        # would otherwise answer ESRCH, which reads as "already gone" and leaves the route in place.
        rtype = m.RTN_UNREACHABLE if isinstance(obj, k.UnreachableRoute) else m.RTN_UNICAST
        return m.route_body(obj.family, obj.table, address, int(length), k.PROTO, rtype=rtype, metric=obj.metric,
                            scope=m.RT_SCOPE_NOWHERE)

    def body(self, obj: k.KernelObject, wire: Wire) -> bytes:
        raise NotImplementedError


class UnreachableRouteEncoder(RouteEncoder):
    def body(self, obj: k.KernelObject, wire: Wire) -> bytes:
        assert isinstance(obj, k.UnreachableRoute)
        address = obj.prefix.partition("/")[0]
        return m.route_body(obj.family, obj.table, address, 0, k.PROTO, rtype=m.RTN_UNREACHABLE, metric=obj.metric)


class LocalPortRouteEncoder(RouteEncoder):
    def body(self, obj: k.KernelObject, wire: Wire) -> bytes:
        assert isinstance(obj, k.LocalPortRoute)
        address, _, length = obj.prefix.partition("/")
        return m.route_body(obj.family, obj.table, address, int(length), k.PROTO, scope=m.RT_SCOPE_LINK,
                            oif=wire.ifindex(obj.dev), metric=obj.metric, prefsrc=obj.src)


class ViaRouteEncoder(RouteEncoder):
    def body(self, obj: k.KernelObject, wire: Wire) -> bytes:
        assert isinstance(obj, k.ViaRoute)
        address, _, length = obj.prefix.partition("/")
        return m.route_body(obj.family, obj.table, address, int(length), k.PROTO, oif=wire.ifindex(obj.dev),
                            gateway=obj.via, metric=obj.metric)


class EncapRouteEncoder(RouteEncoder):
    def encode(self, op: Op, wire: Wire) -> list[Request]:
        obj = op.obj
        if op.action is Action.DELETE:
            return super().encode(op, wire)
        assert isinstance(obj, k.EncapRoute)
        # the hot path: one pack per remote CA
        seq = wire.sock.next_seq()
        address, _, length = obj.prefix.partition("/")
        return [(seq, m.encap_route(
            seq, CREATE_OR_REPLACE, obj.family, obj.table, address, int(length), k.PROTO, obj.metric,
            wire.ifindex(obj.dev), obj.via, obj.pa_family, obj.tun_id, obj.pa, obj.ttl,
        ))]

    def body(self, obj: k.KernelObject, wire: Wire) -> bytes:  # the composed form (tests compare the two)
        assert isinstance(obj, k.EncapRoute)
        address, _, length = obj.prefix.partition("/")
        return m.route_body(
            obj.family, obj.table, address, int(length), k.PROTO, flags=m.RTNH_F_ONLINK, oif=wire.ifindex(obj.dev),
            gateway=obj.via, extra=m.tunnel_encap(obj.pa_family, obj.tun_id, obj.pa, obj.ttl), metric=obj.metric,
        )


class ClsactEncoder(Encoder):
    exists_is_done = True

    def encode(self, op: Op, wire: Wire) -> list[Request]:
        obj = op.obj
        assert isinstance(obj, k.Clsact)
        create = wire.msg(m.RTM_NEWQDISC, CREATE_NEW, m.clsact_body(wire.ifindex(obj.dev), obj.block))
        if op.action is Action.CREATE:
            return [create]
        delete = wire.msg(m.RTM_DELQDISC, m.NLM_F_ACK, m.clsact_body(wire.ifindex(obj.dev), None))
        # the block of a qdisc cannot change in place: replace is delete + create
        return [delete] if op.action is Action.DELETE else [delete, create]


class FlowerMarkEncoder(Encoder):
    def encode(self, op: Op, wire: Wire) -> list[Request]:
        obj = op.obj
        assert isinstance(obj, k.FlowerMark)
        if op.action is Action.DELETE:
            return [wire.msg(m.RTM_DELTFILTER, m.NLM_F_ACK,
                             m.flower_mark_body(obj.block, k.TC_PREF, obj.vsid, None, None))]
        # NLM_F_CREATE without NLM_F_EXCL (what `tc filter replace` sends): the handle's filter is replaced
        return [wire.msg(m.RTM_NEWTFILTER, m.NLM_F_CREATE | m.NLM_F_ACK,
                         m.flower_mark_body(obj.block, k.TC_PREF, obj.vsid, obj.key_id, obj.mark))]


_RULES = RuleEncoder()
_NEIGHBOURS = NeighbourEncoder()
ENCODERS: dict[type, Encoder] = {
    k.Vrf: VrfEncoder(),
    k.NvgreDevice: NvgreDeviceEncoder(),
    k.XfrmInterface: XfrmInterfaceEncoder(),
    k.GreTunnel: GreTunnelEncoder(),
    k.VrfPort: VrfPortEncoder(),
    k.TunIdRule: _RULES,
    k.FwmarkRule: _RULES,
    k.UnreachableIifRule: _RULES,
    k.LocalTableRule: LocalTableRuleEncoder(),
    k.PermanentNeighbour: _NEIGHBOURS,
    k.ProxyNeighbour: _NEIGHBOURS,
    k.EncapRoute: EncapRouteEncoder(),
    k.LocalPortRoute: LocalPortRouteEncoder(),
    k.ViaRoute: ViaRouteEncoder(),
    k.UnreachableRoute: UnreachableRouteEncoder(),
    k.Clsact: ClsactEncoder(),
    k.FlowerMark: FlowerMarkEncoder(),
    k.VrfAddress: VrfAddressEncoder(),
    k.TunnelAddress: VrfAddressEncoder(),
    k.DummyDevice: DummyDeviceEncoder(),
}


def encoder(obj: k.KernelObject) -> Encoder:
    try:
        return ENCODERS[type(obj)]
    except KeyError:
        raise TypeError(f"no encoder for {type(obj).__name__}") from None
