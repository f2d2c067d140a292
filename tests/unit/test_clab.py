"""Our topology files are what containerlab accepts and runs: its own JSON schema, an image for every node, a
daemon started from a bound configuration the daemon's own reader accepts (or a node that says it has none),
and the node image's Containerfile checked as far as this machine can without a container engine."""

import dataclasses
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml

from nvfabric.bgp.reflector.config import load as load_reflector
from nvfabric.gateway.config import load as load_gateway
from nvfabric.hostagent.config import load as load_agent
from nvfabric.lab.cli import DEFAULT_TOPOLOGY
from nvfabric.lab.topology import ROLE_LABEL, load, parse

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = Path("reference") / "containerlab" / "clab.schema.json"
READERS = {"rr": load_reflector, "agent": load_agent, "gateway": load_gateway}
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"


def shared_dir() -> Path:
    """`shared/` beside the project (../shared in CI); a git worktree elsewhere finds it further up."""
    for parent in ROOT.parents:
        if (parent / "shared" / SCHEMA_PATH).is_file():
            return parent / "shared"
    pytest.fail(f"containerlab's schema not found: no shared/{SCHEMA_PATH} beside {ROOT} or above it "
                "(the reference material is at ../shared in CI)")


def topology_files() -> list[Path]:
    files = sorted((ROOT / "lab" / "topologies").glob("*.clab.yml"))
    files += sorted(p for d in ("docs", "tests") for p in (ROOT / d).rglob("*.clab.y*ml"))
    return files


def doc_topologies() -> list[object]:
    """The YAML blocks of the docs that are whole topology files (a `name` and a `topology`)."""
    found = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for i, block in enumerate(re.findall(r"```ya?ml\n(.*?)```", doc.read_text(), re.S)):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and "topology" in data and "name" in data:
                found.append(pytest.param(f"{doc.name}#{i}", block, id=f"{doc.name}#{i}"))
    return found


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    text = (shared_dir() / SCHEMA_PATH).read_text()
    # Python's re has no Unicode property classes; the schema uses one, for the zone of an IPv6 address:
    # letters and digits, which [^\W_] is.
    text = text.replace(r"[\\p{N}\\p{L}]", r"[^\\W_]")
    schema = json.loads(text)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_there_are_topologies_to_check():
    assert DEFAULT_TOPOLOGY in topology_files()
    assert doc_topologies(), "docs/lab.md shows a topology file"


@pytest.mark.parametrize("path", topology_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_topology_file_is_valid_for_containerlab(validator, path: Path):
    errors = sorted(validator.iter_errors(yaml.safe_load(path.read_text())), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    load(path)  # and for our runner


@pytest.mark.parametrize("where, text", doc_topologies())
def test_every_topology_in_the_docs_is_valid_for_containerlab(validator, where: str, text: str):
    errors = list(validator.iter_errors(yaml.safe_load(text)))
    assert not errors, "\n".join(f"{where}: {'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    parse(text, ROOT / "docs")


@pytest.mark.parametrize("path", sorted((ROOT / "lab" / "topologies").glob("*.clab.yml")), ids=lambda p: p.name)
def test_every_node_names_an_image_and_starts_its_daemon_or_says_it_has_none(path: Path):
    topology = load(path)
    for name, node in topology.nodes.items():
        if node.kind == "bridge":
            continue  # containerlab's bridge kind is a bridge on the host: no image, no command
        assert node.image, f"{path.name}: node {name} resolves to no image: containerlab refuses it"
        if node.daemon is None:
            assert node.label(ROLE_LABEL) == "network", (
                f"{path.name}: node {name} starts no nvfabric daemon and is not labelled {ROLE_LABEL}: network")
            continue
        command = node.exec[node.daemon.exec_index]
        # detached (containerlab waits for each exec command), its output to a file
        assert command[:2] == ("setsid", "-f") and command[2:4] == ("sh", "-c"), command
        assert re.search(r">>?\s*/var/log/\S+ 2>&1", command[4]), command
        bind = next(b for b in node.binds if b.node == node.daemon.config)
        assert bind.mode == "ro" and not Path(str(bind.host)).is_absolute() or bind.host.is_file()
        config = READERS[node.daemon.role](node.daemon_config)  # the daemon's own reader accepts it
        assert getattr(config, "netns", None) is None, f"{name}: `netns` is for the lab's threads, not a node"


def test_the_lab_fabric_runs_the_bound_configs(tmp_path: Path):
    """The demo and the kernel tests start the daemons from lab/fabric.py, as threads or processes of their
    own: from the bound files, changed only where one machine is shared (an agent's namespace and state
    folder, the scene's gateway's namespace and no state), and as the lab's constants say."""
    from nvfabric.lab.fabric import HV, HV6, RR, RR_API_PORT, RR_API_TOKEN, Fabric, agent_config, rr_config
    from nvfabric.lab.gateway_scene import GW1, PUBLIC_POOL, TENANTS, gateway_config

    topology = load(DEFAULT_TOPOLOGY)
    for node, address in RR.items():
        bound = yaml.safe_load(topology.nodes[node].daemon_config.read_text())
        assert rr_config(topology, node) == bound
        assert rr_config(topology, node, 90, {"multiplier": 3})["neighbors"][0]["bfd"] == {"multiplier": 3}
        config = load_reflector(topology.nodes[node].daemon_config)
        assert (config.router_id, config.api.listen, config.api.token) == (address, f"127.0.0.1:{RR_API_PORT}",
                                                                           RR_API_TOKEN)
    for host in HV:
        lab = agent_config(topology, host, tmp_path, eor_timeout=60)
        bound = load_agent(topology.nodes[host].daemon_config)
        assert lab.eor_timeout == 60 and (lab.netns, lab.state_dir) == (f"hnv.{host}", tmp_path / host)
        assert dataclasses.replace(bound, netns=lab.netns, state_dir=lab.state_dir, eor_timeout=60) == lab
        assert [str(a) for a in bound.provider_addresses] == [HV[host], HV6[host]]
        assert {p.address for p in bound.route_reflectors} == set(RR.values())
    lab_gw = gateway_config(Fabric(topology, tmp_path))
    bound_gw = load_gateway(topology.nodes["gw1"].daemon_config)
    assert (lab_gw.netns, lab_gw.state_dir) == ("hnv.gw1", None)
    assert dataclasses.replace(bound_gw, netns=lab_gw.netns, state_dir=None) == lab_gw
    assert str(bound_gw.router_id) == GW1 and [str(p) for p in bound_gw.public_prefixes] == [PUBLIC_POOL]
    assert bound_gw.tenants == TENANTS  # lab/failover.py's gateways run these
    gw2 = load_gateway(topology.nodes["gw2"].daemon_config)
    assert gw2.standby and gw2.tenants == TENANTS


# -- the node image ---------------------------------------------------------------------------------------

def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Containerfile, continuation lines joined, comments dropped."""
    lines = [line for line in CONTAINERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "")
            for line in text.splitlines() if (parts := line.strip().split(None, 1))]


def test_the_containerfile_builds_from_debian_and_copies_what_exists():
    found = instructions()
    froms = [args for op, args in found if op == "FROM"]
    assert froms and all(f.split()[0] == "debian:bookworm-slim" for f in froms)
    copied = set()
    for op, args in found:
        if op == "COPY" and not args.startswith("--from"):
            *sources, _ = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
                copied.add(source.rstrip("/"))
    # every folder the wheel is built from (pyproject.toml's package-dir) is copied into the build stage
    package_dirs = set(re.findall(r'^"?nvfabric[\w.]*"?\s*=\s*"([\w/]+)"', (ROOT / "pyproject.toml").read_text(),
                                  re.M))
    assert package_dirs and package_dirs <= copied, package_dirs - copied
    assert "pyproject.toml" in copied and "README.md" in copied


def test_the_containerfile_entry_command_is_ours_and_installs_the_hosts_layout():
    found = dict((op, args) for op, args in instructions() if op in ("ENTRYPOINT", "CMD"))
    assert json.loads(found["ENTRYPOINT"]) == ["/usr/bin/tini", "--"]
    assert json.loads(found["CMD"]) == ["sleep", "infinity"]  # the daemons are started by the topology's exec
    runs = " ".join(args for op, args in instructions() if op == "RUN")
    assert "ln -s /opt/nvfabric/bin/nvfabric /usr/bin/nvfabric" in runs  # what the exec commands call
    assert "--no-index --find-links /tmp/wheels nvfabric" in runs  # our wheel, from the first stage


def apt_packages() -> list[str]:
    runs = [args for op, args in instructions() if op == "RUN" and "apt-get install" in args]
    names = []
    for run in runs:
        words = shlex.split(run.split("apt-get install", 1)[1].split("&&")[0])
        names += [w for w in words if not w.startswith("-")]
    return names


def test_the_debian_packages_the_image_installs_exist():
    if shutil.which("apt-cache") is None:
        pytest.skip("no apt-cache here: the package names cannot be checked")
    names = apt_packages()
    assert {"iproute2", "nftables", "conntrack", "conntrackd", "frr", "gobgpd", "iputils-ping", "tcpdump",
            "udhcpc", "isc-dhcp-client", "tini"} <= set(names)
    shown = subprocess.run(["apt-cache", "show", "--no-all-versions", *names], capture_output=True, text=True).stdout
    missing = sorted(set(names) - set(re.findall(r"^Package: (\S+)$", shown, re.M)))
    assert not missing, f"not in this machine's Debian archive (apt-get update?): {missing}"


def test_the_exec_commands_call_what_the_image_has():
    topology = load(DEFAULT_TOPOLOGY)
    names = set(apt_packages())
    # the first word of every exec command, and the programs they rely on, come from the image's packages
    provided = {"ip": "iproute2", "sysctl": "procps", "setsid": None, "sh": None}  # None: essential in Debian
    for node in topology.nodes.values():
        for argv in node.exec:
            program = PurePosixPath(argv[0]).name
            assert program in provided, f"node {node.name}: {program}: which package of the image has it?"
            assert provided[program] is None or provided[program] in names
