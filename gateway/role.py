"""Which gateway serves (pure): the role of one gateway among those that carry the same tenants.

No sockets, no asyncio, no clock: the owner (gateway/evpn.py) feeds in the reflector sessions' news
(`on_session`: established, down, end-of-rib), the other gateways whose type-5 default route is in the
fabric (`on_routes`: their PAs, of routes the import policy accepts for our tenants) and the time
(`on_timer`, at `next_timer()`), and reads `serving` (announce the tenants' default routes into the fabric), `upstream`
(the public addresses: announced, announced depreferred, withdrawn) and `reason` (logs, status).

The fabric (the reflectors' table) is the one judge: two gateways that lose each other, over the sync link
or anything else, but still reach the reflectors see each other's default routes there, so what they
decide does not depend on talking to each other. The policy:

- **No judgement before the fabric's table is complete**: End-of-RIB from an established reflector
  session, or HOLD_WAIT after the first session (vnet/hold.py, with the agent's headless rule). A
  (re)starting gateway, active or standby, announces nothing before it has heard what the fabric holds;
  nor while it has no reflector session (it sees nothing), nor for HOLD_WAIT after it had none (restarted
  reflectors answer End-of-RIB with an empty table: docs/rr.md).
- **Non-preemptive**: a gateway that sees another gateway's default route does not announce, whatever its
  configured preference. The configured role (`standby`) only matters when nobody serves at a start: the
  configured-active gateway announces as soon as it has judged, a standby only after START_GRACE if still
  nobody serves (its start must not race the active's). So an old active that comes back finds the
  standby serving and stands by; operators move the role back by restarting the serving gateway.
- **Takeover**: the serving gateway's default routes leave the fabric (its sessions to the reflectors went
  down: BFD, hold timer, NOTIFICATION): a judged gateway announces at once.
- **Tie**: both serve (both judged at once, both standby at a cold start, a healed partition of the
  reflectors). Each sees the other's route: the one with the higher PA (the routes' next hop, compared as
  (family, address)) withdraws at once, the lower keeps serving. Both compute the same answer from what
  both see; no attribute is needed.
- **Isolation**: a serving gateway whose last reflector session goes down has lost the fabric: the
  reflectors dropped its routes and another gateway takes over, or the reflectors themselves are gone
  (both restarting) and the hosts keep forwarding to it (their headless hold). It cannot tell which, so it
  stops serving in the fabric (nothing of its own is re-announced when a session comes back: it judges
  again first, and then finds the other gateway serving: no steal) and keeps its public addresses
  upstream, depreferred (AS path prepended PREPEND times): the upstream prefers a gateway that took over,
  and still has this one while nobody else announces (inbound and return traffic keep flowing through a
  restart of both reflectors). If no session comes back within ISOLATION_GRACE, it withdraws them: a
  gateway cut off from the fabric does not attract traffic for long from an upstream that does not
  compare AS path lengths. When a session is back, the depreferred announcement stays until it has judged
  (HOLD_WAIT at most), then becomes a normal one (nobody else serves: it serves again, first, before any
  other gateway's START_GRACE) or is withdrawn (another serves).
- **No preempt option**: giving the role back costs a second interruption (and moves every NAT flow
  twice); the gateways are equals.

What makes the judges agree is that they read the same table: a gateway that reaches only reflectors
which do not have the other gateway's routes (reflectors that do not share the gateways' routes with each
other, cut from each other) would serve too. The hosts then see both default routes and choose; the tie
rule ends it as soon as both gateways see both routes again.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace

from nvfabric.vnet.hold import Hold, Policy
from nvfabric.vnet.model import Address

HOLD_WAIT = 15.0  # seconds End-of-RIB is waited for after the first session (and after one back from none)
START_GRACE = 3.0  # seconds a gateway that is not preferred waits, when nobody serves, for one that is
ISOLATION_GRACE = 30.0  # seconds an isolated gateway keeps its public addresses upstream (depreferred)
PREPEND = 3  # times our AS is prepended to the depreferred announcement (AS path 1 -> 1 + PREPEND)
# End-of-RIB from one reflector is enough; with no reflector session nothing is judged (see above)
HOLD = Policy(timeout=HOLD_WAIT, every_session=False, headless_holds=True)

ANNOUNCE = "announce"  # the public addresses upstream, as usual
DEPREFERRED = "depreferred"  # ... with the AS path prepended: only used when nobody else announces them
WITHDRAWN = "withdrawn"


def order(pa: Address) -> tuple[int, int]:
    """The tie-break's order of PAs: IPv4 before IPv6, then by value (both gateways sort alike)."""
    return (pa.version, int(pa))


@dataclass(frozen=True)
class Role:
    standby: bool  # the configured preference (`standby: true`): only used at a cold start
    pa: Address  # ours: the next hop of our default routes, for the tie-break
    hold: Hold
    others: frozenset[Address] = frozenset()  # the other gateways whose default route is in the fabric
    serving: bool = False
    upstream: str = WITHDRAWN
    reason: str = "starting: waiting for a reflector session"
    since: float = 0.0  # the `now` of the last change of `serving` (or the start)
    changes: int = 0  # changes of `serving` since the start
    fresh: bool = True  # not judged since the fabric's table became complete (start, back from headless)
    ever_judged: bool = False
    served_last: bool = False  # we were serving when we lost the reflectors: preferred when nobody serves
    grace_until: float | None = None  # START_GRACE running: serve then if still nobody does
    isolated_until: float | None = None  # isolated: the public addresses are withdrawn then

    @classmethod
    def start(cls, standby: bool, pa: object, reflectors: Iterable[str], now: float) -> Role:
        return cls(standby, ipaddress.ip_address(pa), Hold.start(HOLD, reflectors, now), since=now)

    @property
    def configured(self) -> str:
        return "standby" if self.standby else "active"

    # ------------------------------------------------------------------ inputs

    def on_session(self, peer: str, state: str, now: float) -> Role:
        """A reflector session's news: "established", "down" or "end-of-rib" (bgp.speaker.PeerStatus)."""
        return replace(self, hold=self.hold.on_session(peer, state, now))._decide(now)

    def on_routes(self, others: Iterable[object], now: float) -> Role:
        """The PAs of the other gateways whose default route is in the fabric now."""
        found = frozenset(ipaddress.ip_address(o) for o in others) - {self.pa}
        role = self if found == self.others else replace(self, others=found)
        return role._decide(now)

    def on_timer(self, now: float) -> Role:
        return replace(self, hold=self.hold.on_timer(now))._decide(now)

    def next_timer(self) -> float | None:
        # while headless the hold's deadline means nothing (it is counted again from the next session)
        hold, headless = self.hold.next_timer(), self.hold.headless
        times = [t for t in (None if headless else hold, self.grace_until, self.isolated_until if headless else None)
                 if t is not None]
        return min(times, default=None)

    # ------------------------------------------------------------------ the policy

    def _decide(self, now: float) -> Role:
        hold = self.hold
        if hold.headless:
            return self._headless(now)
        if not hold.synced:
            return self._unjudged()
        if self.serving:
            lower = sorted((o for o in self.others if order(o) < order(self.pa)), key=order)
            if lower:
                return self._change(now, False, WITHDRAWN, f"tie: gateway {lower[0]} serves too and has the "
                                    "lower PA: standing by")
            return self  # a gateway with a higher PA that announces too stands by as soon as it sees ours
        if self.others:
            first = min(self.others, key=order)
            role = replace(self, fresh=False, ever_judged=True, served_last=False, grace_until=None,
                           isolated_until=None)
            return role._change(now, False, WITHDRAWN, f"standing by: gateway {first} serves")
        # nobody serves
        if self.fresh and not self._preferred:
            if self.grace_until is None:
                return replace(self, grace_until=now + START_GRACE,
                               reason=f"nobody serves: serving after {START_GRACE:g} s unless a gateway does")
            if now < self.grace_until:
                return self
            reason = f"nobody served within {START_GRACE:g} s: serving"
        elif self.fresh:
            reason = ("nobody serves: serving again (we served until we lost the reflectors)" if self.ever_judged
                      else "nobody serves: serving (configured active)")
        else:
            reason = "took over: no other gateway's default route in the fabric"
        role = replace(self, fresh=False, ever_judged=True, served_last=False, grace_until=None, isolated_until=None)
        return role._change(now, True, ANNOUNCE, reason)

    @property
    def _preferred(self) -> bool:
        """Serves at once when nobody does after a start or a return: the configured-active gateway at its
        cold start; afterwards the one that served last."""
        return self.served_last if self.ever_judged else not self.standby

    def _headless(self, now: float) -> Role:
        if self.serving:
            until = now + ISOLATION_GRACE
            role = replace(self, fresh=True, grace_until=None, served_last=True, isolated_until=until)
            return role._change(now, False, DEPREFERRED, self._isolated_reason())
        role = replace(self, fresh=True, grace_until=None)
        if self.upstream == DEPREFERRED:
            if self.isolated_until is None:  # lost again before it could judge: the grace counts again
                role = replace(role, isolated_until=now + ISOLATION_GRACE)
            elif now >= self.isolated_until:
                return replace(role, isolated_until=None)._change(
                    now, False, WITHDRAWN, f"isolated: no reflector session for {ISOLATION_GRACE:g} s: public "
                    "addresses withdrawn")
            return role._same(reason=self._isolated_reason())
        return role._same(reason="no reflector session: not judging, announcing nothing")

    def _isolated_reason(self) -> str:
        return (f"isolated: no reflector session; public addresses announced depreferred (AS path +{PREPEND}) for "
                f"{ISOLATION_GRACE:g} s")

    def _unjudged(self) -> Role:
        """A session is up but the table is not complete yet (start, or back from none)."""
        what = (f"back from no reflector session: judging {HOLD_WAIT:g} s after the first one (a restarted "
                "reflector's table fills up after its End-of-RIB)" if self.hold.after_headless
                else "starting: waiting for End-of-RIB from a reflector")
        if self.upstream == DEPREFERRED:
            what += "; public addresses still announced depreferred"
        # the isolation deadline ends with the headless time: a returning session holds at most HOLD_WAIT
        return replace(self, fresh=True, grace_until=None, isolated_until=None)._same(reason=what)

    def _same(self, reason: str) -> Role:
        return self if reason == self.reason else replace(self, reason=reason)

    def _change(self, now: float, serving: bool, upstream: str, reason: str) -> Role:
        if serving == self.serving:
            return replace(self, upstream=upstream, reason=reason)
        return replace(self, serving=serving, upstream=upstream, reason=reason, since=now, changes=self.changes + 1)
