"""Operations against running services in the sealed lab (issue 20): live reload, the QUIC rule.

Every change is made while a legitimate user's loop (tests/lab/legit.py) runs,
and that user must never fail.
"""

import json
import sys
import textwrap

import pytest

from netns import procs
from netns.scenarios import proxy as sc
from tests.lab.legit import Legit

pytestmark = pytest.mark.lab

RELOAD_PORT = 3150


@pytest.fixture(scope="module")
def plab(tmp_path_factory):
    with sc.both_proxies("proxy-ops-test", tmp_path_factory.mktemp("run")) as lab:
        yield lab


def jlines(path):
    return [json.loads(x) for x in path.read_text(errors="replace").splitlines() if x.startswith("{")]


def curl_argv(lab, url, port):
    bundle = lab.pki_dir / "client-trust.pem"
    if not bundle.exists():
        bundle.write_bytes((lab.pki_dir / "ca.pem").read_bytes() + (lab.pki_dir / "proxy-ca.pem").read_bytes())
    return ["curl", "-sS", "--max-time", "10", "--cacert", str(bundle), "--proxy", f"http://{sc.PROXY_IN}:{port}", url]


def reload_proxy(lab, run_dir):
    r = lab.exec("proxy", procs.ztna_argv("proxy", "reload", "--run-dir", str(run_dir)), timeout=30)
    return r.returncode, r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


def test_proxy_reload_takes_a_new_policy_and_refuses_broken_files(plab):
    lab = plab
    run_dir = lab.root / "run-preload"
    conf = lab.write_conf("preload.toml", sc.proxy_toml(lab, mode="explicit", port=RELOAD_PORT))
    p = lab.start("proxy", procs.ztna_argv("proxy", "run", "--config", str(conf), "--run-dir", str(run_dir)),
                  name="preload")
    procs.wait_listening(p, sc.PROXY_IN, RELOAD_PORT)
    procs.wait_until(lambda: (run_dir / "proxy.json").exists(), what="the proxy's state file")
    assert int((run_dir / "proxy.pid").read_text()) == p.pid

    # A spliced tunnel to bank.example.com, held open across the reload; it prints how it ended.
    holder = lab.write_conf("hold-bank.py", textwrap.dedent(f"""
        import socket, ssl, time
        s = socket.create_connection(("{sc.PROXY_IN}", {RELOAD_PORT}), timeout=30)
        s.sendall(b"CONNECT bank.example.com:443 HTTP/1.1\\r\\nHost: bank.example.com:443\\r\\n\\r\\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        ctx = ssl.create_default_context(cafile="{lab.pki_dir / 'ca.pem'}")
        t = ctx.wrap_socket(s, server_hostname="bank.example.com")
        print("open", flush=True)
        t0 = time.monotonic()
        try:
            end = "eof" if t.recv(100) == b"" else "data"
        except (OSError, ssl.SSLError) as exc:
            end = type(exc).__name__
        print("ended", end, round(time.monotonic() - t0, 1), flush=True)
    """))
    lab.start("client", [sys.executable, str(holder)], name="hold-bank")
    procs.wait_until(lambda: "open" in (lab.log_dir / "hold-bank.log").read_text(), what="the held tunnel")

    good = curl_argv(lab, "https://decrypt.example.com/", RELOAD_PORT)
    with Legit(lab, "client", good, check=lambda rc, out: rc == 0 and "hello from decrypt.example.com" in out) as user:
        # 1. a new policy: bank.example.com taken off (denied)
        conf.write_text(conf.read_text().replace('deny = ["blocked.example.com"]',
                                                 'deny = ["blocked.example.com", "bank.example.com"]'))
        rc, out = reload_proxy(lab, run_dir)
        assert rc == 0 and "reloaded" in out and "+bank.example.com" in out, out
        r = lab.exec("client", curl_argv(lab, "https://bank.example.com/", RELOAD_PORT) + ["-v"])
        assert r.returncode != 0 and b"403" in r.stderr, r.stderr[-600:]
        procs.wait_until(lambda: "ended" in (lab.log_dir / "hold-bank.log").read_text(),
                         what="the tunnel to the denied name to end")
        assert "ended data" not in (lab.log_dir / "hold-bank.log").read_text()
        ended = [x for x in jlines(lab.log_dir / "preload.log")
                 if x.get("name") == "bank.example.com" and "policy reloaded" in str(x.get("error"))]
        assert ended and "matches deny bank.example.com" in ended[0]["error"], ended

        # 2. broken files: each refused with file, line and reason; the running policy stays
        good_text = conf.read_text()
        lines = good_text.splitlines()
        broken = {
            "syntax": (lines[:3] + ["listen = = 1"] + lines[3:], 4, "not valid TOML"),
            "unknown key": (lines[:3] + ["colour = 'blue'"] + lines[3:], 4, "colour"),
            "bad pattern": ([x.replace('allow = ["*.example.com"]', 'allow = ["*.example.com", "bad..name"]')
                             for x in lines], lines.index('allow = ["*.example.com"]') + 1, "bad..name"),
            "restart-only": ([x.replace(f":{RELOAD_PORT}", f":{RELOAD_PORT + 1}") for x in lines], None, "listen changed"),
        }
        for case, (text, line, reason) in broken.items():
            conf.write_text("\n".join(text) + "\n")
            rc, out = reload_proxy(lab, run_dir)
            assert rc == 1 and "reload refused" in out and reason in out, (case, out)
            if line:
                assert f"preload.toml:{line}:" in out, (case, out)
            r = lab.exec("client", curl_argv(lab, "https://bank.example.com/", RELOAD_PORT) + ["-v"])
            assert b"403" in r.stderr, (case, r.stderr[-400:])  # still the reloaded policy
        conf.write_text(good_text)
        assert "reload refused" in (lab.log_dir / "preload.log").read_text()
    user.assert_clean()
    assert p.alive()
    st = json.loads((run_dir / "proxy.json").read_text())
    assert st["reloads"] == 5 and st["last_reload"]["ok"] is False
    lab.stop("preload")
    assert not (run_dir / "proxy.json").exists() and not (run_dir / "proxy.pid").exists()
