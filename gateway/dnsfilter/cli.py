"""``ztna dns``: run the DNS security resolver, explain a decision, read its statistics."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import signal
import time
from pathlib import Path

import click

from ztna import runstate
from ztna.cli import reload_role

from .config import ConfigError, load


def _config(path: Path):
    try:
        return load(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group("dns")
def dns() -> None:
    """DNS security resolver: per-identity policy, SPEC §4 answers, block page."""


@dns.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The resolver's TOML configuration (format: docs/dns-security.md).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to keep dns.pid and dns.json (for `ztna dns reload` and `ztna status`); "
                   "/run/ztna by convention, one folder per instance.")
@click.option("--verbose", is_flag=True, help="Log every block-page request and upstream problem.")
def run_cmd(config_path: Path, run_dir: Path | None, verbose: bool) -> None:
    """Serve DNS on the configured addresses (UDP and TCP) and the block page.

    SIGHUP (or `ztna dns reload`) reads the configuration, its lists and its
    category files again; a file that does not load leaves the running one in force."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("ztna.dns").setLevel(logging.INFO)
    cfg = _config(config_path)
    from . import blockpage, server

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set)
        r = server.Resolver(cfg)
        await r.start()
        r.start_metrics()
        if cfg.blockpage.serve:
            await blockpage.serve(r.engine)
        state = runstate.RunState(run_dir, "dns", config=config_path) if run_dir else None

        def on_hup() -> None:
            ok, msg, changes = r.reload(config_path)
            if state is not None:
                state.reloaded(ok=ok, message=msg, changes=changes, now=time.time())

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        if state is not None:
            state.write()
        click.echo(f"ztna dns: serving {', '.join(cfg.listen)} port {cfg.port}; "
                   f"{len(cfg.policies.policies)} policies, {len(cfg.policies.categories)} categorised domains; "
                   f"query log {cfg.query_log or 'off'}", err=True)
        try:
            await stop.wait()
        finally:
            if state is not None:
                state.remove()
            r.close()

    try:
        asyncio.run(main())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot listen: {exc}; is another DNS server running on that address?") from exc


@dns.command("reload")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("/run/ztna"),
              show_default=True, help="The --run-dir the resolver was started with.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the resolver's answer.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def reload_cmd(run_dir: Path, timeout: float, as_json: bool) -> None:
    """Make the running resolver read its configuration, lists and categories again (SIGHUP).

    Exit status 0: the new policies are in force; 1: refused (file, line and
    reason printed), the old ones stay.
    """
    reload_role("dns", run_dir, timeout, as_json)


@dns.command("explain")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--source", required=True, help="The client's address.")
@click.option("--device", default=None, help="The device identity (EDNS0 option 65001), if any.")
@click.option("--type", "qtype", default="A", show_default=True, help="Record type asked.")
@click.argument("name")
def explain_cmd(config_path: Path, source: str, device: str | None, qtype: str, name: str) -> None:
    """Say which policy applies to NAME from SOURCE and what a query gets (no network)."""
    from dnslib import QTYPE

    from .answers import Action, action, row_of
    from .names import BadName, normalize

    cfg = _config(config_path)
    try:
        ipaddress.ip_address(source)
        n = normalize(name)
        t = int(qtype[4:]) if qtype.upper().startswith("TYPE") else getattr(QTYPE, qtype.upper())
    except (ValueError, AttributeError, BadName) as exc:
        raise click.ClickException(f"bad argument: {exc}") from exc
    policy = cfg.policies.select(source, device)
    if policy is None:
        click.echo(f"{source} is in no served network: every query gets REFUSED")
        return
    v = cfg.policies.decide(policy, n)
    click.echo(f"policy:   {policy.name}")
    click.echo(f"name:     {n}")
    if v.blocked:
        click.echo(f"verdict:  bad, column {v.column.value}, because {v.reason} ({v.matched})")
    else:
        click.echo(f"verdict:  allowed{' by ' + v.allowed_by if v.allowed_by else ''}")
    click.echo(f"type:     {qtype.upper()} (row {row_of(t).value})")
    act = action(t, v.column)
    if act is Action.BLOCKPAGE:
        v4, v6 = cfg.blockpage.addresses(v.reason, v.column)
        click.echo(f"answer:   NOERROR with the block-page address {v4 if t == 1 else v6} (TTL {cfg.block_ttl})")
    elif act is Action.REFUSED:
        click.echo("answer:   REFUSED")
    else:
        click.echo("answer:   the real answer, from the cache or the upstreams")


@dns.command("stats")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Read the log named by this config's server.query_log.")
@click.option("--log", "log_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Read this query log (JSON lines) instead.")
@click.option("--top", default=10, show_default=True, help="How many identities and blocked names to list.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats_cmd(config_path: Path | None, log_path: Path | None, top: int, as_json: bool) -> None:
    """Counts by decision, category and identity, and the top blocked names, from the query log."""
    from . import querylog, stats

    if log_path is None:
        if config_path is None:
            raise click.ClickException("give --config dns.toml or --log FILE")
        log_path = _config(config_path).query_log
        if log_path is None:
            raise click.ClickException(f"{config_path} sets no server.query_log, so there is nothing to count")
    try:
        summary = stats.summarize(querylog.read(log_path), top=top)
    except OSError as exc:
        raise click.ClickException(f"cannot read {log_path}: {exc.strerror}") from exc
    click.echo(json.dumps(summary, indent=2) if as_json else stats.render(summary))
