"""The agent's reload (SIGHUP): what a new agent.yaml changes, decided without touching anything.

The file's routing domains are applied as the difference between the file the agent runs with and the new
one: a domain added or changed there is put, one removed there is deleted, one the file did not change is
left as it is (the API may have changed it since: the API's version stands). `resync_interval` and
`verify_interval` are taken as they are. Every other field is read once at start (sessions, identity,
state, namespace, API): a change of one refuses the whole reload, naming the field, and the agent keeps
running as it was.
"""

from __future__ import annotations

from nvfabric.bgp.config import ConfigError
from nvfabric.hostagent.config import AgentConfig
from nvfabric.service import reload
from nvfabric.vnet.model import RoutingDomain

RUNTIME = ("routing_domains", "resync_interval", "verify_interval")


# A reload the running agent can take: the new configuration, the routing domains to put (added or
# changed in the file, in its order) and to delete (removed from it).
Reconfiguration = reload.Reconfiguration[AgentConfig, RoutingDomain]


def plan(old: AgentConfig, new: AgentConfig) -> Reconfiguration:
    """What going from `old` to `new` means for a running agent; ConfigError naming the first field that
    needs a restart."""
    for name in reload.needs_restart(old, new, RUNTIME):
        raise ConfigError(name, reload.RESTART)
    return reload.difference(new, old.routing_domains, new.routing_domains, ("routing domain", "routing domains"))
