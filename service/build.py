"""What every daemon's `/metrics` says about the process itself, beside its own families:

    nvfabric_build_info{version,python} 1     the installed nvfabric and the Python running it
    process_*                                 prometheus_client's process collector (CPU, memory, open
                                              files, process_start_time_seconds), read from /proc

The version is `nvfabric.service.version()`, the text `--version` prints: a dashboard and the operator's
terminal agree.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from nvfabric.service import version


# A counter's `_created` twin (a gauge per series, the time it was first seen) doubles the series for what
# process_start_time_seconds already says: every counter here starts with its daemon.
disable_created_metrics()


class BuildInfo(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        info = GaugeMetricFamily("nvfabric_build_info", "the nvfabric version and the Python running it (always 1)",
                                 labels=["version", "python"])
        info.add_metric([version(), platform.python_version()], 1)
        yield info


def register_process(registry: CollectorRegistry) -> CollectorRegistry:
    """Adds nvfabric_build_info and the process metrics to a daemon's own registry (no process-wide default
    registry: several daemons share a process in the tests and the lab)."""
    registry.register(BuildInfo())
    ProcessCollector(registry=registry)
    return registry
