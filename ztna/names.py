"""Domain names as the policy sees them, and application patterns.

A pattern is an exact name (``app.mycompany.net``) or ``*.domain``, which
covers every name below ``domain`` (not ``domain`` itself).  Names compare in
lower case, without a trailing dot, IDNA names as punycode.
"""

from __future__ import annotations


class BadName(ValueError):
    """Not a usable domain name or pattern."""


def normalize(name: str) -> str:
    """Lower case, no trailing dot, IDNA as punycode; BadName if it cannot be a DNS name."""
    n = name.strip().rstrip(".")
    if not n:
        raise BadName("empty name")
    if not n.isascii():
        try:
            n = n.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise BadName(f"{name!r} is not a valid international domain name: {exc}") from exc
    n = n.lower()
    labels = n.split(".")
    if len(n) > 253 or any(not 0 < len(label) <= 63 for label in labels):
        raise BadName(f"{name!r} is not a valid domain name (empty or over-long label)")
    return n


def is_hostname(name: str) -> bool:
    """True for a host name (normalized) as a proxy or a policy may be asked for, never an IP literal.

    Labels of letters, digits, ``-`` (not first or last) and ``_`` (service
    labels); a last label of digits only is an IPv4 literal, not a name."""
    if not name or len(name) > 253 or name.rsplit(".", 1)[-1].isdigit():
        return False
    for label in name.split("."):
        if not label or len(label) > 63 or label[0] == "-" or label[-1] == "-":
            return False
        if not all(c.isascii() and c.isalnum() or c in "-_" for c in label):
            return False
    return True


def normalize_pattern(pattern: str) -> str:
    p = pattern.strip()
    if p.startswith("*."):
        return "*." + normalize(p[2:])
    if "*" in p:
        raise BadName(f"pattern {pattern!r}: a wildcard is only allowed as the whole first label ('*.domain')")
    return normalize(p)


def matches(pattern: str, name: str) -> bool:
    """Both already normalized."""
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return name == pattern


class PatternSet:
    """Exact names and ``*.domain`` patterns, matched in time proportional to the name's labels."""

    def __init__(self, patterns: list[str] = ()):
        self.exact: set[str] = set()
        self.suffixes: set[str] = set()
        for p in patterns:
            self.add(p)

    def add(self, pattern: str) -> None:
        p = normalize_pattern(pattern)
        if p.startswith("*."):
            self.suffixes.add(p[2:])
        else:
            self.exact.add(p)

    def match(self, name: str) -> str | None:
        """The pattern covering ``name`` (normalized), exact first, else the longest suffix; or None."""
        if name in self.exact:
            return name
        labels = name.split(".")
        for i in range(1, len(labels)):
            parent = ".".join(labels[i:])
            if parent in self.suffixes:
                return "*." + parent
        return None

    def __contains__(self, name: str) -> bool:
        return self.match(name) is not None

    def __len__(self) -> int:
        return len(self.exact) + len(self.suffixes)
