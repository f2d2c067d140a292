"""Gateway sites at scale: one gateway with N tenants, one IPsec site each, against one charon that plays all N
sites (one connection per site address, route-based: each child with its own if_id, so N children with the same
selectors coexist in one namespace).

Reported for N: the gateway's start (its dataplane, charon started and given every connection) and the time until
every site's child SA is installed; memory: this process's RSS growth (the gateway's Python), the gateway's charon
RSS, the sites' charon RSS, the kernel's slab growth; one site change at N tenants (one tenant's site removed,
then added back: the put's time, the time until its SA is up again) with every other site's child SPIs checked
unchanged; and the throughput of one tunnel (iperf3 from tenant t0's VRF to a host behind its site, through the
XFRM interface and ESP) against plain routing between the same two namespaces (iperf3 to the site's outer
address), in the same run. In the VM (TCG): absolute throughput is the emulated CPU's; the ratio is the figure.

    flock /tmp/nvfabric-vm.lock .venv/bin/nvfabric lab kernel --vm always -- .venv/bin/python bench/gateway_sites.py 100
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvfabric.gateway.config import GatewayConfig  # noqa: E402
from nvfabric.gateway.gateway import Gateway  # noqa: E402
from nvfabric.gateway.strongswan import Charon, CharonFiles, SiteSa  # noqa: E402
from nvfabric.gateway.tenants import Tenant  # noqa: E402
from nvfabric.vnet.kernel.netns import enter_namespace  # noqa: E402

GW_EXT = "203.0.113.2"
SITE_BASE = int(ipaddress.ip_address("203.0.113.100"))  # site i: SITE_BASE + i (up to 150 sites)
SITE_HOST = "10.20.0.10"
VRF_SOURCE = "10.0.0.1"  # an address in tenant t0's VRF for iperf3 to start from
TIMEOUT = 600.0


def site_address(i: int) -> str:
    return str(ipaddress.ip_address(SITE_BASE + i))


def psk(i: int) -> str:
    return f"bench-site-key-{i:06d}-xxxxxxxx"


def tenant_body(i: int, with_site: bool = True) -> dict:
    sites = [{"name": "office", "remote_address": site_address(i), "psk": psk(i), "prefixes": ["10.20.0.0/24"]}]
    return {"name": f"t{i}", "route_targets": [f"65000:{i + 1}"],
            "subnets": [{"vsid": 10000 + i, "prefixes": ["10.0.0.0/24"]}], "sites": sites if with_site else []}


def sites_conf(n: int) -> str:
    """The sites' charon: site i answers the gateway from its own address with its own key, its child SA marked
    with if_id i + 1 (site 0's has the XFRM interface the throughput runs through)."""
    conns, secrets = [], []
    for i in range(n):
        a = site_address(i)
        conns.append(f"""  s{i} {{
    version = 2
    local_addrs = {a}
    remote_addrs = {GW_EXT}
    proposals = aes256gcm16-prfsha384-ecp384
    local {{
      auth = psk
      id = {a}
    }}
    remote {{
      auth = psk
      id = {GW_EXT}
    }}
    children {{
      s{i} {{
        local_ts = 10.20.0.0/24
        remote_ts = 10.0.0.0/24
        esp_proposals = aes256gcm16
        if_id_in = {i + 1}
        if_id_out = {i + 1}
      }}
    }}
  }}""")
        secrets.append(f"  ike-s{i} {{\n    id = {a}\n    secret = {psk(i)}\n  }}")
    return "connections {\n" + "\n".join(conns) + "\n}\nsecrets {\n" + "\n".join(secrets) + "\n}\n"


def sh(*argv: str, ns: str | None = None) -> str:
    cmd = [*(["ip", "netns", "exec", ns] if ns else []), *argv]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def kib(path: str, key: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def child_spis(sas: dict[str, SiteSa]) -> dict[str, tuple[tuple[str, str], ...]]:
    return {name: tuple(sorted((c.spi_in, c.spi_out) for c in sa.children if c.state == "INSTALLED"))
            for name, sa in sas.items()}


async def until_up(gw: Gateway, names: set[str], timeout: float = TIMEOUT) -> dict[str, SiteSa]:
    deadline = time.monotonic() + timeout
    while True:
        sas = await gw.site_sas()
        up = {n for n, s in child_spis(sas).items() if s}
        if names <= up:
            return sas
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(names - up)} of {len(names)} sites without an SA after {timeout:.0f} s")
        await asyncio.sleep(0.2)


def iperf(ns: str, dst: str, seconds: int, vrf: str | None = None) -> float:
    argv = ["iperf3", "-c", dst, "-t", str(seconds), "-O", "1", "-J", "--connect-timeout", "5000"]
    if vrf is not None:
        argv = ["ip", "vrf", "exec", vrf, *argv, "-B", VRF_SOURCE]
    result = json.loads(sh(*argv, ns=ns))
    return result["end"]["sum_received"]["bits_per_second"] / 1e6


async def run(n: int, gw_ns: str, sites_ns: str, seconds: int) -> dict:
    config = GatewayConfig.from_dict({
        "asn": 65000, "router_id": "198.51.100.21", "provider_addresses": ["198.51.100.21"],
        "external": {"interfaces": ["ext"], "next_hop4": "203.0.113.1", "address4": GW_EXT},
        "tenants": [tenant_body(i) for i in range(n)]})
    sites = Charon(sites_ns, CharonFiles.named(f"{sites_ns}-c"))
    await sites.start()
    conf = Path(f"/tmp/{sites_ns}-swanctl.conf")
    conf.write_text(sites_conf(n))
    sh("swanctl", "--load-all", "--noprompt", "--file", str(conf), "--uri", f"unix://{sites.files.socket}", ns=sites_ns)
    rss0, slab0 = kib("/proc/self/status", "VmRSS:"), kib("/proc/meminfo", "Slab:")
    gw = Gateway(config)
    try:
        t0 = time.perf_counter()
        await gw.start()
        started = time.perf_counter() - t0
        names = {f"t{i}.office" for i in range(n)}
        await until_up(gw, names)
        all_up = time.perf_counter() - t0
        assert gw._charon is not None and gw._charon._proc is not None and sites._proc is not None
        memory = {"agent_rss_mib": (kib("/proc/self/status", "VmRSS:") - rss0) / 1024,
                  "charon_rss_mib": kib(f"/proc/{gw._charon._proc.pid}/status", "VmRSS:") / 1024,
                  "sites_charon_rss_mib": kib(f"/proc/{sites._proc.pid}/status", "VmRSS:") / 1024,
                  "slab_mib": (kib("/proc/meminfo", "Slab:") - slab0) / 1024}
        # one site change at n tenants: the middle tenant's site removed, then added back
        k = n // 2
        before = child_spis(await gw.site_sas())
        t1 = time.perf_counter()
        await gw.put_tenant(Tenant.from_dict(tenant_body(k, with_site=False)))
        removed = time.perf_counter() - t1
        t1 = time.perf_counter()
        await gw.put_tenant(Tenant.from_dict(tenant_body(k)))
        added = time.perf_counter() - t1
        await until_up(gw, {f"t{k}.office"})
        added_up = time.perf_counter() - t1
        after = child_spis(await gw.site_sas())
        others = names - {f"t{k}.office"}
        untouched = sum(1 for name in others if after.get(name) == before.get(name))
        # throughput: tenant t0's tunnel against plain routing between the same namespaces
        tid = gw.tenant_id("t0")
        print(json.dumps({"tenants": n, "start_s": started, "all_up_s": all_up, **memory, "removed_s": removed,
                          "added_s": added, "added_up_s": added_up, "untouched": untouched}), flush=True)
        sh("ip", "addr", "replace", f"{VRF_SOURCE}/32", "dev", "nvf-t0", ns=gw_ns)  # (the subnet's gateway has it)
        sh("ip", "link", "add", "xs0", "type", "xfrm", "if_id", "1", ns=sites_ns)
        sh("ip", "link", "set", "xs0", "up", ns=sites_ns)
        sh("ip", "route", "add", "10.0.0.0/24", "dev", "xs0", ns=sites_ns)
        server = subprocess.Popen(["ip", "netns", "exec", sites_ns, "iperf3", "-s"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            time.sleep(1)  # iperf3 -s binding (a bench, not a test: a retry would hide nothing)
            tunnel = iperf(gw_ns, SITE_HOST, seconds, vrf="nvf-t0")
            plain = iperf(gw_ns, site_address(0), seconds)
        finally:
            server.terminate()
            server.wait(10)
        return {"tenants": n, "start_s": started, "all_up_s": all_up, **memory, "removed_s": removed,
                "added_s": added, "added_up_s": added_up, "untouched": untouched, "others": len(others),
                "tunnel_mbit": tunnel, "plain_mbit": plain, "table": tid}
    finally:
        await gw.stop()
        await sites.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tenants", type=int, nargs="?", default=100)
    p.add_argument("--seconds", type=int, default=10, help="length of each iperf3 run")
    args = p.parse_args()
    if not 1 <= args.tenants <= 150:
        p.error("tenants: 1..150 (one site address each in 203.0.113.100-249)")
    tag = f"gsb{time.time_ns() % 100000}"
    gw_ns, sites_ns = f"{tag}-gw", f"{tag}-sites"
    for ns in (gw_ns, sites_ns):
        sh("ip", "netns", "add", ns)
    try:
        for m in ("vrf", "ip_gre", "xfrm_interface", "cls_flower", "act_skbedit"):
            subprocess.run(["modprobe", m], check=False, capture_output=True)
        sh("ip", "link", "add", "ext", "netns", gw_ns, "type", "veth", "peer", "name", "e0", "netns", sites_ns)
        sh("ip", "addr", "add", f"{GW_EXT}/24", "dev", "ext", ns=gw_ns)
        sh("ip", "link", "set", "ext", "up", ns=gw_ns)
        sh("ip", "link", "set", "lo", "up", ns=gw_ns)
        sh("ip", "link", "set", "lo", "up", ns=sites_ns)
        sh("ip", "link", "set", "e0", "up", ns=sites_ns)
        sh("ip", "addr", "add", f"{SITE_HOST}/32", "dev", "lo", ns=sites_ns)
        for i in range(args.tenants):
            sh("ip", "addr", "add", f"{site_address(i)}/24", "dev", "e0", ns=sites_ns)
        enter_namespace(gw_ns)  # the gateway's netlink and nftables in its namespace (charon is started in it)
        r = asyncio.run(run(args.tenants, gw_ns, sites_ns, args.seconds))
        print(json.dumps(r), flush=True)
        print("| tenants (one site each) | gateway start (s) | every SA up (s) | gateway Python RSS growth (MiB) | "
              "gateway charon RSS (MiB) | sites' charon RSS (MiB) | kernel slab growth (MiB) | one site removed (s) | "
              "one site added (s) / its SA up (s) | other sites' SAs untouched | one tunnel (Mbit/s) | plain routing "
              "(Mbit/s) | tunnel / plain |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        print(f"| {r['tenants']} | {r['start_s']:.1f} | {r['all_up_s']:.1f} | {r['agent_rss_mib']:.1f} | "
              f"{r['charon_rss_mib']:.1f} | {r['sites_charon_rss_mib']:.1f} | {r['slab_mib']:.1f} | "
              f"{r['removed_s']:.3f} | {r['added_s']:.3f} / {r['added_up_s']:.1f} | {r['untouched']}/{r['others']} | "
              f"{r['tunnel_mbit']:.0f} | {r['plain_mbit']:.0f} | {r['tunnel_mbit'] / r['plain_mbit']:.2f} |",
              flush=True)
    finally:
        for ns in (gw_ns, sites_ns):
            subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
