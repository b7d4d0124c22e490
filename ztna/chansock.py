"""A ``stream`` channel (ztna/mux.py) joined to a socket: the shell both ends of a stream use.

At the gateway the socket is the TCP connection to the app; at the PoP it is
one end of a ``socketpair`` whose other end carries the PoP's TLS to the app.

Bytes read from the socket leave as CHDATA only as far as the channel's
credit goes: when it is spent the socket is not read any more (the kernel's
buffer fills and TCP pushes back on the sender) until a CREDIT comes
(:meth:`ChannelSocket.credit`).  Bytes from the channel are written to the
socket, and credit is granted back only for what the socket has taken, so the
bytes held here never exceed the window we granted.  EOF on the socket becomes
a half-close on the channel, the peer's half-close becomes ``shutdown(SHUT_WR)``
once what it sent is written, and an error or a reset ends both with a reset.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

from . import mux

log = logging.getLogger("ztna.chansock")

PIECE = 256 * 1024


class ChannelSocket:
    def __init__(self, sock: socket.socket, m: mux.Mux, ch: int, send, *, on_done=None, name: str = ""):
        sock.setblocking(False)
        self.sock, self.mux, self.ch, self.send = sock, m, ch, send  # send(bytes): into the tunnel
        self.on_done = on_done  # on_done(self, reason)
        self.name = name or f"channel {ch}"
        self.loop = asyncio.get_running_loop()
        self.out = bytearray()     # from the channel, not yet taken by the socket (at most our window)
        self.reading = self.writing = False
        self.read_eof = False      # the socket said EOF: we half-closed the channel
        self.peer_eof = False      # the channel's peer half-closed
        self.wr_shut = False
        self.closed = False
        self.bytes_up = 0          # socket -> channel
        self.bytes_down = 0        # channel -> socket
        self.pauses = 0            # times reading stopped for lack of credit
        self.reason = ""

    def start(self) -> None:
        self._want_read(True)

    # ---- socket -> channel ------------------------------------------------------------
    def _want_read(self, on: bool) -> None:
        if self.closed:
            return
        if on and not self.reading and not self.read_eof:
            self.loop.add_reader(self.sock.fileno(), self._on_readable)
            self.reading = True
        elif not on and self.reading:
            self.loop.remove_reader(self.sock.fileno())
            self.reading = False

    def _on_readable(self) -> None:
        room = self.mux.room(self.ch)
        if room <= 0:
            self.pauses += 1
            self._want_read(False)  # credit spent: the socket waits until a CREDIT comes
            return
        try:
            data = self.sock.recv(min(room, PIECE))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.abort(f"{self.name}: read failed: {exc.strerror or exc}")
            return
        if not data:
            self._want_read(False)
            self.read_eof = True
            self.send(self.mux.shutdown(self.ch))
            self._maybe_done()
            return
        self.bytes_up += len(data)
        frames = self.mux.send(self.ch, data)
        if frames is None:  # cannot happen (room said so); never lose bytes silently
            self.abort(f"{self.name}: channel refused {len(data)} bytes")
            return
        self.send(frames)
        if self.mux.room(self.ch) <= 0:
            self.pauses += 1
            self._want_read(False)

    def credit(self) -> None:
        """The tunnel may have carried a CREDIT for us: read again if we were paused."""
        if not self.closed and not self.read_eof and not self.reading and self.mux.room(self.ch) > 0:
            self._want_read(True)

    # ---- channel -> socket ------------------------------------------------------------
    def deliver(self, data: bytes) -> None:
        if self.closed:
            return
        self.out += data
        self._flush()

    def _flush(self) -> None:
        while self.out and not self.closed:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.abort(f"{self.name}: write failed: {exc.strerror or exc}")
                return
            del self.out[:n]
            self.bytes_down += n
            self.send(self.mux.consumed(self.ch, n))  # only what the socket took is granted back
        if self.closed:
            return
        if self.out and not self.writing:
            self.loop.add_writer(self.sock.fileno(), self._flush)
            self.writing = True
        elif not self.out:
            if self.writing:
                self.loop.remove_writer(self.sock.fileno())
                self.writing = False
            if self.peer_eof and not self.wr_shut:
                self.wr_shut = True
                try:
                    self.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self._maybe_done()

    # ---- ends ---------------------------------------------------------------------------
    def closed_by_peer(self, reason: str, *, reset: bool, half: bool) -> None:
        """The channel's peer sent CHCLOSE (or the tunnel is gone: ``reset``)."""
        if self.closed:
            return
        if half:
            self.peer_eof = True
            self._flush()
            return
        if not reset:
            self._flush()  # what the socket takes now; the channel is gone either way
        self._finish(reason or "closed by the peer", reset=reset)

    def abort(self, reason: str) -> None:
        """Our side failed: reset the channel and the socket."""
        if self.closed:
            return
        self.send(self.mux.close(self.ch, reason[:200], reset=True))
        self._finish(reason, reset=True)

    def close(self, reason: str) -> None:
        """End both directions cleanly from our side (CHCLOSE without reset)."""
        if self.closed:
            return
        self.send(self.mux.close(self.ch, reason[:200]))
        self._finish(reason, reset=False)

    def _maybe_done(self) -> None:
        if self.read_eof and self.wr_shut and not self.out:
            self._finish("closed both ways", reset=False)

    def _finish(self, reason: str, *, reset: bool) -> None:
        if self.closed:
            return
        self._want_read(False)
        if self.writing:
            self.loop.remove_writer(self.sock.fileno())
            self.writing = False
        self.closed = True
        self.reason = reason
        if self.ch in self.mux.channels:  # both halves closed: mux forgot it; else tell the peer
            self.send(self.mux.close(self.ch, reason[:200], reset=reset))
        if reset:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.sock.close()
        if self.on_done is not None:
            self.on_done(self, reason)
