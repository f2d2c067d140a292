"""A fuzzing campaign against one BGP target over real TCP sessions, seeded and bounded in messages and time.

The loop: hold one Established raw session with the target; send a fuzzed message (lab/fuzz/mutate.py);
then a ROUTE-REFRESH, and wait for the target's answer (an UPDATE of its table: the target needs at least
one route for us) or for it to close. That round trip tells, for every message, whether the session
survived and, if not, how it ended:
- closed with a NOTIFICATION whose code RFC 4271 allows for what we sent (or Cease): an expected reset;
- closed without a NOTIFICATION (an exception escaped the target's protocol code), with a code RFC 4271
  does not allow, no answer at all (a wedge), bytes that are not BGP: findings.
Now and then the session is replaced by a fresh connection whose OPEN is fuzzed. Every `health_every`
messages (and at the end) the caller's `health` check runs: the target's OTHER sessions must never have
been reset, and the target must still be alive.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from nvfabric.bgp import wire
from nvfabric.bgp.routes import Family, RouteKey
from nvfabric.bgp.wire import MessageType
from nvfabric.lab.fuzz.mutate import CEASE, Fuzzed, Generator
from nvfabric.lab.fuzz.session import RawSession, SessionClosed, announced, update_family

SYNC_TIMEOUT = 15.0  # generous: the machine may be busy; an answer normally takes milliseconds
OPEN_TIMEOUT = 15.0


@dataclass(frozen=True)
class Finding:
    kind: str  # closed-without-notification | unexpected-code | no-answer | not-bgp | other-session | target-down
    message_kind: str
    message: str  # hex of what we sent
    detail: str
    index: int  # which message of the run (with the seed, reproduces it)


@dataclass
class Report:
    target: str
    seed: int
    sent: Counter[str] = field(default_factory=Counter)
    resets: Counter[str] = field(default_factory=Counter)  # "code/subcode" of NOTIFICATIONs received
    opens_accepted: int = 0
    sessions: int = 0
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def messages(self) -> int:
        return sum(self.sent.values())

    def summary(self) -> str:
        sent = ", ".join(f"{k} {v}" for k, v in sorted(self.sent.items()))
        resets = ", ".join(f"{k}: {v}" for k, v in sorted(self.resets.items())) or "none"
        lines = [f"{self.target}: seed {self.seed}, {self.messages} messages in {self.seconds:.1f} s ({sent}); "
                 f"{self.sessions} sessions; fuzzed OPENs accepted {self.opens_accepted}; "
                 f"resets by NOTIFICATION {resets}; findings {len(self.findings)}"]
        for f in self.findings[:20]:
            lines.append(f"  finding #{f.index} {f.kind} after {f.message_kind}: {f.detail}; sent {f.message[:400]}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"target": self.target, "seed": self.seed, "messages": self.messages, "sent": dict(self.sent),
                "resets": dict(self.resets), "opens_accepted": self.opens_accepted, "sessions": self.sessions,
                "seconds": round(self.seconds, 1), "findings": [f.__dict__ for f in self.findings]}


class Endpoint(Protocol):
    async def session(self, caps: wire.Capabilities, open_message: bytes | None = None) -> RawSession: ...


@dataclass
class Dialer:
    """A target that listens (the route reflector): we dial it from `local`."""

    host: str
    port: int
    local: str

    async def session(self, caps: wire.Capabilities, open_message: bytes | None = None) -> RawSession:
        return await RawSession.connect(self.host, self.port, self.local, caps, open_message)


class Acceptor:
    """A target that dials its route reflectors (an agent, the gateway): we listen where it dials."""

    def __init__(self, address: str, caps: wire.Capabilities, port: int = 179, wait: float = 90.0,
                 only: frozenset[str] | None = None) -> None:
        """`only`: the targets' addresses; a connection from any other is closed at once."""
        self.address, self.caps, self.port, self.wait, self.only = address, caps, port, wait, only
        self._queue: asyncio.Queue[RawSession] = asyncio.Queue()
        self._server: asyncio.Server | None = None

    async def start(self) -> Acceptor:
        def accepted() -> RawSession:
            session = RawSession(self.caps)
            self._queue.put_nowait(session)
            return session

        self._server = await asyncio.get_running_loop().create_server(accepted, self.address, self.port)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        while not self._queue.empty():
            await self._queue.get_nowait().close()

    async def session(self, caps: wire.Capabilities, open_message: bytes | None = None) -> RawSession:
        # The target retries with a backoff (up to its connect-retry maximum) after each reset; a
        # connection it already closed again is skipped.
        while True:
            session = await asyncio.wait_for(self._queue.get(), self.wait)
            if self.only is not None and await session.peer() not in self.only:
                await session.close()
                continue
            await session.start(open_message)
            if not session.closed:
                return session


Health = Callable[[], Awaitable[str | None]]


def session_health(session: RawSession, reflected: bool = False) -> Health:
    """A health check on a well-behaved session the target holds beside the fuzzed one: it must never be
    reset; with `reflected`, every UPDATE it receives (what a reflector passes on from the fuzzed
    session) must decode without any RFC 7606 error."""
    seen = 0

    async def health() -> str | None:
        nonlocal seen
        if session.closed:
            return f"the well-behaved session was closed ({session.notification or 'without a NOTIFICATION'})"
        new, seen = session.received[seen:], len(session.received)
        if reflected and session.negotiated is not None:
            for kind, body in new:
                errors = wire.decode_update(session.negotiated, body).errors if kind == MessageType.UPDATE else []
                if errors:
                    return f"it received an UPDATE that decodes with errors {errors}: {body.hex()}"
        return None

    return health


class Campaign:
    def __init__(self, target: str, endpoint: Endpoint, caps: wire.Capabilities, seed: int, *,
                 health: Health | None = None, health_every: int = 50, open_share: float = 0.05,
                 mutation_rate: float = 0.75, log: Callable[[str], None] = lambda line: None) -> None:
        self.endpoint = endpoint
        self.caps = caps
        self.rng = random.Random(seed)
        self.generator = Generator(self.rng, caps, mutation_rate)
        self.health = health
        self.health_every = health_every
        self.open_share = open_share
        self.log = log
        self.report = Report(target, seed)
        self._session: RawSession | None = None
        self._last: tuple[int, Fuzzed] | None = None  # what the current session last received from us
        self.sync_family = Family.L2VPN_EVPN

    async def run(self, messages: int, seconds: float) -> Report:
        """Send up to `messages` fuzzed messages, for at most `seconds`; the report says what happened."""
        started = time.monotonic()
        deadline = started + seconds
        index = 0
        try:
            while index < messages and time.monotonic() < deadline:
                index += 1
                if await self._step(index) is False:
                    break
                if self.health is not None and index % self.health_every == 0:
                    await self._check_health(index)
            if self.health is not None:
                await self._check_health(index)
        finally:
            if self._session is not None:
                await self._session.close()
            self.report.seconds = time.monotonic() - started
        return self.report

    async def _check_health(self, index: int) -> None:
        assert self.health is not None
        problem = await self.health()
        if problem:
            self._find("other-session", index, None, problem)

    def _find(self, kind: str, index: int, fuzzed: Fuzzed | None, detail: str) -> None:
        finding = Finding(kind, fuzzed.kind if fuzzed else "-", fuzzed.data.hex() if fuzzed else "", detail, index)
        self.report.findings.append(finding)
        self.log(f"finding #{index} {kind}: {detail}")

    async def _step(self, index: int) -> bool:
        rng = self.rng
        if self._session is None or self._session.closed:
            if self._session is not None:
                self._ended(self._session)
            if rng.random() < self.open_share:
                await self._fuzz_open(index, self.generator.open())
                return True
            try:
                self._session = await self.endpoint.session(self.caps)
            except (OSError, TimeoutError, SessionClosed, wire.OpenError) as err:
                self._find("target-down", index, None, f"no session with the target: {err!r}")
                return False
            self.report.sessions += 1
            self._last = None
            if not self._session.table.get(self.sync_family):
                await self._session.close()
                raise ValueError(f"the target sent no {self.sync_family.name} route: the fuzzer needs one to sync on")
        session = self._session
        assert session.negotiated is not None
        fuzzed = self.generator.established(session.negotiated)
        self.report.sent[fuzzed.kind] += 1
        self._last = (index, fuzzed)
        mark = len(session.received)
        session.send(fuzzed.data)
        if fuzzed.closes:
            # RFC 4271 section 6: after a NOTIFICATION the target closes, without answering.
            try:
                await session.wait_closed(SYNC_TIMEOUT)
            except TimeoutError:
                self._find("no-answer", index, fuzzed, "the target kept the session after our NOTIFICATION")
            self._ended(session, expect_silence=True)
            return True
        # The answer to our ROUTE-REFRESH is the table of the handshake again: every route of the family
        # (once more when the fuzzed message was itself a valid ROUTE-REFRESH for it: the first answer
        # must not be taken for the second, so the keys are counted).
        family = self.sync_family
        times = 1
        if fuzzed.kind == "route-refresh" and wire.decode_route_refresh(fuzzed.data[wire.HEADER_LENGTH:]) is family:
            times = 2
        session.send(wire.encode_route_refresh(family))
        seen: Counter[RouteKey] = Counter()

        def missing() -> set[RouteKey]:
            return {key for key in session.table[family] if seen[key] < times}

        def answered(kind: int, body: bytes) -> bool:
            if kind == MessageType.UPDATE and update_family(session.negotiated, body) is family:
                seen.update(announced(session.negotiated, body))
            return not missing()

        try:
            await session.wait_for(answered, SYNC_TIMEOUT, mark)
        except SessionClosed:
            self._ended(session)
        except TimeoutError:
            got = ", ".join(_seen(session.negotiated, kind, body) for kind, body in session.received[mark:])
            absent = ", ".join(sorted(map(str, missing())))
            self._find("no-answer", index, fuzzed, f"no answer to a ROUTE-REFRESH within {SYNC_TIMEOUT:.0f} s "
                       f"(routes of the initial table not sent again: {absent}; received since: "
                       f"{got or 'nothing'})")
            await session.close()
            self._session = None
        return True

    def _ended(self, session: RawSession, expect_silence: bool = False) -> None:
        """Account for a session the target closed, against the last message we sent on it."""
        if self._session is session:
            self._session = None
        if self._last is None:
            return
        index, fuzzed = self._last
        self._last = None
        if session.garbage:
            self._find("not-bgp", index, fuzzed, session.garbage)
        note = session.notification
        if note is None:
            if not expect_silence:
                self._find("closed-without-notification", index, fuzzed, "the target dropped the connection")
            return
        self.report.resets[f"{note.code}/{note.subcode}"] += 1
        allowed = fuzzed.allowed | {CEASE}
        if note.code not in allowed:
            self._find("unexpected-code", index, fuzzed,
                       f"NOTIFICATION {note.code}/{note.subcode} data {note.data.hex() or '-'}, "
                       f"RFC 4271 allows {sorted(allowed)}")

    async def _fuzz_open(self, index: int, fuzzed: Fuzzed) -> None:
        self.report.sent[fuzzed.kind] += 1
        try:
            session = await self.endpoint.session(self.caps, fuzzed.data)
        except (OSError, TimeoutError) as err:
            self._find("target-down", index, fuzzed, f"no connection to the target: {err!r}")
            return
        self._last = (index, fuzzed)
        try:
            await session.wait_for(lambda kind, _: kind == MessageType.KEEPALIVE, OPEN_TIMEOUT)
            self.report.opens_accepted += 1  # our OPEN was still acceptable
            self._last = None
        except SessionClosed:
            self._ended(session)
        except TimeoutError:
            self._find("no-answer", index, fuzzed, f"OPEN neither accepted nor refused in {OPEN_TIMEOUT:.0f} s")
        await session.close()
        self._last = None


def _seen(negotiated: wire.Negotiated | None, kind: int, body: bytes) -> str:
    """A received message as a finding names it: its type, and an UPDATE's routes."""
    name = MessageType(kind).name if kind in MessageType._value2member_map_ else str(kind)
    if kind != MessageType.UPDATE or negotiated is None:
        return name
    result = wire.decode_update(negotiated, body)
    added = ", ".join(str(route.key) for route in result.announced)
    return f"{name} +[{added}] -[{', '.join(map(str, result.withdrawn))}]"
