"""Which devices may become a VM port: the kernel's facts about one device (vnet/kernel/interfaces.py, read in
a scratch namespace here: veth, bridge and addresses need no VRF or GRE) and the agent's decision
(hostagent/eligible.py), which names `interface` with 400 (never a port) or 409 (in use by the host)."""

from __future__ import annotations

import ipaddress
import os
import subprocess

import pytest

from nvfabric.hostagent.eligible import check_port_interface
from nvfabric.vnet.errors import ConflictError, ModelError
from nvfabric.vnet.kernel.interfaces import InterfaceFacts, read_interface

PA = ipaddress.ip_address("198.51.100.11")


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


@pytest.fixture
def namespace():
    name = f"nvf-ifaces-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip(name, "link", "add", "tap-ok", "type", "veth", "peer", "name", "vm-side")
        ip(name, "link", "add", "uplink", "type", "veth", "peer", "name", "uplink-peer")
        ip(name, "address", "add", f"{PA}/24", "dev", "uplink")
        ip(name, "link", "add", "br0", "type", "bridge")
        ip(name, "link", "add", "member", "type", "veth", "peer", "name", "member-peer")
        ip(name, "link", "set", "member", "master", "br0")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


async def test_the_kernel_facts_of_one_device(namespace):
    tap = await read_interface(namespace, "tap-ok")
    assert (tap.kind, tap.loopback, tap.master, tap.addresses) == ("veth", False, None, ())
    assert (await read_interface(namespace, "lo")).loopback
    assert PA in (await read_interface(namespace, "uplink")).addresses
    member = await read_interface(namespace, "member")
    assert (member.master, member.master_kind) == ("br0", "bridge")
    assert (await read_interface(namespace, "br0")).kind == "bridge"
    assert await read_interface(namespace, "absent") is None


@pytest.mark.parametrize("device, refusal, words", [
    ("lo", ModelError, "loopback"),
    ("br0", ModelError, "a bridge"),
    ("uplink", ConflictError, "provider address 198.51.100.11"),
    ("member", ConflictError, "enslaved to br0 (a bridge)"),
])
async def test_devices_that_are_not_ports_are_refused_naming_the_interface(namespace, device, refusal, words):
    facts = await read_interface(namespace, device)
    with pytest.raises(refusal) as err:
        check_port_interface(facts, [PA])
    assert err.value.field == "interface" and words in err.value.problem
    assert type(err.value) is refusal  # 409 for a device in use, 400 for one that never is a port


async def test_a_vm_tap_is_a_port_and_so_is_one_already_in_our_vrf(namespace):
    check_port_interface(await read_interface(namespace, "tap-ok"), [PA])
    check_port_interface(InterfaceFacts("tap1", "tun", False, "nvf-blue", "vrf", ()), [PA])
    for kind in ("vrf", "gretap", "ip6gretap", "vxlan", "bond"):
        with pytest.raises(ModelError):
            check_port_interface(InterfaceFacts("x0", kind, False, None, None, ()), [PA])
    with pytest.raises(ModelError, match="device of nvfabric"):
        check_port_interface(InterfaceFacts("nvf-gre4", "gretap", False, None, None, ()), [PA])
