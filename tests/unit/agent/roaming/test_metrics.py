"""agent.roaming.metrics: the families a scrape shows, from a snapshot."""

from agent.roaming.metrics import Snapshot, families
from ztna.metrics import Exporter


def test_a_scrape_names_routes_refusals_and_states():
    snap = Snapshot({"internal": 3, "cloud": 5, "fail_open": 1, "servfail": 2, "formerr": 4},
                    owning=True, cloud_up=False, backed_off=False, foreign_rewrites=7)
    text = Exporter(lambda: families(snap)).render()
    for line in ('ztna_roaming_queries_total{route="internal"} 3.0', 'ztna_roaming_queries_total{route="cloud"} 5.0',
                 'ztna_roaming_queries_total{route="fail_open"} 1.0',
                 'ztna_roaming_refusals_total{reason="servfail"} 2.0', 'ztna_roaming_refusals_total{reason="malformed"} 4.0',
                 "ztna_roaming_owning 1.0", "ztna_roaming_cloud_up 0.0", "ztna_roaming_backed_off 0.0",
                 "ztna_roaming_foreign_rewrites_total 7.0"):
        assert line in text, line
