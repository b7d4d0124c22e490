"""Domain names as the policy sees them: lower case, no trailing dot, IDNA as punycode."""

from __future__ import annotations


class BadName(ValueError):
    """A name that cannot be a DNS name (empty label, too long, not encodable)."""


def normalize(name: str) -> str:
    """``WWW.Example.COM.`` -> ``www.example.com``; ``bücher.example`` -> ``xn--bcher-kva.example``.

    Wire names are already ASCII; names from config files may be Unicode.
    """
    name = name.strip().rstrip(".")
    if not name:
        return ""
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise BadName(f"{name!r} is not a valid internationalised domain name: {exc}") from exc
    name = name.lower()
    if len(name) > 253 or any(not label or len(label) > 63 for label in name.split(".")):
        raise BadName(f"{name!r} is not a valid domain name (empty or over-long label)")
    return name


def suffixes(name: str) -> list[str]:
    """The name and every parent: ``a.b.c`` -> ``[a.b.c, b.c, c]``."""
    out = []
    while name:
        out.append(name)
        _, _, name = name.partition(".")
    return out


# Common two-label public suffixes, so ``a.example.co.uk`` has parent
# ``example.co.uk`` and not every British site one parent ``co.uk``.
TWO_LABEL_SUFFIXES = frozenset({
    "co.uk", "org.uk", "ac.uk", "gov.uk", "co.jp", "ne.jp", "or.jp", "ac.jp", "go.jp", "com.au", "net.au",
    "org.au", "co.nz", "com.br", "com.cn", "com.tw", "co.kr", "co.in", "com.mx", "co.za", "com.tr", "com.sg",
})


def parent_of(name: str, labels: int = 2) -> str:
    """The last ``labels`` labels (one more under a two-label public suffix): the unit the tunnelling detector watches."""
    parts = name.split(".")
    if len(parts) > labels and ".".join(parts[-2:]) in TWO_LABEL_SUFFIXES:
        labels += 1
    return ".".join(parts[-labels:])
