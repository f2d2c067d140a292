"""The tenants' IPsec sites on a real kernel (VM phase): tests/kernel/test_gateway_x.py's gateway (blue and red,
the SAME addresses: vb and vr are both 10.0.0.5 and 10.0.0.6), and two sites on the internet side, one per
tenant, each a namespace running its own charon configured with swanctl.conf as an on-premises router would
be (policy-based, 10.20.0.0/24 <-> 10.0.0.0/24): the SAME site prefix and site host 10.20.0.10 at both. A site
accepts ESP from the gateway's external address only, so an ESP packet the tenant's SNAT rewrote would be lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nvfabric.gateway import sitebgp, sites as sitemodel
from nvfabric.gateway.strongswan import Charon, CharonFiles, SiteSa
from nvfabric.gateway.tenants import Tenant
from nvfabric.lab import netns, spoof
from nvfabric.lab.daemons import LoopThread, in_ns
from nvfabric.lab.fabric import wait_for
from nvfabric.lab.peers import Frr, Lab as PeerLab
from nvfabric.lab.probe import Server, connect_retrying
from nvfabric.vnet.errors import KernelError
from nvfabric.vnet.kernel.netns import RtnlSocket
from nvfabric.vnet.kernel.objects import GreTunnel, LocalPortRoute, TunnelAddress, XfrmInterface
from nvfabric.vnet.kernel.observe import observe
from tests.kernel.test_gateway_x import BLUE, GW_PA, NS, RED, RMAC, Lab, diagnostics, lab  # noqa: F401 - the fixture
from tests.certs import Pki
from tests.nvgre import ETH_IPV4, ROUTER_MAC, gre

pytestmark = pytest.mark.kernel

GW_EXT = "203.0.113.2"
SITE_HOST = ("10.20.0.10", 9000)
TAG = f"gs{os.getpid() % 100000}"
PSK = {"blue": "blue-site-key-0123456789", "red": "red-site-key-9876543210"}
SITE = {"blue": ("sa", "203.0.113.50"), "red": ("sb", "203.0.113.51")}  # tenant -> (namespace, address)
# eBGP across the tunnel: the gateway's and the site router's addresses inside it, and a site network that is
# announced over BGP only (not in the site's static prefixes)
BGP_LOCAL, BGP_PEER, BGP_AS = "10.255.0.1", "10.255.0.2", 65020
BGP_LAN, BGP_HOST = "10.30.0.0/24", ("10.30.0.10", 9000)


def site_ns(tenant: str) -> str:
    return f"{TAG}-{SITE[tenant][0]}"


def swanctl_conf(tenant: str) -> str:
    """What the site's own administrator writes: policy-based, its prefixes to the tenant's subnet, and its BGP
    router's address to the gateway's inside the tunnel (test_a_site_routes_over_ebgp)."""
    address = SITE[tenant][1]
    return f"""connections {{
    gateway {{
        version = 2
        local_addrs = {address}
        remote_addrs = {GW_EXT}
        proposals = aes256gcm16-prfsha384-ecp384
        local {{
            auth = psk
            id = {address}
        }}
        remote {{
            auth = psk
            id = {GW_EXT}
        }}
        children {{
            gateway {{
                local_ts = 10.20.0.0/24, {BGP_LAN}, {BGP_PEER}/32
                remote_ts = 10.0.0.0/24, {BGP_LOCAL}/32
                esp_proposals = aes256gcm16
            }}
        }}
    }}
}}
secrets {{
    ike-gateway {{
        id = {GW_EXT}
        secret = {PSK[tenant]}
    }}
}}
"""


def with_site(body: dict, tenant: str, psk: str) -> Tenant:
    site = {"name": "office", "remote_address": SITE[tenant][1], "psk": psk, "prefixes": ["10.20.0.0/24"]}
    return Tenant.from_dict({**body, "sites": [site]})


@dataclass
class Sites:
    lab: Lab
    charons: dict[str, Charon]  # tenant -> its site's charon
    threads: dict[str, LoopThread]

    def put(self, tenant: Tenant) -> None:
        self.lab.gateway.call(lambda g: g.put_tenant(tenant), timeout=120)

    def gateway_sas(self) -> dict[str, SiteSa]:
        return self.lab.gateway.call(lambda g: g.site_sas(), timeout=60)

    def site_sas(self, tenant: str) -> dict[str, SiteSa]:
        return self.threads[tenant].run(self.charons[tenant].sas(), timeout=60)


def established(sas: dict[str, SiteSa], name: str) -> SiteSa | None:
    sa = sas.get(name)
    if sa is None or sa.state != "ESTABLISHED" or not any(c.state == "INSTALLED" for c in sa.children):
        return None
    return sa


@pytest.fixture(scope="module")
def sites(lab: Lab) -> Iterator[Sites]:  # noqa: F811 - the imported fixture
    netns.run(["modprobe", "xfrm_interface"], check=False)
    threads: dict[str, LoopThread] = {}
    charons: dict[str, Charon] = {}
    try:
        netns.run(["ip", "netns", "exec", NS["inet"], "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        netns.run(["ip", "-n", NS["gw"], "route", "add", "203.0.113.48/28", "via", "203.0.113.1"])
        for tenant, (short, address) in SITE.items():
            ns = site_ns(tenant)
            netns.create(ns)
            netns.ip_batch([netns.veth_line(NS["inet"], short, ns, "e0")])
            netns.ip_batch(["link set lo up", f"addr add {SITE_HOST[0]}/32 dev lo", f"addr add {address}/32 dev e0",
                            "link set e0 up", "route add 203.0.113.1/32 dev e0",
                            "route add default via 203.0.113.1"], ns)
            netns.ip_batch([f"link set {short} up", f"route add {address}/32 dev {short}"], NS["inet"])
            rules = f"/tmp/{TAG}-{short}.nft"
            with open(rules, "w") as f:
                f.write("table inet site {\n chain input {\n  type filter hook input priority 0;\n"
                        f"  meta l4proto esp ip saddr != {GW_EXT} counter drop\n }}\n}}\n")
            netns.run(["ip", "netns", "exec", ns, "nft", "-f", rules])
            threads[tenant] = LoopThread(ns)
            charons[tenant] = Charon(ns, CharonFiles.named(f"{TAG}-{short}"))
            threads[tenant].run(charons[tenant].start(), timeout=60)
            conf = f"/tmp/{TAG}-{short}-swanctl.conf"
            with open(conf, "w") as f:
                f.write(swanctl_conf(tenant))
            netns.run(["ip", "netns", "exec", ns, "swanctl", "--load-all", "--noprompt", "--file", conf,
                       "--uri", f"unix://{charons[tenant].files.socket}"])
        yield Sites(lab, charons, threads)
    finally:
        for tenant, thread in threads.items():
            try:
                thread.run(charons[tenant].stop(), timeout=30)
            finally:
                thread.close()
        for tenant in SITE:
            netns.destroy(site_ns(tenant))


def test_each_tenant_reaches_only_its_own_site(sites: Sites) -> None:
    servers = {t: Server(site_ns(t), SITE_HOST, f"site-{t} ") for t in SITE}
    try:
        _checks(sites)
    except AssertionError:
        print(diagnostics())
        for t in SITE:
            for cmd in ("ip -s xfrm state", "ip xfrm policy", "nft list ruleset"):
                print(f"== site {t}: {cmd}\n", netns.run(["ip", "netns", "exec", site_ns(t), *cmd.split()],
                                                         check=False).output[-2000:])
        raise
    finally:
        for s in servers.values():
            s.close()


def _checks(sites: Sites) -> None:
    gw = sites.lab.gateway.gateway
    ids = {n: gw.tenant_id(n) for n in ("blue", "red")}
    # blue with its site's key, red with a wrong one: both loaded at once, so blue's tunnel coming up bounds the
    # time red's had to come up too
    sites.put(with_site(BLUE, "blue", PSK["blue"]))
    sites.put(with_site(RED, "red", "not-the-site-key-at-all"))
    blue_site = with_site(BLUE, "blue", PSK["blue"]).sites[0]
    with RtnlSocket(NS["gw"]) as sock:
        seen = asyncio.run(observe(sock))
    dev = sitemodel.device_name(ids["blue"], blue_site)
    assert XfrmInterface(dev, sitemodel.if_id(ids["blue"], blue_site), "nvf-blue") in seen
    assert LocalPortRoute(ids["blue"], "10.20.0.0/24", dev) in seen
    wait_for(lambda: established(sites.gateway_sas(), "blue.office"), 90, "blue's site SA")
    # blue's VMs reach blue's site, unNATed (the site sees 10.0.0.5); red's same addresses do not
    s, line = connect_retrying(NS["vb"], SITE_HOST, ("10.0.0.5", 0))
    s.close()
    assert line.startswith("site-blue 10.0.0.5:"), line
    (status,) = sites.lab.gateway.call(lambda g: g.site_status("blue"))
    assert (status["device"], status["sa"]["state"], status["sa"]["remote"]) == (dev, "ESTABLISHED", SITE["blue"][1])
    assert any(c["bytes_out"] > 0 and c["bytes_in"] > 0 for c in status["sa"]["children"]), status
    assert established(sites.gateway_sas(), "red.office") is None
    assert established(sites.site_sas("red"), "gateway") is None
    with pytest.raises(ConnectionError):
        connect_retrying(NS["vr"], SITE_HOST, ("10.0.0.5", 0), tries=1)
    # red gets the right key: its site comes up, and red's 10.0.0.5 reaches red's site, not blue's
    sites.put(with_site(RED, "red", PSK["red"]))
    wait_for(lambda: established(sites.gateway_sas(), "red.office"), 90, "red's site SA")
    s, line = connect_retrying(NS["vr"], SITE_HOST, ("10.0.0.5", 0))
    s.close()
    assert line.startswith("site-red 10.0.0.5:"), line
    s, line = connect_retrying(NS["vb"], SITE_HOST, ("10.0.0.6", 0))
    s.close()
    assert line.startswith("site-blue 10.0.0.6:"), line
    # a proposal charon refuses (the model checks only its syntax): refused like a kernel refusal, blue as it was;
    # then red's site removed: blue's child SA is the same one throughout (its SPIs unchanged), and still carries
    # blue's traffic
    before = established(sites.gateway_sas(), "blue.office")
    assert before is not None
    good = with_site(BLUE, "blue", PSK["blue"])
    bad = Tenant.from_dict({**good.as_dict(), "sites": [{**good.sites[0].as_dict(), "ike_proposals": ["aes999-x"]}]})
    with pytest.raises(KernelError, match="load-conn"):
        sites.put(bad)
    assert gw.tenants["blue"] == good
    sites.put(Tenant.from_dict(RED))
    wait_for(lambda: "red.office" not in sites.gateway_sas(), 60, "red's SA ended")
    after = established(sites.gateway_sas(), "blue.office")
    assert after is not None and [(c.spi_in, c.spi_out) for c in after.children] == \
        [(c.spi_in, c.spi_out) for c in before.children], (before, after)
    state = netns.run(["ip", "-n", NS["gw"], "xfrm", "state"]).output
    assert all(f"spi 0x{c.spi_in}" in state and f"spi 0x{c.spi_out}" in state for c in after.children), state
    with RtnlSocket(NS["gw"]) as sock:
        seen = asyncio.run(observe(sock))
    assert [o.vrf for o in seen if isinstance(o, XfrmInterface)] == ["nvf-blue"]
    with pytest.raises(ConnectionError):
        connect_retrying(NS["vr"], SITE_HOST, ("10.0.0.5", 0), tries=1)
    s, line = connect_retrying(NS["vb"], SITE_HOST, ("10.0.0.5", 0))
    s.close()
    assert line.startswith("site-blue 10.0.0.5:"), line


# ---------------------------------------------------------------------------------------------- certificates
# Red's site again, now authenticated by certificates of red's own CA (made with pki at test time): its
# administrator's swanctl directory holds its key, its certificate and red's CA; the gateway's red site holds the
# gateway's certificate for red, its key and red's CA.
GW_RED_DN, SITE_RED_DN = "C=CH, O=red, CN=gateway", "C=CH, O=red, CN=office"
CERT_HOST = (SITE_HOST[0], 9001)  # the site's host, a port of its own (a closed Server may still hold 9000)


def cert_swanctl_conf(gateway_dn: str) -> str:
    """Red's site's swanctl.conf (the same selectors as with its psk), authenticated by certificates."""
    address = SITE["red"][1]
    conf = swanctl_conf("red")
    conf = conf.replace(f"auth = psk\n            id = {address}", "auth = pubkey\n            certs = site.crt")
    conf = conf.replace(f"auth = psk\n            id = {GW_EXT}",
                        f"auth = pubkey\n            id = \"{gateway_dn}\"\n            cacerts = ca.crt")
    conf = conf[:conf.index("secrets {")]
    assert "psk" not in conf, conf
    return conf


def test_a_site_with_certificates_carries_its_tenants_traffic(sites: Sites, tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    ca = pki.ca("red-ca", "C=CH, O=red, CN=red CA")
    gateway, site = pki.issue(ca, "gateway", GW_RED_DN), pki.issue(ca, "site", SITE_RED_DN)
    swanctl = tmp_path / "site"
    for sub, source in (("ecdsa", site.key), ("x509", site.cert), ("x509ca", ca.cert)):
        (swanctl / sub).mkdir(parents=True)
        (swanctl / sub / f"{'ca' if sub == 'x509ca' else 'site'}{source.suffix}").write_bytes(source.read_bytes())
    (swanctl / "swanctl.conf").write_text(cert_swanctl_conf(GW_RED_DN))
    netns.run(["ip", "netns", "exec", site_ns("red"), "swanctl", "--load-all", "--noprompt", "--file",
               str(swanctl / "swanctl.conf"), "--uri", f"unix://{sites.charons['red'].files.socket}"])
    blue_before = established(sites.gateway_sas(), "blue.office")
    body = {"name": "office", "remote_address": SITE["red"][1], "auth": "certificate", "prefixes": ["10.20.0.0/24"],
            "certificate": gateway.cert_pem, "private_key": gateway.key_pem, "ca_certificates": [ca.cert_pem],
            "remote_id": SITE_RED_DN}
    server = Server(site_ns("red"), CERT_HOST, "site-red ")
    try:
        sites.put(Tenant.from_dict({**RED, "sites": [body]}))
        wait_for(lambda: established(sites.gateway_sas(), "red.office"), 90, "red's site SA by certificates")
        s, line = connect_retrying(NS["vr"], CERT_HOST, ("10.0.0.5", 0))
        s.close()
        assert line.startswith("site-red 10.0.0.5:"), line
        (status,) = [s for s in sites.lab.gateway.call(lambda g: g.site_status("red")) if s["name"] == "office"]
        assert status["certificates"]["remote_id"] == SITE_RED_DN and status["sa"]["state"] == "ESTABLISHED"
        sites.put(Tenant.from_dict(RED))
        wait_for(lambda: "red.office" not in sites.gateway_sas(), 60, "red's SA ended")
        if blue_before is not None:  # blue's SA untouched by red's coming and going
            after = established(sites.gateway_sas(), "blue.office")
            assert after is not None and [(c.spi_in, c.spi_out) for c in after.children] == \
                [(c.spi_in, c.spi_out) for c in blue_before.children]
    except AssertionError:
        print(diagnostics())
        print(netns.run(["ip", "netns", "exec", site_ns("red"), "swanctl", "--list-sas", "--uri",
                         f"unix://{sites.charons['red'].files.socket}"], check=False).output[-3000:])
        raise
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------- a GRE site
# Blue's second site, `depot`: plain GRE, as a provider's router would have it (`ip link add type gre`), in one
# more namespace on the internet side; its host 10.40.0.10. Forged GRE comes from the internet namespace, with
# the site's address or a stranger's (.53, routed to the site's namespace) as source.
GRE_NS = f"{TAG}-sg"
GRE_SITE, STRANGER = "203.0.113.52", "203.0.113.53"
GRE_HOST = ("10.40.0.10", 9000)
GRE_KEY = 77
VM_PORT = ("10.0.0.5", 7777)  # a UDP socket of blue's VM, for the forged packets


def with_gre_site(current: Tenant, key: int | None) -> Tenant:
    """Blue as it is (its IPsec site kept: untouched by a GRE site's coming and going), with `depot` or not."""
    body = current.as_dict()
    others = [s for s in body["sites"] if s["name"] != "depot"]
    depot = [] if key is None else [{"name": "depot", "kind": "gre", "remote_address": GRE_SITE, "key": key,
                                     "prefixes": ["10.40.0.0/24"], "slot": 2}]
    return Tenant.from_dict({**body, "sites": others + depot})


def forged(key: int, text: str, nvgre: bool = False) -> bytes:
    """GRE (from its header on) carrying a UDP datagram from the site's host to blue's VM; `nvgre`: as NVGRE
    (protocol 0x6558, an inner frame to the router MAC) instead of IP in GRE."""
    packet = spoof.ipv4(GRE_HOST[0], VM_PORT[0], socket.IPPROTO_UDP,
                        spoof.udp4(GRE_HOST[0], VM_PORT[0], 5555, VM_PORT[1], text.encode()))
    if nvgre:
        return gre(key) + spoof.ethernet(ROUTER_MAC, "02:00:00:00:cc:01", ETH_IPV4, packet)
    return gre(key, proto=ETH_IPV4) + packet


def gre_tunnels() -> list[GreTunnel]:
    with RtnlSocket(NS["gw"]) as sock:
        return [o for o in asyncio.run(observe(sock)) if isinstance(o, GreTunnel)]


def site4() -> str:
    """The GRE sites' addresses the gateway's decapsulation table lets through, as nft lists them."""
    return netns.run(["ip", "netns", "exec", NS["gw"], "nft", "list", "set", "inet", "nvfabric", "site4"]).output


def ifindex(ns: str, dev: str) -> int:
    return json.loads(netns.run(["ip", "-n", ns, "-j", "link", "show", "dev", dev]).output)[0]["ifindex"]


@pytest.fixture(scope="module")
def gre_site(sites: Sites) -> Iterator[str]:
    netns.create(GRE_NS)
    try:
        netns.ip_batch([netns.veth_line(NS["inet"], "sg", GRE_NS, "e0")])
        netns.ip_batch(["link set lo up", f"addr add {GRE_HOST[0]}/32 dev lo", f"addr add {GRE_SITE}/32 dev e0",
                        f"addr add {STRANGER}/32 dev e0", "link set e0 up", "route add 203.0.113.1/32 dev e0",
                        "route add default via 203.0.113.1",
                        f"link add gs type gre local {GRE_SITE} remote {GW_EXT} key {GRE_KEY} ttl 64",
                        "link set gs up", "route add 10.0.0.0/24 dev gs"], GRE_NS)
        netns.ip_batch(["link set sg up", f"route add {GRE_SITE}/32 dev sg", f"route add {STRANGER}/32 dev sg"],
                       NS["inet"])
        yield GRE_NS
    finally:
        netns.destroy(GRE_NS)


def test_a_gre_site_reaches_its_tenant_only_and_a_strangers_gre_goes_nowhere(sites: Sites, gre_site: str) -> None:
    server = Server(gre_site, GRE_HOST, "gre-site ")
    try:
        _gre_checks(sites, gre_site)
    except AssertionError:
        print(diagnostics())
        print(netns.run(["ip", "netns", "exec", gre_site, "ip", "-s", "-d", "link", "show", "gs"], check=False).output)
        raise
    finally:
        server.close()


def _gre_checks(sites: Sites, ns: str) -> None:
    gw = sites.lab.gateway.gateway
    tid = gw.tenant_id("blue")
    ipsec_before = established(sites.gateway_sas(), "blue.office")  # None when run alone
    sites.put(with_gre_site(gw.tenants["blue"], GRE_KEY))
    dev = sitemodel.device_name(tid, gw.tenants["blue"].sites[-1])
    assert gre_tunnels() == [GreTunnel(dev, "nvf-blue", GW_EXT, GRE_SITE, GRE_KEY)]
    assert GRE_SITE in site4()
    # blue's VM reaches the site's host through the tunnel, unNATed; red's same address does not
    s, line = connect_retrying(NS["vb"], GRE_HOST, ("10.0.0.5", 0))
    s.close()
    assert line.startswith("gre-site 10.0.0.5:"), line
    with pytest.raises(ConnectionError):
        connect_retrying(NS["vr"], GRE_HOST, ("10.0.0.5", 0), tries=1)
    # forged GRE to the gateway: a wrong key, a stranger's source, NVGRE from the site's address; then one with the
    # site's address and key, which plain GRE cannot tell from the site's own (docs/gateway.md): it arrives, and
    # what was sent before it did not
    counters = sites.lab.gateway.call(lambda g: g.decap_counters())
    vm = in_ns(NS["vb"], lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    # sent from the internet's router, not the site: whoever can send there with the site's address as source
    # (IPPROTO_RAW: the outer header is ours, any source)
    raw = in_ns(NS["inet"], lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW))

    def send(src: str, gre_packet: bytes) -> None:
        raw.sendto(spoof.ipv4(src, GW_EXT, socket.IPPROTO_GRE, gre_packet), (GW_EXT, 0))

    try:
        vm.bind(VM_PORT)
        vm.settimeout(0.5)
        send(GRE_SITE, forged(GRE_KEY + 1, "wrong key"))
        send(STRANGER, forged(GRE_KEY, "stranger"))
        send(GRE_SITE, forged(5001 << 8, "nvgre from the site", nvgre=True))
        got: list[str] = []

        def control() -> bool:
            send(GRE_SITE, forged(GRE_KEY, "site address and key"))
            try:
                got.append(vm.recv(200).decode())
            except TimeoutError:
                pass
            return "site address and key" in got

        wait_for(control, 30, "the forged packet with the site's address and key")
        assert set(got) == {"site address and key"}, got
    finally:
        vm.close()
        raw.close()
    after = sites.lab.gateway.call(lambda g: g.decap_counters())
    # what no site's tunnel takes (a wrong key, a stranger's source, NVGRE): judged by the NVGRE checks, from no
    # provider address
    assert after["unknown_pa"] - counters["unknown_pa"] >= 3, (counters, after)
    # a new key at both ends: the tunnel changed in place (same device), traffic flows again
    before = ifindex(NS["gw"], dev)
    sites.put(with_gre_site(gw.tenants["blue"], GRE_KEY + 1))
    netns.run(["ip", "-n", ns, "link", "set", "gs", "type", "gre", "local", GRE_SITE, "remote", GW_EXT,
               "key", str(GRE_KEY + 1), "ttl", "64"])
    assert gre_tunnels() == [GreTunnel(dev, "nvf-blue", GW_EXT, GRE_SITE, GRE_KEY + 1)]
    assert ifindex(NS["gw"], dev) == before
    s, line = connect_retrying(NS["vb"], GRE_HOST, ("10.0.0.6", 0))
    s.close()
    assert line.startswith("gre-site 10.0.0.6:"), line
    # the site removed: no tunnel, its address no longer let through; blue's IPsec site kept its SA throughout
    sites.put(with_gre_site(gw.tenants["blue"], None))
    assert gre_tunnels() == []
    assert GRE_SITE not in site4()
    with pytest.raises(ConnectionError):
        connect_retrying(NS["vb"], GRE_HOST, ("10.0.0.5", 0), tries=1)
    if ipsec_before is not None:
        ipsec_after = established(sites.gateway_sas(), "blue.office")
        assert ipsec_after is not None and [(c.spi_in, c.spi_out) for c in ipsec_after.children] == \
            [(c.spi_in, c.spi_out) for c in ipsec_before.children]
def frr_site_conf() -> str:
    """bgpd.conf of blue's on-premises router: eBGP with the gateway inside the tunnel, announcing its own network
    (10.30.0.0/24) and two hostile prefixes, blue's own subnet and a default route, which the gateway must refuse."""
    return "\n".join([
        # the gateway is not on a connected prefix here (the site is policy-based): its next hop resolves over
        # the default route, into the tunnel's policy
        "hostname site", "ip nht resolve-via-default", f"router bgp {BGP_AS}", f" bgp router-id {BGP_PEER}",
        " no bgp ebgp-requires-policy",
        " no bgp network import-check", f" neighbor {BGP_LOCAL} remote-as 65000",
        f" neighbor {BGP_LOCAL} update-source {BGP_PEER}", f" neighbor {BGP_LOCAL} disable-connected-check",
        f" neighbor {BGP_LOCAL} timers 3 9", f" neighbor {BGP_LOCAL} timers connect 5",
        " address-family ipv4 unicast", f"  network {BGP_LAN}", "  network 10.0.0.0/24", "  network 0.0.0.0/0",
        " exit-address-family", ""])


def with_bgp_site(psk: str) -> Tenant:
    site = {"name": "office", "remote_address": SITE["blue"][1], "psk": psk, "prefixes": ["10.20.0.0/24"],
            "bgp": {"peer_address": BGP_PEER, "peer_as": BGP_AS, "local_address": f"{BGP_LOCAL}/30", "hold_time": 9}}
    return Tenant.from_dict({**BLUE, "sites": [site]})


def learned_from_gateway(frr: Frr) -> set[str]:
    routes = frr.json("show bgp ipv4 unicast").get("routes", {})
    return {p for p, paths in routes.items() if any(h.get("peerId") == BGP_LOCAL for h in paths)}


def test_a_site_routes_over_ebgp(sites: Sites, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Blue's site router (FRR) peers with the gateway across the tunnel: what it announces within reason is
    routed to the tunnel in blue's VRF only; what it must not announce (blue's subnet, a default route) is
    refused; it learns blue's subnet."""
    gw = sites.lab.gateway.gateway
    ns = site_ns("blue")
    netns.ip_batch([f"addr add {BGP_PEER}/32 dev lo", f"addr add {BGP_HOST[0]}/32 dev lo"], ns)
    peers = PeerLab(tmp=tmp_path_factory.mktemp("site-frr"), prefix="")
    server = Server(ns, BGP_HOST, "site-bgp ")
    try:
        frr = Frr(peers, ns, "site", frr_site_conf())
        sites.put(with_bgp_site(PSK["blue"]))
        tid = gw.tenant_id("blue")
        site = with_bgp_site(PSK["blue"]).sites[0]
        dev = sitemodel.device_name(tid, site)
        wait_for(lambda: established(sites.gateway_sas(), "blue.office"), 90, "blue's site SA")

        def bgp() -> dict:
            (status,) = sites.lab.gateway.call(lambda g: g.site_status("blue"))
            return status["bgp"] or {}

        wait_for(lambda: bgp().get("accepted") == [BGP_LAN] and len(bgp().get("refused", [])) == 2, 90,
                 "the site's routes learned and judged")
        status = bgp()
        assert (status["state"], status["peer"], status["peer_as"], status["learned"]) == \
            ("established", BGP_PEER, BGP_AS, 1), status
        assert {r["prefix"]: r["reason"].split(" ")[0] for r in status["refused"]} == \
            {"0.0.0.0/0": "a", "10.0.0.0/24": "overlaps"}, status
        # in blue's VRF: the learned network to the tunnel; neither hostile prefix; red's table untouched
        with RtnlSocket(NS["gw"]) as sock:
            seen = asyncio.run(observe(sock))
        assert LocalPortRoute(tid, BGP_LAN, dev) in seen
        assert TunnelAddress(dev, BGP_LOCAL, 30) in seen
        to_tunnel = {o.prefix for o in seen if isinstance(o, LocalPortRoute) and o.dev == dev}
        assert to_tunnel == {"10.20.0.0/24", BGP_LAN}, to_tunnel
        red = netns.run(["ip", "-n", NS["gw"], "route", "show", "vrf", "nvf-red"]).output
        assert "10.30.0.0" not in red, red
        # the type-5 routes the gateway's fabric side makes of that (tests/integration/test_gateway_sitebgp.py has
        # them on the wire): the site's prefixes, nothing hostile
        routes = sitebgp.prefix_routes(gw.tenant("blue"), gw.site_verdicts("blue"), GW_PA, GW_PA, RMAC)
        assert sorted(str(r.prefix) for r in routes.values()) == ["10.20.0.0/24", BGP_LAN]
        # the site learned blue's subnet from the gateway
        wait_for(lambda: "10.0.0.0/24" in learned_from_gateway(frr), 60, "FRR learns blue's subnet")
        # blue's VM reaches the network known by BGP only, unNATed; red's same address does not
        s, line = connect_retrying(NS["vb"], BGP_HOST, ("10.0.0.5", 0))
        s.close()
        assert line.startswith("site-bgp 10.0.0.5:"), line
        with pytest.raises(ConnectionError):
            connect_retrying(NS["vr"], BGP_HOST, ("10.0.0.5", 0), tries=1)
        # bgp taken off the site: the session ends, its routes go; the site's tunnel stays
        sites.put(with_site(BLUE, "blue", PSK["blue"]))
        with RtnlSocket(NS["gw"]) as sock:
            seen = asyncio.run(observe(sock))
        assert LocalPortRoute(tid, BGP_LAN, dev) not in seen and TunnelAddress(dev, BGP_LOCAL, 30) not in seen
        assert LocalPortRoute(tid, "10.20.0.0/24", dev) in seen
        wait_for(lambda: "10.0.0.0/24" not in learned_from_gateway(frr), 60, "FRR forgets blue's subnet")
    except AssertionError:
        print(diagnostics())
        print(peers.logs())
        raise
    finally:
        server.close()
        peers.close()


# eBGP across the GRE site's tunnel: the site's router (FRR) on the tunnel's inside prefix, announcing a network of
# its own that the gateway knows only by BGP
GRE_BGP_LOCAL, GRE_BGP_PEER, GRE_BGP_AS = "10.255.1.1", "10.255.1.2", 65040
GRE_BGP_LAN, GRE_BGP_HOST = "10.41.0.0/24", ("10.41.0.10", 9000)


def frr_gre_site_conf() -> str:
    return "\n".join([
        "hostname gre-site", f"router bgp {GRE_BGP_AS}", f" bgp router-id {GRE_BGP_PEER}",
        " no bgp ebgp-requires-policy", " no bgp network import-check", f" neighbor {GRE_BGP_LOCAL} remote-as 65000",
        " address-family ipv4 unicast", f"  network {GRE_BGP_LAN}", " exit-address-family", ""])


def test_a_gre_site_routes_over_ebgp(sites: Sites, gre_site: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Blue's GRE site with `bgp`: the session runs across the GRE tunnel (the gateway's inside address on its GRE
    device), what the site's router announces is routed to the tunnel in blue's VRF, and it learns blue's subnet."""
    gw = sites.lab.gateway.gateway
    netns.ip_batch([f"link set gs type gre local {GRE_SITE} remote {GW_EXT} key {GRE_KEY} ttl 64",
                    f"addr add {GRE_BGP_PEER}/30 dev gs", f"addr add {GRE_BGP_HOST[0]}/32 dev lo"], gre_site)
    peers = PeerLab(tmp=tmp_path_factory.mktemp("gre-site-frr"), prefix="")
    server = Server(gre_site, GRE_BGP_HOST, "gre-bgp ")
    depot = {"name": "depot", "kind": "gre", "remote_address": GRE_SITE, "key": GRE_KEY, "prefixes": [], "slot": 2,
             "bgp": {"peer_address": GRE_BGP_PEER, "peer_as": GRE_BGP_AS, "local_address": f"{GRE_BGP_LOCAL}/30"}}
    before = gw.tenants["blue"]
    try:
        frr = Frr(peers, gre_site, "gre-site", frr_gre_site_conf())
        body = before.as_dict()
        sites.put(Tenant.from_dict({**body, "sites": [s for s in body["sites"] if s["name"] != "depot"] + [depot]}))
        dev = sitemodel.device_name(gw.tenant_id("blue"), gw.tenants["blue"].sites[-1])

        def bgp() -> dict:
            found = [s for s in sites.lab.gateway.call(lambda g: g.site_status("blue")) if s["name"] == "depot"]
            return (found[0]["bgp"] or {}) if found else {}

        wait_for(lambda: bgp().get("state") == "established" and bgp().get("accepted") == [GRE_BGP_LAN], 90,
                 "the GRE site's network learned over BGP")
        with RtnlSocket(NS["gw"]) as sock:
            seen = asyncio.run(observe(sock))
        assert TunnelAddress(dev, GRE_BGP_LOCAL, 30) in seen and LocalPortRoute(gw.tenant_id("blue"), GRE_BGP_LAN,
                                                                                 dev) in seen
        s, line = connect_retrying(NS["vb"], GRE_BGP_HOST, ("10.0.0.5", 0))
        s.close()
        assert line.startswith("gre-bgp 10.0.0.5:"), line  # through the GRE tunnel, never NATed
        routes = lambda: frr.json("show bgp ipv4 unicast").get("routes", {})  # noqa: E731
        wait_for(lambda: any(h.get("peerId") == GRE_BGP_LOCAL for h in routes().get("10.0.0.0/24", [])), 60,
                 "the GRE site's router learns blue's subnet")
        # bgp taken off the GRE site: the session, its route and the tunnel's inside address go, the tunnel stays
        static = {**{k: v for k, v in depot.items() if k != "bgp"}, "prefixes": ["10.40.0.0/24"]}
        sites.put(Tenant.from_dict({**body, "sites": [s for s in body["sites"] if s["name"] != "depot"] + [static]}))
        with RtnlSocket(NS["gw"]) as sock:
            seen = asyncio.run(observe(sock))
        assert TunnelAddress(dev, GRE_BGP_LOCAL, 30) not in seen and any(isinstance(o, GreTunnel) and o.name == dev
                                                                         for o in seen)
        assert LocalPortRoute(gw.tenant_id("blue"), GRE_BGP_LAN, dev) not in seen
    except AssertionError:
        print(diagnostics())
        print(peers.logs())
        raise
    finally:
        server.close()
        sites.put(before)
        peers.close()
