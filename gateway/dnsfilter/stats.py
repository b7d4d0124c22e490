"""``ztna dns stats``: counts from the query log (pure: records in, summary out)."""

from __future__ import annotations

from collections import Counter
from typing import Iterable


def summarize(records: Iterable[dict], top: int = 10) -> dict:
    """Counts by decision, category, identity and policy; top blocked names; latency percentiles."""
    by_decision, by_category, by_identity, by_policy, blocked_names = Counter(), Counter(), Counter(), Counter(), Counter()
    by_action, by_rcode = Counter(), Counter()
    latencies: list[float] = []
    total = 0
    dropped: dict[str, int] = {}
    first = last = None
    for r in records:
        total += 1
        d = r.get("decision", "?")
        by_decision[d] += 1
        by_identity[r.get("identity", r.get("client", "?"))] += 1
        if r.get("policy"):
            by_policy[r["policy"]] += 1
        if r.get("rcode"):
            by_rcode[r["rcode"]] += 1
        if d == "blocked":
            by_category[r.get("category", "?")] += 1
            by_action[r.get("action", "?")] += 1
            blocked_names[r.get("name", "?")] += 1
        if d == "rate-limited" and isinstance(r.get("dropped"), int):
            # Each rate-limit line counts the drops since the previous line for its client.
            c = r.get("client", "?")
            dropped[c] = dropped.get(c, 0) + r["dropped"]
        if isinstance(r.get("latency_ms"), (int, float)):
            latencies.append(r["latency_ms"])
        t = r.get("time")
        if isinstance(t, (int, float)):
            first = t if first is None else min(first, t)
            last = t if last is None else max(last, t)
    latencies.sort()

    def pct(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 3) if latencies else None

    return {
        "queries": total,
        "first": first, "last": last,
        "by_decision": dict(by_decision.most_common()),
        "by_category": dict(by_category.most_common()),
        "by_action": dict(by_action.most_common()),
        "by_rcode": dict(by_rcode.most_common()),
        "by_identity": dict(by_identity.most_common(top)),
        "by_policy": dict(by_policy.most_common()),
        "top_blocked": blocked_names.most_common(top),
        "rate_limited_drops": dict(sorted(dropped.items(), key=lambda kv: -kv[1])),
        "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)},
    }


def render(s: dict) -> str:
    """The summary as text tables for a person."""
    out = [f"{s['queries']} queries in the log"]
    if s["first"] is not None:
        out[0] += f" over {s['last'] - s['first']:.1f} s"

    def table(title: str, rows) -> None:
        rows = list(rows)
        if not rows:
            return
        out.append("")
        out.append(title)
        w = max(len(str(k)) for k, _ in rows)
        out.extend(f"  {str(k):<{w}}  {v:>8}" for k, v in rows)

    table("by decision", s["by_decision"].items())
    table("blocked, by category or list", s["by_category"].items())
    table("blocked, by answer", s["by_action"].items())
    table("by rcode", s["by_rcode"].items())
    table("by policy", s["by_policy"].items())
    table("by identity (top)", s["by_identity"].items())
    table("top blocked names", s["top_blocked"])
    table("queries dropped by the rate limit, by client", s["rate_limited_drops"].items())
    lat = s["latency_ms"]
    if lat["p50"] is not None:
        out.append("")
        out.append(f"latency ms: p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}")
    return "\n".join(out)
