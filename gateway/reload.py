"""The gateway's reload (SIGHUP): what a new gateway.yaml changes, decided without touching anything.

Tenants are applied as the difference between the file the gateway runs with and the new one: a tenant
added or changed there is put, one removed there is deleted, each through the same path as the API's
PUT and DELETE (its VRF side and NAT in one transaction, its routes), so the tenants the file did not
change keep their forwarding, NAT rules and connections untouched. Every other field is read once at start
(sessions, identity, external side, replication, API): a change of one refuses the whole reload, naming the
field, and the gateway keeps running as it was.
"""

from __future__ import annotations

from nvfabric.bgp.config import ConfigError
from nvfabric.gateway.config import GatewayConfig
from nvfabric.gateway.tenants import Tenant
from nvfabric.service import reload

RUNTIME = ("tenants",)


# A reload the running gateway can take: the new configuration, the tenants to put (added or
# changed in the file, in its order) and to delete (removed from it).
Reconfiguration = reload.Reconfiguration[GatewayConfig, Tenant]


def plan(old: GatewayConfig, new: GatewayConfig) -> Reconfiguration:
    """What going from `old` to `new` means for a running gateway; ConfigError naming the first field that
    needs a restart."""
    for name in reload.needs_restart(old, new, RUNTIME):
        raise ConfigError(name, reload.RESTART)
    return reload.difference(new, old.tenants, new.tenants, ("tenant", "tenants"))
