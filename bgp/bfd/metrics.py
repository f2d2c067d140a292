"""The BFD sessions of a daemon as Prometheus metrics, read at scrape time (the reflector's, the agent's
and the gateway's `/metrics`): a session removed is a series gone, nothing to clean up."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nvfabric.bgp.bfd import BfdState, BfdStatus


class BfdCollector(Collector):
    """`nvfabric_bfd_session_up{peer}` (1 Up, 0 otherwise) and `nvfabric_bfd_session_downs_total{peer}`
    (transitions from Up to Down since the session was created)."""

    def __init__(self, statuses: Callable[[], list[BfdStatus]]) -> None:
        self.statuses = statuses

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        up = GaugeMetricFamily("nvfabric_bfd_session_up", "BFD session Up (1) or not (0)", labels=["peer"])
        downs = CounterMetricFamily("nvfabric_bfd_session_downs", "BFD session transitions from Up to Down",
                                    labels=["peer"])
        for status in self.statuses():
            up.add_metric([status.peer], 1 if status.state is BfdState.UP else 0)
            downs.add_metric([status.peer], status.downs)
        yield up
        yield downs
