"""The hostile campaign, tunnel part (issue 19): the agent lab under bad certificates,
garbage, floods, fuzzed DNS and crafted packets, with a legitimate user beside every probe.

One lab for the module, built as tests/lab/test_agent.py builds its own: alice's agent on
``client``, bob's on ``client2``.  Probes run from ``client`` (or from ``inet`` for the
flood); bob's curl of his application through his tunnel is the legitimate user of every
case, and where the probe aims at alice's own agent her curl runs beside it too.  Every
case asserts the refusal it expects (an alert, a status, a log line) and that the
legitimate user never failed; each records one row of the campaign's table.
Every probe is bounded in count and time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

import dnsfuzz
from legit import Legit, record
from netns import capture, evidence, procs
from netns.lab import Lab, started
from netns.scenarios.agent import APP, GW_PUBLIC, HR
from test_agent import TwoClients, captured, dig, log, sh
from ztna import pki

ROGUE = str(Path(__file__).with_name("rogue.py"))
DNSFUZZ = str(Path(__file__).with_name("dnsfuzz.py"))
INSIDE = "10.254.0.0/16"
HANDSHAKE_TIMEOUT = 4


class Hostile(TwoClients):
    name = "agent-hostile"
    # A wildcard for alice, so a LEASE flood is of names the policy allows (each one a private-DNS lookup).
    policy = {**TwoClients.policy, "alice": [*TwoClients.policy["alice"], "*.flood.mycompany.net"]}

    def gateway_conf(self, lab: Lab) -> str:
        # A short handshake deadline keeps the stalled-handshake cases short.
        return super().gateway_conf(lab).replace("\n\n[policy]", f"\nhandshake_timeout = {HANDSHAKE_TIMEOUT}\n\n[policy]")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with started(Hostile(), tmp_path_factory.mktemp("lab")) as lab:
        yield lab


def curl_argv(lab, name):
    return ["curl", "-sS", "--max-time", "10", "--cacert", str(lab.pki_dir / "ca.pem"), f"https://{name}/"]


def bob(lab) -> Legit:
    """The legitimate user of every case: bob on client2, curl of his application through his tunnel."""
    return Legit(lab, "client2", curl_argv(lab, HR), check=lambda rc, out: rc == 0 and f"hello from {HR}" in out)


def alice(lab) -> Legit:
    return Legit(lab, "client", curl_argv(lab, APP), check=lambda rc, out: rc == 0 and f"hello from {APP}" in out)


def rogue(lab, host, *args, timeout=60):
    rc, out, err = sh(lab, host, sys.executable, ROGUE, *map(str, args), timeout=timeout)
    assert out.strip(), f"rogue {args[0]} printed nothing: {err[-2000:]}"
    return json.loads(out.strip().splitlines()[-1])


def lines(lab, name, text):
    return [l for l in log(lab, name).splitlines() if text in l]


def status(lab, host):
    rc, out, err = sh(lab, host, *procs.ztna_argv("agent", "status", "--json", "--state-dir", str(lab.root / f"agent-{host}")))
    assert rc == 0, err
    return json.loads(out)


def pki_files(lab):
    return tuple(str(lab.pki_dir / n) for n in ("ca.pem", "alice.pem", "alice.key"))


# ---- the mTLS refusal matrix ------------------------------------------------------------------

def _certificate(lab, tmp_path, case):
    """(cert, key, gateway's reason) for one refusal case."""
    now = pki.utcnow()
    ca = lab.ca()
    if case == "no certificate":
        return "-", "-", "no client certificate presented"
    if case == "another CA":
        leaf = pki.issue(pki.new_ca("some other CA", now=now), "alice", kind="agent", now=now)
        why = "unable to get local issuer certificate"
    elif case == "expired":
        leaf, why = pki.issue(ca, "alice", kind="agent", now=now, days=-1), "certificate has expired"
    elif case == "not yet valid":
        leaf = pki.issue(ca, "alice", kind="agent", now=now, not_before=now + pki.dt.timedelta(days=1), days=30)
        why = "certificate is not yet valid"
    elif case == "serverAuth only":
        leaf, why = pki.issue(ca, "alice", kind="server", now=now), "certificate purpose"
    elif case == "sub-CA past path length":
        sub = pki.new_ca("rogue sub-CA", now=now, parent=ca)
        leaf = pki.issue(sub, "alice", kind="agent", now=now)
        cert, key = pki.save(leaf, tmp_path, "chained")
        cert.write_bytes(leaf.cert_pem() + sub.cert_pem())  # present the sub-CA with the leaf
        return str(cert), str(key), "path length constraint exceeded"
    elif case == "no CN":
        leaf, why = pki.issue(ca, None, kind="agent", now=now), "peer certificate has no common name"
    elif case == "TLS 1.2 only":
        return str(lab.pki_dir / "alice.pem"), str(lab.pki_dir / "alice.key"), "TLS error: UNSUPPORTED_PROTOCOL"
    else:
        raise AssertionError(case)
    cert, key = pki.save(leaf, tmp_path, case.replace(" ", "-"))
    return str(cert), str(key), why


MTLS = ["no certificate", "another CA", "expired", "not yet valid", "serverAuth only", "sub-CA past path length",
        "no CN", "TLS 1.2 only"]


@pytest.mark.parametrize("case", MTLS)
def test_mtls_refusal_matrix(lab, tmp_path, case):
    cert, key, why = _certificate(lab, tmp_path, case)
    ca = str(lab.pki_dir / "ca.pem")
    extra = ["1.2"] if case == "TLS 1.2 only" else []
    attempts = 3
    before = len(lines(lab, "gateway", why))
    with bob(lab) as user:
        results = [rogue(lab, "client", "tls", GW_PUBLIC, 443, ca, cert, key, *extra) for _ in range(attempts)]
        procs.wait_until(lambda: len(lines(lab, "gateway", why)) >= before + attempts, timeout=10,
                         what=f"{attempts} refusals '{why}' in the gateway's log")
    for res in results:
        assert not res.get("welcome"), res  # never a tunnel
        if case == "TLS 1.2 only":
            assert "PROTOCOL_VERSION" in res.get("ssl_error", ""), res  # the gateway's protocol_version alert
        elif case == "no CN":
            assert "welcome" in res and res["welcome"] is None, res  # TLS completed; the gateway hung up at once
        else:
            assert res.get("ssl_error") or res.get("os_error"), res  # an alert, or the connection cut
    user.assert_clean()
    assert lab.procs["gateway"].alive()
    record(f"mTLS: {case}", attempts, f"refused: {why}", user)


def test_identity_with_no_policy_reaches_nothing(lab, tmp_path):
    now = pki.utcnow()
    cert, key = pki.save(pki.issue(lab.ca(), "carol", kind="agent", now=now), tmp_path, "carol")
    ca = str(lab.pki_dir / "ca.pem")
    attempts = 3
    with bob(lab) as user:
        results = [rogue(lab, "client", "lease", GW_PUBLIC, 443, ca, cert, key, name, "100.64.0.3")
                   for name in (APP, HR, "www.example.com")[:attempts]]
    for res in results:
        assert res["welcome"]["identity"] == "carol", res
        assert res["lease_result"]["allowed"] is False and "has no policy" in res["lease_result"]["reason"], res
    assert len(lines(lab, "gateway", "DENIED: identity 'carol' has no policy")) >= attempts
    user.assert_clean()
    record("mTLS: identity with no policy", attempts, "tunnel, every lease DENIED (no policy)", user)


# ---- garbage, slowloris, stalled handshakes on 443 ---------------------------------------------

def test_garbage_on_443(lab):
    attempts = 10
    before = len(lines(lab, "gateway", "refused TLS from"))
    with bob(lab) as user:
        results = [rogue(lab, "client", "raw-garbage", GW_PUBLIC, 443) for _ in range(attempts)]
    for res in results:
        assert res.get("closed_by_server") or "os_error" in res, res
    procs.wait_until(lambda: len(lines(lab, "gateway", "refused TLS from")) > before, timeout=5, what="the refusal logged")
    user.assert_clean()
    record("443: random bytes", attempts, "handshake failed, closed, logged", user)


@pytest.mark.parametrize("mode", ["slowloris", "stall"])
def test_slow_and_stalled_handshakes_are_cut_at_the_deadline(lab, mode):
    attempts = 3
    before = len(lines(lab, "gateway", "handshake timed out"))
    with bob(lab) as user:
        # At once, so the case lasts one deadline, not three.
        runs = [procs.subprocess.Popen(["ip", "netns", "exec", lab.ns("client"), sys.executable, ROGUE, mode, GW_PUBLIC,
                                        "443", str(HANDSHAKE_TIMEOUT * 3)], stdout=procs.subprocess.PIPE)
                for _ in range(attempts)]
        results = [json.loads(p.communicate(timeout=HANDSHAKE_TIMEOUT * 3 + 15)[0]) for p in runs]
    for res in results:
        # Cut by the gateway before the probe's own patience ran out.
        assert res.get("closed_after_s") is not None, res
    procs.wait_until(lambda: len(lines(lab, "gateway", "handshake timed out")) >= before + attempts, timeout=5,
                     what="the time-outs logged")
    user.assert_clean()
    record(f"443: {mode}", attempts, f"cut at the handshake deadline ({HANDSHAKE_TIMEOUT} s), logged", user)


# ---- DNS fuzz of the agent's stub --------------------------------------------------------------

@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_dns_fuzz_of_the_stub(lab, tmp_path, proto):
    cases = dnsfuzz.cases(APP)
    flat = [(kind, m) for kind, ms in cases.items() for m in ms]
    path = tmp_path / "cases.json"
    path.write_text(json.dumps([m.hex() for _, m in flat]))
    before_lines = len(lines(lab, "agent-client", "malformed DNS query"))
    before = status(lab, "client")["counters"].get("dns_malformed", 0)
    with bob(lab) as user, alice(lab) as local:
        rc, out, err = sh(lab, "client", sys.executable, DNSFUZZ, proto, "100.64.0.2", str(path), timeout=240)
        assert rc == 0, err
    got = json.loads(out)["results"]
    by_kind: dict = {}
    for (kind, _), r in zip(flat, got):
        by_kind.setdefault(kind, []).append(r)
    # Every malformed query gets FORMERR, over UDP and TCP alike.
    for kind in ("over-long name (labels)", "over-long name (pointer)", "label over 63", "pointer loop", "truncated"):
        assert set(by_kind[kind]) == {"FORMERR"}, (kind, by_kind[kind])
    # A mutation may still be a query (answered or forwarded) or a response (dropped), never a hang of the stub.
    assert by_kind["mutated"].count("FORMERR") > 50, by_kind["mutated"]
    assert lab.procs["agent-client"].alive()
    agent_log = log(lab, "agent-client")
    assert "Traceback" not in agent_log and "DNSLabelError" not in agent_log
    malformed = status(lab, "client")["counters"].get("dns_malformed", 0) - before
    assert malformed >= len(flat) // 2, malformed
    # The log is told about bad input at a bounded rate, not once per query.
    logged = len(lines(lab, "agent-client", "malformed DNS query")) - before_lines
    assert logged <= 5, f"{logged} log lines for {malformed} malformed queries"
    assert evidence.in_net(dig(lab, "client", APP), "100.64.0.0/10")
    user.assert_clean()
    local.assert_clean()
    record(f"DNS stub fuzz ({proto})", len(flat),
           f"{malformed} malformed answered FORMERR; {logged} log lines", user)


# ---- bad wire frames on a valid session ---------------------------------------------------------

FRAMES = {
    "bad-frame": "protocol error: unknown frame type 0x7e",
    "overlong-control": "exceeds 4096",
    "not-object": "payload is not a JSON object",
    "data-before-hello": "protocol error: DATA before HELLO",
    "hello-twice": "protocol error: HELLO twice",
    "truncated-frame": "bytes of an unfinished frame dropped",
    "nested-json": "nested",
}


@pytest.mark.parametrize("mode", list(FRAMES))
def test_bad_frames_close_only_that_session(lab, mode):
    ca, cert, key = pki_files(lab)
    why = FRAMES[mode]
    attempts = 2
    before = len(lines(lab, "gateway", why))
    with bob(lab) as user:
        results = [rogue(lab, "client", mode, GW_PUBLIC, 443, ca, cert, key) for _ in range(attempts)]
        procs.wait_until(lambda: len(lines(lab, "gateway", why)) >= before + attempts, timeout=10,
                         what=f"'{why}' twice in the gateway's log")
    for res in results:
        if mode != "data-before-hello":
            assert res["welcome"]["identity"] == "alice", res
        assert res["after"] == ("client closed" if mode == "truncated-frame" else "closed"), res
        if mode == "nested-json":
            # The HELLO that came in the same read was answered; the nesting got a CLOSE with the reason.
            assert "nested" in (res.get("close_reason") or ""), res
    assert lab.procs["gateway"].alive()
    user.assert_clean()
    record(f"frames: {mode}", attempts, f"session closed: {why}", user)


def test_a_lease_flood_is_answered_and_bounded_without_closing_the_session(lab):
    # 300 LEASEs for distinct allowed names in one write: the gateway looks up at most 64 at once
    # (gateway/session.py MAX_LOOKUPS) and answers every one (NXDOMAIN from private DNS, or "waiting
    # already"); the session stays open and bob is served.
    ca, cert, key = pki_files(lab)
    with bob(lab) as user:
        res = rogue(lab, "client", "lease-flood", GW_PUBLIC, 443, ca, cert, key, 300)
    assert res["welcome"]["identity"] == "alice" and res["answered"] == 300, res
    assert res["after"] == "open", res
    assert lab.procs["gateway"].alive()
    user.assert_clean()
    record("frames: 300 LEASEs for distinct allowed names", 300, f"all answered ({'; '.join(res['reasons'])[:80]})", user)


# ---- spoofed and INVALID packets through the tunnel -----------------------------------------------

def test_invalid_and_spoofed_packets_through_the_tunnel_never_reach_the_lan(lab, tmp_path):
    ca, cert, key = pki_files(lab)
    attempts = 3
    with bob(lab) as user, captured(lab, tmp_path, ("gateway", "eth1")) as pcaps:
        results = [rogue(lab, "client", "crafted", GW_PUBLIC, 443, ca, cert, key, APP, "100.64.0.3")
                   for _ in range(attempts)]
    for res in results:
        assert res["lease_result"]["allowed"] is True, res
        assert res["keepalive_back"] and res["after"] == "open", res  # dropped, counted; the session lives on
    lan = capture.read(pcaps[("gateway", "eth1")])
    leaked = [p for p in lan if p.haslayer("IP") and evidence.in_net(p["IP"].src, INSIDE)]
    assert not leaked, f"{len(leaked)} packets left the LAN side with an inside source, first {leaked[0].summary()}"
    procs.wait_until(lambda: any(int(l.rsplit("(", 1)[1].split()[0]) >= 20 * attempts
                                 for l in lines(lab, "gateway", "conntrack INVALID")),
                     timeout=20, what="the gateway to report the INVALID drops")
    assert lines(lab, "gateway", "spoofed src")
    user.assert_clean()
    record("tunnel: SYN+FIN, SYN+RST, no flags, bad checksum", 20 * attempts,
           "dropped (ct state invalid, counted); 0 inside sources on the LAN", user)


def test_agent_drops_spoofed_sources_itself(lab):
    with bob(lab) as user, alice(lab) as local:
        addr = dig(lab, "client", APP)
        assert evidence.in_net(addr, "100.64.0.0/10")
        before = status(lab, "client")["counters"].get("dropped_spoofed_src", 0)
        gw_before = len(lines(lab, "gateway", "dropped a packet not from its address"))
        n = 50
        res = rogue(lab, "client", "raw-spoof", "-", 0, "100.64.7.7", addr, n)
        assert res["sent"] == n
        procs.wait_until(lambda: status(lab, "client")["counters"].get("dropped_spoofed_src", 0) >= before + n,
                         timeout=5, what="the agent to count the spoofed packets")
    assert len(lines(lab, "gateway", "dropped a packet not from its address")) == gw_before  # none reached it
    user.assert_clean()
    local.assert_clean()
    record("agent: forged source into the TUN", n, "dropped at the agent, counted in status", user)


# ---- pending TLS handshakes: a flood of idle connections ------------------------------------------

def test_idle_connection_flood_is_bounded_and_memory_comes_back(lab):
    gw = lab.procs["gateway"]
    ca = str(lab.pki_dir / "ca.pem")
    bob_cert, bob_key = str(lab.pki_dir / "bob.pem"), str(lab.pki_dir / "bob.key")
    sources = ["198.51.100.1", "198.51.100.53", "198.51.100.80", "203.0.113.1"]  # the router's own addresses
    per_round, hold = 2500, HANDSHAKE_TIMEOUT + 2
    rss = {"before": procs.rss_kib(gw.pid) // 1024}
    floods, handshakes = [], []
    with bob(lab) as user, alice(lab) as local:
        for rnd in (1, 2):
            p = procs.subprocess.Popen(["ip", "netns", "exec", lab.ns("inet"), sys.executable, ROGUE, "flood", GW_PUBLIC,
                                        "443", str(per_round), str(hold), *sources], stdout=procs.subprocess.PIPE)
            time.sleep(1.0)
            # A new handshake from another address is still served while the flood holds its connections.
            handshakes.append(rogue(lab, "client2", "tls", GW_PUBLIC, 443, ca, bob_cert, bob_key))
            rss[f"round {rnd} peak"] = procs.rss_kib(gw.pid) // 1024
            floods.append(json.loads(p.communicate(timeout=hold + 60)[0]))
        time.sleep(HANDSHAKE_TIMEOUT + 2)  # every pending handshake has met its deadline
    rss["after"] = procs.rss_kib(gw.pid) // 1024
    print(f"gateway RSS (MB): {rss}; floods: {floods}")
    for l in lines(lab, "gateway", "memory given back") + lines(lab, "gateway", "pending handshakes from")[:2]:
        print(l)
    for f in floods:
        assert f["opened"] + f["connect_failed"] == per_round, f
    for h in handshakes:
        assert h["welcome"]["identity"] == "bob", h
    assert lab.procs["gateway"].alive()
    g = log(lab, "gateway")
    assert "pending handshakes from" in g  # the per-source bound refused, and said so
    bound = 40
    assert rss["after"] <= rss["before"] + bound, f"the gateway kept {rss['after'] - rss['before']} MB: {rss}"
    user.assert_clean()
    local.assert_clean()
    record("443: 5,000 idle connections, two rounds", 2 * per_round,
           f"pending bounded; RSS {rss['before']}->{max(rss['round 1 peak'], rss['round 2 peak'])}->{rss['after']} MB", user)
