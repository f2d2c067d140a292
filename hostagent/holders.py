"""Virtual addresses that move between VMs (vnet.model.VirtualAddress), pure: events in, new state out.

Per (routing domain, address), what this host knows: the local port that holds it (None: not held here)
and a sequence, the MAC Mobility sequence (RFC 7432 section 7.7) of the type-2 route that announces it.
- claim: an allowed, active local port announced the address (gratuitous ARP, ARP reply, unsolicited NA:
  hostagent/guest/vip.py). It becomes the holder with sequence max(the highest sequence any host announces
  for the address, ours) + 1, so every host prefers the new location, as after a VM move (section 15.1).
  A claim by the port that already holds it changes nothing: keepalived repeats its gratuitous ARPs, and a
  repeat must not outbid the fabric again.
- remote: another host announces the address with a higher sequence, or the same from a lower PA (the
  tie-break of vnet/learn.py): it holds it now; we stop holding and remember the sequence.
- prune: a holder that is no longer allowed (catalog changed), gone, or whose VM moved away (MAC mobility)
  stops holding; an address no longer declared is forgotten.
- duplicate detection, as for MACs (hostagent/mobility.py, FRR's defaults): an address that moved to or from
  here 5 times within 180 s is frozen for 180 s: local claims are refused (FROZEN), so two VMs that both
  announce it (a VRRP split brain, or a VM repeating gratuitous ARPs against a master elsewhere) do not
  move it back and forth for ever; a takeover by another host is still followed (never two holders).
The sequence never goes past SEQ_MAX (as hostagent/mobility.py): at SEQ_MAX the tie-break decides, once.
Which port may claim is judged here too (`judge`), so the agent only applies the verdict.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from nvfabric.hostagent.mobility import SEQ_MAX, moved
from nvfabric.vnet.catalog import Catalog
from nvfabric.vnet.model import Address

HolderKey = tuple[str, Address]  # (routing domain, virtual address)

# why a claim changes nothing (status and metrics count them)
UNKNOWN_PORT = "unknown_port"  # no local port by that name
NOT_VIRTUAL = "not_virtual"  # the address is not a virtual address of the port's routing domain
NOT_ALLOWED = "not_allowed"  # the port is not among those that may hold it
OTHER_SUBNET = "other_subnet"  # the port is listed but not in the virtual subnet of the address
INACTIVE = "inactive"  # the port's VM moved to another host (MAC mobility): it holds nothing here
FROZEN = "frozen"  # the address moved too often lately (duplicate detection)
REFUSALS = (UNKNOWN_PORT, NOT_VIRTUAL, NOT_ALLOWED, OTHER_SUBNET, INACTIVE, FROZEN)


@dataclass(frozen=True)
class Holding:
    port: str | None = None  # the local port holding the address; None: not held here
    seq: int = 0  # announced while holding; the highest known otherwise
    moves: tuple[float, ...] = ()  # times of moves to or from here within the window (not persisted)
    frozen_until: float | None = None

    def frozen(self, now: float) -> bool:
        return self.frozen_until is not None and now < self.frozen_until


def judge(catalog: Catalog, inactive: Collection[tuple[int, str]], port_name: str,
          address: Address) -> tuple[str | None, str | None]:
    """(the routing domain, None) when `port_name` may hold `address` now; (domain or None, a REFUSALS reason)
    when not."""
    port = catalog.ports.get(port_name)
    found = catalog.subnet(port.vsid) if port is not None else None
    if port is None or found is None:
        return None, UNKNOWN_PORT
    domain, subnet = found
    virtual = domain.virtual_address(address)
    if virtual is None:
        return domain.name, NOT_VIRTUAL
    if port_name not in virtual.ports:
        return domain.name, NOT_ALLOWED
    if subnet.prefix_of(address) is None:
        return domain.name, OTHER_SUBNET
    if (port.vsid, port.mac) in inactive:
        return domain.name, INACTIVE
    return domain.name, None


@dataclass(frozen=True)
class Holders:
    held: Mapping[HolderKey, Holding] = field(default_factory=lambda: MappingProxyType({}))

    def _with(self, key: HolderKey, state: Holding | None) -> Holders:
        held = dict(self.held)
        if state is None:
            held.pop(key, None)
        else:
            held[key] = state
        return Holders(MappingProxyType(held))

    def holding(self) -> dict[HolderKey, tuple[str, int]]:
        """The addresses held here: key -> (holder port, sequence)."""
        return {k: (s.port, s.seq) for k, s in self.held.items() if s.port is not None}

    def frozen(self, key: HolderKey, now: float) -> bool:
        state = self.held.get(key)
        return state is not None and state.frozen(now)

    def claim(self, key: HolderKey, port: str, remote_seq: int | None, now: float) -> Holders:
        """`port` (judged allowed) announced the address; `remote_seq`: the highest sequence another host
        announces for it (None: nobody). Nothing changes while the address is frozen."""
        state = self.held.get(key, Holding())
        if state.port == port or state.frozen(now):
            return self  # a repeat by the holder: not a move
        seq = min(max(state.seq, remote_seq if remote_seq is not None else 0) + 1, SEQ_MAX)
        # (another local port taking over is a move too: only a first claim is not)
        taken = replace(state, port=port, seq=seq)
        return self._with(key, moved(taken, now) if key in self.held else taken)

    def remote(self, key: HolderKey, remote_seq: int, remote_wins_tie: bool, now: float) -> Holders:
        """Another host announces the address; `remote_wins_tie`: its PA is lower than ours."""
        state = self.held.get(key)
        if state is None or state.port is None:
            return self
        if remote_seq > state.seq or (remote_seq == state.seq and remote_wins_tie):
            return self._with(key, moved(replace(state, port=None, seq=min(max(state.seq, remote_seq), SEQ_MAX)),
                                         now))
        return self

    def prune(self, catalog: Catalog, inactive: Collection[tuple[int, str]]) -> Holders:
        """Holders that may no longer hold (judge) stop; addresses no longer declared are forgotten."""
        held = dict(self.held)
        for (domain, address), state in self.held.items():
            declared = catalog.routing_domains.get(domain)
            if declared is None or declared.virtual_address(address) is None:
                del held[(domain, address)]
            elif state.port is not None and judge(catalog, inactive, state.port, address) != (domain, None):
                held[(domain, address)] = replace(state, port=None)
        return self if held == dict(self.held) else Holders(MappingProxyType(held))
