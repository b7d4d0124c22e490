"""nftables for transparent mode: redirect client TLS ports to the proxy's listener.

``ruleset`` is pure (it renders the table as ``nft -f`` text, which the unit
tests compare); ``install``/``remove`` run ``nft`` in the namespace the proxy
itself runs in.  REDIRECT keeps the original destination in conntrack, which
the proxy reads back with SO_ORIGINAL_DST (it logs it, and never connects there
unless a passthrough action says so).
"""

from __future__ import annotations

import subprocess


class NftError(RuntimeError):
    """nft refused the ruleset or is missing."""


def ruleset(table: str, *, client_networks: list[str], ports: list[int], listen_port: int) -> str:
    """The ``table ip TABLE`` text: prerouting REDIRECT of client TCP ``ports`` to ``listen_port``."""
    nets = ", ".join(client_networks)
    ps = ", ".join(str(p) for p in sorted(ports))
    return (
        f"table ip {table} {{\n"
        f"\tchain prerouting {{\n"
        f"\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        f"\t\tip saddr {{ {nets} }} tcp dport {{ {ps} }} counter redirect to :{listen_port}\n"
        f"\t}}\n"
        f"}}\n"
    )


def _nft(args: list[str], text: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["nft", *args], input=text, capture_output=True, text=True, timeout=10)
    except FileNotFoundError as exc:
        raise NftError("nft is not installed (apt-get install nftables)") from exc


def install(table: str, text: str) -> None:
    """Replace table ``table`` with ``text`` atomically."""
    _nft(["delete", "table", "ip", table])  # a leftover from a crashed run; absence is fine
    out = _nft(["-f", "-"], text)
    if out.returncode:
        raise NftError(f"nft refused the transparent-mode table: {out.stderr.strip()}")


def remove(table: str) -> bool:
    """Delete the table; True if it existed."""
    return _nft(["delete", "table", "ip", table]).returncode == 0


def exists(table: str) -> bool:
    return _nft(["list", "table", "ip", table]).returncode == 0
