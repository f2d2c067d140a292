from pathlib import Path

import pytest

from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.topology import Endpoint, TopologyError, load, namespace_name, parse

GOOD = """
name: t1
topology:
  kinds: {linux: {image: alpine}}
  nodes:
    a:
      kind: linux
      image: alpine:3.19     # containerlab-only keys are ignored
      binds: [/tmp:/tmp]
      exec:
        - ip addr add 192.0.2.1/24 dev eth1
        - sh -c "echo 'two words' > /dev/null"
    b: {kind: linux}
  links:
    - endpoints: ["a:eth1", "b:eth1"]
"""


def test_good_file_parses_with_argv_split_like_containerlab():
    topo = parse(GOOD)
    assert topo.name == "t1"
    assert list(topo.nodes) == ["a", "b"]
    assert topo.nodes["a"].exec[1] == ("sh", "-c", "echo 'two words' > /dev/null")
    assert topo.links[0].a == Endpoint("a", "eth1") and topo.links[0].b == Endpoint("b", "eth1")
    assert topo.namespace("a") == "t1.a"


def test_default_topology_has_the_project_nodes():
    topo = load(DEFAULT_TOPOLOGY)
    assert {"rr1", "rr2", "hv1", "hv2", "hv3", "gw1", "internet"} <= set(topo.nodes)
    assert topo.name == "hnv"


@pytest.mark.parametrize(
    "text, where, words",
    [
        ("- just a list", "file", "mapping"),
        ("name: x\ntopology: {nodes: {a: {}}}\n: :", "file", "YAML"),
        ("topology: {nodes: {a: {}}}", "name", "lab name"),
        ("name: 'bad.name'\ntopology: {nodes: {a: {}}}", "name", "lab name"),
        ("name: x", "topology", "missing"),
        ("name: x\ntopology: {nodes: {}}", "topology.nodes", "empty"),
        ("name: x\ntopology: {nodes: {a: {kind: srl}}}", "topology.nodes.a.kind", "not supported"),
        ("name: x\ntopology: {nodes: {a: {exec: 'ip link'}}}", "topology.nodes.a.exec", "list"),
        ("name: x\ntopology: {nodes: {a: {exec: [42]}}}", "topology.nodes.a.exec[0]", "non-empty string"),
        ("name: x\ntopology: {nodes: {a: {exec: ['sh -c \"unclosed']}}}", "topology.nodes.a.exec[0]", "split"),
        ("name: x\ntopology: {nodes: {'a.b': {}}}", "topology.nodes.a.b", "node name"),
        ("name: x\ntopology: {nodes: {a: {}}, links: [{endpoints: ['a:eth1']}]}", "topology.links[0].endpoints",
         "two"),
        ("name: x\ntopology: {nodes: {a: {}}, links: [{endpoints: ['a:eth1', 'z:eth1']}]}",
         "topology.links[0].endpoints[1]", "'z' is not defined"),
        ("name: x\ntopology: {nodes: {a: {}, b: {}}, links: [{endpoints: ['a:eth1', 'b']}]}",
         "topology.links[0].endpoints[1]", "node:interface"),
        ("name: x\ntopology: {nodes: {a: {}, b: {}}, links: [{endpoints: ['a:averyveryverylongname', 'b:e']}]}",
         "topology.links[0].endpoints[0]", "15"),
        ("name: x\ntopology: {nodes: {a: {}, b: {}, c: {}},\n"
         "  links: [{endpoints: ['a:e1', 'b:e1']}, {endpoints: ['a:e1', 'c:e1']}]}",
         "topology.links[1].endpoints[0]", "already used by topology.links[0]"),
        ("name: x\ntopology: {nodes: {a: {}}, links: [{endpoint: []}]}", "topology.links[0]", "endpoints"),
    ],
)
def test_bad_files_name_the_key_and_node(text, where, words):
    with pytest.raises(TopologyError) as info:
        parse(text)
    assert info.value.where == where
    assert words in str(info.value)


def test_load_names_the_file(tmp_path: Path):
    path = tmp_path / "broken.clab.yml"
    path.write_text("name: x\ntopology: {nodes: {a: {kind: ceos}}}")
    with pytest.raises(TopologyError, match=r"broken\.clab\.yml: topology\.nodes\.a\.kind"):
        load(path)
    with pytest.raises(TopologyError, match="cannot read"):
        load(tmp_path / "missing.yml")


def test_namespace_names_of_two_labs_cannot_collide():
    # "hnv" + node "2.x" is impossible (no dots in names), so lab "hnv" never owns "hnv2.*".
    assert namespace_name("hnv", "hv1") == "hnv.hv1"
    assert not namespace_name("hnv2", "hv1").startswith("hnv.")
