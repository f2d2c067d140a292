"""Certificates for the tests of IPsec sites with `auth: certificate`: made by strongSwan's `pki` as an operator
would (`Pki`, for the tests where charon checks them), or built in-process with `cryptography` where the test
needs what `pki` will not make (an expired certificate, a CA without CA:TRUE, a short RSA key)."""

from __future__ import annotations

import datetime
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

# ---------------------------------------------------------------------- with pki (the operator's tool)


@dataclass(frozen=True)
class Issued:
    """A key and its certificate, as files (for swanctl.conf) and as PEM text (for the gateway's config)."""

    key: Path
    cert: Path

    @property
    def key_pem(self) -> str:
        return self.key.read_text()

    @property
    def cert_pem(self) -> str:
        return self.cert.read_text()


class Pki:
    """`pki --gen`, `--self --ca`, `--issue` in a directory (ECDSA P-256 keys: quick to make)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _run(self, argv: list[str], out: Path, stdin: bytes | None = None) -> None:
        # pki's own plugin warnings go to stderr; the PEM to stdout
        done = subprocess.run(["pki", *argv, "--outform", "pem"], input=stdin, capture_output=True, check=False,
                              timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"pki {' '.join(argv)}: {done.stderr.decode(errors='replace')[-500:]}")
        out.write_bytes(done.stdout)

    def _key(self, name: str) -> Path:
        path = self.directory / f"{name}.key"
        self._run(["--gen", "--type", "ecdsa", "--size", "256"], path)
        return path

    def ca(self, name: str, dn: str) -> Issued:
        key = self._key(name)
        cert = self.directory / f"{name}.crt"
        self._run(["--self", "--ca", "--lifetime", "30", "--in", str(key), "--dn", dn], cert)
        return Issued(key, cert)

    def issue(self, ca: Issued, name: str, dn: str, *sans: str) -> Issued:
        key = self._key(name)
        pub = self.directory / f"{name}.pub"
        self._run(["--pub", "--in", str(key)], pub)
        cert = self.directory / f"{name}.crt"
        self._run(["--issue", "--in", str(pub), "--cacert", str(ca.cert), "--cakey", str(ca.key), "--dn", dn,
                   "--lifetime", "30", *(a for s in sans for a in ("--san", s))], cert)
        return Issued(key, cert)


# ---------------------------------------------------------------------- in-process (what pki will not make)


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, password: bytes | None = None) -> str:
    crypt = serialization.NoEncryption() if password is None else serialization.BestAvailableEncryption(password)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, crypt).decode()


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def build(cn: str, key, issuer: tuple[x509.Certificate, object] | None = None, *, ca: bool | None = False,
          days: tuple[int, int] = (-1, 30), sans: tuple[x509.GeneralName, ...] = (),
          cert_sign: bool | None = None) -> x509.Certificate:
    """A certificate for `key` named CN=`cn`, signed by `issuer` (its certificate and key; None: self-signed);
    `ca`: basicConstraints CA (None: no such extension); valid from `days[0]` to `days[1]` days from now;
    `cert_sign`: a keyUsage with or without keyCertSign (None: no keyUsage)."""
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    signer_name, signer_key = (name, key) if issuer is None else (issuer[0].subject, issuer[1])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(signer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now + datetime.timedelta(days=days[0]))
               .not_valid_after(now + datetime.timedelta(days=days[1])))
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if cert_sign is not None:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, cert_sign, cert_sign, False,
                                                      False), critical=True)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(signer_key, hashes.SHA256())
