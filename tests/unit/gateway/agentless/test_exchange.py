"""gateway.agentless.exchange: playbooks of one browser request's events and the commands answered."""

import re
import urllib.parse

import pytest

from gateway.agentless import exchange as x, rewrite
from gateway.agentless.config import AppConfig
from gateway.agentless.cookies import Signer
from gateway.policy import Policy
from gateway.proxy import http1

APP, HR = "app.mycompany.net", "hr.mycompany.net"


class FakeBackend:
    """The Backend interface with a fixed table: the core never sees how a password is checked."""
    name = "fake"

    def challenge(self, app, *, csrf, next_url, message="", error=False):
        return f"<form csrf={csrf} next={next_url}>{message}</form>".encode()

    def claimed(self, form):
        return form.get("user") or None

    def verify(self, form):
        return form.get("password") == "right"

    def __init__(self):
        self.versions: dict[str, str | None] = {}  # user -> credential version; None: removed

    def stamp(self, user):
        return self.versions.get(user, "v1")


def gate(**kw):
    apps = {APP: AppConfig(APP, "c", "k", "ca"), HR: AppConfig(HR, "c", "k", "ca", auth="certificate")}
    g = x.Gate(apps, Policy({"alice": [APP], "bob": [HR], "carol": [HR]}), Signer(b"s" * 32), FakeBackend(),
               session_ttl=3600, user_limit=kw.get("user_limit", 3), addr_limit=kw.get("addr_limit", 10), window=60)
    return g


def req(raw: str) -> http1.RequestHead:
    return http1.parse_request_head_untrusted(raw.encode())[0]


def get(g, path="/", *, host=APP, sni=APP, headers="", now=1000.0, cert=None):
    ex = g.exchange(x.Client("198.51.100.30", sni, cert), now)
    return ex, ex.request(req(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n"))


def hdr(cmd, name):
    return [v for k, v in cmd.headers if k.lower() == name.lower()]


def sign_in(g, user="alice", password="right", now=1000.0, next_url="/wiki?a=1"):
    ex, cmds = get(g, f"/.ztna/login?next={urllib.parse.quote(next_url)}", now=now)
    (page,) = cmds
    csrf = re.search(r"csrf=(\S+) ", page.body.decode()).group(1)
    body = urllib.parse.urlencode({"user": user, "password": password, "csrf": csrf, "next": next_url}).encode()
    ex = g.exchange(x.Client("198.51.100.30", APP), now)
    cmds = ex.request(req(f"POST /.ztna/login HTTP/1.1\r\nHost: {APP}\r\nContent-Length: {len(body)}\r\n"
                          f"Origin: https://{APP}\r\nCookie: {rewrite.CSRF_COOKIE}={csrf}\r\n\r\n"))
    assert cmds == [x.ReadBody(len(body))]
    cmds = ex.body(body)
    if cmds and isinstance(cmds[0], x.CheckPassword):
        cmds = ex.checked(g.backend.verify(cmds[0].form), now)
    return ex, cmds


def session_cookie(cmd):
    c = [v for v in hdr(cmd, "set-cookie") if v.startswith(rewrite.SESSION_COOKIE + "=")][0]
    return c.split(";")[0].split("=", 1)[1], c


def test_no_session_redirects_to_login_with_the_first_url():
    ex, (cmd,) = get(gate(), "/wiki/page?x=1")
    assert cmd.status == 302 and hdr(cmd, "location") == ["/.ztna/login?next=/wiki/page%3Fx%3D1"]
    assert ex.record["decision"] == "login" and ex.record["reason"] == "no session"


def test_sign_in_sets_a_strict_cookie_and_sends_the_browser_back():
    g = gate()
    ex, (cmd,) = sign_in(g)
    assert cmd.status == 303 and hdr(cmd, "location") == ["/wiki?a=1"]
    token, attrs = session_cookie(cmd)
    for attr in ("Path=/", "Secure", "HttpOnly", "SameSite=Lax", "Max-Age=3600"):
        assert attr in attrs
    assert "Domain" not in attrs  # __Host-: held for exactly this host
    ex, cmds = get(g, "/wiki", headers=f"Cookie: other=1; {rewrite.SESSION_COOKIE}={token}\r\n", now=1001)
    assert len(cmds) == 1 and isinstance(cmds[0], x.Forward)
    assert b"X-Ztna-User: alice\r\n" in cmds[0].head and token.encode() not in cmds[0].head
    assert ex.record["identity"] == "alice" and ex.record["decision"] == "allow"


def test_wrong_password_then_rate_limit_per_user_and_per_address():
    g = gate(user_limit=3, addr_limit=5)
    for i in range(3):
        ex, (cmd,) = sign_in(g, password="wrong", now=1000 + i)
        assert cmd.status == 401 and ex.record["decision"] == "login-failed"
    ex, (cmd,) = sign_in(g, password="right", now=1003)  # even the right password waits now
    assert cmd.status == 429 and hdr(cmd, "retry-after") == ["58"] and b"this user" in cmd.body
    ex, (cmd,) = sign_in(g, user="zed", password="wrong", now=1004)
    ex, (cmd,) = sign_in(g, user="yan", password="wrong", now=1005)
    ex, (cmd,) = sign_in(g, user="xu", password="right", now=1006)  # 5 failures from this address
    assert cmd.status == 429 and b"this address" in cmd.body and ex.record["decision"] == "rate-limited"
    ex, (cmd,) = sign_in(g, password="right", now=1070)  # the window has passed
    assert cmd.status == 303


@pytest.mark.parametrize("change,why", [
    (lambda f, c, h: (f.replace("csrf=", "csrf=x"), c, h), "does not match"),
    (lambda f, c, h: (f, "", h), "no CSRF token"),
    (lambda f, c, h: (f, c, h + "Origin: https://evil.example\r\n"), "Origin"),
])
def test_csrf_refusals(change, why):
    g = gate()
    _, (page,) = get(g, "/.ztna/login")
    csrf = re.search(r"csrf=(\S+) ", page.body.decode()).group(1)
    form = urllib.parse.urlencode({"user": "alice", "password": "right", "csrf": csrf, "next": "/"})
    form, cookie, extra = change(form, csrf, "")
    ex = g.exchange(x.Client("198.51.100.30", APP), 1000)
    cookie_line = f"Cookie: {rewrite.CSRF_COOKIE}={cookie}\r\n" if cookie else ""
    ex.request(req(f"POST /.ztna/login HTTP/1.1\r\nHost: {APP}\r\nContent-Length: {len(form)}\r\n{cookie_line}{extra}\r\n"))
    (cmd,) = ex.body(form.encode())
    assert cmd.status == 403 and ex.record["decision"] == "csrf" and why in ex.record["reason"]


def test_forged_expired_other_app_and_revoked_cookies_are_refused_with_their_reason():
    g = gate()
    _, (cmd,) = sign_in(g)
    token, _ = session_cookie(cmd)
    body, mac = token.split(".")
    forged = body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + mac
    other, _ = Signer(b"s" * 32).session("alice", HR, 1000, 3600)
    for tok, now, why in ((forged, 1001, "tampered"), (token, 1000 + 3600, "expired"), (other, 1001, "other-app")):
        ex, (cmd,) = get(g, "/", headers=f"Cookie: {rewrite.SESSION_COOKIE}={tok}\r\n", now=now)
        assert cmd.status == 302 and why in ex.record["reason"] and ex.record["decision"] == "bad-session", (why, ex.record)
    ex, (cmd,) = get(g, "/.ztna/logout", headers=f"Cookie: {rewrite.SESSION_COOKIE}={token}\r\n", now=1002)
    assert cmd.status == 303 and hdr(cmd, "location")[0].startswith("/.ztna/login")
    assert any("Max-Age=0" in c for c in hdr(cmd, "set-cookie")) and "alice" in ex.record["reason"]
    ex, (cmd,) = get(g, "/", headers=f"Cookie: {rewrite.SESSION_COOKIE}={token}\r\n", now=1003)
    assert cmd.status == 302 and "ended by logout" in ex.record["reason"]


def test_user_not_allowed_gets_403_naming_the_reason():
    g = gate()
    _, (cmd,) = sign_in(g, user="bob")
    token, _ = session_cookie(cmd)
    ex, (cmd,) = get(g, "/", headers=f"Cookie: {rewrite.SESSION_COOKIE}={token}\r\n", now=1001)
    assert cmd.status == 403 and b"not allowed to reach app.mycompany.net" in cmd.body
    assert ex.record["decision"] == "deny" and ex.record["identity"] == "bob"


def test_host_other_than_sni_is_421_and_framing_errors_close():
    _, (cmd,) = get(gate(), host=HR)
    assert cmd.status == 421 and cmd.close
    _, (cmd,) = get(gate(), host=f"{APP}:8443")
    assert cmd.status == 421
    ex = gate().exchange(x.Client("198.51.100.30", APP), 0)
    (cmd,) = ex.request(req(f"POST / HTTP/1.1\r\nHost: {APP}\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"))
    assert cmd.status == 400 and cmd.close and "both" in ex.record["reason"]
    ex = gate().exchange(x.Client("198.51.100.30", APP), 0)
    (cmd,) = ex.request(req(f"GET / HTTP/1.1\r\nHost: {APP}\r\nHost: {APP}\r\n\r\n"))
    assert cmd.status == 400 and cmd.close


def test_certificate_app_uses_the_client_certificate_and_refuses_without_one():
    ex, (cmd,) = get(gate(), host=HR, sni=HR, cert="carol")
    assert isinstance(cmd, x.Forward) and b"X-Ztna-User: carol" in cmd.head
    ex, (cmd,) = get(gate(), host=HR, sni=HR)
    assert cmd.status == 403 and "no client certificate" in ex.record["reason"]
    ex, (cmd,) = get(gate(), host=HR, sni=HR, cert="alice")
    assert cmd.status == 403 and "alice" in ex.record["reason"]


@pytest.mark.parametrize("target,want", [("/a?b", "/a?b"), ("//evil.example/", "/"), ("https://evil/", "/"),
                                         ("/\\evil", "/"), ("/.ztna/logout", "/"), ("/a\x00", "/")])
def test_next_url_stays_on_this_site(target, want):
    assert x.safe_next(target) == want


def test_login_form_limits():
    g = gate()
    ex = g.exchange(x.Client("198.51.100.30", APP), 0)
    (cmd,) = ex.request(req(f"POST /.ztna/login HTTP/1.1\r\nHost: {APP}\r\nContent-Length: 100000\r\n\r\n"))
    assert cmd.status == 413 and cmd.close
    ex = g.exchange(x.Client("198.51.100.30", APP), 0)
    (cmd,) = ex.request(req(f"POST /.ztna/login HTTP/1.1\r\nHost: {APP}\r\nTransfer-Encoding: chunked\r\n\r\n"))
    assert cmd.status == 411


@pytest.mark.parametrize("named", ["content-length", "Content-Length", "transfer-encoding", "host"])
def test_connection_naming_a_framing_or_routing_field_is_refused_before_the_app(named):
    g = gate()
    _, (cmd,) = sign_in(g)
    token, _ = session_cookie(cmd)
    smuggled = f"GET /admin HTTP/1.1\r\nHost: {APP}\r\nX-Ztna-User: admin\r\n\r\n"
    ex = g.exchange(x.Client("198.51.100.30", APP), 1001)
    (cmd,) = ex.request(req(f"POST / HTTP/1.1\r\nHost: {APP}\r\nConnection: keep-alive, {named}\r\n"
                            f"Content-Length: {len(smuggled)}\r\nCookie: {rewrite.SESSION_COOKIE}={token}\r\n\r\n"))
    assert isinstance(cmd, x.Respond) and cmd.status == 400 and cmd.close
    assert ex.record["decision"] == "error" and "Connection" in ex.record["reason"]
    assert named.lower() in ex.record["reason"]


def test_identity_and_forwarding_headers_spelled_with_underscores_are_stripped():
    # WSGI/CGI/PHP/Rack map X_Ztna_User and X-Ztna-User alike to HTTP_X_ZTNA_USER: the client's copy must go.
    g = gate()
    _, (cmd,) = sign_in(g)
    token, _ = session_cookie(cmd)
    ex, (cmd,) = get(g, "/", headers=f"Cookie: {rewrite.SESSION_COOKIE}={token}\r\nX_Ztna_User: admin\r\n"
                     "x_ztna-USER: admin2\r\nX_Forwarded_For: 10.9.9.9\r\nX-Real_IP: 10.9.9.8\r\nX_Other: kept\r\n", now=1001)
    assert isinstance(cmd, x.Forward)
    assert b"admin" not in cmd.head and b"10.9.9." not in cmd.head
    assert b"X-Ztna-User: alice\r\n" in cmd.head and b"X_Other: kept\r\n" in cmd.head


def login_post(g, user, password, now=1000.0):
    """A sign-in POST up to its password check: (exchange, the commands after the body)."""
    _, (page,) = get(g, "/.ztna/login", now=now)
    csrf = re.search(r"csrf=(\S+) ", page.body.decode()).group(1)
    body = urllib.parse.urlencode({"user": user, "password": password, "csrf": csrf, "next": "/"}).encode()
    ex = g.exchange(x.Client("198.51.100.30", APP), now)
    ex.request(req(f"POST /.ztna/login HTTP/1.1\r\nHost: {APP}\r\nContent-Length: {len(body)}\r\n"
                   f"Origin: https://{APP}\r\nCookie: {rewrite.CSRF_COOKIE}={csrf}\r\n\r\n"))
    return ex, ex.body(body)


def test_logins_issued_before_any_result_count_against_the_limit_while_in_flight():
    # The password check runs off the loop: N POSTs that all arrive before the first result must
    # not all be checked (the limit counts failures plus checks in flight).
    g = gate(user_limit=3, addr_limit=10)
    pending = [login_post(g, "alice", "wrong", now=1000 + i / 10) for i in range(6)]
    checks = [ex for ex, cmds in pending if isinstance(cmds[0], x.CheckPassword)]
    refused = [cmds[0] for ex, cmds in pending if not isinstance(cmds[0], x.CheckPassword)]
    assert len(checks) == 3 and all(c.status == 429 and hdr(c, "retry-after") for c in refused)
    for ex in checks:
        (cmd,) = ex.checked(False, 1001)
        assert cmd.status == 401
    _, cmds = login_post(g, "alice", "right", now=1002)
    assert cmds[0].status == 429  # three failures now, no longer in flight
    # The address limit counts in flight too, across user names.
    g = gate(user_limit=3, addr_limit=4)
    got = [login_post(g, f"u{i}", "wrong")[1][0] for i in range(6)]
    assert [isinstance(c, x.CheckPassword) for c in got] == [True] * 4 + [False] * 2


def test_a_check_that_succeeds_or_is_abandoned_frees_its_slot():
    g = gate(user_limit=2, addr_limit=10)
    ex1, (c1,) = login_post(g, "alice", "right")
    ex2, (c2,) = login_post(g, "alice", "right")
    assert isinstance(c1, x.CheckPassword) and isinstance(c2, x.CheckPassword)
    assert login_post(g, "alice", "right")[1][0].status == 429
    assert ex1.checked(True, 1000)[0].status == 303
    ex2.abandon()  # the browser left while its password was being checked
    ex2.abandon()  # twice is harmless
    assert isinstance(login_post(g, "alice", "right")[1][0], x.CheckPassword)


def test_password_checks_busy_is_503_with_retry_after_and_frees_the_slot():
    g = gate(user_limit=1, addr_limit=10)
    ex, (cmd,) = login_post(g, "alice", "right")
    assert isinstance(cmd, x.CheckPassword)
    (cmd,) = ex.busy()
    assert cmd.status == 503 and hdr(cmd, "retry-after") == ["1"] and ex.record["decision"] == "error"
    assert "busy" in ex.record["reason"]
    assert isinstance(login_post(g, "alice", "right")[1][0], x.CheckPassword)  # not counted as a failure


@pytest.mark.parametrize("change,why", [(None, "no longer exists"), ("v2", "password of alice changed")])
def test_a_session_ends_when_its_user_is_removed_or_changes_password(change, why):
    g = gate()
    _, (cmd,) = sign_in(g)
    token, _ = session_cookie(cmd)
    cookie = f"Cookie: {rewrite.SESSION_COOKIE}={token}\r\n"
    assert isinstance(get(g, "/", headers=cookie, now=1001)[1][0], x.Forward)
    g.backend.versions["alice"] = change  # ztna gateway user remove / passwd alice
    ex, (cmd,) = get(g, "/", headers=cookie, now=1002)
    assert cmd.status == 302 and ex.record["decision"] == "bad-session" and why in ex.record["reason"], ex.record
    if change:  # signing in again with the new password gives a session that works
        _, (cmd,) = sign_in(g, now=1003)
        token, _ = session_cookie(cmd)
        ex, (cmd,) = get(g, "/", headers=f"Cookie: {rewrite.SESSION_COOKIE}={token}\r\n", now=1004)
        assert isinstance(cmd, x.Forward)


@pytest.mark.parametrize("method,body,retry", [
    ("GET", "", True), ("HEAD", "", True), ("OPTIONS", "", True),
    ("POST", "", False), ("DELETE", "", False), ("PATCH", "", False), ("PUT", "", False),
    ("GET", "Content-Length: 3\r\n", False),  # a body is not kept to be sent twice
])
def test_only_safe_bodiless_requests_may_be_retried_on_a_new_upstream_connection(method, body, retry):
    # A kept-alive connection the app closed may have processed the request before closing:
    # repeating a POST or a DELETE could act twice (RFC 9110 9.2.2, RFC 9112 9.3.1.1).
    g = gate()
    _, (cmd,) = sign_in(g)
    token, _ = session_cookie(cmd)
    ex = g.exchange(x.Client("198.51.100.30", APP), 1001)
    (cmd,) = ex.request(req(f"{method} / HTTP/1.1\r\nHost: {APP}\r\n{body}Cookie: {rewrite.SESSION_COOKIE}={token}\r\n\r\n"))
    assert isinstance(cmd, x.Forward) and cmd.retry is retry
