"""gateway/metrics.py: the families a scrape gets from the gateway's counts."""

from gateway.metrics import Snapshot, families
from ztna.metrics import Exporter


def test_families_render_every_metric_with_its_labels():
    snap = Snapshot({"tls_refused": 5, "revoked_refused": 2, "leases_denied": 3, "queue_drops": 1,
                     "sessions_started": 4, "dropped_spoofed": 6, "reloads_refused": 1}, sessions=2, leases=3,
                    bytes_in=100, bytes_out=2000)
    text = Exporter(lambda: families(snap)).render()
    for line in ("ztna_gateway_sessions 2.0", "ztna_gateway_sessions_started_total 4.0", "ztna_gateway_leases 3.0",
                 'ztna_gateway_bytes_total{direction="in"} 100.0', 'ztna_gateway_bytes_total{direction="out"} 2000.0',
                 'ztna_gateway_refusals_total{reason="revoked"} 2.0',
                 'ztna_gateway_refusals_total{reason="lease-denied"} 3.0',
                 "ztna_gateway_handshake_failures_total 3.0", "ztna_gateway_queue_drops_total 1.0",
                 'ztna_gateway_dropped_packets_total{reason="spoofed"} 6.0',
                 'ztna_gateway_reloads_total{result="refused"} 1.0'):
        assert line in text.splitlines(), line



def test_the_fair_queue_family_carries_queued_dropped_and_marked():
    snap = Snapshot({"reply_queued_packets": 7, "aqm_drops": 2, "aqm_marks": 3}, sessions=1, leases=1,
                    bytes_in=0, bytes_out=0)
    lines = Exporter(lambda: families(snap)).render().splitlines()
    for line in ('ztna_gateway_fair_queue_total{event="queued"} 7.0', 'ztna_gateway_fair_queue_total{event="codel-drop"} 2.0',
                 'ztna_gateway_fair_queue_total{event="codel-mark"} 3.0'):
        assert line in lines, line
