"""nftables from any role: apply a ruleset, delete a table, read named counters.

The gateway's masquerade table and the proxy's transparent-mode table used to
run ``nft`` each in their own way (one did not notice a missing binary, the
other could not read counters).  Rulesets are rendered as text by pure
functions next to their owners; this module only hands text to ``nft -f -``
and reads state back.  Every failure is one :class:`NftError` whose message
says which table and what nft said.
"""

from __future__ import annotations

import json
import subprocess


class NftError(RuntimeError):
    """nft refused a ruleset or a query, or is not installed."""


def _nft(args: list[str], text: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["nft", *args], input=text, capture_output=True, text=True, timeout=10)
    except FileNotFoundError as exc:
        raise NftError("nft is not installed (apt-get install nftables)") from exc
    except subprocess.TimeoutExpired as exc:
        raise NftError(f"nft {' '.join(args)} did not finish within 10 s") from exc


def apply(text: str, *, what: str = "the rules") -> None:
    """Load ``text`` with ``nft -f -`` (one transaction: all of it or nothing)."""
    p = _nft(["-f", "-"], text)
    if p.returncode:
        raise NftError(f"nft refused {what}: {p.stderr.strip()}")


def delete_table(table: str, family: str = "ip") -> bool:
    """Delete ``family table``; True if it existed (absence is not an error: a crash may have left none)."""
    return _nft(["delete", "table", family, table]).returncode == 0


def table_exists(table: str, family: str = "ip") -> bool:
    return _nft(["list", "table", family, table]).returncode == 0


def replace_table(table: str, text: str, *, family: str = "ip", what: str | None = None) -> None:
    """Drop a leftover ``table`` (from a crashed run), then load ``text``."""
    delete_table(table, family)
    apply(text, what=what or f"table {family} {table}")


def counters_untrusted(text: str) -> dict[str, tuple[int, int]]:
    """(packets, bytes) of every named counter in ``nft -j list counter(s)`` output; NftError if it is not nft's JSON."""
    try:
        items = json.loads(text).get("nftables", [])
    except (ValueError, AttributeError) as exc:
        raise NftError(f"nft printed something that is not its JSON: {exc}") from None
    out = {}
    for item in items if isinstance(items, list) else ():
        c = item.get("counter") if isinstance(item, dict) else None
        if isinstance(c, dict) and isinstance(c.get("name"), str):
            packets, nbytes = c.get("packets", 0), c.get("bytes", 0)
            if isinstance(packets, int) and isinstance(nbytes, int):
                out[c["name"]] = (packets, nbytes)
    return out


def counter_untrusted(text: str, name: str) -> tuple[int, int]:
    """(packets, bytes) of counter ``name`` in nft's JSON; NftError if it is absent or garbled."""
    got = counters_untrusted(text)
    if name not in got:
        raise NftError(f"no counter {name!r} in nft's output")
    return got[name]


def counters(table: str, names: tuple[str, ...] | None = None, family: str = "ip") -> dict[str, int]:
    """Packets counted so far by the named counters of ``table`` (all of them, or ``names``)."""
    p = _nft(["-j", "list", "counters", "table", family, table])
    if p.returncode:
        raise NftError(f"nft cannot list the counters of {table}: {p.stderr.strip()}")
    return {n: pb[0] for n, pb in counters_untrusted(p.stdout).items() if names is None or n in names}


def counter(table: str, name: str, family: str = "ip") -> tuple[int, int]:
    """(packets, bytes) of the named counter ``name`` in ``family table``."""
    p = _nft(["-j", "list", "counter", family, table, name])
    if p.returncode:
        raise NftError(f"cannot read counter {name} of table {family} {table}: {p.stderr.strip() or 'no such table'}")
    return counter_untrusted(p.stdout, name)
