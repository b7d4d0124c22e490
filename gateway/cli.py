"""``ztna gateway``: run the ZTNA gateway."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import click

from ztna.config import ConfigError


@click.group("gateway")
def gateway() -> None:
    """ZTNA gateway: mTLS tunnel server, per-client NAT, private DNS."""


@gateway.command("run")
@click.option("--config", "config", type=click.Path(path_type=Path), required=True, help="gateway.toml")
def run_cmd(config: Path) -> None:
    """Run the gateway in the foreground (needs root: TUN, nftables, ip_forward)."""
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
    try:
        asyncio.run(Gateway(cfg, policy).run())
    except (TunError, NftError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
