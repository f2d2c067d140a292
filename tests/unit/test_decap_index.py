"""vnet/decap.py's table by difference: after any sequence of changes the incremental index stands for the
same table as the reference computed from scratch (`DecapInputs.filter`), and each delta it returns turns
the previous table into the next one, element by element."""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvfabric.vnet import decap
from nvfabric.vnet.decap import DecapDelta, DecapFilter, DecapIndex, DecapInputs, Element, change
from nvfabric.vnet.model import CustomerRoute, LookupRecord, RemotePrefix

ip, net = ipaddress.ip_address, ipaddress.ip_network
MAC = "02:00:00:00:00:01"
HV2, HV3, GW = ip("198.51.100.12"), ip("198.51.100.13"), ip("2001:db8::99")
PAS = (HV2, HV3, GW)
DOMAINS = ("blue", "red", "green")
CAS = tuple(ip(f"10.0.0.{i}") for i in range(8)) + tuple(ip(f"fd00::{i}") for i in range(4))
# nested and disjoint prefixes, a host route among them: what covers what is the point
PREFIXES = tuple(net(p) for p in ("10.0.0.0/29", "10.0.0.0/30", "10.0.0.4/31", "0.0.0.0/0", "10.0.0.1/32",
                                  "fd00::/126", "::/0", "fd00::2/127"))


@st.composite
def inputs(draw) -> DecapInputs:
    keys = draw(st.lists(st.tuples(st.sampled_from(DOMAINS), st.sampled_from(CAS)), unique=True, max_size=12))
    records = []
    for domain, ca in keys:
        if draw(st.booleans()) and draw(st.booleans()):
            records.append(LookupRecord(domain, 5001, ca, MAC, None, True, "p1"))  # a local port's
        else:
            records.append(LookupRecord(domain, 5001, ca, MAC, draw(st.sampled_from(PAS))))
    prefixes = draw(st.lists(st.builds(lambda d, p, v, pa: RemotePrefix(d, p, v, pa), st.sampled_from(DOMAINS),
                                       st.sampled_from(PREFIXES), st.sampled_from((5001, 5002)),
                                       st.sampled_from(PAS)), max_size=5))
    customer = {}
    for domain in draw(st.lists(st.sampled_from(DOMAINS), unique=True, max_size=3)):
        routes = []
        for prefix in draw(st.lists(st.sampled_from(PREFIXES), max_size=3)):
            hops = [ca for ca in CAS if ca.version == prefix.version]
            routes.append(CustomerRoute(prefix, draw(st.sampled_from([None, *hops]))))
        customer[domain] = tuple(routes)
    next_hops = draw(st.lists(st.sampled_from(PAS), max_size=6))
    tables = draw(st.dictionaries(st.sampled_from(DOMAINS), st.sampled_from((1000, 1001, 1002)), max_size=3))
    vsids = draw(st.dictionaries(st.sampled_from((5001, 5002, 6001)), st.sampled_from((1000, 1001)), max_size=3))
    return DecapInputs(tuple(records), tuple(prefixes), tuple(next_hops), customer, tables, vsids)


def patched(f: DecapFilter, delta: DecapDelta) -> DecapFilter:
    """The table after writing `delta`; every element deleted is there, every one added is not."""
    assert delta.pas_removed <= f.pas and not delta.pas_added & f.pas
    assert delta.vouched_removed <= f.vouched and not delta.vouched_added & f.vouched
    assert delta.vsids_removed <= f.vsids.keys()
    vsids = {v: m for v, m in f.vsids.items() if v not in delta.vsids_removed}
    assert not delta.vsids_added.keys() & vsids.keys()
    return DecapFilter((f.pas - delta.pas_removed) | delta.pas_added, {**vsids, **delta.vsids_added},
                       (f.vouched - delta.vouched_removed) | delta.vouched_added)


def _whole_change(old: DecapInputs, new: DecapInputs) -> decap.DecapChange:
    # (next hops as the agent gives them: accepted routes counted per PA)
    return change((old.records, new.records), (old.prefixes, new.prefixes),
                  (Counter(old.next_hops), Counter(new.next_hops)),
                  (old.customer_routes, new.customer_routes), (old.tables, new.tables), (old.vsids, new.vsids))


@settings(max_examples=200, deadline=None)
@given(first=inputs(), kernel=st.none() | inputs(), steps=st.lists(st.tuples(inputs(), st.booleans()), max_size=8),
       holding=st.booleans())
def test_the_index_after_any_changes_is_the_table_computed_from_scratch(first, kernel, steps, holding) -> None:
    # what the kernel held at the start (read back), kept while holding
    before = kernel.filter(False, None) if kernel is not None else None
    index = DecapIndex.build(first, holding, before)
    table = first.filter(holding, before)
    assert index.filter() == table
    was = first
    for now, holding in steps:
        delta = index.apply(_whole_change(was, now), holding)
        want = now.filter(holding, table)
        assert index.filter() == want
        assert patched(table, delta) == want  # and nothing written that does not change
        table, was = want, now


@settings(max_examples=100, deadline=None)
@given(first=inputs(), second=inputs())
def test_a_change_given_as_just_the_changed_items_is_the_same_change(first, second) -> None:
    index = DecapIndex.build(first)
    gone = [r for r in first.records if r not in second.records]
    come = [r for r in second.records if r not in first.records]
    index.apply(change((gone, come), (first.prefixes, second.prefixes), (first.next_hops, second.next_hops),
                       (first.customer_routes, second.customer_routes), (first.tables, second.tables),
                       (first.vsids, second.vsids)), False)
    assert index.filter() == second.filter(False, None)


def test_a_prefix_covers_the_cas_of_its_pa_and_domain_and_gives_them_back_when_it_goes() -> None:
    cas = [LookupRecord("blue", 5001, ip(f"10.0.0.{i}"), MAC, HV2) for i in (1, 2, 9)]
    base = DecapInputs(tuple(cas), (), (HV2,), {}, {"blue": 1000}, {5001: 1000})
    index = DecapIndex.build(base)
    wide = RemotePrefix("blue", net("10.0.0.0/29"), 5001, HV2)
    delta = index.apply(change(prefixes=((), (wide,))), False)
    assert delta == DecapDelta(vouched_removed=frozenset(Element.host(HV2, 1000, ip(f"10.0.0.{i}")) for i in (1, 2)),
                               vouched_added=frozenset({Element.of(HV2, 1000, wide.prefix)}))
    # a CA arriving under the prefix writes nothing
    assert not index.apply(change(records=((), (LookupRecord("blue", 5001, ip("10.0.0.3"), MAC, HV2),))), False)
    delta = index.apply(change(prefixes=((wide,), ())), False)
    assert delta.vouched_removed == {Element.of(HV2, 1000, wide.prefix)}
    assert delta.vouched_added == {Element.host(HV2, 1000, ip(f"10.0.0.{i}")) for i in (1, 2, 3)}


def test_while_holding_nothing_goes_and_what_was_held_goes_when_the_hold_ends() -> None:
    record = LookupRecord("blue", 5001, ip("10.0.0.1"), MAC, HV2)
    index = DecapIndex.build(DecapInputs((record,), (), (HV2,), {}, {"blue": 1000}))
    assert not index.apply(change(records=((record,), ()), next_hops=((HV2,), ())), True)
    delta = index.apply(change(), False)
    assert delta == DecapDelta(pas_removed=frozenset({HV2}),
                               vouched_removed=frozenset({Element.host(HV2, 1000, record.ca)}))


def test_a_change_that_does_not_fit_what_the_index_holds_is_refused_naming_the_input() -> None:
    index = DecapIndex.build(DecapInputs())
    with pytest.raises(ValueError, match="records: 10.0.0.1 of blue"):
        index.apply(change(records=((LookupRecord("blue", 5001, ip("10.0.0.1"), MAC, HV2),), ())), False)
    with pytest.raises(ValueError, match="next_hops"):
        index.apply(change(next_hops=((HV2,), ())), False)


def test_one_ca_among_100000_is_one_element_in_one_transaction() -> None:
    base = int(ip("10.64.0.0"))
    records = tuple(LookupRecord("blue", 5001, ipaddress.IPv4Address(base + i), MAC, HV2 if i % 2 else HV3)
                    for i in range(100_000))
    index = DecapIndex.build(DecapInputs(records, (), (HV2, HV3), {}, {"blue": 1000}, {5001: 1000}))
    assert len(index) == 100_000
    new = LookupRecord("blue", 5001, ip("10.0.0.77"), MAC, HV2)
    delta = index.apply(change(records=((), (new,))), False)
    assert decap.delta_text(delta) == "add element inet nvfabric h44 { 198.51.100.12 . 1000 . 0xa00004d }\n"
    moved = LookupRecord("blue", 5001, new.ca, MAC, HV3)
    assert decap.delta_text(index.apply(change(records=((new,), (moved,))), False)) == (
        "delete element inet nvfabric h44 { 198.51.100.12 . 1000 . 0xa00004d }\n"
        "add element inet nvfabric h44 { 198.51.100.13 . 1000 . 0xa00004d }\n")
