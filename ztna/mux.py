"""Many channels over one connector tunnel (PoP <-> gateway), sans-IO.

Theory of operation
-------------------
The connector tunnel is one mTLS connection carrying the frames of ztna/wire.py
(``Decoder(mux=True)``).  Besides the tunnel's own HELLO/WELCOME/KEEPALIVE/CLOSE
it carries channels, each a byte stream of some ``kind`` (``agent``: an agent's
tunnel frame stream; ``stream``: one TCP byte stream, see below).  Frames::

    OPEN    {ch, kind, window, ...kind's fields}   opener -> peer
    OPENED  {ch, window}                             peer -> opener (the channel is usable)
    CHDATA  ch (4 bytes) + bytes                     either way
    CREDIT  ch (4 bytes) + granted bytes (4 bytes)   either way
    CHCLOSE {ch, reason, reset}                      either way; the channel is gone

Credit rule: each side grants the other ``window`` bytes of CHDATA payload per
channel (in OPEN / OPENED) and more with CREDIT as it consumes what it got
(:meth:`Mux.consumed`, which grants back in steps of half a window).  A sender
never sends more than it was granted (:meth:`Mux.send` returns None instead and
the caller drops or waits); a peer that sends more than it was granted, or
names a channel that is not open, breaks the protocol: :class:`wire.BadFrame`,
and the shell closes the tunnel with CLOSE {reason}.

The opener picks channel ids of its parity (``opener=True``: odd), so both ends
may open channels without colliding.

``stream`` channels carry one TCP connection's bytes.  Their OPEN names
``identity``, ``resource``, ``host`` and ``port`` (:func:`stream_fields` checks
them).  A TCP half-close is ``CHCLOSE {ch, reason, reset: false, half: true}``
(:meth:`Mux.shutdown`): the sender sends no more CHDATA, the other direction
goes on, and the channel is forgotten once both sides have half-closed.  A full
CHCLOSE ends both directions; ``reset: true`` says the connection was aborted
(the shell resets its socket rather than closing it cleanly).  The shell of a
stream stops reading its socket while the channel's credit is spent
(:meth:`Mux.room`), so a slow reader on one side costs the other side at most a
window of memory (ztna/chansock.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from . import wire

DEFAULT_WINDOW = 1024 * 1024
MAX_WINDOW = 64 * 1024 * 1024
PIECE = wire.MAX_CHDATA - 4
STREAM = "stream"


# ---- events (what the peer said) ----------------------------------------------------
@dataclass(frozen=True)
class Opened:
    """The peer asks for channel ``ch`` (``fields`` from its OPEN; answer with accept or close)."""
    ch: int
    kind: str
    fields: dict


@dataclass(frozen=True)
class Accepted:
    """Our OPEN of ``ch`` was accepted."""
    ch: int


@dataclass(frozen=True)
class Data:
    ch: int
    data: bytes


@dataclass(frozen=True)
class Closed:
    """The peer closed ``ch``."""
    ch: int
    reason: str
    reset: bool
    half: bool = False  # a half-close: the peer sends no more, but still reads (``stream`` channels)


@dataclass(frozen=True)
class Tunnel:
    """A frame of the tunnel itself (HELLO, WELCOME, KEEPALIVE, CLOSE)."""
    frame: wire.Frame


@dataclass
class Channel:
    ch: int
    kind: str
    fields: dict
    send_credit: int = 0       # bytes we may still send
    recv_credit: int = 0       # bytes the peer may still send
    window: int = DEFAULT_WINDOW  # what we grant
    unacked: int = 0           # consumed since our last CREDIT
    accepted: bool = False
    sent: int = 0
    received: int = 0
    dropped: int = 0           # sends refused for lack of credit
    eof_sent: bool = False     # we half-closed: no more CHDATA from us
    eof_received: bool = False  # the peer half-closed: no more CHDATA from it
    extra: dict = field(default_factory=dict)  # for the shell


def chdata(ch: int, data: bytes) -> bytes:
    return struct.pack("!II", (wire.CHDATA << 24) | (4 + len(data)), ch) + data


def credit(ch: int, n: int) -> bytes:
    return struct.pack("!III", (wire.CREDIT << 24) | 8, ch, n)


class Mux:
    """One end of a connector tunnel's channels."""

    def __init__(self, *, opener: bool, window: int = DEFAULT_WINDOW, max_channels: int = 4096):
        self.decoder = wire.Decoder(mux=True)
        self.channels: dict[int, Channel] = {}
        self.window = window
        self.max_channels = max_channels
        self._next = 1 if opener else 2

    # ---- what we send -------------------------------------------------------
    def open(self, kind: str, **fields) -> tuple[int, bytes]:
        ch = self._next
        self._next += 2
        c = Channel(ch, kind, fields, window=self.window, recv_credit=self.window)
        self.channels[ch] = c
        return ch, wire.control(wire.OPEN, ch=ch, kind=kind, window=self.window, **fields)

    def accept(self, ch: int) -> bytes:
        c = self.channels[ch]
        c.accepted = True
        return wire.control(wire.OPENED, ch=ch, window=c.window)

    def send(self, ch: int, data: bytes) -> bytes | None:
        """CHDATA frames for ``data``, or None (nothing sent) if the peer has not granted that much."""
        c = self.channels.get(ch)
        if c is None or not c.accepted or c.eof_sent:
            return None
        n = len(data)
        if n == 0:
            return b""
        if n > c.send_credit:
            c.dropped += 1
            return None
        c.send_credit -= n
        c.sent += n
        if n <= PIECE:
            return chdata(ch, data)
        view = memoryview(data)
        return b"".join(chdata(ch, view[i:i + PIECE]) for i in range(0, n, PIECE))

    def reserve(self, ch: int, n: int) -> bytes | None:
        """The CHDATA header of an ``n``-byte piece (``0 < n <= PIECE``) whose bytes the caller sends right
        after it, with the credit taken as :meth:`send` takes it; None (nothing taken) if it does not fit.
        Lets a relay write header and payload parts in one join instead of copying the payload twice."""
        c = self.channels.get(ch)
        if c is None or not c.accepted or c.eof_sent or not 0 < n <= PIECE:
            return None
        if n > c.send_credit:
            c.dropped += 1
            return None
        c.send_credit -= n
        c.sent += n
        return struct.pack("!II", (wire.CHDATA << 24) | (4 + n), ch)

    def can_send(self, ch: int, n: int) -> bool:
        c = self.channels.get(ch)
        return c is not None and c.accepted and not c.eof_sent and n <= c.send_credit

    def room(self, ch: int) -> int:
        """How many bytes ``send`` would take now (0 before OPENED, after our half-close, or once closed)."""
        c = self.channels.get(ch)
        if c is None or not c.accepted or c.eof_sent:
            return 0
        return c.send_credit

    def shutdown(self, ch: int, reason: str = "eof") -> bytes:
        """Half-close ``ch``: CHCLOSE {half: true}; we send no more, the peer may.  b"" if not open or done."""
        c = self.channels.get(ch)
        if c is None or c.eof_sent:
            return b""
        c.eof_sent = True
        if c.eof_received:
            del self.channels[ch]
        return wire.control(wire.CHCLOSE, ch=ch, reason=reason, reset=False, half=True)

    def consumed(self, ch: int, n: int) -> bytes:
        """We have delivered ``n`` received bytes of ``ch``: a CREDIT frame once half a window is due, else b""."""
        c = self.channels.get(ch)
        if c is None:
            return b""
        c.unacked += n
        if c.unacked < c.window // 2:
            return b""
        grant, c.unacked = c.unacked, 0
        c.recv_credit += grant
        return credit(ch, grant)

    def close(self, ch: int, reason: str, *, reset: bool = False) -> bytes:
        """CHCLOSE for ``ch`` (b"" if it is not open); the channel is forgotten."""
        if self.channels.pop(ch, None) is None:
            return b""
        return wire.control(wire.CHCLOSE, ch=ch, reason=reason, reset=reset)

    # ---- what the peer sent ---------------------------------------------------
    def feed_untrusted(self, data: bytes) -> list:
        """Bytes from the tunnel -> events.  Raises wire.BadFrame (events before it in ``exc.frames``)."""
        events: list = []
        try:
            frames = self.decoder.feed_untrusted(data)
            bad = None
        except wire.BadFrame as exc:
            frames, bad = exc.frames, exc
        try:
            for f in frames:
                self._frame(f, events)
        except wire.BadFrame as exc:
            exc.frames = events
            raise
        if bad is not None:
            bad.frames = events
            raise bad
        return events

    def _frame(self, f: wire.Frame, events: list) -> None:
        t = f.type
        if t == wire.CHDATA:
            ch = int.from_bytes(f.payload[:4], "big")
            c = self.channels.get(ch)
            if c is None:
                return  # closed by us while it was on the way: not the peer's fault
            n = len(f.payload) - 4
            if c.eof_received:
                raise wire.BadFrame(f"channel {ch}: CHDATA after the peer's half-close")
            if n > c.recv_credit:
                raise wire.BadFrame(f"channel {ch}: {n} bytes of CHDATA past the {c.recv_credit} granted")
            c.recv_credit -= n
            c.received += n
            events.append(Data(ch, bytes(memoryview(f.payload)[4:])))  # one copy, not a slice and a copy
        elif t == wire.CREDIT:
            ch, n = struct.unpack("!II", f.payload)
            c = self.channels.get(ch)
            if c is None:
                return
            if c.send_credit + n > MAX_WINDOW:
                raise wire.BadFrame(f"channel {ch}: CREDIT to {c.send_credit + n} bytes exceeds {MAX_WINDOW}")
            c.send_credit += n
        elif t == wire.OPEN:
            fl = f.fields
            ch, kind, window = fl.get("ch"), fl.get("kind"), fl.get("window")
            if not _uint(ch) or ch % 2 == self._next % 2 or ch in self.channels:
                raise wire.BadFrame(f"OPEN with a bad or taken channel id {ch!r}")
            if not isinstance(kind, str) or not _uint(window) or not 0 < window <= MAX_WINDOW:
                raise wire.BadFrame(f"OPEN {ch}: bad kind {kind!r} or window {window!r}")
            if len(self.channels) >= self.max_channels:
                raise wire.BadFrame(f"OPEN {ch}: {self.max_channels} channels open already")
            fields = {k: v for k, v in fl.items() if k not in ("ch", "kind", "window")}
            self.channels[ch] = Channel(ch, kind, fields, send_credit=window, window=self.window,
                                        recv_credit=self.window)
            events.append(Opened(ch, kind, fields))
        elif t == wire.OPENED:
            ch, window = f.fields.get("ch"), f.fields.get("window")
            c = self.channels.get(ch) if _uint(ch) else None
            if c is None or c.accepted or ch % 2 != self._next % 2:
                if c is None and _uint(ch) and ch % 2 == self._next % 2 and ch < self._next:
                    return  # we closed it before its OPENED arrived
                raise wire.BadFrame(f"OPENED for channel {ch!r} we did not open")
            if not _uint(window) or not 0 < window <= MAX_WINDOW:
                raise wire.BadFrame(f"OPENED {ch}: bad window {window!r}")
            c.accepted = True
            c.send_credit = window
            events.append(Accepted(ch))
        elif t == wire.CHCLOSE:
            ch = f.fields.get("ch")
            c = self.channels.get(ch) if _uint(ch) else None
            if c is None:
                return
            reason = str(f.fields.get("reason", ""))[:200]
            if f.fields.get("half") is True and not f.fields.get("reset"):
                if c.eof_received:
                    raise wire.BadFrame(f"channel {ch}: a second half-close")
                c.eof_received = True
                if c.eof_sent:
                    del self.channels[ch]
                events.append(Closed(ch, reason, False, half=True))
                return
            del self.channels[ch]
            events.append(Closed(ch, reason, bool(f.fields.get("reset"))))
        elif t in (wire.HELLO, wire.WELCOME, wire.KEEPALIVE, wire.CLOSE):
            events.append(Tunnel(f))
        else:
            raise wire.BadFrame(f"{wire.NAMES.get(t, hex(t))} has no place in a connector tunnel")


def stream_fields(fields: dict) -> tuple[str, str, str, int]:
    """(identity, resource, host, port) of a ``stream`` OPEN; ValueError saying what is wrong."""
    identity, resource, host, port = (fields.get(k) for k in ("identity", "resource", "host", "port"))
    for key, v in (("identity", identity), ("resource", resource), ("host", host)):
        if not isinstance(v, str) or not v or len(v) > 253:
            raise ValueError(f"stream OPEN: bad {key} {v!r}"[:300])
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"stream OPEN: bad port {port!r}"[:300])
    return identity, resource, host, port


def _uint(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2 ** 32


__all__ = ["Mux", "Channel", "Opened", "Accepted", "Data", "Closed", "Tunnel", "chdata", "credit", "STREAM",
           "stream_fields"]
