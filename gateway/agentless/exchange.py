"""One browser request at the gateway, as a sans-IO core returning commands.

Theory of operation
-------------------
The shell reads a request head (``gateway.proxy.http1``, with its smuggling
defences), makes an :class:`Exchange` and reports events; the exchange
answers with commands and never touches a socket or a clock::

    request(head) --Host is not the SNI-----------> Respond(421)
                  --/.ztna/login GET--------------> Respond(200 login form, CSRF cookie)
                  --/.ztna/login POST-------------> ReadBody --body(form)--> CSRF, rate limits
                                                      --> CheckPassword --checked(ok)-->
                                                      Respond(303 back to the first URL + session cookie)
                                                      | Respond(401 form again) | Respond(429)
                  --/.ztna/logout-----------------> Respond(303 to the login page, cookie cleared; session revoked)
                  --no/bad session----------------> Respond(302 to the login page) (GET/HEAD) or 401
                  --identity not allowed----------> Respond(403 naming the reason)
                  --allowed-----------------------> Forward(rewritten head)

``record`` says what the access log line says about the decision (identity,
decision, reason).  Every refusal names its reason there and on the page.
"""

from __future__ import annotations

import hmac
import urllib.parse
from dataclasses import dataclass, field

from gateway.policy import Policy
from gateway.proxy import http1

from . import pages, rewrite
from .auth import Backend
from .config import AUTH_CERTIFICATE, AppConfig
from .cookies import BadToken, Revoked, Signer
from .ratelimit import FailureLimiter

PREFIX = "/.ztna/"
LOGIN, LOGOUT = "/.ztna/login", "/.ztna/logout"


# ---- commands -------------------------------------------------------------------
@dataclass(frozen=True)
class Respond:
    """Send this response from the gateway itself; ``close`` ends the connection after it."""
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    close: bool = False

    def encode(self, *, method: str = "GET") -> bytes:
        lines = [f"HTTP/1.1 {self.status} {pages.REASONS.get(self.status, 'Error')}"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        lines += [f"Content-Length: {len(self.body)}", "Cache-Control: no-store"]
        if self.close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if method == "HEAD" else head + self.body


@dataclass(frozen=True)
class ReadBody:
    """Read the request's body (at most ``limit`` bytes, framing already checked), then call ``body``."""
    limit: int


@dataclass(frozen=True)
class CheckPassword:
    """Run the backend's ``verify(form)`` off the loop, then call ``checked``."""
    form: dict = field(hash=False, compare=True)


@dataclass(frozen=True)
class Forward:
    """Send ``head`` to the app, then relay the body and the answer; ``upgrade``: a WebSocket handshake.

    ``retry``: a kept-alive upstream connection that breaks before any answer may be replaced and the
    request sent again (only safe, bodiless requests: the app may have acted on it before closing).
    """
    head: bytes
    upgrade: bool = False
    retry: bool = False


# Sent again without the browser knowing only if repeating them cannot act twice: the safe methods
# (RFC 9110 9.2.1). PUT and DELETE are idempotent (9.2.2) but a repeat can still answer differently
# (a 404 for the second DELETE), so they are not retried either.
RETRY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


@dataclass(frozen=True)
class Client:
    """What the shell knows about the browser's connection."""
    address: str
    sni: str
    cert_identity: str | None = None  # the CN of a verified client certificate


class Gate:
    """Everything the decisions share: apps, policy, keys, limits, ended sessions."""

    def __init__(self, apps: dict[str, AppConfig], policy: Policy, signer: Signer, backend: Backend, *,
                 session_ttl: float, user_limit: int, addr_limit: int, window: float, max_form: int = 8192,
                 revoked: Revoked | None = None):
        self.apps, self.policy, self.signer, self.backend = apps, policy, signer, backend
        self.session_ttl = session_ttl
        self.by_user = FailureLimiter(user_limit, window)
        self.by_addr = FailureLimiter(addr_limit, window)
        self.revoked = revoked if revoked is not None else Revoked()
        self.max_form = max_form

    def exchange(self, client: Client, now: float) -> "Exchange":
        return Exchange(self, self.apps[client.sni], client, now)


def _cookie(name: str, value: str, max_age: int) -> tuple[str, str]:
    # __Host- prefix: Secure, Path=/ and no Domain, so the cookie is held for exactly this app's host.
    return ("Set-Cookie", f"{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}")


def safe_next(target: str) -> str:
    """A local path to send the browser back to; anything else (another site, a scheme) becomes ``/``."""
    if not target.startswith("/") or target.startswith(("//", "/\\")) or target.startswith(PREFIX):
        return "/"
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in target) or len(target) > 2000:
        return "/"
    return target


class Exchange:
    """One request's decisions (see the module docstring)."""

    def __init__(self, gate: Gate, app: AppConfig, client: Client, now: float):
        self.gate, self.app, self.client, self.now = gate, app, client, now
        self.head: http1.RequestHead | None = None
        self.form: dict[str, str] = {}
        self.checking: tuple[str, str] | None = None  # the limiter keys of a password check in flight
        self.record: dict = {"app": app.name, "client": client.address, "identity": None,
                             "decision": None, "reason": None}

    # ---- outcomes -----------------------------------------------------------------
    def _respond(self, status: int, decision: str, reason: str, body: bytes, *headers, close: bool = False) -> list:
        self.record["decision"], self.record["reason"] = decision, reason
        return [Respond(status, (("Content-Type", "text/html; charset=utf-8"), *headers), body, close)]

    def _refuse(self, status: int, decision: str, reason: str, *, hint: str = "", close: bool = False, headers=()) -> list:
        title = pages.REASONS.get(status, "Error")
        return self._respond(status, decision, reason, pages.refusal(status, title, reason, hint=hint), *headers, close=close)

    def _to_login(self, reason: str) -> list:
        head = self.head
        # A cookie that was sent and refused (forged, expired, another app's, ended) is worth a warning.
        decision = "login" if reason == "no session" else "bad-session"
        if head.method in ("GET", "HEAD"):
            where = f"{LOGIN}?next={urllib.parse.quote(safe_next(head.target), safe='/')}"
            return self._respond(302, decision, reason, b"", ("Location", where))
        return self._refuse(401, decision, reason, hint=f"Sign in at https://{self.app.name}{LOGIN} first.")

    # ---- events ---------------------------------------------------------------------
    def request(self, head: http1.RequestHead) -> list:
        """A whole request head arrived."""
        self.head = head
        self.record.update(method=head.method, path=head.target[:300])
        hosts = head.all("host")
        if len(hosts) != 1:
            return self._refuse(400, "error", f"the request has {len(hosts)} Host fields; it needs exactly one", close=True)
        try:
            host, port = http1.split_authority(hosts[0], default_port=443)
            length = http1.body_length(head)
            http1.hop_by_hop(head)  # a Connection naming Content-Length would smuggle a request past the app
        except http1.BadRequest as exc:
            return self._refuse(exc.status, "error", str(exc), close=True)
        if host != self.client.sni or port != 443:
            # RFC 9110 15.5.20: this connection cannot serve that authority (the TLS name decides the app).
            return self._refuse(421, "error", f"Host {hosts[0][:100]} is not the name this TLS connection was opened for "
                                f"({self.client.sni})", close=True)  # the browser must open one for that name
        if not head.target.startswith("/"):
            return self._refuse(400, "error", f"request target {head.target[:80]!r} is not a path", close=True)
        path = head.target.split("?", 1)[0]
        if path.startswith(PREFIX):
            return self._own(path, length)
        identity, why = self._authenticate()
        if identity is None and self.app.auth == AUTH_CERTIFICATE:
            return self._refuse(403, "deny", why, hint="Install a client certificate from your organisation in the browser.")
        if identity is None:
            return self._to_login(why)
        self.record["identity"] = identity
        ok, reason = self.gate.policy.allows(identity, self.app.name)
        if not ok:
            return self._refuse(403, "deny", reason, hint=f"Signed in as {identity}. Ask an administrator for access, "
                                f"or sign out at https://{self.app.name}{LOGOUT}.")
        self.record["decision"], self.record["reason"] = "allow", f"{why}; {reason}"
        up = rewrite.upstream_request(head, client=self.client.address, host=self.app.name,
                                      identity_header=self.app.identity_header, identity=identity)
        return [Forward(up, upgrade=rewrite.is_websocket(head), retry=head.method in RETRY_METHODS and length == 0)]

    def body(self, data: bytes) -> list:
        """The login form's body (after ReadBody)."""
        try:
            pairs = urllib.parse.parse_qsl(data.decode("utf-8"), strict_parsing=True, max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            return self._refuse(400, "error", "the sign-in form is not a valid application/x-www-form-urlencoded body")
        self.form = dict(pairs)
        next_url = safe_next(self.form.get("next", "/"))
        why = self._csrf_problem()
        if why:
            return self._login_page(403, "csrf", f"sign-in form refused: {why}",
                                    "This sign-in form expired or did not come from this site: sign in again.", next_url)
        user = self.gate.backend.claimed(self.form)
        if user is None:
            return self._login_page(400, "login", "sign-in form incomplete", "Enter a user name and a password.", next_url)
        self.record["identity"] = user
        wait = max(self.gate.by_user.retry_after(f"user:{user}", self.now),
                   self.gate.by_addr.retry_after(f"addr:{self.client.address}", self.now))
        if wait > 0:
            who = "this user" if self.gate.by_user.retry_after(f"user:{user}", self.now) else "this address"
            text = f"Too many failed sign-ins for {who}: try again in {int(wait) + 1} seconds."
            return self._login_page(429, "rate-limited", f"failed sign-ins for {user} from {self.client.address} over "
                                    f"the limit; refused for {int(wait) + 1}s", text, next_url,
                                    ("Retry-After", str(int(wait) + 1)))
        # In flight from now until checked() or abandon(): concurrent POSTs must see this one.
        self.checking = (f"user:{user}", f"addr:{self.client.address}")
        self.gate.by_user.begin(self.checking[0])
        self.gate.by_addr.begin(self.checking[1])
        return [CheckPassword(self.form)]

    def busy(self) -> list:
        """The password checks are all taken: 503, and this attempt counts for nothing."""
        self.abandon()
        return self._refuse(503, "error", "sign-in busy: every password check worker is taken and the queue is full",
                            hint="Try again in a moment.", headers=(("Retry-After", "1"),))

    def abandon(self) -> None:
        """The password check issued will not report (the browser left, or it was never run)."""
        if self.checking is not None:
            self.gate.by_user.end(self.checking[0])
            self.gate.by_addr.end(self.checking[1])
            self.checking = None

    def checked(self, ok: bool, now: float) -> list:
        """The backend's verdict on the form."""
        self.abandon()  # settled: counted below as a failure or a success instead
        user = self.gate.backend.claimed(self.form) or "?"
        next_url = safe_next(self.form.get("next", "/"))
        if not ok:
            self.gate.by_user.failure(f"user:{user}", now)
            self.gate.by_addr.failure(f"addr:{self.client.address}", now)
            return self._login_page(401, "login-failed", f"wrong user name or password for {user!r}",
                                    "Wrong user name or password.", next_url)
        self.gate.by_user.success(f"user:{user}")
        token, s = self.gate.signer.session(user, self.app.name, now, self.gate.session_ttl,
                                            self.gate.backend.stamp(user) or "")
        return self._respond(303, "login", f"signed in as {user} (backend {self.gate.backend.name}); session until "
                             f"{s.expires}", b"", ("Location", next_url),
                             _cookie(rewrite.SESSION_COOKIE, token, int(self.gate.session_ttl)),
                             _cookie(rewrite.CSRF_COOKIE, "", 0))

    # ---- internals --------------------------------------------------------------------
    def _authenticate(self) -> tuple[str | None, str]:
        if self.app.auth == AUTH_CERTIFICATE:
            if self.client.cert_identity:
                return self.client.cert_identity, f"client certificate CN={self.client.cert_identity}"
            return None, "no client certificate (this application requires one from the gateway's client CA)"
        token = rewrite.cookies(self.head).get(rewrite.SESSION_COOKIE)
        if token is None:
            return None, "no session"
        try:
            s = self.gate.signer.open_session_untrusted(token, self.app.name, self.now)
        except BadToken as exc:
            return None, f"session cookie refused: {exc}"
        if s.sid in self.gate.revoked:
            return None, "session cookie refused: ended by logout"
        stamp = self.gate.backend.stamp(s.identity)
        if stamp is None:
            return None, f"session cookie refused: user {s.identity} no longer exists"
        if not hmac.compare_digest(stamp, s.stamp):
            return None, f"session cookie refused: the password of {s.identity} changed since this sign-in"
        return s.identity, f"session of {s.identity}"

    def _own(self, path: str, length) -> list:
        m = self.head.method
        if self.app.auth == AUTH_CERTIFICATE:
            return self._refuse(404, "error", f"{self.app.name} signs in with client certificates; there is no {path}")
        if path == LOGIN and m in ("GET", "HEAD"):
            query = urllib.parse.parse_qs(self.head.target.partition("?")[2])
            next_url = safe_next(query.get("next", ["/"])[0])
            return self._login_page(200, "login-page", "sign-in page shown", "", next_url)
        if path == LOGIN and m == "POST":
            if not isinstance(length, int):
                return self._refuse(411, "error", "the sign-in form must be sent with a Content-Length", close=True)
            if length > self.gate.max_form:
                return self._refuse(413, "error", f"sign-in form larger than {self.gate.max_form} bytes", close=True)
            return [ReadBody(length)]
        if path == LOGOUT and m in ("GET", "POST"):
            token = rewrite.cookies(self.head).get(rewrite.SESSION_COOKIE)
            reason = "logout without a session"
            if token:
                try:
                    s = self.gate.signer.open_session_untrusted(token, self.app.name, self.now)
                    self.gate.revoked.add(s.sid, s.expires, self.now)
                    self.record["identity"] = s.identity
                    reason = f"logout: session of {s.identity} ended"
                except BadToken as exc:
                    reason = f"logout with a refused cookie ({exc})"
            return self._respond(303, "logout", reason, b"", ("Location", f"{LOGIN}?next=/&out=1"),
                                 _cookie(rewrite.SESSION_COOKIE, "", 0), close=length != 0)
        return self._refuse(404 if m in ("GET", "HEAD", "POST") else 405, "error", f"{m} {path} is not a gateway page",
                            close=length != 0)

    def _login_page(self, status: int, decision: str, reason: str, message: str, next_url: str, *headers) -> list:
        # Keep a CSRF token the browser still holds: a second sign-in page (a favicon's redirect, a
        # second tab) must not replace the cookie under a form already shown.
        csrf = rewrite.cookies(self.head).get(rewrite.CSRF_COOKIE, "")
        try:
            fields = self.gate.signer.open_untrusted(csrf, "csrf", host=self.app.name, now=self.now)
            if fields["exp"] - self.now < 300:
                raise ValueError("about to expire")
        except (BadToken, ValueError):
            csrf = self.gate.signer.csrf(self.app.name, self.now)
        if not message and "out=1" in self.head.target:
            message = "You are signed out."
        body = self.gate.backend.challenge(self.app.name, csrf=csrf, next_url=next_url, message=message,
                                           error=status >= 400)
        return self._respond(status, decision, reason, body, _cookie(rewrite.CSRF_COOKIE, csrf, 900), *headers)

    def _csrf_problem(self) -> str | None:
        origin = self.head.header("origin")
        if origin is not None and origin != f"https://{self.app.name}":
            return f"Origin {origin[:100]} is not https://{self.app.name}"
        sent, kept = self.form.get("csrf", ""), rewrite.cookies(self.head).get(rewrite.CSRF_COOKIE, "")
        if not sent or not kept:
            return "no CSRF token" + (" cookie" if sent else "")
        if not hmac.compare_digest(sent.encode(), kept.encode()):
            return "CSRF token does not match its cookie"
        try:
            self.gate.signer.open_untrusted(sent, "csrf", host=self.app.name, now=self.now)
        except BadToken as exc:
            return f"CSRF token {exc}"
        return None
