"""nftables for transparent mode: redirect client TLS ports to the proxy's listener.

``ruleset`` is pure (it renders the table as ``nft -f`` text, which the unit
tests compare); ``install``/``remove`` run ``nft`` (through ``ztna.nft``) in the namespace the proxy
itself runs in.  REDIRECT keeps the original destination in conntrack, which
the proxy reads back with SO_ORIGINAL_DST (it logs it, and never connects there
unless a passthrough action says so).
"""

from __future__ import annotations

from ztna import nft
from ztna.nft import NftError  # noqa: F401  (the proxy's callers catch it by this name)


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


def install(table: str, text: str) -> None:
    """Replace table ``table`` with ``text`` atomically."""
    nft.replace_table(table, text, what="the transparent-mode table")


def remove(table: str) -> bool:
    """Delete the table; True if it existed."""
    return nft.delete_table(table)


def exists(table: str) -> bool:
    return nft.table_exists(table)
