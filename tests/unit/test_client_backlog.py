"""The client's backlog (bgp/client.py): changes queued (one per key, however often the key changes), how long
the oldest waited, and what the consumer has in effect after a pass (`mark` before, `applied` after)."""

from __future__ import annotations

from nvfabric.bgp import config, rib
from nvfabric.bgp.client import Client, RouteUpdate
from nvfabric.bgp.routes import MacIpRoute, Path

NOW = 1000.0


def client() -> Client:
    return Client(config.parse({"asn": 65000, "router_id": "198.51.100.1", "hold_time": 9,
                                "neighbors": [{"address": "198.51.100.100", "asn": 65000}]}))


def route(i: int, pa: str = "198.51.100.11", seq: int = 0) -> MacIpRoute:
    return MacIpRoute(rd="198.51.100.11:5001", mac=f"02:00:00:00:00:{i:02x}", ip=f"10.0.0.{10 + i}", vsid=5001,
                      next_hop=pa, route_targets=("65001:1",), mobility_seq=seq)


def change(r: MacIpRoute) -> rib.RibChange:
    return rib.RibChange(r.key, None, Path(r), None)


async def take(c: Client, n: int) -> list[RouteUpdate]:
    out = []
    events = c.events()
    for _ in range(n):
        event = await anext(events)
        assert isinstance(event, RouteUpdate)
        out.append(event)
    return out


async def test_a_key_changed_many_times_is_one_pending_change(monkeypatch) -> None:
    c = client()
    clock = [NOW]
    monkeypatch.setattr("nvfabric.bgp.client.time.monotonic", lambda: clock[0])
    c._on_notices([change(route(1))])
    clock[0] += 2
    c._on_notices([change(route(2))] + [change(route(1, seq=s)) for s in range(1, 100)])
    clock[0] += 1
    b = c.backlog()
    # two keys pending; the oldest is key 2 (key 1 waits from its latest change, at the same time)
    assert (b.pending, b.oldest_pending_s, b.delivered, b.applied) == (2, 1.0, 0, 0)
    assert b.oldest_unapplied_s == 1.0
    got = await take(c, 2)
    assert [u.route.mobility_seq for u in got] == [0, 99]  # the latest of key 1, once
    assert c.backlog().pending == 0 and c.backlog().oldest_pending_s == 0.0


async def test_delivered_changes_age_until_a_pass_applies_them(monkeypatch) -> None:
    c = client()
    clock = [NOW]
    monkeypatch.setattr("nvfabric.bgp.client.time.monotonic", lambda: clock[0])
    c._on_notices([change(route(1))])
    await take(c, 1)
    clock[0] += 3
    b = c.backlog()
    assert (b.pending, b.delivered, b.applied, b.oldest_unapplied_s) == (0, 1, 0, 3.0)

    mark = c.mark()  # a pass begins with what was delivered so far
    c._on_notices([change(route(2))])  # arrives during the pass
    await take(c, 1)
    clock[0] += 1
    assert c.backlog().oldest_unapplied_s == 4.0  # the first change is not in effect yet
    c.applied(mark)
    b = c.backlog()
    assert (b.delivered, b.applied, b.oldest_unapplied_s) == (2, 1, 1.0)  # the second waits for the next pass

    failed = c.mark()  # a pass that fails never says applied: its change keeps ageing
    clock[0] += 5
    assert c.backlog().oldest_unapplied_s == 6.0
    c.applied(c.mark())
    assert failed == 2 and c.backlog().applied == 2 and c.backlog().oldest_unapplied_s == 0.0


async def test_a_change_back_to_what_the_consumer_has_is_no_backlog(monkeypatch) -> None:
    c = client()
    c._on_notices([change(route(1))])
    await take(c, 1)
    c._on_notices([change(route(1, pa="198.51.100.12"))])
    assert c.backlog().pending == 1
    c._on_notices([change(route(1))])  # back to what was delivered: nothing to tell
    assert c.backlog().pending == 0 and c.backlog().oldest_pending_s == 0.0
