"""The hostile campaign against the forward proxy (issue 19): CONNECT and SNI variants, garbage, slow clients.

Each case runs its probe (tests/lab/rogue_proxy.py) while a legitimate user's
loop fetches a spliced and a decrypted page through the same proxy
(tests/lab/legit.py), and asserts both the refusal and that the user saw no
failure.  Probes are bounded in count and time.
"""

import json
import sys
from pathlib import Path

import pytest

import legit
from legit import Legit
from netns import evidence, procs
from netns.scenarios import proxy as sc

pytestmark = pytest.mark.lab

ROGUE = str(Path(__file__).with_name("rogue_proxy.py"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with sc.both_proxies("proxy-hostile", tmp_path_factory.mktemp("run")) as lab:
        sc.curl(lab, f"https://{sc.BANK}/", explicit=True)  # writes the client's trust bundle
        yield lab


def user(lab, port=sc.EXPLICIT_PORT):
    """A legitimate user: one spliced and one decrypted page through the proxy on ``port``, again and again."""
    bundle = lab.pki_dir / "client-trust.pem"
    fetch = " && ".join(f"curl -sS --max-time 10 --cacert {bundle} --proxy http://{sc.PROXY_IN}:{port} https://{n}/"
                        for n in (sc.BANK, sc.DECRYPT))
    return Legit(lab, "client", ["sh", "-c", fetch],
                 check=lambda rc, out: rc == 0 and out.count("hello from") == 2)


def rogue(lab, *args, port=sc.EXPLICIT_PORT, timeout=60):
    r = lab.exec("client", [sys.executable, ROGUE, sc.PROXY_IN, str(port), str(lab.pki_dir / "client-trust.pem"),
                            *map(str, args)], timeout=timeout)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return json.loads(r.stdout)


def log_lines(lab, name="proxy"):
    return evidence.json_lines(lab.log_dir / f"{name}.log")


def wait_lines(lab, before, pred, n, name="proxy"):
    """The ``n`` log lines after the first ``before`` that match ``pred`` (lines go out in batches)."""
    found = []

    def enough():
        found[:] = [r for r in log_lines(lab, name)[before:] if pred(r)]
        return len(found) >= n

    procs.wait_until(enough, timeout=5, what=f"{n} matching lines in {name}.log")
    return found


ALERT_ACCESS_DENIED = "TLSV1_ALERT_ACCESS_DENIED"


@pytest.mark.parametrize("case,name,sni,decision", [
    # The bypass of issue 19: a do-not-decrypt CONNECT, then a hello for a blocked site.
    ("CONNECT no-decrypt name, SNI of a blocked site", sc.BANK, sc.BLOCKED, "deny"),
    ("CONNECT no-decrypt name, SNI of another allowed site", sc.BANK, sc.DECRYPT, "deny"),
    ("CONNECT no-decrypt name, no SNI", sc.BANK, "-", "deny"),
    ("CONNECT decrypted name, SNI of a blocked site", sc.DECRYPT, sc.BLOCKED, "deny"),
])
def test_connect_then_another_sni_is_refused(lab, case, name, sni, decision):
    n = 5
    before = len(log_lines(lab))
    with user(lab) as u:
        res = rogue(lab, "connect", name, sni, n)
    assert [r["status"] for r in res] == ["HTTP/1.1 200 Connection established"] * n
    assert [r["tls"] for r in res] == [ALERT_ACCESS_DENIED] * n, res
    assert not any("page" in r for r in res)  # the site behind the other name was never reached
    refused = wait_lines(lab, before, lambda r: r["name"] == name and r["decision"] == decision, n)
    assert len(refused) == n, refused
    assert all(r["sni"] == (None if sni == "-" else sni) for r in refused)
    u.assert_clean()
    legit.record(f"proxy: {case}", n, f"alert access_denied, logged {decision} with the SNI", u)


def test_connect_then_the_same_name_in_other_case_is_spliced(lab):
    with user(lab) as u:
        res = rogue(lab, "connect", sc.BANK, sc.BANK.upper(), 3)
    assert all(r["tls"] == "ok" and r["page"].lower().startswith(f"hello from {sc.BANK}") for r in res), res
    u.assert_clean()
    legit.record("proxy: CONNECT and SNI equal but for case (allowed)", 3, "spliced, page served", u)


def test_connect_then_bytes_that_are_not_tls_are_closed(lab):
    before = len(log_lines(lab))
    plain = f"GET / HTTP/1.1\r\nHost: {sc.BLOCKED}\r\n\r\n".encode().hex()
    with user(lab) as u:
        res = rogue(lab, "connect-raw", sc.BANK, plain, 5)
    assert all(r["status"].startswith("HTTP/1.1 200") and r["back"] == "" and r["end"] == "closed" for r in res), res
    refused = wait_lines(lab, before, lambda r: r.get("unnamed") == "not-tls" and r["decision"] == "deny", 5)
    assert len(refused) == 5
    u.assert_clean()
    legit.record("proxy: CONNECT no-decrypt name, then plain HTTP", 5, "closed, logged deny not-tls", u)


@pytest.mark.parametrize("case,name,status", [
    ("CONNECT a blocked name", sc.BLOCKED, "403"),
    ("CONNECT an address", sc.WEB, "403"),
    ("CONNECT a name with a control byte", "bank.example.com\x01", "400"),
])
def test_connect_refused_at_the_head(lab, case, name, status):
    with user(lab) as u:
        res = rogue(lab, "connect", name, "-", 5)
    assert all(r["status"].split(" ")[1] == status for r in res), res
    u.assert_clean()
    legit.record(f"proxy: {case}", 5, status, u)


def test_transparent_blocked_sni_gets_the_block_page_and_unnamed_hellos_an_alert(lab):
    with user(lab) as u:
        blocked = rogue(lab, "transparent", sc.WEB, sc.BLOCKED, 5)
        bare = rogue(lab, "transparent", sc.WEB, "-", 5)
    # blocked.example.com would be decrypted: the client sees the block page over a proxy-CA certificate
    assert all(r["tls"] == "ok" and "blocked" in r["page"].lower() for r in blocked), blocked
    assert all(r["tls"] == ALERT_ACCESS_DENIED for r in bare), bare
    u.assert_clean()
    legit.record("proxy (transparent): SNI of a blocked site", 5, "block page", u)
    legit.record("proxy (transparent): no SNI", 5, "alert access_denied", u)


def test_garbage_gets_400_or_a_close(lab):
    with user(lab) as u:
        res = rogue(lab, "garbage", 40)
    assert sum(res.values()) == 40 and set(res) <= {"HTTP/1.1 400 Bad Request", "(closed)"}, res
    u.assert_clean()
    legit.record("proxy: random bytes", 40, ", ".join(f"{v}x {k}" for k, v in sorted(res.items())), u)


def test_slowloris_heads_are_cut_off_at_the_deadline(lab):
    with user(lab) as u:
        res = rogue(lab, "slowloris", 30, 10)
    assert res["answered"] == res["of"] == 30 and res["answers"] == {"HTTP/1.1 408 Request Timeout": 30}, res
    assert res["first_after"] >= 2.5, res  # the lab's 3 s deadline, not an early refusal
    u.assert_clean()
    legit.record("proxy: slowloris request heads", 30, "408 at the 3 s deadline", u)


def test_stalled_hellos_get_an_alert_at_the_deadline(lab):
    with user(lab) as u:
        res = rogue(lab, "stalled", 30, 10)
    assert res["answers"] == {"15030300020228 closed": 30}, res  # handshake_failure, then the close
    assert res["after"] >= 2.5, res
    u.assert_clean()
    legit.record("proxy: ClientHello stalled half-way after CONNECT", 30, "alert handshake_failure at 3 s", u)
