"""nftables for transparent mode: redirect client TLS ports to the proxy's listener.

``ruleset`` is pure (it renders the table as ``nft -f`` text, which the unit
tests compare); ``install``/``remove`` run ``nft`` in the namespace the proxy
itself runs in.  REDIRECT keeps the original destination in conntrack, which
the proxy reads back with SO_ORIGINAL_DST (it logs it, and never connects there
unless a passthrough action says so).
"""

from __future__ import annotations

import json
import subprocess

QUIC_COUNTER = "quic"
REJECT, ALLOW = "reject", "allow"


class NftError(RuntimeError):
    """nft refused the ruleset or is missing."""


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


def counter_untrusted(text: str, name: str) -> tuple[int, int]:
    """(packets, bytes) of counter ``name`` in ``nft -j list counter`` output; NftError if absent or garbled."""
    try:
        for item in json.loads(text).get("nftables", []):
            c = item.get("counter") if isinstance(item, dict) else None
            if isinstance(c, dict) and c.get("name") == name:
                packets, nbytes = c.get("packets"), c.get("bytes")
                if isinstance(packets, int) and isinstance(nbytes, int):
                    return packets, nbytes
    except (ValueError, AttributeError) as exc:
        raise NftError(f"nft printed something that is not its JSON: {exc}") from None
    raise NftError(f"no counter {name!r} in nft's output")


def counter(table: str, name: str = QUIC_COUNTER) -> tuple[int, int]:
    """(packets, bytes) of the named counter in table ``table`` of this namespace."""
    out = _nft(["-j", "list", "counter", "ip", table, name])
    if out.returncode:
        raise NftError(f"cannot read counter {name} of table ip {table}: {out.stderr.strip() or 'no such table'}")
    return counter_untrusted(out.stdout, name)


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
