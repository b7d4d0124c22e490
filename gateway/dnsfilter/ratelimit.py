"""Per-client rate limit: a token bucket per source address, time passed in."""

from __future__ import annotations


class RateLimiter:
    """``qps`` tokens a second per source, at most ``burst`` saved; 0 disables it.

    ``dropped`` counts refused queries per source (and ``total_dropped`` overall),
    so a flood shows in ``ztna dns stats`` and in the log.
    """

    def __init__(self, qps: float, burst: float, *, max_sources: int = 100_000):
        self.qps = qps
        self.burst = max(burst, 1.0)
        self.max_sources = max_sources
        self._b: dict[str, list[float]] = {}   # source -> [tokens, last refill]
        self.dropped: dict[str, int] = {}
        self.total_dropped = 0

    def allow(self, source: str, now: float) -> bool:
        if self.qps <= 0:
            return True
        b = self._b.get(source)
        if b is None:
            if len(self._b) >= self.max_sources:
                self._forget_idle(now)
            self._b[source] = [self.burst - 1, now]
            return True
        tokens = min(self.burst, b[0] + (now - b[1]) * self.qps)
        b[1] = now
        if tokens >= 1:
            b[0] = tokens - 1
            return True
        b[0] = tokens
        self.dropped[source] = self.dropped.get(source, 0) + 1
        self.total_dropped += 1
        return False

    def _forget_idle(self, now: float) -> None:
        # A bucket refilled to full is the same as no bucket.
        full_after = self.burst / self.qps
        for s in [s for s, (_, last) in self._b.items() if now - last >= full_after]:
            del self._b[s]
        if len(self._b) >= self.max_sources:
            self._b.clear()
