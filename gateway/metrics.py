"""The gateway's metrics: the counts it keeps anyway, turned into Prometheus families at scrape time.

Pure: ``families`` takes a snapshot (counters and a few totals) and returns
``ztna.metrics.Family`` values; the shell (``Gateway.metric_families``) takes
the snapshot.  Nothing is counted per packet for the sake of metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

from ztna.metrics import COUNTER, GAUGE, Family

# counter key in the gateway's Counter -> the refusal reason it stands for
REFUSALS = {
    "connections_refused": "connection-limit",   # max_sessions, or the pending-handshake gate
    "revoked_refused": "revoked",                # certificate on the CRL
    "leases_denied": "lease-denied",             # the policy, or private DNS without an answer
    "leases_withdrawn": "lease-withdrawn",       # a reload took the permission away
    "sessions_revoked": "session-revoked",       # a live session whose certificate was revoked
}
DROPS = {
    "dropped_spoofed": "spoofed",
    "tun_unclaimed": "unclaimed",
    "tun_write_errors": "tun-write-error",
}


@dataclass(frozen=True)
class Snapshot:
    counters: dict
    sessions: int
    leases: int
    bytes_in: int
    bytes_out: int


def families(s: Snapshot) -> list[Family]:
    c = s.counters
    tls = c.get("tls_refused", 0) - c.get("revoked_refused", 0)  # revoked ones completed TLS: a refusal, not a failure
    return [
        Family("ztna_gateway_sessions", "Agent sessions established now", GAUGE, (), [((), s.sessions)]),
        Family("ztna_gateway_sessions_started", "Agent sessions established since start", COUNTER, (),
               [((), c.get("sessions_started", 0))]),
        Family("ztna_gateway_leases", "Leases allowed in the sessions now", GAUGE, (), [((), s.leases)]),
        Family("ztna_gateway_bytes", "Tunnel bytes (TLS payload) from agents (in) and to them (out)", COUNTER,
               ("direction",), [(("in",), s.bytes_in), (("out",), s.bytes_out)]),
        Family("ztna_gateway_refusals", "Connections, sessions and leases refused, by reason", COUNTER, ("reason",),
               [((r,), c.get(k, 0)) for k, r in REFUSALS.items()]),
        Family("ztna_gateway_handshake_failures", "TLS handshakes that failed (certificate, timeout, not TLS)",
               COUNTER, (), [((), tls)]),
        Family("ztna_gateway_queue_drops", "Reply packets dropped because a session's fair queue was over queue_limit",
               COUNTER, (), [((), c.get("queue_drops", 0))]),
        Family("ztna_gateway_fair_queue", "Reply packets that waited in the sessions' fair queues, and CoDel's drops "
               "and ECN marks", COUNTER, ("event",),
               [(("queued",), c.get("reply_queued_packets", 0)), (("codel-drop",), c.get("aqm_drops", 0)),
                (("codel-mark",), c.get("aqm_marks", 0))]),
        Family("ztna_gateway_dropped_packets", "Packets dropped, by reason", COUNTER, ("reason",),
               [((r,), c.get(k, 0)) for k, r in DROPS.items()]),
        Family("ztna_gateway_udp_datagrams", "UDP data-channel datagrams authenticated (rx), sent (tx), and "
               "dropped as forged or garbage (rejected)", COUNTER, ("event",),
               [(("rx",), c.get("udp_rx", 0)), (("tx",), c.get("udp_tx", 0)),
                (("rejected",), sum(v for k, v in c.items() if k.startswith("udp_rejected_")))]),
        Family("ztna_gateway_reloads", "Reloads (SIGHUP), by result", COUNTER, ("result",),
               [(("taken",), c.get("reloads_taken", 0)), (("refused",), c.get("reloads_refused", 0))]),
        Family("ztna_gateway_crl_errors", "CRL files that could not be read or trusted", COUNTER, (),
               [((), c.get("crl_errors", 0))]),
    ]
