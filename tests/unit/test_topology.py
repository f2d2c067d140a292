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


X = "name: x\ntopology: {defaults: {kind: linux}, "


@pytest.mark.parametrize(
    "text, where, words",
    [
        ("- just a list", "file", "mapping"),
        (X + "nodes: {a: {}}}\n: :", "file", "YAML"),
        ("topology: {defaults: {kind: linux}, nodes: {a: {}}}", "name", "lab name"),
        ("name: 'bad.name'\ntopology: {defaults: {kind: linux}, nodes: {a: {}}}", "name", "lab name"),
        ("name: x", "topology", "missing"),
        (X + "nodes: {}}", "topology.nodes", "empty"),
        ("name: x\ntopology: {nodes: {a: {kind: nokia_srlinux}}}", "topology.nodes.a.kind",
         "node a: kind nokia_srlinux: the namespace runner runs only linux and bridge nodes"),
        ("name: x\ntopology: {nodes: {a: {}}}", "topology.nodes.a.kind", "no kind"),
        (X + "nodes: {a: {exec: 'ip link'}}}", "topology.nodes.a.exec", "list"),
        (X + "nodes: {a: {exec: [42]}}}", "topology.nodes.a.exec[0]", "non-empty string"),
        (X + "nodes: {a: {exec: ['sh -c \"unclosed']}}}", "topology.nodes.a.exec[0]", "split"),
        (X + "nodes: {'a.b': {}}}", "topology.nodes.a.b", "node name"),
        (X + "nodes: {a: {}}, links: [{endpoints: ['a:eth1']}]}", "topology.links[0].endpoints",
         "two"),
        (X + "nodes: {a: {}}, links: [{endpoints: ['a:eth1', 'z:eth1']}]}",
         "topology.links[0].endpoints[1]", "'z' is not defined"),
        (X + "nodes: {a: {}, b: {}}, links: [{endpoints: ['a:eth1', 'b']}]}",
         "topology.links[0].endpoints[1]", "node:interface"),
        (X + "nodes: {a: {}, b: {}}, links: [{endpoints: ['a:averyveryverylongname', 'b:e']}]}",
         "topology.links[0].endpoints[0]", "15"),
        (X + "nodes: {a: {}, b: {}, c: {}},\n"
         "  links: [{endpoints: ['a:e1', 'b:e1']}, {endpoints: ['a:e1', 'c:e1']}]}",
         "topology.links[1].endpoints[0]", "already used by topology.links[0]"),
        (X + "nodes: {a: {}}, links: [{endpoint: []}]}", "topology.links[0]", "endpoints"),
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


LEVELS = """
name: levels
topology:
  defaults:
    kind: linux
    image: from-defaults
    env: {A: defaults, B: defaults}
    exec: ["echo defaults"]
    binds: [/srv/d:/etc/x, /srv/d-only:/etc/d-only]
  kinds:
    linux:
      image: from-kind
      exec: ["echo kind"]
      labels: {k: kind, g: kind}
      binds: [/srv/k:/etc/x]
  groups:
    hosts:
      image: from-group
      env: {B: group}
      exec: ["echo group"]
      labels: {g: group}
      binds: [/srv/g:/etc/x]
    bridges: {kind: bridge}
  nodes:
    plain: {}
    grouped: {group: hosts, exec: ["echo node"], env: {C: node}}
    own: {group: hosts, image: from-node, binds: [/srv/n:/etc/x]}
    sw: {group: bridges}
"""


def test_levels_resolve_as_containerlab_does():
    nodes = parse(LEVELS).nodes
    # one value: node > group > kind > defaults
    assert nodes["plain"].image == "from-kind"
    assert nodes["grouped"].image == "from-group"
    assert nodes["own"].image == "from-node"
    # the kind may come from the group
    assert nodes["sw"].kind == "bridge" and nodes["sw"].group == "bridges"
    # exec lists are joined, the least specific first
    assert [a[1] for a in nodes["grouped"].exec] == ["defaults", "kind", "group", "node"]
    assert [a[1] for a in nodes["plain"].exec] == ["defaults", "kind"]
    # binds merge by their path in the node, the most specific wins
    assert {str(b.node): str(b.host) for b in nodes["own"].binds} == {"/etc/x": "/srv/n", "/etc/d-only": "/srv/d-only"}
    assert {str(b.node): str(b.host) for b in nodes["grouped"].binds}["/etc/x"] == "/srv/g"
    assert {str(b.node): str(b.host) for b in nodes["plain"].binds}["/etc/x"] == "/srv/k"
    # env and labels merge key by key
    assert dict(nodes["grouped"].env) == {"A": "defaults", "B": "group", "C": "node"}
    assert dict(nodes["grouped"].labels) == {"k": "kind", "g": "group"}


def test_a_kind_set_in_defaults_is_not_read_as_linux():
    with pytest.raises(TopologyError) as info:
        parse("name: x\ntopology: {defaults: {kind: nokia_srlinux}, nodes: {a: {}}}")
    assert str(info.value) == ("topology.nodes.a.kind: node a: kind nokia_srlinux: the namespace runner runs only "
                               "linux and bridge nodes")


def test_both_link_forms_with_their_options():
    topo = parse("""
name: links
topology:
  defaults: {kind: linux}
  nodes: {a: {}, b: {}, c: {}}
  links:
    - endpoints: ["a:eth1", "b:eth1"]
      mtu: 9000
      ipv4: [192.0.2.1/24, 192.0.2.2/24]
    - type: veth
      mtu: 1400
      endpoints:
        - {node: a, interface: eth2, mac: "02:00:00:00:00:0a", ipv4: 198.51.100.1/24, ipv6: "2001:db8::1/64"}
        - {node: c, interface: eth1}
""")
    brief, long = topo.links
    assert (str(brief.a), str(brief.b), brief.mtu) == ("a:eth1", "b:eth1", 9000)
    assert brief.a.addresses == ("192.0.2.1/24",) and brief.b.addresses == ("192.0.2.2/24",)
    assert (str(long.a), str(long.b), long.mtu) == ("a:eth2", "c:eth1", 1400)
    assert long.a.mac == "02:00:00:00:00:0a" and long.a.addresses == ("198.51.100.1/24", "2001:db8::1/64")


@pytest.mark.parametrize(
    "links, where, words",
    [
        ("[{type: macvlan, endpoint: {node: a, interface: eth1}, host-interface: enp1s0}]", "topology.links[0].type",
         "link type 'macvlan': the namespace runner builds only veth links"),
        ("[{type: vxlan, endpoint: {node: a, interface: eth1}, remote: 192.0.2.9, vni: 9, dst-port: 4789}]",
         "topology.links[0].type", "link type 'vxlan'"),
        ("[{endpoints: ['a:eth1', 'host:veth-a']}]", "topology.links[0].endpoints[1]",
         "a host endpoint: the namespace runner links only the topology's own nodes"),
        ("[{type: veth, endpoints: ['a:eth1', 'b:eth1']}]", "topology.links[0].endpoints[0]",
         "is not a mapping with `node` and `interface`"),
        ("[{type: veth, endpoints: [{node: a, interface: eth1, colour: red}, {node: b, interface: eth1}]}]",
         "topology.links[0].endpoints[0]", "unknown keys colour"),
        ("[{endpoints: ['a:eth1', 'b:eth1'], mtu: 10}]", "topology.links[0].mtu", "not an MTU"),
        ("[{type: veth, endpoints: [{node: a, interface: eth1}, {node: a, interface: eth1}]}]",
         "topology.links[0].endpoints[1]", "already used"),
    ],
)
def test_links_it_cannot_build_are_refused_by_name(links, where, words):
    with pytest.raises(TopologyError) as info:
        parse(f"name: x\ntopology: {{defaults: {{kind: linux}}, nodes: {{a: {{}}, b: {{}}}}, links: {links}}}")
    assert info.value.where == where
    assert words in str(info.value)


@pytest.mark.parametrize(
    "nodes, where, words",
    [
        ("{a: {kind: bridge, exec: ['ip link']}}", "topology.nodes.a.exec", "a bridge node has no container"),
        ("{a: {group: nosuch}}", "topology.nodes.a.group", "group 'nosuch' is not defined"),
        ("{a: {stages: {healthy: {exec: {on-enter: ['true']}}}}}", "topology.nodes.a.stages", "stage commands"),
        ("{a: {binds: ['/only-one-part']}}", "topology.nodes.a.binds[0]", "host-path:node-path"),
        ("{a: {env: {A: [1]}}}", "topology.nodes.a.env.A", "strings"),
        ("{a: {exec: ['nvfabric rr --config /etc/r.yaml']}}", "topology.nodes.a.exec",
         "starts nvfabric rr with /etc/r.yaml, which no bind of the node provides"),
        ("{a: {binds: ['/x:/etc/nvfabric'], exec: ['nvfabric rr', 'nvfabric agent']}}", "topology.nodes.a.exec",
         "starts more than one daemon (rr, agent)"),
    ],
)
def test_nodes_it_cannot_run_are_refused_by_name(nodes, where, words):
    with pytest.raises(TopologyError) as info:
        parse(f"name: x\ntopology: {{defaults: {{kind: linux}}, nodes: {nodes}}}")
    assert info.value.where == where
    assert words in str(info.value)


@pytest.mark.parametrize(
    "command, role, config",
    [
        ("nvfabric rr", "rr", "/etc/nvfabric/rr.yaml"),
        ("/usr/bin/nvfabric agent --config /etc/nvfabric/hv.yaml --log-level info", "agent", "/etc/nvfabric/hv.yaml"),
        ("nvfabric gateway --config=/etc/nvfabric/gw.yaml", "gateway", "/etc/nvfabric/gw.yaml"),
        ("setsid -f sh -c 'exec nvfabric rr --config /etc/nvfabric/rr.yaml </dev/null >>/var/log/rr.log 2>&1'",
         "rr", "/etc/nvfabric/rr.yaml"),
        ("nohup env A=1 nvfabric agent", "agent", "/etc/nvfabric/agent.yaml"),
        ("bash -c 'nvfabric gateway --config /etc/nvfabric/g.yaml & echo started'", "gateway",
         "/etc/nvfabric/g.yaml"),
    ],
)
def test_a_daemon_is_recognised_in_its_exec_command_and_read_through_its_bind(tmp_path: Path, command, role, config):
    (tmp_path / "conf").mkdir()
    quoted = command.replace('"', '\\"')
    topo = parse(f"""
name: d
topology:
  defaults: {{kind: linux}}
  nodes:
    a:
      binds: ["conf:/etc/nvfabric:ro"]
      exec: ["ip link set lo up", "{quoted}"]
""", tmp_path)
    node = topo.nodes["a"]
    assert node.daemon is not None and (node.daemon.role, str(node.daemon.config)) == (role, config)
    assert node.daemon_config == tmp_path / "conf" / Path(config).name  # a bound folder counts
    assert node.setup == (("ip", "link", "set", "lo", "up"),)  # the runner does not run the daemon's command
    assert list(topo.daemons()) == ["a"]


def test_commands_that_only_mention_nvfabric_are_not_daemons():
    topo = parse(X + "nodes: {a: {exec: ['echo nvfabric rr', "
                 "'nvfabric rr --version', 'sh -c \"nvfabric rr status -o json\"', 'nvfabric gateway tenants']}}}")
    assert topo.nodes["a"].daemon is None


def test_relative_binds_are_read_from_the_file_folder(tmp_path: Path):
    (tmp_path / "lab").mkdir()
    path = tmp_path / "lab" / "t.clab.yml"
    path.write_text("name: t\ntopology:\n  defaults: {kind: linux}\n  nodes:\n"
                    "    a: {binds: ['cfg/rr.yaml:/etc/nvfabric/rr.yaml:ro'], exec: ['nvfabric rr']}\n")
    node = load(path).nodes["a"]
    assert node.daemon_config == tmp_path / "lab" / "cfg" / "rr.yaml"
    assert node.binds[0].mode == "ro"
