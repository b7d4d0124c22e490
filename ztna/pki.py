"""Certificates for every component: one CA, leaves with ECDSA P-256 keys.

Pure functions build certificates from arguments (time is passed in); the only
I/O is ``write_pem`` / ``load_*``, which keep private keys at mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import files

KINDS = ("agent", "gateway", "server", "client", "ca")


class PKIError(Exception):
    """A certificate or key could not be made or read; the message says which and why."""


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ztna")]
    if cn is not None:  # None only for tests of a certificate that names no identity
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def new_ca(common_name: str, *, now: dt.datetime, days: int = 3650, parent: Issued | None = None) -> Issued:
    """A CA that may sign leaves only (path length 0): self-signed, or signed by ``parent``.

    A CA signed by another path-length-0 CA is past its parent's path length, so no
    verifier accepts what it signs; the tests use one to check that refusal.
    """
    key = new_key()
    name = _name(common_name)
    signer = parent.key if parent is not None else key
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(parent.cert.subject if parent is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(signer, hashes.SHA256())
    )
    return Issued(cert, key)


def _san_entries(dns_names: list[str], ips: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    for ip in ips:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError as exc:
            raise PKIError(f"--ip {ip!r} is not an IP address") from exc
    return out


def issue(
    ca: Issued,
    common_name: str | None,
    *,
    kind: str,
    now: dt.datetime,
    dns_names: list[str] | None = None,
    ips: list[str] | None = None,
    days: float = 825,
    not_before: dt.datetime | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> Issued:
    """Issue a leaf certificate of ``kind`` signed by ``ca``.

    ``agent`` and ``client`` leaves carry clientAuth, ``gateway`` and ``server``
    serverAuth (a gateway also connects out, so it gets both).  The identity an
    agent proves is its common name.  A negative ``days`` makes an already
    expired certificate, a ``not_before`` in the future one not yet valid, and
    ``common_name=None`` one that names no identity; the tests use them to check
    refusals.
    """
    if kind not in KINDS or kind == "ca":
        raise PKIError(f"unknown certificate kind {kind!r}; use one of agent, gateway, server, client")
    key = key or new_key()
    if key.public_key().public_numbers() == ca.key.public_key().public_numbers():
        raise PKIError("a leaf key must never equal the CA key")
    start = not_before or (now - dt.timedelta(minutes=5))
    end = now + dt.timedelta(days=days)
    if end <= start:
        start = end - dt.timedelta(days=1)
    eku = {
        "agent": [ExtendedKeyUsageOID.CLIENT_AUTH],
        "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
        "server": [ExtendedKeyUsageOID.SERVER_AUTH],
        "gateway": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    }[kind]
    sans = _san_entries(list(dns_names or []), list(ips or []))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=False, crl_sign=False,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def identity_of(cert: x509.Certificate) -> str:
    """The identity a certificate proves: its subject common name."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        raise PKIError("certificate has no common name, so it names no identity")
    return str(attrs[0].value)


def identity_from_peercert(peer: dict) -> str:
    """Identity from ``ssl.SSLSocket.getpeercert()`` (the decoded form)."""
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    raise PKIError("peer certificate has no common name")


def write_pem(path: Path, data: bytes, *, private: bool) -> None:
    """Write atomically; private keys are created 0600 and never world-readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(path, data, 0o600 if private else 0o644)


def save(issued: Issued, directory: Path, name: str) -> tuple[Path, Path]:
    """Save as ``NAME.pem`` and ``NAME.key`` in ``directory``."""
    directory = Path(directory)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    write_pem(key_path, issued.key_pem(), private=True)
    write_pem(cert_path, issued.cert_pem(), private=False)
    return cert_path, key_path


def load(directory: Path, name: str) -> Issued:
    """Load ``NAME.pem`` and ``NAME.key`` from ``directory``."""
    cert_path, key_path = Path(directory) / f"{name}.pem", Path(directory) / f"{name}.key"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise PKIError(f"{exc.filename} does not exist; run 'ztna pki init' / 'ztna pki issue' first") from exc
    except ValueError as exc:
        raise PKIError(f"{cert_path} or {key_path} is not a PEM certificate/key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{key_path} is not an ECDSA key")
    return Issued(cert, key)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
