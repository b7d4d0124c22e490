"""A non-blocking TLS socket on an asyncio loop, carrying the tunnel's frame stream.

asyncio's own TLS transport copies every byte through Python-level buffers;
driving an ``ssl.SSLSocket`` directly from ``add_reader``/``add_writer`` lets
OpenSSL read and write the kernel socket itself.  One connection, one reader,
one writer; writes that the socket cannot take yet wait in a queue whose size
the owner watches (``queued``) to apply backpressure or drop.  The bytes read
go to ``on_data`` as they come: the frames, and what a bad frame means, are the
sessions' business (agent/session.py, gateway/session.py), not the socket's.
ztna/conntest.py is its in-memory twin for unit tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from typing import Callable

log = logging.getLogger("ztna.tls")

READ_CHUNK = 256 * 1024
# Unsent bytes the kernel may hold on a tunnel socket before it stops taking more (and
# epoll stops calling it writable).  Past this, inner packets wait in the sessions' fair
# queue (ztna/fqcodel.py), where CoDel sees how long they wait, not in the socket, where
# nothing does.  docs/tunnel.md has the measurements behind the number; ZTNA_NOTSENT_LOWAT
# (bytes, 0 for the kernel's default) overrides it for measuring.
NOTSENT_LOWAT = int(os.environ.get("ZTNA_NOTSENT_LOWAT", 32 * 1024))
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)


def tune_tunnel_socket(sock: socket.socket, lowat: int = NOTSENT_LOWAT) -> None:
    """No Nagle, and little unsent data in the kernel (both ends of the tunnel)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if lowat:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, lowat)


class Closing:
    """What both tunnel connections (FramedTLS here, ztna.biotls.BioTLS) do the same way: ``blocked`` while a
    write waits for the kernel, ``_wait`` for the socket during the handshake, and ``close``: off the loop, the
    socket closed, the queue dropped, ``on_close`` told once.  They keep ``loop``, ``fd``, ``sock``, ``_queue``, ``queued``, ``_inflight``, ``closed`` and
    ``on_close``."""

    @property
    def blocked(self) -> bool:
        return self._inflight is not None

    async def _wait(self, add, remove) -> None:
        fut = self.loop.create_future()
        add(self.fd, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            remove(self.fd)

    def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        for remove in (self.loop.remove_reader, self.loop.remove_writer):
            try:
                remove(self.fd)
            except (ValueError, OSError):
                pass
        try:
            self.sock.close()
        except OSError:
            pass
        self._queue.clear()
        self.queued = 0
        if self.on_close is not None:
            self.on_close(reason)


class FramedTLS(Closing):
    """One TLS connection.  ``on_data(bytes)`` and ``on_close(reason)`` are called on the loop."""

    def __init__(self, sock: ssl.SSLSocket, *, name: str,
                 on_data: Callable[[bytes], None] | None = None,
                 on_close: Callable[[str], None] | None = None,
                 on_blocked: Callable[[bool], None] | None = None):
        self.sock = sock
        self.fd = sock.fileno()
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.on_data = on_data
        self.on_close = on_close
        self.on_blocked = on_blocked
        self._inflight: bytes | memoryview | None = None
        self._queue: list[bytes] = []
        self.queued = 0
        self.closed = False
        self.bytes_in = 0
        self.bytes_out = 0
        self._reading = False

    # ---- handshake -------------------------------------------------------
    async def handshake(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    self.sock.do_handshake()
                    return
                except ssl.SSLWantReadError:
                    await self._wait(self.loop.add_reader, self.loop.remove_reader)
                except ssl.SSLWantWriteError:
                    await self._wait(self.loop.add_writer, self.loop.remove_writer)

    # ---- reading ---------------------------------------------------------
    def start_reading(self) -> None:
        if not self._reading and not self.closed:
            self._reading = True
            self.loop.add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        for _ in range(64):
            try:
                data = self.sock.recv(READ_CHUNK)
            except (ssl.SSLWantReadError, BlockingIOError):
                break
            except ssl.SSLWantWriteError:
                break
            except (ssl.SSLError, OSError) as exc:
                self.close(f"{type(exc).__name__}: {exc}")
                return
            if not data:
                self.close("peer closed the connection")
                return
            self.bytes_in += len(data)
            if self.on_data is not None:
                self.on_data(data)
            if self.closed:  # the owner closed it over what it read
                return
        else:
            # Read budget spent: come back after the others had their turn.
            self.loop.call_soon(self._on_readable)
            return
        if self.sock.pending() and not self.closed:
            # Bytes waiting inside OpenSSL, where epoll cannot see them.
            self.loop.call_soon(self._on_readable)

    # ---- writing ---------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Send now, or queue behind what the socket has not taken yet."""
        if self.closed:
            return
        if self._inflight is not None:
            self._queue.append(data)
            self.queued += len(data)
            return
        self._push(data)

    def _push(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                n = self.sock.send(view)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                # OpenSSL wants the very same bytes again when the socket drains.
                self._inflight = view
                self.loop.add_writer(self.fd, self._on_writable)
                if self.on_blocked is not None:
                    self.on_blocked(True)
                return
            except (ssl.SSLError, OSError) as exc:
                self.close(f"{type(exc).__name__}: {exc}")
                return
            self.bytes_out += n
            view = view[n:]

    def _on_writable(self) -> None:
        self.loop.remove_writer(self.fd)
        data, self._inflight = self._inflight, None
        self._push(data)
        while self._inflight is None and self._queue and not self.closed:
            batch = b"".join(self._queue)
            self._queue.clear()
            self.queued = 0
            self._push(batch)
        if self._inflight is None and self.on_blocked is not None and not self.closed:
            self.on_blocked(False)


def accept_ready(lsock) -> list:
    """Every connection a non-blocking listening socket holds now: [(socket, (address, port))]."""
    out = []
    while True:
        try:
            out.append(lsock.accept())
        except BlockingIOError:
            return out
        except OSError as exc:
            log.warning("accept failed: %s", exc)
            return out


def client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.3 only, the gateway verified against ``ca``, our certificate offered."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    return ctx


def server_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.3 only, client certificates required and verified against ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    return ctx
