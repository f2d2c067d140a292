"""vnet.vrfmark: the nftables documents (the kernel side runs in the agent's kernel test)."""

from __future__ import annotations

from nvfabric.vnet.vrfmark import LAYOUT, MAP, RULES, TABLE, changes, parse, ruleset


def test_the_whole_table_replaces_itself_in_one_transaction_and_maps_vrfs_to_marks():
    cmds = ruleset({"nvf-red": 1001, "nvf-blue": 1000})["nftables"][1:]
    assert [next(iter(c)) for c in cmds[:3]] == ["add", "delete", "add"] and cmds[1]["delete"]["table"]["name"] == TABLE
    assert cmds[-1] == {"add": {"element": {"family": "inet", "table": TABLE, "name": MAP,
                                            "elem": [["nvf-blue", 1000], ["nvf-red", 1001]]}}}


def test_changes_are_element_deletes_then_adds_and_nothing_when_equal():
    doc = changes({"nvf-blue": 1000, "nvf-red": 1001}, {"nvf-blue": 1002, "nvf-green": 1003})
    deletes, adds = doc["nftables"][1]["delete"]["element"]["elem"], doc["nftables"][2]["add"]["element"]["elem"]
    assert deletes == [["nvf-blue", 1000], ["nvf-red", 1001]]
    assert adds == [["nvf-blue", 1002], ["nvf-green", 1003]]
    assert changes({"nvf-blue": 1000}, {"nvf-blue": 1000}) is None


def test_the_input_guard_lets_only_icmp_reach_the_host_through_our_devices():
    rules = [c["add"]["rule"] for c in ruleset({})["nftables"][1:] if "rule" in c.get("add", {})
             and c["add"]["rule"]["chain"] == "input"]
    # through one of our devices as input device (a VRF, an NVGRE device), or as the packet's VRF
    assert [r["expr"][0]["match"]["left"]["meta"]["key"] for r in rules] == ["iifname", "sdifname"]
    for rule in rules:
        assert rule["expr"][0]["match"]["right"] == "nvf-*"
        assert rule["expr"][1]["match"] == {"op": "!=", "left": {"meta": {"key": "l4proto"}},
                                            "right": {"set": ["icmp", "ipv6-icmp"]}}
        assert rule["expr"][-1] == {"drop": None}


def test_a_table_read_back_with_our_layout_is_adopted_and_another_is_replaced():
    def listed(marks: dict[str, int], comment: str | None = LAYOUT, input_rules: int = 2) -> dict:
        rules = [{"rule": {"family": "inet", "table": TABLE, "chain": "prerouting", "handle": 3,
                           **({"comment": comment} if comment else {}), "expr": []}}]
        rules += [{"rule": {"family": "inet", "table": TABLE, "chain": "input", "handle": 5 + i, "expr": []}}
                  for i in range(input_rules)]
        return {"nftables": [{"metainfo": {}}, {"table": {"family": "inet", "name": TABLE}},
                             {"map": {"family": "inet", "table": TABLE, "name": MAP, "type": "ifname", "map": "mark",
                                      **({"elem": [[k, v] for k, v in marks.items()]} if marks else {})}},
                             *rules]}

    assert parse(listed({"nvf-blue": 1000})) == {"nvf-blue": 1000}
    assert parse(listed({})) == {}
    assert parse(listed({"nvf-blue": 1000}, comment=None)) is None  # an older layout: replaced once
    assert parse(listed({"nvf-blue": 1000}, input_rules=3)) is None  # a rule added by hand
    # what is written carries the mark that makes it adoptable
    written = [c["add"]["rule"] for c in ruleset({})["nftables"][1:] if "rule" in c.get("add", {})]
    assert [r.get("comment") for r in written if r["chain"] == "prerouting"] == [LAYOUT]
    assert {chain: sum(r["chain"] == chain for r in written) for chain in RULES} == RULES
