"""``ztna roaming``: run the client, show its status, restore DNS by hand."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path

import click

from ztna import resolvconf

from . import backend
from .config import Config, ConfigError, load

DEFAULT_CONFIG = Path("/etc/ztna/roaming.toml")


def _config(path: Path | None) -> Config:
    """The config at ``path``; the default path may be absent (defaults apply), a given one may not."""
    try:
        if path is None:
            return load(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else Config()
        return load(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


config_option = click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
                             help=f"roaming.toml (default {DEFAULT_CONFIG}, or built-in defaults if absent).")


@click.group("roaming")
def roaming() -> None:
    """Roaming DNS client: loopback takeover, split DNS, restore, status."""


@roaming.command("run")
@config_option
@click.option("-v", "--verbose", is_flag=True, help="Log every query and where it went.")
def run_cmd(config_path: Path | None, verbose: bool) -> None:
    """Take over the machine's DNS and serve it on loopback until stopped (needs root).

    At start it puts back what a crashed run left, records every DNS server and
    search domain, and points resolv.conf at the stub; on SIGTERM/SIGINT it puts
    the recorded settings back.
    """
    from .daemon import Daemon, StartError

    cfg = _config(config_path)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        d = Daemon(cfg)
        sys.exit(asyncio.run(d.run()))
    except StartError as exc:
        raise click.ClickException(str(exc)) from None


def _ago(ts: float, now: float) -> str:
    stamp = dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp} ({now - ts:.0f}s ago)"


@roaming.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(config_path: Path | None, as_json: bool) -> None:
    """Say whether this machine's DNS is protected, open or unprotected, and why.

    Exit code: 0 protected, 1 open or unprotected, 3 not running.
    """
    import time

    cfg = _config(config_path)
    now = time.time()
    try:
        doc = json.loads(cfg.status_file.read_text())
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except FileNotFoundError:
        doc = {}
    except (OSError, ValueError) as exc:
        doc = {"unreadable": f"{cfg.status_file}: {exc}"}
    running = _alive(int(doc.get("pid", 0) or 0)) and doc.get("state") != "stopped"
    try:
        current = cfg.resolv_conf.read_text(errors="replace")
    except OSError:
        current = None
    pending = cfg.state_file.exists()
    if not running:
        reason = "ztna roaming is not running"
        if current is not None and resolvconf.is_ours(current):
            reason += f"; {cfg.resolv_conf} still points at its stub (a crash?): run 'ztna roaming restore'"
        doc = {**doc, "state": "not running", "reason": "not_running", "detail": reason, "restore_pending": pending}
    else:
        if doc.get("backend") == "resolved":
            # Trust what resolved says over the daemon's own belief.
            from ztna import resolvectl
            from ztna.resolved import ResolvedError

            link = doc.get("resolved_link") or cfg.resolved_link
            try:
                ours = cfg.listen in resolvectl.run([cfg.resolvectl, "dns", link]).split()
                why = f"systemd-resolved no longer sends queries to {cfg.listen} on {link}"
            except ResolvedError as exc:
                ours, why = False, f"cannot ask systemd-resolved: {exc}"
            doc["resolved_link_points_at_stub"] = ours
            if doc.get("state") == "protected" and not ours:
                doc.update(state="unprotected", reason="not_owning", detail=why)
        else:
            # Trust the kernel-visible file over the daemon's own belief.
            ours = current is not None and resolvconf.is_ours(current)
            doc["resolv_conf_points_at_stub"] = ours
            if doc.get("state") == "protected" and not ours:
                doc.update(state="unprotected", reason="not_owning", detail=f"{cfg.resolv_conf} no longer points at the stub")
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        state = doc.get("state", "?")
        color = {"protected": "green", "open": "yellow"}.get(state, "red")
        line = click.style(state.upper(), fg=color, bold=True)
        if doc.get("reason"):
            line += f" ({doc['reason']})"
        click.echo(line)
        click.echo(f"  {doc.get('detail', '')}")
        if running:
            click.echo(f"  since     {_ago(doc['since'], now)}")
            click.echo(f"  pid       {doc['pid']}, started {_ago(doc['started'], now)}")
            click.echo(f"  stub      {doc['listen']} in {doc['resolv_conf']}")
            srv = ", ".join(s["value"] + (f" ({s['iface']})" if s["iface"] else "") for s in doc["recorded_servers"])
            click.echo(f"  recorded  {srv or 'no servers'}; search {' '.join(s['value'] for s in doc['recorded_search']) or '-'}")
            click.echo(f"  internal  {' '.join(doc['internal_domains']) or '-'} (+ search domains, private reverse zones); egress {doc['egress']}")
            click.echo(f"  cloud     {', '.join(doc['cloud'])}: {'reachable' if doc['cloud_up'] else 'UNREACHABLE'}; "
                       f"fail-open {'on' if doc['fail_open'] else 'off'}; device id {doc['device_id']}")
            c = doc["conflict"]
            click.echo(f"  conflict  {c['foreign_rewrites']} foreign rewrites; threshold {c['threshold']} in {c['window']:g}s"
                       + ("; BACKED OFF until the network changes" if c["backed_off"] else ""))
            q = doc["queries"]
            click.echo(f"  queries   internal {q['internal']}, cloud {q['cloud']}, fail-open {q['fail_open']}, "
                       f"servfail {q['servfail']}, formerr {q['formerr']}")
            for e in doc.get("events", [])[-5:]:
                click.echo(f"  event     {_ago(e['at'], now)}: {e['state']}" + (f" ({e['reason']})" if e["reason"] else ""))
    if doc.get("state") == "protected":
        sys.exit(0)
    sys.exit(3 if not running else 1)


@roaming.command("restore")
@config_option
def restore_cmd(config_path: Path | None) -> None:
    """Put back the DNS settings recorded at takeover (after a crash), if the file is still ours."""
    from .daemon import restore

    cfg = _config(config_path)
    try:
        doc = json.loads(cfg.status_file.read_text())
        pid = int(doc.get("pid", 0)) if doc.get("state") != "stopped" else 0
    except (OSError, ValueError, TypeError, AttributeError):
        pid = 0
    if _alive(pid) and pid != os.getpid():
        raise click.ClickException(f"ztna roaming is running (pid {pid}); stop it instead, it restores DNS when it stops")
    mid = backend.machine_id(cfg.machine_id_file)
    try:
        restored, what = restore(cfg, mid)
    except (OSError, backend.BackendError) as exc:
        raise click.ClickException(f"restore failed: {exc}") from None
    click.echo(("restored: " if restored else "left as is: ") + what)
