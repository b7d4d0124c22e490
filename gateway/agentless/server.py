"""The reverse proxy's I/O shell: peeking, TLS, the browser's connection, the app's, the access log.

:meth:`Front.claim` is called by the gateway for every accepted connection
before its tunnel handshake: it peeks at the ClientHello (the bytes stay in
the kernel, with ``SO_RCVLOWAT`` so the wait wakes only when the whole first
record is there), lets :func:`.route.route` decide, and either gives the
socket back to the tunnel (False), refuses it with a TLS alert, or serves it
as a browser connection on its own task (True).

A browser connection is asyncio's TLS transport with the app's certificate;
each request head is read under the header timeout, decided by an
:class:`.exchange.Exchange`, and relayed to the app over a TLS connection of
the gateway's own (verified against the app's internal CA, its address from
the private DNS server), kept alive across requests.  Bodies stream both ways
in pieces of at most ``PIECE`` bytes with ``drain()`` between them, so memory
stays bounded whatever their size.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import socket
import ssl
import time
from collections import Counter
from pathlib import Path

from gateway.policy import Policy
from gateway.proxy import http1
from ztna import pki, tlswire
from ztna.loglimit import LogLimiter, suffix

from . import pages
from . import route as routing
from .auth import LocalPasswords
from .checks import PasswordChecks
from .config import AUTH_CERTIFICATE, AgentlessConfig, AppConfig
from .cookies import Revoked, Signer, load_or_create_key
from .exchange import CheckPassword, Client, Forward, Gate, ReadBody, Respond
from .message import UNTIL_CLOSE, BadResponse, Body, parse_response_head_untrusted, response_length
from .rewrite import client_response
from .users import UserStore

log = logging.getLogger("ztna.gateway.agentless")

PIECE = 256 * 1024  # the most one read moves (asyncio's TLS reads 256 KiB at a time too)
SO_RCVLOWAT = getattr(socket, "SO_RCVLOWAT", 18)


class _Closed(Exception):
    """The browser's connection is over (EOF, timeout, or an error already answered)."""


class Upstream:
    """The gateway's own TLS connection to one app, kept alive between a browser's requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str,
                 identity: str | None = None):
        self.reader, self.writer, self.address = reader, writer, address
        self.identity = identity  # set when dialled through a hook: the connection is that identity's only
        self.buf = b""
        self.clean = True  # between exchanges: no request or answer half-way, so another browser may use it
        self.idle_since = 0.0

    @property
    def usable(self) -> bool:
        return self.clean and not self.buf and not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class Front:
    """The agentless side of port 443 (see the module docstring)."""

    def __init__(self, cfg: AgentlessConfig, policy: Policy, resolve, dial=None):
        self.cfg = cfg
        self.resolve = resolve  # async name -> 4-byte address, through the private DNS server
        # The PoP's hook (pop/service.py): async (app, identity) -> (connected socket, "via" text) instead of
        # TCP to the app's address; raises PermissionError, LookupError or OSError when there is no way there.
        self.dial = dial
        self.apps: dict[str, AppConfig] = {a.name: a for a in cfg.apps}
        self.tunnel_names = frozenset(cfg.tunnel_names)
        self.names = frozenset(self.apps)
        self.server_ctx = {a.name: self._server_context(a) for a in cfg.apps}
        self.upstream_ctx = {a.name: _upstream_context(a) for a in cfg.apps}
        self.store = UserStore(cfg.users)
        self.backend = LocalPasswords(self.store)
        # Not the default executor: that one resolves apps with the private DNS server for agents too.
        self.checks = PasswordChecks(workers=cfg.login_workers, queue=cfg.login_queue)
        self.gate = Gate(self.apps, policy, Signer(load_or_create_key(cfg.session_key)), self.backend,
                         session_ttl=cfg.session_ttl, user_limit=cfg.login_user_limit,
                         addr_limit=cfg.login_addr_limit, window=cfg.login_window, max_form=cfg.max_form,
                         revoked=Revoked(path=Path(cfg.revoked_sessions)))
        ended = self.gate.revoked
        log.info("sessions ended by logout: %d still unexpired in %s%s", len(ended.until), cfg.revoked_sessions,
                 f"; {ended.skipped} unreadable lines skipped" if ended.skipped else "")
        self.access = open(cfg.access_log, "a", buffering=1)
        # Kept-alive connections to each app, shared by browser connections as nginx's upstream
        # keepalive is: a browser that opens a new connection per request must not cost a TLS
        # handshake with the app each time.
        self.pool: dict[str, list[Upstream]] = {a.name: [] for a in cfg.apps}
        self.refused = 0
        self.crl = None  # the gateway's ztna.crl.CrlWatch when [gateway] crl is set
        self._start_counting()

    def _start_counting(self) -> None:
        # Browser connections leave the gateway's handshake gate once claimed, so their TLS handshakes,
        # head waits and keep-alives are bounded here: in total and per source address.
        self.active = 0
        self.by_source: Counter = Counter()
        self.busy_log = LogLimiter(interval=10.0)

    def _server_context(self, app: AppConfig) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(app.cert, app.key)
        ctx.set_alpn_protocols(["http/1.1"])
        if app.auth == AUTH_CERTIFICATE:
            # Optional at the TLS layer so a browser without one gets a page saying why, not a broken handshake;
            # a certificate that is presented must still verify.
            ctx.verify_mode = ssl.CERT_OPTIONAL
            ctx.load_verify_locations(self.cfg.client_ca)
        return ctx

    # ---- routing by SNI -----------------------------------------------------------
    async def claim(self, sock: socket.socket, peer: str, timeout: float) -> bool:
        """True when this connection is not the tunnel's (served here, or refused)."""
        hello, error = await _peek(sock, timeout)
        r = routing.route(hello, tunnel_names=self.tunnel_names, apps=self.names, error=error)
        if isinstance(r, routing.Tunnel):
            return False
        if isinstance(r, routing.Refuse):
            self.refused += 1
            log.warning("refused %s on port 443: %s (TLS alert %d)", peer, r.reason, r.alert)
            _alert_and_close(sock, r.alert)
            return True
        source = peer.rpartition(":")[0]
        why = None
        if self.active >= self.cfg.max_connections:
            why = f"{self.active} browser connections already (max_connections)"
        elif self.by_source[source] >= self.cfg.max_connections_per_source:
            why = f"{self.by_source[source]} browser connections from {source} already (max_connections_per_source)"
        if why is not None:
            self.refused += 1
            quiet = self.busy_log.allow(source, time.monotonic())
            if quiet is not None:
                log.warning("refused %s for %s: %s%s", peer, r.app, why, suffix(quiet))
            _alert_and_close(sock, tlswire.ALERT_INTERNAL_ERROR)
            return True
        # Counted now, not in the task: claims finishing in the same loop turn must see each other.
        self.active += 1
        self.by_source[source] += 1
        task = asyncio.ensure_future(self._serve(sock, peer, r.app))
        task.add_done_callback(lambda _: self._left(source))  # also when cancelled before it ran
        return True

    def _left(self, source: str) -> None:
        self.active -= 1
        self.by_source[source] -= 1
        if self.by_source[source] <= 0:
            del self.by_source[source]

    # ---- one browser connection --------------------------------------------------------
    async def _serve(self, sock: socket.socket, peer: str, name: str) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=PIECE)
        proto = asyncio.StreamReaderProtocol(reader)
        writer = None
        up: Upstream | None = None
        try:
            try:
                transport, _ = await loop.connect_accepted_socket(
                    lambda: proto, sock=sock, ssl=self.server_ctx[name], ssl_handshake_timeout=self.cfg.header_timeout)
            except (ssl.SSLError, OSError, asyncio.TimeoutError, ConnectionError) as exc:
                log.warning("browser %s for %s: TLS handshake failed: %s", peer, name, _why(exc))
                sock.close()
                return
            writer = asyncio.StreamWriter(transport, proto, reader, loop)
            cert = transport.get_extra_info("peercert") or {}
            ident = None
            if cert:
                try:
                    ident = pki.identity_from_peercert(cert)
                except pki.PKIError:
                    ident = None
                if self._revoked(transport, peer, name, ident):
                    return
            conn = _BrowserConn(self, reader, writer, Client(peer.rpartition(":")[0], name, ident), peer)
            up = await conn.run()
        except _Closed:
            pass
        except Exception:  # a bug must end this connection, never the gateway
            log.exception("browser %s for %s: unexpected error", peer, name)
        finally:
            if writer is not None:
                writer.close()
            if up is not None:
                self.release(name, up)

    def _revoked(self, transport, peer: str, name: str, ident) -> bool:
        """A client certificate on the gateway's CRL: refused (every new connection is checked)."""
        if self.crl is None:
            return False
        from cryptography import x509

        try:
            leaf = x509.load_der_x509_certificate(transport.get_extra_info("ssl_object").getpeercert(binary_form=True))
        except (ValueError, AttributeError, TypeError):
            return False
        if not self.crl.revoked_cert(leaf):
            return False
        self.refused += 1
        log.warning("browser %s for %s: refused: client certificate of %s (serial %x) is revoked",
                    peer, name, ident, leaf.serial_number)
        return True

    POOL_MAX, POOL_IDLE = 32, 30.0

    def release(self, name: str, up: Upstream) -> None:
        """Keep ``up`` for the next browser connection to ``name``, if it is clean and there is room."""
        pool = self.pool[name]
        if self.dial is not None:
            # At the PoP a stream is one browser connection's (its identity, its flow line): not kept.
            up.close()
            return
        if up.usable and len(pool) < self.POOL_MAX:
            up.idle_since = time.monotonic()
            pool.append(up)
        else:
            up.close()

    def take(self, name: str, identity: str | None = None) -> Upstream | None:
        """A kept upstream connection to ``name`` that still looks alive (the newest first); with a dial
        hook only one dialled for ``identity`` (the stream was opened in its name)."""
        pool, now = self.pool[name], time.monotonic()
        for i in range(len(pool) - 1, -1, -1):
            up = pool[i]
            if not up.usable or now - up.idle_since >= self.POOL_IDLE:
                del pool[i]
                up.close()
            elif self.dial is None or up.identity == identity:
                del pool[i]
                return up
        return None

    def write_access(self, record: dict) -> None:
        self.access.write(json.dumps(record, separators=(",", ":")) + "\n")

    async def connect_upstream(self, app: AppConfig, identity: str | None = None) -> Upstream:
        """A verified TLS connection to the app at the address private DNS gives (or over the dial
        hook's socket); raises _Upstream."""
        if self.dial is not None:
            try:
                sock, address = await asyncio.wait_for(self.dial(app, identity), self.cfg.upstream_connect_timeout)
            except asyncio.TimeoutError:
                raise _UpstreamError(504, f"{app.name}: no stream through a connector within "
                                     f"{self.cfg.upstream_connect_timeout:g}s") from None
            except PermissionError as exc:
                raise _UpstreamError(403, f"{app.name} refused for {identity}: {exc}") from None
            except (LookupError, OSError) as exc:
                raise _UpstreamError(502, f"cannot reach {app.name} through a connector: {exc}") from None
            target = {"sock": sock}
        else:
            try:
                raw = await self.resolve(app.name)
            except LookupError as exc:
                raise _UpstreamError(502, f"cannot resolve {app.name} with the private DNS server: {exc}") from None
            address = socket.inet_ntoa(raw)
            target = {"host": address, "port": app.upstream_port}
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection(**target, ssl=self.upstream_ctx[app.name],
                                        server_hostname=app.name, limit=PIECE),
                self.cfg.upstream_connect_timeout)
        except asyncio.TimeoutError:
            raise _UpstreamError(504, f"{app.name} ({address}:{app.upstream_port}) did not accept a TLS connection "
                                 f"within {self.cfg.upstream_connect_timeout:g}s") from None
        except ssl.SSLCertVerificationError as exc:
            raise _UpstreamError(502, f"{app.name}'s certificate is not trusted: {exc.verify_message}") from None
        except (ssl.SSLError, OSError) as exc:
            raise _UpstreamError(502, f"cannot connect to {app.name} ({address}:{app.upstream_port}): {_why(exc)}") from None
        cert = w.get_extra_info("peercert") or {}
        issuer = dict(x for rdn in cert.get("issuer", ()) for x in rdn).get("commonName", "?")
        log.info("upstream %s %s:%d: TLS %s, certificate for %s verified against %s (issuer %s)", app.name, address,
                 app.upstream_port, w.get_extra_info("ssl_object").version(), app.name, app.upstream_ca, issuer)
        return Upstream(r, w, address, identity if self.dial is not None else None)


class _UpstreamError(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class _BrowserConn:
    """Requests on one browser connection, one after another (keep-alive)."""

    def __init__(self, front: Front, reader, writer, client: Client, peer: str):
        self.front, self.cfg = front, front.cfg
        self.reader, self.writer, self.client, self.peer = reader, writer, client, peer
        self.app = front.apps[client.sni]
        self.buf = b""
        self.up: Upstream | None = None
        self.identity: str | None = None  # of the request being forwarded

    async def _read(self, timeout: float, what: str) -> bytes:
        # asyncio.timeout, not wait_for: wait_for makes a task per call, a cost paid per read.
        try:
            async with asyncio.timeout(timeout):
                data = await self.reader.read(PIECE)
        except TimeoutError:
            raise TimeoutError(what) from None
        except (ConnectionError, ssl.SSLError, OSError):
            data = b""
        return data

    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() < PIECE:
            return  # nothing to wait for: the common case for small answers
        try:
            async with asyncio.timeout(self.cfg.body_timeout):
                await self.writer.drain()
        except TimeoutError:
            raise _Closed(f"browser did not read for {self.cfg.body_timeout:g}s") from None
        except (ConnectionError, OSError) as exc:
            raise _Closed(str(exc)) from None

    async def run(self) -> Upstream | None:
        first = True
        try:
            while True:
                head = await self._head(first)
                if head is None:
                    return self.up
                first = False
                if not await self._one(head):
                    return self.up
        except _Closed:
            return self.up

    async def _head(self, first: bool):
        """The next request head, None at a clean end; answers 400/408/431 itself."""
        deadline = None
        while True:
            if self.buf:
                try:
                    got = http1.parse_request_head_untrusted(self.buf)
                except http1.BadRequest as exc:
                    await self._refuse_raw(exc.status, str(exc))
                    return None
                if got is not None:
                    head, n = got
                    self.buf = self.buf[n:]
                    self.head_bytes = n
                    return head
                deadline = deadline or time.monotonic() + self.cfg.header_timeout
            if deadline is None:
                wait = self.cfg.header_timeout if first else self.cfg.idle_timeout
            else:
                wait = deadline - time.monotonic()
            try:
                data = await self._read(max(wait, 0.001), "head")
            except TimeoutError:
                if self.buf or first:
                    await self._refuse_raw(408, f"no complete request head within {self.cfg.header_timeout:g}s "
                                                f"({len(self.buf)} bytes came): slow or idle client")
                else:
                    log.info("browser %s for %s: idle for %gs, closed", self.peer, self.app.name, self.cfg.idle_timeout)
                return None
            if not data:
                return None
            self.buf += data

    async def _refuse_raw(self, status: int, reason: str) -> None:
        body = pages.refusal(status, pages.REASONS.get(status, "Error"), reason)
        resp = Respond(status, (("Content-Type", "text/html; charset=utf-8"),), body, close=True)
        log.warning("browser %s for %s: %d %s; connection closed", self.peer, self.app.name, status, reason)
        self.front.write_access({"time": _now(), "identity": None, "app": self.app.name, "client": self.client.address,
                                 "method": None, "path": None, "status": status, "bytes_in": len(self.buf),
                                 "bytes_out": len(resp.encode()), "upstream_ms": None, "decision": "error", "reason": reason})
        try:
            await self._write(resp.encode())
        except _Closed:
            pass

    async def _one(self, head) -> bool:
        """Serve one request; False when the connection must end after it."""
        t0 = time.monotonic()
        ex = self.front.gate.exchange(self.client, time.time())
        cmds = ex.request(head)
        stats = {"bytes_in": self.head_bytes, "bytes_out": 0, "upstream_ms": None, "status": None}
        body_read = False
        keep = True
        try:
            while cmds:
                cmd = cmds.pop(0)
                if isinstance(cmd, Respond):
                    data = cmd.encode(method=head.method)
                    stats["status"] = cmd.status
                    stats["bytes_out"] += len(data)
                    needs_close = cmd.close or (not body_read and http1.body_length(head) != 0)
                    if needs_close and not cmd.close:
                        data = Respond(cmd.status, cmd.headers, cmd.body, close=True).encode(method=head.method)
                    await self._write(data)
                    keep = keep and not needs_close and not _client_closes(head)
                elif isinstance(cmd, ReadBody):
                    data = await self._exact(cmd.limit)
                    stats["bytes_in"] += len(data)
                    body_read = True
                    cmds = ex.body(data)
                elif isinstance(cmd, CheckPassword):
                    check = self.front.checks.submit(self.front.backend.verify, cmd.form)
                    if check is None:
                        cmds = ex.busy()
                    else:
                        cmds = ex.checked(await check, time.time())
                elif isinstance(cmd, Forward):
                    self.identity = ex.record.get("identity")
                    keep = await self._forward(head, cmd, stats, t0)
        except (_Closed, TimeoutError) as exc:
            keep = False
            ex.record["reason"] = f"{ex.record.get('reason')}; connection ended: {exc or 'timeout'}"
        finally:
            ex.abandon()  # a password check that never reported must not hold its rate-limit slot
            rec = ex.record
            line = {"time": _now(), "identity": rec.get("identity"), "app": rec["app"], "client": rec["client"],
                    "method": head.method, "path": rec.get("path"), **stats, "decision": rec.get("decision"),
                    "reason": rec.get("reason")}
            self.front.write_access(line)
            # Allowed requests are in the access log already; the gateway's log keeps sign-ins and refusals.
            lvl = {"allow": logging.DEBUG, "login": logging.INFO, "login-page": logging.DEBUG,
                   "logout": logging.INFO}.get(rec.get("decision"), logging.WARNING)
            failed = f"; {stats['error']}" if stats.get("error") else ""
            if failed or "connection ended" in (rec.get("reason") or ""):
                lvl = logging.WARNING  # the app failed, or the connection broke: never only in the access log
            log.log(lvl, "browser %s %s %s %s -> %s: %s (%s)%s", self.client.address, rec.get("identity") or "-",
                    head.method, f"https://{self.app.name}{rec.get('path')}"[:200], stats["status"], rec.get("decision"),
                    rec.get("reason"), failed)
        return keep

    async def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            try:
                data = await self._read(self.cfg.body_timeout, "body")
            except TimeoutError:
                raise _Closed(f"request body stalled for {self.cfg.body_timeout:g}s") from None
            if not data:
                raise _Closed("browser closed mid-body")
            self.buf += data
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    # ---- relaying to the app ------------------------------------------------------------
    async def _forward(self, head, cmd: Forward, stats: dict, t0: float) -> bool:
        fresh = self.up is None or not self.up.usable or (self.front.dial is not None
                                                          and self.up.identity != self.identity)
        try:
            if fresh:
                if self.up is not None:
                    self.up.close()
                self.up = self.front.take(self.app.name, self.identity)
                fresh = self.up is None  # a pooled one may have been closed by the app: retried below
                if fresh:
                    self.up = await self.front.connect_upstream(self.app, self.identity)
        except _UpstreamError as exc:
            return await self._gateway_error(exc.status, exc.reason, stats, head)
        length = http1.body_length(head)
        for attempt in (1, 2):
            up = self.up
            up.clean = False
            up.writer.write(cmd.head)
            if length == 0:  # no body to relay: no task for it
                upload = asyncio.get_running_loop().create_future()
                upload.set_result(True)
            else:
                upload = asyncio.ensure_future(self._upload(Body(length), up, stats))
            try:
                resp = await self._response_head(up, upload, t0, stats)
                break
            except _UpstreamError as exc:
                upload.cancel()
                self._drop_upstream()
                if attempt == 1 and not fresh and cmd.retry and exc.status == 502:
                    # A kept-alive connection the app had closed meanwhile: one new connection may carry
                    # the same request if it is safe and bodiless (the exchange says; RFC 9112 9.3.1.1).
                    try:
                        self.up = await self.front.connect_upstream(self.app, self.identity)
                        continue
                    except _UpstreamError as exc2:
                        exc = exc2
                await self._gateway_error(exc.status, exc.reason, stats, head)
                return False
        try:
            stats["status"] = resp.status
            if resp.status == 101 and cmd.upgrade:
                out = client_response(resp, close=False, upgrade=True)
                await self._write(out)
                stats["bytes_out"] += len(out)
                upload.cancel()
                await self._websocket(up, stats)
                return False
            length = response_length(head.method, resp)
            client_close = _client_closes(head)
            up_close = length == UNTIL_CLOSE or any("close" in v.lower() for v in resp.all("connection"))
            close = client_close or length == UNTIL_CLOSE
            out = client_response(resp, close=close)
            await self._download(Body(length), up, stats, out)
            await upload  # the request body was all sent before the app finished (or the app cut it short)
            if up_close or not upload.result():
                self._drop_upstream()
            else:
                up.clean = True
            return not close and upload.result()
        except BadResponse as exc:
            self._drop_upstream()
            if stats["bytes_out"] == 0:
                await self._gateway_error(502, f"the app's answer cannot be relayed: {exc}", stats, head)
            return False
        finally:
            if not upload.done():
                upload.cancel()
                self._drop_upstream()

    def _drop_upstream(self) -> None:
        if self.up is not None:
            self.up.close()
            self.up = None

    async def _gateway_error(self, status: int, reason: str, stats: dict, head) -> bool:
        body = pages.refusal(status, pages.REASONS.get(status, "Error"), reason)
        resp = Respond(status, (("Content-Type", "text/html; charset=utf-8"),), body, close=True).encode(method=head.method)
        stats["status"] = status
        stats["bytes_out"] += len(resp)
        stats["error"] = reason
        await self._write(resp)
        return False

    async def _upload(self, body: Body, up: Upstream, stats: dict) -> bool:
        """Relay the request body; True when it was all sent (False: the browser stalled or left)."""
        try:
            part, self.buf = body.feed_untrusted(self.buf)
            if part:
                up.writer.write(part)
                stats["bytes_in"] += len(part)
            while not body.done:
                try:
                    data = await self._read(self.cfg.body_timeout, "body")
                except TimeoutError:
                    log.warning("browser %s for %s: request body stalled for %gs; both connections closed",
                                self.peer, self.app.name, self.cfg.body_timeout)
                    self.writer.close()
                    return False
                if not data:
                    return False
                part, self.buf = body.feed_untrusted(data)
                up.writer.write(part)
                stats["bytes_in"] += len(part)
                await up.writer.drain()
            await up.writer.drain()
            return True
        except BadResponse as exc:
            log.warning("browser %s for %s: bad request body framing: %s; closed", self.peer, self.app.name, exc)
            self.writer.close()
            return False
        except (ConnectionError, OSError):
            return False

    async def _response_head(self, up: Upstream, upload, t0: float, stats: dict):
        deadline = time.monotonic() + self.cfg.upstream_timeout
        reader_task = None  # one pending read of the app's answer at a time (StreamReader allows no second)
        while True:
            try:
                got = parse_response_head_untrusted(up.buf)
            except BadResponse as exc:
                raise _UpstreamError(502, f"the app's answer cannot be relayed: {exc}") from None
            if got is not None:
                resp, n = got
                up.buf = up.buf[n:]
                if 100 <= resp.status < 200 and resp.status != 101:
                    # An interim answer (100 Continue) goes on to the browser: a client that sent
                    # Expect: 100-continue waits for it before its body.
                    interim = client_response(resp, close=False)
                    await self._write(interim)
                    stats["bytes_out"] += len(interim)
                    continue
                stats["upstream_ms"] = round((time.monotonic() - t0) * 1000, 2)
                return resp
            left = max(deadline - time.monotonic(), 0.001)
            late = _UpstreamError(504, f"{self.app.name} did not answer within {self.cfg.upstream_timeout:g}s")
            try:
                if reader_task is None and upload.done():  # only the app to wait for: no task needed
                    try:
                        async with asyncio.timeout(left):
                            data = await up.reader.read(PIECE)
                    except TimeoutError:
                        raise late from None
                else:
                    # The body is still going up: wait for the app's answer and for the upload alike,
                    # so a browser that stalls mid-body ends the wait too.
                    reader_task = reader_task or asyncio.ensure_future(up.reader.read(PIECE))
                    waits = {reader_task} if upload.done() else {reader_task, upload}
                    done, _ = await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                    if reader_task not in done:
                        if upload in done and upload.result():
                            continue  # all of the body is up: keep waiting on the same read
                        reader_task.cancel()
                        if upload in done:
                            raise _Closed("the browser stopped sending its request body")
                        raise late
                    data, reader_task = reader_task.result(), None
            except (ConnectionError, OSError, ssl.SSLError) as exc:
                raise _UpstreamError(502, f"{self.app.name} broke the connection: {_why(exc)}") from None
            if not data:
                raise _UpstreamError(502, f"{self.app.name} closed the connection without answering")
            up.buf += data

    async def _download(self, body: Body, up: Upstream, stats: dict, head: bytes) -> None:
        """The response ``head`` and its body; the part of the body already read goes in the same
        write as the head (one TLS record and one send for a small answer, not two)."""
        part, up.buf = body.feed_untrusted(up.buf)
        first = head + part if part else head
        await self._write(first)
        stats["bytes_out"] += len(first)
        while not body.done:
            try:
                async with asyncio.timeout(self.cfg.upstream_timeout):
                    data = await up.reader.read(PIECE)
            except TimeoutError:
                raise _Closed(f"{self.app.name} stalled mid-answer for {self.cfg.upstream_timeout:g}s") from None
            except (ConnectionError, OSError, ssl.SSLError) as exc:
                raise _Closed(f"{self.app.name} broke the connection mid-answer: {_why(exc)}") from None
            if not data:
                if body.length == UNTIL_CLOSE:
                    return
                raise _Closed(f"{self.app.name} closed mid-answer")
            part, up.buf = body.feed_untrusted(data)
            await self._write(part)
            stats["bytes_out"] += len(part)

    async def _websocket(self, up: Upstream, stats: dict) -> None:
        """After 101: bytes both ways, untouched, until either side closes."""
        async def pump(read, write, key):
            try:
                while True:
                    data = await read()
                    if not data:
                        return
                    await write(data)
                    stats[key] += len(data)
            except (ConnectionError, OSError, ssl.SSLError, _Closed, TimeoutError):
                return

        async def to_app(data):
            up.writer.write(data)
            await up.writer.drain()

        if self.buf:
            await to_app(self.buf)
            self.buf = b""
        if up.buf:
            await self._write(up.buf)
            up.buf = b""
        a = asyncio.ensure_future(pump(lambda: self.reader.read(PIECE), to_app, "bytes_in"))
        b = asyncio.ensure_future(pump(lambda: up.reader.read(PIECE), self._write, "bytes_out"))
        await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
        for t in (a, b):
            t.cancel()
        self._drop_upstream()


def _client_closes(head) -> bool:
    conn = {t.strip().lower() for v in head.all("connection") for t in v.split(",")}
    return "close" in conn or (head.version == "HTTP/1.0" and "keep-alive" not in conn)


def _upstream_context(app: AppConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # the app's TLS is not ours to choose; 1.2 is the floor
    ctx.load_verify_locations(app.upstream_ca)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def _peek(sock: socket.socket, timeout: float) -> tuple[tlswire.ClientHello | None, str | None]:
    """The ClientHello, read without taking it from the socket; (None, why) when there is none."""
    loop = asyncio.get_running_loop()
    need = 5
    seen = -1  # bytes the last peek returned; -1 before the first
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = sock.recv(max(need, 5) + 16384, socket.MSG_PEEK)
                except BlockingIOError:
                    data = None
                except OSError as exc:
                    return None, str(exc)
                if data == b"":
                    return None, "the client closed before its ClientHello"
                if data is not None and len(data) <= seen:
                    # Woken (the low-water mark not reached) with nothing new: only a FIN does that, and
                    # epoll would report it readable again at once, for ever (a busy loop until the timeout).
                    return None, f"the client closed before its ClientHello ({len(data)} of {need} bytes came)"
                if data:
                    seen = len(data)
                    try:
                        hello, need = routing.peek_untrusted(data)
                    except tlswire.BadTLS as exc:
                        return None, f"not a TLS ClientHello ({exc})"
                    if hello is not None:
                        return hello, None
                    # Wake only when the rest of the record has come (epoll honours the low-water mark).
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVLOWAT, need)
                fut = loop.create_future()
                loop.add_reader(sock.fileno(), lambda: fut.done() or fut.set_result(None))
                try:
                    await fut
                finally:
                    loop.remove_reader(sock.fileno())
    except TimeoutError:
        return None, f"no whole ClientHello within {timeout:g}s"
    finally:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVLOWAT, 1)
        except OSError:
            pass


def _alert_and_close(sock: socket.socket, alert: int) -> None:
    # Take the peeked ClientHello first: closing a socket with unread bytes sends RST, which
    # can reach the client before it has read the alert.
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass
    try:
        sock.send(tlswire.alert(alert))
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
