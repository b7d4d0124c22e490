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

QUIC_COUNTER = "quic"
REJECT, ALLOW = "reject", "allow"


def ruleset(table: str, *, client_networks: list[str], ports: list[int], listen_port: int,
            quic: str = REJECT) -> str:
    """The ``table ip TABLE`` text: prerouting REDIRECT of client TCP ``ports`` to ``listen_port``,
    and the same ports over UDP (QUIC, HTTP/3) rejected or let through, counted either way.

    Why UDP too: only TCP reaches the proxy, so a browser's HTTP/3 to a denied
    name would otherwise be routed past the policy.  ICMP port unreachable makes
    the browser fall back to TCP at once instead of waiting for QUIC to time out."""
    nets = ", ".join(client_networks)
    ps = ", ".join(str(p) for p in sorted(ports))
    verdict = "reject with icmp type port-unreachable" if quic == REJECT else "accept"
    return (
        f"table ip {table} {{\n"
        f"\tcounter {QUIC_COUNTER} {{\n"
        f"\t}}\n"
        f"\tchain prerouting {{\n"
        f"\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        f"\t\tip saddr {{ {nets} }} tcp dport {{ {ps} }} counter redirect to :{listen_port}\n"
        f"\t}}\n"
        f"\tchain forward {{\n"
        f"\t\ttype filter hook forward priority filter; policy accept;\n"
        f"\t\tip saddr {{ {nets} }} udp dport {{ {ps} }} counter name {QUIC_COUNTER} {verdict}\n"
        f"\t}}\n"
        f"}}\n"
    )


def counter(table: str, name: str = QUIC_COUNTER) -> tuple[int, int]:
    """(packets, bytes) of the named counter in table ``table`` of this namespace (the QUIC one by default)."""
    return nft.counter(table, name)


def install(table: str, text: str) -> None:
    """Replace table ``table`` with ``text`` atomically."""
    nft.replace_table(table, text, what="the transparent-mode table")


def remove(table: str) -> bool:
    """Delete the table; True if it existed."""
    return nft.delete_table(table)


def exists(table: str) -> bool:
    return nft.table_exists(table)
