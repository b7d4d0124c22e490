"""The proxy's I/O shell: sockets, DNS, TLS and splicing around the pure cores.

One asyncio loop accepts connections and runs each :class:`~.machine.Flow`,
performing the commands it returns from readiness callbacks (:class:`_Conn`;
a connection has a task only for the parts that are coroutines, such as
decryption).  Untouched bytes (decryption exceptions,
plain HTTP after the rewritten head) are moved by ``os.splice`` socket -> pipe
-> socket on the loop itself, from readiness callbacks on non-blocking sockets
and pipes, so they never enter Python and no thread or GIL hand-off is paid
per tunnel (two blocking splice threads per tunnel cost about twice the CPU
per new connection, measured with scripts/bench/proxy.sh).  Those callbacks,
and the waits for a request head and for a connect, go through a
:class:`SpliceReactor` that shares the loop's epoll but skips asyncio's
per-event Handle and selector bookkeeping (see docs/proxy.md "Speed").  Decrypted
traffic runs on the loop through ``ssl.SSLObject`` over memory BIOs, one TLS
object per side, used only from the loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import errno
import fcntl
import gc
import json
import logging
import math
import os
import select
import selectors
import signal
import socket
import ssl
import struct
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ztna import pki, tlswire

from . import http1, machine, nft
from .certs import LeafCache
from .config import Config, ConfigError
from .machine import Flow
from .resolve import DnsCache, ResolveError, lookup
from .sessions import SessionCache

log = logging.getLogger("ztna.proxy")

SO_ORIGINAL_DST = 80
F_SETPIPE_SZ = 1031
READ_SIZE = 256 * 1024
LOG_DELAY = 0.05  # seconds a finished connection's log line may wait to share a write with others
PIPE_SIZE = 1024 * 1024
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
STREAMING = 16 * 1024  # one splice moving this much (a full TLS record or more): a bulk transfer is running
SIOCOUTQNSD = 0x894B  # linux/sockios.h: bytes in a TCP socket's send queue not yet sent
FIONREAD = 0x541B  # bytes received and not yet read
TICK = 0.1  # seconds between checks of the connections' deadlines: each fires at most this late


def _line_encoder():
    """``record -> compact JSON text``, as ``json.dumps(record, separators=(",", ":"))``.

    ``JSONEncoder.encode`` builds its C encoder (and a closure) again on every call;
    here it is built once.  No circular-reference check: log records are flat."""
    from json import encoder as je

    plain = json.JSONEncoder(separators=(",", ":"))
    if je.c_make_encoder is None:  # an interpreter without the C accelerator
        return plain.encode
    enc = je.c_make_encoder(None, plain.default, je.encode_basestring_ascii, None, ":", ",", False, False, True)
    return lambda record: "".join(enc(record, 0))


_json_line = _line_encoder()


def local_addresses() -> list[str]:
    """Every address of the namespace the proxy runs in (it refuses to connect to itself)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()]


def original_dst(sock: socket.socket) -> tuple[str, int] | None:
    """Where a REDIRECTed client meant to go (None when the connection was not redirected)."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port


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

    def __init__(self, reactor: "SpliceReactor", sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool,
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


class Proxy:
    """The running proxy: configuration, caches, listener and connection handling."""

    def __init__(self, cfg: Config, *, own_addresses: list[str] | None = None):
        self.cfg = cfg
        own = own_addresses if own_addresses is not None else local_addresses()
        self.policy = cfg.policy(own_addresses=own)
        self.dns = DnsCache()
        # Only blocking DNS look-ups run here; splicing runs on the loop.
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="resolve")
        self.conns: set[_Conn] = set()  # every open client connection: max_connections, the stop, SIGUSR1
        self.reactor: SpliceReactor | None = None  # made by serve(), on its loop
        self.leaves: LeafCache | None = None
        self._ctx: dict[str, tuple[int, ssl.SSLContext]] = {}
        self._keydir = tempfile.mkdtemp(prefix="ztna-proxy-")  # 0700: leaf keys pass through here
        self.upstream: dict[bool, ssl.SSLContext] = {}
        self.sessions = SessionCache()  # upstream TLS sessions, resumed only for the same name/address/port/ALPN
        if self.policy.decrypt:
            self.leaves = LeafCache(load_ca(cfg.ca_cert, cfg.ca_key))
            for alpn in (False, True):
                ctx = ssl.create_default_context(cafile=str(cfg.trust_store))
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                if alpn:
                    ctx.set_alpn_protocols(["http/1.1"])
                self.upstream[alpn] = ctx
        self.logf = sys.stdout if cfg.log == "-" else open(cfg.log, "a", buffering=1)
        self._log_lines: list[str] = []
        self._log_timer: asyncio.TimerHandle | None = None

    # ---- certificates -----------------------------------------------------------
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

    # ---- logging ------------------------------------------------------------------
    def write_log(self, record: dict) -> None:
        """Queue one JSON line; lines go out together within LOG_DELAY (one write instead of one per connection)."""
        self._log_lines.append(_json_line(record))
        if self._log_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush_log()
                return
            self._log_timer = loop.call_later(LOG_DELAY, self.flush_log)

    def flush_log(self) -> None:
        if self._log_timer is not None:
            self._log_timer.cancel()
            self._log_timer = None
        if self._log_lines:
            lines, self._log_lines = self._log_lines, []
            self.logf.write("\n".join(lines) + "\n")
            self.logf.flush()

    # ---- accept loop ----------------------------------------------------------------
    async def serve(self, stop: asyncio.Event, ready=None) -> None:
        loop = asyncio.get_running_loop()
        self.reactor = SpliceReactor(loop)  # every connection's head waits, connects and splices
        self.reactor.busy = self.cfg.busy_poll_us / 1e6  # spin only on the proxy's own loop (new_loop)
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit these (two setsockopt calls fewer per connection): no Nagle
        # delay for the proxy's answers, and keepalive, which spliced tunnels rely on (probes
        # start after two idle hours, so for other connections it changes nothing).
        lsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        lsock.bind(self.cfg.listen)
        lsock.listen(1024)
        lsock.setblocking(False)
        log.info("%s proxy listening on %s:%d", self.cfg.mode, *self.cfg.listen)
        # Everything loaded so far (modules, caches, contexts) lives as long as the proxy: keep it
        # out of the collector's full passes, which otherwise walk it again and again.
        gc.freeze()
        if ready:
            ready()
        lfd = lsock.fileno()
        listening = True
        reactor = self.reactor

        def resume() -> None:
            if listening:
                reactor.watch(lfd, IN, on_acceptable)

        def on_acceptable(_events: int) -> None:
            # Accept from a readiness callback, as many as are queued (bounded so a burst
            # cannot starve the connections already running).
            for _ in range(64):
                try:
                    # socket.accept() less its two enum conversions (family and type, every call).
                    fd, addr = lsock._accept()
                    csock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # EMFILE and the like: pause, then try again
                    log.warning("accept failed: %s", exc)
                    reactor.unwatch(lfd)
                    loop.call_later(0.05, resume)
                    return
                if len(self.conns) >= self.cfg.max_connections:
                    self.write_log({"ts": _ts(), "mode": self.cfg.mode, "client": f"{addr[0]}:{addr[1]}",
                                    "decision": "error", "reason": f"over max_connections ({self.cfg.max_connections})"})
                    csock.close()
                    continue
                _Conn(self, csock, addr).start()

        reactor.watch(lfd, IN, on_acceptable)  # accepted straight from the epoll events, like the splices
        try:
            await stop.wait()
        finally:
            listening = False
            reactor.unwatch(lfd)
            lsock.close()
            for conn in list(self.conns):
                conn.abort()
            if self.conns:  # connections in their decryption part end as their tasks unwind
                await asyncio.gather(*(c.task for c in self.conns if c.task), return_exceptions=True)
            self.flush_log()

    # ---- decryption ---------------------------------------------------------------------------
    async def intercept(self, csock, ssock, cmd: machine.Intercept, flow: Flow, c: Counters) -> None:
        loop = asyncio.get_running_loop()
        hello = cmd.hello
        if hello.alpn and "http/1.1" not in hello.alpn:
            await loop.sock_sendall(csock, tlswire.alert(tlswire.ALERT_NO_APPLICATION_PROTOCOL))
            flow.record.update(decision="error", decrypted=False,
                               reason=f"client offers only {','.join(hello.alpn)}; the proxy speaks http/1.1 inside TLS")
            return
        hs = self.cfg.handshake_timeout
        client = TLSSide(self.reactor, csock, self.client_context(cmd.name), server_side=True,
                         initial=hello.raw + cmd.rest, idle=self.cfg.idle_timeout)
        if cmd.block:
            until = time.monotonic() + hs
            await client.handshake(hs)
            await client.read(until)  # the request, to answer it with the block page
            await client.write(machine.page(403, "Blocked by the proxy", cmd.block))
            await client.close_notify()
            return
        peer = ssock.getpeername()
        skey = (cmd.name, peer[0], peer[1], bool(hello.alpn))
        offer = self.sessions.get(skey, time.monotonic())
        offered = offer is not None
        server = TLSSide(self.reactor, ssock, self.upstream[bool(hello.alpn)], server_side=False,
                         server_hostname=cmd.name, idle=self.cfg.idle_timeout,
                         session=offer)
        # SPEC 5: TLS with the server completes first; only then does the client get a certificate.
        try:
            await server.handshake(hs)
        except (ssl.SSLError, ConnectionError, OSError, asyncio.TimeoutError) as exc:
            self.sessions.drop(skey)
            if isinstance(exc, ssl.SSLCertVerificationError):
                why = f"the certificate of {cmd.name} failed verification: {exc.verify_message}"
            else:
                why = f"TLS with {cmd.name} failed: {type(exc).__name__}: {exc or 'timed out'}"
            flow.record.update(decision="error", reason=why)
            await client.handshake(hs)
            await client.write(machine.page(502, "The proxy refused this site", why))
            await client.close_notify()
            return
        flow.record["server_alpn"] = server.obj.selected_alpn_protocol()
        await client.handshake(hs)
        flow.record["tls_client"] = client.obj.version()
        flow.record["tls_server"] = server.obj.version()
        flow.record["resumed_client"] = client.obj.session_reused
        flow.record["resumed_server"] = server.obj.session_reused

        async def upward() -> str:
            stream = http1.RequestStream(max_head=self.cfg.limits.head_max)
            while True:
                data = await client.read()
                if not data:
                    await server.close_notify()
                    return "eof"
                try:
                    events = stream.feed(data)
                except http1.BadRequest as exc:
                    flow.record.update(decision="error", reason=f"inner request: {exc}")
                    await client.write(machine.page(exc.status, "Request refused by the proxy", str(exc)))
                    return "refused"
                for kind, value in events:
                    if kind == "head":
                        why = machine.host_matches(value, cmd.name)
                        if why:
                            flow.record.update(decision="deny", reason=why)
                            await client.write(machine.page(421, "Request refused by the proxy", why))
                            return "refused"
                        flow.record["requests"] = flow.record.get("requests", 0) + 1
                    else:
                        try:
                            await server.write(value)
                        except (ssl.SSLError, OSError):
                            return "server-gone"  # it closed first (Connection: close); downward ends too
                        c.up += len(value)

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
            self.keep_session(skey, server, offered=offered)
            for e in ends:
                if isinstance(e, BaseException) and not isinstance(
                        e, (ConnectionError, OSError, ssl.SSLError, asyncio.TimeoutError, asyncio.CancelledError)):
                    raise e
                if isinstance(e, (ssl.SSLError, OSError)) and not isinstance(e, ssl.SSLEOFError):
                    flow.record.setdefault("relay_end", f"{type(e).__name__}: {e}")

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
        self.flush_log()  # connections cancelled at exit logged after serve returned
        if self.reactor is not None:
            self.reactor.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        try:
            os.rmdir(self._keydir)
        except OSError:
            pass


class _Conn:
    """One client connection, driven by readiness callbacks and timers on the loop.

    The :class:`~.machine.Flow` decides; this performs its commands in order
    (``step``) until one has to wait: for the client's bytes, a DNS answer that
    is not cached, the upstream connect, or the end of a spliced tunnel.  The
    callback for that event adds the flow's next commands and steps again.  A
    spliced connection therefore runs without a task or a future of its own.
    The parts that are coroutines (decryption, lingering after a refusal, a send
    that does not fit the socket buffer) run as this connection's ``task``.
    Every way out ends in ``finish``: sockets closed, one log line.
    """

    __slots__ = ("p", "loop", "reactor", "csock", "cfd", "ssock", "t0", "flow", "c", "q", "task",
                 "reading", "tunnel", "trying", "port", "errors", "done")

    def __init__(self, proxy: "Proxy", csock: socket.socket, addr):
        self.p = proxy
        self.reactor = proxy.reactor
        self.loop = self.reactor.loop
        self.csock, self.cfd = csock, csock.fileno()
        self.ssock: socket.socket | None = None
        self.t0 = time.monotonic()
        cfg = proxy.cfg
        orig = original_dst(csock) if cfg.mode == machine.TRANSPARENT else None
        self.flow = Flow(proxy.policy, cfg.mode, (addr[0], addr[1]), now=self.t0, original_dst=orig, limits=cfg.limits)
        self.c = Counters()
        self.q: deque = deque()
        self.task: asyncio.Task | None = None
        self.reading = False
        self.tunnel: _Tunnel | None = None
        self.trying: tuple | None = None  # the upstream connect in progress: (socket, address, addresses left)
        self.port = 0
        self.errors: list[str] = []
        self.done = False

    def start(self) -> None:
        self.p.conns.add(self)
        try:
            self.csock.setblocking(False)  # TCP_NODELAY and SO_KEEPALIVE come from the listening socket
        except OSError as exc:
            self.fail(exc)
            return
        self.feed(self.flow.start)

    # ---- performing the flow's commands --------------------------------------------------------
    def feed(self, event, *args) -> None:
        """Tell the flow what happened (``event(*args)``), then perform what it says."""
        try:
            self.q.extend(event(*args))
        except Exception as exc:  # a bug in a core must cost one connection, never the proxy
            self.fail(exc)
            return
        self.step()

    def step(self) -> None:
        q, flow = self.q, self.flow
        try:
            while q:
                cmd = q.popleft()
                kind = type(cmd)
                if kind is machine.SendClient:
                    if not self.send(self.csock, cmd.data):
                        return
                elif kind is machine.SendServer:
                    if not self.send(self.ssock, cmd.data):
                        return
                    self.c.up += len(cmd.data)
                elif kind is machine.Resolve:
                    hit = self.p.dns.get(cmd.name, time.monotonic())
                    if hit is None:
                        fut = self.loop.run_in_executor(self.p.pool, lookup, self.p.cfg.resolvers, cmd.name)
                        fut.add_done_callback(self.on_resolved)
                        return
                    q.extend(flow.resolved(hit))
                elif kind is machine.Connect:
                    self.trying, self.port, self.errors = None, cmd.port, []
                    if not self.connect(list(cmd.addresses)):
                        return
                elif kind is machine.Splice:
                    self.ssock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # csock has it
                    self.tunnel = _Tunnel(self.reactor, self.csock, self.ssock, self.on_tunnel_end)
                    self.reading = False  # the tunnel's reader replaces ours on the same registration
                    self.tunnel.start()
                    return
                elif kind is machine.Intercept:
                    self.suspend(self.p.intercept(self.csock, self.ssock, cmd, flow, self.c))
                    return
                elif kind is machine.Close:
                    if self.ssock is None:
                        self.suspend(_linger(self.csock))
                    else:
                        self.finish()
                    return
            if not flow.waiting_for_client:
                raise RuntimeError(f"flow stalled in state {flow.state}")
            self.wait_client()
        except Exception as exc:
            self.fail(exc)

    def send(self, sock: socket.socket, data: bytes) -> bool:
        """Send now if it fits (nearly always: one call); otherwise finish in the task and step on from there."""
        try:
            n = sock.send(data)
        except BlockingIOError:
            n = 0
        if n == len(data):
            return True
        self.suspend(self.loop.sock_sendall(sock, data[n:]), then=self.step)
        return False

    # ---- waiting for the client's first bytes --------------------------------------------------
    def wait_client(self) -> None:
        try:
            data = self.csock.recv(65536)  # usually there already: no registration, no timer
        except BlockingIOError:
            if not self.reading:
                self.reactor.watch(self.cfd, IN, self.on_client)
                self.reading = True
            self.reactor.at(self, self.flow.deadline, self.on_deadline)  # this connection's one deadline
            return
        self.client_bytes(data)

    def on_client(self, _events: int) -> None:
        if not self.flow.waiting_for_client:
            # The reader stays registered past the head (the tunnel takes it over without an
            # epoll_ctl); bytes the client sends while the flow resolves or connects wait in the socket.
            self.reactor.unwatch(self.cfd)
            self.reading = False
            return
        try:
            data = self.csock.recv(65536)
        except BlockingIOError:
            return  # woken without data after all: keep waiting
        except OSError as exc:
            self.fail(exc)
            return
        self.reactor.cancel(self)
        self.client_bytes(data)

    def client_bytes(self, data: bytes) -> None:
        if data:
            self.feed(self.flow.client_data, data, time.monotonic())
        else:
            self.feed(self.flow.client_eof, time.monotonic())

    def on_deadline(self) -> None:
        self.stop_waiting()
        self.feed(self.flow.timeout, time.monotonic())

    def stop_waiting(self) -> None:
        """No more reading of the client's first bytes, no deadline."""
        if self.reading:
            self.reactor.unwatch(self.cfd)
            self.reading = False
        self.reactor.cancel(self)

    # ---- DNS and the upstream connect ------------------------------------------------------------
    def on_resolved(self, fut: asyncio.Future) -> None:
        if self.done:
            return  # the connection ended (proxy stopping) while the lookup ran
        if fut.cancelled():
            self.fail(ConnectionError("the DNS lookup was cancelled"))
            return
        try:
            addrs, ttl = fut.result()
        except ResolveError as exc:
            self.feed(self.flow.resolve_failed, str(exc))
            return
        except Exception as exc:
            self.fail(exc)
            return
        self.p.dns.put(self.flow.name, addrs, ttl, time.monotonic())
        self.feed(self.flow.resolved, addrs)

    def connect(self, addresses: list[str]) -> bool:
        """Try ``addresses`` in order.  True: the flow's next commands are queued (connected, or
        every address failed); False: a connect is in progress and ``on_connect`` steps on."""
        while addresses:
            a = addresses.pop(0)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            try:
                err = s.connect_ex((a, self.port))
            except OSError as exc:
                err = exc.errno or errno.EINVAL
            if err == errno.EINPROGRESS:
                # A near server (same host, or a veth away) has often answered already: the
                # SYN and its SYN-ACK went through the network stack within connect() itself.
                # Connected means a peer name; then there is no writability to wait for.
                try:
                    s.getpeername()
                    err = 0
                except OSError:
                    pass
            if err == 0:
                self.connected(s, a)
                return True
            if err == errno.EINPROGRESS:
                self.trying = (s, a, addresses)
                self.reactor.watch(s.fileno(), OUT, self.on_connect)
                self.reactor.at(self, time.monotonic() + self.p.cfg.connect_timeout, self.on_connect_timeout)
                return False
            s.close()
            self.errors.append(f"{a}: {self._connect_error(a, err)}")
        self.q.extend(self.flow.connect_failed("; ".join(self.errors)))
        return True

    def connected(self, s: socket.socket, address: str) -> None:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ssock = s
        self.q.extend(self.flow.connected(address, time.monotonic()))

    def _end_try(self) -> tuple:
        s, a, rest = self.trying
        self.trying = None
        self.reactor.unwatch(s.fileno())
        self.reactor.cancel(self)
        return s, a, rest

    def on_connect(self, _events: int) -> None:
        s, a, rest = self._end_try()
        try:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as exc:
            err = exc.errno or errno.EINVAL
        self._connect_done(s, a, rest, self._connect_error(a, err) if err else None)

    def _connect_error(self, address: str, err: int) -> str:
        return str(OSError(err, f"Connect call failed {(address, self.port)}"))  # asyncio's wording

    def on_connect_timeout(self) -> None:
        s, a, rest = self._end_try()
        self._connect_done(s, a, rest, "timed out")

    def _connect_done(self, s: socket.socket, address: str, rest: list[str], error: str | None) -> None:
        try:
            if error is None:
                self.connected(s, address)
            else:
                s.close()
                self.errors.append(f"{address}: {error}")
                if not self.connect(rest):
                    return  # the next address is being tried
        except Exception as exc:  # the socket gone meanwhile, or a bug in the flow: this connection only
            s.close()
            self.fail(exc)
            return
        self.step()

    # ---- the coroutine parts, and the end --------------------------------------------------------------
    def suspend(self, coro, then=None) -> None:
        """Run ``coro`` as this connection's task; afterwards ``then()`` carries on, or the connection ends."""
        self.stop_waiting()  # the coroutine's socket calls register with the loop itself
        self.task = self.loop.create_task(self._part(coro, then))

    async def _part(self, coro, then) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            self.flow.record["error"] = "proxy stopping"
            self.finish()
            raise
        except Exception as exc:
            self.fail(exc)
            return
        self.task = None
        if then is None:
            self.finish()
        else:
            then()

    def on_tunnel_end(self, up: int, down: int) -> None:
        self.c.up += up
        self.c.down += down
        if self.tunnel.error:
            self.flow.record.setdefault("relay_end", self.tunnel.error)  # as for a decrypted relay
        self.finish()

    def fail(self, exc: BaseException) -> None:
        rec = self.flow.record
        rec["decision"] = rec["decision"] or "error"
        if isinstance(exc, (ConnectionError, OSError, ssl.SSLError, asyncio.TimeoutError)):
            rec["error"] = f"{type(exc).__name__}: {exc}"
        else:
            log.exception("connection from %s failed", rec["client"], exc_info=exc)
            rec["error"] = f"internal: {type(exc).__name__}: {exc}"
        self.finish()

    def abort(self) -> None:
        """The proxy is stopping."""
        self.flow.record["error"] = "proxy stopping"
        if self.task is not None:
            # Its _part finishes the connection; the callback covers a task cancelled before it ran.
            self.task.add_done_callback(lambda _t: self.finish())
            self.task.cancel()
            return
        self.finish()

    def finish(self) -> None:
        if self.done:
            return
        self.done = True
        p = self.p
        p.conns.discard(self)
        self.reading = False
        self.reactor.cancel(self)
        if self.tunnel is not None:
            self.tunnel.close()
        if self.trying is not None:
            s, _, _ = self._end_try()
            s.close()
        for s in (self.csock, self.ssock):
            if s is not None:
                # Whoever watches it (the head's reader, the tunnel, a TLS side) is done: closing
                # takes the fd out of the epoll, and no stale callback waits for its number.
                self.reactor.forget(s.fileno())
                try:
                    s.close()
                except OSError:
                    pass
        c = self.c
        self.flow.record.update(ts=_ts(), bytes_up=c.up, bytes_down=c.down,
                                duration_ms=round((time.monotonic() - self.t0) * 1000, 1))
        p.write_log(self.flow.record)


async def _linger(sock: socket.socket, seconds: float = 1.0, limit: int = 1 << 20) -> None:
    """Close after a refusal without resetting: the client still sending would otherwise get an RST
    instead of our answer (RFC 9112 9.6), so read and drop its bytes for a moment first."""
    loop = asyncio.get_running_loop()
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        while limit > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), left)
            if not data:
                return
            limit -= len(data)
    except (OSError, asyncio.TimeoutError):
        pass


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


def _epoll_seconds(timeout: float) -> float:
    """``timeout`` rounded up to epoll's resolution (whole milliseconds): wait at least that long."""
    return math.ceil(timeout * 1e3) * 1e-3


class SpliceSelector(selectors.EpollSelector):
    """asyncio's epoll selector that also runs a :class:`SpliceReactor`'s callbacks.

    The reactor's fds sit in this very epoll, so one ``epoll_wait`` per pass of the
    loop serves both: an event for a reactor fd calls its callback right there
    (callbacks only touch sockets, pipes, timers and futures); the others become
    asyncio's selector keys, as in ``selectors.EpollSelector.select`` of Python 3.11,
    which this follows.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reactor: "SpliceReactor | None" = None

    def select(self, timeout=None):
        reactor = self.reactor
        if reactor is None:
            return super().select(timeout)
        if timeout is None:
            timeout = -1
        elif timeout <= 0:
            timeout = 0
        else:
            timeout = _epoll_seconds(timeout)
        end = time.monotonic() + timeout if timeout > 0 else 0.0
        fd_to_key = self._fd_to_key
        cbs = reactor.cbs
        loop = reactor.loop
        while True:
            ready = []
            maxev = len(fd_to_key) + len(cbs) or 1
            try:
                if reactor.hot and timeout != 0:
                    fd_event_list = self._busy_poll(reactor, timeout, maxev)
                else:
                    fd_event_list = self._selector.poll(timeout, maxev)
            except InterruptedError:
                return ready
            timers = len(loop._scheduled)
            for fd, event in fd_event_list:
                cb = cbs.get(fd)  # looked up per event: an earlier callback may have changed it
                if cb is not None:
                    try:
                        cb(event)
                    except Exception:  # a bug costs its own connection at most, never the others
                        log.exception("reactor callback for fd %d failed", fd)
                    continue
                key = fd_to_key.get(fd)
                if key is None:
                    continue
                events = 0
                if event & ~select.EPOLLIN:
                    events |= selectors.EVENT_WRITE
                if event & ~select.EPOLLOUT:
                    events |= selectors.EVENT_READ
                ready.append((key, events & key.events))
            # Only the reactor's callbacks ran and they gave asyncio nothing to do (no handle
            # queued, no timer added): wait again here instead of a pass of the loop's
            # bookkeeping that would find nothing.  Timers already due keep their time:
            # the wait never goes past the one the loop asked for.
            if ready or not fd_event_list or timeout == 0 or loop._ready or len(loop._scheduled) != timers:
                return ready
            if timeout > 0:
                left = end - time.monotonic()
                if left <= 0:
                    return ready
                timeout = _epoll_seconds(left)

    def _busy_poll(self, reactor: "SpliceReactor", timeout: float, maxev: int) -> list:
        """Poll without sleeping for up to ``reactor.busy`` seconds, then wait as usual.

        Runs only while a bulk transfer is on (``reactor.hot``), when the loop would
        otherwise go to sleep.  Sleeping there costs a wake-up (a context switch, on a
        VM an inter-processor interrupt and a halt exit) for each TLS record the sender
        writes, which is why an idle proxy can forward fewer bytes per second than a
        busier one; the next record usually arrives within a few microseconds.  When the
        spin finds nothing the transfer has paused: ``hot`` is cleared and the loop sleeps
        until the next bulk splice sets it again, so an idle proxy never spins.
        """
        poll = self._selector.poll
        start = time.perf_counter()
        end = start + (reactor.busy if timeout < 0 else min(reactor.busy, timeout))
        while True:
            events = poll(0, maxev)
            if events:
                return events
            now = time.perf_counter()
            if now >= end:
                break
        reactor.hot = False
        if timeout > 0:  # what is left of the loop's own wait (its next timer)
            timeout = _epoll_seconds(max(0.0, timeout - (now - start)))
        return poll(timeout, maxev)


def new_loop() -> asyncio.AbstractEventLoop:
    """The proxy's event loop: asyncio's, with a :class:`SpliceSelector`."""
    return asyncio.SelectorEventLoop(SpliceSelector())


IN, OUT = select.EPOLLIN, select.EPOLLOUT
# What a callback's event mask means, as for the loop's own selector: an error or a
# hang-up (EPOLLERR, EPOLLHUP) counts as both readable and writable.
READABLE, WRITABLE = ~OUT, ~IN
RDHUP = select.EPOLLRDHUP
# A tunnel reads with RDHUP too: the peer's FIN queued behind its last bytes is then
# taken in the same callback instead of one more wake-up.
TUNNEL_IN = IN | RDHUP


class SpliceReactor:
    """Readiness callbacks on the loop's epoll without asyncio's per-event machinery.

    A spliced connection wakes up about ten times (its accept, the connect, handshake
    flights, request, answer, two FINs); through ``loop.add_reader`` each of those
    costs a Handle, a SelectorKey and a pass through ``_run_once`` in Python, and each
    change of interest another.  Here an fd has one callback, called with the epoll
    event mask straight from the loop's ``epoll_wait`` (see :class:`SpliceSelector`;
    test it against READABLE / WRITABLE), and a change of interest is one ``epoll_ctl``.
    Level-triggered, like the loop.  Callbacks run on the loop thread.  An fd must
    not be watched here and by the loop at the same time.
    """

    def __init__(self, loop):
        self.loop = loop
        self.cbs: dict = {}  # fd -> callback(events)
        sel = getattr(loop, "_selector", None)
        if not isinstance(sel, SpliceSelector) or sel.reactor is not None:
            raise ValueError("a SpliceReactor needs a loop of its own from new_loop()")
        self.selector = sel
        self.ep = sel._selector  # the loop's epoll: one epoll_wait per pass serves both
        sel.reactor = self
        self.closed = False
        self.busy = 0.0  # seconds to poll without sleeping while a bulk transfer runs (0: never)
        self.hot = False  # a splice just moved STREAMING bytes or more (set only when busy > 0)
        self.deadlines: dict = {}  # key -> (when, callback)
        self._sweeper: asyncio.TimerHandle | None = None

    def at(self, key, when: float, cb) -> None:
        """Call ``cb()`` once ``time.monotonic()`` reaches ``when`` (up to TICK later), unless cancelled.

        One deadline per key (a new one replaces it).  A connection sets and cancels one or
        two of these, seconds long, and nearly all are cancelled: a dict entry each, checked
        by one loop timer every TICK while any is set, costs less than an asyncio timer each
        (a Handle, a heap push, and the heap's clean-up of cancelled ones)."""
        self.deadlines[key] = (when, cb)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(TICK, self._sweep)

    def cancel(self, key) -> None:
        self.deadlines.pop(key, None)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        due = [(k, entry) for k, entry in self.deadlines.items() if entry[0] <= now]
        for k, entry in due:
            if self.deadlines.get(k) is entry:  # not cancelled or replaced by an earlier callback
                del self.deadlines[k]
                try:
                    entry[1]()
                except Exception:
                    log.exception("deadline callback failed")
        if self.deadlines and not self.closed:
            self._sweeper = self.loop.call_later(TICK, self._sweep)

    def watch(self, fd: int, mask: int, cb) -> None:
        """Call ``cb(events)`` while ``fd`` is ready for ``mask`` (IN, OUT or both; not 0: see unwatch)."""
        if fd in self.cbs:
            self.ep.modify(fd, mask)
        else:
            try:
                self.ep.register(fd, mask)
            except FileExistsError:
                if fd in self.selector._fd_to_key:
                    raise  # the loop watches it: taking it over would break the loop's own wait
                self.ep.modify(fd, mask)  # left over from a closed file whose number came back
        self.cbs[fd] = cb

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd`` (an epoll mask of 0 would still report hang-ups, again and again)."""
        if self.cbs.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass  # already gone (the fd, or the reactor at exit, was closed)

    def forget(self, fd: int) -> None:
        """Stop watching ``fd`` that is about to be closed: closing it leaves the epoll by itself."""
        self.cbs.pop(fd, None)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.deadlines.clear()
        for fd in list(self.cbs):
            self.unwatch(fd)
        self.selector.reactor = None


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

    def __init__(self, reactor: "SpliceReactor", tunnel: "_Tunnel", src: socket.socket, dst: socket.socket,
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


class _Tunnel:
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


def _dump_state(proxy: "Proxy") -> None:
    """SIGUSR1, for people: what each open connection is waiting for, then every task's stack."""
    for conn in list(proxy.conns):
        print(f"connection {conn.flow.record['client']} -> {conn.flow.name}: {conn.flow.state}, "
              f"{'task' if conn.task else 'callbacks'}, {time.monotonic() - conn.t0:.1f}s", file=sys.stderr)
    for t in asyncio.all_tasks():
        t.print_stack(limit=6, file=sys.stderr)
    sys.stderr.flush()


def _ts() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def run(cfg: Config) -> None:
    """Run until SIGTERM/SIGINT; in transparent mode the nft table exists exactly as long as the proxy."""
    proxy = Proxy(cfg)
    table = None
    if cfg.mode == machine.TRANSPARENT:
        table = cfg.transparent.nft_table
        nets = [str(n) for n in proxy.policy.client_networks]
        nft.install(table, nft.ruleset(table, client_networks=nets, ports=list(cfg.transparent.ports),
                                       listen_port=cfg.listen[1]))
        log.info("transparent: nft table ip %s redirects %s from %s", table, cfg.transparent.ports, ", ".join(nets))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, _dump_state, proxy)  # for people: where is each connection waiting?
        await proxy.serve(stop)

    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(main())
    finally:
        if table:
            nft.remove(table)
            log.info("transparent: nft table ip %s removed", table)
        proxy.close()
