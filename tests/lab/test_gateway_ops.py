"""Operations on a running gateway (issue 20): revoking a certificate, reloading the policy.

alice (client) and bob (client2) run agents; the gateway enforces a CRL and
writes its state files into a run folder.  The reload test comes first: the
revocation test revokes alice for the rest of the module.
"""

import re
import sys
import time
from pathlib import Path

import pytest

from netns import procs
from netns.lab import started
from netns.scenarios.agent import APP, HR, AgentScenario
from tests.lab.legit import Legit
from ztna import crl, pki

pytestmark = pytest.mark.lab

METRICS = "192.168.1.1:9190"  # the gateway's LAN side; scraped from privdns
AGENT_METRICS = "127.0.0.1:9191"  # each agent's loopback; scraped from inside its host
ROGUE = str(Path(__file__).with_name("rogue.py"))
BIG = 200_000_000  # bytes: at --limit-rate 300k, a download of many minutes


class GatewayOps(AgentScenario):
    name = "gateway-ops"
    clients = [("client", "198.51.100.10", "alice"), ("client2", "198.51.100.11", "bob")]
    policy = {"alice": [APP, HR], "bob": [HR]}

    def gateway_conf(self, lab):
        return (super().gateway_conf(lab).replace("[policy]", f'crl = "{lab.pki_dir}/crl.pem"\n\n[policy]')
                + f'\n[metrics]\nlisten = "{METRICS}"\n')

    def agent_conf(self, lab, host, ident):
        path = super().agent_conf(lab, host, ident)
        path.write_text(path.read_text() + f'\n[metrics]\nlisten = "{AGENT_METRICS}"\n')
        return path

    def start_gateway(self, lab):
        path = lab.pki_dir / "crl.pem"
        if not path.exists():
            pki.write_pem(path, crl.render(lab.ca(), {}, now=pki.utcnow()), private=False)
        conf = lab.write_conf("gateway.toml", self.gateway_conf(lab))
        p = lab.start("gateway", procs.ztna_argv("gateway", "run", "--config", str(conf), "--run-dir",
                                                 str(lab.root / "run-gw")), name="gateway")
        procs.wait_listening(p, "203.0.113.20", 443)
        return p


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with started(GatewayOps(), tmp_path_factory.mktemp("gwops")) as lab:
        yield lab


def log(lab, name):
    return Path(lab.procs[name].log).read_text(errors="replace")


def curl(lab, host, url, *extra):
    return ["curl", "-sS", "--max-time", "10", "--cacert", str(lab.pki_dir / "ca.pem"), *extra, url]


def served(name):
    return lambda rc, out: rc == 0 and f"hello from {name} over https" in out


def session_of(lab, ident):
    """The id of ``ident``'s newest gateway session."""
    ids = re.findall(rf"session (\d+) from \S+: identity {ident} ", log(lab, "gateway"))
    assert ids, f"no session of {ident} in the gateway's log"
    return ids[-1]


def flow_lines(lab, ident, app):
    return len(re.findall(rf"flow session \d+ {ident} tcp :\d+ -> {re.escape(app)} => ", log(lab, "gateway")))


def download(lab, name, url):
    """A long download on alice's machine; its log ends with curl's exit and the bytes it got."""
    script = lab.write_conf(f"{name}.sh", (
        f"curl -sS -o /dev/null -w 'got %{{size_download}}\\n' --limit-rate 300k --speed-limit 1 --speed-time 3 "
        f"--max-time 120 --cacert {lab.pki_dir / 'ca.pem'} {url}\necho \"rc $?\"\n"))
    return lab.start("client", ["sh", str(script)], name=name)


def ended(lab, name):
    text = (lab.log_dir / f"{name}.log").read_text()
    m = re.search(r"got (\d+)\s+rc (\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def reload_gw(lab):
    r = lab.exec("gateway", procs.ztna_argv("gateway", "reload", "--run-dir", str(lab.root / "run-gw")), timeout=30)
    return r.returncode, r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


def scrape(lab, host="privdns", where=METRICS):
    """GET /metrics with curl from ``host``: {(name, labels text): value}."""
    r = lab.exec(host, ["curl", "-sS", "--max-time", "5", f"http://{where}/metrics"])
    assert r.returncode == 0, r.stderr.decode()
    out = {}
    for line in r.stdout.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            name, _, labels = key.partition("{")
            out[(name, labels.rstrip("}"))] = float(value)
    return out


def test_metrics_count_sessions_leases_bytes_refusals_and_handshake_failures(lab):
    before = scrape(lab)
    fails = log(lab, "gateway").count("no client certificate presented")
    assert lab.exec("client2", curl(lab, "client2", f"https://{HR}/")).returncode == 0
    assert lab.exec("client2", curl(lab, "client2", f"https://{APP}/")).returncode == 7  # bob may not: lease denied
    r = lab.exec("client", [sys.executable, ROGUE, "tls", "203.0.113.20", "443", str(lab.pki_dir / "ca.pem"), "-", "-"])
    assert r.returncode == 0, r.stderr
    procs.wait_until(lambda: log(lab, "gateway").count("no client certificate presented") > fails,
                     what="the failed handshake")
    after = scrape(lab)
    delta = lambda k, labels="": after.get((k, labels), 0) - before.get((k, labels), 0)
    print(f"\nmetrics after: sessions {after[('ztna_gateway_sessions', '')]}, leases {after[('ztna_gateway_leases', '')]}")
    assert after[("ztna_gateway_sessions", "")] >= 1 and after[("ztna_gateway_leases", "")] >= 1
    assert delta("ztna_gateway_bytes_total", 'direction="in"') > 0
    assert delta("ztna_gateway_bytes_total", 'direction="out"') > 0
    assert delta("ztna_gateway_refusals_total", 'reason="lease-denied"') == 1
    assert delta("ztna_gateway_handshake_failures_total") == 1
    assert ("ztna_gateway_queue_drops_total", "") in after


def test_agent_metrics_count_dns_leases_bytes_and_refusals(lab):
    before = scrape(lab, "client", AGENT_METRICS)
    assert lab.exec("client", curl(lab, "client", f"https://{APP}/")).returncode == 0
    assert lab.exec("client", curl(lab, "client", "https://100.64.9.9/", "--connect-timeout", "5")).returncode == 7
    after = scrape(lab, "client", AGENT_METRICS)
    delta = lambda k, labels="": after.get((k, labels), 0) - before.get((k, labels), 0)
    assert after[("ztna_agent_tunnel_up", "")] == 1 and after[("ztna_agent_leases", "")] >= 1
    assert delta("ztna_agent_dns_queries_total", 'verdict="leased"') >= 1
    assert delta("ztna_agent_bytes_total", 'direction="in"') > 0 and delta("ztna_agent_bytes_total", 'direction="out"') > 0
    assert delta("ztna_agent_refusals_total", 'reason="not-leased-or-denied"') >= 1
    assert ("ztna_agent_handshake_failures_total", "") in after and ("ztna_agent_queue_drops_total", "") in after


def test_reload_withdraws_a_removed_permission_keeps_the_rest_and_refuses_broken_files(lab):
    conf = lab.conf_dir / "gateway.toml"
    good_text = conf.read_text()
    assert lab.exec("client", curl(lab, "client", f"https://{HR}/")).returncode == 0
    assert lab.exec("client2", curl(lab, "client2", f"https://{HR}/")).returncode == 0  # bob's tunnel is up
    flows = flow_lines(lab, "alice", HR)
    dl = download(lab, "alice-hr", f"https://{HR}/chunked/{BIG}")
    procs.wait_until(lambda: flow_lines(lab, "alice", HR) > flows, what="alice's download flow at the gateway")
    alice_sid, bob_sid = session_of(lab, "alice"), session_of(lab, "bob")
    with Legit(lab, "client2", curl(lab, "client2", f"https://{HR}/"), check=served(HR)) as bob, \
            Legit(lab, "client", curl(lab, "client", f"https://{APP}/"), check=served(APP)) as alice_app:
        conf.write_text(good_text.replace(f'alice = ["{APP}", "{HR}"]', f'alice = ["{APP}"]'))
        t0 = time.monotonic()
        rc, out = reload_gw(lab)
        assert rc == 0 and "reloaded" in out and f"[policy] alice: -{HR}" in out and "1 lease(s) withdrawn" in out, out
        procs.wait_until(lambda: ended(lab, "alice-hr") is not None, timeout=20, what="alice's download to end")
        print(f"\nreload -> alice's download of {HR} ended: {time.monotonic() - t0:.2f} s; {ended(lab, 'alice-hr')}")
        got, code = ended(lab, "alice-hr")
        assert code != 0 and got < BIG
        assert f"lease {HR}" in log(lab, "gateway") and "withdrawn by the reloaded policy" in log(lab, "gateway")
        assert "denied by the gateway: policy reloaded" in log(lab, "agent-client")
        r = lab.exec("client", curl(lab, "client", f"https://{HR}/"))
        assert r.returncode == 7, r.stderr  # refused by the agent at once (RST), the gateway said no

        # broken files: each refused with file, line and reason; the policy in force stays
        lines = conf.read_text().splitlines()
        pol = lines.index(f'alice = ["{APP}"]')
        broken = {
            "syntax": (lines[:pol] + ["bob = = 1"] + lines[pol:], pol + 1, "not valid TOML"),
            "bad pattern": (lines[:pol] + ['carol = ["bad..name"]'] + lines[pol:], pol + 1, "bad..name"),
            "unknown key": (lines[:2] + ["colour = 'blue'"] + lines[2:], 3, "colour"),
            "restart-only": ([x.replace("port = 443", "port = 8443") for x in lines], None, "port changed"),
        }
        for case, (text, line, reason) in broken.items():
            conf.write_text("\n".join(text) + "\n")
            rc, out = reload_gw(lab)
            assert rc == 1 and "reload refused" in out and reason in out, (case, out)
            if line:
                assert f"gateway.toml:{line}:" in out, (case, out)
        r = lab.exec("client", curl(lab, "client", f"https://{HR}/"))
        assert r.returncode == 7  # still the reloaded policy
    bob.assert_clean()
    alice_app.assert_clean()
    assert session_of(lab, "alice") == alice_sid and session_of(lab, "bob") == bob_sid  # no session was restarted
    g = log(lab, "gateway")
    assert f"session {alice_sid} alice closed" not in g and f"session {bob_sid} bob closed" not in g
    conf.write_text(good_text)
    rc, out = reload_gw(lab)
    assert rc == 0 and f"[policy] alice: +{HR}" in out, out
    assert not dl.alive()


def test_revoking_alice_ends_her_live_session_refuses_her_reconnects_and_leaves_bob_alone(lab):
    flows = flow_lines(lab, "alice", APP)
    dl = download(lab, "alice-app", f"https://{APP}/chunked/{BIG}")
    procs.wait_until(lambda: flow_lines(lab, "alice", APP) > flows, what="alice's download flow")
    time.sleep(1.0)  # bytes are flowing
    assert dl.alive()
    alice_sid, bob_sid = session_of(lab, "alice"), session_of(lab, "bob")
    with Legit(lab, "client2", curl(lab, "client2", f"https://{HR}/"), check=served(HR)) as bob:
        t0 = time.monotonic()
        r = lab.exec("gateway", procs.ztna_argv("pki", "revoke", "--dir", str(lab.pki_dir), "alice"))
        assert r.returncode == 0 and b"revoked alice" in r.stdout, r.stderr
        procs.wait_until(lambda: f"session {alice_sid} alice: ended: certificate revoked" in log(lab, "gateway"),
                         what="the gateway to end alice's session")
        t_end = time.monotonic() - t0
        procs.wait_until(lambda: ended(lab, "alice-app") is not None, timeout=20, what="alice's download to end")
        print(f"\nrevoke -> gateway ended alice's session: {t_end:.2f} s; -> her download ended: "
              f"{time.monotonic() - t0:.2f} s; {ended(lab, 'alice-app')}")
        got, code = ended(lab, "alice-app")
        assert code != 0 and got < BIG
        # Reconnects are refused, and the agent says why.
        r = lab.exec("client", curl(lab, "client", f"https://{APP}/"))
        assert r.returncode != 0
        procs.wait_until(lambda: re.search(r"refused TLS from \S+: certificate of alice \(serial [0-9a-f]+\) is revoked",
                                           log(lab, "gateway")), what="the gateway's refusal")
        assert "gateway refused the tunnel: gateway closed the tunnel: certificate revoked" in log(lab, "agent-client")

        # A corrupt CRL: said loudly, the revocation stays in force.
        crl_path = lab.pki_dir / "crl.pem"
        good = crl_path.read_bytes()
        crl_path.write_bytes(good[:200] + b"garbage" + good[220:])
        procs.wait_until(lambda: "CRL not taken" in log(lab, "gateway"), what="the corrupt CRL in the log")
        assert "1 revoked serial(s) read before stay in force" in log(lab, "gateway")
        before = log(lab, "gateway").count("is revoked")
        assert lab.exec("client", curl(lab, "client", f"https://{APP}/")).returncode != 0
        procs.wait_until(lambda: log(lab, "gateway").count("is revoked") > before, what="another refusal")
        crl_path.write_bytes(good)
    bob.assert_clean()
    assert session_of(lab, "bob") == bob_sid and f"session {bob_sid} bob closed" not in log(lab, "gateway")
    assert lab.procs["gateway"].alive()
