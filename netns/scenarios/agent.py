"""Scenario ``agent``: the ZTNA agent flow of SPEC.md §1 (seed 000), nine steps.

    client --eth0-- inet (router, public DNS .53, www.example.com .80) --eth1-- gateway --eth1-- [lan] -- privdns, app
    198.51.100.10   198.51.100.1/.53/.80  203.0.113.1               203.0.113.20  192.168.1.1      .53      .20/.21

The client runs the agent (identity ``alice``); ``dig`` and ``curl`` there do
what a browser does.  Every link is captured, and each step is checked against
the captures.
"""

from __future__ import annotations

import json

from dnslib import QTYPE
from pathlib import Path

from .. import capture, dig, evidence, flow, procs
from ..lab import Lab
from ..report import Step
from ..scenario import Scenario
from ..topology import Topology

APP, HR, GW_NAME = "app.mycompany.net", "hr.mycompany.net", "gateway.mycompany.net"
GW_PUBLIC, PUBLIC_DNS, WWW = "203.0.113.20", "198.51.100.53", "198.51.100.80"
PRIV_DNS, APP_IP, HR_IP = "192.168.1.53", "192.168.1.20", "192.168.1.21"
AGENT_NET, LAN = "100.64.0.0/10", "192.168.1.0/24"

PUBLIC_ZONES = {
    "mycompany.net": f"@ IN SOA ns1 hostmaster 1 60 60 60 60\ngateway IN A {GW_PUBLIC}\n",
    "example.com": f"@ IN SOA ns1 hostmaster 1 60 60 60 60\nwww IN A {WWW}\n",
}
PRIVATE_ZONE = f"@ IN SOA ns1 hostmaster 1 60 60 60 60\napp IN A {APP_IP}\nhr IN A {HR_IP}\n"


class AgentScenario(Scenario):
    """Agent flow: DNS interception, a 100.64/10 lease, the mTLS tunnel, private DNS, the application."""

    name = "agent"
    summary = "ZTNA agent flow (SPEC §1): DNS interception, 100.64/10 lease, mTLS tunnel, private DNS, app"
    # (host, address, identity, applications the agent intercepts)
    clients = [("client", "198.51.100.10", "alice")]
    policy = {"alice": [APP], "bob": [HR]}
    apps = [APP, HR]
    public_zones = PUBLIC_ZONES  # zone -> records (a test gives the gateway's name two addresses)
    # The TUN's own addresses are the client's; a leased address stands for the
    # application behind the gateway; the gateway's inside addresses are its own.
    aliases = {"100.64.0.1/32": "client", "100.64.0.2/32": "client", AGENT_NET: "app", "10.254.0.0/16": "gateway"}
    tunnels = [flow.Tunnel("mTLS tunnel", ("client", "gateway"), ["client:ztna0", "gateway:ztgw0"], 443)]
    try_this = [
        f"sudo {{ztna}} lab exec client -- dig {APP}",
        f"sudo {{ztna}} lab exec client -- curl --cacert {{run}}/pki/ca.pem https://{APP}/",
        f"sudo {{ztna}} lab exec client -- curl --cacert {{run}}/pki/ca.pem https://{HR}/   (alice may not: refused)",
        "sudo {ztna} lab exec client -- {ztna} agent status --state-dir {run}/agent-client",
    ]

    @property
    def capture_extra(self):
        return [(h, "lo") for h, _, _ in self.clients] + [(h, "ztna0") for h, _, _ in self.clients] + [("gateway", "ztgw0")]

    def public_hosts(self) -> list[tuple[str, str]]:
        """(host, address) of every host on the public segment beside inet (the agentless scenario adds browsers)."""
        return [(h, ip) for h, ip, _ in self.clients]

    def topology(self) -> Topology:
        t = Topology(self.name)
        hosts = self.public_hosts()
        for host, ip in hosts:
            t.host(host).addr("eth0", f"{ip}/24").route("default", "198.51.100.1")
        inet = t.host("inet", forward=True)
        for a in ("198.51.100.1/24", f"{PUBLIC_DNS}/24", f"{WWW}/24"):
            inet.addr("eth0", a)
        inet.addr("eth1", "203.0.113.1/24")
        t.host("gateway", forward=True).addr("eth0", f"{GW_PUBLIC}/24").addr("eth1", "192.168.1.1/24") \
            .route("default", "203.0.113.1")
        t.host("privdns").addr("eth0", f"{PRIV_DNS}/24")
        t.host("app").addr("eth0", f"{APP_IP}/24").addr("eth0", f"{HR_IP}/24")
        if len(hosts) == 1:
            t.link(hosts[0][0], "eth0", "inet", "eth0")
        else:
            t.switch("pub", *[(h, "eth0") for h, _ in hosts], ("inet", "eth0"))
        t.link("inet", "eth1", "gateway", "eth0")
        t.switch("lan", ("gateway", "eth1"), ("privdns", "eth0"), ("app", "eth0"))
        return t

    # ---- services ---------------------------------------------------------------
    def start(self, lab: Lab) -> None:
        lab.ca()
        lab.issue("gateway", "gateway", dns=[GW_NAME])
        for name in (APP, HR):
            lab.issue(name, "server", dns=[name])
        for _, _, ident in self.clients:
            lab.issue(ident, "agent")
        public = [lab.write_conf(f"public-{z}.zone", f"$ORIGIN {z}.\n{body}") for z, body in self.public_zones.items()]
        private = lab.write_conf("private.zone", f"$ORIGIN mycompany.net.\n{PRIVATE_ZONE}")
        started = [
            (lab.start("inet", procs.ztna_argv("authdns", "run", "--listen", PUBLIC_DNS,
                                               *[a for z in public for a in ("--zone", str(z))]), name="public-dns"),
             PUBLIC_DNS, 53, "udp"),
            (lab.start("privdns", procs.ztna_argv("authdns", "run", "--listen", PRIV_DNS, "--zone", str(private)),
                       name="private-dns"), PRIV_DNS, 53, "udp"),
            (lab.start("inet", web_argv(WWW, http_port=80), name="www"), WWW, 80, "tcp"),
        ]
        for name, ip in ((APP, APP_IP), (HR, HR_IP)):
            started.append((lab.start("app", web_argv(ip, cert=(name, lab.pki_dir / f"{name}.pem", lab.pki_dir / f"{name}.key")),
                                      name=f"web-{name.split('.')[0]}"), ip, 443, "tcp"))
        self.start_gateway(lab)
        for p, ip, port, proto in started:
            procs.wait_listening(p, ip, port, proto)
        for host, _, ident in self.clients:
            self.start_agent(lab, host, ident)

    def gateway_conf(self, lab: Lab) -> str:
        pol = "\n".join(f"{ident} = {json.dumps(pats)}" for ident, pats in self.policy.items())
        return (f"[gateway]\nlisten = \"{GW_PUBLIC}\"\nport = 443\ncert = \"{lab.pki_dir}/gateway.pem\"\n"
                f"key = \"{lab.pki_dir}/gateway.key\"\nca = \"{lab.pki_dir}/ca.pem\"\n"
                f"private_dns = [\"{PRIV_DNS}\"]\n\n[policy]\n{pol}\n")

    def start_gateway(self, lab: Lab) -> procs.Proc:
        conf = lab.write_conf("gateway.toml", self.gateway_conf(lab))
        p = lab.start("gateway", procs.ztna_argv("gateway", "run", "--config", str(conf)), name="gateway")
        procs.wait_listening(p, GW_PUBLIC, 443)
        return p

    def agent_conf(self, lab: Lab, host: str, ident: str) -> Path:
        lab.set_resolvers(host, [PUBLIC_DNS])
        return lab.write_conf(f"agent-{host}.toml", (
            f"[agent]\ncert = \"{lab.pki_dir}/{ident}.pem\"\nkey = \"{lab.pki_dir}/{ident}.key\"\n"
            f"ca = \"{lab.pki_dir}/ca.pem\"\ngateway = \"{GW_NAME}\"\napps = {json.dumps(self.apps)}\n"
            f"resolv_conf = \"{lab.resolv_conf_path(host)}\"\nstate_dir = \"{lab.root}/agent-{host}\"\n"))

    def start_agent(self, lab: Lab, host: str, ident: str) -> procs.Proc:
        conf = self.agent_conf(lab, host, ident)
        p = lab.start(host, procs.ztna_argv("agent", "run", "--config", str(conf)), name=f"agent-{host}")
        procs.wait_listening(p, "100.64.0.2", 53, "udp")
        procs.wait_until(lambda: "100.64.0.2" in lab.resolv_conf_path(host).read_text(), what="the agent to take over DNS")
        return p

    # ---- the user's action ---------------------------------------------------------
    def drive(self, lab: Lab) -> dict:
        host = self.clients[0][0]
        ca = str(lab.pki_dir / "ca.pem")
        seen = {}
        seen["dig_app"] = dig.short(lab, host, APP)
        r = lab.exec(host, ["curl", "-sS", "--max-time", "15", "--cacert", ca, f"https://{APP}/"])
        seen["curl_app"], seen["curl_app_rc"], seen["curl_app_err"] = r.stdout.decode(), r.returncode, r.stderr.decode()
        seen["dig_www"] = dig.short(lab, host, "www.example.com")
        r = lab.exec(host, ["curl", "-sS", "--max-time", "10", "http://www.example.com/"])
        seen["curl_www"], seen["curl_www_rc"] = r.stdout.decode(), r.returncode
        r = lab.exec(host, procs.ztna_argv("agent", "status", "--json", "--state-dir", f"{lab.root}/agent-{host}"))
        seen["status"] = r.stdout.decode()
        return seen

    # ---- the nine steps -----------------------------------------------------------------
    def verify(self, lab: Lab, seen: dict) -> list[Step]:
        host = self.clients[0][0]
        client_ip = self.clients[0][1]
        lo = capture.read(lab.pcap(host, "lo"))
        tun = capture.read(lab.pcap(host, "ztna0"))
        up = capture.read(lab.pcap(host, "eth0"))
        lan = capture.read(lab.pcap("gateway", "eth1"))
        app = capture.read(lab.pcap("app", "eth0"))
        t0 = min((float(p.time) for p in lo + up + lan), default=0.0)

        def at(t: float) -> str:
            return f"t={t - t0:6.3f}s"

        steps = [Step(str(i), text) for i, text in enumerate([
            f"the browser opens https://{APP}: its DNS query goes to the agent's stub",
            "the agent answers with a leased 100.64/10 address; the SYN to it enters the TUN",
            f"the agent asks public DNS for the gateway's A record ({GW_NAME})",
            f"public DNS answers {GW_PUBLIC}",
            "agent and gateway build a TLS 1.3 mutual-TLS tunnel on port 443",
            "the application's packets travel only inside the tunnel",
            f"the gateway asks the private DNS server for {APP}",
            f"private DNS answers {APP_IP}; the gateway forwards the traffic there",
            "the user reaches the private application through the tunnel",
        ], start=1)]

        # 1. query for the app to the stub (loopback: the stub's address is local)
        q = [m for m in evidence.dns(lo) if not m.response and m.name == APP and m.dst == "100.64.0.2"]
        if q:
            steps[0].passed(f"{at(q[0].time)} {host}:lo  {q[0].src} -> 100.64.0.2:53  query {APP} {QTYPE.get(q[0].qtype)}", q[0])
        # 2. the leased answer, then the SYN on the TUN
        a = [m for m in evidence.dns(lo) if m.response and m.name == APP and m.answers]
        leased = a[0].answers[0] if a else None
        if leased and evidence.in_net(leased, AGENT_NET):
            steps[1].see(f"{at(a[0].time)} {host}:lo  answer {APP} A {leased} (in {AGENT_NET}); dig printed {seen['dig_app']!r}", a[0])
            syn = evidence.syns(tun, dst=leased, dport=443)
            if syn:
                steps[1].passed(f"{at(syn[0].time)} {host}:ztna0  SYN {syn[0].src}:{syn[0].sport} -> {leased}:443", syn[0],
                                label="SYN (into the TUN)")
        # 3-4. public DNS for the gateway on the uplink
        gq = [m for m in evidence.dns(up) if not m.response and m.name == GW_NAME and m.dst == PUBLIC_DNS]
        ga = [m for m in evidence.dns(up) if m.response and m.name == GW_NAME and GW_PUBLIC in m.answers]
        if gq:
            steps[2].passed(f"{at(gq[0].time)} {host}:eth0  {gq[0].src} -> {PUBLIC_DNS}:53  query {GW_NAME} A", gq[0])
        if ga:
            steps[3].passed(f"{at(ga[0].time)} {host}:eth0  {PUBLIC_DNS} -> {ga[0].dst}  answer {GW_NAME} A {GW_PUBLIC}", ga[0])
        # 5. TLS 1.3 to the gateway; mutual authentication shown by the gateway's log
        segs = evidence.tcp(up)
        syn_gw = evidence.syns(up, dst=GW_PUBLIC, dport=443)
        port = syn_gw[0].sport if syn_gw else None
        ch = evidence.tls(evidence.stream(segs, client_ip, GW_PUBLIC, sport=port, dport=443))
        sh = evidence.tls(evidence.stream(segs, GW_PUBLIC, client_ip, sport=443, dport=port))
        gwlog = Path(lab.procs["gateway"].log).read_text(errors="replace")
        ident = self.clients[0][2]
        auth = [l for l in gwlog.splitlines() if f"identity {ident} (certificate CN={ident}" in l]
        if syn_gw and ch["offered"] and sh["selected"]:
            steps[4].see(f"{at(syn_gw[0].time)} {host}:eth0  SYN {client_ip} -> {GW_PUBLIC}:443; "
                         f"ClientHello SNI {ch['sni']}, ServerHello selects {sh['selected']}", syn_gw[0])
            steps[4].attach(flow.first_data(segs, client_ip, GW_PUBLIC, sport=port, dport=443), label=f"ClientHello SNI {ch['sni']}")
            steps[4].attach(flow.first_data(segs, GW_PUBLIC, client_ip, sport=443, dport=port), label=f"ServerHello {sh['selected']}")
            if sh["selected"] == "TLSv1.3" and auth:
                steps[4].passed("gateway log: " + auth[0].split(" INFO ", 1)[-1],
                            flow.note("gateway", f"log: identity {ident} authenticated by its certificate",
                                      flow.log_time(auth[0])))
        elif syn_gw:
            # No handshake: say what the gateway's address answered instead (a RST when nothing listens).
            answer = next((s for s in segs if s.src == GW_PUBLIC and s.sport == 443 and s.dport == port), None)
            steps[4].see(f"{at(syn_gw[0].time)} {host}:eth0  SYN {client_ip} -> {GW_PUBLIC}:443, answered "
                         f"{answer.flags if answer else 'by nothing'}; no TLS handshake", syn_gw[0], answer)
        # 6. only the tunnel on the uplink
        inner = evidence.touching(up, LAN) + evidence.touching(up, AGENT_NET)
        appdata = [s for s in segs if s.payload and {s.src, s.dst} == {client_ip, GW_PUBLIC}]
        types = set(ch["types"][1:] + sh["types"][1:])
        if not inner and appdata and 23 in types:
            # the first tunnel record each way after the handshake (the 3rd data segment on)
            later = [s for s in appdata if s.time > (syn_gw[0].time if syn_gw else 0)]
            up_rec = next((s for s in later[2:] if s.src == client_ip), None)
            down_rec = next((s for s in later[2:] if s.src == GW_PUBLIC), None)
            steps[5].passed(f"{host}:eth0  {len(appdata)} TLS segments with {client_ip} <-> {GW_PUBLIC}:443 "
                            f"(application-data records); 0 packets to or from {LAN} or {AGENT_NET}", up_rec, down_rec,
                            label="TLS records (the app's packets inside)")
        else:
            steps[5].see(f"{len(inner)} packets on the uplink touch {LAN} or {AGENT_NET}; {len(appdata)} tunnel segments")
        # 7-8. private DNS, then the forwarded connection
        pq = [m for m in evidence.dns(lan) if not m.response and m.name == APP and m.dst == PRIV_DNS]
        pa = [m for m in evidence.dns(lan) if m.response and m.name == APP and APP_IP in m.answers]
        if pq:
            steps[6].passed(f"{at(pq[0].time)} gateway:eth1  {pq[0].src} -> {PRIV_DNS}:53  query {APP} A", pq[0])
        fwd = [s for s in evidence.syns(lan, dst=APP_IP, dport=443) if pa and s.time >= pa[0].time]
        if pa and fwd:
            steps[7].see(f"{at(pa[0].time)} gateway:eth1  {PRIV_DNS} -> {pa[0].dst}  answer {APP} A {APP_IP}", pa[0])
            steps[7].passed(f"{at(fwd[0].time)} gateway:eth1  SYN {fwd[0].src}:{fwd[0].sport} -> {APP_IP}:443", fwd[0],
                            label="SYN (forwarded)")
        # 9. the page, and its TLS on the app's link
        app_segs = evidence.tcp(app)
        app_syn = evidence.syns(app, dst=APP_IP, dport=443)
        app_ch = (evidence.tls(evidence.stream(app_segs, app_syn[0].src, APP_IP, sport=app_syn[0].sport, dport=443))
                  if app_syn else {"sni": None})
        if seen.get("curl_app_rc") == 0 and f"hello from {APP} over https" in seen.get("curl_app", "") and app_ch["sni"] == APP:
            steps[8].see(f"app:eth0  ClientHello SNI {app_ch['sni']} from {app_syn[0].src}",
                         flow.first_data(app_segs, app_syn[0].src, APP_IP, sport=app_syn[0].sport, dport=443),
                         label=f"ClientHello SNI {app_ch['sni']}")
            reply = flow.first_data(app_segs, APP_IP, app_syn[0].src, sport=443, dport=app_syn[0].sport)
            steps[8].passed(f"curl https://{APP}/ -> 200: {seen['curl_app'].strip()}", reply, label="ServerHello")
        else:
            steps[8].see(f"curl exit {seen.get('curl_app_rc')}: {seen.get('curl_app_err', '').strip()[:200]}")
        # Beyond the seed: ordinary names keep resolving and are reached directly.
        www = Step("+", "ordinary names still resolve through the original resolver and are reached directly")
        direct = evidence.syns(up, dst=WWW, dport=80)
        if seen.get("dig_www") == WWW and seen.get("curl_www_rc") == 0 and "hello from www.example.com over http" in seen.get("curl_www", "") and direct:
            fq = [m for m in evidence.dns(up) if not m.response and m.name == "www.example.com"]
            www.passed(f"dig www.example.com -> {WWW} (forwarded to {PUBLIC_DNS}); {host}:eth0 SYN -> {WWW}:80 outside the tunnel",
                       *(fq[:1]), direct[0], label=None)
        steps.append(www)
        return steps


def web_argv(ip: str, *, http_port: int = 0, cert: tuple[str, Path, Path] | None = None, nodelay: bool = False) -> list[str]:
    """The lab web server (netns.tlsweb) on ``ip``: HTTPS on 443 with ``cert`` (name, pem, key), and/or plain HTTP."""
    import sys

    argv = [sys.executable, "-m", "netns.tlsweb", "--listen", ip] + (["--nodelay"] if nodelay else [])
    if cert:
        argv += ["--cert", f"{cert[0]}={cert[1]},{cert[2]}"]
    if http_port:
        argv += ["--http-port", str(http_port)]
    return argv


SCENARIOS = [AgentScenario]
