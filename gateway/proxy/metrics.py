"""The proxy's metrics: counted once per connection as it ends, exported at scrape time.

``Counts.add`` runs in ``Conn.finish`` (once per connection, never per byte:
the byte totals come from the counters the splice and the relay keep anyway);
reasons are reduced to a few fixed classes so a label never carries a name.
"""

from __future__ import annotations

from ztna.metrics import COUNTER, GAUGE, Family

# (substring of the log record's reason or error, class), first match wins
_REASONS = (
    ("policy reloaded", "reload"),
    ("not in a configured client network", "client-network"),
    ("matches deny", "deny-list"),
    ("matches no rule", "default"),
    ("is not an allowed", "port"),
    ("is not a host name", "not-a-name"),
    ("differs from the CONNECT name", "sni-mismatch"),
    ("Encrypted Client Hello", "ech"),
    ("no SNI", "no-sni"),
    ("not TLS", "not-tls"),
    ("resolves to no address", "destination"),
    ("forbidden destination", "destination"),
    ("resolve", "dns"),
    ("no complete", "timeout"),
    ("over max_connections", "max-connections"),
    ("failed verification", "server-certificate"),
    ("TLS with", "server-tls"),
    ("Connect call failed", "connect"),
    ("timed out", "connect"),
    ("ClientHello", "bad-hello"),
    ("proxy stopping", "stopping"),
)


def reason_class(rec: dict) -> str:
    text = f"{rec.get('reason') or ''} {rec.get('error') or ''}"
    for needle, cls in _REASONS:
        if needle in text:
            return cls
    return "other"


def handshake_failure(rec: dict) -> str | None:
    """``server`` or ``client`` when a decrypting connection's TLS handshake failed on that side, else None."""
    reason = rec.get("reason") or ""
    if "failed verification" in reason or reason.startswith("TLS with "):
        return "server"
    if rec.get("decrypted") and "tls_client" not in rec and rec.get("error") and rec.get("decision") == "allow":
        return "client"
    return None


class Counts:
    """Plain ints and dicts the loop adds to; ``families`` reads them from the exporter's thread."""

    def __init__(self) -> None:
        self.conns: dict[tuple[str, str], int] = {}
        self.refusals: dict[str, int] = {}
        self.handshake_failures: dict[str, int] = {}
        self.bytes_up = 0
        self.bytes_down = 0

    def add(self, rec: dict) -> None:
        key = (rec.get("mode") or "unknown", rec.get("decision") or "error")
        self.conns[key] = self.conns.get(key, 0) + 1
        self.bytes_up += rec.get("bytes_up", 0)
        self.bytes_down += rec.get("bytes_down", 0)
        if key[1] != "allow" or rec.get("error"):
            r = reason_class(rec)
            self.refusals[r] = self.refusals.get(r, 0) + 1
        side = handshake_failure(rec)
        if side:
            self.handshake_failures[side] = self.handshake_failures.get(side, 0) + 1

    def families(self, *, open_connections: int, quic_packets: int | None = None) -> list[Family]:
        fams = [
            Family("ztna_proxy_connections", "Connections ended, by mode and decision", COUNTER, ("mode", "decision"),
                   sorted((k, n) for k, n in dict(self.conns).items())),
            Family("ztna_proxy_bytes", "Bytes relayed: up (client to server) and down", COUNTER, ("direction",),
                   [(("up",), self.bytes_up), (("down",), self.bytes_down)]),
            Family("ztna_proxy_refusals", "Connections denied or ended in error, by reason", COUNTER, ("reason",),
                   sorted(((r,), n) for r, n in dict(self.refusals).items())),
            Family("ztna_proxy_handshake_failures", "Decrypting TLS handshakes that failed, by side", COUNTER, ("side",),
                   sorted(((s,), n) for s, n in dict(self.handshake_failures).items())),
            Family("ztna_proxy_open_connections", "Client connections open now", GAUGE, (), [((), open_connections)]),
        ]
        if quic_packets is not None:
            fams.append(Family("ztna_proxy_quic_datagrams", "Client UDP to the redirected ports (QUIC), by the nft "
                               "counter", COUNTER, (), [((), quic_packets)]))
        return fams
