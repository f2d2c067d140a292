"""An IPsec site that authenticates with certificates (`auth: certificate`): what the gateway is given, and
what it refuses before anything is applied.

```yaml
    sites:
      - name: paris
        remote_address: 203.0.113.50
        auth: certificate
        certificate: |                # the gateway's certificate towards this site (PEM), shown by GET
          -----BEGIN CERTIFICATE-----
          ...
        private_key: |                # its private key (PEM, unencrypted): a secret, as a psk is
          -----BEGIN EC PRIVATE KEY-----
          ...
        ca_certificates: [|PEM, ...]  # the CA(s) that sign the site's certificate: the tenant's own
        remote_id: "C=FR, O=blue, CN=paris"   # what the site's certificate carries: its subject or a subjectAltName
        local_id: gw.blue.example     # optional: one of the certificate's subjectAltNames; default its subject
        prefixes: [10.20.0.0/24]
```

Everything is per site, the gateway's own certificate included: a tenant's site trusts its tenant's CA, not
the provider's, so the gateway shows each site a certificate that site can verify (issued by the tenant's CA,
or by the provider's when the tenant chooses to trust it: the operator decides by what it puts here), and a
change of one tenant's certificates is that tenant's change only. The site's CAs are per site too: charon
accepts a site's certificate only through the CAs of that site's own connection, so no tenant's CA (nor the
provider's) can vouch for another tenant's site.

Parsed with the `cryptography` package, never by hand. Refusals name the field and never show the key.
Whether a certificate is valid *now* is judged when it is given (`check_new`: the API's PUT and a reload), not
when the gateway starts with one it already held: a certificate that has expired since must not keep every
tenant's gateway from starting (its site refuses it; the status shows `not_after`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID

from nvfabric.vnet.errors import ModelError
from nvfabric.vnet.model import check_dns_name, check_list

FIELDS = ("certificate", "private_key", "ca_certificates", "remote_id", "local_id")
HIDDEN = "<secret>"
RSA_MIN_BITS = 2048
CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
ID_MAX = 255
# strongSwan's distinguished name syntax: RDNs `attribute=value` separated by ',' (or '/'), in the
# certificate's order, as `pki --print` shows a subject
DN_RE = re.compile(r"^\s*[A-Za-z][A-Za-z0-9.]*\s*=[^,/]+(\s*[,/]\s*[A-Za-z][A-Za-z0-9.]*\s*=[^,/]+)*$")


def _one_certificate(value: Any, where: str, what: str) -> x509.Certificate:
    if not isinstance(value, str):
        raise ModelError(where, value, f"must be {what} in PEM (a string)")
    try:
        certs = x509.load_pem_x509_certificates(value.encode())
    except ValueError:
        raise ModelError(where, _short(value), f"is not {what} in PEM (-----BEGIN CERTIFICATE-----)") from None
    if len(certs) != 1:
        raise ModelError(where, _short(value), f"holds {len(certs)} certificates: one a field (a list item)")
    return certs[0]


def _short(pem: str) -> str:
    """What an error shows of a certificate: its first line (not kilobytes of base64)."""
    return pem.strip().splitlines()[0][:64] if pem.strip() else pem


def _public(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_key(value: Any) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if not isinstance(value, str):
        raise ModelError("private_key", HIDDEN, "must be a private key in PEM (a string)")
    try:
        key = serialization.load_pem_private_key(value.encode(), password=None)
    except TypeError:  # cryptography's word for an encrypted key without a password
        raise ModelError("private_key", HIDDEN, "is encrypted: give it unencrypted (it is kept as a secret, "
                         "as a psk is)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ModelError("private_key", HIDDEN, "is not a private key in PEM (-----BEGIN ... PRIVATE KEY-----)") \
            from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < RSA_MIN_BITS:
            raise ModelError("private_key", HIDDEN, f"an RSA key of {key.key_size} bits: at least {RSA_MIN_BITS}")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, CURVES):
        return key
    raise ModelError("private_key", HIDDEN, "must be an RSA key or an ECDSA key on P-256, P-384 or P-521")


def _is_ca(cert: x509.Certificate) -> str | None:
    """Why `cert` cannot sign certificates (None: it can)."""
    try:
        basic = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        return "is not a CA certificate (no basicConstraints CA:TRUE)"
    if not basic.ca:
        return "is not a CA certificate (its basicConstraints say CA:FALSE)"
    try:
        usage = cert.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    except x509.ExtensionNotFound:
        return None
    return None if usage.key_cert_sign else "is not a CA certificate (its keyUsage lacks keyCertSign)"


def _alt_names(cert: x509.Certificate) -> list[str]:
    """The certificate's subjectAltNames as identities: DNS names, IP addresses, email addresses."""
    try:
        names = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return []
    return [*names.get_values_for_type(x509.DNSName), *(str(a) for a in names.get_values_for_type(x509.IPAddress)),
            *names.get_values_for_type(x509.RFC822Name)]


def check_identity(value: Any, where: str) -> str:
    """An IKE identity as charon reads it: a distinguished name, an IP address, an email address or a DNS name;
    one site's, so no wildcard."""
    if not isinstance(value, str) or not value.strip() or len(value) > ID_MAX or not value.isprintable():
        raise ModelError(where, value, f"must be an identity of 1 to {ID_MAX} printable characters")
    if value.startswith("%") or "*" in value:
        raise ModelError(where, value, "a wildcard would accept any certificate its CA signed: name the site "
                         "(its certificate's subject or a subjectAltName)")
    if "=" in value:
        if not DN_RE.match(value):
            raise ModelError(where, value, "is not a distinguished name (e.g. \"C=FR, O=blue, CN=paris\", in "
                             "the certificate's order, as `pki --print` shows its subject)")
        return value
    if "@" in value:
        local, _, domain = value.partition("@")
        if not local or " " in value:
            raise ModelError(where, value, "is not an email address")
        check_dns_name(domain, where)
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    try:
        check_dns_name(value, where)
    except ModelError:
        raise ModelError(where, value, "is not an identity: a distinguished name, an IP address, an email address "
                         "or a DNS name") from None
    return value


@dataclass(frozen=True)
class SiteCertificates:
    """A site's certificate authentication: the gateway's certificate and key for it, the CAs that sign the
    site's certificate, and the identities of both ends. Validated on construction; errors name the field
    (relative to the site)."""

    certificate: str = field(repr=False)
    private_key: str = field(repr=False)
    ca_certificates: tuple[str, ...] = field(repr=False)
    remote_id: str
    local_id: str | None = None  # one of the certificate's subjectAltNames; None: its subject
    _cert: x509.Certificate = field(init=False, repr=False, compare=False)
    _key: Any = field(init=False, repr=False, compare=False)
    _cas: tuple[x509.Certificate, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cert = _one_certificate(self.certificate, "certificate", "a certificate")
        key = _load_key(self.private_key)
        if _public(key.public_key()) != _public(cert.public_key()):
            raise ModelError("private_key", HIDDEN, "does not belong to the certificate (their public keys differ)")
        if not isinstance(self.ca_certificates, tuple) or not self.ca_certificates:
            raise ModelError("ca_certificates", [], "at least one: the CA that signs the site's certificate (the "
                             "tenant's own)")
        cas = []
        for i, pem in enumerate(self.ca_certificates):
            ca = _one_certificate(pem, f"ca_certificates[{i}]", "a CA certificate")
            if (why := _is_ca(ca)) is not None:
                raise ModelError(f"ca_certificates[{i}]", _short(pem), why)
            if ca in cas:
                raise ModelError(f"ca_certificates[{i}]", _short(pem), f"repeats ca_certificates[{cas.index(ca)}]")
            cas.append(ca)
        check_identity(self.remote_id, "remote_id")
        if self.local_id is not None:
            check_identity(self.local_id, "local_id")
            names = _alt_names(cert)
            if self.local_id not in names:
                raise ModelError("local_id", self.local_id, "is not one of the certificate's subjectAltNames ("
                                 f"{', '.join(names) or 'it has none'}); leave it out for the certificate's subject")
        object.__setattr__(self, "_cert", cert)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_cas", tuple(cas))

    @classmethod
    def from_dict(cls, body: dict[str, Any], where: str) -> SiteCertificates:
        for name in ("certificate", "private_key", "ca_certificates", "remote_id"):
            if name not in body:
                raise ModelError(f"{where}.{name}", None, "required with auth certificate")
        cas = check_list(body["ca_certificates"], f"{where}.ca_certificates")
        try:
            return cls(body["certificate"], body["private_key"], tuple(cas), body["remote_id"], body.get("local_id"))
        except ModelError as exc:
            raise exc.within(where) from None

    def as_dict(self, secrets: bool = True) -> dict[str, Any]:
        out = {"certificate": self.certificate, "private_key": self.private_key if secrets else HIDDEN,
               "ca_certificates": list(self.ca_certificates), "remote_id": self.remote_id}
        return out if self.local_id is None else {**out, "local_id": self.local_id}

    @property
    def subject(self) -> str:
        """The gateway's certificate's subject, in strongSwan's order (as `pki --print` shows it)."""
        return ", ".join(f"{a.rfc4514_attribute_name}={a.value}" for rdn in self._cert.subject.rdns for a in rdn)

    @property
    def local_identity(self) -> str:
        """The gateway's IKE identity for charon: `local_id`, else the certificate's subject as its DER
        (`asn1dn:#hex`: exactly the certificate's, whatever its attributes and their order)."""
        if self.local_id is not None:
            return self.local_id
        return "asn1dn:#" + self._cert.subject.public_bytes().hex()

    def charon_key(self) -> dict[str, str]:
        """The `load-key` body: the key in the traditional PEM of its type (PKCS#1, SEC 1), which charon's
        openssl plugin reads without the pkcs8 plugin."""
        kind = "rsa" if isinstance(self._key, rsa.RSAPrivateKey) else "ecdsa"
        pem = self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()).decode()
        return {"type": kind, "data": pem}

    def validity_problems(self, now: datetime) -> list[tuple[str, str, str]]:
        """(field, subject, problem) for each certificate here not valid at `now` (timezone-aware)."""
        out = []
        for name, cert in (("certificate", self._cert),
                           *((f"ca_certificates[{i}]", c) for i, c in enumerate(self._cas))):
            if now > cert.not_valid_after_utc:
                out.append((name, cert.subject.rfc4514_string(),
                            f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"))
            elif now < cert.not_valid_before_utc:
                out.append((name, cert.subject.rfc4514_string(),
                            f"is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"))
        return out

    def _first_to_expire(self) -> x509.Certificate:
        return min((self._cert, *self._cas), key=lambda c: c.not_valid_after_utc)

    @property
    def first_expiry(self) -> datetime:
        """When the first of these certificates (the gateway's, the site's CAs) expires."""
        return self._first_to_expire().not_valid_after_utc

    def status(self) -> dict[str, Any]:
        """What the site's status shows: both identities and when the first of these certificates expires."""
        first = self._first_to_expire()
        return {"local_id": self.local_id or self.subject, "remote_id": self.remote_id,
                "not_after": first.not_valid_after_utc.isoformat(), "first_to_expire": first.subject.rfc4514_string()}


def check_new(sites: Iterable[Any], old: Iterable[Any], now: datetime) -> None:
    """The certificates a change gives (a site's new or different ones) must be valid at `now`; ModelError
    naming the first that is not. Those a site already had are not judged again: a change of its prefixes
    must not be refused because its certificate is about to be replaced."""
    before = {s.name: s.certs for s in old}
    for i, site in enumerate(sites):
        certs = site.certs
        if certs is None:
            continue
        held = before.get(site.name)
        for name, subject, problem in certs.validity_problems(now):
            if held is not None and _same(held, certs, name):
                continue
            raise ModelError(f"sites[{i}].{name}", subject, problem)


def _same(a: SiteCertificates, b: SiteCertificates, name: str) -> bool:
    if name == "certificate":
        return a.certificate == b.certificate
    return b.ca_certificates[int(name[name.index("[") + 1:-1])] in a.ca_certificates
