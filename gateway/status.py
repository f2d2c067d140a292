"""What the gateway reports about itself besides its tenants (`GET /v1/status`, `nvfabric gateway status`):
its role (gateway/role.py) and its BGP sessions, as values."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from nvfabric.bgp.metrics import SessionSample, samples
from nvfabric.bgp.speaker import PeerStatus, Speaker
from nvfabric.gateway.role import Role


@dataclass(frozen=True)
class RoleStatus:
    serving: bool  # this gateway announces the tenants' default routes into the fabric
    configured: str  # "active" | "standby": the preference, used only at a cold start
    reason: str  # why, as the role machine says it
    since: float  # wall clock (time.time()) of the last change of `serving` (or the start)
    changes: int  # changes of `serving` since the start
    upstream: str  # the public addresses upstream: "announce" | "depreferred" | "withdrawn"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SessionStatus:
    peer: str
    kind: str  # "reflector" | "upstream"
    state: str  # the BGP state: idle, connect, active, open_sent, open_confirm, established
    uptime: float | None  # seconds since established (None: not established)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SessionClock:
    """When each BGP session of a speaker was established (the speaker keeps no such time): a subscriber
    to its notices, called in its owner task."""

    def __init__(self, speaker: Speaker, kind: str, peers: Sequence[str]) -> None:
        self.speaker = speaker
        self.kind = kind
        self.peers = tuple(peers)
        self._up: dict[str, float] = {}
        speaker.subscribe(self._on_notices)

    def _on_notices(self, notices: Sequence[object]) -> None:
        for n in notices:
            if isinstance(n, PeerStatus):
                if n.state == "established":
                    self._up[n.peer] = time.monotonic()
                elif n.state == "down":
                    self._up.pop(n.peer, None)

    def samples(self) -> list[SessionSample]:
        """The sessions for /metrics (bgp/metrics.py): state, flaps, since when."""
        return samples((address, self.speaker.peers.get(address)) for address in self.peers)

    def sessions(self) -> list[SessionStatus]:
        now = time.monotonic()
        out = []
        for address in self.peers:
            peer = self.speaker.peers.get(address)
            state = peer.state.name.lower() if peer is not None else "idle"
            since = self._up.get(address) if state == "established" else None
            out.append(SessionStatus(address, self.kind, state, None if since is None else round(now - since, 1)))
        return out


def readiness(started: bool, role: Role | None, repairing: bool) -> tuple[str, ...]:
    """Why the gateway is not ready (GET /readyz; none: ready). Ready once its dataplane is programmed (the
    NAT table and, with NVGRE, every tenant's VRF side) and its role decided (gateway/role.py: judged once
    after End-of-RIB or HOLD_WAIT, `role` None without reflectors: nothing to decide), and not while the
    dataplane of a gateway that just became active is being read back and repaired. Serving or standing by
    are both ready: a standby does its job by waiting."""
    if not started:
        return ("starting: the dataplane is not programmed yet",)
    reasons = []
    if role is not None and not role.ever_judged:
        reasons.append(f"role not decided yet: {role.reason}")
    if repairing:
        reasons.append("became active: the dataplane is being read back and repaired")
    return tuple(reasons)
