"""Decryption: the TLS sides over memory BIOs, the proxy-CA leaves, and the decrypted relay.

Every TLS object (``ssl.SSLObject``) is used only from the loop thread; its
socket waits through the :class:`~.reactor.SpliceReactor`.  What the relay
decides (the ALPN refusal, the 502 page, the 421 for another Host, a
malformed inner request) is the flow's (``machine.Flow``); this performs it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ztna import pki

from . import machine
from .certs import LeafCache
from .config import Config, ConfigError
from .machine import Flow
from .reactor import IN, OUT, READABLE, WRITABLE, SpliceReactor
from .sessions import SessionCache

READ_SIZE = 256 * 1024


def load_ca(cert_path: Path, key_path: Path) -> pki.Issued:
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the proxy CA from {cert_path} / {key_path}: {exc}") from exc
    return pki.Issued(cert, key)


class Counters:
    """Bytes relayed each way (plaintext when decrypting)."""

    __slots__ = ("up", "down")

    def __init__(self) -> None:
        self.up = 0
        self.down = 0


class TLSSide:
    """One TLS endpoint (``ssl.SSLObject``) over a non-blocking socket, driven by the loop.

    Its socket waits through the :class:`SpliceReactor` (one callback for the fd, a future
    per wait, a deadline in the reactor's sweep) instead of ``loop.sock_recv`` under an
    ``asyncio.timeout``, which cost a reader Handle, two ``epoll_ctl`` and a timer per read.
    A read and a write may wait at once (the relay's two tasks share a side); the fd is
    watched exactly while one does.
    """

    def __init__(self, reactor: SpliceReactor, sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None, initial: bytes = b"", idle: float = 300.0,
                 session: ssl.SSLSession | None = None):
        self.reactor = reactor
        self.loop = reactor.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=server_side, server_hostname=server_hostname,
                                session=session)
        if initial:
            self.inc.write(initial)
        self.idle = idle
        self.wlock = asyncio.Lock()
        self.waits: list[asyncio.Future | None] = [None, None]  # the read wait and the write wait
        self.mask = 0  # the fd's interest in the reactor now

    def _watch(self) -> None:
        r, w = self.waits
        mask = (IN if r is not None else 0) | (OUT if w is not None else 0)
        if mask != self.mask:
            self.mask = mask
            if mask:
                self.reactor.watch(self.fd, mask, self._on_ready)
            else:
                self.reactor.unwatch(self.fd)

    def _on_ready(self, ev: int) -> None:
        for i, ready in ((0, ev & READABLE), (1, ev & WRITABLE)):
            fut = self.waits[i]
            if ready and fut is not None:
                self.waits[i] = None
                if not fut.done():
                    fut.set_result(None)
        self._watch()

    async def _wait(self, i: int, until: float) -> None:
        """Until the socket is readable (``i`` 0) or writable (1); TimeoutError at ``until``."""
        fut = self.loop.create_future()
        self.waits[i] = fut
        self._watch()
        self.reactor.at(fut, until, lambda: fut.done() or fut.set_exception(TimeoutError("timed out")))
        try:
            await fut
        finally:  # also when cancelled: nothing stays watched or due for a wait that is over
            self.reactor.cancel(fut)
            if self.waits[i] is fut:
                self.waits[i] = None
            self._watch()

    def _send(self, data) -> int:
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0

    async def flush(self) -> None:
        """Send what the TLS object has written: at once if the socket takes it (nearly always);
        else the rest in order under ``wlock``, each wait bounded by the idle timeout."""
        if not self.out.pending:
            return
        data = memoryview(self.out.read())
        if not self.wlock.locked():
            data = data[self._send(data):]
            if not data:
                return
        # A free asyncio.Lock is taken without yielding, so no other flush can send in between.
        async with self.wlock:
            while data:
                await self._wait(1, time.monotonic() + self.idle)
                data = data[self._send(data):]

    async def _fill(self, until: float | None = None) -> bool:
        """Read what the socket has into the TLS object, waiting until ``until`` (default: the
        idle timeout from now) for it; False at the end of the stream."""
        while True:
            try:
                data = self.sock.recv(READ_SIZE)
                break
            except BlockingIOError:
                await self._wait(0, until if until is not None else time.monotonic() + self.idle)
        if not data:
            self.inc.write_eof()
            return False
        self.inc.write(data)
        return True

    async def handshake(self, timeout: float) -> None:
        """The TLS handshake, all of it within ``timeout`` seconds (TimeoutError otherwise)."""
        until = time.monotonic() + timeout
        while True:
            try:
                self.obj.do_handshake()
                await self.flush()
                return
            except ssl.SSLWantReadError:
                await self.flush()
                if not await self._fill(until):
                    raise ConnectionError("peer closed during the TLS handshake")

    async def read(self, until: float | None = None) -> bytes:
        """Plaintext as it comes; b"" at the end (close_notify or TCP close).  Each wait for
        bytes lasts until ``until``, or the idle timeout."""
        while True:
            chunks = []
            eof = False
            try:
                while True:
                    data = self.obj.read(READ_SIZE)
                    if not data:
                        break
                    chunks.append(data)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                eof = True  # close_notify, or TCP closed without it: the end either way
            except ssl.SSLError:
                if not self.inc.eof:
                    raise
                eof = True
            await self.flush()  # reading may have produced records (tickets, key updates)
            if chunks:
                return b"".join(chunks)
            if eof or self.inc.eof:
                return b""
            await self._fill(until)

    async def write(self, data: bytes) -> None:
        self.obj.write(data)
        await self.flush()

    async def close_notify(self) -> None:
        try:
            self.obj.unwrap()
        except (ssl.SSLError, ValueError):
            pass
        try:
            await self.flush()
        except OSError:
            pass


class Decryptor:
    """What decryption needs across connections: leaves and their contexts, upstream contexts, sessions."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.leaves = LeafCache(load_ca(cfg.ca_cert, cfg.ca_key))
        self._ctx: dict[str, tuple[int, ssl.SSLContext]] = {}
        self._keydir = tempfile.mkdtemp(prefix="ztna-proxy-")  # 0700: leaf keys pass through here
        self.upstream: dict[bool, ssl.SSLContext] = {}
        self.sessions = SessionCache()  # upstream TLS sessions, resumed only for the same name/address/port/ALPN
        for alpn in (False, True):
            ctx = ssl.create_default_context(cafile=str(cfg.trust_store))
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if alpn:
                ctx.set_alpn_protocols(["http/1.1"])
            self.upstream[alpn] = ctx

    def client_context(self, name: str) -> ssl.SSLContext:
        """A server-side context showing a proxy-CA leaf for ``name`` (cached with the leaf)."""
        leaf, _fresh = self.leaves.get(name, pki.utcnow())
        hit = self._ctx.get(name)
        if hit and hit[0] == id(leaf):
            return hit[1]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        cert_path = os.path.join(self._keydir, "leaf.pem")
        key_path = os.path.join(self._keydir, "leaf.key")
        pki.write_pem(Path(key_path), leaf.key_pem(), private=True)
        pki.write_pem(Path(cert_path), leaf.cert_pem(), private=False)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        finally:
            os.unlink(key_path)  # the context holds the key in memory; keep none on disk
            os.unlink(cert_path)
        if len(self._ctx) > 2 * self.leaves.size:
            self._ctx = {n: v for n, v in self._ctx.items() if n in self.leaves}
        self._ctx[name] = (id(leaf), ctx)
        return ctx

    async def intercept(self, reactor: SpliceReactor, csock, ssock, cmd: machine.Intercept, flow: Flow,
                        c: Counters) -> None:
        """Perform ``cmd`` (see machine.Intercept): a block page, or TLS both ways and the relay."""
        hello = cmd.hello
        hs = self.cfg.handshake_timeout
        client = TLSSide(reactor, csock, self.client_context(cmd.name), server_side=True,
                         initial=hello.raw + cmd.rest, idle=self.cfg.idle_timeout)
        if cmd.page is not None:
            until = time.monotonic() + hs
            await client.handshake(hs)
            await client.read(until)  # the request, to answer it with the page
            await client.write(cmd.page)
            await client.close_notify()
            return
        peer = ssock.getpeername()
        skey = (cmd.name, peer[0], peer[1], bool(hello.alpn))
        offer = self.sessions.get(skey, time.monotonic())
        server = TLSSide(reactor, ssock, self.upstream[bool(hello.alpn)], server_side=False,
                         server_hostname=cmd.name, idle=self.cfg.idle_timeout, session=offer)
        try:
            await server.handshake(hs)
        except (ssl.SSLError, ConnectionError, OSError, asyncio.TimeoutError) as exc:
            self.sessions.drop(skey)
            verify = exc.verify_message if isinstance(exc, ssl.SSLCertVerificationError) else None
            refusal = flow.upstream_tls_failed(f"{type(exc).__name__}: {exc or 'timed out'}", verify_message=verify)
            await client.handshake(hs)
            await _perform(refusal, client, server, c)
            await client.close_notify()
            return
        flow.record["server_alpn"] = server.obj.selected_alpn_protocol()
        await client.handshake(hs)
        flow.record["tls_client"] = client.obj.version()
        flow.record["tls_server"] = server.obj.version()
        flow.record["resumed_client"] = client.obj.session_reused
        flow.record["resumed_server"] = server.obj.session_reused
        try:
            await _relay(client, server, flow, c, csock, ssock)
        finally:
            self.keep_session(skey, server, offered=offer is not None)

    def keep_session(self, key, server: TLSSide, *, offered: bool) -> None:
        """Remember the server's latest session (TLS 1.3 tickets arrive after the handshake), when
        the cache wants one: each read of ``SSLObject.session`` leaks on Python 3.11 (sessions.py)."""
        now = time.monotonic()
        if not self.sessions.wants(key, now, offered=offered, resumed=server.obj.session_reused):
            return
        try:
            sess = server.obj.session
        except (ssl.SSLError, ValueError):
            return
        if sess is not None and sess.has_ticket:
            self.sessions.put(key, sess, sess.ticket_lifetime_hint, now)

    def close(self) -> None:
        try:
            os.rmdir(self._keydir)
        except OSError:
            pass


async def _perform(cmds: list, client: TLSSide, server: TLSSide, c: Counters) -> bool:
    """The flow's commands inside the decrypted tunnel; False once one is Close (the relay ends)."""
    for cmd in cmds:
        kind = type(cmd)
        if kind is machine.SendServer:
            await server.write(cmd.data)
            c.up += len(cmd.data)
        elif kind is machine.SendClient:
            await client.write(cmd.data)
        elif kind is machine.Close:
            return False
    return True


async def _relay(client: TLSSide, server: TLSSide, flow: Flow, c: Counters, csock, ssock) -> None:
    """Decrypted HTTP/1.1 both ways until either side is done; the flow judges each request."""

    async def upward() -> str:
        while True:
            data = await client.read()
            if not data:
                await server.close_notify()
                return "eof"
            try:
                if not await _perform(flow.decrypted_request(data), client, server, c):
                    return "refused"
            except (ssl.SSLError, OSError):
                return "server-gone"  # it closed first (Connection: close); downward ends too

    async def downward() -> str:
        while True:
            data = await server.read()
            if not data:
                return "eof"
            await client.write(data)
            c.down += len(data)

    up_t = asyncio.create_task(upward())
    down_t = asyncio.create_task(downward())
    try:
        done, _ = await asyncio.wait({up_t, down_t}, return_when=asyncio.FIRST_COMPLETED)
        if up_t in done and up_t.result() == "eof":
            await down_t  # the client finished sending; let the answer come back
        await client.close_notify()
    finally:
        # Shut both sockets first so a pending read ends with EOF whatever happens to
        # the cancellation, then cancel, then wait for both tasks to unwind.
        for sock in (csock, ssock):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in (up_t, down_t):
            t.cancel()
        # Wait for both to unwind before the sockets close: a task still registered
        # with the selector for a closed fd would corrupt the next socket given that fd.
        ends = await asyncio.gather(up_t, down_t, return_exceptions=True)
        for e in ends:
            if isinstance(e, BaseException) and not isinstance(
                    e, (ConnectionError, OSError, ssl.SSLError, asyncio.TimeoutError, asyncio.CancelledError)):
                raise e
            if isinstance(e, (ssl.SSLError, OSError)) and not isinstance(e, ssl.SSLEOFError):
                flow.record.setdefault("relay_end", f"{type(e).__name__}: {e}")
