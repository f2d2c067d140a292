"""An injector: one BGP speaker standing for a fabric of many hosts, for benchmarks and smoke tests.

It connects to a route reflector (ours, `nvfabric rr`) from the namespace it runs in, announces a table of
remote CAs as EVPN type-2 routes, then changes it at a steady rate: moves (the same CA at another PA with a
higher MAC mobility sequence), adds (a new CA) and withdraws. Each change is stamped with the time its
UPDATE was written to the socket (time.monotonic(): one clock for every process of the machine), so a
consumer that stamps when the change took effect (a kernel route, an agent's op) computes the lag.

What the routes look like, so that a host's import policy (vnet/policy.py) accepts them:
- CA i lives in virtual subnet i % len(subnets), host number 2 + i // len(subnets) of its prefix (.0 is
  the network, .1 the gateway); its MAC is 02:<i as 5 bytes>.
- The next hops are `pas` addresses spread over `provider_prefix` (from its 256th address on, so the hosts,
  reflectors and the injector itself numbered low in the prefix are never one of them).
- Route distinguisher: one per VSID for the whole injector. A real host has its own RD, so a real move is
  an announcement under the new host's RD and a withdrawal under the old one; here a move is one route
  replaced under one key, which is what a consumer sees after the reflectors settle, in one change.

The schedule is computed and encoded before the clock starts (`Churn.schedule` is pure; `encode` packs each
tick's changes into UPDATEs), so during the measurement the injector only writes bytes: its own CPU does
not slow the reflector or the consumer it shares a machine with.

    python -m nvfabric.lab.inject --reflector 198.51.100.100 --local 198.51.100.1 --count 100000 \
        --rate 1000 --seconds 20 --stamps /tmp/stamps.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from nvfabric.bgp import fsm, wire
from nvfabric.bgp.mac import Mac
from nvfabric.bgp.routes import Family, MacIpKey, MacIpRoute

KINDS = ("move", "add", "withdraw")
PA_OFFSET = 256  # the first PA is this far into the provider prefix
TICK = 0.01  # seconds between two writes of the churn


class InjectError(ValueError):
    """A value the injector cannot use; names the field."""

    def __init__(self, field_name: str, value: object, problem: str) -> None:
        super().__init__(f"{field_name}: {value!r}: {problem}")
        self.field = field_name


@dataclass(frozen=True)
class Subnet:
    """One virtual subnet the CAs are spread over: the host's catalog must have it (VSID, prefix) in a
    routing domain that imports `route_target`."""

    vsid: int
    route_target: str
    prefix: IPv4Network


@dataclass(frozen=True)
class Spec:
    subnets: tuple[Subnet, ...]
    provider_prefix: IPv4Network
    pas: int = 1000  # how many distinct next hops (hosts) the CAs are spread over
    rd_admin: str = "192.0.2.1"  # the RDs' administrator field (an IPv4 address)
    router_mac: Mac = Mac("02:00:5e:10:00:01")

    def __post_init__(self) -> None:
        if not self.subnets:
            raise InjectError("subnets", self.subnets, "at least one virtual subnet")
        if not 1 <= self.pas <= self.provider_prefix.num_addresses - PA_OFFSET - 1:
            raise InjectError("pas", self.pas, f"1..{self.provider_prefix.num_addresses - PA_OFFSET - 1} "
                              f"next hops fit in {self.provider_prefix}")

    def capacity(self) -> int:
        """How many CAs the subnets hold (each loses its network, gateway and broadcast addresses)."""
        return sum(s.prefix.num_addresses - 3 for s in self.subnets)

    def pa(self, j: int) -> IPv4Address:
        return IPv4Address(int(self.provider_prefix.network_address) + PA_OFFSET + j % self.pas)

    def ca(self, i: int) -> tuple[Subnet, IPv4Address, Mac]:
        """CA number i: its subnet, address and MAC (built from integers and bytes: a table of 100,000 is
        made in seconds, where parsing text would take ten times as long)."""
        subnet = self.subnets[i % len(self.subnets)]
        host = 2 + i // len(self.subnets)
        if host >= subnet.prefix.num_addresses - 1:
            raise InjectError("count", i + 1, f"more CAs than the subnets hold ({self.capacity()})")
        ip = IPv4Address(int(subnet.prefix.network_address) + host)
        return subnet, ip, Mac.from_packed(b"\x02" + i.to_bytes(5, "big"))

    def route(self, i: int, pa: int, seq: int) -> MacIpRoute:
        subnet, ip, mac = self.ca(i)
        return MacIpRoute(rd=f"{self.rd_admin}:{subnet.vsid}", mac=mac, ip=ip, vsid=subnet.vsid,
                          next_hop=self.pa(pa), route_targets=(subnet.route_target,),
                          router_mac=Mac(self.router_mac), mobility_seq=seq)


@dataclass(frozen=True)
class Change:
    """One change of the churn. `pa` is where the CA is now (None: withdrawn); `sent` is stamped when its
    UPDATE is written."""

    kind: str
    vsid: int
    ip: str
    mac: str
    pa: str | None
    seq: int
    sent: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vsid": self.vsid, "ip": self.ip, "mac": self.mac, "pa": self.pa,
                "seq": self.seq, "sent": self.sent}


@dataclass(frozen=True)
class Tick:
    """The changes written at one instant (`at`: seconds after the churn starts), and the routes they are."""

    at: float
    changes: tuple[Change, ...]
    announce: tuple[MacIpRoute, ...]
    withdraw: tuple[MacIpKey, ...]


@dataclass
class Churn:
    """The table as the injector announced it: CA number -> (PA number, mobility sequence). Pure: draws
    from its own random generator, so a seed gives the same table and the same changes."""

    spec: Spec
    table: dict[int, tuple[int, int]] = field(default_factory=dict)
    next_ca: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(16))
    # the CAs of the table in a list, to draw one in O(1); _slot: CA -> its index there (swap-remove)
    _alive: list[int] = field(default_factory=list, repr=False)
    _slot: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._alive = list(self.table)
        self._slot = {i: n for n, i in enumerate(self._alive)}

    @classmethod
    def initial(cls, spec: Spec, count: int, seed: int = 16) -> Churn:
        if count > spec.capacity():
            raise InjectError("count", count, f"more CAs than the subnets hold ({spec.capacity()})")
        rng = random.Random(seed)
        table = {i: (rng.randrange(spec.pas), 0) for i in range(count)}
        return cls(spec, table, count, rng)

    def routes(self) -> list[MacIpRoute]:
        return [self.spec.route(i, pa, seq) for i, (pa, seq) in self.table.items()]

    def _change(self, kind: str, i: int) -> tuple[Change, MacIpRoute | MacIpKey]:
        subnet, ip, mac = self.spec.ca(i)
        if kind == "withdraw":
            pa, seq = self.table.pop(i)
            slot, last = self._slot.pop(i), self._alive.pop()
            if last != i:
                self._alive[slot], self._slot[last] = last, slot
            route = self.spec.route(i, pa, seq)
            return Change(kind, subnet.vsid, str(ip), mac, None, seq), route.key
        if kind == "move":
            pa, seq = self.table[i]
            pa = (pa + 1 + self.rng.randrange(self.spec.pas - 1)) % self.spec.pas if self.spec.pas > 1 else pa
            seq += 1
        else:
            pa, seq = self.rng.randrange(self.spec.pas), 0
            self._slot[i] = len(self._alive)
            self._alive.append(i)
        self.table[i] = (pa, seq)
        return Change(kind, subnet.vsid, str(ip), mac, str(self.spec.pa(pa)), seq), self.spec.route(i, pa, seq)

    def step(self, n: int, mix: Sequence[float] = (0.6, 0.2, 0.2)) -> tuple[list[Change], list[MacIpRoute],
                                                                            list[MacIpKey]]:
        """n changes to distinct CAs, drawn by `mix` (weights of move, add, withdraw); applied to the table."""
        changes: list[Change] = []
        announce: list[MacIpRoute] = []
        withdraw: list[MacIpKey] = []
        touched: set[int] = set()
        kinds = iter(self.rng.choices(KINDS, weights=mix, k=n))
        draws = 0
        while len(changes) < n and draws < 10 * n:  # (a tick's worth of changes to a tiny table may not fit)
            draws += 1
            kind = next(kinds, None) or self.rng.choices(KINDS, weights=mix)[0]
            if kind == "add" or not self._alive:
                if self.next_ca >= self.spec.capacity():
                    continue
                i, kind = self.next_ca, "add"
                self.next_ca += 1
            else:
                i = self._alive[self.rng.randrange(len(self._alive))]
                if i in touched:
                    continue  # one change per CA per tick (a second would be coalesced on the way): draw again
            touched.add(i)
            change, what = self._change(kind, i)
            changes.append(change)
            if isinstance(what, MacIpRoute):
                announce.append(what)
            else:
                withdraw.append(what)
        return changes, announce, withdraw

    def schedule(self, rate: float, seconds: float, mix: Sequence[float] = (0.6, 0.2, 0.2)) -> Iterator[Tick]:
        """`rate` changes per second for `seconds`, one tick every TICK seconds."""
        sent = 0
        ticks = max(1, round(seconds / TICK))
        for t in range(1, ticks + 1):
            due = round(rate * t * TICK) - sent
            if due <= 0:
                continue
            changes, announce, withdraw = self.step(due, mix)
            sent += due
            yield Tick(t * TICK, tuple(changes), tuple(announce), tuple(withdraw))


# ------------------------------------------------------------------------------------------ the session


class _Ignored:
    errors: list[Any] = []


_IGNORED = _Ignored()


class Session(asyncio.Protocol):
    """One iBGP session (bgp/fsm.py) that only sends: what the reflector sends back is counted, not decoded."""

    def __init__(self, router_id: str, asn: int, peer: str, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.caps = wire.Capabilities(asn=asn, router_id=IPv4Address(router_id), hold_time=180,
                                      families=frozenset({Family.L2VPN_EVPN}))
        self.peer = peer
        self.asn = asn
        self.fsm: fsm.Fsm | None = None
        self.transport: asyncio.Transport | None = None
        self.established = asyncio.Event()
        self.closed = asyncio.Event()
        self.negotiated: wire.Negotiated | None = None
        self.received_bytes = 0
        self._timer: asyncio.TimerHandle | None = None

    def _decode(self, negotiated: wire.Negotiated, body: bytes, source: Any) -> _Ignored:
        self.received_bytes += len(body)
        return _IGNORED

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        config = fsm.FsmConfig(self.caps, self.asn, ipaddress.ip_address(self.peer), self._decode)
        self.fsm = fsm.Fsm(config, self.loop.time())
        self._after([])

    def data_received(self, data: bytes) -> None:
        assert self.fsm is not None
        self._after(self.fsm.receive(data, self.loop.time()))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.fsm is not None:
            self.fsm.connection_lost(str(exc))
        if self._timer is not None:
            self._timer.cancel()
        self.closed.set()

    def _on_timer(self) -> None:
        assert self.fsm is not None
        self._after(self.fsm.handle_timer(self.loop.time()))

    def _after(self, events: list[Any]) -> None:
        assert self.fsm is not None and self.transport is not None
        out = self.fsm.data_to_send()
        if out:
            self.transport.write(out)
        if self._timer is not None:
            self._timer.cancel()
        when = self.fsm.next_timer()
        self._timer = self.loop.call_at(when, self._on_timer) if when is not None else None
        for event in events:
            if isinstance(event, fsm.Established):
                self.negotiated = event.negotiated
                self.established.set()
            elif isinstance(event, fsm.Closed):
                self.transport.close()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drained(self) -> None:
        """Until the kernel took every byte written (the socket's buffer has room again)."""
        assert self.transport is not None
        while self.transport.get_write_buffer_size() and not self.closed.is_set():
            await asyncio.sleep(0.005)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


S = TypeVar("S", bound=Session)


async def connect(reflector: str, local: str, asn: int = 65000, timeout: float = 60.0, port: int = 179,
                  session_type: Callable[[str, int, str, asyncio.AbstractEventLoop], S] = Session) -> S:
    """A session to `reflector` from `local` (also our router ID), retried until established or `timeout`.
    `session_type`: a Session that decodes what it receives (a benchmark's counting one)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((local, 0))
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (reflector, port)), 2)
        except (OSError, TimeoutError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        session = session_type(local, asn, reflector, loop)
        await loop.connect_accepted_socket(lambda session=session: session, sock)
        try:
            await asyncio.wait_for(session.established.wait(), max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            session.close()
            if time.monotonic() > deadline:
                raise
            continue
        return session


def encode(negotiated: wire.Negotiated, announce: Iterable[MacIpRoute], withdraw: Iterable[MacIpKey] = ()) -> bytes:
    return b"".join(wire.encode_update(negotiated, list(announce), list(withdraw)))


ENCODE_SLICE = 5000  # routes encoded between two turns of the loop (the session's KEEPALIVEs go meanwhile)


async def announce_table(session: Session, churn: Churn) -> tuple[int, float]:
    """The whole table, then End-of-RIB: (routes, seconds from the first byte until the socket took the last).
    The table is encoded a slice at a time, the loop turning between: in one piece, 100,000 routes took longer
    than the reflector's hold time in a loaded TCG VM, which then closed the session before it got a byte."""
    assert session.negotiated is not None
    routes = churn.routes()
    parts = []
    for i in range(0, len(routes), ENCODE_SLICE):
        parts.append(encode(session.negotiated, routes[i:i + ENCODE_SLICE]))
        await asyncio.sleep(0)
    if session.closed.is_set():
        raise ConnectionError(f"the session to {session.peer} closed before the table was written")
    data = b"".join(parts) + wire.encode_eor(Family.L2VPN_EVPN)
    start = time.monotonic()
    session.send(data)
    await session.drained()
    if session.closed.is_set():
        raise ConnectionError(f"the session to {session.peer} closed while the table was written")
    return len(churn.table), time.monotonic() - start


async def run_churn(session: Session, ticks: Iterable[Tick], ready: Awaitable[object] | None = None) -> list[Change]:
    """Write each tick's UPDATEs at its time; the changes, stamped. The UPDATEs are encoded first, then
    `ready` is awaited (the consumer's go), then the clock starts."""
    assert session.negotiated is not None
    encoded = [(tick, encode(session.negotiated, tick.announce, tick.withdraw)) for tick in ticks]
    if ready is not None:
        await ready
    stamped: list[Change] = []
    start = time.monotonic()
    for tick, data in encoded:
        delay = start + tick.at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if session.closed.is_set():
            raise ConnectionError(f"the session to {session.peer} closed during the churn")
        session.send(data)
        now = time.monotonic()
        stamped.extend(Change(c.kind, c.vsid, c.ip, c.mac, c.pa, c.seq, now) for c in tick.changes)
    await session.drained()
    return stamped


# ------------------------------------------------------------------------------------------ command


def parse_subnets(texts: Sequence[str]) -> tuple[Subnet, ...]:
    """"VSID,ROUTE_TARGET,PREFIX" each, e.g. "5001,65001:1,10.64.0.0/12"."""
    out = []
    for text in texts:
        parts = text.split(",")
        if len(parts) != 3:
            raise InjectError("subnet", text, "expected VSID,ROUTE_TARGET,PREFIX")
        try:
            out.append(Subnet(int(parts[0]), parts[1], IPv4Network(parts[2])))
        except ValueError as exc:
            raise InjectError("subnet", text, str(exc)) from None
    return tuple(out)


async def _go_line() -> None:
    """A line on stdin: the consumer is ready for the next phase."""
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def _ready(rate: float) -> None:
    print(json.dumps({"ready": rate}), flush=True)
    await _go_line()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    spec = Spec(parse_subnets(args.subnet), IPv4Network(args.provider_prefix), args.pas)
    churn = Churn.initial(spec, args.count, args.seed)
    session = await connect(args.reflector, args.local, args.asn)
    routes, table_s = await announce_table(session, churn)
    out: dict[str, Any] = {"routes": routes, "table_written_s": round(table_s, 3)}
    print(json.dumps({"table": out}), flush=True)
    rates = [float(r) for r in str(args.rate).split(",") if float(r) > 0]
    for rate in rates if args.seconds > 0 else []:
        ticks = list(churn.schedule(rate, args.seconds))
        stamped = await run_churn(session, ticks, _ready(rate) if args.wait_line else None)
        if args.stamps:
            with Path(args.stamps.format(rate=int(rate))).open("w") as f:
                for change in stamped:
                    f.write(json.dumps(change.as_dict()) + "\n")
        phase = {"rate": rate, "changes": len(stamped), "first_sent": stamped[0].sent if stamped else None,
                 "last_sent": stamped[-1].sent if stamped else None, "table": len(churn.table)}
        print(json.dumps({"phase": phase}), flush=True)
        out.setdefault("phases", []).append(phase)
    if args.hold > 0:
        await asyncio.sleep(args.hold)
    session.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reflector", required=True, help="the reflector's address (port 179)")
    parser.add_argument("--local", required=True, help="our address, also our router ID")
    parser.add_argument("--asn", type=int, default=65000)
    parser.add_argument("--subnet", action="append", default=[],
                        help="VSID,ROUTE_TARGET,PREFIX (repeat); default 5001,65001:1,10.64.0.0/12")
    parser.add_argument("--provider-prefix", default="100.64.0.0/16")
    parser.add_argument("--pas", type=int, default=1000)
    parser.add_argument("--count", type=int, default=1000, help="CAs in the table")
    parser.add_argument("--rate", default="0", help="changes per second after the table; several, comma-separated: "
                        "one phase each, in turn")
    parser.add_argument("--seconds", type=float, default=0.0, help="how long the churn lasts")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--stamps", help="write each change, with its send time, as JSON lines here ({rate}: "
                        "the phase's rate)")
    parser.add_argument("--wait-line", action="store_true",
                        help="each phase: encode, print {\"ready\": rate}, start on a line from stdin")
    parser.add_argument("--hold", type=float, default=0.0, help="seconds to keep the session up at the end")
    args = parser.parse_args(argv)
    if not args.subnet:
        args.subnet = ["5001,65001:1,10.64.0.0/12"]
    print(json.dumps({"done": asyncio.run(main_async(args))}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
