"""The BFD adapter's bookkeeping before it has sockets (the sockets are exercised against FRR in
tests/integration/test_bfd_frr.py)."""

from __future__ import annotations

import random

import pytest

from nvfabric.bgp.bfd import BfdConfig, BfdState, BfdStatus, Diagnostic
from nvfabric.bgp.bfd.endpoint import Bfd


def ignore(_: BfdStatus) -> None:
    pass


def test_sessions_before_start_are_down_and_sorted() -> None:
    bfd = Bfd(random.Random(3))
    bfd.add("192.0.2.2", BfdConfig(), ignore)
    bfd.add("2001:db8::2", BfdConfig(multiplier=5), ignore, local_address="2001:db8::1")
    bfd.add("10.0.0.2", BfdConfig(), ignore)
    statuses = bfd.status()
    assert [s.peer for s in statuses] == ["10.0.0.2", "192.0.2.2", "2001:db8::2"]
    assert all(s.state is BfdState.DOWN and s.diagnostic is Diagnostic.NONE for s in statuses)
    assert len({s.local_discriminator for s in statuses}) == 3 and all(s.local_discriminator for s in statuses)
    assert statuses[2].local_address == "2001:db8::1"
    assert statuses[0].as_dict()["state"] == "down"


def test_add_is_idempotent_and_a_new_config_keeps_the_session() -> None:
    bfd = Bfd(random.Random(3))
    bfd.add("192.0.2.2", BfdConfig(), ignore)
    [first] = bfd.status()
    bfd.add("192.0.2.2", BfdConfig(), ignore)
    bfd.add("192.0.2.2", BfdConfig(transmit_interval=100), ignore)
    [again] = bfd.status()
    assert again.local_discriminator == first.local_discriminator
    # A new local address is a new session (a new socket, a new discriminator).
    bfd.add("192.0.2.2", BfdConfig(transmit_interval=100), ignore, local_address="192.0.2.1")
    [moved] = bfd.status()
    assert moved.local_discriminator != first.local_discriminator and moved.local_address == "192.0.2.1"
    bfd.remove("192.0.2.2")
    bfd.remove("192.0.2.2")
    assert bfd.status() == []


@pytest.mark.parametrize("peer, config, local, message", [
    ("192.0.2.2", BfdConfig(multiplier=0), None, "^bfd.multiplier: "),
    ("192.0.2.2", BfdConfig(), "2001:db8::1", "^local_address: "),
    ("not-an-address", BfdConfig(), None, "^peer: 'not-an-address' is not an IP address"),
    ("192.0.2.2", BfdConfig(), "eth0", "^local_address: 'eth0' is not an IP address"),
])
def test_refused_arguments(peer: str, config: BfdConfig, local: str | None, message: str) -> None:
    bfd = Bfd()
    with pytest.raises(ValueError, match=message):
        bfd.add(peer, config, ignore, local)
    assert bfd.status() == []


def test_a_bad_new_config_leaves_the_session_as_it_was() -> None:
    bfd = Bfd()
    bfd.add("192.0.2.2", BfdConfig(), ignore)
    with pytest.raises(ValueError, match="^bfd.transmit_interval: "):
        bfd.add("192.0.2.2", BfdConfig(transmit_interval=0), ignore)
    bfd.add("192.0.2.2", BfdConfig(), ignore)  # still equal to what it has: nothing to do
    assert [s.peer for s in bfd.status()] == ["192.0.2.2"]
