"""``ztna agent``: run the agent, show its status, give DNS back by hand."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

import click

from ztna.config import ConfigError

DEFAULT_STATE = "/run/ztna-agent"


def _state_dir(config: Path | None, state_dir: str | None) -> Path:
    if state_dir:
        return Path(state_dir)
    if config:
        from .config import load

        try:
            return Path(load(config).state_dir)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
    return Path(DEFAULT_STATE)


@click.group("agent")
def agent() -> None:
    """ZTNA agent: TUN, leased 100.64/10 addresses, DNS interception, mTLS tunnel."""


@agent.command("run")
@click.option("--config", "config", type=click.Path(path_type=Path), required=True, help="agent.toml")
def run_cmd(config: Path) -> None:
    """Run the agent in the foreground (needs root: it creates a TUN and rewrites the resolver file)."""
    from .config import load
    from .service import Agent
    from .takeover import TakeoverError
    from ztna.tun import TunError

    try:
        cfg = load(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s agent %(levelname)s %(message)s")
    if os.geteuid() != 0:
        raise click.ClickException("the agent creates a TUN device and takes over DNS: run it as root")
    try:
        asyncio.run(Agent(cfg).run())
    except (TakeoverError, TunError, OSError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from exc


@agent.command("status")
@click.option("--config", type=click.Path(path_type=Path), help="agent.toml (to find its state directory)")
@click.option("--state-dir", help=f"state directory of the running agent [default: {DEFAULT_STATE}]")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(config: Path | None, state_dir: str | None, as_json: bool) -> None:
    """Leases, flows, tunnel state and counters of the running agent."""
    from .service import query_status

    try:
        st = query_status(_state_dir(config, state_dir))
    except (ConnectionError, OSError) as exc:
        raise click.ClickException(f"{exc}; start one with 'sudo ztna agent run --config agent.toml'") from exc
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    t = st["tunnel"]
    click.echo(f"identity   {st['identity']}")
    click.echo(f"DNS        stub {st['dns']['stub']}; other names -> {', '.join(st['dns']['upstreams'])}")
    since = time.strftime("%H:%M:%S", time.localtime(t["since"]))
    line = f"tunnel     {t['state']} since {since}; gateway {t['gateway']}"
    if t["gateway_ip"]:
        line += f" ({t['gateway_ip']})"
    click.echo(line + f"; {t['bytes_out']} bytes out, {t['bytes_in']} in")
    if t["last_error"]:
        click.echo(f"           last error: {t['last_error']}")
    udp = t.get("udp") or {}
    if udp.get("state", "off") != "off":
        click.echo(f"data       {'UDP' if udp['state'] == 'up' else 'TLS'} (UDP channel {udp['state']}, "
                   f"gateway port {udp.get('port')})")
    click.echo("")
    if st["leases"]:
        w = max(len(l["fqdn"]) for l in st["leases"])
        click.echo(f"{'application':<{w}}  {'address':<15}  {'state':<8}  flows  idle")
        for l in st["leases"]:
            click.echo(f"{l['fqdn']:<{w}}  {l['addr']:<15}  {l['state']:<8}  {l['flows']:>5}  {l['idle_s']:.0f}s")
    else:
        click.echo("no leases yet (resolve a private application's name to make one)")
    click.echo("")
    click.echo("counters   " + ", ".join(f"{k} {v}" for k, v in st["counters"].items()))


@agent.command("restore")
@click.option("--config", type=click.Path(path_type=Path), help="agent.toml (to find its state directory)")
@click.option("--state-dir", help=f"state directory [default: {DEFAULT_STATE}]")
def restore_cmd(config: Path | None, state_dir: str | None) -> None:
    """Give the machine its DNS settings back after an agent died (normally automatic)."""
    from .takeover import TakeoverError, restore

    try:
        click.echo(restore(_state_dir(config, state_dir) / "dns-takeover.json"))
    except TakeoverError as exc:
        raise click.ClickException(str(exc)) from exc
