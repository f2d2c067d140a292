"""vnet.vrfmark: the nftables documents (the kernel side runs in the agent's kernel test)."""

from __future__ import annotations

from nvfabric.vnet.vrfmark import MAP, TABLE, changes, ruleset


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
