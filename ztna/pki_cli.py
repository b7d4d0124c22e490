"""``ztna pki``: make the CA and issue certificates."""

from __future__ import annotations

from pathlib import Path

import click

from . import pki


@click.group()
def pki_group() -> None:
    """Certificate authority and certificates (ECDSA P-256, keys 0600)."""


@pki_group.command("init")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True, help="Where ca.pem and ca.key go.")
@click.option("--cn", default="ztna CA", show_default=True, help="CA common name.")
@click.option("--days", default=3650, show_default=True, type=int)
@click.option("--force", is_flag=True, help="Replace an existing CA.")
def init(directory: Path, cn: str, days: int, force: bool) -> None:
    """Create a CA in DIR (ca.pem, ca.key)."""
    if (directory / "ca.key").exists() and not force:
        raise click.ClickException(f"{directory}/ca.key exists; pass --force to replace it (every issued certificate stops being trusted)")
    cert, key = pki.save(pki.new_ca(cn, now=pki.utcnow(), days=days), directory, "ca")
    click.echo(f"CA written: {cert} (key {key}, mode 0600)")


@pki_group.command("issue")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True, help="Directory holding ca.pem/ca.key; the leaf is written there.")
@click.option("--name", required=True, help="Identity / common name; files NAME.pem and NAME.key.")
@click.option("--kind", type=click.Choice(["agent", "gateway", "server", "client"]), required=True)
@click.option("--dns", "dns_names", multiple=True, help="DNS subjectAltName (repeatable).")
@click.option("--ip", "ips", multiple=True, help="IP subjectAltName (repeatable).")
@click.option("--days", default=825, show_default=True, type=float)
@click.option("--ca-name", default="ca", show_default=True, help="Basename of the signing CA files.")
def issue(directory: Path, name: str, kind: str, dns_names: tuple[str, ...], ips: tuple[str, ...], days: float, ca_name: str) -> None:
    """Issue a certificate for NAME signed by the CA in DIR."""
    try:
        ca = pki.load(directory, ca_name)
        leaf = pki.issue(ca, name, kind=kind, now=pki.utcnow(), dns_names=list(dns_names), ips=list(ips), days=days)
    except pki.PKIError as exc:
        raise click.ClickException(str(exc)) from exc
    cert, key = pki.save(leaf, directory, name)
    click.echo(f"{kind} certificate for {name!r} written: {cert} (key {key}, mode 0600)")


def _crl_path(directory: Path, crl: Path | None) -> Path:
    return crl if crl is not None else directory / "crl.pem"


@pki_group.command("revoke")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True, help="Directory holding ca.pem/ca.key and NAME.pem.")
@click.option("--crl", type=click.Path(path_type=Path), help="The CRL file (default DIR/crl.pem); created when absent.")
@click.option("--ca-name", default="ca", show_default=True, help="Basename of the signing CA files.")
@click.argument("name")
def revoke(directory: Path, crl: Path | None, ca_name: str, name: str) -> None:
    """Revoke the certificate DIR/NAME.pem: add it to the CRL, signed by the CA.

    The gateway re-reads the file within a second and ends NAME's live sessions."""
    from cryptography import x509

    from . import crl as crlmod

    path = _crl_path(directory, crl)
    try:
        ca = pki.load(directory, ca_name)
        cert = x509.load_pem_x509_certificate((directory / f"{name}.pem").read_bytes())
        existing = path.read_bytes() if path.exists() else None
        data, new = crlmod.revoke(ca, existing, cert, now=pki.utcnow())
    except FileNotFoundError as exc:
        raise click.ClickException(f"{exc.filename} does not exist") from exc
    except (pki.PKIError, crlmod.CRLError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    pki.write_pem(path, data, private=False)
    serial = f"{cert.serial_number:x}"
    click.echo(f"revoked {name} (serial {serial}) in {path}" if new else f"{name} (serial {serial}) was revoked already; {path} re-signed")


@pki_group.command("crl")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True, help="Directory holding ca.pem/ca.key.")
@click.option("--crl", type=click.Path(path_type=Path), help="The CRL file (default DIR/crl.pem).")
@click.option("--ca-name", default="ca", show_default=True, help="Basename of the signing CA files.")
def crl_cmd(directory: Path, crl: Path | None, ca_name: str) -> None:
    """Write the CRL anew (empty when there is none yet): the same revocations, a fresh next-update date."""
    from . import crl as crlmod

    path = _crl_path(directory, crl)
    try:
        ca = pki.load(directory, ca_name)
        entries = crlmod.entries(path.read_bytes(), ca.cert, where=str(path)) if path.exists() else {}
        data = crlmod.render(ca, entries, now=pki.utcnow())
    except (pki.PKIError, crlmod.CRLError) as exc:
        raise click.ClickException(str(exc)) from exc
    pki.write_pem(path, data, private=False)
    click.echo(f"CRL written: {path} ({len(entries)} revoked)")
