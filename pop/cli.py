"""``ztna pop``: run the cloud PoP."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click

from ztna.config import ConfigError


@click.group("pop")
def pop() -> None:
    """Cloud PoP: agents and outbound-only gateway connectors meet on port 443."""


@pop.command("run")
@click.option("--config", "config", type=click.Path(path_type=Path), required=True, help="pop.toml")
def run_cmd(config: Path) -> None:
    """Run the PoP in the foreground."""
    from .config import load
    from .service import Pop

    try:
        cfg, policy = load(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s pop %(levelname)s %(message)s")
    try:
        p = Pop(cfg, policy)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        asyncio.run(p.run())
    except OSError as exc:
        raise click.ClickException(str(exc)) from exc


@pop.command("explain")
@click.argument("src")
@click.argument("dst")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Destination port (0 = none given).")
@click.option("--proto", type=click.Choice(["tcp", "udp", "icmp"]), default="tcp", show_default=True)
@click.option("--config", "config", type=click.Path(path_type=Path), required=True, help="pop.toml")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def explain_cmd(src: str, dst: str, port: int, proto: str, config: Path, as_json: bool) -> None:
    """Which firewall rule and network rule a flow SRC -> DST matches, and the exit it takes (no network).

    SRC is site:NAME, user:NAME or an IPv4 address (inside a site's LAN it is
    that site); DST an IPv4 address, or a name matched as if the PoP's DNS had
    answered it."""
    import json

    from .config import load
    from .netrules import ExplainError, explain, explain_text

    try:
        cfg, _ = load(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        e = explain(cfg.rule_set, {s.name: s.lan for s in cfg.sites.values()}, src, dst, port, proto)
    except ExplainError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(e, indent=2) if as_json else explain_text(e))
