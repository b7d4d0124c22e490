"""A running role's pid and state files, and asking it to reload.

A service started with ``--run-dir DIR`` writes ``DIR/ROLE.pid`` (the pid, for
systemd's ``PIDFile=`` and for people) and ``DIR/ROLE.json`` (pid, config file,
start time, and the outcome of its last reload).  ``ztna ROLE reload`` reads
them, sends SIGHUP and waits for the reload count in ``ROLE.json`` to move, so
its exit status says whether the service took the new configuration.
``ztna status`` reads the same files.

Several instances of one role in one machine (the lab runs two proxies side by
side) each get a run directory of their own.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from .files import write_atomic

DEFAULT_RUN_DIR = Path("/run/ztna")


class RunStateError(RuntimeError):
    """No running service could be found or asked; the message says where it looked and what to do."""


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists (signal 0 delivers nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is only not ours
    return True


class RunState:
    """The state files of the running service ``role`` (written by the service itself)."""

    def __init__(self, run_dir: Path, role: str, *, config: Path | None, now: float | None = None):
        self.dir, self.role = Path(run_dir), role
        self.doc = {"role": role, "pid": os.getpid(), "config": str(config) if config else None,
                    "started": round(now if now is not None else time.time(), 3), "reloads": 0, "last_reload": None}

    @property
    def pid_file(self) -> Path:
        return self.dir / f"{self.role}.pid"

    @property
    def state_file(self) -> Path:
        return self.dir / f"{self.role}.json"

    def write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        write_atomic(self.state_file, json.dumps(self.doc, indent=2) + "\n")
        write_atomic(self.pid_file, f"{self.doc['pid']}\n")

    def update(self, **fields) -> None:
        self.doc.update(fields)
        write_atomic(self.state_file, json.dumps(self.doc, indent=2) + "\n")

    def reloaded(self, *, ok: bool, message: str, changes: list[str], now: float) -> None:
        """Record one reload's outcome; the count moves last, so a waiting ``reload`` reads it whole."""
        self.doc["last_reload"] = {"ok": ok, "message": message, "changes": changes, "time": round(now, 3)}
        self.doc["reloads"] += 1
        self.update()

    def remove(self) -> None:
        """Remove both files, only if they are still this process's (a newer instance may own them)."""
        try:
            mine = json.loads(self.state_file.read_text()).get("pid") == self.doc["pid"]
        except (OSError, ValueError):
            mine = False
        if mine:
            for f in (self.state_file, self.pid_file):
                try:
                    f.unlink()
                except FileNotFoundError:
                    pass


def read(run_dir: Path, role: str) -> dict | None:
    """``ROLE.json`` from ``run_dir``, or None when there is none (or it is unreadable)."""
    try:
        doc = json.loads((Path(run_dir) / f"{role}.json").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("pid"), int) else None


@dataclass(frozen=True)
class ReloadResult:
    """What the service said about the reload it was asked for."""

    ok: bool
    message: str
    changes: list[str]


def request_reload(run_dir: Path, role: str, *, timeout: float = 10.0) -> ReloadResult:
    """SIGHUP the ``role`` service that writes into ``run_dir`` and wait for its verdict."""
    state = Path(run_dir) / f"{role}.json"
    doc = read(run_dir, role)
    if doc is None:
        raise RunStateError(f"no {state}: is `ztna {role} run` running with --run-dir {run_dir}? "
                            f"(give the same --run-dir to reload)")
    pid = doc["pid"]
    if not pid_alive(pid):
        raise RunStateError(f"{state} names pid {pid}, which is not running: the service stopped without "
                            f"cleaning up; start it again")
    before = doc.get("reloads", 0)
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise RunStateError(f"cannot signal pid {pid} (from {state}): {exc.strerror}") from exc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = read(run_dir, role)
        if now is not None and now.get("reloads", 0) > before and now.get("last_reload"):
            r = now["last_reload"]
            return ReloadResult(bool(r.get("ok")), str(r.get("message", "")), list(r.get("changes", [])))
        if not pid_alive(pid):
            raise RunStateError(f"pid {pid} ended while reloading; see its log")
        time.sleep(0.05)
    raise RunStateError(f"pid {pid} did not report a reload within {timeout:.0f} s; see its log")
