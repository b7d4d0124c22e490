"""gateway.dnsfilter.metrics: the engine's and the shell's counts as Prometheus families (no root)."""

from gateway.dnsfilter import metrics

from .test_engine import ask, engine


def test_counts_for_metrics_include_memo_hits():
    eng = engine()
    for _ in range(3):  # decided once, then replayed from the memo twice
        out = ask(eng, "listed.bad.example", "TXT")
        if out.log is not None:
            metrics.count(eng.counts, out.log)  # what the shell does for a decided query
    fams = {f.name: dict(f.samples) for f in metrics.families(eng.counts, rate_limited=4, upstream_failures=1,
                                                              cache_entries=0)}
    assert fams["ztna_dns_queries"] == {("blocked",): 3, ("rate-limited",): 4}
    assert fams["ztna_dns_refusals"] == {("blocked-destination-list",): 3, ("rate-limited",): 4}
    assert fams["ztna_dns_blocked"] == {("destination-list",): 3}
    assert fams["ztna_dns_upstream_failures"] == {(): 1}
