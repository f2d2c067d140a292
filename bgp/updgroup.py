"""Update groups: peers whose UPDATEs encode to the same bytes share one encoding (FRR's update groups).

The group key is the peer's `wire.Negotiated` encoding parameters plus the outbound policy key: a frozen
value, so hash, equality and repr come from one definition (FRR keeps its update-group key by hand in
three places).
An UPDATE is encoded once per group and the same bytes object is written to every member.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from nvfabric.bgp import wire
from nvfabric.bgp.routes import Family, Path, RouteKey


class Member(Protocol):
    def send(self, data: bytes) -> bool: ...


@dataclass
class Group:
    key: Hashable
    negotiated: wire.Negotiated
    members: list[Member] = field(default_factory=list)
    updates_encoded: int = 0
    messages_sent: int = 0


class UpdateGroups:
    def __init__(self) -> None:
        self.groups: dict[Hashable, Group] = {}
        self._of: dict[int, Group] = {}

    def join(self, member: Member, negotiated: wire.Negotiated, policy: Hashable = None) -> Group:
        self.leave(member)
        key = (encoding_key(negotiated), policy)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group(key, negotiated)
        group.members.append(member)
        self._of[id(member)] = group
        return group

    def leave(self, member: Member) -> None:
        group = self._of.pop(id(member), None)
        if group is None:
            return
        group.members.remove(member)
        if not group.members:
            del self.groups[group.key]

    def broadcast(self, announce: Sequence[Path], withdraw: Sequence[RouteKey], exclude: Member | None = None) -> None:
        """Encode once per group, send to each member of it (no per-route work per peer). `exclude` skips
        one member (a reflector not echoing a path to the peer it came from)."""
        for group in self.groups.values():
            if exclude is not None and group.members == [exclude]:
                continue
            messages = encode_for(group.negotiated, announce, withdraw)
            if not messages:
                continue
            data = b"".join(messages)
            group.updates_encoded += len(messages)
            for member in group.members:
                if member is not exclude and member.send(data):
                    group.messages_sent += len(messages)


def encoding_key(negotiated: wire.Negotiated) -> Hashable:
    """What `wire.encode_update` output depends on: families, AS number width, and for eBGP the peer AS."""
    peer_as = None if negotiated.ibgp else negotiated.remote.asn
    return (negotiated.families, negotiated.four_octet, negotiated.local.asn, peer_as)


def encode_for(negotiated: wire.Negotiated, announce: Sequence[Path], withdraw: Sequence[RouteKey]) -> list[bytes]:
    """Only the families the peer negotiated (RFC 4760 6: do not send what was not negotiated)."""
    families = negotiated.families
    ann = [p for p in announce if p.family in families]
    wd = [k for k in withdraw if k.family in families]
    if not ann and not wd:
        return []
    return wire.encode_update(negotiated, ann, wd)


def end_of_rib(negotiated: wire.Negotiated, families: Iterable[Family]) -> bytes:
    return b"".join(wire.encode_eor(f) for f in families)
