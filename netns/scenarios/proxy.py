"""SPEC.md 5, the HTTPS forward proxy: ``proxy-explicit`` and ``proxy-transparent``.

Hosts (namespaces ``<prefix><host>``)::

    client 198.51.100.10 --- proxy 198.51.100.1 | 203.0.113.1 --- switch --- web 203.0.113.80
                                                                       \\--- dns 203.0.113.53

``web`` serves decrypt.example.com (allowed, decrypted), bank.example.com
(allowed, on the do-not-decrypt list) and blocked.example.com (denied) with
certificates from the lab CA (``<lab dir>/pki/ca.pem``); the proxy signs its
leaves with its own CA (``<lab dir>/pki/proxy-ca.pem``).  ``dns`` serves the
names with ``ztna authdns``.  The client is real curl: with ``--proxy`` in
explicit mode, and routed through the proxy host in transparent mode.

The proxy leg towards curl is limited to TLS 1.2 for the fetches checked in
the captures, because TLS 1.3 encrypts the Certificate message: with 1.2 the
certificate the client received can be read from the pcap and checked against
the proxy CA.  curl's own ``-v`` output (issuer line) is recorded as well.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ztna import tlswire

from .. import capture, evidence, flow, procs
from ..lab import Lab
from ..report import Step
from ..scenario import Scenario
from ..topology import Topology

CLIENT, PROXY_IN, PROXY_OUT, WEB, DNS = "198.51.100.10", "198.51.100.1", "203.0.113.1", "203.0.113.80", "203.0.113.53"
DECRYPT, BANK, BLOCKED = "decrypt.example.com", "bank.example.com", "blocked.example.com"
EXPLICIT_PORT = 3128
TRANSPARENT_PORT = 15443
# curl --local-port per site, so every flow is found in the captures by its port.
PORTS = {DECRYPT: 41001, BANK: 41002, BLOCKED: 41003}
# For the connect-failure tests: closed.example.com is the DNS host (nothing listens on 443:
# refused), void.example.com an address on the lab switch that no host has (never answers),
# twice.example.com that address first and then the web server.
VOID = "203.0.113.99"

ZONE = f"""$ORIGIN example.com.
@ IN SOA ns hostmaster 1 60 60 60 60
decrypt IN A {WEB}
bank IN A {WEB}
blocked IN A {WEB}
untrusted IN A {WEB}
reset IN A {WEB}
closed IN A {DNS}
void IN A {VOID}
twice IN A {VOID}
twice IN A {WEB}
"""


def topology(name: str, *, transparent: bool) -> Topology:
    t = Topology(name)
    t.host("client").addr("eth0", f"{CLIENT}/24").route("default", PROXY_IN)
    t.host("proxy", forward=transparent).addr("eth0", f"{PROXY_IN}/24").addr("eth1", f"{PROXY_OUT}/24")
    t.host("web").addr("eth0", f"{WEB}/24").route("default", PROXY_OUT)
    t.host("dns").addr("eth0", f"{DNS}/24").route("default", PROXY_OUT)
    t.link("client", "eth0", "proxy", "eth0")
    t.switch("sw", ("proxy", "eth1"), ("web", "eth0"), ("dns", "eth0"))
    return t


def proxy_toml(lab: Lab, *, mode: str, decrypt: bool = True, extra_policy: str = "", extra_proxy: str = "",
               extra_transparent: str = "", port: int | None = None) -> str:
    """The lab's proxy.toml; ``port``: listen there instead of the mode's usual port (a second proxy)."""
    if port is None:
        port = EXPLICIT_PORT if mode == "explicit" else TRANSPARENT_PORT
    listen = f"{PROXY_IN}:{port}"
    return f"""[proxy]
mode = "{mode}"
listen = "{listen}"
resolvers = ["{DNS}"]
trust_store = "{lab.pki_dir / 'ca.pem'}"
ca_cert = "{lab.pki_dir / 'proxy-ca.pem'}"
ca_key = "{lab.pki_dir / 'proxy-ca.key'}"
first_bytes_timeout = 3
{extra_proxy}
[policy]
client_networks = ["198.51.100.0/24"]
default = "deny"
allow = ["*.example.com"]
deny = ["{BLOCKED}"]
no_decrypt = ["{BANK}"]
decrypt = {'true' if decrypt else 'false'}
{extra_policy}
[transparent]
ports = [443]
nft_table = "ztna_proxy"
{extra_transparent}"""


def start_services(lab: Lab, *, mode: str, web_extra: list[str] = (), **toml) -> procs.Proc:
    """PKI, DNS, web and proxy; returns the proxy process."""
    from ztna import pki

    lab.ca()  # the lab CA signs the web servers; the proxy gets its own
    proxy_ca = pki.new_ca("ztna proxy CA", now=pki.utcnow())
    pki.save(proxy_ca, lab.pki_dir, "proxy-ca")
    certs = []
    for n in (DECRYPT, BANK, BLOCKED, "reset.example.com"):
        c, k = lab.issue(n, "server", dns=[n])
        certs += ["--cert", f"{n}={c},{k}"]
    # A certificate from a CA the proxy does not trust: the refusal page's case.
    rogue = pki.new_ca("rogue CA", now=pki.utcnow())
    c, k = lab.issue("untrusted.example.com", "server", dns=["untrusted.example.com"], ca=rogue)
    certs += ["--cert", f"untrusted.example.com={c},{k}"]
    for h in ("client", "proxy", "web", "dns"):
        lab.set_resolvers(h, [DNS])  # no lab process may fall back to the machine's resolver
    zone = lab.write_conf("example.com.zone", ZONE)
    dns = lab.start("dns", procs.ztna_argv("authdns", "run", "--zone", str(zone), "--listen", DNS), name="dns")
    import sys
    web = lab.start("web", [sys.executable, "-m", "netns.tlsweb", "--listen", WEB, "--http-port", "80",
                            "--reset-port", "444", *certs, *web_extra], name="web")
    procs.wait_listening(dns, DNS, 53, "udp")
    procs.wait_listening(web, WEB, 443)
    conf = lab.write_conf(f"proxy-{mode}.toml", proxy_toml(lab, mode=mode, **toml))
    proxy = lab.start("proxy", procs.ztna_argv("proxy", "run", "--config", str(conf)), name="proxy")
    procs.wait_listening(proxy, PROXY_IN, EXPLICIT_PORT if mode == "explicit" else TRANSPARENT_PORT)
    return proxy


@contextmanager
def both_proxies(name: str, root: Path, *, extra_policy: str = "connect_ports = [443, 444]\n"):
    """A lab with an explicit proxy (``proxy``) and a transparent one (``tproxy``) side by side; always torn down."""
    with Lab(name, topology(name, transparent=True), root=root).built() as lab:
        start_services(lab, mode="explicit", extra_policy=extra_policy)
        conf = lab.write_conf("proxy-transparent.toml", proxy_toml(lab, mode="transparent", extra_policy=extra_policy))
        tp = lab.start("proxy", procs.ztna_argv("proxy", "run", "--config", str(conf)), name="tproxy")
        procs.wait_listening(tp, PROXY_IN, TRANSPARENT_PORT)
        procs.wait_until(lambda: lab.exec("proxy", ["nft", "list", "table", "ip", "ztna_proxy"]).returncode == 0,
                         what="the transparent proxy's nft table")
        yield lab


def second_proxy(lab: Lab, name: str, port: int, extra_proxy: str = "") -> procs.Proc:
    """Another explicit proxy in the proxy namespace, on ``port``, logging to ``name``.log."""
    conf = lab.write_conf(f"{name}.toml", proxy_toml(lab, mode="explicit", port=port, extra_proxy=extra_proxy))
    p = lab.start("proxy", procs.ztna_argv("proxy", "run", "--config", str(conf)), name=name)
    procs.wait_listening(p, PROXY_IN, port)
    return p


def curl(lab: Lab, url: str, *, explicit: bool, port: int | None = None, tls12: bool = False,
         extra: list[str] = (), timeout: float = 20) -> dict:
    argv = ["curl", "-sS", "-v", "--max-time", "10", "--cacert", str(lab.pki_dir / "proxy-ca.pem")]
    # The client trusts both CAs, like a managed device: the lab CA for spliced sites, the proxy CA for the rest.
    bundle = lab.pki_dir / "client-trust.pem"
    if not bundle.exists():
        bundle.write_bytes((lab.pki_dir / "ca.pem").read_bytes() + (lab.pki_dir / "proxy-ca.pem").read_bytes())
    argv[argv.index("--cacert") + 1] = str(bundle)
    if explicit:
        argv += ["--proxy", f"http://{PROXY_IN}:{EXPLICIT_PORT}"]
    if port:
        argv += ["--local-port", str(port)]
    if tls12:
        argv += ["--tls-max", "1.2"]
    argv += [*extra, url]
    out = lab.exec("client", argv, timeout=timeout)
    return {"rc": out.returncode, "stdout": out.stdout.decode(errors="replace"), "stderr": out.stderr.decode(errors="replace")}


def proxy_log(lab: Lab) -> list[dict]:
    """The proxy's per-connection JSON lines."""
    return evidence.json_lines(lab.log_dir / "proxy.log")


# ---- reading captures (netns.evidence) -------------------------------------------------------------
def segments(pcap: Path) -> list[evidence.Seg]:
    return evidence.tcp(capture.read(pcap))


stream, time_at, first_syn = evidence.reassemble, evidence.time_at, evidence.first_syn


def dns_queries(pcap: Path, src: str) -> list[tuple[float, str]]:
    return [(m.time, m.name) for m in dns_query_msgs(pcap, src)]


def dns_query_msgs(pcap: Path, src: str) -> list[evidence.DnsMsg]:
    return [m for m in evidence.dns(capture.read(pcap)) if m.src == src and not m.response]


def query_at(msgs: list[evidence.DnsMsg], name: str, t: float | None) -> evidence.DnsMsg | None:
    """The DNS query for ``name`` captured at ``t`` (a time dns_queries gave), or None."""
    return next((m for m in msgs if m.name == name and m.time == t), None) if t is not None else None


def last_data(segs: list[evidence.Seg], src: str, dst: str, *, sport=None, dport=None) -> evidence.Seg | None:
    found = [x for x in segs if x.payload and x.src == src and x.dst == dst and (sport is None or x.sport == sport)
             and (dport is None or x.dport == dport)]
    return found[-1] if found else None


def _log_note(rec: dict | None) -> flow.Item | None:
    if not rec:
        return None
    import datetime as dt

    try:  # the line is written as the connection ends, and carries that time
        t = dt.datetime.fromisoformat(rec["ts"]).timestamp()
    except (KeyError, TypeError, ValueError):
        t = None
    return flow.note("proxy", f"log: {rec.get('name')} decision={rec.get('decision')} decrypted={rec.get('decrypted')}"
                     " (written at the connection's end)", t)


def client_hello_in(data: bytes) -> tlswire.ClientHello | None:
    try:
        return tlswire.parse_client_hello_untrusted(data)
    except tlswire.BadTLS:
        return None


def tls_from(data: bytes) -> tuple[list[tlswire.Record], list[tuple[int, bytes]]]:
    recs, _ = tlswire.records_untrusted(data)
    plain = []
    for r in recs:
        if r.content_type == tlswire.CONTENT_CHANGE_CIPHER_SPEC:
            break  # everything after CCS is encrypted
        plain.append(r)
    return recs, tlswire.handshake_messages_untrusted(plain)


def server_certificate(data: bytes) -> x509.Certificate | None:
    """The leaf certificate of a TLS 1.2 server flight (None under TLS 1.3, where it is encrypted)."""
    try:
        _, msgs = tls_from(data)
        for t, body in msgs:
            if t == tlswire.HS_CERTIFICATE:
                ders = tlswire.certificates_untrusted(body)
                return x509.load_der_x509_certificate(ders[0]) if ders else None
    except tlswire.BadTLS:
        return None
    return None


def signed_by(cert: x509.Certificate, ca_pem: Path) -> bool:
    ca = x509.load_pem_x509_certificate(Path(ca_pem).read_bytes())
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, Exception):
        return False


def first_record_time(times, data: bytes, content_type: int) -> float | None:
    off = 0
    recs, _ = tlswire.records_untrusted(data)
    for r in recs:
        if r.content_type == content_type:
            return time_at(times, off)
        off += 5 + len(r.fragment)
    return None


def server_hello_offset(data: bytes) -> int | None:
    off = 0
    try:
        recs, _ = tlswire.records_untrusted(data)
    except tlswire.BadTLS:
        return None
    for r in recs:
        if r.content_type == tlswire.CONTENT_HANDSHAKE and r.fragment[:1] == bytes([tlswire.HS_SERVER_HELLO]):
            return off
        off += 5 + len(r.fragment)
    return None


def _first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


def _fmt(t0: float, t: float | None) -> str:
    return "never" if t is None else f"t+{t - t0:.3f}s"


# ---- scenarios --------------------------------------------------------------------------------------
class _ProxyScenario(Scenario):
    mode = ""

    def topology(self) -> Topology:
        return topology(self.name, transparent=self.mode == "transparent")

    def start(self, lab: Lab) -> None:
        start_services(lab, mode=self.mode)

    def drive(self, lab: Lab) -> dict:
        explicit = self.mode == "explicit"
        seen = {}
        for name in (DECRYPT, BANK, BLOCKED):
            seen[name] = curl(lab, f"https://{name}/", explicit=explicit, port=PORTS[name], tls12=True)
        # The proxy writes a connection's line when the connection ends, a moment after curl exits.
        want = {f":{p}" for p in PORTS.values()}
        try:
            procs.wait_until(lambda: want <= {":" + str(r.get("client", "")).rsplit(":", 1)[-1] for r in proxy_log(lab)},
                             timeout=5, what="the proxy's log lines")
        except TimeoutError:
            pass  # verify() reports the missing lines as failed steps
        seen["log"] = proxy_log(lab)
        return seen

    def _log_for(self, seen: dict, name: str) -> dict | None:
        for r in seen["log"]:
            if r.get("name") == name and str(r.get("client", "")).endswith(f":{PORTS[name]}"):
                return r
        return None

    def _issuer_line(self, out: dict) -> str:
        for line in out["stderr"].splitlines():
            if "issuer:" in line:
                return line.strip("* ").strip()
        return "(curl printed no issuer)"

    # ---- the checks both modes make of a decrypted site ----------------------------------------------
    def _server_tls_first(self, lab: Lab, number: str, legs: "_Legs", seen: dict, t0: float) -> Step:
        """TLS with the server completes before the client gets a proxy-CA certificate for the name."""
        name = legs.name
        st = Step(number, f"{name}: TLS with the server completes before the client gets a proxy-CA certificate for {name}")
        tunnel_down = legs.down[legs.down_off:]
        sh_s, sh_c = server_hello_offset(legs.srv_down), server_hello_offset(tunnel_down)
        cert = server_certificate(tunnel_down)
        if sh_s is None or sh_c is None or cert is None:
            st.see(f"ServerHello to the proxy: {sh_s is not None}, to the client: {sh_c is not None}, "
                   f"client's certificate read: {cert is not None}")
            return st
        ts, tc = time_at(legs.srv_down_t, sh_s), time_at(legs.down_t, legs.down_off + sh_c)
        proxy_ca = lab.pki_dir / "proxy-ca.pem"
        good = signed_by(cert, proxy_ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        if not (ts <= tc and good and sans == [name]):
            st.see(f"server hello at {_fmt(t0, ts)}, client hello at {_fmt(t0, tc)}, cert ok={good}, SAN={sans}")
            return st
        st.passed(f"server's ServerHello at {_fmt(t0, ts)}, proxy's ServerHello to the client at {_fmt(t0, tc)}",
                  flow.seg_at(legs.ssegs, ts, WEB, PROXY_OUT, dport=legs.sport), label="ServerHello (the server's)")
        st.attach(flow.seg_at(legs.csegs, tc, legs.peer, CLIENT, dport=legs.port),
                  label=f"ServerHello, a proxy-CA certificate for {name}", frm=legs.frm)
        st.passed(f"client got certificate SAN={sans} issuer={cert.issuer.rfc4514_string()!r}, signature verifies "
                  f"with proxy-ca.pem (TLS 1.2 capture); curl -v: {self._issuer_line(seen[name])}")
        ca_key = x509.load_pem_x509_certificate(proxy_ca.read_bytes()).public_key()
        if isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and \
                cert.public_key().public_numbers() == ca_key.public_numbers():
            st.ok = False
            st.see("the leaf key equals the proxy CA key")
        return st

    def _decrypted_both_ways(self, number: str, legs: "_Legs", seen: dict, rec: dict | None) -> Step:
        """Two different ClientHellos on the two legs, the page came through, the log says decrypted."""
        name = legs.name
        st = Step(number, f"{name}: traffic is decrypted and re-encrypted in both directions")
        ch_c, ch_s = client_hello_in(legs.up[legs.up_off:]), client_hello_in(legs.srv_up)
        body = seen[name]["stdout"]
        if ch_c and ch_s and ch_c.raw != ch_s.raw and f"hello from {name} over https" in body and rec and rec.get("decrypted"):
            st.passed(f"two different ClientHellos (client's {len(ch_c.raw)} bytes, proxy's {len(ch_s.raw)} bytes); "
                      f"curl received {body.strip()!r}; proxy log bytes up/down {rec.get('bytes_up')}/{rec.get('bytes_down')}",
                      flow.seg_at(legs.csegs, time_at(legs.up_t, legs.up_off), CLIENT, legs.peer, sport=legs.port),
                      label=f"ClientHello ({len(ch_c.raw)} bytes)", to=legs.frm)
            st.attach(flow.first_data(legs.ssegs, PROXY_OUT, WEB, sport=legs.sport, dport=443),
                      label=f"another ClientHello ({len(ch_s.raw)} bytes, the proxy's)")
            st.attach(last_data(legs.csegs, legs.peer, CLIENT, sport=legs.peer_port, dport=legs.port),
                      label="re-encrypted bytes to the client", frm=legs.frm)
        return st


@dataclass
class _Legs:
    """One site's connection on both legs: client <-> proxy (as the client saw it) and proxy <-> server.

    ``up_off``/``down_off``: where the TLS bytes start in the client's streams
    (after the CONNECT head and status in explicit mode); ``peer``: the address
    the client talks to (the proxy's, or in transparent mode the server's, which
    the proxy answers for: then ``frm`` draws those arrows from the proxy)."""

    name: str
    port: int
    csegs: list
    ssegs: list
    up: bytes
    up_t: list
    down: bytes
    down_t: list
    up_off: int
    down_off: int
    sport: int | None
    srv_up: bytes
    srv_down: bytes
    srv_down_t: list
    peer: str
    peer_port: int
    frm: str | None = None


class ExplicitScenario(_ProxyScenario):
    """Explicit forward proxy: CONNECT, FQDN policy, splice for the exception site, decryption otherwise."""

    name = "proxy-explicit"
    summary = "HTTPS forward proxy, explicit CONNECT mode: decrypted, do-not-decrypt and blocked sites (SPEC 5)"
    mode = "explicit"

    def verify(self, lab: Lab, seen: dict) -> list[Step]:
        csegs = segments(lab.pcap("client", "eth0"))
        ssegs = segments(lab.pcap("proxy", "eth1"))
        t0 = min((s.time for s in csegs), default=0.0)
        steps: list[Step] = []
        for name, label in ((BANK, "exception"), (DECRYPT, "decrypt"), (BLOCKED, "blocked")):
            port = PORTS[name]
            rec = self._log_for(seen, name)
            up, up_t = stream(csegs, CLIENT, port, PROXY_IN, EXPLICIT_PORT)
            down, down_t = stream(csegs, PROXY_IN, EXPLICIT_PORT, CLIENT, port)
            syn = next((s for s in csegs if s.src == CLIENT and s.sport == port and s.flags == "S"), None)
            synack = next((s for s in csegs if s.src == PROXY_IN and s.dport == port and "S" in s.flags and "A" in s.flags), None)
            s1 = Step(f"{label}.1", f"{name}: client and proxy complete a TCP handshake on {PROXY_IN}:{EXPLICIT_PORT}")
            if synack and syn:
                s1.passed(f"SYN {CLIENT}:{port} -> {PROXY_IN}:{EXPLICIT_PORT}, SYN-ACK at {_fmt(t0, synack.time)}", syn, synack)
            steps.append(s1)
            line = f"CONNECT {name}:443 HTTP/1.1".encode()
            s2 = Step(f"{label}.2", f"{name}: the client sends CONNECT {name}:443")
            connect_t = None
            if up.startswith(line):
                connect_t = time_at(up_t, 0)
                s2.passed(f"{_first_line(up)!r} at {_fmt(t0, connect_t)} (client eth0)",
                          flow.seg_at(csegs, connect_t, CLIENT, PROXY_IN, sport=port), label=f"CONNECT {name}:443")
            steps.append(s2)
            s3 = Step(f"{label}.3", f"{name}: the proxy applies the FQDN policy to the CONNECT name")
            want = "deny" if name == BLOCKED else "allow"
            if rec and rec.get("decision") == want:
                s3.passed(f"proxy log: decision={rec['decision']} decrypted={rec.get('decrypted')} reason={rec.get('reason')!r}",
                          _log_note(rec))
            elif rec:
                s3.see(f"proxy log: {rec}")
            steps.append(s3)
            qmsgs = dns_query_msgs(lab.pcap("proxy", "eth1"), PROXY_OUT)
            q = [m.time for m in qmsgs if m.name == name and (connect_t is None or m.time >= connect_t)]
            status_off = down.find(b"HTTP/1.1 ")
            status_t = time_at(down_t, status_off) if status_off >= 0 else None
            status_seg = flow.seg_at(csegs, status_t, PROXY_IN, CLIENT, dport=port)
            if name == BLOCKED:
                s4 = Step(f"{label}.4", f"{name}: refused with 403 and the reason; the proxy opens nothing towards it")
                server_syn = first_syn(ssegs, src=PROXY_OUT, dst=WEB, dport=443, after=connect_t or 0)
                later = server_syn is not None and status_t is not None and server_syn.time < status_t + 0.001
                if down.startswith(b"HTTP/1.1 403") and not q and not later:
                    reason = next((l for l in down.split(b"\r\n") if l.lower().startswith(b"x-ztna-proxy-reason")), b"")
                    s4.passed(f"{_first_line(down)!r} ({reason.decode()}); no DNS query or SYN for {name}", status_seg,
                              label=_first_line(down))
                else:
                    s4.see(f"answer {down[:40]!r}; DNS queries for it: {len(q)}")
                steps.append(s4)
                continue
            s4 = Step(f"{label}.4", f"{name}: allowed, the proxy resolves it and opens TCP to the server")
            server_syn = first_syn(ssegs, src=PROXY_OUT, dst=WEB, dport=443, after=connect_t or 0)
            if q and server_syn and (status_t is None or server_syn.time <= status_t):
                s4.passed(f"DNS query {name} from {PROXY_OUT} at {_fmt(t0, q[0])}; SYN {PROXY_OUT}:{server_syn.sport} -> {WEB}:443 at {_fmt(t0, server_syn.time)}",
                          query_at(qmsgs, name, q[0]), server_syn)
            steps.append(s4)
            s5 = Step(f"{label}.5", f"{name}: the CONNECT status goes back to the client after the server connection")
            if down.startswith(b"HTTP/1.1 200") and server_syn and status_t is not None and status_t >= server_syn.time:
                s5.passed(f"{_first_line(down)!r} at {_fmt(t0, status_t)}", status_seg, label=_first_line(down))
            steps.append(s5)
            hdr_end = down.find(b"\r\n\r\n") + 4
            tunnel_up = up[up.find(b"\r\n\r\n") + 4:]
            tunnel_down = down[hdr_end:]
            sport = server_syn.sport if server_syn else None
            srv_up, srv_up_t = stream(ssegs, PROXY_OUT, sport, WEB, 443)
            srv_down, srv_down_t = stream(ssegs, WEB, 443, PROXY_OUT, sport)
            if name == BANK:
                s6 = Step(f"{label}.6", f"{name}: every byte after the status passes untouched (same bytes on both sides)")
                ch = client_hello_in(tunnel_up)
                cert = server_certificate(tunnel_down)
                if tunnel_up and tunnel_up == srv_up and tunnel_down == srv_down and ch:
                    s6.passed(f"client->server {len(tunnel_up)} bytes identical on client eth0 and proxy eth1 "
                              f"(ClientHello SNI={ch.sni}, {len(ch.raw)} bytes)",
                              flow.seg_at(csegs, time_at(up_t, up.find(b"\r\n\r\n") + 4), CLIENT, PROXY_IN, sport=port),
                              flow.first_data(ssegs, PROXY_OUT, WEB, sport=sport, dport=443),
                              label=f"ClientHello SNI {ch.sni} (same bytes)")
                    s6.attach(flow.first_data(ssegs, WEB, PROXY_OUT, sport=443, dport=sport),
                              flow.seg_at(csegs, time_at(down_t, hdr_end), PROXY_IN, CLIENT, dport=port),
                              label="ServerHello, the server's own certificate (same bytes)")
                    s6.passed(f"server->client {len(tunnel_down)} bytes identical; certificate the client got: "
                              f"{cert.issuer.rfc4514_string() if cert else 'n/a'} (lab CA: {bool(cert and signed_by(cert, lab.pki_dir / 'ca.pem'))})")
                else:
                    s6.see(f"client side {len(tunnel_up)}/{len(tunnel_down)} bytes, server side {len(srv_up)}/{len(srv_down)}")
                if rec and rec.get("decrypted"):
                    s6.ok = False
                    s6.see("but the proxy log says it decrypted")
                steps.append(s6)
            else:
                legs = _Legs(name, port, csegs, ssegs, up, up_t, down, down_t, up.find(b"\r\n\r\n") + 4, hdr_end, sport,
                             srv_up, srv_down, srv_down_t, PROXY_IN, EXPLICIT_PORT)
                steps.append(self._server_tls_first(lab, f"{label}.6", legs, seen, t0))
                steps.append(self._decrypted_both_ways(f"{label}.7", legs, seen, rec))
        return steps


class TransparentScenario(_ProxyScenario):
    """Transparent forward proxy: routed traffic, SNI policy, re-resolution, splice or decryption."""

    name = "proxy-transparent"
    summary = "HTTPS forward proxy, transparent (routed, SNI) mode: decrypted, do-not-decrypt and blocked sites (SPEC 5)"
    mode = "transparent"

    def verify(self, lab: Lab, seen: dict) -> list[Step]:
        csegs = segments(lab.pcap("client", "eth0"))
        ssegs = segments(lab.pcap("proxy", "eth1"))
        wsegs = segments(lab.pcap("web", "eth0"))
        t0 = min((s.time for s in csegs), default=0.0)
        steps: list[Step] = []
        for name, label in ((BANK, "exception"), (DECRYPT, "decrypt"), (BLOCKED, "blocked")):
            port = PORTS[name]
            rec = self._log_for(seen, name)
            up, up_t = stream(csegs, CLIENT, port, WEB, 443)
            down, down_t = stream(csegs, WEB, 443, CLIENT, port)
            synack = next((s for s in csegs if s.src == WEB and s.dport == port and "S" in s.flags and "A" in s.flags), None)
            from_client = [s for s in wsegs if s.src == CLIENT and s.sport == port]
            s1 = Step(f"{label}.1", f"{name}: the proxy answers the client's TCP handshake to {WEB}:443 itself")
            if synack and not from_client:
                syn = next((x for x in csegs if x.src == CLIENT and x.sport == port and x.flags == "S"), None)
                # The addresses say web; the proxy's namespace is where the handshake ends.
                s1.passed(f"SYN-ACK 'from' {WEB}:443 at {_fmt(t0, synack.time)} on client eth0; "
                          f"no packet from {CLIENT}:{port} ever reaches web eth0", syn, label="SYN (to web's address)", to="proxy")
                s1.attach(synack, label="SYN-ACK (answered by the proxy)", frm="proxy")
            steps.append(s1)
            ch = client_hello_in(up)
            s2 = Step(f"{label}.2", f"{name}: the ClientHello carries SNI {name}; the proxy applies the FQDN policy")
            hello_t = time_at(up_t, 0) if up else None
            want = "deny" if name == BLOCKED else "allow"
            if ch and ch.sni == name and rec and rec.get("decision") == want:
                s2.passed(f"ClientHello SNI={ch.sni} ({len(ch.raw)} bytes) at {_fmt(t0, hello_t)}",
                          flow.seg_at(csegs, hello_t, CLIENT, WEB, sport=port), label=f"ClientHello SNI {ch.sni}", to="proxy")
                s2.passed(f"proxy log: decision={rec['decision']} decrypted={rec.get('decrypted')} reason={rec.get('reason')!r} dialled={rec.get('dialled')}",
                          _log_note(rec))
            steps.append(s2)
            qmsgs = dns_query_msgs(lab.pcap("proxy", "eth1"), PROXY_OUT)
            q = [m.time for m in qmsgs if m.name == name and hello_t and m.time >= hello_t]
            server_syn = first_syn(ssegs, src=PROXY_OUT, dst=WEB, dport=443, after=hello_t or 0)
            if name == BLOCKED:
                s3 = Step(f"{label}.3", f"{name}: denied: a block page over a proxy-CA certificate; nothing is resolved or opened for it")
                cert = server_certificate(down)
                later_syn = server_syn is not None and server_syn.time < (hello_t or 0) + 1.0 and rec and \
                    not rec.get("upstream")
                body = seen[name]["stdout"]
                if not q and cert and signed_by(cert, lab.pki_dir / "proxy-ca.pem") and "Blocked by the proxy" in body and not later_syn:
                    s3.passed(f"curl received the block page ({body.strip()[:90]!r}...); certificate issuer {cert.issuer.rfc4514_string()!r}",
                              flow.first_data(csegs, WEB, CLIENT, sport=443, dport=port),
                              label="ServerHello, a proxy-CA certificate (block page follows)", frm="proxy")
                    s3.passed(f"no DNS query for {name} from {PROXY_OUT}; proxy log upstream={rec.get('upstream')}")
                else:
                    s3.see(f"dns queries {len(q)}, cert={cert is not None}, body={body[:80]!r}")
                steps.append(s3)
                continue
            s3 = Step(f"{label}.3", f"{name}: the proxy resolves the SNI with DNS again")
            if q:
                s3.passed(f"DNS query {name} A from {PROXY_OUT} to {DNS} at {_fmt(t0, q[0])}, after the ClientHello",
                          query_at(qmsgs, name, q[0]))
            steps.append(s3)
            s4 = Step(f"{label}.4", f"{name}: the proxy opens TCP to the resolved address")
            if q and server_syn and server_syn.time >= q[0] and rec and rec.get("upstream") == f"{WEB}:443":
                s4.passed(f"SYN {PROXY_OUT}:{server_syn.sport} -> {WEB}:443 at {_fmt(t0, server_syn.time)}; log upstream={rec['upstream']}",
                          server_syn)
            steps.append(s4)
            sport = server_syn.sport if server_syn else None
            srv_up, srv_up_t = stream(ssegs, PROXY_OUT, sport, WEB, 443)
            srv_down, srv_down_t = stream(ssegs, WEB, 443, PROXY_OUT, sport)
            if name == BANK:
                s5 = Step(f"{label}.5", f"{name}: the very same ClientHello goes to the server, the ServerHello comes back unchanged")
                ch_s = client_hello_in(srv_up)
                sh_c, sh_s = server_hello_offset(down), server_hello_offset(srv_down)
                if ch and ch_s and ch.raw == ch_s.raw and sh_c == sh_s == 0 and srv_down[:200] == down[:200]:
                    s5.passed(f"ClientHello {len(ch.raw)} bytes, byte-identical on client eth0 and proxy eth1",
                              flow.first_data(ssegs, PROXY_OUT, WEB, sport=sport, dport=443), label=f"the same ClientHello SNI {ch.sni}")
                    s5.passed("ServerHello flight identical on both sides",
                              flow.first_data(ssegs, WEB, PROXY_OUT, sport=443, dport=sport), label="ServerHello")
                    s5.attach(flow.first_data(csegs, WEB, CLIENT, sport=443, dport=port), label="the same ServerHello", frm="proxy")
                steps.append(s5)
                s6 = Step(f"{label}.6", f"{name}: every later byte passes as it is")
                cert = server_certificate(down)
                if up and up == srv_up and down == srv_down and rec and not rec.get("decrypted"):
                    s6.passed(f"{len(up)} bytes up and {len(down)} bytes down identical on both sides; "
                              f"certificate the client got is the server's own (lab CA: {bool(cert and signed_by(cert, lab.pki_dir / 'ca.pem'))})",
                              last_data(ssegs, WEB, PROXY_OUT, sport=443, dport=sport),
                              label="last bytes from the server (identical on both legs)")
                    s6.attach(last_data(csegs, WEB, CLIENT, sport=443, dport=port), label="the same last bytes", frm="proxy")
                steps.append(s6)
            else:
                legs = _Legs(name, port, csegs, ssegs, up, up_t, down, down_t, 0, 0, sport, srv_up, srv_down, srv_down_t,
                             WEB, 443, frm="proxy")
                steps.append(self._server_tls_first(lab, f"{label}.5", legs, seen, t0))
                steps.append(self._decrypted_both_ways(f"{label}.6", legs, seen, rec))
        return steps


SCENARIOS = [ExplicitScenario, TransparentScenario]
