"""docs/deploy.md "The gateway VM image": the config drive's example is what the image reads. Its user-data
is cloud-config whose file is a gateway configuration the gateway's own reader takes, and its
network-config (version 2) configures every interface that configuration names. Fast, no VM: not marked
`image`."""

from __future__ import annotations

import re

import yaml

from nvfabric.gateway import config as gateway_config
from nvfabric.lab.peers import REPO


def blocks() -> list[str]:
    text = (REPO / "docs" / "deploy.md").read_text()
    section = text[text.index("## The gateway VM image"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```yaml\n(.*?)```", section, re.S)


def test_the_documented_config_drive_configures_a_gateway_and_its_interfaces() -> None:
    user_data = next(b for b in blocks() if b.startswith("#cloud-config"))
    network = yaml.safe_load(next(b for b in blocks() if b.startswith("version: 2")))
    files = {f["path"]: f for f in yaml.safe_load(user_data)["write_files"]}
    config = gateway_config.parse(yaml.safe_load(files["/etc/nvfabric/gateway.yaml"]["content"]))
    assert config.route_reflectors and config.api.token
    named = {*config.external.interfaces, *([config.sync.interface] if config.sync else [])}
    configured = {spec.get("set-name", name) for name, spec in network["ethernets"].items()}
    assert named <= configured, f"interfaces of gateway.yaml without a network-config entry: {named - configured}"
    # the underlay interface carries a provider address (the NVGRE side)
    addresses = {a.split("/")[0] for spec in network["ethernets"].values() for a in spec.get("addresses", [])}
    assert {str(a) for a in config.provider_addresses} <= addresses
    meta = yaml.safe_load(next(b for b in blocks() if b.startswith("instance-id")))
    assert meta["instance-id"] and meta["local-hostname"]
