"""The gateway VM image (deploy/gateway-image/, docs/deploy.md "The gateway VM image"), booted as a cloud
would: a copy-on-write overlay of the image, a config drive carrying /etc/nvfabric/gateway.yaml and the
network configuration (NoCloud, volume id `cidata`; and OpenStack's ConfigDrive, `config-2`), qemu under
TCG with its default firmware (SeaBIOS). Its first NIC is a tap in a network namespace where a real
`nvfabric rr` listens on the tap's address. Everything is checked from outside the VM: the gateway's API
answers with the drive's token, the reflector sees the gateway's session Established, the drive's tenant
is served. The image is built first if it is missing (`make gateway-image`; NVFABRIC_GATEWAY_IMAGE names
another one).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from nvfabric.lab import netns
from nvfabric.lab.peers import REPO, Lab, Process, RouteReflector, wait_for
from nvfabric.vnet.kernel.netns import inside

pytestmark = pytest.mark.image

IMAGE = Path(os.environ.get("NVFABRIC_GATEWAY_IMAGE", REPO / "build" / "gateway.qcow2"))
VM_LOCK = "/tmp/nvfabric-vm.lock"  # one VM at a time on the machine: the kernel phase takes it too
RR = "198.51.100.100"  # the reflector, on the tap: the VM's first NIC's other end
GW = "198.51.100.21"
TOKEN = "image-test-token"
API = f"http://{GW}:8510"
NICS = (("tap0", "52:54:00:00:00:21"), ("tap1", "52:54:00:00:01:21"))  # eth0, eth1 in the VM
# TCG emulates every instruction: a first boot takes about a minute here, more when other jobs load the
# machine. A generous bound; the test measures and prints what it took.
BOOT_TIMEOUT = 600.0


def gateway_config() -> dict[str, Any]:
    return {
        "asn": 65000,
        "router_id": GW,
        "provider_addresses": [GW],
        "route_reflectors": [{"address": RR}],
        "external": {"interfaces": ["eth1"]},
        "api": {"listen": "0.0.0.0:8510", "token": TOKEN},
        "state_dir": "/var/lib/nvfabric",
        "hold_time": 9,
        # one tenant: its VRF and NVGRE device are made by the image's kernel (the cloud flavour has both)
        "tenants": [{"name": "blue", "route_targets": ["65000:1"],
                     "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}]}],
    }


def user_data() -> str:
    """cloud-init user-data as docs/deploy.md shows it: the gateway's configuration as a file."""
    return "#cloud-config\n" + yaml.safe_dump({
        "write_files": [{"path": "/etc/nvfabric/gateway.yaml", "permissions": "0600",
                         "content": yaml.safe_dump(gateway_config(), sort_keys=False)}],
    }, sort_keys=False)


def network_config() -> str:
    """network-config v2: eth0 towards the fabric (the reflector), eth1 the external side (no address)."""
    return yaml.safe_dump({
        "version": 2,
        "ethernets": {
            "eth0": {"match": {"macaddress": "52:54:00:00:00:21"}, "set-name": "eth0", "addresses": [f"{GW}/24"]},
            "eth1": {"match": {"macaddress": "52:54:00:00:01:21"}, "set-name": "eth1"},
        },
    }, sort_keys=False)


@pytest.fixture(scope="module")
def image() -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, taps and the image build")
    for tool in ("qemu-system-x86_64", "qemu-img", "cloud-localds", "genisoimage"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing: make system")
    if not IMAGE.exists():
        subprocess.run([str(REPO / "deploy" / "gateway-image" / "build.sh"), str(IMAGE)], check=True)
    return IMAGE


def get(ns: str, path: str) -> Any:
    request = urllib.request.Request(API + path, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with inside(ns), urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, json.JSONDecodeError):
        return None


def taps(ns: str) -> None:
    """The VM's NICs' other ends, made before qemu (which only opens them): tap0 carries the reflector's
    address, tap1 stands for the external side."""
    for tap, _mac in NICS:
        netns.run(["ip", "-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"])
        netns.run(["ip", "-n", ns, "link", "set", tap, "up"])
    netns.run(["ip", "-n", ns, "addr", "add", f"{RR}/24", "dev", "tap0"])


def nocloud_drive(tmp: Path) -> Path:
    """A NoCloud drive (cloud-localds: an ISO with volume id `cidata`), as docs/deploy.md shows it."""
    (tmp / "user-data").write_text(user_data())
    (tmp / "meta-data").write_text("instance-id: gw-image-test\nlocal-hostname: gw1\n")
    (tmp / "network-config").write_text(network_config())
    seed = tmp / "cidata.iso"
    subprocess.run(["cloud-localds", "-N", str(tmp / "network-config"), str(seed),
                    str(tmp / "user-data"), str(tmp / "meta-data")], check=True)
    return seed


def configdrive(tmp: Path) -> Path:
    """An OpenStack config drive (volume id `config-2`, openstack/latest/): the same user-data, the network
    in OpenStack's network_data.json, as Nova writes it."""
    top = tmp / "config-2"
    latest = top / "openstack" / "latest"
    latest.mkdir(parents=True)
    (latest / "user_data").write_text(user_data())
    (latest / "meta_data.json").write_text(json.dumps({"uuid": "gw-image-test", "hostname": "gw1", "name": "gw1"}))
    (latest / "network_data.json").write_text(json.dumps({
        "links": [{"id": f"tap{i}", "type": "phy", "ethernet_mac_address": mac, "mtu": 1500}
                  for i, (_tap, mac) in enumerate(NICS)],
        "networks": [{"id": "underlay", "type": "ipv4", "link": "tap0", "ip_address": GW,
                      "netmask": "255.255.255.0"}],
        "services": [],
    }))
    seed = tmp / "config-2.iso"
    subprocess.run(["genisoimage", "-quiet", "-o", str(seed), "-V", "config-2", "-r", "-J", str(top)], check=True)
    return seed


DRIVES = {"nocloud": nocloud_drive, "configdrive": configdrive}


def boot(lab: Lab, ns: str, image: Path, serial: Path, drive: str) -> Process:
    """qemu with the overlay and the config drive, its NICs on the taps in `ns`."""
    overlay = lab.tmp / "gateway.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image), str(overlay)],
                   check=True)
    seed = DRIVES[drive](lab.tmp)
    nics: list[str] = []
    for i, (tap, mac) in enumerate(NICS):
        nics += ["-netdev", f"tap,id=n{i},ifname={tap},script=no,downscript=no",
                 "-device", f"virtio-net-pci,netdev=n{i},mac={mac}"]
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "1024", "-smp", "2", "-display", "none",
            "-monitor", "none", "-serial", f"file:{serial}",
            "-drive", f"file={overlay},if=virtio,format=qcow2",
            "-drive", f"file={seed},if=virtio,format=raw,readonly=on", *nics]
    proc = Process(ns, argv, lab.tmp / "qemu.log")
    lab.processes.append(proc)
    return proc


@pytest.mark.parametrize("drive", sorted(DRIVES))
def test_gateway_image_boots_with_a_config_drive_and_peers_with_the_reflector(image: Path, lab: Lab,
                                                                              drive: str) -> None:
    ns = lab.namespace("fab")
    taps(ns)
    rr = RouteReflector(lab, ns, "rr", {
        "asn": 65000, "router_id": RR, "hold_time": 9, "listen": {"address": RR, "port": 179},
        "neighbors": [{"prefix": "198.51.100.0/24", "asn": 65000, "client": True}],
    })
    serial = lab.tmp / "serial.log"
    with open(VM_LOCK, "w") as lock:
        waited = time.monotonic()
        fcntl.flock(lock, fcntl.LOCK_EX)
        start = time.monotonic()
        waited = start - waited
        vm = boot(lab, ns, image, serial, drive)

        seen: dict[str, float] = {}  # what was first seen when, in seconds from the qemu start

        def booted() -> bool:
            """Both the API and the reflector's view polled each round: each time is measured on its own."""
            if not vm.alive():
                raise AssertionError(f"qemu exited: {vm.output()[-2000:]}")
            now = time.monotonic() - start
            if "api" not in seen and get(ns, "/v1/status") is not None:
                seen["api"] = now
            if "established" not in seen and rr.established(GW):
                seen["established"] = now
            return len(seen) == 2

        try:
            wait_for(booted, BOOT_TIMEOUT, interval=1.0, what="the gateway's API and its session at the rr")
            status = wait_for(lambda: [s for s in (get(ns, "/v1/status") or {}).get("sessions", [])
                                       if s["peer"] == RR and s["state"] == "established"],
                              60, interval=1.0, what="the gateway's own view of the session")
            tenants = get(ns, "/v1/tenants")
        except AssertionError:
            print(f"first seen (s from the qemu start): {seen}")
            print(f"==== serial console ({serial})\n{serial.read_text(errors='replace')[-20000:]}")
            raise
        finally:
            vm.stop(grace=10.0)
    assert status[0]["kind"] == "reflector"
    assert [t["name"] for t in tenants["tenants"]] == ["blue"], tenants
    print(f"tenant blue in the VM: {tenants['tenants'][0].get('status')}")
    print(f"gateway image {image.name}, {drive} drive: boot to API {seen['api']:.1f} s, "
          f"boot to Established {seen['established']:.1f} s (qemu TCG, from the qemu start; "
          f"{waited:.0f} s waiting for another VM's lock before)")
