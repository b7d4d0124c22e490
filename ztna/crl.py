"""Certificate revocation: the CA's CRL, made by ``ztna pki revoke``, read by the services.

Making (``revoke``, ``render``) and reading (``parse``) are pure: bytes and time
in, a CRL or a set of serial numbers out.  :class:`CrlWatch` is the one piece
with I/O: a service calls ``poll()`` from its tick, and it re-reads the file
only when its identity (inode, size, mtime) has changed.

Why the services check the serial themselves instead of OpenSSL's
``VERIFY_CRL_CHECK_LEAF``: the CRL changes while the service runs and the live
sessions of a revoked certificate must end too, which OpenSSL's check (done at
the handshake only, against the CRL loaded into the context) cannot do; and a
CRL past its ``next_update`` would make OpenSSL refuse every client.  So the
handshake verifies the chain as always, and the service then looks the leaf's
serial up in the CRL it holds.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from .pki import Issued

NEXT_UPDATE = dt.timedelta(days=365)  # the services keep enforcing a CRL past it, and say so


class CRLError(ValueError):
    """A CRL could not be read or trusted; the message says which file and why."""


def render(ca: Issued, serials: dict[int, dt.datetime], *, now: dt.datetime) -> bytes:
    """A PEM CRL signed by ``ca`` listing ``serials`` (serial -> when it was revoked)."""
    b = (x509.CertificateRevocationListBuilder()
         .issuer_name(ca.cert.subject)
         .last_update(now)
         .next_update(now + NEXT_UPDATE))
    for serial, when in sorted(serials.items()):
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
    return b.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _load(data: bytes, ca_cert: x509.Certificate, where: str) -> x509.CertificateRevocationList:
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise CRLError(f"{where}: not a PEM certificate revocation list ({exc})") from None
    if crl.issuer != ca_cert.subject:
        raise CRLError(f"{where}: issued by {crl.issuer.rfc4514_string()}, not by the CA "
                       f"{ca_cert.subject.rfc4514_string()}")
    try:
        ok = crl.is_signature_valid(ca_cert.public_key())
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise CRLError(f"{where}: its signature is not the CA's")
    return crl


def parse(data: bytes, ca_cert: x509.Certificate, *, where: str = "CRL") -> frozenset[int]:
    """The revoked serial numbers of a PEM CRL that ``ca_cert`` signed; CRLError otherwise."""
    return frozenset(r.serial_number for r in _load(data, ca_cert, where))


def entries(data: bytes, ca_cert: x509.Certificate, *, where: str = "CRL") -> dict[int, dt.datetime]:
    """serial -> revocation time of a PEM CRL that ``ca_cert`` signed; CRLError otherwise."""
    return {r.serial_number: r.revocation_date_utc for r in _load(data, ca_cert, where)}


def revoke(ca: Issued, existing: bytes | None, cert: x509.Certificate, *, now: dt.datetime) -> tuple[bytes, bool]:
    """The CRL with ``cert`` added (``existing`` is the current one, or None): (PEM, newly revoked?)."""
    if cert.issuer != ca.cert.subject:
        raise CRLError(f"the certificate was issued by {cert.issuer.rfc4514_string()}, not by this CA")
    known = entries(existing, ca.cert, where="the existing CRL") if existing is not None else {}
    new = cert.serial_number not in known
    known.setdefault(cert.serial_number, now)
    return render(ca, known, now=now), new


def past_next_update(data: bytes, now: dt.datetime) -> bool:
    try:
        nu = x509.load_pem_x509_crl(data).next_update_utc
    except ValueError:
        return False
    return nu is not None and nu < now


class CrlWatch:
    """A CRL file a service enforces; ``poll()`` re-reads it when it changed.

    A file that cannot be read or trusted leaves the serials read before in
    force (a corrupt CRL must not un-revoke anybody); ``error`` says why.
    """

    def __init__(self, path: str | Path, ca_cert: x509.Certificate):
        self.path = Path(path)
        self.ca_cert = ca_cert
        self.serials: frozenset[int] = frozenset()
        self.stamp: tuple | None = None
        self.error = ""
        self.loaded = False

    def _stamp(self):
        st = os.stat(self.path)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def poll(self) -> tuple[str, frozenset[int]] | None:
        """None when nothing changed; else (message, serials newly revoked).

        A message starting with ``"error"`` is a refusal: the old serials stay."""
        try:
            stamp = self._stamp()
        except OSError as exc:
            stamp = ("missing", exc.strerror)
        if stamp == self.stamp:
            return None
        self.stamp = stamp
        try:
            data = self.path.read_bytes()
            serials = parse(data, self.ca_cert, where=str(self.path))
        except OSError as exc:
            self.error = f"{self.path}: cannot read it: {exc.strerror}"
        except CRLError as exc:
            self.error = str(exc)
        else:
            added = serials - self.serials
            first = not self.loaded
            self.serials, self.error, self.loaded = serials, "", True
            late = " (past its next update: still enforced; run `ztna pki crl` to renew it)" \
                if past_next_update(data, dt.datetime.now(dt.UTC)) else ""
            what = "read" if first else "re-read"
            return f"CRL {self.path} {what}: {len(serials)} revoked certificate(s), {len(added)} new{late}", added
        kept = f"{len(self.serials)} revoked serial(s) read before stay in force" if self.loaded else \
            "no CRL in force yet"
        return f"error: CRL not taken: {self.error}; {kept}", frozenset()

    def refresh(self, log) -> tuple[frozenset[int], bool]:
        """:meth:`poll`, said in ``log``: (serials newly revoked, whether the file was refused)."""
        got = self.poll()
        if got is None:
            return frozenset(), False
        message, added = got
        if message.startswith("error"):
            log.error("%s", message)
            return frozenset(), True
        log.info("%s", message)
        return added, False

    def revoked(self, serial: int) -> bool:
        """For a leaf the handshake already chained to this CA."""
        return serial in self.serials

    def revoked_cert(self, cert: x509.Certificate) -> bool:
        """For a leaf that may come from another CA (the agentless front's client CA): issuer and serial."""
        return cert.issuer == self.ca_cert.subject and cert.serial_number in self.serials


def check_config(crl: str, ca: str, where: str) -> None:
    """A role's ``crl = PATH`` at load: readable and signed by ``ca``, else ConfigError naming ``where``."""
    from .config import ConfigError

    try:
        parse(Path(crl).read_bytes(), x509.load_pem_x509_certificate(Path(ca).read_bytes()), where=crl)
    except OSError as exc:
        raise ConfigError(f"{where} = {crl}: cannot read it ({exc.strerror}); "
                          "`ztna pki crl --dir DIR` writes an empty one") from None
    except (CRLError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
