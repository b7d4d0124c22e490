"""agent/metrics.py: the families a scrape gets from the agent's counts."""

from ztna.metrics import Exporter


def test_agent_families():
    from agent.metrics import Snapshot as A
    from agent.metrics import families as agent_families

    snap = A({"tunnel_up": 2, "tunnel_failed": 3, "tunnel_refused": 1, "refused": 4, "dropped_pending_full": 5,
              "dns_leased": 6}, tunnel_up=True, leases=2, bytes_in=10, bytes_out=20)
    lines = Exporter(lambda: agent_families(snap)).render().splitlines()
    for line in ("ztna_agent_tunnel_up 1.0", "ztna_agent_sessions_total 2.0", "ztna_agent_leases 2.0",
                 'ztna_agent_bytes_total{direction="out"} 20.0', 'ztna_agent_refusals_total{reason="gateway-refused"} 1.0',
                 "ztna_agent_handshake_failures_total 3.0", "ztna_agent_queue_drops_total 5.0",
                 'ztna_agent_dns_queries_total{verdict="leased"} 6.0'):
        assert line in lines, line


def test_the_fair_queue_family_carries_queued_dropped_marked_and_overlimit():
    from agent.metrics import Snapshot as A
    from agent.metrics import families as agent_families

    snap = A({"tunnel_queued_packets": 9, "aqm_drops": 1, "aqm_marks": 4, "aqm_overlimit": 2}, tunnel_up=True,
             leases=1, bytes_in=0, bytes_out=0)
    lines = Exporter(lambda: agent_families(snap)).render().splitlines()
    for line in ('ztna_agent_fair_queue_total{event="queued"} 9.0', 'ztna_agent_fair_queue_total{event="codel-drop"} 1.0',
                 'ztna_agent_fair_queue_total{event="codel-mark"} 4.0', 'ztna_agent_fair_queue_total{event="overlimit"} 2.0'):
        assert line in lines, line
