"""``ztna proxy``: the HTTPS forward proxy (explicit CONNECT and transparent SNI)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from ztna.cli import reload_role

from . import config as config_mod


@click.group("proxy")
def proxy() -> None:
    """HTTPS forward proxy: explicit (CONNECT) and transparent (SNI), with and without decryption."""


def _load(path: Path) -> config_mod.Config:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        raise click.ClickException(f"{path}: {exc}") from exc


RUN_DIR = click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Where the running proxy keeps proxy.pid and proxy.json (for `ztna proxy reload` "
                             "and `ztna status`); /run/ztna by convention, one folder per instance.")


@proxy.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path), help="proxy.toml")
@RUN_DIR
@click.option("-v", "--verbose", is_flag=True, help="Debug logging on stderr.")
def run_cmd(config_path: Path, run_dir: Path | None, verbose: bool) -> None:
    """Run the proxy described by proxy.toml until SIGTERM or Ctrl-C.

    One JSON line per connection goes to the [proxy] log target (stdout by
    default): mode, client, name, decision, reason, decrypted, bytes each way,
    duration.  In transparent mode the nft table is installed in the current
    network namespace and removed on exit.  SIGHUP (or `ztna proxy reload`)
    reads proxy.toml again; a file that does not load leaves the running one in force.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = _load(config_path)
    from . import nft, server

    try:
        server.run(cfg, config_path=config_path, run_dir=run_dir)
    except (config_mod.ConfigError, nft.NftError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {cfg.listen[0]}:{cfg.listen[1]}: {exc}") from exc


@proxy.command("reload")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("/run/ztna"),
              show_default=True, help="The --run-dir the proxy was started with.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the proxy's answer.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def reload_cmd(run_dir: Path, timeout: float, as_json: bool) -> None:
    """Make the running proxy read its proxy.toml again (SIGHUP) and say whether it took it.

    Exit status 0: the new policy is in force (open connections it refuses are
    ended); 1: refused (file, line and reason printed), the old one stays.
    """
    reload_role("proxy", run_dir, timeout, as_json)


@proxy.command("stats")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path), help="proxy.toml")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats_cmd(config_path: Path, as_json: bool) -> None:
    """The transparent proxy's nft counters: QUIC (UDP to the redirected ports) rejected or let through.

    Run it in the network namespace the proxy runs in (the table lives there)."""
    from . import nft

    cfg = _load(config_path)
    if cfg.mode != "transparent":
        raise click.ClickException(f"{config_path}: explicit mode installs no nft table; nothing to count")
    t = cfg.transparent
    try:
        packets, nbytes = nft.counter(t.nft_table)
    except nft.NftError as exc:
        raise click.ClickException(f"{exc} (is the proxy running, in this network namespace?)") from exc
    if as_json:
        click.echo(json.dumps({"table": t.nft_table, "quic": t.quic, "quic_packets": packets, "quic_bytes": nbytes}))
        return
    verb = "rejected" if t.quic == nft.REJECT else "let through (quic = \"allow\")"
    click.echo(f"QUIC (UDP {', '.join(map(str, t.ports))}) from clients: {packets} datagram(s), {nbytes} bytes {verb}")


@proxy.command("check")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path), help="proxy.toml")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.argument("names", nargs=-1)
def check_cmd(config_path: Path, as_json: bool, names: tuple[str, ...]) -> None:
    """Check proxy.toml, and show the verdict for each NAME[:PORT] (port 443 unless given)."""
    cfg = _load(config_path)
    pol = cfg.policy()
    rows = []
    for n in names:
        host, _, port = n.partition(":")
        v = pol.decide(host, int(port) if port.isdigit() else 443)
        rows.append({"name": host, "port": int(port) if port.isdigit() else 443, "action": v.action,
                     "decrypt": v.decrypt, "reason": v.reason})
    if as_json:
        click.echo(json.dumps({"config": str(config_path), "mode": cfg.mode, "verdicts": rows}, indent=2))
        return
    click.echo(f"{config_path}: OK ({cfg.mode} mode, listening on {cfg.listen[0]}:{cfg.listen[1]})")
    width = max((len(f"{r['name']}:{r['port']}") for r in rows), default=0)
    for r in rows:
        dec = "decrypt" if r["decrypt"] else ("splice" if r["action"] == "allow" else "-")
        target = f"{r['name']}:{r['port']}"
        click.echo(f"  {target:<{width}}  {r['action']:<5}  {dec:<7}  {r['reason']}")
