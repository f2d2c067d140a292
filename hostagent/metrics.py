"""The agent's Prometheus metrics (`GET /metrics`), in a registry of its own (several agents share a process
in the tests and the lab)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nvfabric.bgp.client import Backlog
from nvfabric.service.build import register_process
from nvfabric.vnet.desired import Conflict
from nvfabric.vnet.policy import REASONS
from nvfabric.vnet.reconcile import Outcome


class AgentMetrics:
    def __init__(self, frozen_macs: Callable[[], int]) -> None:
        self.registry = register_process(CollectorRegistry())
        self._ports = Gauge("nvfabric_agent_ports", "local ports configured", registry=self.registry)
        self._records = Gauge("nvfabric_agent_lookup_records", "lookup records", ["kind"], registry=self.registry)
        self._ops = Counter("nvfabric_agent_kernel_ops", "kernel ops applied", ["action"], registry=self.registry)
        self._errors = Counter("nvfabric_agent_kernel_errors", "kernel ops refused", registry=self.registry)
        self._held = Gauge("nvfabric_agent_held_deletes", "learned-state deletes held", registry=self.registry)
        frozen = Gauge("nvfabric_agent_mobility_frozen_macs", "MACs frozen now (RFC 7432 15.1 duplicate detection)",
                       registry=self.registry)
        frozen.set_function(frozen_macs)
        self._conflicts = Gauge("nvfabric_route_conflicts", "routes left out now: their key is held by a stronger "
                                "source (kind: the loser's)", ["domain", "kind"], registry=self.registry)
        self._conflict_labels: set[tuple[str, str]] = set()
        self._refused = Gauge("nvfabric_agent_routes_refused", "learned routes the import policy refuses now",
                              ["reason"], registry=self.registry)
        for reason in REASONS:
            self._refused.labels(reason).set(0)
        self._port_drops = PortSecurityDrops()
        self.registry.register(self._port_drops)
        self._claims = Counter("nvfabric_agent_virtual_address_claims", "announcements of a virtual address by a "
                               "VM (outcome: accepted, repeated, failed, or why refused)", ["outcome"],
                               registry=self.registry)
        self._held_addresses = Gauge("nvfabric_agent_virtual_addresses_held", "virtual addresses a local port "
                                     "holds now", registry=self.registry)
        self.guest_frames = GuestFrames()
        self.registry.register(self.guest_frames)
        # a pass that follows BGP (learned routes -> kernel): how long it takes is how stale the kernel gets
        self._sync_seconds = Histogram("nvfabric_agent_sync_duration_seconds", "passes following BGP changes "
                                       "into the kernel, by duration", registry=self.registry,
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
        self._last_sync = Gauge("nvfabric_agent_last_sync_duration_seconds", "the last pass following BGP changes "
                                "into the kernel", registry=self.registry)

    def synced(self, seconds: float) -> None:
        self._sync_seconds.observe(seconds)
        self._last_sync.set(seconds)

    def claimed(self, outcome: str) -> None:
        self._claims.labels(outcome).inc()

    def held_addresses(self, n: int) -> None:
        self._held_addresses.set(n)

    def reconciled(self, outcome: Outcome) -> None:
        for action, n in outcome.counts.items():
            if n:
                self._ops.labels(action).inc(n)
        if outcome.errors:
            self._errors.inc(len(outcome.errors))
        self._held.set(outcome.held)

    def conflicts(self, conflicts: Iterable[Conflict]) -> None:
        counts: dict[tuple[str, str], int] = {}
        for c in conflicts:
            counts[(c.domain, c.loser)] = counts.get((c.domain, c.loser), 0) + 1
        for gone in self._conflict_labels - counts.keys():
            self._conflicts.labels(*gone).set(0)
        for labels, n in counts.items():
            self._conflicts.labels(*labels).set(n)
        self._conflict_labels |= counts.keys()

    def refused(self, counts: Mapping[str, int]) -> None:
        for reason in REASONS:
            self._refused.labels(reason).set(counts.get(reason, 0))

    def port_security(self, drops: Mapping[str, Mapping[str, int]]) -> None:
        """The kernel's per-port, per-reason drop counters (Agent.port_drops), as read now."""
        self._port_drops.drops = {port: dict(reasons) for port, reasons in drops.items()}

    def announced(self, ports: int, local: int, remote: int) -> None:
        """`local`, `remote`: the lookup records of each kind, counted by the owner (per change: not by a
        pass over every record)."""
        self._ports.set(ports)
        self._records.labels("local").set(local)
        self._records.labels("remote").set(remote)


class PortSecurityDrops(Collector):
    """`nvfabric_port_security_drops_total{port,reason}`: the kernel counts (nftables named counters), the
    agent only reports them; a port's counters restart from 0 when its table is rebuilt."""

    def __init__(self) -> None:
        self.drops: dict[str, dict[str, int]] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("nvfabric_port_security_drops", "packets port security dropped on a VM port",
                                     labels=["port", "reason"])
        for port, reasons in sorted(self.drops.items()):
            for reason, packets in sorted(reasons.items()):
                family.add_metric([port, reason], packets)
        yield family


class GuestFrames(Collector):
    """`nvfabric_agent_guest_frames_total{protocol,outcome}`: the frames VMs sent to their host's services
    (DHCP, RA, ARP...), by what became of them (hostagent/guest/responder.py OUTCOMES)."""

    def __init__(self) -> None:
        self.counters: Any = None  # the responder's Counters, read at each scrape

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("nvfabric_agent_guest_frames", "frames from VMs to the host's guest services",
                                     labels=["protocol", "outcome"])
        counts = self.counters.counts if self.counters is not None else {}
        for (protocol, outcome), n in sorted(counts.items()):
            family.add_metric([protocol, outcome], n)
        yield family


class BacklogCollector(Collector):
    """How far the agent is behind the reflectors (bgp/client.py Backlog), read at each scrape: changes
    queued (coalesced per key, so bounded by the table) and the age of the oldest; route changes received
    and applied (in the kernel); the age of the oldest change not applied yet, which grows while the agent
    does not keep up."""

    def __init__(self, read: Callable[[], Backlog | None]) -> None:
        self.read = read

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        b = self.read() or Backlog(0, 0.0, 0, 0, 0.0)
        yield GaugeMetricFamily("nvfabric_agent_bgp_pending_changes", "route changes (and session events) "
                                "received from the reflectors and not yet taken by the agent, one per key",
                                value=b.pending)
        yield GaugeMetricFamily("nvfabric_agent_bgp_pending_oldest_seconds", "how long the oldest of the pending "
                                "changes has waited", value=b.oldest_pending_s)
        yield CounterMetricFamily("nvfabric_agent_route_changes_received", "route changes taken from the "
                                  "reflectors' stream", value=b.delivered)
        yield CounterMetricFamily("nvfabric_agent_route_changes_applied", "route changes in effect (the pass that "
                                  "took them into the kernel finished)", value=b.applied)
        yield GaugeMetricFamily("nvfabric_agent_route_changes_unapplied_oldest_seconds", "how long the oldest "
                                "route change not in effect yet has waited (0: none)", value=b.oldest_unapplied_s)
