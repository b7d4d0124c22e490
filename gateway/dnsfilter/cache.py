"""The answer cache: upstream replies by (name, type, class), kept for their TTL.

Time is passed in.  Bounded: when full, the oldest inserted entry goes first
(insertion order of a dict), which costs nothing per hit.
"""

from __future__ import annotations

from dataclasses import dataclass

from .wire import Upstream


@dataclass(slots=True)
class Entry:
    """One cached reply and when it was stored."""

    reply: Upstream
    stored: float
    expires: float

    def age(self, now: float) -> int:
        return int(now - self.stored)


class AnswerCache:
    """(qname, qtype, qclass) -> Entry, at most ``size`` entries, TTL capped at ``max_ttl``."""

    def __init__(self, size: int = 100_000, max_ttl: int = 86_400):
        self.size = size
        self.max_ttl = max_ttl
        self._d: dict[tuple[str, int, int], Entry] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, int, int], now: float) -> Entry | None:
        e = self._d.get(key)
        if e is None or e.expires <= now:
            if e is not None:
                del self._d[key]
            self.misses += 1
            return None
        self.hits += 1
        return e

    def put(self, key: tuple[str, int, int], reply: Upstream, now: float) -> None:
        ttl = min(reply.ttl, self.max_ttl)
        if ttl <= 0 or self.size <= 0:
            return
        self._d.pop(key, None)
        while len(self._d) >= self.size:
            del self._d[next(iter(self._d))]
        self._d[key] = Entry(reply, now, now + ttl)

    def __len__(self) -> int:
        return len(self._d)
