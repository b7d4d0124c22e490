"""An in-memory twin of ztna.tlsconn.FramedTLS for unit tests (as wireguard-go's tun/tuntest).

``link()`` returns two connected ends.  Each end has what the services use of
a ``FramedTLS``: ``send``, ``close``, ``start_reading``, ``queued``,
``closed``, ``bytes_in``/``bytes_out`` and the ``on_data``/``on_close``/
``on_blocked`` callbacks.  Bytes sent wait until the test calls
``Link.pump``, which hands them to the other end's ``on_data`` (whole, or
cut into ``chunk``-sized reads, as TCP may), so a test decides when the
network moves and a callback never runs inside another one's ``send``.
Closing one end reaches the other as "peer closed the connection" once what
was sent before has been delivered.
"""

from __future__ import annotations

from typing import Callable


class MemoryConn:
    """One end of a :class:`Link`."""

    def __init__(self, link: "Link", name: str):
        self.link = link
        self.name = name
        self.on_data: Callable[[bytes], None] | None = None
        self.on_close: Callable[[str], None] | None = None
        self.on_blocked: Callable[[bool], None] | None = None
        self.peer: MemoryConn | None = None
        self._out: list[bytes] = []
        self.queued = 0
        self.closed = False
        self.reading = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.close_reason: str | None = None

    def start_reading(self) -> None:
        self.reading = True

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        self._out.append(bytes(data))
        self.queued += len(data)
        self.bytes_out += len(data)

    @property
    def blocked(self) -> bool:
        return False

    def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if self.on_close is not None:
            self.on_close(reason)


class Link:
    """Two ends joined in memory; nothing moves until ``pump``."""

    def __init__(self, chunk: int | None = None):
        self.chunk = chunk
        self.a = MemoryConn(self, "a")
        self.b = MemoryConn(self, "b")
        self.a.peer, self.b.peer = self.b, self.a

    def _move(self, src: MemoryConn, dst: MemoryConn) -> int:
        if not src._out:
            if src.closed and not dst.closed:
                dst.close("peer closed the connection")
            return 0
        data = b"".join(src._out)
        src._out.clear()
        src.queued = 0
        if dst.closed or not dst.reading:
            if dst.closed:
                return 0
            src._out.append(data)  # not read yet: it waits, as in a socket buffer
            src.queued = len(data)
            return 0
        step = self.chunk or len(data)
        for i in range(0, len(data), step):
            piece = data[i:i + step]
            dst.bytes_in += len(piece)
            if dst.on_data is not None:
                dst.on_data(piece)
            if dst.closed:
                break
        return len(data)

    def pump(self, rounds: int = 100) -> int:
        """Deliver both ways until nothing is left to move; the bytes moved."""
        total = 0
        for _ in range(rounds):
            moved = self._move(self.a, self.b) + self._move(self.b, self.a)
            total += moved
            if not moved:
                return total
        raise RuntimeError(f"the two ends were still talking after {rounds} rounds")


def link(chunk: int | None = None) -> tuple[MemoryConn, MemoryConn, Link]:
    """(agent end, gateway end, the link to pump)."""
    ln = Link(chunk)
    return ln.a, ln.b, ln
