"""Domain names as the policy sees them: lower case, no trailing dot, IDNA as punycode."""

from __future__ import annotations

from ztna.names import BadName
from ztna.names import normalize as _normalize

__all__ = ["BadName", "normalize", "suffixes", "parent_of"]


def normalize(name: str) -> str:
    """``WWW.Example.COM.`` -> ``www.example.com``; the root (``.`` or empty) -> ``""``.

    The resolver sees root queries (``. NS``), which ``ztna.names.normalize``
    rightly refuses as a policy name; every other name is normalized by it.
    """
    name = name.strip().rstrip(".")
    return _normalize(name) if name else ""


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
