"""Bidirectional Forwarding Detection (RFC 5880 asynchronous mode, RFC 5881 single hop over IPv4 and IPv6)
for the BGP sessions of every daemon: the gateway's (reflectors, upstream), the reflector's and the agent's.

Shaped like the BGP layer: a pure, sans-IO session machine (`machine.py`: packets and the current time in,
packets to send, state changes and the next timer out; `packet.py`: the control packet's codec) and one
thin asyncio adapter (`endpoint.py`: the UDP sockets, TTL 255 both ways, demultiplexing, timers). The
speaker (bgp/speaker.py) asks for a session per neighbour configured with `bfd` and tears the BGP session
down at once when its BFD session goes from Up to Down (RFC 5882 section 4.3; NOTIFICATION Cease
"BFD Down", RFC 9384).

The values below are the contract between those parts and the daemons (config, status, metrics).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BfdState(enum.Enum):
    """RFC 5880 section 4.1 State field (the numeric values are the wire's)."""

    ADMIN_DOWN = 0
    DOWN = 1
    INIT = 2
    UP = 3

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


class Diagnostic(enum.IntEnum):
    """RFC 5880 section 4.1 Diag field."""

    NONE = 0
    CONTROL_DETECTION_TIME_EXPIRED = 1
    ECHO_FUNCTION_FAILED = 2
    NEIGHBOR_SIGNALED_SESSION_DOWN = 3
    FORWARDING_PLANE_RESET = 4
    PATH_DOWN = 5
    CONCATENATED_PATH_DOWN = 6
    ADMINISTRATIVELY_DOWN = 7
    REVERSE_CONCATENATED_PATH_DOWN = 8


@dataclass(frozen=True)
class BfdAuth:
    """RFC 5880 section 6.7: `type` "simple" (6.7.2, password) or "keyed-sha1" / "meticulous-keyed-sha1"
    (6.7.4); `key_id` 0..255; `password` 1..16 bytes (simple) or 1..20 bytes (SHA1)."""

    type: str
    key_id: int
    password: str


@dataclass(frozen=True)
class BfdConfig:
    """One neighbour's BFD parameters, as configured (`bfd:` on a peer; FRR's names and units: ms).

    `transmit_interval` is the Desired Min TX Interval, `receive_interval` the Required Min RX Interval,
    `multiplier` the Detect Mult: with 300/300/3 a silent neighbour is declared down after 900 ms.
    `passive`: send nothing until the neighbour has sent (RFC 5880 6.1), for the listening side."""

    transmit_interval: int = 300  # ms
    receive_interval: int = 300  # ms
    multiplier: int = 3
    passive: bool = False
    auth: BfdAuth | None = None


@dataclass(frozen=True)
class BfdStatus:
    """One BFD session as the daemons report it (status documents, `/metrics`)."""

    peer: str
    local_address: str | None
    state: BfdState
    remote_state: BfdState
    local_discriminator: int
    remote_discriminator: int
    diagnostic: Diagnostic  # ours: why it last went down
    remote_diagnostic: Diagnostic
    transmit_interval: float  # seconds: the interval in use now
    detect_time: float  # seconds: how long a silence takes to bring the session down
    up_since: float | None  # wall clock (time.time()) of the last transition to Up; None when not Up
    transitions: int  # state changes since the session was created (flaps = transitions to Down)
    downs: int  # transitions from Up to Down
    packets_in: int
    packets_out: int
    dropped: int  # received and refused (TTL, length, version, authentication, unknown discriminator)

    def as_dict(self) -> dict[str, object]:
        return {"peer": self.peer, "local_address": self.local_address, "state": self.state.label,
                "remote_state": self.remote_state.label, "local_discriminator": self.local_discriminator,
                "remote_discriminator": self.remote_discriminator, "diagnostic": self.diagnostic.name.lower(),
                "remote_diagnostic": self.remote_diagnostic.name.lower(),
                "transmit_interval_ms": round(self.transmit_interval * 1000, 1),
                "detect_time_ms": round(self.detect_time * 1000, 1), "up_since": self.up_since,
                "transitions": self.transitions, "downs": self.downs, "packets_in": self.packets_in,
                "packets_out": self.packets_out, "dropped": self.dropped}
