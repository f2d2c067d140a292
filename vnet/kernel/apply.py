"""The only netlink writer: applies a Plan, pipelined, and reports a result per operation.

Every write is idempotent: routes and neighbours use NLM_F_CREATE|NLM_F_REPLACE, creates of devices and
rules treat EEXIST as done, deletes treat "already gone" as done. Nothing is flushed: an op touches only
its own object. Requests of one dependency phase go out in large buffers and their acks are matched
back to operations by sequence number; a failure is reported as an `ApplyError` carrying the op and the
kernel's own message, and does not stop the other operations. Each kind's requests come from its own
encoder (vnet.kernel.encode).
"""

from __future__ import annotations

import errno as errno_mod
import gc
import socket
import struct
import time
from dataclasses import dataclass, field

from nvfabric.vnet.kernel import messages as m
from nvfabric.vnet.kernel.diff import Action, Op, Plan
from nvfabric.vnet.kernel.encode import Wire, encoder
from nvfabric.vnet.kernel.netns import RtnlSocket, write_sysctls
from nvfabric.vnet.kernel.objects import Sysctl


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


def _phases(plan: Plan) -> list[list[Op]]:
    """Contiguous runs of one dependency level (the plan is already ordered), sysctls apart: they are written to
    files, not sent over netlink, and share their level with netlink objects (a tunnel's address)."""
    phases: list[list[Op]] = []
    last = None
    for op in plan.ops:
        level = (op.action is Action.DELETE, op.obj.order, isinstance(op.obj, Sysctl))
        if level != last:
            phases.append([])
            last = level
        phases[-1].append(op)
    return phases


def _tolerated(op: Op, errno: int) -> bool:
    return encoder(op.obj).tolerated(op, errno)


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
        wire = Wire(sock, index)
        requests: list[tuple[int, bytes]] = []
        owners: list[tuple[Op, list[int]]] = []
        # Encoding 100k requests allocates millions of small objects and no cycles; the cyclic collector
        # would rescan everything alive (the plan, the desired state) again and again meanwhile.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for op in phase:
                try:
                    msgs = encoder(op.obj).encode(op, wire)
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
        if any(encoder(op.obj).makes_devices for op in phase):
            # later phases refer to devices this one made or removed (a port's master or MTU changes no index:
            # a new port's attach re-read every link of the host for nothing)
            index = await link_indexes(sock)
    report.seconds = time.perf_counter() - start
    return report


__all__ = ["ApplyError", "Report", "apply", "link_indexes", "socket"]
