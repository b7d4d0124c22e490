"""``ztna lab``: build, drive and verify sealed lab scenarios."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from . import lab as labmod
from . import scenarios
from .builder import BuildError
from .scenario import run as run_scenario


def _need_root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("the lab creates network namespaces and needs root: run it with sudo")


@click.group("lab")
def lab() -> None:
    """Sealed network-namespace lab: every host in its own namespace."""


@lab.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json: bool) -> None:
    """List the scenarios."""
    table = scenarios.all_scenarios()
    if as_json:
        click.echo(json.dumps({n: c.summary for n, c in table.items()}, indent=2))
        return
    width = max(map(len, table), default=8)
    for n, c in table.items():
        click.echo(f"{n:<{width}}  {c.summary}")


@lab.command("run")
@click.argument("name")
@click.option("--keep", is_flag=True, help="Leave the lab up afterwards (remove it with 'ztna lab down').")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON at the end.")
@click.option("--open-report", is_flag=True, help="Print the path of the HTML report (the sequence picture) at the end.")
def run_cmd(name: str, keep: bool, as_json: bool, open_report: bool) -> None:
    """Build scenario NAME, drive it, verify every step from the captures, tear it down.

    Writes report.json, report.html and the kept pcaps under the lab's reports/NAME/.
    Exits 1 if any documented step was not observed.
    """
    _need_root()
    try:
        sc = scenarios.get(name)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from exc
    try:
        ok, steps, report = run_scenario(sc, keep=keep, say=(lambda s: click.echo(s, err=True)) if as_json else click.echo,
                                     color=sys.stdout.isatty())
    except BuildError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json and report:
        click.echo(report.read_text())
    if open_report and report:
        # The path alone on the last line, so `xdg-open "$(... | tail -1)"` works; stderr under --json.
        click.echo(str(report.with_name("report.html")), err=as_json)
    sys.exit(0 if ok else 1)


@lab.command("report")
@click.argument("name")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The kept run's folder (default: the lab's reports/NAME/).")
def report_cmd(name: str, folder: Path | None) -> None:
    """Draw report.html again for scenario NAME from its kept run (report.json and pcap/)."""
    folder = folder or labmod.run_dir() / "reports" / name
    if not (folder / "report.json").exists():
        raise click.ClickException(f"no kept run of {name!r}: {folder}/report.json does not exist; "
                                   f"run 'ztna lab run {name}' first")
    from .report import write_html

    click.echo(str(write_html(folder)))


@lab.command("up")
@click.argument("name")
@click.option("--no-capture", is_flag=True,
              help="Start no tcpdump: for measuring by hand (a capture costs more CPU than the tunnel it watches).")
def up_cmd(name: str, no_capture: bool) -> None:
    """Build scenario NAME and start its services, and leave it running (every link captured, unless --no-capture)."""
    _need_root()
    try:
        sc = scenarios.get(name)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from exc
    lab_ = labmod.Lab(sc.name, sc.topology())
    try:
        lab_.up()
    except BuildError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        sc.start(lab_)
        if not no_capture:
            lab_.capture_all(sc.capture_extra)
    except BaseException:
        lab_.down()
        raise
    click.echo(f"lab {name} is up: namespaces {', '.join(lab_.topo.namespaces())}")
    click.echo(f"state, logs and captures in {lab_.root}" if not no_capture else
               f"state and logs in {lab_.root} (no captures: --no-capture)")
    hosts = ", ".join(lab_.topo.hosts)
    click.echo(f"hosts: {hosts}; run a command on one with: sudo ztna lab exec HOST -- CMD")
    me = os.path.abspath(sys.argv[0]) if os.path.basename(sys.argv[0]) == "ztna" else "ztna"
    for line in sc.try_this:
        click.echo("  try: " + line.format(ztna=me, run=lab_.root))
    click.echo("remove it with: sudo ztna lab down")


@lab.command("down")
def down_cmd() -> None:
    """Stop every lab process and remove every lab namespace."""
    _need_root()
    removed = labmod.down_from_state()
    click.echo(f"removed {len(removed)} namespaces" + (f": {', '.join(removed)}" if removed else ""))


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("host")
@click.argument("argv", nargs=-1, type=click.UNPROCESSED, required=True)
def exec_cmd(host: str, argv: tuple[str, ...]) -> None:
    """Run a command on lab HOST: ztna lab exec client -- dig app.mycompany.net"""
    _need_root()
    from .topology import prefix

    ns = f"{prefix()}{host}"
    from .builder import existing

    if ns not in existing():
        raise click.ClickException(f"no lab host {host!r} (namespace {ns} does not exist); is a lab up? see 'ztna lab up'")
    os.execvp("ip", ["ip", "netns", "exec", ns, *argv])
