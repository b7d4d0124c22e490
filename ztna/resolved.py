"""systemd-resolved as a DNS backend: the decisions, with no I/O.

On a host where systemd-resolved owns DNS (Ubuntu's default), /etc/resolv.conf
is a symlink to resolved's stub file and resolved's own configuration is the
truth.  Replacing the file would fight resolved and break the link, so there
we take nothing over globally: our DNS server and routing domains go on our
own interface (``resolvectl dns/domain/default-route LINK``), and giving DNS
back is ``resolvectl revert LINK``.  This module decides which backend a host
gets and which ``resolvectl`` commands to run, and reads resolvectl's output;
``ztna/resolvectl.py`` runs the commands.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

# What /etc/resolv.conf points at when resolved manages it (stub mode, or uplink mode).
RESOLVED_FILES = ("run/systemd/resolve/stub-resolv.conf", "run/systemd/resolve/resolv.conf")

RESOLVED = "resolved"
RESOLVCONF = "resolvconf"
SETTINGS = ("auto", RESOLVCONF, RESOLVED)


class ResolvedError(RuntimeError):
    """resolved cannot be used, or refused an operation; the message says which and why."""


def points_at_resolved(link_target: str | None) -> bool:
    """Is a resolv.conf symlink target (``os.readlink``) one of resolved's files?"""
    if not link_target:
        return False
    t = os.path.normpath(link_target).lstrip("/")
    while t.startswith("../"):
        t = t[3:]
    return any(t == f or t.endswith("/" + f) for f in RESOLVED_FILES)


@dataclass(frozen=True)
class Choice:
    backend: str  # RESOLVED or RESOLVCONF
    reason: str


def choose(setting: str, path: str, link_target: str | None, resolvectl_error: str | None) -> Choice:
    """Which backend to use.

    ``link_target`` is the resolv.conf's symlink target (None: a plain file or
    missing); ``resolvectl_error`` is None when ``resolvectl`` answered, else
    what went wrong.  Raises ResolvedError when the setting asks for resolved
    and it cannot be used, or when resolved manages the file but does not
    answer (writing the file then would replace resolved's link; better to
    stop and say so).
    """
    if setting not in SETTINGS:
        raise ResolvedError(f"dns backend {setting!r} is not one of {', '.join(SETTINGS)}")
    managed = points_at_resolved(link_target)
    if setting == RESOLVCONF:
        return Choice(RESOLVCONF, f"dns backend = resolvconf: writing {path}")
    if setting == RESOLVED or managed:
        if resolvectl_error is not None:
            why = (f"{path} points at {link_target}, so systemd-resolved manages DNS here"
                   if managed else "dns backend = resolved")
            raise ResolvedError(f"{why}, but resolvectl does not answer ({resolvectl_error}); "
                                f"DNS left as it is. Start systemd-resolved, or set the backend to resolvconf "
                                f"if resolved does not own {path}")
        return Choice(RESOLVED, f"{path} -> {link_target}: systemd-resolved manages DNS; configuring our link only"
                      if managed else "dns backend = resolved: configuring our link only")
    return Choice(RESOLVCONF, f"{path} is not managed by systemd-resolved: writing it")


def routing_domains(patterns: list[str]) -> list[str]:
    """The ``~domain`` routing domains covering the agent's app patterns.

    ``*.corp.example`` routes the whole of corp.example; an exact name routes
    that name.  A pattern under another one is dropped (resolved would route it
    the same way); order is kept so the command line is predictable.
    """
    names = []
    for p in patterns:
        d = p.strip().rstrip(".").lower()
        d = d.removeprefix("*.")
        if d and d not in names:
            names.append(d)
    kept = [d for d in names if not any(d != o and d.endswith("." + o) for o in names)]
    return ["~" + d for d in kept]


def apply_commands(resolvectl: str, link: str, servers: list[str], domains: list[str],
                   *, default_route: bool = False) -> list[list[str]]:
    """The commands that give ``link`` its DNS servers and routing domains, nothing global."""
    if not servers:
        raise ResolvedError(f"no DNS server to set on {link}")
    return [[resolvectl, "dns", link, *servers],
            [resolvectl, "domain", link, *domains],
            [resolvectl, "default-route", link, "yes" if default_route else "no"]]


def revert_command(resolvectl: str, link: str) -> list[str]:
    return [resolvectl, "revert", link]


def status_command(resolvectl: str) -> list[str]:
    """The command whose success says resolved answers, and whose output names its servers."""
    return [resolvectl, "dns"]


_LINE = re.compile(r"^(Global|Link \d+ \(([^)]*)\)):(.*)$")


def servers_by_link(dns_output: str, *, exclude_link: str) -> list[tuple[str, str]]:
    """(server, link) in ``resolvectl dns`` output, global first (link ''), without ``exclude_link``'s.

    IPv4 only and no loopback (resolved's own stub address): the servers
    resolved uses for everything that is not ours.
    """
    out: list[tuple[str, str]] = []
    for line in dns_output.splitlines():
        m = _LINE.match(line.strip())
        if not m or m.group(2) == exclude_link:
            continue
        for word in m.group(3).split():
            addr = word.split("#")[0].split("%")[0]
            try:
                ip = ipaddress.ip_address(addr)
            except ValueError:
                continue
            if ip.version == 4 and not ip.is_loopback and str(ip) not in [s for s, _ in out]:
                out.append((str(ip), m.group(2) or ""))
    return out


def servers_of(dns_output: str, *, exclude_link: str) -> list[str]:
    """The servers of :func:`servers_by_link`, without their links.

    The agent forwards names it does not own, and finds its gateway, through
    these.
    """
    return [s for s, _ in servers_by_link(dns_output, exclude_link=exclude_link)]


_DOMAIN = re.compile(r"^~?(?!-)[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*$")


def domains_by_link(domain_output: str, *, exclude_link: str) -> list[tuple[str, str]]:
    """(domain, link) in ``resolvectl domain`` output; search and routing-only (``~``) alike, without the ``~``.

    ``~.`` (everything) is no domain to route by and is left out.
    """
    out: list[tuple[str, str]] = []
    for line in domain_output.splitlines():
        m = _LINE.match(line.strip())
        if not m or m.group(2) == exclude_link:
            continue
        for word in m.group(3).split():
            d = word.lower().rstrip(".")
            if _DOMAIN.match(d) and d.lstrip("~") not in [x for x, _ in out]:
                out.append((d.lstrip("~"), m.group(2) or ""))
    return out


def revert_gone(stderr: str) -> bool:
    """Did a revert fail only because the link no longer exists (resolved forgot its settings with it)?"""
    s = stderr.lower()
    return "no such device" in s or "failed to resolve interface" in s or "unknown interface" in s
