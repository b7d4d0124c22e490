"""The ``ztna`` command: one root, one sub-command group per role.

Role groups are imported only when they are used, so ``ztna pki`` does not pay
for scapy and a missing optional role never breaks the others.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from . import __version__

# name -> (module, attribute, one-line help).  A role is listed only when its
# module is present in this installation.
ROLES: dict[str, tuple[str, str, str]] = {
    "pki": ("ztna.pki_cli", "pki_group", "Certificate authority and certificates (ECDSA P-256)."),
    "agent": ("agent.cli", "agent", "ZTNA agent: TUN, leased 100.64/10 addresses, DNS interception, mTLS tunnel."),
    "gateway": ("gateway.cli", "gateway", "ZTNA gateway: tunnel server, per-client NAT, private DNS."),
    "pop": ("pop.cli", "pop", "Cloud PoP: agents and outbound-only gateway connectors meet on 443, routed by SNI."),
    "site": ("backhaul.cli", "site", "Branch site router: the LAN's internet traffic through the PoP's mTLS tunnel."),
    "authdns": ("netns.authdns", "authdns", "Small authoritative DNS server for zone files (lab public/private DNS)."),
    "dns": ("gateway.dnsfilter.cli", "dns", "DNS security resolver and block page."),
    "proxy": ("gateway.proxy.cli", "proxy", "HTTPS forward proxy, explicit and transparent."),
    "roaming": ("agent.roaming.cli", "roaming", "Roaming DNS client: loopback takeover and split DNS."),
    "lab": ("netns.cli", "lab", "Sealed network-namespace lab: build, run and verify scenarios."),
    "status": ("ztna.status", "status_cmd", "Which roles run on this machine, and their health."),
}


def _available(name: str) -> bool:
    module = ROLES[name][0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class RoleGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n in ROLES if _available(n))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in ROLES or not _available(cmd_name):
            return None
        module, attr, _ = ROLES[cmd_name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, ROLES[n][2]) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=RoleGroup)
@click.version_option(__version__, prog_name="ztna")
def root() -> None:
    """ztna: zero-trust access and secure-edge flows, run for real on Linux."""


def reload_role(role: str, run_dir, timeout: float, as_json: bool) -> None:
    """``ztna ROLE reload``: ask the running ROLE to read its config again and say what happened.

    Exit status 0: the new config is in force; 1: refused (file, line and reason
    printed), the old one stays."""
    import json

    from . import runstate

    try:
        r = runstate.request_reload(run_dir, role, timeout=timeout)
    except runstate.RunStateError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({"ok": r.ok, "message": r.message, "changes": r.changes}, indent=2))
    else:
        click.echo(r.message, err=not r.ok)
        for c in r.changes:
            click.echo(f"  {c}")
    if not r.ok:
        raise SystemExit(1)


def main() -> None:
    """Console-script entry point."""
    try:
        root(prog_name="ztna")
    except KeyboardInterrupt:
        sys.exit(130)
