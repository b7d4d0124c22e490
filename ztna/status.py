"""``ztna status``: which roles run on this machine and how they are, from the files they write.

The shell reads each role's own record (``gather``); ``judge`` is pure and turns
one record into a :class:`Row`.  Where each role leaves its record:

* dns, proxy, gateway: ``RUN_DIR/ROLE.json`` (``--run-dir`` of ``ztna dns|proxy|gateway run``, ``ztna.runstate``);
* agent: its control socket in ``state_dir`` (``ztna agent status`` asks the same);
* roaming: ``status.json`` in its ``state_dir``;
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from . import runstate

RUNNING, UNHEALTHY, STOPPED, UNKNOWN = "running", "unhealthy", "not running", "not reporting"


@dataclass(frozen=True)
class Row:
    """One role on this machine: its state, a sentence for people, and where that came from."""

    role: str
    state: str
    detail: str
    source: str
    pid: int | None = None


def judge(role: str, doc: dict | None, *, alive: bool, source: str) -> Row:
    """The row for ``role`` from its record ``doc`` (None: no record) and whether its pid lives."""
    if doc is None:
        return Row(role, STOPPED, f"no record in {source}", source)
    pid = doc.get("pid") if isinstance(doc.get("pid"), int) else None
    if role in ("dns", "proxy", "gateway"):
        if not alive:
            return Row(role, STOPPED, f"{source} names pid {pid}, which is not running (left by a crash)", source, pid)
        detail = f"config {doc.get('config')}, up {_ago(doc.get('started'))}"
        last = doc.get("last_reload")
        if isinstance(last, dict):
            detail += f"; last reload {'taken' if last.get('ok') else 'REFUSED'} {_ago(last.get('time'))}"
            if not last.get("ok"):
                # the old configuration is in force, the file on disk is not: a person must look
                return Row(role, UNHEALTHY, f"{detail}: {last.get('message', '')}", source, pid)
        return Row(role, RUNNING, detail, source, pid)
    if role == "agent":
        t = doc.get("tunnel", {}) if isinstance(doc.get("tunnel"), dict) else {}
        detail = (f"identity {doc.get('identity')}, tunnel {t.get('state')} to {t.get('gateway')}, "
                  f"{len(doc.get('leases', []))} lease(s)")
        if t.get("last_error"):
            detail += f"; last error: {t['last_error']}"
        return Row(role, RUNNING, detail, source, pid)
    if role == "roaming":
        if not alive or doc.get("state") == "stopped":
            return Row(role, STOPPED, f"{source}: not running (pid {pid})", source, pid)
        state = str(doc.get("state", "?"))
        detail = f"{state}" + (f" ({doc['reason']})" if doc.get("reason") else "") + f": {doc.get('detail', '')}"
        return Row(role, RUNNING if state == "protected" else UNHEALTHY, detail, source, pid)
    raise ValueError(f"no status for role {role!r}")


def _ago(t) -> str:
    if not isinstance(t, (int, float)):
        return "?"
    s = max(0, int(time.time() - t))
    return f"{s // 3600}h{s % 3600 // 60:02d}m ago" if s >= 3600 else f"{s // 60}m{s % 60:02d}s ago"


def gather(run_dir: Path, agent_state: Path, roaming_state: Path) -> list[Row]:
    """Read every role's record on this machine (the shell part)."""
    rows = []
    for role in ("dns", "proxy", "gateway"):
        doc = runstate.read(run_dir, role)
        rows.append(judge(role, doc, alive=bool(doc) and runstate.pid_alive(doc["pid"]),
                          source=str(Path(run_dir) / f"{role}.json")))
    sock = Path(agent_state) / "control.sock"
    try:
        from agent.service import query_status

        doc = query_status(agent_state)
    except (ConnectionError, OSError, ValueError, ImportError):
        doc = None
    rows.append(judge("agent", doc, alive=doc is not None, source=str(sock)))
    status_file = Path(roaming_state) / "status.json"
    try:
        doc = json.loads(status_file.read_text())
        doc = doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        doc = None
    pid = doc.get("pid") if doc else None
    rows.append(judge("roaming", doc, alive=isinstance(pid, int) and pid > 0 and runstate.pid_alive(pid),
                      source=str(status_file)))
    return rows


@click.command("status")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=runstate.DEFAULT_RUN_DIR,
              show_default=True, help="Where ztna dns/proxy/gateway keep their pid and state files (their --run-dir).")
@click.option("--agent-state-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/run/ztna-agent"), show_default=True, help="The agent's state_dir.")
@click.option("--roaming-state-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/var/lib/ztna/roaming"), show_default=True, help="The roaming client's state_dir.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(run_dir: Path, agent_state_dir: Path, roaming_state_dir: Path, as_json: bool) -> None:
    """Which ztna roles run on this machine, and their health.

    Exit code: 0 every running role is healthy, 1 one is not (a refused reload,
    an unprotected roaming client), 3 none is running.
    """
    rows = gather(run_dir, agent_state_dir, roaming_state_dir)
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        width = max(len(r.role) for r in rows)
        for r in rows:
            color = {RUNNING: "green", UNHEALTHY: "red"}.get(r.state)
            state = click.style(f"{r.state:<13}", fg=color, bold=color is not None)
            click.echo(f"{r.role:<{width}}  {state}  {r.detail}" + (f"  [pid {r.pid}]" if r.pid and
                                                                     r.state != STOPPED else ""))
    live = [r for r in rows if r.state in (RUNNING, UNHEALTHY)]
    if any(r.state == UNHEALTHY for r in live):
        raise SystemExit(1)
    raise SystemExit(0 if live else 3)
