"""Sans-IO: when may what the reflectors told us be trusted? The End-of-RIB / headless hold of the host
agent and of the gateway, one state machine for both.

No sockets, no asyncio, no clock: the owner feeds the reflector sessions' news (`on_session`) and the time
(`on_timer`, at `next_timer()`) in, and reads the answers:

- `synced`: the table is complete. At start it is not, until End-of-RIB (RFC 4724) or `timeout` after the
  first chance to hear it; while it is not, removals of learned state are held (the agent) and a standby
  gateway does not judge whether another gateway is active.
- `headless`: no reflector session is established.
- `recovering(now)`: back from headless. The reflectors may have restarted with empty tables, and a
  restarted reflector answers End-of-RIB before the other hosts are back and have re-announced
  (docs/rr.md): its End-of-RIB does not end the hold, only `timeout` from the first session back does.

`Policy.headless_holds` True (the agent, and the gateway: gateway/role.py) holds while headless and counts
the start deadline from the first session: with no reflector the agent keeps forwarding as it is and
removes nothing, and a gateway judges nothing (it would take over because it sees no other gateway).
False keeps the synced state while headless and counts the start deadline from the start; it holds when a
session returns. The agent wants End-of-RIB from every session, the gateway from one (`every_session`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType


ESTABLISHED = "established"


@dataclass(frozen=True)
class Session:
    state: str = "connecting"  # | ESTABLISHED | "down": bgp.speaker.PeerStatus's words
    end_of_rib: bool = False
    since: float | None = None  # the `now` of the last change of state


@dataclass(frozen=True)
class Policy:
    timeout: float  # seconds End-of-RIB is waited for (from the start, the first session or a return)
    every_session: bool = True  # End-of-RIB from every established session (agent), or from one (gateway)
    headless_holds: bool = True  # see the module docstring


@dataclass(frozen=True)
class Hold:
    policy: Policy
    sessions: Mapping[str, Session] = field(default_factory=lambda: MappingProxyType({}))
    synced: bool = False
    deadline: float = 0.0  # End-of-RIB is not waited for after this (time.monotonic())
    after_headless: bool = False  # End-of-RIB does not end the hold, only the deadline does
    ever_up: bool = False

    @classmethod
    def start(cls, policy: Policy, peers: Iterable[str], now: float) -> Hold:
        return cls(policy, MappingProxyType({p: Session() for p in peers}), deadline=now + policy.timeout)

    @property
    def headless(self) -> bool:
        return not any(s.state == ESTABLISHED for s in self.sessions.values())

    @property
    def holding(self) -> bool:
        """Learned state must not be removed (the agent's removals and GRE filter)."""
        return not self.synced or (self.policy.headless_holds and self.headless)

    def recovering(self, now: float) -> bool:
        return self.after_headless and now < self.deadline

    def next_timer(self) -> float | None:
        return None if self.synced else self.deadline

    def on_timer(self, now: float) -> Hold:
        """End-of-RIB did not come (or, back from headless, cannot be trusted) by the deadline: stop holding
        (the agent not while headless: there is nothing to trust yet)."""
        if self.synced or now < self.deadline or (self.policy.headless_holds and self.headless):
            return self
        return replace(self, synced=True, after_headless=False)

    def on_session(self, peer: str, state: str, now: float) -> Hold:
        """A reflector session's news: "established", "down" or "end-of-rib" (bgp.speaker.PeerStatus)."""
        hold = self.on_timer(now)
        sessions = dict(hold.sessions)
        session = sessions.get(peer, Session())
        if state == ESTABLISHED:
            if hold.headless:
                hold = hold._returned(now)
            session = Session(ESTABLISHED, False, now)
            hold = replace(hold, ever_up=True)
        elif state == "down":
            session = Session("down", False, now)
        elif state == "end-of-rib":
            session = replace(session, end_of_rib=True)
        sessions[peer] = session
        hold = replace(hold, sessions=MappingProxyType(sessions))
        if state == "down" and hold.headless and self.policy.headless_holds:
            hold = replace(hold, synced=False, after_headless=True)  # after the reflectors return, hold again
        up = [s.end_of_rib for s in hold.sessions.values() if s.state == ESTABLISHED]
        complete = all(up) if self.policy.every_session else any(up)
        if up and complete and not hold.after_headless:
            hold = replace(hold, synced=True)
        return hold

    def _returned(self, now: float) -> Hold:
        """The first session after none was up: the deadline counts from now (for the gateway only after it
        had one: its start deadline counts from its start)."""
        if self.policy.headless_holds:
            return replace(self, deadline=max(self.deadline, now + self.policy.timeout))
        if self.ever_up:
            return replace(self, synced=False, after_headless=True, deadline=now + self.policy.timeout)
        return self
