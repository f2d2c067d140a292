"""The agent's reload (SIGHUP): what a new agent.yaml changes, decided without touching anything.

The file's routing domains are applied as the difference between the file the agent runs with and the new
one: a domain added or changed there is put, one removed there is deleted, one the file did not change is
left as it is (the API may have changed it since: the API's version stands). `resync_interval` is taken
as is. Every other field is read once at start (sessions, identity, state, namespace, API): a change of
one refuses the whole reload, naming the field, and the agent keeps running as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

from nvfabric.bgp.config import ConfigError
from nvfabric.hostagent.config import AgentConfig
from nvfabric.service.reload import RESTART, needs_restart
from nvfabric.vnet.model import RoutingDomain

RUNTIME = ("routing_domains", "resync_interval")


@dataclass(frozen=True)
class Reconfiguration:
    """A reload the running agent can take: the new configuration, the routing domains to put (added or
    changed in the file) and to delete (removed from it)."""

    config: AgentConfig
    put: tuple[RoutingDomain, ...] = ()
    delete: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        if not (self.put or self.delete):
            return "no routing domain changed"
        parts = [f"{verb} {', '.join(names)}" for verb, names in
                 (("put", [d.name for d in self.put]), ("deleted", list(self.delete))) if names]
        return "routing domains " + "; ".join(parts)


def plan(old: AgentConfig, new: AgentConfig) -> Reconfiguration:
    """What going from `old` to `new` means for a running agent; ConfigError naming the first field that
    needs a restart."""
    for name in needs_restart(old, new, RUNTIME):
        raise ConfigError(name, RESTART)
    before = {d.name: d for d in old.routing_domains}
    after = {d.name: d for d in new.routing_domains}
    put = tuple(d for name, d in after.items() if before.get(name) != d)
    delete = tuple(name for name in before if name not in after)
    return Reconfiguration(new, put, delete)
