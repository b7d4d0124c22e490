"""Scenario ``agentless``: the agentless flow of SPEC.md §2 (seed 000), the gateway as a reverse proxy.

    browser, client --pub-- inet (router, public DNS .53) --eth1-- gateway --eth1-- [lan] -- privdns, app
    198.51.100.30/.10       198.51.100.1/.53  203.0.113.1      203.0.113.20  192.168.1.1     .53      .20/.21

``browser`` has no agent and ordinary public DNS, where ``app.mycompany.net``
is a CNAME of ``gateway.mycompany.net``.  ``client`` runs the agent (alice), so
the same port 443 is seen carrying the tunnel too.  The apps' certificates come
from an internal CA that only the gateway trusts; the browser trusts the lab CA
that signed the certificates the gateway presents.  ``curl`` with a cookie jar
does what a browser does (tests/lab/test_agentless.py drives headless Chromium).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from dnslib import QTYPE

from .. import capture, evidence, flow, procs
from ..lab import Lab
from ..report import Step
from .agent import (APP, APP_IP, GW_NAME, GW_PUBLIC, HR, HR_IP, PRIV_DNS, PRIVATE_ZONE, PUBLIC_DNS, WWW, AgentScenario,
                    web_argv)
from ztna import pki

BROWSER_IP = "198.51.100.30"
PUBLIC_ZONES = {
    "mycompany.net": f"@ IN SOA ns1 hostmaster 1 60 60 60 60\ngateway IN A {GW_PUBLIC}\n"
                     f"app IN CNAME gateway\nhr IN CNAME gateway\n",
    "example.com": f"@ IN SOA ns1 hostmaster 1 60 60 60 60\nwww IN A {WWW}\n",
}
# user -> password for the local users; carol signs in with a client certificate to hr.
USERS = {"alice": "alice-password-1", "bob": "bob-password-1"}
IDENTITY_HEADER = "X-Ztna-User"


class AgentlessScenario(AgentScenario):
    """Agentless flow: CNAME to the gateway, SNI routing on port 443, sign-in, private DNS, reverse proxy to the app."""

    name = "agentless"
    summary = "ZTNA agentless flow (SPEC §2): public CNAME, SNI routing on :443, sign-in, private DNS, reverse proxy"
    clients = [("client", "198.51.100.10", "alice")]
    browser = ("browser", BROWSER_IP)
    extra_browsers: list[tuple[str, str]] = []  # more agentless hosts on the public side (tests)
    # (name, auth, upstream port) of the published applications; every name has a CNAME to the gateway.
    published = [(APP, "password", 443), (HR, "certificate", 443)]
    private_extra = ""  # more private-zone records (tests)
    policy = {"alice": [APP], "bob": [HR], "carol": [HR]}
    try_this = [
        f"sudo {{ztna}} lab exec browser -- dig {APP}",
        f"sudo {{ztna}} lab exec browser -- curl -v --cacert {{run}}/pki/ca.pem https://{APP}/   (302 to the sign-in page)",
        f"sudo {{ztna}} lab exec browser -- curl --cacert {{run}}/pki/ca.pem -c /tmp/jar -b /tmp/jar -L https://{APP}/.ztna/login",
        f"sudo {{ztna}} lab exec browser -- curl --cacert {{run}}/pki/ca.pem --cert {{run}}/pki/carol.pem "
        f"--key {{run}}/pki/carol.key https://{HR}/",
        "sudo tail -f {run}/logs/gateway-access.jsonl",
    ]

    @property
    def capture_extra(self):
        return [("gateway", "ztgw0")]

    def public_hosts(self) -> list[tuple[str, str]]:
        return super().public_hosts() + [self.browser] + self.extra_browsers

    # ---- services -----------------------------------------------------------------------
    def start(self, lab: Lab) -> None:
        lab.ca()
        internal = pki.new_ca("ztna lab internal CA", now=pki.utcnow())
        pki.save(internal, lab.pki_dir, "internal-ca")
        lab.issue("gateway", "gateway", dns=[GW_NAME])
        for name in (APP, HR):
            lab.issue(name, "server", dns=[name], ca=internal)  # what the app itself presents (internal CA)
        for name, _, _ in self.published:
            lab.issue(f"public-{name}", "server", dns=[name])  # what the gateway presents for it (lab CA)
        for _, _, ident in self.clients:
            lab.issue(ident, "agent")
        lab.issue("carol", "client")
        zones = dict(PUBLIC_ZONES)
        zones["mycompany.net"] += "".join(f"{n.split('.')[0]} IN CNAME gateway\n" for n, _, _ in self.published
                                          if n not in (APP, HR))
        public = [lab.write_conf(f"public-{z}.zone", f"$ORIGIN {z}.\n{body}") for z, body in zones.items()]
        private = lab.write_conf("private.zone", f"$ORIGIN mycompany.net.\n{PRIVATE_ZONE}{self.private_extra}")
        started = [
            (lab.start("inet", procs.ztna_argv("authdns", "run", "--listen", PUBLIC_DNS,
                                               *[a for z in public for a in ("--zone", str(z))]), name="public-dns"),
             PUBLIC_DNS, 53, "udp"),
            (lab.start("privdns", procs.ztna_argv("authdns", "run", "--listen", PRIV_DNS, "--zone", str(private)),
                       name="private-dns"), PRIV_DNS, 53, "udp"),
        ]
        for name, ip in ((APP, APP_IP), (HR, HR_IP)):
            started.append((lab.start("app", web_argv(ip, cert=(name, lab.pki_dir / f"{name}.pem", lab.pki_dir / f"{name}.key")),
                                      name=f"web-{name.split('.')[0]}"), ip, 443, "tcp"))
        conf = lab.write_conf("gateway.toml", self.gateway_conf(lab))
        for user, password in USERS.items():
            r = procs.run(lab.ns("gateway"), procs.ztna_argv("gateway", "user", "add", "--config", str(conf),
                                                             "--password-stdin", user), input=f"{password}\n".encode())
            if r.returncode:
                raise RuntimeError(f"ztna gateway user add {user} failed: {r.stderr.decode()}")
        self.start_gateway(lab)
        for p, ip, port, proto in started:
            procs.wait_listening(p, ip, port, proto)
        for host, _ in [self.browser] + self.extra_browsers:
            lab.set_resolvers(host, [PUBLIC_DNS])
        for host, _, ident in self.clients:
            self.start_agent(lab, host, ident)

    def gateway_conf(self, lab: Lab) -> str:
        apps = "".join(
            f"\n[[agentless.app]]\nname = \"{name}\"\ncert = \"{lab.pki_dir}/public-{name}.pem\"\n"
            f"key = \"{lab.pki_dir}/public-{name}.key\"\nupstream_ca = \"{lab.pki_dir}/internal-ca.pem\"\n"
            f"auth = \"{auth}\"\nupstream_port = {port}\nidentity_header = \"{IDENTITY_HEADER}\"\n"
            for name, auth, port in self.published)
        return super().gateway_conf(lab) + (
            f"\n[agentless]\ntunnel_names = [\"{GW_NAME}\"]\nusers = \"{lab.conf_dir}/gateway-users.json\"\n"
            f"session_key = \"{lab.conf_dir}/gateway-session.key\"\naccess_log = \"{self.access_log(lab)}\"\n"
            f"{self.agentless_extra}{apps}")

    agentless_extra = ""  # more [agentless] settings (tests shorten timeouts)

    @staticmethod
    def access_log(lab: Lab) -> Path:
        return lab.log_dir / "gateway-access.jsonl"

    # ---- the user's action ------------------------------------------------------------------
    def curl(self, lab: Lab, *args: str, jar: str | None = None, timeout: float = 15,
             host: str | None = None) -> tuple[int, str, str]:
        argv = ["curl", "-sS", "--max-time", str(timeout), "--cacert", str(lab.pki_dir / "ca.pem")]
        if jar:
            argv += ["-c", jar, "-b", jar]
        r = lab.exec(host or self.browser[0], argv + list(args), timeout=timeout + 5)
        return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")

    def sign_in(self, lab: Lab, user: str, password: str, jar: str, path: str = "/",
                host: str | None = None) -> tuple[int, str, str]:
        """What a person does: open the URL, land on the sign-in page, submit it, be sent back."""
        rc, page, err = self.curl(lab, "-L", f"https://{APP}{path}", jar=jar, host=host)
        m = re.search(r'name=csrf value="([^"]+)"', page)
        if rc or not m:
            return rc or 1, page, err or "no sign-in form"
        nxt = re.search(r'name=next value="([^"]+)"', page).group(1)
        return self.curl(lab, "-L", "-w", "\n%{url_effective} %{http_code}", "--data-urlencode", f"user={user}",
                         "--data-urlencode", f"password={password}", "--data-urlencode", f"csrf={m.group(1)}",
                         "--data-urlencode", f"next={nxt}", f"https://{APP}/.ztna/login", jar=jar, host=host)

    def drive(self, lab: Lab) -> dict:
        seen: dict = {}
        b = self.browser[0]
        jar = str(lab.conf_dir / "browser-cookies.txt")
        seen["browser_links"] = lab.exec(b, ["ip", "-o", "link"]).stdout.decode()
        seen["browser_resolv"] = lab.resolv_conf_path(b).read_text()
        seen["dig_app"] = lab.exec(b, ["dig", "+noall", "+answer", "+time=2", "+tries=1", APP]).stdout.decode().strip()
        rc, out, err = self.curl(lab, "-v", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", f"https://{APP}/")
        seen["first"], seen["first_rc"], seen["first_verbose"] = out, rc, err
        rc, out, err = self.sign_in(lab, "alice", USERS["alice"], jar)
        seen["login_alice"], seen["login_alice_rc"] = out, rc
        rc, out, _ = self.curl(lab, "-H", "X-Ztna-User: mallory", "-H", "X-Forwarded-For: 6.6.6.6",
                               "-H", "Connection: keep-alive, X-Secret-Hop", "-H", "X-Secret-Hop: 1",
                               f"https://{APP}/headers", jar=jar)
        seen["headers"], seen["headers_rc"] = out, rc
        rc, out, _ = self.curl(lab, "-L", "-w", "\n%{url_effective} %{http_code}", f"https://{APP}/.ztna/logout", jar=jar)
        seen["logout"], seen["logout_rc"] = out, rc
        jar_bob = str(lab.conf_dir / "browser-cookies-bob.txt")
        rc, out, _ = self.sign_in(lab, "bob", USERS["bob"], jar_bob)
        seen["login_bob"] = out
        ca = str(lab.pki_dir)
        rc, out, _ = self.curl(lab, "--cert", f"{ca}/carol.pem", "--key", f"{ca}/carol.key", f"https://{HR}/")
        seen["hr_carol"], seen["hr_carol_rc"] = out, rc
        rc, out, err = self.curl(lab, "--resolve", f"nothere.mycompany.net:443:{GW_PUBLIC}", "https://nothere.mycompany.net/")
        seen["unknown_sni_rc"], seen["unknown_sni_err"] = rc, err
        r = lab.exec(self.clients[0][0], ["curl", "-sS", "--max-time", "15", "--cacert", f"{ca}/internal-ca.pem",
                                          f"https://{APP}/"])
        seen["agent_curl"], seen["agent_curl_rc"] = r.stdout.decode(), r.returncode
        return seen

    # ---- the steps --------------------------------------------------------------------------
    def verify(self, lab: Lab, seen: dict) -> list[Step]:
        b = self.browser[0]
        up = capture.read(lab.pcap(b, "eth0"))
        lan = capture.read(lab.pcap("gateway", "eth1"))
        app = capture.read(lab.pcap("app", "eth0"))
        t0 = min((float(p.time) for p in up + lan), default=0.0)
        gwlog = Path(lab.procs["gateway"].log).read_text(errors="replace").splitlines()
        access = evidence.json_lines(self.access_log(lab)) if self.access_log(lab).exists() else []

        def at(t: float) -> str:
            return f"t={t - t0:6.3f}s"

        def logline(pattern: str) -> str | None:
            hit = [line for line in gwlog if re.search(pattern, line)]
            return hit[0].split(" gateway ", 1)[-1] if hit else None

        def lognote(pattern: str, what: str):
            """The gateway's first log line matching ``pattern``, as evidence at its time."""
            hit = [line for line in gwlog if re.search(pattern, line)]
            return flow.note("gateway", f"log: {what}", flow.log_time(hit[0])) if hit else None

        def accessnote(rec: dict):
            try:
                t = dt.datetime.fromisoformat(str(rec.get("time"))).timestamp()
            except ValueError:
                t = None
            return flow.note("gateway", f"access log: {rec.get('method')} {rec.get('path')} -> {rec.get('status')} "
                             f"({rec.get('decision')})", t)

        steps = [Step(str(i), text) for i, text in enumerate([
            f"the browser host has no agent and ordinary public DNS ({PUBLIC_DNS})",
            f"its query for {APP} gets the CNAME {GW_NAME} and {GW_PUBLIC}",
            f"it sends its ClientHello (SNI {APP}) to {GW_PUBLIC}:443",
            "the gateway routes by SNI on the one port: the tunnel name to the mTLS tunnel, the app name to the "
            "reverse proxy with that name's certificate, an unknown name to an unrecognized_name alert (logged)",
            "an unauthenticated request is sent to the gateway's sign-in page; after sign-in, back to the first URL",
            f"the gateway asks the private DNS server for {APP} and gets {APP_IP}",
            f"the gateway opens its own TLS to {APP_IP}:443, verified against the internal CA, forwarding with "
            "X-Forwarded-*, Forwarded and its own identity header, hop-by-hop fields stripped",
            "the user reaches the app; the page names the asserted identity; one JSON access-log line per request",
        ], start=1)]

        # 1. no agent: no TUN, resolv.conf names public DNS only
        if "ztna0" not in seen.get("browser_links", "") and seen.get("browser_resolv", "").split() == ["nameserver", PUBLIC_DNS]:
            links = ", ".join(re.findall(r"^\d+: ([^:@]+)", seen["browser_links"], re.M))
            steps[0].passed(f"{b}: links {links} "
                            f"(no ztna0); resolv.conf: nameserver {PUBLIC_DNS}",
                            flow.note(b, f"no ztna0; resolv.conf: nameserver {PUBLIC_DNS}", t0))
        # 2. CNAME and A on the browser's uplink
        q = [m for m in evidence.dns(up) if not m.response and m.name == APP and m.qtype == QTYPE.A and m.src == BROWSER_IP]
        a = [m for m in evidence.dns(up) if m.response and m.name == APP and GW_NAME in m.cnames and GW_PUBLIC in m.answers]
        if q and a:
            steps[1].see(f"{at(q[0].time)} {b}:eth0  {BROWSER_IP} -> {PUBLIC_DNS}:53  query {APP} A", q[0])
            steps[1].passed(f"{at(a[0].time)} {b}:eth0  answer {APP} CNAME {GW_NAME}, {GW_NAME} A {GW_PUBLIC}", a[0],
                            label=f"answer {APP} CNAME {GW_NAME}, A {GW_PUBLIC}")
        # 3. ClientHello with the app's SNI to the gateway
        segs = evidence.tcp(up)
        hellos = []
        for syn in evidence.syns(up, dst=GW_PUBLIC, dport=443):
            ch = evidence.tls(evidence.stream(segs, BROWSER_IP, GW_PUBLIC, sport=syn.sport, dport=443))
            sh = evidence.tls(evidence.stream(segs, GW_PUBLIC, BROWSER_IP, sport=443, dport=syn.sport))
            hellos.append((syn, ch, sh))
        app_hello = [h for h in hellos if h[1]["sni"] == APP]
        if app_hello:
            syn, ch, sh = app_hello[0]
            steps[2].passed(f"{at(syn.time)} {b}:eth0  SYN {BROWSER_IP}:{syn.sport} -> {GW_PUBLIC}:443; "
                            f"ClientHello SNI {ch['sni']}", syn)
            steps[2].attach(flow.first_data(segs, BROWSER_IP, GW_PUBLIC, sport=syn.sport, dport=443),
                            label=f"ClientHello SNI {ch['sni']}")
        # 4. routing by SNI: app -> TLS 1.3 with the app's certificate; unknown -> alert 112; tunnel -> agent session
        unknown = [h for h in hellos if h[1]["sni"] == "nothere.mycompany.net"]
        alert = unknown and b"\x15\x03\x03\x00\x02\x02\x70" in evidence.stream(
            segs, GW_PUBLIC, BROWSER_IP, sport=443, dport=unknown[0][0].sport)
        cert_line = [line for line in seen.get("first_verbose", "").splitlines() if "subjectAltName:" in line or "issuer:" in line]
        refused = logline(r"refused .* SNI nothere\.mycompany\.net is neither")
        tunnel = logline(r"session \d+ from .*identity alice \(certificate CN=alice")
        if app_hello and app_hello[0][2]["selected"] == "TLSv1.3" and any(f'matched cert\'s "{APP}"' in c for c in cert_line):
            steps[3].see(f"{b}:eth0  ServerHello selects TLSv1.3; curl: {'; '.join(c.strip('* ') for c in cert_line)}",
                         flow.first_data(segs, GW_PUBLIC, BROWSER_IP, sport=443, dport=app_hello[0][0].sport),
                         label=f"ServerHello, the certificate for {APP}")
            if alert and refused and tunnel and seen.get("agent_curl_rc") == 0:
                steps[3].see(f"{b}:eth0  SNI nothere.mycompany.net answered with alert unrecognized_name (112); "
                             f"gateway log: {refused}",
                             flow.first_data(segs, GW_PUBLIC, BROWSER_IP, sport=443, dport=unknown[0][0].sport),
                             label="alert unrecognized_name (SNI nothere.mycompany.net)")
                steps[3].passed(f"same port, tunnel name: gateway log: {tunnel}; the agent's curl got "
                                f"{seen['agent_curl'].splitlines()[0] if seen['agent_curl'] else ''!r}",
                                lognote(r"session \d+ from .*identity alice \(certificate CN=alice",
                                        "the tunnel name on the same port: agent session for alice"))
        # 5. redirect to sign-in, and back
        first = seen.get("first", "")
        login_ok = seen.get("login_alice_rc") == 0 and seen.get("login_alice", "").rstrip().endswith(f"https://{APP}/ 200")
        logins = [r for r in access if r.get("decision") == "login" and r.get("status") == 303 and r.get("identity") == "alice"]
        if first.startswith("302 ") and "/.ztna/login?next=/" in first and login_ok and logins:
            steps[4].see(f"GET https://{APP}/ without a session -> {first}")
            steps[4].passed(f"POST /.ztna/login as alice -> 303 to / ({logins[0]['reason']}); then "
                            f"{seen['login_alice'].splitlines()[-1]}", accessnote(logins[0]))
        # 6. private DNS from the gateway's LAN side
        pq = [m for m in evidence.dns(lan) if not m.response and m.name == APP and m.dst == PRIV_DNS]
        pa = [m for m in evidence.dns(lan) if m.response and m.name == APP and APP_IP in m.answers]
        if pq and pa:
            steps[5].see(f"{at(pq[0].time)} gateway:eth1  {pq[0].src} -> {PRIV_DNS}:53  query {APP} A", pq[0])
            steps[5].passed(f"{at(pa[0].time)} gateway:eth1  answer {APP} A {APP_IP}", pa[0])
        # 7. the gateway's own TLS to the app, and what the app received
        fwd = [s for s in evidence.syns(app, dst=APP_IP, dport=443) if s.src == "192.168.1.1"]
        asegs = evidence.tcp(app)
        ach = evidence.tls(evidence.stream(asegs, "192.168.1.1", APP_IP, sport=fwd[0].sport, dport=443)) if fwd else {"sni": None}
        verified = logline(rf"upstream {re.escape(APP)} {re.escape(APP_IP)}:443: .*verified against .*internal-ca\.pem")
        try:
            hdrs = {k.lower(): v for k, v in json.loads(seen.get("headers", "[]"))}
        except ValueError:
            hdrs = {}
        want = {"x-forwarded-for": BROWSER_IP, "x-forwarded-proto": "https", "x-forwarded-host": APP,
                "forwarded": f"for={BROWSER_IP};proto=https;host={APP}", IDENTITY_HEADER.lower(): "alice"}
        if fwd and ach["sni"] == APP and verified:
            steps[6].see(f"app:eth0  SYN 192.168.1.1:{fwd[0].sport} -> {APP_IP}:443, ClientHello SNI {ach['sni']}; "
                         f"gateway log: {verified}", fwd[0])
            steps[6].attach(flow.first_data(asegs, "192.168.1.1", APP_IP, sport=fwd[0].sport, dport=443),
                            label=f"the gateway's own ClientHello SNI {ach['sni']}")
            if all(hdrs.get(k) == v for k, v in want.items()) and "x-secret-hop" not in hdrs and "connection" not in hdrs:
                steps[6].passed("the app received " + ", ".join(f"{k}: {hdrs[k]}" for k in want) +
                                "; the browser's forged X-Ztna-User: mallory and X-Forwarded-For: 6.6.6.6 were replaced, "
                                "Connection and the X-Secret-Hop it named were stripped",
                                lognote(rf"upstream {re.escape(APP)} {re.escape(APP_IP)}:443: .*verified",
                                        f"TLS to {APP_IP} verified against the internal CA"))
            else:
                steps[6].see(f"headers at the app: {hdrs}")
        # 8. the page with the identity, the access log, and the refusals beside it
        page = seen.get("login_alice", "")
        lines = [r for r in access if r.get("app") == APP and r.get("identity") == "alice" and r.get("status") == 200
                 and r.get("upstream_ms") is not None]
        fields = {"time", "identity", "app", "method", "path", "status", "bytes_in", "bytes_out", "upstream_ms"}
        bob = seen.get("login_bob", "")
        if f"identity asserted by the gateway ({IDENTITY_HEADER}): alice" in page and lines and fields <= set(lines[0]):
            steps[7].see("page: " + " / ".join(page.splitlines()[:2]))
            steps[7].see("access log: " + json.dumps({k: lines[0][k] for k in sorted(fields)}), accessnote(lines[0]))
            if "403" in bob and "not allowed to reach" in bob and "identity asserted by the gateway (X-Ztna-User): carol" in seen.get("hr_carol", "") \
                    and "/.ztna/login" in seen.get("logout", ""):
                steps[7].passed("bob (not allowed) got 403 naming the reason; carol reached hr with her client "
                                "certificate; alice's logout led back to the sign-in page")
        return steps


SCENARIOS = [AgentlessScenario]
