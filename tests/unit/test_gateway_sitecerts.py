"""IPsec sites with `auth: certificate` (gateway/sitecerts.py): what is refused and named, what charon is given
(gateway/strongswan.py), and that the gateway's private key is never shown."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import CollectorRegistry, generate_latest

from aiohttp.test_utils import TestClient, TestServer

from nvfabric.gateway import api as gw_api
from nvfabric.gateway.api import keep_secrets
from nvfabric.gateway.config import External, GatewayConfig
from nvfabric.gateway.gateway import Gateway
from nvfabric.gateway.sitecerts import HIDDEN, check_new
from nvfabric.gateway.sitestatus import CertificateCollector
from nvfabric.gateway.strongswan import connections
from nvfabric.gateway.tenants import Tenant
from nvfabric.service.statefile import replace_keeping_previous
from nvfabric.vnet.errors import ModelError
from tests.certs import build, cert_pem, ec_key, key_pem
from tests.unit.test_api import TOKEN
from tests.unit.test_gateway_status import BODY
from tests.unit.test_metrics import value

BLUE = {"name": "blue", "route_targets": ["65000:1"], "subnets": [{"vsid": 5001, "prefixes": ["10.0.0.0/24"]}]}
EXTERNAL = External(("ext",), address4=ipaddress.ip_address("203.0.113.2"))
CA_KEY = ec_key()
CA = build("blue CA", CA_KEY, ca=True, cert_sign=True)
GW_KEY = ec_key()
GW = build("gateway", GW_KEY, (CA, CA_KEY), sans=(x509.DNSName("gw.blue.example"),
                                                   x509.IPAddress(ipaddress.ip_address("203.0.113.2"))))
KEY = key_pem(GW_KEY)
SITE = {"name": "paris", "remote_address": "203.0.113.50", "auth": "certificate", "prefixes": ["10.20.0.0/24"],
        "certificate": cert_pem(GW), "private_key": KEY, "ca_certificates": [cert_pem(CA)],
        "remote_id": "C=FR, O=blue, CN=paris"}


def tenant(*sites: dict) -> Tenant:
    return Tenant.from_dict({**BLUE, "sites": list(sites)})


def refused(body: dict, field: str, match: str) -> ModelError:
    with pytest.raises(ModelError, match=match) as info:
        tenant(body)
    assert info.value.field == field, info.value
    assert KEY.splitlines()[1] not in str(info.value)  # no line of the key
    return info.value


def test_a_site_with_certificates_round_trips_and_never_shows_its_key() -> None:
    site = tenant(SITE).sites[0]
    assert (site.auth, site.psk, site.certs.remote_id) == ("certificate", "", "C=FR, O=blue, CN=paris")
    assert Tenant.from_dict(tenant(SITE).as_dict()) == tenant(SITE)  # the stored body gives the same site
    shown = tenant(SITE).as_dict(secrets=False)["sites"][0]
    assert shown["private_key"] == HIDDEN and shown["certificate"] == SITE["certificate"]
    assert "PRIVATE KEY" not in repr(site) and "PRIVATE KEY" not in str(tenant(SITE).as_dict(secrets=False))
    # a PUT of what GET showed keeps the key the site has
    again = Tenant.from_dict(keep_secrets(tenant(SITE).as_dict(secrets=False), tenant(SITE)))
    assert again == tenant(SITE) and again.sites[0].certs.private_key == KEY


def test_the_site_status_says_who_and_until_when() -> None:
    status = tenant(SITE).sites[0].certs.status()
    assert status["local_id"] == "O=test, CN=gateway" and status["remote_id"] == SITE["remote_id"]
    assert status["not_after"] == min(GW.not_valid_after_utc, CA.not_valid_after_utc).isoformat()


def _other_key_cert() -> tuple[str, str]:
    key = ec_key()
    return key_pem(key), cert_pem(build("other", key, (CA, CA_KEY)))


def _rsa(bits: int) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key_pem(key), cert_pem(build("rsa", key, (CA, CA_KEY)))


NOT_A_CA = cert_pem(build("leaf", ec_key(), ca=False))
NO_CONSTRAINTS = cert_pem(build("plain", ec_key(), ca=None))
NO_CERT_SIGN = cert_pem(build("no-sign", ec_key(), ca=True, cert_sign=False))
SHORT_RSA = _rsa(1024)


@pytest.mark.parametrize(("change", "field", "match"), [
    ({"certificate": "-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n"}, "sites[0].certificate",
     "not a certificate in PEM"),
    ({"certificate": cert_pem(GW) + cert_pem(CA)}, "sites[0].certificate", "holds 2 certificates"),
    ({"certificate": 5}, "sites[0].certificate", "a string"),
    ({"private_key": "not a key"}, "sites[0].private_key", "not a private key in PEM"),
    ({"private_key": key_pem(GW_KEY, b"passphrase")}, "sites[0].private_key", "encrypted"),
    ({"private_key": _other_key_cert()[0]}, "sites[0].private_key", "does not belong to the certificate"),
    ({"private_key": SHORT_RSA[0], "certificate": SHORT_RSA[1]}, "sites[0].private_key", "at least 2048"),
    ({"ca_certificates": []}, "sites[0].ca_certificates", "at least one"),
    ({"ca_certificates": "PEM"}, "sites[0].ca_certificates", "must be a list"),
    ({"ca_certificates": [NOT_A_CA]}, "sites[0].ca_certificates[0]", "CA:FALSE"),
    ({"ca_certificates": [NO_CONSTRAINTS]}, "sites[0].ca_certificates[0]", "no basicConstraints"),
    ({"ca_certificates": [cert_pem(CA), NO_CERT_SIGN]}, "sites[0].ca_certificates[1]", "keyCertSign"),
    ({"ca_certificates": [cert_pem(CA), cert_pem(CA)]}, "sites[0].ca_certificates[1]", "repeats"),
    ({"remote_id": "%any"}, "sites[0].remote_id", "wildcard"),
    ({"remote_id": "C=FR, O=blue, CN=*"}, "sites[0].remote_id", "wildcard"),
    ({"remote_id": "C=FR,, CN"}, "sites[0].remote_id", "not a distinguished name"),
    ({"remote_id": "not an identity"}, "sites[0].remote_id", "not an identity"),
    ({"remote_id": ""}, "sites[0].remote_id", "printable"),
    ({"local_id": "gw.red.example"}, "sites[0].local_id", "gw.blue.example, 203.0.113.2"),
    ({"psk": "a-site-key-of-24-chars!!"}, "sites[0].psk", "not with auth certificate"),
    ({"auth": "psk", "psk": "a-site-key-of-24-chars!!"}, "sites[0].certificate", "only with auth certificate"),
    ({"kind": "gre", "auth": None}, "sites[0].certificate", "only for kind ipsec"),
])
def test_a_wrong_certificate_site_is_refused_naming_its_field(change: dict, field: str, match: str) -> None:
    body = {k: v for k, v in {**SITE, **change}.items() if v is not None}
    refused(body, field, match)


@pytest.mark.parametrize("missing", ["certificate", "private_key", "ca_certificates", "remote_id"])
def test_each_certificate_field_is_required(missing: str) -> None:
    refused({k: v for k, v in SITE.items() if k != missing}, f"sites[0].{missing}", "required with auth certificate")


def test_local_id_may_be_one_of_the_certificates_alt_names() -> None:
    for name in ("gw.blue.example", "203.0.113.2"):
        assert tenant({**SITE, "local_id": name}).sites[0].certs.local_identity == name


def test_a_certificate_given_must_be_valid_now_but_one_held_is_kept() -> None:
    now = datetime.now(UTC)
    expired_key = ec_key()
    expired = {**SITE, "certificate": cert_pem(build("gw", expired_key, (CA, CA_KEY), days=(-30, -1))),
               "private_key": key_pem(expired_key)}
    future_key = ec_key()
    future = {**SITE, "certificate": cert_pem(build("gw", future_key, (CA, CA_KEY), days=(1, 30))),
              "private_key": key_pem(future_key)}
    old_ca_key = ec_key()
    old_ca = {**SITE, "ca_certificates": [cert_pem(build("old CA", old_ca_key, ca=True, days=(-30, -1)))]}
    for body, field, problem in ((expired, "sites[0].certificate", "expired on"),
                                 (future, "sites[0].certificate", "not valid before"),
                                 (old_ca, "sites[0].ca_certificates[0]", "expired on")):
        with pytest.raises(ModelError, match=problem) as info:
            check_new(tenant(body).sites, (), now)  # a new site
        assert info.value.field == field
        with pytest.raises(ModelError, match=problem):
            check_new(tenant(body).sites, tenant(SITE).sites, now)  # new certificates for the site
        # the site had them already: another change of it is not refused for them
        changed = tenant({**body, "prefixes": ["10.21.0.0/24"], "remote_ts": ["10.21.0.0/24"]})
        check_new(changed.sites, tenant(body).sites, now)
    check_new(tenant(SITE).sites, (), now)
    check_new(tenant(SITE).sites, (), now + timedelta(days=29))
    with pytest.raises(ModelError, match="expired"):
        check_new(tenant(SITE).sites, (), now + timedelta(days=31))


def test_charon_gets_the_certificates_in_the_connection_and_the_key_by_itself() -> None:
    (conn,) = connections("blue", tenant(SITE), 1000, EXTERNAL).values()
    body = conn.conn["blue.paris"]
    assert body["local-1"] == {"auth": "pubkey", "certs": [SITE["certificate"]],
                               "id": "asn1dn:#" + GW.subject.public_bytes().hex()}
    assert body["remote-1"] == {"auth": "pubkey", "id": SITE["remote_id"], "cacerts": SITE["ca_certificates"]}
    assert body["send_cert"] == "always" and body["children"]["blue.paris"]["if_id_in"] == str(1000 << 4 | 1)
    assert conn.secret is None and conn.key["type"] == "ecdsa"
    assert conn.key["data"].startswith("-----BEGIN EC PRIVATE KEY-----")  # SEC 1, whatever form was given
    assert "PRIVATE" not in repr(conn)
    rsa_key, rsa_cert = _rsa(2048)
    (conn,) = connections("blue", tenant({**SITE, "certificate": rsa_cert, "private_key": rsa_key}), 1000,
                          EXTERNAL).values()
    assert conn.key["type"] == "rsa" and conn.key["data"].startswith("-----BEGIN RSA PRIVATE KEY-----")


def test_the_state_file_that_holds_the_keys_is_the_daemons_alone(tmp_path) -> None:
    path, previous = tmp_path / "state.json", tmp_path / "state.previous.json"
    replace_keeping_previous(path, previous, tenant(SITE).as_dict()["sites"][0]["private_key"])
    replace_keeping_previous(path, previous, "the next")
    assert [p.stat().st_mode & 0o777 for p in (path, previous)] == [0o600, 0o600]


def test_metrics_say_when_a_sites_certificates_expire() -> None:
    psk = {"name": "lyon", "remote_address": "203.0.113.51", "psk": "a-site-key-of-24-chars!!",
           "prefixes": ["10.21.0.0/24"], "slot": 2}
    registry = CollectorRegistry()
    registry.register(CertificateCollector([tenant(SITE, psk)]))
    name = "nvfabric_gateway_site_certificate_expiry_time_seconds"
    expiry = round(min(GW.not_valid_after_utc, CA.not_valid_after_utc).timestamp())
    assert registry.get_sample_value(name, {"tenant": "blue", "site": "paris"}) == expiry
    assert 'site="lyon"' not in generate_latest(registry).decode()  # a site with a psk has no certificate


async def test_the_api_hides_the_key_refuses_an_expired_certificate_and_serves_the_expiry(monkeypatch) -> None:
    body = {**BODY, "tenants": [{**BODY["tenants"][0], "sites": [SITE]}]}
    gw = Gateway(GatewayConfig.from_dict(body))  # not started: what is refused is refused before it matters

    async def counters():  # (as tests/unit/test_metrics.py: the nftables table of a started gateway)
        return {}
    monkeypatch.setattr(gw, "counters", counters)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    expired_key = ec_key()
    expired = {**SITE, "certificate": cert_pem(build("gw", expired_key, (CA, CA_KEY), days=(-30, -1))),
               "private_key": key_pem(expired_key)}
    async with TestClient(TestServer(gw_api.make_app(gw, TOKEN))) as client:
        answer = await client.get("/v1/tenants/blue", headers=auth)
        text = await answer.text()
        shown = (await answer.json())["sites"][0]
        put = await client.put("/v1/tenants/blue", headers=auth,
                               json={**BODY["tenants"][0], "sites": [expired]})
        refusal = await put.json()
        metrics = await (await client.get("/metrics")).text()
    assert shown["private_key"] == HIDDEN and KEY.splitlines()[1] not in text
    assert shown["certificate"] == SITE["certificate"] and shown["remote_id"] == SITE["remote_id"]
    assert put.status == 400 and refusal["field"] == "sites[0].certificate" and "expired on" in refusal["problem"]
    assert gw.tenants["blue"].sites[0].certs.certificate == SITE["certificate"]  # nothing changed
    expiry = round(min(GW.not_valid_after_utc, CA.not_valid_after_utc).timestamp())
    assert value(metrics, 'nvfabric_gateway_site_certificate_expiry_time_seconds{site="paris",tenant="blue"}') \
        == expiry
