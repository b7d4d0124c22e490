"""The resolver's metrics: what Engine.counts and the shell's ints hold, as Prometheus families.

Counting on the query path is one dict increment per query (``count`` for a
decided query's log record, the engine's batch loop for a memo hit); this
module turns the counts into families only when the endpoint is scraped.
"""

from __future__ import annotations

from ztna.metrics import COUNTER, GAUGE, Family


def key_of(rec: dict) -> tuple:
    """The count key of one query-log record: (decision, column, rcode, answered from the cache)."""
    return rec.get("decision"), rec.get("column"), rec.get("rcode"), bool(rec.get("cached"))


def count(counts: dict, rec: dict) -> None:
    k = key_of(rec)
    counts[k] = counts.get(k, 0) + 1


def families(counts: dict, *, rate_limited: int, upstream_failures: int, cache_entries: int) -> list[Family]:
    """Queries by decision, blocks by column, refusals by reason, cache hits, upstream failures."""
    snap = dict(counts)  # the loop's thread may add keys while we read
    by_decision: dict[str, int] = {}
    by_column: dict[str, int] = {}
    refused: dict[str, int] = {"rate-limited": rate_limited}
    hits = 0
    for (decision, column, rcode, cached), n in snap.items():
        by_decision[decision or "unknown"] = by_decision.get(decision or "unknown", 0) + n
        if decision == "blocked":
            by_column[column or "unknown"] = by_column.get(column or "unknown", 0) + n
        if rcode == "REFUSED":
            # why: the block's column (SPEC §4's REFUSED rows), else the decision (not-served, bad-query)
            reason = f"blocked-{column}" if decision == "blocked" else (decision or "unknown")
            refused[reason] = refused.get(reason, 0) + n
        if cached:
            hits += n
    if rate_limited:
        by_decision["rate-limited"] = by_decision.get("rate-limited", 0) + rate_limited
    return [
        Family("ztna_dns_queries", "DNS queries by decision (rate-limited ones were dropped, not answered)",
               COUNTER, ("decision",), sorted(((d,), n) for d, n in by_decision.items())),
        Family("ztna_dns_blocked", "Blocked queries by SPEC 4 column", COUNTER, ("column",),
               sorted(((c,), n) for c, n in by_column.items())),
        Family("ztna_dns_refusals", "Queries refused (RCODE REFUSED) or dropped, by reason", COUNTER, ("reason",),
               sorted(((r,), n) for r, n in refused.items())),
        Family("ztna_dns_cache_hits", "Allowed queries answered from the answer cache", COUNTER, (), [((), hits)]),
        Family("ztna_dns_upstream_failures", "Questions no upstream answered (clients got SERVFAIL)", COUNTER, (),
               [((), upstream_failures)]),
        Family("ztna_dns_cache_entries", "Answers in the cache", GAUGE, (), [((), cache_entries)]),
    ]
