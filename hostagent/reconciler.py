"""Moved to vnet.reconcile (partitioned; shared by the host agent and the gateway).

This shim keeps the whole-state call `Reconciler(sock).reconcile(objects, hold)` of gateway/dataplane.py and
tests/kernel/test_gateway_x.py working (the whole state as one partition: the first call is a full pass, later
calls diff against the previous whole state) until they switch to vnet.reconcile; then it goes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vnet.kernel.objects import KernelObject
from vnet.reconcile import Outcome, inverse
from vnet.reconcile import Reconciler as _Partitioned

WHOLE = "whole"


class Reconciler(_Partitioned):
    async def reconcile(self, parts: Mapping[str, Iterable[KernelObject]] | Iterable[KernelObject],
                        hold: bool = False) -> Outcome:
        if not isinstance(parts, Mapping):
            parts = {WHOLE: parts}
        return await super().reconcile(parts, hold)


__all__ = ["Outcome", "Reconciler", "inverse"]
