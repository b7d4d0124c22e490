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
METRICS_PORT = 9180
DNS_METRICS_PORT = 9153


def scrape(lab, host, address):
    """GET /metrics with curl inside lab ``host``: {(name, labels text): value}."""
    r = lab.exec(host, ["curl", "-sS", "--max-time", "5", f"http://{address}/metrics"])
    assert r.returncode == 0, r.stderr.decode()
    out = {}
    for line in r.stdout.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            name, _, labels = key.partition("{")
            out[(name, labels.rstrip("}"))] = float(value)
    return out


@pytest.fixture(scope="class")
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


class TestProxy:
    """The forward proxy: one lab for the class, removed after it."""

    def test_proxy_reload_takes_a_new_policy_and_refuses_broken_files(self, plab):
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
            # 1. a new policy: the allow list no longer covers bank.example.com (default deny)
            conf.write_text(conf.read_text().replace('allow = ["*.example.com"]', 'allow = ["decrypt.example.com"]'))
            rc, out = reload_proxy(lab, run_dir)
            assert rc == 0 and "reloaded" in out and "[policy] allow: +decrypt.example.com -*.example.com" in out, out
            r = lab.exec("client", curl_argv(lab, "https://bank.example.com/", RELOAD_PORT) + ["-v"])
            assert r.returncode != 0 and b"403" in r.stderr, r.stderr[-600:]
            procs.wait_until(lambda: "ended" in (lab.log_dir / "hold-bank.log").read_text(),
                             what="the tunnel to the denied name to end")
            assert "ended data" not in (lab.log_dir / "hold-bank.log").read_text()
            ended = [x for x in jlines(lab.log_dir / "preload.log")
                     if x.get("name") == "bank.example.com" and "policy reloaded" in str(x.get("error"))]
            assert ended and "bank.example.com matches no rule; default deny" in ended[0]["error"], ended

            # 2. broken files: each refused with file, line and reason; the running policy stays
            good_text = conf.read_text()
            lines = good_text.splitlines()
            broken = {
                "syntax": (lines[:3] + ["listen = = 1"] + lines[3:], 4, "not valid TOML"),
                "unknown key": (lines[:3] + ["colour = 'blue'"] + lines[3:], 4, "colour"),
                "bad pattern": ([x.replace('allow = ["decrypt.example.com"]', 'allow = ["decrypt.example.com", "bad..name"]')
                                 for x in lines], lines.index('allow = ["decrypt.example.com"]') + 1, "bad..name"),
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
            assert reload_proxy(lab, run_dir)[0] == 0  # the file on disk is what runs again
            assert "reload refused" in (lab.log_dir / "preload.log").read_text()
        user.assert_clean()
        assert p.alive()
        st = json.loads((run_dir / "proxy.json").read_text())
        assert st["reloads"] == 6 and st["last_reload"]["ok"] is True
        lab.stop("preload")
        assert not (run_dir / "proxy.json").exists() and not (run_dir / "proxy.pid").exists()


    def test_quic_to_a_blocked_site_is_rejected_and_counted(self, plab):
        # HTTP/3 is UDP 443: without the rule it is routed past the transparent proxy's policy.
        from scapy.layers.inet import UDP

        from netns import capture

        lab = plab
        stats = procs.ztna_argv("proxy", "stats", "--config", str(lab.conf_dir / "proxy-transparent.toml"), "--json")

        def counted():
            r = lab.exec("proxy", stats)
            assert r.returncode == 0, r.stderr.decode()
            return json.loads(r.stdout)["quic_packets"]

        before = counted()
        lab.capture_all()
        probe = lab.write_conf("quic-probe.py", textwrap.dedent(f"""
            import socket, time
            out = []
            for port in (443, 4433):  # 4433: a UDP port nobody redirects, which must reach the web host
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # unconnected: no errors come back to it
                for i in range(5):
                    u.sendto(b"\\xc0quic-initial-stand-in-%d" % i, ("{sc.WEB}", port))
                    time.sleep(0.05)
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.settimeout(1.0)
                s.connect(("{sc.WEB}", port))
                s.send(b"\\xc0one-more")
                try:
                    s.recv(100)
                    out.append("answered")
                except ConnectionRefusedError:
                    out.append("refused")  # ICMP port unreachable: a browser falls back to TCP at once
                except socket.timeout:
                    out.append("timeout")
            print(" ".join(out))
        """))
        with Legit(lab, "client", ["curl", "-sS", "--max-time", "10", "--cacert", str(lab.pki_dir / "ca.pem"),
                                   "https://bank.example.com/"],
                   check=lambda rc, out: rc == 0 and "hello from bank.example.com" in out) as user:
            r = lab.exec("client", [sys.executable, str(probe)], timeout=30)
        lab.stop_captures()
        user.assert_clean()
        assert r.returncode == 0, r.stderr.decode()
        first, second = r.stdout.decode().split()
        assert first == "refused", r.stdout  # the proxy host answered with port unreachable
        udp = [p[UDP].dport for p in capture.read(lab.pcap("web", "eth0")) if UDP in p]
        assert 443 not in udp, "a UDP 443 datagram reached the web host past the proxy"
        assert udp.count(4433) == 6 and second == "refused"  # the capture sees UDP that is routed (web has no 4433)
        assert counted() - before == 6
        lab.stop("tproxy")  # the count is also logged at stop
        stop = [x for x in jlines(lab.log_dir / "tproxy.log") if x.get("event") == "stop"]
        assert stop and stop[0]["quic"] == "reject" and stop[0]["quic_packets"] >= 6, stop


    def test_proxy_metrics_count_connections_bytes_and_refusals(self, plab):
        lab = plab
        conf = lab.write_conf("pmetrics.toml", sc.proxy_toml(lab, mode="explicit", port=RELOAD_PORT + 2)
                              + f'\n[metrics]\nlisten = "{sc.PROXY_IN}:{METRICS_PORT}"\n')
        p = lab.start("proxy", procs.ztna_argv("proxy", "run", "--config", str(conf)), name="pmetrics")
        procs.wait_listening(p, sc.PROXY_IN, RELOAD_PORT + 2)
        procs.wait_listening(p, sc.PROXY_IN, METRICS_PORT)
        where = f"{sc.PROXY_IN}:{METRICS_PORT}"
        before = scrape(lab, "client", where)
        assert not any(k[0] == "ztna_proxy_connections_total" for k in before)  # nothing counted yet
        ok = lab.exec("client", curl_argv(lab, "https://decrypt.example.com/", RELOAD_PORT + 2))
        assert ok.returncode == 0 and b"hello from decrypt.example.com" in ok.stdout
        lab.exec("client", curl_argv(lab, "https://blocked.example.com/", RELOAD_PORT + 2))
        after = {}

        def counted():
            after.update(scrape(lab, "client", where))
            return after.get(("ztna_proxy_connections_total", 'decision="deny",mode="explicit"')) == 1

        procs.wait_until(counted, what="the denied connection in the metrics")
        assert after[("ztna_proxy_connections_total", 'decision="allow",mode="explicit"')] == 1
        assert after[("ztna_proxy_refusals_total", 'reason="deny-list"')] == 1
        assert after[("ztna_proxy_bytes_total", 'direction="down"')] > 0
        assert after[("ztna_proxy_bytes_total", 'direction="up"')] > 0
        assert after[("ztna_proxy_open_connections", "")] == 0
        lab.stop("pmetrics")


# ---- the DNS security resolver ---------------------------------------------------------------------

@pytest.fixture(scope="class")
def dlab(tmp_path_factory):
    from netns.lab import started
    from netns.scenarios.dns_security import RESOLVER, DnsSecurity

    sc_ = DnsSecurity()
    # server_extra ends the [server] table: the metrics endpoint, on the resolver's own address
    sc_.server_extra = f'\n[metrics]\nlisten = "{RESOLVER}:{DNS_METRICS_PORT}"\n'
    with started(sc_, tmp_path_factory.mktemp("dns-ops")) as lab:
        yield lab


def reload_dns(lab):
    r = lab.exec("cloud", procs.ztna_argv("dns", "reload", "--run-dir", str(lab.root / "run-dns")), timeout=30)
    return r.returncode, r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


class TestDnsResolver:
    """The DNS security resolver: one lab for the class, removed after it."""

    def test_dns_reload_takes_new_lists_keeps_tcp_sessions_and_refuses_broken_files(self, dlab):
        from netns import dig
        from netns.scenarios.dns_security import BP_LIST, DATA, RESOLVER

        lab = dlab
        conf = lab.conf_dir / "dns.toml"
        ask = lambda name: dig.ask(lab, "client", f"@{RESOLVER}", name, "A")  # noqa: E731
        assert dig.addresses(ask("ns1.good.example")) == ["203.0.113.53"]   # allowed before the reload

        # A DNS-over-TCP session opened before the reload, asked again after it.
        session = lab.write_conf("tcp-session.py", textwrap.dedent(f"""
            import socket, struct, sys, time
            from dnslib import DNSRecord
            s = socket.create_connection(("{RESOLVER}", 53), timeout=10)
            def ask(name):
                q = DNSRecord.question(name).pack()
                s.sendall(struct.pack("!H", len(q)) + q)
                n = struct.unpack("!H", s.recv(2))[0]
                data = b""
                while len(data) < n:
                    data += s.recv(n - len(data))
                return [str(r.rdata) for r in DNSRecord.parse(data).rr]
            print("before", ask("www.good.example"), flush=True)
            while "go" not in open("{lab.conf_dir / 'tcp-go'}").read():
                time.sleep(0.05)
            print("after", ask("ns1.good.example"), flush=True)
        """))
        (lab.conf_dir / "tcp-go").write_text("")
        lab.start("client", [sys.executable, str(session)], name="tcp-session")
        procs.wait_until(lambda: "before" in (lab.log_dir / "tcp-session.log").read_text(), what="the TCP session")

        good = ["dig", "+tries=1", "+time=3", f"@{RESOLVER}", "www.good.example", "A"]
        with Legit(lab, "client", good, check=lambda rc, out: rc == 0 and "status: NOERROR" in out
                   and "203.0.113.80" in out) as user:
            extra = lab.write_conf("extra-block.txt", "# added by the reload test\nns1.good.example\n")
            text = conf.read_text()
            block_files = f'files = ["{DATA / "block.txt"}"]'
            assert block_files in text
            conf.write_text(text.replace(block_files, f'files = ["{DATA / "block.txt"}", "{extra}"]'))
            rc, out = reload_dns(lab)
            assert rc == 0 and "reloaded" in out and "list lab-block: 1 -> 2 domains (+1 -0)" in out, out
            assert dig.addresses(ask("ns1.good.example")) == [BP_LIST]
            (lab.conf_dir / "tcp-go").write_text("go")
            procs.wait_until(lambda: "after" in (lab.log_dir / "tcp-session.log").read_text(),
                             what="the TCP session's second answer")
            assert f"after ['{BP_LIST}']" in (lab.log_dir / "tcp-session.log").read_text()

            good_text = conf.read_text()
            lines = good_text.splitlines()
            cats = lab.write_conf("bad-categories.txt", "casino.example gambling\nlonely-name-without-category\n")
            broken = {
                "syntax": (lines[:2] + ["port = = 53"] + lines[2:], "dns.toml:3:", "not valid TOML"),
                "unknown key": ([x.replace("block_ttl = 30", "block_ttl = 30\ncolour = 5") for x in lines],
                                f"dns.toml:{lines.index('block_ttl = 30') + 2}:", "colour"),
                "bad category line": ([x.replace(f'files = ["{DATA / "categories.txt"}"]',
                                                 f'files = ["{DATA / "categories.txt"}", "{cats}"]') for x in lines],
                                      "bad-categories.txt:2:", "expected 'domain category"),
                "restart-only": ([x.replace("block_ttl = 30", "block_ttl = 30\nport = 5353") for x in lines], None,
                                 "port changed, which takes a restart"),
            }
            for case, (text, where, reason) in broken.items():
                conf.write_text("\n".join(text) + "\n")
                rc, out = reload_dns(lab)
                assert rc == 1 and "reload refused" in out and reason in out, (case, out)
                if where:
                    assert where in out, (case, out)
                assert dig.addresses(ask("ns1.good.example")) == [BP_LIST], case  # the reloaded lists stay
            conf.write_text(good_text)
            assert reload_dns(lab)[0] == 0  # the file on disk is what runs again
        user.assert_clean()
        assert "reload refused" in (lab.log_dir / "resolver.log").read_text()
        assert lab.procs["resolver"].alive()


    def test_dns_device_ids_trusted_only_from_listed_networks(self, dlab):
        # The device id is not authenticated: with server.device_id_networks set (here by a live reload),
        # one from another source is ignored and the network's policy answers.
        from netns import dig
        from netns.scenarios.dns_security import BP_DEFAULT, CLIENT, CLIENT2, DEVICE, RESOLVER

        lab = dlab
        conf = lab.conf_dir / "dns.toml"
        opt = f"+ednsopt=65001:{DEVICE.encode().hex()}"

        def gambling(src):
            return dig.addresses(dig.ask(lab, "client", f"@{RESOLVER}", "-b", src, opt, "gambling.bad.example", "A"))

        real = ["203.0.113.105"]  # the device's policy does not block gambling
        assert gambling(CLIENT) == real and gambling(CLIENT2) == real  # default: believed from every served source
        text = conf.read_text()
        conf.write_text(text.replace("block_ttl = 30", f'block_ttl = 30\ndevice_id_networks = ["{CLIENT}/32"]'))
        rc, out = reload_dns(lab)
        assert rc == 0 and "device_id_networks" in out, out
        try:
            assert gambling(CLIENT) == real
            for _ in range(2):  # decided, then replayed from the memo: the same answer
                assert gambling(CLIENT2) == [BP_DEFAULT]
            procs.wait_until(lambda: any(
                r.get("client") == CLIENT2 and "device id 'laptop-1' ignored" in r.get("note", "")
                for r in jlines(lab.log_dir / "dns-queries.jsonl")), what="the ignored device id in the query log")
        finally:
            conf.write_text(text)
            assert reload_dns(lab)[0] == 0


    def test_dns_metrics_count_queries_refusals_and_cache_hits(self, dlab):
        from netns import dig
        from netns.scenarios.dns_security import RESOLVER

        lab = dlab
        where = f"{RESOLVER}:{DNS_METRICS_PORT}"
        get = lambda m, k, labels="": m.get((k, labels), 0)  # noqa: E731
        before = scrape(lab, "client", where)
        for name, qtype in (("www.good.example", "A"), ("www.good.example", "A"), ("listed.bad.example", "TXT"),
                            ("malware.bad.example", "A")):
            dig.ask(lab, "client", f"@{RESOLVER}", name, qtype)
        dig.ask(lab, "outsider", f"@{RESOLVER}", "www.good.example", "A")  # not served: REFUSED
        after = scrape(lab, "client", where)
        delta = lambda k, labels="": get(after, k, labels) - get(before, k, labels)  # noqa: E731
        assert delta("ztna_dns_queries_total", 'decision="allowed"') == 2
        assert delta("ztna_dns_queries_total", 'decision="blocked"') == 2
        assert delta("ztna_dns_queries_total", 'decision="not-served"') == 1
        assert delta("ztna_dns_refusals_total", 'reason="blocked-destination-list"') == 1   # TXT of a listed name
        assert delta("ztna_dns_refusals_total", 'reason="not-served"') == 1
        assert delta("ztna_dns_cache_hits_total") >= 1   # the second www.good.example
        assert ("ztna_dns_upstream_failures_total", "") in after

    def test_status_lists_the_running_resolver_and_a_refused_reload(self, dlab):
        lab = dlab
        argv = procs.ztna_argv("status", "--run-dir", str(lab.root / "run-dns"), "--agent-state-dir",
                               str(lab.root / "no-agent"), "--roaming-state-dir", str(lab.root / "no-roaming"))
        r = lab.exec("cloud", argv + ["--json"])
        rows = {x["role"]: x for x in json.loads(r.stdout)}
        assert r.returncode == 0 and rows["dns"]["state"] == "running", r.stdout
        assert rows["dns"]["pid"] == lab.procs["resolver"].pid and rows["proxy"]["state"] == "not running"
        conf = lab.conf_dir / "dns.toml"
        good = conf.read_text()
        conf.write_text(good + "\n[server\n")
        try:
            assert reload_dns(lab)[0] == 1
            r = lab.exec("cloud", argv)
            assert r.returncode == 1 and b"last reload REFUSED" in r.stdout, r.stdout
        finally:
            conf.write_text(good)
            assert reload_dns(lab)[0] == 0
        assert lab.exec("cloud", argv).returncode == 0
