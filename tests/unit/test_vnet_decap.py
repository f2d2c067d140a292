"""vnet/decap.py's pure part: what the control plane vouches for, the table's content, and the size of a
change (a remote CA arriving is one element, whatever the number already known)."""

from __future__ import annotations

import ipaddress
import time

from nvfabric.vnet import decap
from nvfabric.vnet.decap import DecapFilter, Element, SiteTunnel, changes, decap_filter, maximal, ruleset, vouched
from nvfabric.vnet.model import CustomerRoute, LookupRecord, RemotePrefix

ip, net = ipaddress.ip_address, ipaddress.ip_network
E = Element.of
MAC = "02:00:00:00:00:01"
HV2, HV3, GW = ip("198.51.100.12"), ip("198.51.100.13"), ip("2001:db8::99")
TABLES = {"blue": 1000, "red": 1001}


def record(ca: str, pa=HV2, domain: str = "blue", vsid: int = 5001) -> LookupRecord:
    return LookupRecord(domain, vsid, ip(ca), MAC, pa)


def test_what_is_vouched_for_lookup_records_prefixes_and_customer_routes_in_the_routing_domain() -> None:
    records = [record("10.0.0.12"), record("fd00::12"), record("10.0.1.13", HV3, vsid=5002),
               record("10.9.0.1", domain="gone"),  # a routing domain not served here
               LookupRecord("blue", 5001, ip("10.0.0.11"), MAC, None, True, "b1")]  # local: never from GRE
    prefixes = [RemotePrefix("blue", net("0.0.0.0/0"), 5001, GW), RemotePrefix("red", net("::/0"), 6001, GW)]
    customer = {"blue": [CustomerRoute(net("172.16.0.0/16"), ip("10.0.1.13")),  # an appliance at hv3
                         CustomerRoute(net("172.17.0.0/16"), ip("10.0.0.11")),  # a local appliance
                         CustomerRoute(net("10.0.0.0/25"))]}  # on-link: its CAs have records of their own
    assert vouched(records, prefixes, customer, TABLES) == {
        E(HV2, 1000, net("10.0.0.12/32")), E(HV2, 1000, net("fd00::12/128")), E(HV3, 1000, net("10.0.1.13/32")),
        E(GW, 1000, net("0.0.0.0/0")), E(GW, 1001, net("::/0")), E(HV3, 1000, net("172.16.0.0/16")),
    }


def test_elements_never_overlap_a_ca_inside_a_prefix_of_its_pa_and_domain_is_covered() -> None:
    elements = {E(HV2, 1000, net("10.0.0.0/24")), E(HV2, 1000, net("10.0.0.12/32")),  # covered
                E(HV2, 1001, net("10.0.0.12/32")),  # another routing domain
                E(HV3, 1000, net("10.0.0.13/32")),  # another PA
                E(HV2, 1000, net("fd00::/64")), E(HV2, 1000, net("fd00::1/128")), E(HV2, 1000, net("fd00:1::1/128"))}
    assert maximal(elements) == {E(HV2, 1000, net("10.0.0.0/24")), E(HV2, 1001, net("10.0.0.12/32")),
                                 E(HV3, 1000, net("10.0.0.13/32")), E(HV2, 1000, net("fd00::/64")),
                                 E(HV2, 1000, net("fd00:1::1/128"))}


def test_nothing_learned_is_forgotten_while_holding() -> None:
    before = decap_filter({HV2, HV3}, {5001: 1000}, {E(HV3, 1000, net("10.0.0.13/32"))}, False, None)
    held = decap_filter({HV2}, {5001: 1000}, {E(HV2, 1000, net("10.0.0.12/32"))}, True, before)
    assert held.pas == {HV2, HV3} and held.vouched == {E(HV2, 1000, net("10.0.0.12/32")),
                                                       E(HV3, 1000, net("10.0.0.13/32"))}
    assert decap_filter({HV2}, {5001: 1000}, (), False, held).pas == {HV2}  # synced: forgotten


def _many(n: int) -> frozenset:
    base = int(ip("10.64.0.0"))
    return frozenset(E(HV2 if i % 2 else HV3, 1000, net(f"{ipaddress.IPv4Address(base + i)}/32")) for i in range(n))


def test_a_remote_ca_arriving_or_leaving_is_one_element_with_100000_known() -> None:
    known = _many(100_000)
    old = DecapFilter(frozenset({HV2, HV3}), {5001: 1000}, known)
    started = time.perf_counter()
    new = decap_filter({HV2, HV3}, {5001: 1000}, known | {E(HV2, 1000, net("10.0.0.77/32"))}, False, old)
    text = changes(old, new)
    assert time.perf_counter() - started < 5.0  # pure work in Python, no kernel: generous bound for the CI
    assert text == "add element inet nvfabric h44 { 198.51.100.12 . 1000 . 0xa00004d }\n"  # the hash set
    assert changes(new, old) == "delete element inet nvfabric h44 { 198.51.100.12 . 1000 . 0xa00004d }\n"
    assert changes(old, old) is None


def test_a_routing_domain_moving_table_and_a_vsid_leaving_are_map_element_changes() -> None:
    old = DecapFilter(frozenset(), {5001: 1000, 5002: 1000})
    text = changes(old, DecapFilter(frozenset(), {5001: 1002}))
    assert text == ("delete element inet nvfabric vsids { 0x138900, 0x138a00 }\n"
                    "delete element inet nvfabric vsid { 0x138900, 0x138a00 }\n"
                    "add element inet nvfabric vsids { 0x138900 }\n"
                    "add element inet nvfabric vsid { 0x138900 : 1002 }\n")


def test_the_whole_table_replaces_in_one_script_exact_addresses_hashed_prefixes_as_ranges() -> None:
    f = DecapFilter(frozenset({HV2, GW}), {5001: 1000}, frozenset({
        E(GW, 1000, net("fd00::/120")), E(HV2, 1000, net("10.0.0.0/30")),
        E(HV2, 1000, net("10.0.1.12/32")), E(GW, 1000, net("fd00:1::12/128"))}))
    text = ruleset(f)
    assert text.startswith("add table inet nvfabric\ndelete table inet nvfabric\ntable inet nvfabric {")
    # the FlowID, IPv4 and IPv6 outer: written only when it is not zero
    assert "@nh,216,8 != 0x0 @nh,216,8 set 0x0" in text and "@nh,376,8 != 0x0 @nh,376,8 set 0x0" in text
    assert "set h44 { typeof ip saddr . meta mark . @nh,432,32; }" in text  # a hash set: no interval flag
    assert "set v44 { typeof ip saddr . meta mark . @nh,432,32; flags interval; }" in text
    assert text.index("@h44 counter") < text.index("@v44 counter")  # exact addresses looked up first
    assert text.index("@h66 counter") < text.index("@v66 counter")
    assert "add element inet nvfabric h44 { 198.51.100.12 . 1000 . 0xa00010c }" in text
    assert "add element inet nvfabric v44 { 198.51.100.12 . 1000 . 0xa000000-0xa000003 }" in text
    assert "add element inet nvfabric h66 { 2001:db8::99 . 1000 . 0xfd000001000000000000000000000012 }" in text
    assert ("add element inet nvfabric v66 { 2001:db8::99 . 1000 . "
            "0xfd000000000000000000000000000000-0xfd0000000000000000000000000000ff }") in text


def test_a_table_of_an_older_layout_is_not_ours_and_is_replaced() -> None:
    def doc(names: list[str], comment: str | None = decap.LAYOUT) -> dict:
        rule = {"rule": {"table": "nvfabric", "chain": "input", **({"comment": comment} if comment else {})}}
        return {"nftables": [rule, *({"set": {"table": "nvfabric", "name": n, "elem": []}} for n in names)]}

    old = ["pa4", "pa6", "vsids", "vsid", "v44", "v46", "v64", "v66"]
    assert decap.parse(doc(old)) is None
    hashed = old + ["h44", "h46", "h64", "h66"]
    assert decap.parse(doc(hashed)) is None  # without the GRE sites' sets: replaced once
    every = hashed + ["site4", "site6", "site4nk", "site6nk"]
    assert decap.parse(doc(every)) == DecapFilter()
    # the same sets with the rules of before the layout mark (no IPv6 site rule for the encapsulation limit)
    assert decap.parse(doc(every, None)) is None
    assert decap.parse(doc(every, "nvfabric decapsulation 1")) is None


def test_a_sites_ipv6_gre_is_let_through_with_or_without_the_encapsulation_limit_option() -> None:
    # Linux's ip6gre sends RFC 2473's option in a Destination Options header of 8 bytes by default: the GRE
    # header then starts 64 bits later
    text = decap.ruleset(DecapFilter())
    assert ("ip6 nexthdr gre @nh,320,16 0x2000 ip6 saddr . ip6 daddr . @nh,352,32 @site6 @nh,336,16 "
            "{ 0x0800, 0x86dd } accept") in text
    assert ("ip6 nexthdr 60 @nh,320,8 47 @nh,328,8 0 @nh,384,16 0x2000 ip6 saddr . ip6 daddr . @nh,416,32 @site6 "
            "@nh,400,16 { 0x0800, 0x86dd } accept") in text
    assert ("ip6 nexthdr 60 @nh,320,8 47 @nh,328,8 0 @nh,384,16 0x0 ip6 saddr . ip6 daddr @site6nk "
            "@nh,400,16 { 0x0800, 0x86dd } accept") in text


def test_a_table_read_back_gives_the_elements_written_whatever_form_nft_lists_them_in() -> None:
    def listed(name: str, elems: list) -> dict:
        return {"set": {"table": "nvfabric", "name": name, "elem": elems}}

    doc = {"nftables": [
        {"rule": {"table": "nvfabric", "chain": "input", "comment": decap.LAYOUT}},
        listed("pa4", ["198.51.100.12"]), listed("pa6", ["2001:db8::99"]), listed("vsids", ["0x138900"]),
        {"map": {"table": "nvfabric", "name": "vsid", "elem": [["0x138900", 1000]]}},
        # a host as a hex string, an integer or an address; a prefix as a range or a prefix
        listed("h44", [{"concat": ["198.51.100.12", 1000, "0xa00010c"]}, {"concat": ["198.51.100.12", 1000, 167772429]},
                       {"concat": ["198.51.100.13", "1000", "10.0.1.14"]}]),
        listed("h66", [{"concat": ["2001:db8::99", 1000, "0xfd000001000000000000000000000012"]}]),
        listed("v44", [{"concat": ["198.51.100.12", 1000, {"range": ["0xa000000", "0xa000003"]}]},
                       {"concat": ["198.51.100.13", 1000, {"prefix": {"addr": "10.0.2.0", "len": 24}}]}]),
        listed("site4", [{"concat": ["203.0.113.52", "203.0.113.2", "0x4d"]}]),
        listed("site6nk", [{"concat": ["2001:db8:9::9", "2001:db8::2"]}]),
        *(listed(name, []) for name in ("h46", "h64", "v46", "v64", "v66", "site6", "site4nk")),
    ]}
    assert decap.parse(doc) == DecapFilter(frozenset({HV2, GW}), {5001: 1000}, frozenset({
        E(HV2, 1000, net("10.0.1.12/32")), E(HV2, 1000, net("10.0.1.13/32")), E(HV3, 1000, net("10.0.1.14/32")),
        E(GW, 1000, net("fd00:1::12/128")), E(HV2, 1000, net("10.0.0.0/30")), E(HV3, 1000, net("10.0.2.0/24"))}),
        frozenset({SiteTunnel(ip("203.0.113.52"), ip("203.0.113.2"), 77),
                   SiteTunnel(ip("2001:db8:9::9"), ip("2001:db8::2"), None)}))


def test_ip_in_gre_is_let_through_only_as_one_gre_sites_tunnel_takes_it_and_changes_by_difference() -> None:
    keyed = SiteTunnel(ip("203.0.113.52"), ip("203.0.113.2"), 77)
    keyless = SiteTunnel(ip("2001:db8:9::9"), ip("2001:db8::2"), None)
    f = DecapFilter(frozenset({HV2}), {5001: 1000}, frozenset(), frozenset({keyed}))
    text = decap.ruleset(f)
    # before the NVGRE chains; K and nothing else, the tunnel's ends and key, IP (never 0x6558)
    rule = ("@nh,160,16 0x2000 ip saddr . ip daddr . @nh,192,32 @site4 @nh,176,16 { 0x0800, 0x86dd } accept")
    assert text.index(rule) < text.index("jump gre4")
    assert "@nh,320,16 0x0 ip6 saddr . ip6 daddr @site6nk @nh,336,16 { 0x0800, 0x86dd } accept" in text
    assert "add element inet nvfabric site4 { 203.0.113.52 . 203.0.113.2 . 0x4d }" in text
    g = DecapFilter(f.pas, f.vsids, f.vouched, frozenset({keyless}))
    assert decap.changes(f, g) == ("delete element inet nvfabric site4 { 203.0.113.52 . 203.0.113.2 . 0x4d }\n"
                                   "add element inet nvfabric site6nk { 2001:db8:9::9 . 2001:db8::2 }\n")
    assert decap.changes(g, g) is None


def test_judge_says_what_the_table_does_with_an_arriving_packet() -> None:
    f = DecapFilter(frozenset({HV2, GW}), {5001: 1000}, frozenset({E(HV2, 1000, net("10.0.0.12/32")),
                                                                      E(GW, 1000, net("0.0.0.0/0"))}))
    ipv4 = decap.ETH_IPV4
    assert f.judge(ip("198.51.100.50"), 5001 << 8, ipv4, ip("10.0.0.12")) == "unknown_pa"
    assert f.judge(HV2, 9999 << 8, ipv4, ip("10.0.0.12")) == "unknown_vsid"
    assert f.judge(HV2, 0, ipv4, ip("10.0.0.12")) == "unknown_vsid"
    assert f.judge(HV2, 5001 << 8 | 7, ipv4, ip("10.0.0.12")) == "vouched"  # the FlowID is ignored
    assert f.judge(HV2, 5001 << 8, 0x0806, None) == "not_ip"
    assert f.judge(HV2, 5001 << 8, ipv4, ip("10.0.0.13")) == "not_vouched"
    assert f.judge(GW, 5001 << 8, ipv4, ip("203.0.113.9")) == "vouched"
