"""The agent's metrics: its session's counters and a few gauges, as Prometheus families at scrape time.

Pure: ``families`` takes a snapshot; the shell (``Agent.metric_families``) takes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ztna.metrics import COUNTER, GAUGE, Family

REFUSALS = {  # counter key -> reason
    "refused": "not-leased-or-denied",        # a packet to an address without an allowed lease (RST / unreachable)
    "dropped_spoofed_src": "spoofed-source",  # a TUN packet not from the adapter's address
    "tunnel_refused": "gateway-refused",      # the gateway closed the tunnel before WELCOME (e.g. revoked)
    "lease_cap_reached": "lease-cap",
}
DNS = {"dns_leased": "leased", "dns_forwarded": "forwarded", "dns_malformed": "malformed"}


@dataclass(frozen=True)
class Snapshot:
    counters: dict
    tunnel_up: bool
    leases: int
    bytes_in: int
    bytes_out: int


def families(s: Snapshot) -> list[Family]:
    c = s.counters
    return [
        Family("ztna_agent_tunnel_up", "1 while the tunnel to the gateway is up", GAUGE, (), [((), int(s.tunnel_up))]),
        Family("ztna_agent_sessions", "Tunnels welcomed by a gateway since start", COUNTER, (),
               [((), c.get("tunnel_up", 0))]),
        Family("ztna_agent_leases", "Leased addresses now", GAUGE, (), [((), s.leases)]),
        Family("ztna_agent_bytes", "Tunnel bytes (TLS payload) from the gateway (in) and to it (out)", COUNTER,
               ("direction",), [(("in",), s.bytes_in), (("out",), s.bytes_out)]),
        Family("ztna_agent_refusals", "Packets and tunnels refused, by reason", COUNTER, ("reason",),
               [((r,), c.get(k, 0)) for k, r in REFUSALS.items()]),
        Family("ztna_agent_handshake_failures", "Tunnels that could not be built (DNS, TCP or TLS)", COUNTER, (),
               [((), c.get("tunnel_failed", 0))]),
        Family("ztna_agent_queue_drops", "Packets dropped because a lease's waiting queue was full", COUNTER, (),
               [((), c.get("dropped_pending_full", 0))]),
        Family("ztna_agent_fair_queue", "Packets that waited in the tunnel's fair queue, CoDel's drops and ECN marks, "
               "and drops over its memory bound", COUNTER, ("event",),
               [(("queued",), c.get("tunnel_queued_packets", 0)), (("codel-drop",), c.get("aqm_drops", 0)),
                (("codel-mark",), c.get("aqm_marks", 0)), (("overlimit",), c.get("aqm_overlimit", 0))]),
        Family("ztna_agent_dns_queries", "Queries to the DNS stub, by verdict", COUNTER, ("verdict",),
               [((v,), c.get(k, 0)) for k, v in DNS.items()]),
    ]
