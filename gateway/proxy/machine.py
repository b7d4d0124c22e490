"""One proxied connection as a sans-IO state machine.

Theory of operation
-------------------
The shell accepts a TCP connection and creates a :class:`Flow`.  From then on
it only reports what happened (bytes from the client, a DNS answer, a
connection made or failed, a deadline passed) and performs the commands the
flow returns, in order.  The flow never touches a socket or a clock.

Explicit mode (SPEC.md 5, explicit)::

    head --CONNECT/GET allowed--> resolving --addrs--> connecting --up-->
        CONNECT: SendClient(200) -> client-hello --ClientHello, SNI = CONNECT name-->
            exception: SendServer(same ClientHello bytes), Splice  (steps 5-6)
            decrypt:   Intercept
            another SNI, no SNI (unless the CONNECT named an address), ECH, not TLS: refused
        GET http://...:     SendServer(origin request), Splice
    denied or malformed: SendClient(403/4xx page), Close

Transparent mode (SPEC.md 5, transparent)::

    hello --ClientHello, SNI allowed--> resolving (the SNI, again) --addrs-->
        connecting --up--> exception: SendServer(same ClientHello bytes), Splice
                           decrypt:   Intercept
    denied: TLS alert and Close, or a block page (Intercept with page=...)
    when the name would be decrypted

Decrypted (after Intercept, SPEC 5 "with decryption")::

    the shell completes TLS with the server, then with the client
        server failed: upstream_tls_failed -> SendClient(502 page), Close
    then every plaintext read from the client: decrypted_request ->
        SendServer(head and body bytes)..., or SendClient(400/421 page), Close

Every path ends in exactly one of Splice, Intercept or Close; ``record``
holds what the per-connection log line says about the decision.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ztna import tlswire

from . import http1
from .policy import Policy, valid_hostname

EXPLICIT = "explicit"
TRANSPARENT = "transparent"

# Actions for TLS we cannot read a name from (configurable per case).
BLOCK = "block"
PASSTHROUGH = "passthrough"


# ---- commands (what the shell must do) ---------------------------------------
@dataclass(frozen=True)
class SendClient:
    """Write these bytes to the client."""
    data: bytes


@dataclass(frozen=True)
class SendServer:
    """Write these bytes to the server."""
    data: bytes


@dataclass(frozen=True)
class Resolve:
    """Resolve ``name`` (A records) with the proxy's own DNS servers, then call ``resolved``."""
    name: str


@dataclass(frozen=True)
class Connect:
    """Open TCP to the first address that answers, then call ``connected`` or ``connect_failed``."""
    addresses: tuple[str, ...]
    port: int


@dataclass(frozen=True)
class Splice:
    """From now on copy bytes both ways untouched."""


@dataclass(frozen=True)
class Intercept:
    """Terminate the client's TLS with a proxy-CA leaf for ``name``.

    ``hello`` is the client's ClientHello (already read from the socket: the
    shell must feed ``hello.raw`` and ``rest`` to its TLS server object).
    Without ``page`` the shell completes TLS with the (connected) server
    *first* (SPEC 5: only then does the client get a certificate), reporting
    a failure to ``Flow.upstream_tls_failed``, and then relays: every plaintext
    read from the client goes to ``Flow.decrypted_request``, whose commands it
    performs.  With ``page`` (a block page) it completes only the client's
    handshake, reads the request and answers with ``page``.
    """
    name: str
    hello: tlswire.ClientHello
    rest: bytes = b""
    page: bytes | None = None


@dataclass(frozen=True)
class Close:
    """Close both sides; the flow is over."""


@dataclass(frozen=True)
class Limits:
    """Caps and timeouts for the first bytes of a connection."""

    head_max: int = http1.MAX_HEAD
    hello_max: int = tlswire.DEFAULT_MAX_HELLO
    first_bytes_timeout: float = 10.0  # whole head / ClientHello within this (slowloris)
    on_no_sni: str = BLOCK
    on_not_tls: str = BLOCK
    on_ech: str = BLOCK


def page(status: int, title: str, detail: str, *, extra: str = "") -> bytes:
    """A small HTML answer with the reason, closing the connection."""
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed", 408: "Request Timeout",
              414: "URI Too Long", 421: "Misdirected Request", 431: "Request Header Fields Too Large",
              502: "Bad Gateway", 504: "Gateway Timeout", 505: "HTTP Version Not Supported"}.get(status, "Error")
    esc = detail.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    body = (f"<!doctype html><title>{status} {title}</title><h1>{title}</h1>"
            f"<p>{esc}</p><p>ztna forward proxy</p>\n").encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nX-Ztna-Proxy-Reason: {_header_safe(detail)}\r\n{extra}"
            f"Connection: close\r\n\r\n").encode("latin-1", "replace")
    return head + body


def _header_safe(text: str) -> str:
    return "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in text)[:200]


ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


@dataclass
class Flow:
    """The decisions for one client connection (see the module docstring)."""

    policy: Policy
    mode: str
    client: tuple[str, int]
    now: float
    original_dst: tuple[str, int] | None = None
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        self.state = "new"
        self.buf = b""
        self.deadline = self.now + self.limits.first_bytes_timeout
        self.hello_buf = tlswire.ClientHelloBuffer(self.limits.hello_max)
        self.name: str | None = None
        self.port = 0
        self.kind = ""  # connect | http | tls
        self.decrypt = False
        self.hello: tlswire.ClientHello | None = None
        self.http_first = b""
        self.stream: http1.RequestStream | None = None  # the requests inside a decrypted tunnel
        self.record: dict = {"mode": self.mode, "client": f"{self.client[0]}:{self.client[1]}", "name": None,
                             "sni": None, "decision": None, "reason": None, "decrypted": False}
        if self.original_dst:
            self.record["dialled"] = f"{self.original_dst[0]}:{self.original_dst[1]}"

    # ---- outcomes ------------------------------------------------------------
    def _end(self, decision: str, reason: str, *cmds) -> list:
        self.state = "closed"
        self.record["decision"] = self.record["decision"] if decision == "keep" else decision
        self.record["reason"] = reason
        return [*cmds, Close()]

    def _refuse_http(self, status: int, decision: str, reason: str) -> list:
        return self._end(decision, reason, SendClient(page(status, "Request refused by the proxy", reason)))

    def _refuse_tls(self, decision: str, reason: str, alert: int = tlswire.ALERT_ACCESS_DENIED) -> list:
        return self._end(decision, reason, SendClient(tlswire.alert(alert)))

    @property
    def waiting_for_client(self) -> bool:
        """True while the flow needs more client bytes (the shell reads only then)."""
        return self.state in ("head", "hello", "client-hello")

    # ---- events --------------------------------------------------------------
    def start(self) -> list:
        """The connection was accepted."""
        if not self.policy.client_allowed(self.client[0]):
            reason = f"client {self.client[0]} is not in a configured client network"
            if self.mode == EXPLICIT:
                return self._refuse_http(403, "deny", reason)
            return self._end("deny", reason)
        self.state = "head" if self.mode == EXPLICIT else "hello"
        return []

    def client_data(self, data: bytes, now: float) -> list:
        """Bytes arrived from the client (only asked for while ``waiting_for_client``)."""
        if self.state == "head":
            return self._on_head_bytes(data)
        if self.state in ("hello", "client-hello"):
            return self._on_hello_bytes(data)
        raise RuntimeError(f"client_data in state {self.state}")  # shell misuse, not peer misbehaviour

    def client_eof(self, now: float) -> list:
        """The client closed before the flow had what it needed."""
        what = "request head" if self.state == "head" else "ClientHello"
        return self._end("error", f"client closed before a complete {what} ({len(self.buf) or len(self.hello_buf.data)} bytes)")

    def timeout(self, now: float) -> list:
        """Called when ``now`` passes ``deadline`` while the flow waits for the client."""
        if not self.waiting_for_client or now < self.deadline:
            return []
        reason = f"no complete {'request head' if self.state == 'head' else 'ClientHello'} within " \
                 f"{self.limits.first_bytes_timeout:g}s (slow or idle client)"
        if self.state == "head":
            return self._refuse_http(408, "error", reason)
        return self._refuse_tls("error", reason, tlswire.ALERT_HANDSHAKE_FAILURE)

    def resolved(self, addresses: list[str]) -> list:
        """The DNS answer for ``self.name`` (possibly empty)."""
        usable, refused = [], []
        for a in addresses:
            ok, why = self.policy.destination_allowed(a)
            (usable if ok else refused).append(a if ok else why)
        self.record["resolved"] = list(addresses)
        if not usable:
            reason = f"{self.name} resolves to no address the proxy may connect to" + (f" ({'; '.join(refused)})" if refused else "")
            return self._fail_upstream(reason)
        if self.original_dst and self.original_dst[0] not in usable:
            # The client dialled an address the name does not resolve to: never go there.
            self.record["redirected"] = f"client dialled {self.original_dst[0]}, {self.name} resolves to {', '.join(usable)}"
        self.state = "connecting"
        return [Connect(tuple(usable), self.port)]

    def resolve_failed(self, error: str) -> list:
        return self._fail_upstream(f"cannot resolve {self.name}: {error}")

    def connected(self, address: str, now: float) -> list:
        """TCP to the server is up."""
        self.record["upstream"] = f"{address}:{self.port}"
        if self.kind == "http":
            self.state = "spliced"
            return [SendServer(self.http_first), Splice()]
        if self.mode == EXPLICIT:
            # Spliced or decrypted, the tunnel's first bytes are read before anything goes on: a
            # ClientHello naming another site than the CONNECT would otherwise reach it unchecked.
            self.state = "client-hello"
            self.deadline = now + self.limits.first_bytes_timeout
            return [SendClient(ESTABLISHED)]
        return self._after_hello_connected()

    def connect_failed(self, error: str) -> list:
        return self._fail_upstream(f"cannot connect to {self.name}:{self.port}: {error}")

    # ---- internals -------------------------------------------------------------
    def _fail_upstream(self, reason: str) -> list:
        if self.mode == EXPLICIT:
            return self._refuse_http(502, "error", reason)
        return self._refuse_tls("error", reason, tlswire.ALERT_INTERNAL_ERROR)

    def _on_head_bytes(self, data: bytes) -> list:
        self.buf += data
        try:
            got = http1.parse_request_head_untrusted(self.buf, max_head=self.limits.head_max)
            if got is None:
                return []
            head, used = got
            self.record["request"] = f"{head.method} {head.target[:200]}"
            if head.method == "CONNECT":
                host, port = http1.split_authority(head.target)
                if self.buf[used:]:
                    # A client must wait for the 2xx before sending tunnel bytes.
                    raise http1.BadRequest(400, "bytes after the CONNECT head before the proxy answered")
                return self._decide(host, port, "connect")
            host, port, path = http1.absolute_target(head.target)
            if head.method not in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
                raise http1.BadRequest(405, f"method {head.method} is not proxied")
            http1.body_length(head)  # refuse ambiguous framing before anything goes upstream
            self.http_first = http1.origin_request(head, path, host_header=_authority(host, port)) + self.buf[used:]
            return self._decide(host, port, "http")
        except http1.BadRequest as exc:
            return self._refuse_http(exc.status, "error", str(exc))

    def _decide(self, host: str, port: int, kind: str) -> list:
        self.name, self.port, self.kind = host, port, kind
        self.record["name"] = host
        self.record["port"] = port
        verdict = self.policy.decide(host, port, kind=kind)
        self.record["decision"] = verdict.action
        if not verdict.allowed:
            return self._refuse_http(403, "deny", verdict.reason)
        self.decrypt = verdict.decrypt and kind == "connect"
        self.record["reason"] = verdict.reason
        self.state = "resolving"
        return [Resolve(host)]

    def _on_hello_bytes(self, data: bytes) -> list:
        try:
            hello = self.hello_buf.feed(data)
        except tlswire.BadTLS as exc:
            if exc.kind == "not-tls" and self.state == "hello":
                return self._unnamed("not-tls", self.limits.on_not_tls, f"not TLS: {exc}")
            if exc.kind == "not-tls":
                self.record["unnamed"] = "not-tls"
                return self._end("deny", f"not TLS inside the CONNECT tunnel to {self.name}: {exc}")
            return self._refuse_tls("error", f"bad ClientHello: {exc}", tlswire.ALERT_DECODE_ERROR)
        if hello is None:
            return []
        self.hello = hello
        self.record["sni"] = hello.sni
        if self.state == "client-hello":  # explicit mode, the CONNECT tunnel open
            return self._after_connect_hello(hello)
        if hello.ech:
            return self._unnamed("ech", self.limits.on_ech, "ClientHello carries Encrypted Client Hello")
        if not hello.sni:
            return self._unnamed("no-sni", self.limits.on_no_sni, "ClientHello has no SNI")
        port = self.original_dst[1] if self.original_dst else 443
        self.name, self.port, self.kind = hello.sni, port, "tls"
        self.record["name"] = hello.sni
        self.record["port"] = port
        verdict = self.policy.decide(hello.sni, port, kind="tls")
        self.record["decision"] = verdict.action
        if not verdict.allowed:
            if self.policy.wants_decrypt(hello.sni) and valid_hostname(hello.sni):
                if not self._speaks_http1(hello):
                    return self._refuse_alpn(hello)
                self.state = "blocked"
                self.record["decrypted"] = True
                self.record["reason"] = verdict.reason
                return [Intercept(hello.sni, hello, self.hello_buf.rest,
                                  page=page(403, "Blocked by the proxy", verdict.reason))]
            return self._refuse_tls("deny", verdict.reason)
        if verdict.decrypt and not self._speaks_http1(hello):
            return self._refuse_alpn(hello)  # before any lookup or connect: nothing could be relayed
        self.decrypt = verdict.decrypt
        self.record["reason"] = verdict.reason
        self.state = "resolving"
        return [Resolve(hello.sni)]

    def _after_connect_hello(self, hello: tlswire.ClientHello) -> list:
        """Explicit mode: the ClientHello must name the site the CONNECT named (see docs/proxy.md).

        The policy judged the CONNECT name; a different SNI would reach another
        virtual host on the same server, so it is refused, spliced or not.
        Spliced, a hello without SNI is refused too, except after a CONNECT to
        an address (there is no name to compare; clients send none for an
        address), and so is ECH, which hides the real name behind an outer one.
        Decrypting, those two may go on: the proxy's own certificate is for the
        CONNECT name and every request inside is checked against it.
        """
        if hello.sni is not None and hello.sni.lower().rstrip(".") != self.name:
            return self._refuse_tls("deny", f"SNI {hello.sni} differs from the CONNECT name {self.name}")
        if self.decrypt:
            return self._intercept()
        if hello.ech:
            self.record["unnamed"] = "ech"
            return self._refuse_tls("deny", f"ClientHello carries Encrypted Client Hello; the name inside "
                                            f"cannot be checked against the CONNECT name {self.name}")
        if hello.sni is None and not _is_address(self.name):
            self.record["unnamed"] = "no-sni"
            return self._refuse_tls("deny", f"ClientHello has no SNI; the CONNECT named {self.name}")
        self.state = "spliced"
        return [SendServer(hello.raw + self.hello_buf.rest), Splice()]

    def _unnamed(self, what: str, action: str, reason: str) -> list:
        """TLS without a usable name: the configured action, always logged."""
        self.record["unnamed"] = what
        if action != PASSTHROUGH or not self.original_dst:
            self.record["decision"] = "deny"
            if what == "not-tls":
                return self._end("deny", f"{reason}; on_{what.replace('-', '_')} = block")
            return self._refuse_tls("deny", f"{reason}; on_{what.replace('-', '_')} = block")
        ok, why = self.policy.destination_allowed(self.original_dst[0])
        if not ok:
            return self._refuse_tls("deny", f"{reason}; passthrough refused: {why}")
        self.record["decision"] = "allow"
        self.record["reason"] = f"{reason}; on_{what.replace('-', '_')} = passthrough to the dialled address"
        self.name, self.port, self.kind = None, self.original_dst[1], "passthrough"
        self.state = "connecting"
        return [Connect((self.original_dst[0],), self.original_dst[1])]

    def _after_hello_connected(self) -> list:
        if self.decrypt:
            return self._intercept()
        self.state = "spliced"
        first = self.hello_buf.data if self.kind == "passthrough" else self.hello.raw + self.hello_buf.rest
        return [SendServer(first), Splice()]

    def _intercept(self) -> list:
        if not self._speaks_http1(self.hello):
            return self._refuse_alpn(self.hello)
        self.state = "intercept"
        self.record["decrypted"] = True
        self.stream = http1.RequestStream(max_head=self.limits.head_max)
        return [Intercept(self.name, self.hello, self.hello_buf.rest)]

    @staticmethod
    def _speaks_http1(hello: tlswire.ClientHello) -> bool:
        """The proxy speaks HTTP/1.1 inside TLS: a client offering ALPN must offer it (no ALPN is fine)."""
        return not hello.alpn or "http/1.1" in hello.alpn

    def _refuse_alpn(self, hello: tlswire.ClientHello) -> list:
        self.record["decrypted"] = False
        return self._refuse_tls("error", f"client offers only {','.join(hello.alpn)}; the proxy speaks http/1.1 "
                                         f"inside TLS", tlswire.ALERT_NO_APPLICATION_PROTOCOL)

    # ---- the decrypted phase (after Intercept without a page) ---------------------------------
    def upstream_tls_failed(self, error: str, *, verify_message: str | None = None) -> list:
        """TLS with the server failed (``verify_message``: its certificate did not verify).

        The client still gets its handshake (the shell completes it), then a 502
        page saying why: a browser shows that, where an alert would only show
        a connection error."""
        if verify_message is not None:
            why = f"the certificate of {self.name} failed verification: {verify_message}"
        else:
            why = f"TLS with {self.name} failed: {error}"
        return self._end("error", why, SendClient(page(502, "The proxy refused this site", why)))

    def decrypted_request(self, data: bytes) -> list:
        """Plaintext from the client inside a decrypted tunnel.

        Returns ``SendServer`` for the bytes that go on (request heads and
        bodies, in order), ending in ``SendClient`` (a refusal page) and
        ``Close`` when a request is malformed or names another site than the
        tunnel (domain fronting: 421)."""
        try:
            events = self.stream.feed(data)
        except http1.BadRequest as exc:
            return self._end("error", f"inner request: {exc}",
                             SendClient(page(exc.status, "Request refused by the proxy", str(exc))))
        out: list = []
        for kind, value in events:
            if kind == "head":
                why = host_matches(value, self.name)
                if why:
                    return self._end("deny", why, *out, SendClient(page(421, "Request refused by the proxy", why)))
                self.record["requests"] = self.record.get("requests", 0) + 1
            else:
                out.append(SendServer(value))
        return out


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _authority(host: str, port: int) -> str:
    try:
        ipaddress.IPv6Address(host)
        host = f"[{host}]"
    except ValueError:
        pass
    return host if port == 80 else f"{host}:{port}"


def host_matches(head: http1.RequestHead, name: str) -> str | None:
    """None when a decrypted request is for ``name``; otherwise why not (domain fronting)."""
    hosts = head.all("host")
    if len(hosts) != 1:
        return f"request has {len(hosts)} Host fields"
    try:
        host, _ = http1.split_authority(hosts[0], default_port=443)
    except http1.BadRequest as exc:
        return f"Host {hosts[0][:80]!r}: {exc}"
    if host != name:
        return f"Host {host} differs from the TLS name {name}"
    if "://" in head.target:
        try:
            thost, _, _ = http1.absolute_target(head.target.replace("https://", "http://", 1))
        except http1.BadRequest as exc:
            return str(exc)
        if thost != name:
            return f"request target host {thost} differs from the TLS name {name}"
    return None
