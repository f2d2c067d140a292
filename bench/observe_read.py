"""How long the agent's full kernel read (vnet.kernel.observe) takes over N remote-CA routes, against the same
read in an earlier commit of this repository; Python's share, on the host's kernel (no VRF/GRE needed).

    sudo .venv/bin/python bench/observe_read.py --count 100000 --against main

A fresh namespace with a veth standing for the NVGRE device and N encap routes of protocol 78 in one table
(`ip -batch`); each version reads it 3 times, twice alternating, and the best is kept. Both must return the
same objects.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import ipaddress
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from nvfabric.vnet.kernel import observe as ours
from nvfabric.vnet.kernel.netns import RtnlSocket, enter_namespace

NS = "nvf-observe-bench"
REPO = Path(__file__).resolve().parents[1]


def earlier(rev: str, where: Path) -> ModuleType:
    """vnet/kernel/observe.py and messages.py of `rev`, imported under other names."""
    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True, capture_output=True,
                              text=True).stdout

    def load(name: str, text: str) -> ModuleType:
        path = where / f"{name.rsplit('.', 1)[1]}.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    load("nvfabric.vnet.kernel.earlier_messages", show("vnet/kernel/messages.py"))
    return load("nvfabric.vnet.kernel.earlier_observe", show("vnet/kernel/observe.py").replace(
        "from nvfabric.vnet.kernel import messages as m", "from nvfabric.vnet.kernel import earlier_messages as m"))


def fill(count: int) -> None:
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    subprocess.run(["ip", "-n", NS, "link", "add", "nvf-gre4", "type", "veth", "peer", "name", "nvf-peer"], check=True)
    subprocess.run(["ip", "-n", NS, "link", "set", "nvf-gre4", "up"], check=True)
    base = int(ipaddress.IPv4Address("10.64.0.0"))
    lines = [f"route add {ipaddress.IPv4Address(base + j)}/32 encap ip id {7001 << 8} dst 198.51.97.{j % 250} "
             "ttl 64 key dev nvf-gre4 table 1000 proto 78" for j in range(count)]
    subprocess.run(["ip", "-n", NS, "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True)


async def measure(versions: dict[str, ModuleType]) -> dict[str, float]:
    sock = RtnlSocket(None)
    best: dict[str, float] = {}
    for _ in range(2):
        for name, module in versions.items():
            for _ in range(3):
                started = time.perf_counter()
                await module.observe(sock, [])
                best[name] = min(best.get(name, 1e9), time.perf_counter() - started)
    found = [{o for o in await module.observe(sock, [])} for module in versions.values()]
    assert all(f == found[0] for f in found), "the versions read different objects"
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100000)
    parser.add_argument("--against", default="main", help="the commit to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        versions = {args.against: earlier(args.against, Path(tmp)), "this tree": ours}
        fill(args.count)
        try:
            enter_namespace(NS)
            best = asyncio.run(measure(versions))
        finally:
            subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    print(f"observe of {args.count:,} encap routes, best of 6: " +
          ", ".join(f"{name} {seconds:.3f} s" for name, seconds in best.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
