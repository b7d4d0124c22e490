"""Processes inside lab namespaces, tracked and stopped by the PID we started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Proc:
    """A process this lab started: its name, namespace, PID and log file."""

    name: str
    ns: str
    pid: int
    log: str
    popen: subprocess.Popen | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        # A zombie of ours still answers kill(0); reap if it is our child.
        try:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
            return done == 0
        except ChildProcessError:
            return True

    def to_json(self) -> dict:
        return {"name": self.name, "ns": self.ns, "pid": self.pid, "log": self.log}


def ztna_argv(*args: str) -> list[str]:
    """Run this installation's ``ztna`` with the same interpreter."""
    return [sys.executable, "-m", "ztna", *args]


def start(ns: str, argv: list[str], *, name: str, log_dir: Path, env: dict | None = None) -> Proc:
    """Start ``argv`` inside namespace ``ns`` in its own process group."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    logf = open(log_path, "ab", buffering=0)
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    p = subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv],
        stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
        start_new_session=True, env=full_env,
    )
    logf.close()
    return Proc(name, ns, p.pid, str(log_path), p)


def stop(proc: Proc, *, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    """Stop the process group we started for ``proc``: SIGTERM, then SIGKILL."""
    for s in (sig, signal.SIGKILL):
        try:
            os.killpg(proc.pid, s)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                if proc.popen is not None:
                    proc.popen.wait()
                return
            time.sleep(0.05)


def run(ns: str, argv: list[str], *, timeout: float = 30, input: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command to completion inside ``ns`` and capture its output."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, timeout=timeout, input=input, env=full_env)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, threads that have exited included, in
    clock ticks (10 ms): right for a process that starts a thread per connection."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def live_cpu_seconds(pid: int) -> float:
    """CPU time of a process's live threads so far, in nanosecond steps (``schedstat``):
    fine enough for a slice of 100 requests at half a millisecond each, where ticks are not.
    A thread that has exited is no longer counted, so measure long-lived ones (event loops)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):  # the thread ended between listing and reading
            continue
    return total / 1e9


def rss_kib(pid: int) -> int:
    """A process's resident memory, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ProcessLookupError(f"no VmRSS for pid {pid}")


def wait_until(pred, *, timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> None:
    """Poll ``pred`` until true, or raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def listening(ns: str, addr: str, port: int, proto: str = "tcp") -> bool:
    """True when something listens on addr:port inside ``ns`` (read from the kernel with ss)."""
    flag = "-ltnH" if proto == "tcp" else "-lunH"
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", flag], capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            local = parts[3]
            host, _, p = local.rpartition(":")
            host = host.split("%")[0]
            if p == str(port) and host in (addr, "*", "0.0.0.0", "[::]"):
                return True
    return False


def wait_listening(proc: Proc, addr: str, port: int, proto: str = "tcp", timeout: float = 15.0) -> None:
    def ready() -> bool:
        if not proc.alive():
            tail = Path(proc.log).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{proc.name} exited before listening on {addr}:{port}/{proto}; its log ends:\n{tail}")
        return listening(proc.ns, addr, port, proto)

    wait_until(ready, timeout=timeout, what=f"{proc.name} to listen on {addr}:{port}/{proto}")
