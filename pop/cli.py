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
