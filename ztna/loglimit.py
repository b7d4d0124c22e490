"""How often a service may log about bad input from one source.

A hostile peer that sends garbage as fast as it can must not turn the log into
its megaphone: each (source, kind) may write one line per ``interval``; the
lines held back meanwhile are counted and reported on the next line that is let
through.  Pure: the time comes in, a decision goes out.
"""

from __future__ import annotations


class LogLimiter:
    """One line per key per ``interval`` seconds, with the count of lines suppressed since."""

    def __init__(self, interval: float = 10.0, max_keys: int = 4096):
        self.interval = interval
        self.max_keys = max_keys
        self._keys: dict[object, list] = {}  # key -> [time of the last line let through, suppressed since]

    def allow(self, key: object, now: float) -> int | None:
        """None: stay quiet.  Otherwise log now, and say how many lines were suppressed (0 or more)."""
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return None
        if entry is None and len(self._keys) >= self.max_keys:
            self._forget(now)
        suppressed = entry[1] if entry is not None else 0
        self._keys[key] = [now, 0]
        return suppressed

    def _forget(self, now: float) -> None:
        # Many sources (a spoofed UDP flood) must not grow the table without end: drop the quiet
        # ones, and if every one is recent, the whole table (worst case: one extra line each).
        for k in [k for k, e in self._keys.items() if now - e[0] >= self.interval]:
            del self._keys[k]
        if len(self._keys) >= self.max_keys:
            self._keys.clear()


def suffix(suppressed: int) -> str:
    """What to append to a line that comes after suppressed ones."""
    return f" ({suppressed} similar lines suppressed)" if suppressed else ""
