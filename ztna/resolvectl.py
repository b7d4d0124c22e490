"""Running the ``resolvectl`` commands ztna/resolved.py decides; the shell around that core.

Every command has a timeout: a resolved that does not answer on D-Bus makes
resolvectl hang for its own 25 s, longer than a start or a stop may wait.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from ztna import resolved
from ztna.resolved import ResolvedError

log = logging.getLogger("ztna.resolved")

TIMEOUT = 5.0


def run(argv: list[str], *, timeout: float | None = None) -> str:
    """Run one resolvectl command; its stdout, or ResolvedError with what it said."""
    timeout = TIMEOUT if timeout is None else timeout
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise ResolvedError(f"{argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise ResolvedError(f"'{' '.join(argv)}' did not finish within {timeout:g} s (systemd-resolved not answering)") from None
    except OSError as exc:
        raise ResolvedError(f"cannot run {argv[0]}: {exc.strerror}") from None
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip() or f"exit status {r.returncode}"
        raise ResolvedError(f"'{' '.join(argv)}' failed: {err}")
    return r.stdout.decode(errors="replace")


def probe(resolvectl: str) -> tuple[str | None, str]:
    """(None, ``resolvectl dns`` output) when resolved answers, else (what went wrong, '')."""
    try:
        return None, run(resolved.status_command(resolvectl))
    except ResolvedError as exc:
        return str(exc), ""


def snapshot(resolvectl: str) -> tuple[str, str]:
    """``resolvectl dns`` and ``resolvectl domain`` output: what resolved uses now (ResolvedError if it does not answer)."""
    return run([resolvectl, "dns"]), run([resolvectl, "domain"])


def link_target(path: str | Path) -> str | None:
    """The symlink target of ``path``, None when it is not a symlink."""
    try:
        return os.readlink(path)
    except OSError:
        return None


def choose(setting: str, path: str | Path, resolvectl: str) -> tuple[resolved.Choice, str]:
    """Decide the backend for this host; returns the choice and resolvectl's ``dns`` output ('' if not asked)."""
    target = link_target(path)
    if setting == resolved.RESOLVCONF or (setting == "auto" and not resolved.points_at_resolved(target)):
        return resolved.choose(setting, str(path), target, None), ""
    err, out = probe(resolvectl)
    return resolved.choose(setting, str(path), target, err), out


def apply(resolvectl: str, link: str, servers: list[str], domains: list[str], *, default_route: bool = False) -> None:
    """Configure ``link``; on any failure revert it, so no half-done configuration stays, and raise."""
    cmds = resolved.apply_commands(resolvectl, link, servers, domains, default_route=default_route)
    try:
        for argv in cmds:
            run(argv)
    except ResolvedError:
        try:
            run(resolved.revert_command(resolvectl, link))
        except ResolvedError as exc:
            log.error("could not revert %s after a failed configuration: %s", link, exc)
        raise


def revert(resolvectl: str, link: str) -> str:
    """Give the link's DNS settings back to resolved; what was done (ResolvedError if resolved refused)."""
    try:
        run(resolved.revert_command(resolvectl, link))
    except ResolvedError as exc:
        if resolved.revert_gone(str(exc)):
            return f"{link} is gone; systemd-resolved dropped its DNS settings with it"
        raise
    return f"reverted {link} in systemd-resolved"
