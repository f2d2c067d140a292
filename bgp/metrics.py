"""The BGP sessions of a daemon as Prometheus metrics, the same families on the reflector, the agent and the
gateway, read at scrape time from the speaker's peers: a peer forgotten (a dynamic neighbour that left, a
neighbour removed by a reload) is a series gone, nothing to clean up.

    nvfabric_bgp_session_state{peer,state}                      1 for the session's state, 0 for the others
    nvfabric_bgp_session_flaps_total{peer}                      Established sessions that went down
    nvfabric_bgp_session_established_timestamp_seconds{peer}    when the session came up (only while up)

Every state has its series (1 or 0), so that `nvfabric_bgp_session_state{state="established"} == 0` is an
alert without `absent()`. The start of the session is a timestamp, not an uptime, as Prometheus advises:
it does not change while the session stays up (`time() - ...` is the uptime).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nvfabric.bgp import fsm
from nvfabric.bgp.session import Peer

STATES = tuple(s.name.lower() for s in fsm.State)


@dataclass(frozen=True)
class SessionSample:
    """One BGP session as a scrape sees it."""

    peer: str  # the neighbour's address
    state: str  # one of STATES
    flaps: int  # times an Established session of this neighbour went down
    established_since: float | None  # wall clock; None when not Established

    @classmethod
    def of(cls, address: str, peer: Peer | None) -> SessionSample:
        """The sample of `peer`; a configured neighbour without a Peer yet (the daemon not started) is idle."""
        if peer is None:
            return cls(address, "idle", 0, None)
        up = peer.established is not None
        # a session counts as a flap once it has gone down: the one up now is not one (yet)
        return cls(address, peer.state.name.lower(), peer.establishments - (1 if up else 0),
                   peer.established_since if up else None)


def samples(peers: Iterable[tuple[str, Peer | None]]) -> list[SessionSample]:
    return [SessionSample.of(address, peer) for address, peer in peers]


class SessionCollector(Collector):
    def __init__(self, sessions: Callable[[], Iterable[SessionSample]]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = GaugeMetricFamily("nvfabric_bgp_session_state", "BGP session state: 1 for the state it is in, 0 "
                                  "for the others", labels=["peer", "state"])
        flaps = CounterMetricFamily("nvfabric_bgp_session_flaps", "Established BGP sessions of the neighbour that "
                                    "went down", labels=["peer"])
        since = GaugeMetricFamily("nvfabric_bgp_session_established_timestamp_seconds", "when the BGP session came "
                                  "up (Unix time; only while Established)", labels=["peer"])
        for s in sorted(self.sessions(), key=lambda s: s.peer):
            for name in STATES:
                state.add_metric([s.peer, name], 1 if name == s.state else 0)
            flaps.add_metric([s.peer], s.flaps)
            if s.established_since is not None:
                since.add_metric([s.peer], s.established_since)
        yield state
        yield flaps
        yield since
