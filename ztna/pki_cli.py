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
