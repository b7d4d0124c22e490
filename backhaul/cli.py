"""``ztna site``: run a branch site's router towards the PoP."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click

from ztna.config import ConfigError


@click.group("site")
def site() -> None:
    """Branch site router: the LAN's internet traffic through the PoP."""


@site.command("run")
@click.option("--config", "config", type=click.Path(path_type=Path), required=True, help="site.toml")
def run_cmd(config: Path) -> None:
    """Run the site router in the foreground (root: it makes a TUN and routes)."""
    from .config import load
    from .site import Site

    try:
        cfg = load(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s site %(levelname)s %(message)s")
    from ztna.nft import NftError

    try:
        asyncio.run(Site(cfg).run())
    except OSError as exc:
        raise click.ClickException(f"{exc} (ztna site run needs root: it makes a TUN and routes)") from exc
    except NftError as exc:
        raise click.ClickException(f"{exc} (a gateway site needs nftables and root)") from exc
