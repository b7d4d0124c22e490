"""resolv.conf as data: parse what a file says, render what we want it to say.

Shared by the agent's DNS takeover (agent/takeover.py) and the roaming client.

``parse_untrusted`` reads text any program may have written (a VPN script, a
person, a crashed tool) and lets only :class:`ResolvConfError` escape, with the
line that was wrong.  Unknown keywords are kept as they are, as glibc ignores
them, so a render of a parsed file loses nothing a resolver would use.

The file we write carries a marker line and the original file's lines as
comments, so even without our state file the original can be rebuilt from the
file itself (see :func:`embedded_original`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field

MARKER = "# managed by ztna roaming: do not edit; 'ztna roaming restore' puts the original back"
ORIG_PREFIX = "#ztna-orig: "
MAX_BYTES = 64 * 1024
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


class ResolvConfError(ValueError):
    """A resolv.conf that cannot be used as a record of the machine's DNS."""


@dataclass
class ResolvConf:
    """The parts of a resolv.conf that decide where queries go."""

    nameservers: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  # lines with keywords we do not interpret (sortlist...)


def fingerprint(text: str) -> str:
    """The identity of a file's content: a person can compare it, a test can predict it."""
    return hashlib.sha256(text.encode()).hexdigest()


def _check_domain(name: str, lineno: int) -> str:
    d = name.rstrip(".").lower()
    if d == "" or len(d) > 253 or not all(_LABEL.match(label) for label in d.split(".")):
        raise ResolvConfError(f"line {lineno}: {name!r} is not a domain name")
    return d


def parse_untrusted(data: bytes | str) -> ResolvConf:
    """Parse resolv.conf content; raises only ResolvConfError, naming the line."""
    if isinstance(data, bytes):
        if len(data) > MAX_BYTES:
            raise ResolvConfError(f"file is {len(data)} bytes; a resolv.conf over {MAX_BYTES} bytes is not believable")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ResolvConfError(f"file is not UTF-8 text (byte {exc.start})") from None
    else:
        text = data
    if "\x00" in text:
        raise ResolvConfError("file contains NUL bytes; it is not a resolv.conf")
    rc = ResolvConf()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        words = line.split()
        key, args = words[0], words[1:]
        if key == "nameserver":
            if len(args) < 1:
                raise ResolvConfError(f"line {lineno}: 'nameserver' without an address")
            addr = args[0].split("%")[0]
            try:
                ip = ipaddress.ip_address(addr)
            except ValueError:
                raise ResolvConfError(f"line {lineno}: nameserver {args[0]!r} is not an IP address") from None
            rc.nameservers.append(str(ip))
        elif key in ("search", "domain"):
            if not args:
                raise ResolvConfError(f"line {lineno}: {key!r} without a domain")
            # As in glibc, the last of 'search'/'domain' wins.  systemd-resolved writes
            # 'search .' (the root: no search domain) when it has none; that adds nothing.
            rc.search = [_check_domain(a, lineno) for a in args if a != "."]
        elif key == "options":
            rc.options += args
        else:
            rc.other.append(line)
    return rc


def render(rc: ResolvConf, *, header: list[str] = ()) -> str:
    """The text of a resolv.conf for ``rc`` (header lines go first, as comments)."""
    lines = list(header)
    lines += [f"nameserver {n}" for n in rc.nameservers]
    if rc.search:
        lines.append("search " + " ".join(rc.search))
    if rc.options:
        lines.append("options " + " ".join(rc.options))
    lines += rc.other
    return "\n".join(lines) + "\n"


def render_takeover(listen: str, original_text: str, original: ResolvConf) -> str:
    """The file that points the machine at our loopback stub.

    The search list and options are kept (names typed short must still
    expand the same way); the original lines ride along as comments.
    """
    header = [MARKER] + [ORIG_PREFIX + line for line in original_text.splitlines()]
    # 'rotate' means nothing with a single server; everything else is kept.
    ours = ResolvConf(nameservers=[listen], search=list(original.search),
                      options=[o for o in original.options if o != "rotate"])
    return render(ours, header=header)


def is_ours(text: str) -> bool:
    """Did we write this file (it starts with our marker)?"""
    return text.startswith(MARKER + "\n")


def embedded_original(text: str) -> str | None:
    """The original file carried in one of our files, or None if ``text`` is not ours."""
    if not is_ours(text):
        return None
    lines = [l[len(ORIG_PREFIX):] for l in text.splitlines() if l.startswith(ORIG_PREFIX)]
    return "\n".join(lines) + "\n" if lines else ""
