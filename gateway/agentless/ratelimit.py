"""Failed logins, counted per user name and per source address.

Pure: the time is an argument.  A key (``user:alice``, ``addr:198.51.100.30``)
that has failed ``limit`` times within ``window`` seconds is refused until its
oldest counted failure leaves the window; the refusal says for how long.  A
success clears the user's count (not the address's: one right guess must not
unlock a guessing source).  The table is bounded: past ``max_keys`` the keys
with no failure left in the window go first, then the oldest.
"""

from __future__ import annotations

from collections import deque


class FailureLimiter:
    """Sliding-window count of failures per key."""

    def __init__(self, limit: int, window: float, *, max_keys: int = 10_000):
        self.limit, self.window, self.max_keys = limit, window, max_keys
        self.fails: dict[str, deque] = {}

    def retry_after(self, key: str, now: float) -> float:
        """0 when ``key`` may try now; otherwise the seconds until it may."""
        q = self.fails.get(key)
        if not q:
            return 0.0
        while q and q[0] <= now - self.window:
            q.popleft()
        if len(q) < self.limit:
            return 0.0
        return q[0] + self.window - now

    def failure(self, key: str, now: float) -> None:
        if key not in self.fails and len(self.fails) >= self.max_keys:
            self._shrink(now)
        q = self.fails.setdefault(key, deque(maxlen=self.limit))
        q.append(now)

    def success(self, key: str) -> None:
        self.fails.pop(key, None)

    def _shrink(self, now: float) -> None:
        for k in [k for k, q in self.fails.items() if not q or q[-1] <= now - self.window]:
            del self.fails[k]
        while len(self.fails) >= self.max_keys:
            del self.fails[min(self.fails, key=lambda k: self.fails[k][-1])]
