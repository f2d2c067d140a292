"""The only netlink writer: applies a Plan, pipelined, and reports a result per operation.

Every write is idempotent: routes and neighbours use NLM_F_CREATE|NLM_F_REPLACE, creates of devices and
rules treat EEXIST as done, deletes treat "already gone" as done. Nothing is flushed: an op touches only
its own object. Requests of one dependency phase go out in large buffers and their acks are matched
back to operations by sequence number; a failure is reported as an `ApplyError` carrying the op and the
kernel's own message, and does not stop the other operations.
"""

from __future__ import annotations

import errno as errno_mod
import gc
import ipaddress
import socket
import struct
import time
from dataclasses import dataclass, field

from nvfabric.vnet.kernel import messages as m
from nvfabric.vnet.kernel.diff import Action, Op, Plan
from nvfabric.vnet.kernel.netns import GONE, RtnlSocket, write_sysctls
from nvfabric.vnet.kernel.objects import (
    PROTO,
    EncapRoute,
    FwmarkRule,
    LocalPortRoute,
    NvgreDevice,
    PermanentNeighbour,
    ProxyNeighbour,
    Sysctl,
    TunIdRule,
    UnreachableRoute,
    ViaRoute,
    Vrf,
    VrfPort,
)

CREATE_OR_REPLACE = m.NLM_F_CREATE | m.NLM_F_REPLACE | m.NLM_F_ACK
CREATE_NEW = m.NLM_F_CREATE | m.NLM_F_EXCL | m.NLM_F_ACK


class ApplyError(Exception):
    """One operation the kernel refused: the op (hence the object), errno and the kernel's message."""

    def __init__(self, op: Op, errno: int, message: str) -> None:
        super().__init__(f"{op.action.value} {op.obj}: {message} (errno {errno})")
        self.op = op
        self.errno = errno
        self.message = message


@dataclass
class Report:
    applied: list[Op] = field(default_factory=list)
    errors: list[ApplyError] = field(default_factory=list)
    requests: int = 0  # netlink requests sent (a rule replace is two)
    seconds: float = 0.0
    encode_seconds: float = 0.0  # of which building requests in Python
    kernel_seconds: float = 0.0  # of which sendmsg (the kernel applying) and reading acks

    @property
    def ok(self) -> bool:
        return not self.errors


async def link_indexes(sock: RtnlSocket) -> dict[str, int]:
    """name -> ifindex, read by hand (only IFLA_IFNAME is needed, and it is the hot path before routes)."""
    out: dict[str, int] = {}
    async for msg in sock.dump(m.RTM_GETLINK, struct.pack("=BBHiII", 0, 0, 0, 0, 0, 0)):
        index = struct.unpack_from("=i", msg, 20)[0]
        offset = 32
        while offset + 4 <= len(msg):
            length, kind = struct.unpack_from("=HH", msg, offset)
            if length < 4:
                break
            if kind == m.IFLA_IFNAME:
                out[msg[offset + 4 : offset + length].rstrip(b"\0").decode()] = index
                break
            offset += (length + 3) & ~3
    return out


class _Encoder:
    """Turns one Op into its netlink request(s), given the current name -> ifindex map."""

    def __init__(self, sock: RtnlSocket, index: dict[str, int]) -> None:
        self.sock = sock
        self.index = index

    def _ifindex(self, name: str) -> int:
        try:
            return self.index[name]
        except KeyError:
            raise LookupError(f"device {name!r} does not exist") from None

    def _msg(self, kind: int, flags: int, body: bytes) -> tuple[int, bytes]:
        seq = self.sock.next_seq()
        return seq, m.message(kind, flags, seq, body)

    def encode(self, op: Op) -> list[tuple[int, bytes]]:
        obj, action = op.obj, op.action
        if type(obj) is EncapRoute and action is not Action.DELETE:  # the hot path: one pack per remote CA
            seq = self.sock.next_seq()
            address, _, length = obj.prefix.partition("/")
            return [(seq, m.encap_route(
                seq, CREATE_OR_REPLACE, obj.family, obj.table, address, int(length), PROTO, obj.metric,
                self._ifindex(obj.dev), obj.via, obj.pa_family, obj.tun_id, obj.pa, obj.ttl,
            ))]
        if isinstance(obj, Vrf):
            create = self._msg(
                m.RTM_NEWLINK, CREATE_NEW,
                m.link_body(name=obj.name, kind="vrf", info_data=m.vrf_info(obj.table), up=True),
            )
            if action is Action.CREATE:
                return [create]
            delete = self._msg(m.RTM_DELLINK, m.NLM_F_ACK, m.link_body(ifindex=self._ifindex(obj.name)))
            # a VRF's table cannot change in place: replace is delete + create
            return [delete] if action is Action.DELETE else [delete, create]
        if isinstance(obj, NvgreDevice):
            def create() -> tuple[int, bytes]:
                body = m.link_body(
                    name=obj.name, kind=obj.kind, info_data=m.collect_md_info(), address=obj.router_mac,
                    mtu=obj.mtu, up=True,
                )
                return self._msg(m.RTM_NEWLINK, CREATE_NEW, body)

            def delete() -> tuple[int, bytes]:
                return self._msg(m.RTM_DELLINK, m.NLM_F_ACK, m.link_body(ifindex=self._ifindex(obj.name)))

            if action is Action.CREATE:
                return [create()]
            if action is Action.DELETE:
                return [delete()]
            assert isinstance(op.old, NvgreDevice)
            if (op.old.family, op.old.external) != (obj.family, obj.external):
                return [delete(), create()]  # the kind and collect_md cannot change in place
            body = m.link_body(ifindex=self._ifindex(obj.name), address=obj.router_mac, mtu=obj.mtu, up=True)
            return [self._msg(m.RTM_NEWLINK, m.NLM_F_ACK, body)]
        if isinstance(obj, VrfPort):
            if action is Action.DELETE:  # release the port from the routing domain; the device is not ours
                body = m.link_body(ifindex=self._ifindex(obj.name), master=0)
            else:
                body = m.link_body(
                    ifindex=self._ifindex(obj.name), master=self._ifindex(obj.vrf), mtu=obj.mtu, up=True
                )
            return [self._msg(m.RTM_NEWLINK, m.NLM_F_ACK, body)]
        if isinstance(obj, (TunIdRule, FwmarkRule)):
            def rule(r: TunIdRule | FwmarkRule, kind: int, flags: int) -> tuple[int, bytes]:
                if isinstance(r, TunIdRule):
                    body = m.rule_body(r.family, r.iif, r.tun_id, r.table, r.priority, PROTO)
                else:
                    body = m.rule_body(r.family, r.iif, None, r.table, r.priority, PROTO, fwmark=r.fwmark,
                                       ip_proto=r.ip_proto)
                return self._msg(kind, flags, body)

            if action is Action.CREATE:
                return [rule(obj, m.RTM_NEWRULE, CREATE_NEW)]
            if action is Action.DELETE:
                return [rule(obj, m.RTM_DELRULE, m.NLM_F_ACK)]
            # rules have no NLM_F_REPLACE: delete the old value, add the new one, back to back
            assert isinstance(op.old, (TunIdRule, FwmarkRule))
            return [rule(op.old, m.RTM_DELRULE, m.NLM_F_ACK), rule(obj, m.RTM_NEWRULE, CREATE_NEW)]
        if isinstance(obj, (PermanentNeighbour, ProxyNeighbour)):
            proxy = isinstance(obj, ProxyNeighbour)
            body = m.neigh_body(
                ipaddress.ip_address(obj.address).version, self._ifindex(obj.dev), obj.address,
                lladdr=None if proxy or action is Action.DELETE else obj.lladdr, proxy=proxy, proto=PROTO,
            )
            if action is Action.DELETE:
                return [self._msg(m.RTM_DELNEIGH, m.NLM_F_ACK, body)]
            return [self._msg(m.RTM_NEWNEIGH, CREATE_OR_REPLACE, body)]
        if isinstance(obj, (EncapRoute, LocalPortRoute, ViaRoute, UnreachableRoute)):
            kind, flags = (
                (m.RTM_DELROUTE, m.NLM_F_ACK) if action is Action.DELETE else (m.RTM_NEWROUTE, CREATE_OR_REPLACE)
            )
            return [self._msg(kind, flags, self.route_body(obj, action is Action.DELETE))]
        raise TypeError(f"no encoder for {type(obj).__name__}")

    def route_body(self, obj: EncapRoute | LocalPortRoute | ViaRoute | UnreachableRoute, delete: bool) -> bytes:
        address, _, length = obj.prefix.partition("/")  # prefixes are normalised by the objects
        plen = int(length)
        # A delete is selected by its key (table, prefix, metric) and our protocol; the kernel also compares
        # an IPv4 route's scope unless the request says RT_SCOPE_NOWHERE, and a scope-link local route
        # would otherwise answer ESRCH, which reads as "already gone" and leaves the route in place.
        scope = {"scope": m.RT_SCOPE_NOWHERE} if delete else {}
        if isinstance(obj, UnreachableRoute):
            return m.route_body(obj.family, obj.table, address, 0, PROTO, rtype=m.RTN_UNREACHABLE, metric=obj.metric,
                                **scope)
        if delete:
            return m.route_body(obj.family, obj.table, address, plen, PROTO, metric=obj.metric, **scope)
        if isinstance(obj, LocalPortRoute):
            return m.route_body(obj.family, obj.table, address, plen, PROTO, scope=m.RT_SCOPE_LINK,
                                oif=self._ifindex(obj.dev), metric=obj.metric)
        if isinstance(obj, ViaRoute):
            return m.route_body(obj.family, obj.table, address, plen, PROTO, oif=self._ifindex(obj.dev),
                                gateway=obj.via, metric=obj.metric)
        return m.route_body(
            obj.family, obj.table, address, plen, PROTO, flags=m.RTNH_F_ONLINK, oif=self._ifindex(obj.dev),
            gateway=obj.via, extra=m.tunnel_encap(obj.pa_family, obj.tun_id, obj.pa, obj.ttl), metric=obj.metric,
        )


_DEVICE_KINDS = (Vrf, NvgreDevice)  # the kinds whose ops create or delete devices


def _phases(plan: Plan) -> list[list[Op]]:
    """Contiguous runs of one dependency level (the plan is already ordered)."""
    phases: list[list[Op]] = []
    last = None
    for op in plan.ops:
        level = (op.action is Action.DELETE, op.obj.order)
        if level != last:
            phases.append([])
            last = level
        phases[-1].append(op)
    return phases


def _tolerated(op: Op, errno: int) -> bool:
    if op.action is Action.DELETE:
        return errno in GONE
    # an object created meanwhile (or by an earlier, interrupted run) is what we wanted
    return errno == errno_mod.EEXIST and isinstance(op.obj, (Vrf, NvgreDevice, TunIdRule, FwmarkRule))


async def apply(sock: RtnlSocket, plan: Plan) -> Report:
    report = Report()
    start = time.perf_counter()
    index = await link_indexes(sock) if plan else {}
    for phase in _phases(plan):
        if isinstance(phase[0].obj, Sysctl):
            for op, error in zip(phase, write_sysctls(sock.netns, [(o.obj.path, o.obj.value) for o in phase]),
                                 strict=True):
                if error is None:
                    report.applied.append(op)
                else:
                    report.errors.append(ApplyError(op, error.errno or 0, str(error)))
            continue
        t0 = time.perf_counter()
        encoder = _Encoder(sock, index)
        requests: list[tuple[int, bytes]] = []
        owners: list[tuple[Op, list[int]]] = []
        # Encoding 100k requests allocates millions of small objects and no cycles; the cyclic collector
        # would rescan everything alive (the plan, the desired state) again and again meanwhile.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for op in phase:
                try:
                    msgs = encoder.encode(op)
                except LookupError as e:
                    report.errors.append(ApplyError(op, errno_mod.ENODEV, str(e)))
                    continue
                requests.extend(msgs)
                owners.append((op, [seq for seq, _ in msgs]))
        finally:
            if gc_was_enabled:
                gc.enable()
        t1 = time.perf_counter()
        acks = await sock.transact(requests)
        report.encode_seconds += t1 - t0
        report.kernel_seconds += time.perf_counter() - t1
        report.requests += len(requests)
        for op, seqs in owners:
            failed = [acks[s] for s in seqs if acks[s].errno and not _tolerated(op, acks[s].errno)]
            if failed:
                report.errors.append(ApplyError(op, failed[0].errno, failed[0].message))
            else:
                report.applied.append(op)
        if any(isinstance(op.obj, _DEVICE_KINDS) for op in phase):
            # later phases refer to devices this one made or removed (a port's master or MTU changes no index:
            # a new port's attach re-read every link of the host for nothing)
            index = await link_indexes(sock)
    report.seconds = time.perf_counter() - start
    return report


__all__ = ["ApplyError", "Report", "apply", "link_indexes", "socket"]
