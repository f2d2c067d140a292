"""The gateway's charon (gateway/strongswan.py) against sites running their own charon, configured with
swanctl.conf as a site's administrator would, on this machine's kernel: IKEv2 with pre-shared keys. This
kernel installs no child SA (no ESP here: charon says so and keeps the IKE SA), so what is checked is the
IKE side; the tunnels themselves are tests/kernel/test_gateway_sites.py's. Two tenants, one site each:
a wrong key never establishes, the right one does, a proposal charon refuses changes nothing, removing one
tenant's site leaves the other's IKE SA as it was (the same SPIs), and a killed charon is started again with
the connections it had. Two gateways' charons and one site: only the serving one holds the site's SA."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
from collections.abc import Iterator

import pytest

from nvfabric.gateway.config import External
from nvfabric.gateway.strongswan import BINARY, Charon, CharonFiles, SiteSa, connections
from nvfabric.gateway.tenants import Tenant
from nvfabric.lab import netns
from nvfabric.vnet.errors import KernelError
from tests.certs import Issued, Pki
from tests.integration.conftest import need

TAG = f"ss{os.getpid() % 100000}"
NS = {n: f"{TAG}-{n}" for n in ("gw", "sa", "sb")}
GW = "203.0.113.2"
SITES = {"blue": ("sa", "203.0.113.50", "blue-site-key-0123456789"),
         "red": ("sb", "203.0.113.51", "red-site-key-9876543210")}
EXTERNAL = External(("lo",), address4=ipaddress.ip_address(GW))


def tenant(name: str, vsid: int, psk: str | None, **extra: object) -> Tenant:
    short, address, _ = SITES[name]
    sites = [] if psk is None else [{"name": "office", "remote_address": address, "psk": psk,
                                     "prefixes": ["10.20.0.0/24"], **extra}]
    return Tenant.from_dict({"name": name, "route_targets": ["65000:1"], "sites": sites,
                             "subnets": [{"vsid": vsid, "prefixes": ["10.0.0.0/24"]}]})


def swanctl_conf(address: str, psk: str) -> str:
    return (f"connections {{ gateway {{ version = 2\n local_addrs = {address}\n remote_addrs = {GW}\n"
            f" local {{ auth = psk\n id = {address} }}\n remote {{ auth = psk\n id = {GW} }}\n"
            " children { gateway { local_ts = 10.20.0.0/24\n remote_ts = 10.0.0.0/24 } } } }\n"
            f"secrets {{ ike-gateway {{ id = {GW}\n secret = {psk} }} }}\n")


@pytest.fixture
def namespaces() -> Iterator[None]:
    need(BINARY, "swanctl")
    for ns in NS.values():
        netns.create(ns)
    try:
        netns.ip_batch(["link set lo up", f"addr add {GW}/32 dev lo"], NS["gw"])
        for short, address, _ in SITES.values():
            netns.ip_batch([netns.veth_line(NS["gw"], f"v{short}", NS[short], "e0")])
            netns.ip_batch([f"link set v{short} up", f"route add {address}/32 dev v{short} src {GW}"], NS["gw"])
            netns.ip_batch(["link set lo up", f"addr add {address}/32 dev e0", "link set e0 up",
                            f"route add {GW}/32 dev e0"], NS[short])
        yield
    finally:
        for ns in NS.values():
            netns.destroy(ns)


def established(sas: dict[str, SiteSa], name: str) -> SiteSa | None:
    sa = sas.get(name)
    return sa if sa is not None and sa.state == "ESTABLISHED" else None


def test_one_tenants_site_changes_leave_the_others_ike_sa(namespaces: None, tmp_path) -> None:
    async def run() -> None:
        sites = {t: Charon(NS[short], CharonFiles.named(f"{TAG}-{short}")) for t, (short, _, _) in SITES.items()}
        gw = Charon(NS["gw"], CharonFiles.named(f"{TAG}-gw"))
        try:
            for t, charon in sites.items():
                short, address, psk = SITES[t]
                await charon.start()
                conf = tmp_path / f"{short}.conf"
                conf.write_text(swanctl_conf(address, psk))
                netns.run(["ip", "netns", "exec", NS[short], "swanctl", "--load-all", "--noprompt",
                           "--file", str(conf), "--uri", f"unix://{charon.files.socket}"])
            await gw.start()
            await gw.put("blue", connections("blue", tenant("blue", 5001, SITES["blue"][2]), 1000, EXTERNAL))
            await gw.put("red", connections("red", tenant("red", 6001, "not-the-site-key-at-all"), 1001, EXTERNAL))
            # red's key is wrong: loaded at the same time as blue's, its attempt ends (the site refused it) and it
            # is established at neither end
            sas = await until_sas(gw, lambda s: established(s, "blue.office") and "red.office" not in s,
                                  "blue's IKE SA, and red's attempt over")
            assert established(await sites["red"].sas(), "gateway") is None
            await gw.put("red", connections("red", tenant("red", 6001, SITES["red"][2]), 1001, EXTERNAL))
            sas = await until_sas(gw, lambda s: established(s, "red.office"), "red's IKE SA with the right key")
            blue = established(sas, "blue.office")
            assert blue is not None and blue.spis[0] and blue.remote == SITES["blue"][1]
            # a proposal charon does not know (the model checks only its syntax): refused by charon, and red's
            # site stays as it was, its SA too
            red = established(sas, "red.office")
            with pytest.raises(KernelError, match="red"):
                await gw.put("red", connections("red", tenant("red", 6001, SITES["red"][2],
                                                              ike_proposals=["aes999-sha0-nothing"]), 1001, EXTERNAL))
            sas = await gw.sas()
            assert established(sas, "red.office") == red and established(sas, "blue.office") == blue
            await gw.put("red", connections("red", tenant("red", 6001, None), 1001, EXTERNAL))
            sas = await until_sas(gw, lambda s: "red.office" not in s, "red's IKE SA ended")
            assert established(sas, "blue.office") == blue  # the same SA: SPIs, state, peer
            assert established(await sites["blue"].sas(), "gateway").spis == blue.spis
            # charon killed: started again, given blue's connection, which comes up again (a new SA)
            assert gw._proc is not None
            os.kill(gw._proc.pid, signal.SIGKILL)
            sas = await until_sas(gw, lambda s: (sa := established(s, "blue.office")) and sa.spis != blue.spis,
                                  "blue's IKE SA again after charon was killed")
            assert gw.restarts == 1 and "red.office" not in sas
        finally:
            await gw.stop()
            for charon in sites.values():
                await charon.stop()

    asyncio.run(run())


async def until_sas(gw: Charon, ok, what: str) -> dict[str, SiteSa]:
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        sas = await gw.sas()
        if ok(sas):
            return sas
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {sas}")
        await asyncio.sleep(0.1)


HA = {"g1": "203.0.113.21", "g2": "203.0.113.22"}  # two gateways' external addresses
HA_SITE = "203.0.113.50"
HA_KEY = "blue-site-key-0123456789"


def ha_site_conf() -> str:
    """A site that accepts either gateway: both addresses, both identities with the tenant's one key."""
    return (f"connections {{ gateway {{ version = 2\n local_addrs = {HA_SITE}\n"
            f" remote_addrs = {HA['g1']},{HA['g2']}\n local {{ auth = psk\n id = {HA_SITE} }}\n"
            " remote { auth = psk\n id = %any }\n"
            " children { gateway { local_ts = 10.20.0.0/24\n remote_ts = 10.0.0.0/24 } } } }\n"
            f"secrets {{ ike-gateway {{ id-1 = {HA['g1']}\n id-2 = {HA['g2']}\n secret = {HA_KEY} }} }}\n")


@pytest.fixture
def ha_namespaces() -> Iterator[dict[str, str]]:
    need(BINARY, "swanctl")
    names = {n: f"{TAG}-{n}" for n in ("g1", "g2", "s")}
    for ns in names.values():
        netns.create(ns)
    try:
        netns.ip_batch(["link set lo up", f"addr add {HA_SITE}/32 dev lo"], names["s"])
        for g, address in HA.items():
            netns.ip_batch([netns.veth_line(names[g], "e0", names["s"], f"v{g}")])
            netns.ip_batch(["link set lo up", f"addr add {address}/32 dev lo", "link set e0 up",
                            f"route add {HA_SITE}/32 dev e0 src {address}"], names[g])
            netns.ip_batch([f"link set v{g} up", f"route add {address}/32 dev v{g} src {HA_SITE}"], names["s"])
        yield names
    finally:
        for ns in names.values():
            netns.destroy(ns)


def test_only_the_serving_gateway_holds_the_sites_sa(ha_namespaces: dict[str, str], tmp_path) -> None:
    """Two gateways with the same tenant and site (each its own external address): the standby's charon checks
    each change as the serving one does but holds no SA; when the role moves, the new serving gateway initiates
    and the site has its SA with it, and the old one's is ended."""
    names = ha_namespaces

    async def run() -> None:
        site = Charon(names["s"], CharonFiles.named(f"{TAG}-s"))
        gws = {g: Charon(names[g], CharonFiles.named(f"{TAG}-{g}"), serving=g == "g1") for g in HA}
        ext = {g: External(("lo",), address4=ipaddress.ip_address(a)) for g, a in HA.items()}
        blue = tenant("blue", 5001, HA_KEY)
        blue = Tenant.from_dict({**blue.as_dict(), "sites": [{**blue.sites[0].as_dict(), "remote_address": HA_SITE}]})
        try:
            await site.start()
            conf = tmp_path / "site.conf"
            conf.write_text(ha_site_conf())
            netns.run(["ip", "netns", "exec", names["s"], "swanctl", "--load-all", "--noprompt", "--file", str(conf),
                       "--uri", f"unix://{site.files.socket}"])
            for g, charon in gws.items():
                await charon.start()
                await charon.put("blue", connections("blue", blue, 1000, ext[g]))
            sas = await until_sas(gws["g1"], lambda s: established(s, "blue.office"), "g1's SA with the site")
            first = established(sas, "blue.office")
            assert first is not None and first.local == HA["g1"]
            # the standby refuses what charon refuses, like the serving one, and has no SA
            bad = Tenant.from_dict({**blue.as_dict(), "sites": [{**blue.sites[0].as_dict(),
                                                                 "ike_proposals": ["aes999-sha0-nothing"]}]})
            with pytest.raises(KernelError, match="blue"):
                await gws["g2"].put("blue", connections("blue", bad, 1000, ext["g2"]))
            assert await gws["g2"].sas() == {}
            # the role moves to g2: it initiates, the site takes its SA; g1's is ended
            await gws["g1"].serve(False)
            await gws["g2"].serve(True)
            sas = await until_sas(gws["g2"], lambda s: established(s, "blue.office"), "g2's SA with the site")
            assert established(sas, "blue.office").local == HA["g2"]
            await until_sas(gws["g1"], lambda s: "blue.office" not in s, "g1's SA ended")
            await until_sas(site, lambda s: (sa := established(s, "gateway")) is not None and sa.remote == HA["g2"],
                            "the site's SA with g2")
            # a standby's charon restarted stays without SAs; the serving one's comes back with its SA
            assert gws["g1"]._proc is not None
            os.kill(gws["g1"]._proc.pid, signal.SIGKILL)
            await until_sas(gws["g1"], lambda s: gws["g1"].restarts == 1 and gws["g1"]._vici is not None,
                            "g1's charon started again and answering")
            assert await gws["g1"].sas() == {}
        finally:
            for charon in (*gws.values(), site):
                await charon.stop()

    asyncio.run(run())


# ---------------------------------------------------------------------------------------------- certificates
# Each tenant has its own CA (made with pki at test time), which signs the gateway's certificate for the tenant's
# site and the site's own. The sites are configured with swanctl.conf as their administrators would.
GW_DN = {"blue": "C=CH, O=blue, CN=gateway", "red": "C=CH, O=red, CN=gateway"}
SITE_DN = {"blue": "C=CH, O=blue, CN=office", "red": "C=CH, O=red, CN=office"}


def cert_site(name: str, gateway: Issued, cas: tuple[Issued, ...]) -> dict:
    return {"name": "office", "remote_address": SITES[name][1], "auth": "certificate", "prefixes": ["10.20.0.0/24"],
            "certificate": gateway.cert_pem, "private_key": gateway.key_pem,
            "ca_certificates": [ca.cert_pem for ca in cas], "remote_id": SITE_DN[name]}


def cert_tenant(name: str, vsid: int, *sites: dict) -> Tenant:
    return Tenant.from_dict({"name": name, "route_targets": ["65000:1"], "sites": list(sites),
                             "subnets": [{"vsid": vsid, "prefixes": ["10.0.0.0/24"]}]})


def load_site(short: str, charon: Charon, own: Issued, gateway_ca: Issued, gateway_dn: str, directory,
              ns: str | None = None, addresses: tuple[str, str] | None = None) -> None:
    """The site's swanctl directory as its administrator keeps it (its key in ecdsa/, its certificate in x509/,
    the CA of the gateway's certificate in x509ca/), the gateway known by its DN; loaded with swanctl. The site
    at SITES' address of `short` and the gateway at GW, or `addresses` (the site's, the gateways')."""
    for sub, source in (("ecdsa", own.key), ("x509", own.cert), ("x509ca", gateway_ca.cert)):
        (directory / sub).mkdir(parents=True, exist_ok=True)
        (directory / sub / source.name).write_bytes(source.read_bytes())
    address, gateways = addresses or (SITES["blue" if short == "sa" else "red"][1], GW)
    conf = directory / "swanctl.conf"
    conf.write_text(f"connections {{ gateway {{ version = 2\n local_addrs = {address}\n remote_addrs = {gateways}\n"
                    f" local {{ auth = pubkey\n certs = {own.cert.name} }}\n"
                    f" remote {{ auth = pubkey\n id = \"{gateway_dn}\"\n cacerts = {gateway_ca.cert.name} }}\n"
                    " children { gateway { local_ts = 10.20.0.0/24\n remote_ts = 10.0.0.0/24 } } } }\n")
    netns.run(["ip", "netns", "exec", ns or NS[short], "swanctl", "--load-all", "--noprompt", "--file", str(conf),
               "--uri", f"unix://{charon.files.socket}"])


async def site_initiates(short: str, charon: Charon) -> SiteSa | None:
    """The site starts an IKE SA with the gateway and waits for the outcome: its IKE SA if established (this
    kernel has no ESP: the child SA always fails here, swanctl says so, and the IKE SA is kept)."""
    await asyncio.to_thread(netns.run, ["ip", "netns", "exec", NS[short], "swanctl", "--initiate", "--child",
                                        "gateway", "--timeout", "30", "--uri", f"unix://{charon.files.socket}"],
                            check=False)
    return established(await charon.sas(), "gateway")


async def gateway_keys(gw: Charon) -> list[str]:
    assert gw._vici is not None
    return list((await gw._vici.request("get-keys"))["keys"])


def test_sites_with_certificates_establish_only_through_their_own_ca_and_identity(namespaces: None, tmp_path,
                                                                                  caplog) -> None:
    """Blue's site establishes with certificates; red's site never does while it shows a certificate of blue's CA
    (trusted by the same charon for blue's site) or one of red's CA with another identity, and does with the right
    one; blue's IKE SA stays the same throughout, and a site's removal unloads its key, unless another site of the
    gateway uses the same key. No line of the gateway's keys is ever logged (ours and charon's)."""
    caplog.set_level(logging.DEBUG)
    pki = Pki(tmp_path)
    ca = {t: pki.ca(t, f"C=CH, O={t}, CN={t} CA") for t in ("blue", "red")}
    gw_cert = {t: pki.issue(ca[t], f"gw-{t}", GW_DN[t], GW) for t in ca}
    site_cert = {t: pki.issue(ca[t], f"site-{t}", SITE_DN[t]) for t in ca}
    forged = pki.issue(ca["blue"], "red-by-blue", SITE_DN["red"])  # red's identity, blue's CA
    stranger = pki.issue(ca["red"], "red-stranger", "C=CH, O=red, CN=intruder")  # red's CA, another identity
    shorts = {"blue": "sa", "red": "sb"}

    async def run() -> None:
        sites = {t: Charon(NS[short], CharonFiles.named(f"{TAG}-{short}")) for t, short in shorts.items()}
        gw = Charon(NS["gw"], CharonFiles.named(f"{TAG}-gw"))
        try:
            for charon in sites.values():
                await charon.start()
            load_site("sa", sites["blue"], site_cert["blue"], ca["blue"], GW_DN["blue"], tmp_path / "site-blue")
            load_site("sb", sites["red"], forged, ca["red"], GW_DN["red"], tmp_path / "site-red-1")
            await gw.start()
            blue = cert_tenant("blue", 5001, cert_site("blue", gw_cert["blue"], (ca["blue"],)))
            red = cert_tenant("red", 6001, cert_site("red", gw_cert["red"], (ca["red"],)))
            await gw.put("blue", connections("blue", blue, 1000, EXTERNAL))
            await gw.put("red", connections("red", red, 1001, EXTERNAL))
            sas = await until_sas(gw, lambda s: established(s, "blue.office"), "blue's IKE SA by certificates")
            first = established(sas, "blue.office")
            assert established(await sites["blue"].sas(), "gateway").spis == first.spis
            # red's site with a certificate of blue's CA carrying red's identity, then one of red's CA carrying
            # another identity: the site's own attempts fail, and the gateway has no SA with it
            assert await site_initiates("sb", sites["red"]) is None
            load_site("sb", sites["red"], stranger, ca["red"], GW_DN["red"], tmp_path / "site-red-2")
            assert await site_initiates("sb", sites["red"]) is None
            assert established(await gw.sas(), "red.office") is None
            # the right certificate: established (so what failed before was the certificate, nothing else)
            load_site("sb", sites["red"], site_cert["red"], ca["red"], GW_DN["red"], tmp_path / "site-red-3")
            assert await site_initiates("sb", sites["red"]) is not None
            sas = await until_sas(gw, lambda s: established(s, "red.office"), "red's IKE SA by certificates")
            assert established(sas, "blue.office") == first
            assert len(await gateway_keys(gw)) == 2
            # red's site removed: its SA ends and its key is unloaded; blue's SA and key stay
            await gw.put("red", connections("red", cert_tenant("red", 6001), 1001, EXTERNAL))
            sas = await until_sas(gw, lambda s: "red.office" not in s, "red's IKE SA ended")
            assert established(sas, "blue.office") == first
            (blue_key,) = await gateway_keys(gw)
            # a new site charon refuses (a proposal it does not know): its key is not left in charon
            bad = {**cert_site("red", gw_cert["red"], (ca["red"],)), "ike_proposals": ["aes999-sha0-nothing"]}
            with pytest.raises(KernelError, match="red"):
                await gw.put("red", connections("red", cert_tenant("red", 6001, bad), 1001, EXTERNAL))
            assert await gateway_keys(gw) == [blue_key]
            # red again, with the gateway's certificate and key blue's site has (an operator's one certificate
            # for several sites): charon holds the key once; red's removal leaves it to blue
            shared = cert_tenant("red", 6001, cert_site("red", gw_cert["blue"], (ca["red"],)))
            await gw.put("red", connections("red", shared, 1001, EXTERNAL))
            assert await gateway_keys(gw) == [blue_key]
            await gw.put("red", connections("red", cert_tenant("red", 6001), 1001, EXTERNAL))
            assert await gateway_keys(gw) == [blue_key]
            assert established(await gw.sas(), "blue.office") == first
            # charon killed: started again and given blue's key and connection again, which comes up (a new SA)
            assert gw._proc is not None
            os.kill(gw._proc.pid, signal.SIGKILL)
            await until_sas(gw, lambda s: (sa := established(s, "blue.office")) and sa.spis != first.spis,
                            "blue's IKE SA again after charon was killed")
            assert await gateway_keys(gw) == [blue_key]
            secrets = {line for t in gw_cert for line in gw_cert[t].key_pem.splitlines()[1:-1]}
            assert "loaded ECDSA private key" in caplog.text and not any(s in caplog.text for s in secrets)
        finally:
            await gw.stop()
            for charon in sites.values():
                await charon.stop()

    asyncio.run(run())


def test_a_site_with_certificates_follows_the_serving_gateway(ha_namespaces: dict[str, str], tmp_path) -> None:
    """Both gateways have the same site with the same certificate and key; the site names one identity and both
    addresses. Only the serving gateway holds the key in its charon (a standby's unloads it with the connection)
    and the SA; when the role moves, the other loads the key again and has the SA."""
    names = ha_namespaces
    pki = Pki(tmp_path)
    ca = pki.ca("blue", "C=CH, O=blue, CN=blue CA")
    gateway, site_cert = pki.issue(ca, "gw", GW_DN["blue"]), pki.issue(ca, "site", SITE_DN["blue"])

    async def run() -> None:
        site = Charon(names["s"], CharonFiles.named(f"{TAG}-s"))
        gws = {g: Charon(names[g], CharonFiles.named(f"{TAG}-{g}"), serving=g == "g1") for g in HA}
        ext = {g: External(("lo",), address4=ipaddress.ip_address(a)) for g, a in HA.items()}
        body = {**cert_site("blue", gateway, (ca,)), "remote_address": HA_SITE}
        blue = cert_tenant("blue", 5001, body)
        try:
            await site.start()
            load_site("s", site, site_cert, ca, GW_DN["blue"], tmp_path / "site", names["s"],
                      (HA_SITE, f"{HA['g1']},{HA['g2']}"))
            for g, charon in gws.items():
                await charon.start()
                await charon.put("blue", connections("blue", blue, 1000, ext[g]))
            sas = await until_sas(gws["g1"], lambda s: established(s, "blue.office"), "g1's SA with the site")
            assert established(sas, "blue.office").local == HA["g1"]
            keys = await gateway_keys(gws["g1"])
            assert len(keys) == 1 and await gateway_keys(gws["g2"]) == []
            await gws["g1"].serve(False)
            await gws["g2"].serve(True)
            sas = await until_sas(gws["g2"], lambda s: established(s, "blue.office"), "g2's SA with the site")
            assert established(sas, "blue.office").local == HA["g2"]
            await until_sas(gws["g1"], lambda s: "blue.office" not in s, "g1's SA ended")
            assert await gateway_keys(gws["g1"]) == [] and await gateway_keys(gws["g2"]) == keys
        finally:
            for charon in (*gws.values(), site):
                await charon.stop()

    asyncio.run(run())
