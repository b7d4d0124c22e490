"""Failed logins, counted per user name and per source address.

Pure: the time is an argument.  A key (``user:alice``, ``addr:198.51.100.30``)
that has failed ``limit`` times within ``window`` seconds is refused until its
oldest counted failure leaves the window; the refusal says for how long.  A
success clears the user's count (not the address's: one right guess must not
unlock a guessing source).

Checks still running count too: the password check runs off the event loop,
so ``begin`` marks one in flight when it is issued and ``end`` settles it (then
``failure`` or ``success``); failures plus checks in flight may not pass the
limit, or N logins sent at once would all be checked before the first failed.

The table is bounded: past ``max_keys`` the keys with no failure left in the
window go first, then those with the fewest failures (the oldest of them
first), so a flood of fresh keys cannot push out a victim's count.
"""

from __future__ import annotations

from collections import Counter, deque

# While checks are in flight there is no failure to wait out yet: a check takes ~50 ms.
IN_FLIGHT_WAIT = 1.0


class FailureLimiter:
    """Sliding-window count of failures (and checks in flight) per key."""

    def __init__(self, limit: int, window: float, *, max_keys: int = 10_000):
        self.limit, self.window, self.max_keys = limit, window, max_keys
        self.fails: dict[str, deque] = {}
        self.in_flight: Counter = Counter()

    def retry_after(self, key: str, now: float) -> float:
        """0 when ``key`` may try now; otherwise the seconds until it may."""
        q = self.fails.get(key)
        while q and q[0] <= now - self.window:
            q.popleft()
        failed = len(q) if q else 0
        if failed + self.in_flight[key] < self.limit:
            return 0.0
        if failed >= self.limit:
            return q[0] + self.window - now
        return IN_FLIGHT_WAIT

    def begin(self, key: str) -> None:
        """A check for ``key`` was issued; ``end`` it when its result (or its abandonment) comes."""
        self.in_flight[key] += 1

    def end(self, key: str) -> None:
        self.in_flight[key] -= 1
        if self.in_flight[key] <= 0:
            del self.in_flight[key]

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
        if len(self.fails) >= self.max_keys:
            # A quarter at once, so a flood pays one sort per max_keys/4 new keys, not one per key.
            keep = self.max_keys - max(1, self.max_keys // 4)
            order = sorted(self.fails, key=lambda k: (len(self.fails[k]), self.fails[k][-1]))
            for k in order[:len(self.fails) - keep]:
                del self.fails[k]
