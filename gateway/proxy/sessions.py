"""TLS sessions the proxy keeps for its connections to servers (decrypting).

Resuming a session skips the server's certificate message and signature and
the proxy's chain verification; it is offered only to the very same server
name, address, port and ALPN offer the session was verified for, so a session
never stands in for a check against another name.  Pure: time is passed in and
the values are opaque (``ssl.SSLSession`` in the shell).

Reading a connection's session is rationed (:meth:`SessionCache.wants`): on
Python 3.11 every read of ``SSLObject.session`` leaks a copy of the session,
about 6 KB (CPython issue gh-116810), so a proxy that read one per decrypted
connection grew by that much per connection.  A session that resumes is kept
and offered again until half its lifetime has passed (TLS 1.3 tickets from
OpenSSL servers resume more than once), and a key is read at most once per
``refetch`` seconds, so even a server that never resumes costs one read a
minute, not one per connection.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable

MAX_AGE = 3600.0  # never resume longer than this after the full handshake, whatever the server allows
REFETCH = 60.0  # read a key's session at most this often (each read leaks on Python 3.11)


def _newest(d: OrderedDict, key: Hashable, value: Any, size: int) -> None:
    """Set ``d[key]`` as the most recently used entry; the least recently used go beyond ``size``."""
    d[key] = value
    d.move_to_end(key)
    while len(d) > size:
        d.popitem(last=False)


class SessionCache:
    """Resumable sessions by key (name, address, port, alpn), least recently used out."""

    def __init__(self, size: int = 1024, max_age: float = MAX_AGE, refetch: float = REFETCH):
        if size < 1:
            raise ValueError("session cache size must be at least 1")
        self.size = size
        self.max_age = max_age
        self.refetch = refetch
        self._data: OrderedDict[Hashable, tuple[float, Any, float]] = OrderedDict()  # (expires, session, stored)
        self._read: OrderedDict[Hashable, float] = OrderedDict()  # when each key's session was last read

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
        _newest(self._data, key, (now + lifetime, session, now), self.size)

    def wants(self, key: Hashable, now: float, *, offered: bool, resumed: bool) -> bool:
        """After a connection for ``key``: should the shell read its session and ``put`` it?

        ``offered``: a cached session was offered; ``resumed``: the server took it.  A refused
        session is dropped.  Yes when there is no usable session or the kept one is past half
        its lifetime, and the key's session was not read in the last ``refetch`` seconds.
        """
        hit = self._data.get(key)
        if offered and not resumed and hit is not None:
            del self._data[key]
            hit = None
        if hit is not None and now < hit[2] + (hit[0] - hit[2]) / 2:
            return False
        last = self._read.get(key)
        if last is not None and now - last < self.refetch:
            return False
        _newest(self._read, key, now, self.size)
        return True

    def drop(self, key: Hashable) -> None:
        """Forget ``key`` (a resumption failed, or the server's certificate no longer verifies)."""
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)
