"""Agentless access in the sealed lab (issue 14): the flow, a real browser, streaming, bad input.

One lab for the module (netns.scenarios.agentless with a second browser host
and an app that is down); timeouts are short so the slow-client cases end
quickly.  Every hostile case runs beside a legitimate user's long downloads on
``browser2`` (tests/lab/legit.py) and checks that they were never disturbed.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from gateway.agentless.auth import LocalPasswords
from gateway.agentless.cookies import Signer
from gateway.agentless.rewrite import SESSION_COOKIE
from gateway.agentless.users import UserStore
from legit import Legit, record
from netns import evidence, procs
from netns.lab import Lab, run_dir
from netns.scenarios.agent import APP, GW_PUBLIC, HR
from netns.scenarios.agentless import USERS, AgentlessScenario

HERE = Path(__file__).parent
DOWN, BAD = "down.mycompany.net", "bad.mycompany.net"
BIG = 16_000_000
PER_SOURCE = 24  # above the slowloris case's 20 connections


class Rig(AgentlessScenario):
    name = "agentless-test"
    extra_browsers = [("browser2", "198.51.100.31")]
    published = AgentlessScenario.published + [(DOWN, "password", 8443), (BAD, "password", 443)]
    # Nothing listens on down's port 8443; bad's upstream_ca is the lab CA, not the internal CA
    # that signed every app certificate, so its certificate must be refused.
    private_extra = "down IN A 192.168.1.20\nbad IN A 192.168.1.20\n"
    policy = {**AgentlessScenario.policy, "alice": [APP, DOWN, BAD]}

    def gateway_conf(self, lab):
        text = super().gateway_conf(lab)
        head, sep, tail = text.partition(f'name = "{BAD}"')
        return head + sep + tail.replace(f"{lab.pki_dir}/internal-ca.pem", f"{lab.pki_dir}/ca.pem", 1)
    agentless_extra = ("header_timeout = 2\nidle_timeout = 5\nbody_timeout = 2\nupstream_timeout = 3\n"
                       "login_user_limit = 5\nlogin_addr_limit = 40\nlogin_window = 60\n"
                       f"max_connections_per_source = {PER_SOURCE}\n")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    sc = Rig()
    lab = Lab(sc.name, sc.topology(), root=tmp_path_factory.mktemp("lab"))
    lab.up()
    try:
        sc.start(lab)
        lab.sc = sc
        lab.jar2 = str(lab.conf_dir / "legit-jar.txt")
        rc, out, err = sc.sign_in(lab, "alice", USERS["alice"], lab.jar2, host="browser2")
        assert rc == 0 and "(X-Ztna-User): alice" in out, (out, err)
        yield lab
    finally:
        lab.down()


def ca(lab) -> str:
    return str(lab.pki_dir / "ca.pem")


def signer(lab) -> Signer:
    return Signer((lab.conf_dir / "gateway-session.key").read_bytes())


def cookie_for(lab, user="alice", host=APP, now=None, ttl=3600) -> str:
    import time
    # A session names the user's credential version (a removed user's or an old password's ends).
    stamp = LocalPasswords(UserStore(lab.conf_dir / "gateway-users.json")).stamp(user) or ""
    token, _ = signer(lab).session(user, host, now or time.time(), ttl, stamp)
    return f"{SESSION_COOKIE}={token}"


def probe(lab, *args, host="browser", timeout=40, env=None) -> dict:
    r = lab.exec(host, [sys.executable, str(HERE / "agentless_probe.py"), ca(lab), *args], timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def legit(lab) -> Legit:
    """alice on browser2, downloading 16 MB at 8 MB/s again and again through the same gateway."""
    argv = ["curl", "-sS", "--max-time", "20", "--cacert", ca(lab), "-b", lab.jar2, "--limit-rate", "8M",
            "-o", "/dev/null", "-w", "%{http_code} %{size_download}", f"https://{APP}/bytes/{BIG}"]
    return Legit(lab, "browser2", argv, check=lambda rc, out: rc == 0 and out.strip() == f"200 {BIG}", timeout=25)


def access(lab) -> list[dict]:
    return evidence.json_lines(lab.sc.access_log(lab))


def gwlog(lab) -> str:
    return Path(lab.procs["gateway"].log).read_text(errors="replace")


def curl(lab, *args, host="browser", timeout=30):
    return lab.sc.curl(lab, *args, host=host, timeout=timeout)


# ---- the flow -----------------------------------------------------------------------
def test_every_step_of_the_flow_is_seen_in_the_captures(lab):
    # A fresh gateway and agent, so the private-DNS lookup and the tunnel's building show in the captures.
    lab.stop("gateway")
    lab.sc.start_gateway(lab)
    lab.stop("agent-client")
    lab.sc.start_agent(lab, "client", "alice")
    lab.capture_all(lab.sc.capture_extra)
    try:
        seen = lab.sc.drive(lab)
    finally:
        import time
        time.sleep(0.3)
        lab.stop_captures()
        lab.captures.clear()
    steps = lab.sc.verify(lab, seen)
    assert [s.ok for s in steps] == [True] * 8, "\n".join(f"{s.number} {s.ok} {s.text}: {s.evidence}" for s in steps)


def test_headless_chromium_signs_in_reloads_signs_out_and_is_refused(lab):
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.fail("chromium and chromium-driver are not installed: run scripts/install.sh")
    shots = run_dir() / "reports" / "agentless-chromium"
    shutil.rmtree(shots, ignore_errors=True)
    r = lab.exec("browser", [sys.executable, str(HERE / "browser_agentless.py"), ca(lab), str(shots), json.dumps(USERS)],
                 timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    got = json.loads(r.stdout)
    assert "error" not in got, got
    pages = {p["step"]: p for p in got["pages"]}
    assert pages["login"]["title"] == f"Sign in to {APP}" and pages["login"]["url"].endswith("/.ztna/login?next=/")
    for step in ("app", "reload"):
        assert pages[step]["url"] == f"https://{APP}/"
        assert "identity asserted by the gateway (X-Ztna-User): alice" in pages[step]["text"]
    assert "You are signed out." in pages["logout"]["text"]
    assert pages["after-logout"]["title"] == f"Sign in to {APP}"
    assert "403 Forbidden" in pages["forbidden"]["text"] and "'bob' is not allowed to reach app.mycompany.net" in pages["forbidden"]["text"]
    (c,) = [c for c in got["cookies"] if c["name"] == SESSION_COOKIE]
    assert c["secure"] and c["httpOnly"] and c["sameSite"] == "Lax" and c["path"] == "/" and c["domain"] == APP
    for p in got["pages"]:
        assert Path(p["screenshot"]).stat().st_size > 1000


# ---- HTTP: keep-alive, streaming, chunked, WebSocket, upstream failures ---------------------
def test_keep_alive_both_ways(lab):
    before = gwlog(lab).count(f"upstream {APP} ")
    rc, out, err = curl(lab, "-b", lab.jar2, "-o", "/dev/null", "-o", "/dev/null", "-w", "%{num_connects} ",
                        f"https://{APP}/", f"https://{APP}/headers", host="browser2")
    assert rc == 0 and out.split() == ["1", "0"], (out, err)
    assert gwlog(lab).count(f"upstream {APP} ") <= before + 1  # at most one new upstream connection for both


def test_bodies_stream_both_ways_in_bounded_memory(lab):
    gw = lab.procs["gateway"].pid
    rss0 = procs.rss_kib(gw)
    size = 64_000_000
    r = lab.exec("browser2", ["sh", "-c", f"head -c {size} /dev/urandom > /tmp/ztna-up && sha256sum /tmp/ztna-up"])
    digest = r.stdout.split()[0].decode()
    for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
        rc, out, err = curl(lab, "-b", lab.jar2, *extra, "-T", "/tmp/ztna-up", "-X", "POST", f"https://{APP}/upload",
                            host="browser2", timeout=60)
        assert rc == 0, err
        assert json.loads(out) == {"bytes": size, "sha256": digest, "identity": "alice"}
        line = [r for r in access(lab) if r["path"] == "/upload"][-1]
        assert line["status"] == 200 and line["bytes_in"] >= size and line["upstream_ms"] is not None
    rc, out, err = curl(lab, "-b", lab.jar2, "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                        f"https://{APP}/bytes/256000000", host="browser2", timeout=60)
    assert rc == 0 and out == "200 256000000", err
    rc, out, err = curl(lab, "-b", lab.jar2, "-D", "-", "-o", "/dev/null", "-w", "%{size_download}",
                        f"https://{APP}/chunked/5000000", host="browser2")
    assert rc == 0 and "transfer-encoding: chunked" in out.lower() and out.endswith("5000000")
    grown = procs.rss_kib(gw) - rss0
    # 128 MB up and 261 MB down went through; the gateway held a few pieces of 64 KiB at a time.
    assert grown < 40_000, f"gateway RSS grew by {grown} KiB"
    lab.exec("browser2", ["rm", "-f", "/tmp/ztna-up"])


def test_websocket_is_relayed_both_ways(lab):
    got = probe(lab, "websocket", cookie_for(lab))
    assert got["status"] == 101 and got["echoes"] == [True, True], got


def test_a_slow_app_gets_504_and_an_app_that_is_down_502(lab):
    rc, out, _ = curl(lab, "-H", f"Cookie: {cookie_for(lab)}", "-w", "%{http_code}", "-o", "/dev/null", f"https://{APP}/slow/6")
    assert out == "504"
    assert any(r["status"] == 504 and r["path"] == "/slow/6" for r in access(lab))
    rc, out, _ = curl(lab, "-H", f"Cookie: {cookie_for(lab, host=DOWN)}", "-w", "\n%{http_code}", f"https://{DOWN}/")
    assert out.endswith("502") and "cannot connect to down.mycompany.net (192.168.1.20:8443)" in out


def test_an_app_whose_certificate_does_not_chain_to_its_upstream_ca_gets_502(lab):
    rc, out, _ = curl(lab, "-H", f"Cookie: {cookie_for(lab, host=BAD)}", "-w", "\n%{http_code}", f"https://{BAD}/")
    assert out.endswith("502") and "certificate is not trusted" in out, out[-300:]
    assert "bad.mycompany.net's certificate is not trusted" in gwlog(lab)


def test_a_kept_alive_connection_is_closed_after_the_idle_timeout(lab):
    got = probe(lab, "idle", cookie_for(lab))
    assert got["status"] == 200 and got["closed_after"] is not None and 4 < got["closed_after"] < 8, got
    assert "idle for 5s, closed" in gwlog(lab)


def test_client_certificate_app(lab):
    rc, out, _ = curl(lab, "--cert", str(lab.pki_dir / "carol.pem"), "--key", str(lab.pki_dir / "carol.key"), f"https://{HR}/")
    assert rc == 0 and "(X-Ztna-User): carol" in out
    rc, out, _ = curl(lab, "-w", "\n%{http_code}", f"https://{HR}/")
    assert out.endswith("403") and "no client certificate" in out


# ---- bad input, each beside the legitimate user's downloads -------------------------------
def _refused_cookie(lab, case, cookie, why, n=20):
    with legit(lab) as user:
        got = [curl(lab, "-H", f"Cookie: {cookie}", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                    f"https://{APP}/secret")[1] for _ in range(n)]
    assert all(g.startswith("302 ") and "/.ztna/login?next=/secret" in g for g in got), got
    assert sum(1 for r in access(lab) if r["path"] == "/secret" and why in (r["reason"] or "")) >= n
    user.assert_clean()
    record(case, n, f"302 to sign-in, logged '{why}'", user)


def test_a_logged_out_cookie_stays_refused_after_a_gateway_restart(lab):
    jar = str(lab.conf_dir / "logout-jar.txt")
    rc, out, err = lab.sc.sign_in(lab, "alice", USERS["alice"], jar)
    assert rc == 0 and "(X-Ztna-User): alice" in out, (out, err)
    (token,) = [line.split("\t")[-1] for line in Path(jar).read_text().splitlines() if f"\t{SESSION_COOKIE}\t" in line]
    rc, out, _ = curl(lab, "-b", jar, "-o", "/dev/null", "-w", "%{http_code}", f"https://{APP}/.ztna/logout")
    assert out == "303", out
    lab.stop("gateway")  # what ended at logout must not come back with a fresh process
    lab.sc.start_gateway(lab)
    assert re.search(r"sessions ended by logout: [1-9][0-9]* still unexpired", gwlog(lab)), gwlog(lab)[-2000:]
    _refused_cookie(lab, "cookie replayed after logout and a gateway restart", f"{SESSION_COOKIE}={token}",
                    "ended by logout", n=3)


def test_forged_cookie(lab):
    name, _, token = cookie_for(lab).partition("=")
    body, mac = token.split(".")
    forged = body.replace(body[10], "A" if body[10] != "A" else "B", 1) + "." + mac
    _refused_cookie(lab, "forged session cookie", f"{name}={forged}", "tampered")


def test_expired_cookie(lab):
    import time
    _refused_cookie(lab, "expired session cookie", cookie_for(lab, now=time.time() - 7200, ttl=3600), "expired")


def test_cookie_for_another_app(lab):
    _refused_cookie(lab, "cookie for another app", cookie_for(lab, host=HR), "other-app")


def test_password_guessing_burst_is_rate_limited(lab):
    n = 12
    with legit(lab) as user:
        got = [lab.sc.sign_in(lab, "bob", f"guess-{i}", str(lab.conf_dir / f"guess-{i}.txt"))[1] for i in range(n)]
    assert all("Wrong user name or password." in g for g in got[:5]), got[:5]
    assert all("Too many failed sign-ins for this user" in g for g in got[5:]), got[5:]
    rc, out, _ = lab.sc.sign_in(lab, "bob", USERS["bob"], str(lab.conf_dir / "bob-right.txt"))
    assert "Too many failed sign-ins" in out  # the right password waits too, until the window passes
    assert sum(1 for r in access(lab) if r["decision"] == "rate-limited") >= n - 5
    user.assert_clean()
    record("password-guessing burst (bob)", n + 1, "5 x 401, then 429 with Retry-After", user)


def test_missing_and_unknown_sni_get_unrecognized_name(lab):
    n = 10
    with legit(lab) as user:
        none = [lab.exec("browser", ["openssl", "s_client", "-connect", f"{GW_PUBLIC}:443", "-noservername"],
                         timeout=15) for _ in range(n)]
        unknown = [curl(lab, "--resolve", f"evil.example.com:443:{GW_PUBLIC}", "https://evil.example.com/") for _ in range(n)]
    assert all(b"unrecognized name" in r.stderr for r in none), none[0].stderr
    assert all(u[0] == 35 and "unrecognized name" in u[2] for u in unknown), unknown[0]
    log = gwlog(lab)
    assert log.count("ClientHello has no SNI") >= n and log.count("SNI evil.example.com is neither") >= n
    user.assert_clean()
    record("missing SNI / unknown SNI", 2 * n, "TLS alert unrecognized_name (112), logged", user)


def test_one_address_holding_its_connection_bound_is_refused_and_others_are_not(lab):
    with legit(lab) as user:
        got = probe(lab, "hold", str(PER_SOURCE))
    assert got["while_held"].startswith("refused") and "internal error" in got["while_held"], got
    assert got["after"] == "accepted", got  # the bound is on connections held, not a ban
    assert f"{PER_SOURCE} browser connections from 198.51.100.30 already (max_connections_per_source)" in gwlog(lab)
    user.assert_clean()
    record(f"one address holds {PER_SOURCE} half-open connections", PER_SOURCE + 2,
           "the next gets TLS alert internal_error, logged; accepted again once they close", user)


def test_header_floods_get_431_and_close(lab):
    many = "GET / HTTP/1.1\\r\\nHost: app.mycompany.net\\r\\n" + "X-Flood: 1\\r\\n" * 150 + "\\r\\n"
    huge = "GET / HTTP/1.1\\r\\nHost: app.mycompany.net\\r\\nX-Big: " + "a" * 20000 + "\\r\\n\\r\\n"
    with legit(lab) as user:
        got = [probe(lab, "raw", raw) for raw in (many, huge) for _ in range(5)]
    assert all(g["status"] == 431 and g["closed_after"] is not None for g in got), got
    user.assert_clean()
    record("header floods (150 fields, 20 kB field)", len(got), "431, connection closed", user)


def test_slowloris_is_cut_off_at_the_header_timeout(lab):
    with legit(lab) as user:
        got = probe(lab, "slowloris", "20")["results"]
    assert all(r and r["status"] == 408 and r["after"] < 5 for r in got), got
    user.assert_clean()
    record("slowloris (20 connections)", 20, "408 after the 2 s header timeout", user)


def test_a_client_stalling_mid_body_is_cut_off(lab):
    with legit(lab) as user:
        got = [probe(lab, "stall", cookie_for(lab)) for _ in range(3)]
    assert all(g["closed_after"] is not None and g["closed_after"] < 6 for g in got), got
    assert gwlog(lab).count("request body stalled for 2s") >= 3
    user.assert_clean()
    record("client stalls mid-body (3)", 3, "both connections closed after the 2 s body timeout", user)


_SMUGGLED = "GET /smuggled HTTP/1.1\r\nHost: app.mycompany.net\r\nX-Ztna-User: admin\r\n\r\n"


@pytest.mark.parametrize("raw,why", [
    ("POST / HTTP/1.1\\r\\nHost: app.mycompany.net\\r\\nContent-Length: 5\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n"
     "0\\r\\n\\r\\nGET /smuggled HTTP/1.1\\r\\nHost: app.mycompany.net\\r\\n\\r\\n", "both Transfer-Encoding and Content-Length"),
    ("POST / HTTP/1.1\\r\\nHost: app.mycompany.net\\r\\nContent-Length: 5, 6\\r\\n\\r\\nhello", "bad Content-Length"),
    ("POST / HTTP/1.1\\r\\nHost: app.mycompany.net\\r\\nContent-Length: -1\\r\\n\\r\\n", "bad Content-Length"),
    ("POST / HTTP/1.1\\r\\nHost: app.mycompany.net\\r\\nTransfer-Encoding: chunked, identity\\r\\n\\r\\n", "does not end in chunked"),
    ("GET / HTTP/1.1\\r\\nHost: app.mycompany.net\\r\\nX-A: 1\\r\\n folded\\r\\n\\r\\n", "obsolete line folding"),
    # Signed in: were Content-Length dropped as hop-by-hop, the app would read the body as a request of its own.
    ("POST /conn-smuggle HTTP/1.1\\r\\nHost: app.mycompany.net\\r\\nCookie: {cookie}\\r\\n"
     "Connection: keep-alive, content-length\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(_SMUGGLED), _SMUGGLED.replace("\r\n", "\\r\\n")),
     "Connection names content-length"),
])
def test_smuggling_attempts_get_400_and_close(lab, raw, why):
    with legit(lab) as user:
        got = [probe(lab, "raw", raw, env={"COOKIE": cookie_for(lab)}) for _ in range(3)]
    assert all(g["status"] == 400 and g["closed_after"] is not None and g["responses"] == 1 for g in got), got
    assert why in gwlog(lab)
    assert not any(r.get("path") == "/smuggled" for r in access(lab))
    app_log = Path(lab.procs["web-app"].log).read_text(errors="replace")
    assert "/smuggled" not in app_log and "/conn-smuggle" not in app_log  # the app received nothing
    user.assert_clean()
    record(f"smuggling: {why}", 3, "400, connection closed, nothing reached the app", user)


def test_host_that_is_not_the_sni_gets_421(lab):
    with legit(lab) as user:
        got = [probe(lab, "raw", f"GET / HTTP/1.1\\r\\nHost: {h}\\r\\n\\r\\n") for h in (HR, "evil.example.com", f"{APP}:444")]
    assert all(g["status"] == 421 for g in got), got
    user.assert_clean()
    record("Host is not the SNI", 3, "421 Misdirected Request", user)
