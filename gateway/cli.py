"""``ztna gateway``: run the ZTNA gateway."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
from pathlib import Path

import click

from ztna.config import ConfigError


@click.group("gateway")
def gateway() -> None:
    """ZTNA gateway: mTLS tunnel server, per-client NAT, private DNS."""


@gateway.command("run")
@click.option("--config", "config", type=click.Path(path_type=Path), required=True, help="gateway.toml")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the running gateway keeps gateway.pid and gateway.json (for `ztna gateway reload` "
                   "and `ztna status`); /run/ztna by convention.")
def run_cmd(config: Path, run_dir: Path | None) -> None:
    """Run the gateway in the foreground (needs root: TUN, nftables, ip_forward).

    SIGHUP (or `ztna gateway reload`) reads gateway.toml's [policy] again."""
    from .config import load
    from .service import Gateway, NftError
    from ztna.tun import TunError

    try:
        cfg, policy = load(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s gateway %(levelname)s %(message)s")
    if os.geteuid() != 0:
        raise click.ClickException("the gateway creates a TUN device and nftables rules: run it as root")
    gw = Gateway(cfg, policy, config_path=config, run_dir=run_dir)
    if cfg.agentless is not None:
        try:
            gw.agentless_front()  # now, so a bad key file or certificate stops the start, not the first browser
        except (OSError, ValueError, ssl.SSLError) as exc:
            raise click.ClickException(f"[agentless]: {exc}") from exc
    try:
        asyncio.run(gw.run())
    except (TunError, NftError, OSError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from exc


@gateway.command("reload")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("/run/ztna"),
              show_default=True, help="The --run-dir the gateway was started with.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the gateway's answer.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def reload_cmd(run_dir: Path, timeout: float, as_json: bool) -> None:
    """Make the running gateway read gateway.toml's [policy] again (SIGHUP) and say whether it took it.

    Exit status 0: the new policy is in force (leases it no longer allows are
    withdrawn, their flows end); 1: refused (file, line and reason printed), the old one stays.
    """
    from ztna.cli import reload_role

    reload_role("gateway", run_dir, timeout, as_json)


@gateway.group("user")
def user() -> None:
    """Local users of the agentless sign-in page (scrypt hashes in [agentless] users)."""


def _store(config: Path, users_file: Path | None):
    from .agentless.users import UserError, UserStore

    if users_file is None:
        from .config import load

        try:
            cfg, _ = load(config)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
        if cfg.agentless is None:
            raise click.ClickException(f"{config} has no [agentless] section, so no users file: add one (docs/agentless.md)")
        users_file = Path(cfg.agentless.users)
    try:
        return UserStore(users_file)
    except UserError as exc:
        raise click.ClickException(str(exc)) from exc


def _password(stdin: bool) -> str:
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    return click.prompt("password", hide_input=True, confirmation_prompt=True)


_config_opt = click.option("--config", "config", type=click.Path(path_type=Path), default=Path("/etc/ztna/gateway.toml"),
                           show_default=True, help="gateway.toml naming the users file")
_users_opt = click.option("--users-file", type=click.Path(path_type=Path), help="the users file itself, instead of --config")
_stdin_opt = click.option("--password-stdin", is_flag=True, help="read the password from the first line of stdin")


def _set_password(config: Path, users_file: Path | None, password_stdin: bool, name: str, *, new: bool) -> None:
    from .agentless.users import UserError

    store = _store(config, users_file)
    try:
        (store.add if new else store.passwd)(name, _password(password_stdin))
    except UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"added {name} to {store.path}" if new else f"changed the password of {name} in {store.path}")


@user.command("add")
@_config_opt
@_users_opt
@_stdin_opt
@click.argument("name")
def user_add(config: Path, users_file: Path | None, password_stdin: bool, name: str) -> None:
    """Add user NAME with a password (asked twice, or --password-stdin)."""
    _set_password(config, users_file, password_stdin, name, new=True)


@user.command("passwd")
@_config_opt
@_users_opt
@_stdin_opt
@click.argument("name")
def user_passwd(config: Path, users_file: Path | None, password_stdin: bool, name: str) -> None:
    """Set a new password for user NAME (the user's open sessions end: they were signed before it)."""
    _set_password(config, users_file, password_stdin, name, new=False)


@user.command("remove")
@_config_opt
@_users_opt
@click.argument("name")
def user_remove(config: Path, users_file: Path | None, name: str) -> None:
    """Remove user NAME: the next sign-in fails (sessions already open keep running until they expire)."""
    from .agentless.users import UserError

    store = _store(config, users_file)
    try:
        store.remove(name)
    except UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"removed {name} from {store.path}")
