"""MAC mobility (RFC 7432 section 15), pure: events in, new state out, time passed in.

Per local MAC (keyed by VSID and MAC, the EVPN broadcast domain):
- attach: a local port whose MAC is known remotely with sequence r announces r + 1 (section 15.1), so every
  host prefers the new location;
- a remote route for a local MAC with a higher sequence (or the same sequence from a lower PA, the RFC's
  tie-break) means the VM moved away: the port stays configured but is no longer announced nor routed here;
- duplicate detection (section 15.1, FRR's defaults): 5 moves within 180 s freeze the MAC where it is for
  180 s: no more sequence bumps and no more giving way, and the freeze is reported, instead of
  oscillating forever between two hosts that both claim it;
- a port that gave way comes back when the claim is withdrawn (no other host announces the MAC any more,
  with the table complete): the VM never moved, or moved back, and must not stay blackholed;
- the sequence is the 32-bit field of the MAC Mobility extended community (RFC 7432 section 7.7): it never
  goes past SEQ_MAX. A remote sequence at SEQ_MAX cannot be outbid: attaching announces SEQ_MAX too and the
  section 15.1 tie-break (the lower PA) decides, once, on every host alike; nothing bumps again, so two
  hosts never loop. Peers compare sequences as plain integers, so wrapping to 0 would lose everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from types import MappingProxyType
from typing import Protocol, TypeVar

from nvfabric.bgp.mac import Mac

SEQ_MAX = 0xFFFFFFFF
MAX_MOVES = 5
WINDOW = 180.0
FREEZE = 180.0

MacKey = tuple[int, Mac]  # (VSID, MAC)


@dataclass(frozen=True)
class MacState:
    seq: int = 0  # the sequence number we announce
    active: bool = True  # False: the MAC moved to another host; we do not announce or route it
    moves: tuple[float, ...] = ()  # times of moves within the window
    frozen_until: float | None = None

    def frozen(self, now: float) -> bool:
        return self.frozen_until is not None and now < self.frozen_until


@dataclass(frozen=True)
class Freeze:
    vsid: int
    mac: Mac
    moves: int
    until: float


@dataclass(frozen=True)
class Mobility:
    macs: Mapping[MacKey, MacState] = field(default_factory=lambda: MappingProxyType({}))
    # the MACs that moved away, kept up to date by each change (asked on every change: never rebuilt from
    # every MAC); derived from `macs` when not given
    _inactive: frozenset[MacKey] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._inactive is None:
            object.__setattr__(self, "_inactive", frozenset(k for k, s in self.macs.items() if not s.active))

    def _with(self, key: MacKey, state: MacState | None) -> Mobility:
        # (the underlying dict's own copy: a proxy copied item by item is several times slower)
        macs = self.macs.copy() if isinstance(self.macs, dict | MappingProxyType) else dict(self.macs)
        if state is None:
            macs.pop(key, None)
        else:
            macs[key] = state
        inactive = self.inactive()
        inactive = inactive - {key} if state is None or state.active else inactive | {key}
        return Mobility(MappingProxyType(macs), inactive)

    def inactive(self) -> frozenset[MacKey]:
        assert self._inactive is not None
        return self._inactive

    def seqs(self) -> Mapping[MacKey, int]:
        """The sequence of every MAC, read through (a save per change must not copy every MAC's); the same
        view while this value lives, so that an unchanged mobility is seen unchanged at once."""
        return self._seqs

    @cached_property
    def _seqs(self) -> Seqs:
        return Seqs(self.macs)

    def freezes(self, now: float) -> list[Freeze]:
        return [Freeze(k[0], k[1], len(s.moves), s.frozen_until) for k, s in sorted(self.macs.items())
                if s.frozen(now) and s.frozen_until is not None]

    def attach(self, key: MacKey, remote_seq: int | None, now: float) -> Mobility:
        """A local port with this MAC is (re)attached; `remote_seq` is the highest sequence another host
        announces for it (None: nobody else has it)."""
        state = self.macs.get(key, MacState())
        if state.frozen(now):
            return self
        if remote_seq is None:
            return self._with(key, replace(state, active=True))
        if state.active and state.seq > remote_seq:
            return self  # we already won: a stale remote route, not a move
        return self._with(key, moved(replace(state, seq=min(remote_seq + 1, SEQ_MAX), active=True), now))

    def remote(self, key: MacKey, remote_seq: int, remote_wins_tie: bool, now: float) -> Mobility:
        """Another host announces a local MAC; `remote_wins_tie`: its PA is lower than ours (RFC 7432 15.1)."""
        state = self.macs.get(key)
        if state is None or not state.active or state.frozen(now):
            return self
        if remote_seq > state.seq or (remote_seq == state.seq and remote_wins_tie):
            seq = min(max(state.seq, remote_seq), SEQ_MAX)
            return self._with(key, moved(replace(state, active=False, seq=seq), now))
        return self

    def withdrawn(self, key: MacKey) -> Mobility:
        """No other host announces this local MAC any more (and the table is complete): a port that gave way
        is routed and announced again, with the sequence it last saw (it outbids nobody; a claim that comes
        back is judged as before). Not a move: duplicate detection does not count it."""
        state = self.macs.get(key)
        if state is None or state.active:
            return self
        return self._with(key, replace(state, active=True))

    def detach(self, key: MacKey) -> Mobility:
        return self._with(key, None)


class Seqs(Mapping[MacKey, int]):
    """A read-only view of the sequences of `macs`."""

    def __init__(self, macs: Mapping[MacKey, MacState]) -> None:
        self._macs = macs

    def __getitem__(self, key: MacKey) -> int:
        return self._macs[key].seq

    def __iter__(self) -> Iterator[MacKey]:
        return iter(self._macs)

    def __len__(self) -> int:
        return len(self._macs)

    def __repr__(self) -> str:
        return f"Seqs({dict(self)!r})"


class Moving(Protocol):
    """What duplicate detection counts moves of: a MAC here, a virtual address in hostagent/holders.py."""

    @property
    def moves(self) -> tuple[float, ...]: ...

    @property
    def frozen_until(self) -> float | None: ...


S = TypeVar("S", bound=Moving)


def moved(state: S, now: float) -> S:
    """`state` after a move at `now`: frozen for FREEZE when it is the MAX_MOVES-th within WINDOW."""
    moves = tuple(t for t in state.moves if now - t < WINDOW) + (now,)
    if len(moves) >= MAX_MOVES:
        return replace(state, moves=moves, frozen_until=now + FREEZE)
    return replace(state, moves=moves)
