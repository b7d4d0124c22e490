"""TLS sessions the proxy keeps for its connections to servers (decrypting).

Resuming a session skips the server's certificate message and signature and
the proxy's chain verification; it is offered only to the very same server
name, address, port and ALPN offer the session was verified for, so a session
never stands in for a check against another name.  Pure: time is passed in and
the values are opaque (``ssl.SSLSession`` in the shell).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable

MAX_AGE = 3600.0  # never resume longer than this after the full handshake, whatever the server allows


class SessionCache:
    """Resumable sessions by key (name, address, port, alpn), least recently used out."""

    def __init__(self, size: int = 1024, max_age: float = MAX_AGE):
        if size < 1:
            raise ValueError("session cache size must be at least 1")
        self.size = size
        self.max_age = max_age
        self._data: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()

    def get(self, key: Hashable, now: float) -> Any | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        if hit[0] <= now:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return hit[1]

    def put(self, key: Hashable, session: Any, lifetime: float, now: float) -> None:
        """Keep ``session`` for ``lifetime`` seconds (the server's hint), at most ``max_age``."""
        lifetime = min(float(lifetime), self.max_age)
        if lifetime <= 0:
            self._data.pop(key, None)
            return
        self._data[key] = (now + lifetime, session)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def drop(self, key: Hashable) -> None:
        """Forget ``key`` (a resumption failed, or the server's certificate no longer verifies)."""
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)
