"""One client connection of the proxy: the shell that performs its flow's commands.

A :class:`Conn` reports what happened to its :class:`~.machine.Flow` (bytes
from the client, a DNS answer, a connect made or failed, a deadline) and
performs the commands the flow returns, from readiness callbacks on the
:class:`~.reactor.SpliceReactor`; the parts that are coroutines (decryption,
lingering after a refusal) run as its task.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import logging
import socket
import ssl
import struct
import time
from collections import deque
from typing import TYPE_CHECKING

from . import machine
from .decrypt import Counters
from .machine import Flow
from .reactor import IN, OUT
from .resolve import ResolveError, lookup
from .splice import Tunnel

if TYPE_CHECKING:
    from .server import Proxy

log = logging.getLogger("ztna.proxy")

SO_ORIGINAL_DST = 80


def original_dst(sock: socket.socket) -> tuple[str, int] | None:
    """Where a REDIRECTed client meant to go (None when the connection was not redirected)."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port


def ts() -> str:
    """The log lines' time stamp."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class Conn:
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
        self.tunnel: Tunnel | None = None
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
                    self.tunnel = Tunnel(self.reactor, self.csock, self.ssock, self.on_tunnel_end)
                    self.reading = False  # the tunnel's reader replaces ours on the same registration
                    self.tunnel.start()
                    return
                elif kind is machine.Intercept:
                    self.suspend(self.p.decryptor.intercept(self.reactor, self.csock, self.ssock, cmd, flow, self.c))
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

    def abort(self, why: str = "proxy stopping") -> None:
        """The proxy is stopping, or a reloaded policy refuses this connection (``why``)."""
        self.flow.record["error"] = why
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
        self.flow.record.update(ts=ts(), bytes_up=c.up, bytes_down=c.down,
                                duration_ms=round((time.monotonic() - self.t0) * 1000, 1))
        p.counts.add(self.flow.record)
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
