"""Spliced tunnels: bytes moved socket -> pipe -> socket by ``os.splice`` on the loop, never entering Python.

Used for decryption exceptions and plain HTTP after the rewritten head.  Two
blocking splice threads per tunnel cost about twice the CPU per new connection
(measured with scripts/bench/proxy.sh); readiness callbacks on the
:class:`~.reactor.SpliceReactor` pay no thread or GIL hand-off.
"""

from __future__ import annotations

import fcntl
import os
import socket

from .reactor import OUT, RDHUP, READABLE, TUNNEL_IN, WRITABLE, IN, SpliceReactor

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1024 * 1024
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
STREAMING = 16 * 1024  # one splice moving this much (a full TLS record or more): a bulk transfer is running
SIOCOUTQNSD = 0x894B  # linux/sockios.h: bytes in a TCP socket's send queue not yet sent
FIONREAD = 0x541B  # bytes received and not yet read


class PipePool:
    """Empty splice pipes kept for the next tunnel.

    A new pipe costs pipe2 and F_SETPIPE_SZ (and close twice later) per direction
    per connection; a pipe that ends empty is as good as new, so up to ``keep`` of
    them are kept.  A pipe that still holds bytes (the tunnel ended mid-transfer)
    is closed, never reused: another tunnel must not receive its bytes.
    """

    def __init__(self, keep: int = 32):
        self.keep = keep
        self.free: list[tuple[int, int]] = []

    def get(self) -> tuple[int, int]:
        if self.free:
            return self.free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)  # fewer wake-ups per megabyte
        except OSError:
            pass
        return r, w

    def put(self, r: int, w: int, *, empty: bool) -> None:
        if empty and len(self.free) < self.keep:
            self.free.append((r, w))
        else:
            os.close(r)
            os.close(w)


PIPES = PipePool()


def _drained(fd: int) -> bool:
    """True when TCP socket ``fd`` has sent every byte written to it and holds none unread
    (closing it then sends a FIN, not a reset); False otherwise, and for other sockets."""
    buf = bytearray(4)
    try:
        fcntl.ioctl(fd, SIOCOUTQNSD, buf)
        if buf != b"\0\0\0\0":
            return False
        fcntl.ioctl(fd, FIONREAD, buf)
    except OSError:  # not TCP (a socketpair in the tests): keep the half-close
        return False
    return buf == b"\0\0\0\0"


class _Direction:
    """One direction of a spliced tunnel, src -> pipe -> dst; bytes never enter Python.

    ``on_event`` is the reactor's callback for src: what src has goes through the
    pipe straight on into dst.  When dst is full the bytes wait in the pipe
    (``blocked``), src is not read, and src's callback, woken for writing, drains
    them for the other direction (src is that one's dst).  Each change of
    ``reading`` or ``blocked`` tells the tunnel, which sets the sockets' epoll interest.
    """

    __slots__ = ("reactor", "tunnel", "other", "sfd", "dfd", "dst", "r", "w", "pending", "total", "eof",
                 "blocked", "reading", "ends_tunnel")

    def __init__(self, reactor: "SpliceReactor", tunnel: "Tunnel", src: socket.socket, dst: socket.socket,
                 *, ends_tunnel: bool = False):
        self.reactor = reactor
        self.ends_tunnel = ends_tunnel  # the server -> client direction: see drain
        self.tunnel = tunnel
        self.other: _Direction | None = None  # the direction reading dst (it writes to src)
        self.sfd, self.dfd, self.dst = src.fileno(), dst.fileno(), dst
        self.r, self.w = PIPES.get()
        self.pending = 0  # bytes in the pipe not yet written to dst
        self.total = 0
        self.eof = False
        self.blocked = False
        self.reading = True  # not eof and not blocked: src is to be read

    def on_event(self, ev: int) -> None:
        if ev & READABLE and self.reading:
            try:
                n = os.splice(self.sfd, self.w, PIPE_SIZE, flags=SPLICE_FLAGS)
            except BlockingIOError:
                n = -1  # woken without data after all
            except OSError as exc:
                self.tunnel.fail(exc)
                return
            if n > 0:
                if n >= STREAMING and self.reactor.busy:
                    self.reactor.hot = True
                self.pending = n  # the pipe was empty: src is read only then
                self.drain()
                if ev & RDHUP and self.reading and not self.tunnel.ended:
                    self.on_event(IN)  # the FIN behind these bytes: read it now (or more bytes first)
            elif n == 0:
                self.eof = True
                self.reading = False
                self.drain()
        if ev & WRITABLE and self.other.blocked:
            self.other.drain()

    def drain(self) -> None:
        """Write the pipe into dst; at the end of src, pass the end on.

        The server's end closes the tunnel (RFC 9110, 9.3.6: when either side closes, send
        what it sent on, then close both) as soon as every byte is on the wire and the
        client has sent nothing unread: closing then is a plain FIN to the client, whose
        later bytes (its closing TLS alert) get the reset a closed connection gives.  While
        bytes still wait in the client's send queue (a bulk transfer's tail), a close could
        lose them to that reset, so then the end is passed on as a half-close (FIN) and
        the tunnel ends on the client's own FIN.  The client's end is always a half-close:
        a client that shuts its sending side after a request still gets the answer."""
        try:
            while self.pending:
                m = os.splice(self.r, self.dfd, self.pending, flags=SPLICE_FLAGS)
                self.pending -= m
                self.total += m
        except BlockingIOError:
            if not self.blocked:
                self.blocked = True
                self.reading = False
                self.tunnel.update()
            return
        except OSError as exc:
            self.tunnel.fail(exc)
            return
        if self.eof:
            self.blocked = False
            if self.ends_tunnel and _drained(self.dfd):
                self.tunnel.end()  # the connection closes both sockets next
                return
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.tunnel.update()
        elif self.blocked:
            self.blocked = False
            self.reading = True
            self.tunnel.update()

    def release(self) -> None:
        PIPES.put(self.r, self.w, empty=not self.pending)
        self.r = self.w = -1


class Tunnel:
    """Both directions of a spliced tunnel; ``on_end(bytes up, bytes down)`` is called once, when both are done.

    Each socket has one reactor callback, its reading direction's ``on_event``.  Its
    epoll interest follows that direction's ``reading`` and the other's ``blocked``;
    the end of both directions needs no epoll_ctl at all, since the connection
    closes both sockets next.
    """

    __slots__ = ("reactor", "on_end", "up", "down", "masks", "ended", "error")

    def __init__(self, reactor: SpliceReactor, csock: socket.socket, ssock: socket.socket, on_end):
        self.reactor = reactor
        self.on_end = on_end
        self.up = _Direction(reactor, self, csock, ssock)
        self.down = _Direction(reactor, self, ssock, csock, ends_tunnel=True)
        self.up.other, self.down.other = self.down, self.up
        self.masks = [0, 0]  # the epoll interest now of the client's socket and the server's (0: not watched)
        self.ended = False
        self.error = ""  # why a splice failed (a reset, a peer gone), for the connection's log line

    def start(self) -> None:
        self.masks = [TUNNEL_IN, TUNNEL_IN]
        self.reactor.watch(self.up.sfd, TUNNEL_IN, self.up.on_event)
        self.reactor.watch(self.down.sfd, TUNNEL_IN, self.down.on_event)

    def update(self) -> None:
        """A direction's ``reading`` or ``blocked`` changed: set each socket's interest to match."""
        up, down = self.up, self.down
        if up.eof and down.eof and not up.blocked and not down.blocked:
            self.end()
            return
        for i, d in ((0, up), (1, down)):
            mask = (TUNNEL_IN if d.reading else 0) | (OUT if d.other.blocked else 0)
            if mask != self.masks[i]:
                self.masks[i] = mask
                if mask:
                    self.reactor.watch(d.sfd, mask, d.on_event)
                else:
                    self.reactor.unwatch(d.sfd)

    def fail(self, exc: OSError) -> None:
        """One side reset or is gone: both directions end now."""
        self.error = self.error or f"{type(exc).__name__}: {exc}"
        for d in (self.up, self.down):
            try:
                d.dst.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.end()

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.on_end(self.up.total, self.down.total)

    def close(self) -> None:
        """Forget the sockets' callbacks and give the pipes back; closing the sockets is the connection's."""
        for d in (self.up, self.down):
            self.reactor.forget(d.sfd)
            if d.r >= 0:
                d.release()
