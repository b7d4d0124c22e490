"""Scenario ``pop-agent``: the agent reaches a private app through the cloud PoP (SPEC §3).

    client  (alice) --+                       +-- pop 192.0.2.10 (ztna pop run)
    client2 (bob)   --+-- inet (router, DNS) -+
    198.51.100.10/11      .1/.53               +-- gateway 203.0.113.20 --[lan]-- privdns .53, app .20
                                                   (firewall: inbound SYNs dropped, counted)

The gateway runs in connector mode: no listening socket; it dials the PoP's
connector name on 443, one tunnel for ``app.mycompany.net``.  Each agent's
tunnel name is the PoP's (``tunnel.pop.example``); the app's public record is a
CNAME to an alias under the PoP's domain.  alice may reach the app; the PoP's
policy has no entry for bob, so his lease is refused at the PoP and the gateway
never hears of him.
"""

from __future__ import annotations

import json
from pathlib import Path


from .. import capture, dig, evidence, flow, procs
from ..lab import Lab
from ..report import Step
from ..scenario import Scenario
from ..topology import Topology
from .agent import web_argv

APP, HR = "app.mycompany.net", "hr.mycompany.net"
ALIAS = "app-mycompany.alias.pop.example"
TUNNEL_NAME, CONNECTOR_NAME = "tunnel.pop.example", "connector.pop.example"
POP, GW, PUBLIC_DNS = "192.0.2.10", "203.0.113.20", "198.51.100.53"
PRIV_DNS, APP_IP = "192.168.1.53", "192.168.1.20"
AGENT_NET, LAN = "100.64.0.0/10", "192.168.1.0/24"
FW_TABLE = "zp_firewall"

PUBLIC_ZONES = {
    "mycompany.net": f"@ IN SOA ns1 hostmaster 1 60 60 60 60\napp IN CNAME {ALIAS}.\n",
    "pop.example": (f"@ IN SOA ns1 hostmaster 1 60 60 60 60\ntunnel IN A {POP}\nconnector IN A {POP}\n"
                    f"app-mycompany.alias IN A {POP}\n"),
}
PRIVATE_ZONE = f"@ IN SOA ns1 hostmaster 1 60 60 60 60\napp IN A {APP_IP}\n"

# The company's firewall in front of the gateway: nothing may open a connection to it.
FIREWALL = (
    f"table inet {FW_TABLE} {{\n"
    "  counter inbound_syn { }\n"
    "  chain input {\n    type filter hook input priority -10; policy accept;\n"
    "    iifname \"eth0\" tcp flags & (syn | ack) == syn counter name inbound_syn drop\n  }\n"
    "  chain forward {\n    type filter hook forward priority -10; policy accept;\n"
    "    iifname \"eth0\" tcp flags & (syn | ack) == syn counter name inbound_syn drop\n  }\n"
    "}\n"
)


def start_servers(lab: Lab, *, public_extra: str = "", private_extra: str = "", more_names: tuple = ()) -> list:
    """Public DNS, private DNS and the app, started; (proc, address, port, protocol) to wait for each.

    ``public_extra``/``private_extra``: more mycompany.net records; ``more_names``: more names the app
    serves (their certificates ``NAME.pem``/``NAME.key`` in the lab's pki directory)."""
    zones = dict(PUBLIC_ZONES, **{"mycompany.net": PUBLIC_ZONES["mycompany.net"] + public_extra})
    public = [lab.write_conf(f"public-{z}.zone", f"$ORIGIN {z}.\n{body}") for z, body in zones.items()]
    private = lab.write_conf("private.zone", f"$ORIGIN mycompany.net.\n{PRIVATE_ZONE}{private_extra}")
    certs = [a for n in more_names for a in ("--cert", f"{n}={lab.pki_dir / f'{n}.pem'},{lab.pki_dir / f'{n}.key'}")]
    return [
        (lab.start("inet", procs.ztna_argv("authdns", "run", "--listen", PUBLIC_DNS,
                                           *[a for z in public for a in ("--zone", str(z))]), name="public-dns"),
         PUBLIC_DNS, 53, "udp"),
        (lab.start("privdns", procs.ztna_argv("authdns", "run", "--listen", PRIV_DNS, "--zone", str(private)),
                   name="private-dns"), PRIV_DNS, 53, "udp"),
        (lab.start("app", web_argv(APP_IP, cert=(APP, lab.pki_dir / f"{APP}.pem", lab.pki_dir / f"{APP}.key")) + certs,
                   name="web-app"), APP_IP, 443, "tcp"),
    ]


class PopAgentScenario(Scenario):
    """Agent -> PoP -> outbound-only connector -> gateway -> app."""

    name = "pop-agent"
    summary = "cloud PoP (SPEC §3): agent tunnel to the PoP, outbound-only gateway connector, policy at the PoP"
    clients = [("client", "198.51.100.10", "alice"), ("client2", "198.51.100.11", "bob")]
    aliases = {"100.64.0.1/32": "client", "100.64.0.2/32": "client", AGENT_NET: "app", "10.254.0.0/16": "gateway"}
    tunnels = [flow.Tunnel("agent tunnel", ("client", "pop"), ["client:ztna0"], 443),
               flow.Tunnel("connector tunnel", ("gateway", "pop"), [], 443)]

    @property
    def capture_extra(self):
        return [("client", "ztna0")]  # the gateway's TUN appears only once it runs, inside drive()

    def topology(self) -> Topology:
        t = Topology(self.name)
        for host, ip, _ in self.clients:
            t.host(host).addr("eth0", f"{ip}/24").route("default", "198.51.100.1")
        inet = t.host("inet", forward=True)
        inet.addr("eth0", "198.51.100.1/24").addr("eth0", f"{PUBLIC_DNS}/24")
        inet.addr("eth1", "203.0.113.1/24").addr("eth2", "192.0.2.1/24")
        t.host("pop").addr("eth0", f"{POP}/24").route("default", "192.0.2.1")
        t.host("gateway", forward=True).addr("eth0", f"{GW}/24").addr("eth1", "192.168.1.1/24") \
            .route("default", "203.0.113.1")
        t.host("privdns").addr("eth0", f"{PRIV_DNS}/24")
        t.host("app").addr("eth0", f"{APP_IP}/24")
        t.switch("pub", *[(h, "eth0") for h, _, _ in self.clients], ("inet", "eth0"))
        t.link("inet", "eth1", "gateway", "eth0")
        t.link("inet", "eth2", "pop", "eth0")
        t.switch("lan", ("gateway", "eth1"), ("privdns", "eth0"), ("app", "eth0"))
        return t

    # ---- services -----------------------------------------------------------------
    def pop_extra(self, lab: Lab) -> str:
        """More [pop] lines (tests add a CRL)."""
        return ""

    def pop_policy(self) -> str:
        """The PoP's [policy] lines: alice may reach the app, bob is not listed (tests may allow more)."""
        return f"alice = [\"{APP}\"]\n"

    def start(self, lab: Lab) -> None:
        lab.ca()
        lab.issue("pop", "server", dns=[TUNNEL_NAME, CONNECTOR_NAME])
        lab.issue("gateway", "gateway", dns=["gateway.mycompany.net"])
        lab.issue("gw1", "client")
        lab.issue(APP, "server", dns=[APP])
        for _, _, ident in self.clients:
            lab.issue(ident, "agent")
        # an agent certificate from a CA the PoP does not trust
        from ztna import pki as _pki

        other = _pki.new_ca("some other CA", now=_pki.utcnow())
        lab.issue("mallory", "agent", ca=other)
        fw = lab.write_conf("firewall.nft", FIREWALL)
        r = lab.exec("gateway", ["nft", "-f", str(fw)])
        if r.returncode != 0:
            raise RuntimeError(f"the gateway's firewall: {r.stderr.decode()}")
        started = start_servers(lab)
        pki = lab.pki_dir
        pop_conf = lab.write_conf("pop.toml", (
            f"[pop]\nlisten = \"{POP}\"\ncert = \"{pki}/pop.pem\"\nkey = \"{pki}/pop.key\"\nca = \"{pki}/ca.pem\"\n"
            f"tunnel_name = \"{TUNNEL_NAME}\"\nconnector_name = \"{CONNECTOR_NAME}\"\n"
            f"flow_log = \"{lab.log_dir}/pop-flows.jsonl\"\nalias_names = [\"{ALIAS}\"]\n{self.pop_extra(lab)}\n"
            f"[policy]\n{self.pop_policy()}\n[connectors]\ngw1 = [\"{APP}\", \"{HR}\"]\n"))
        pop = lab.start("pop", procs.ztna_argv("pop", "run", "--config", str(pop_conf)), name="pop")
        procs.wait_listening(pop, POP, 443)
        gw_conf = lab.write_conf("gateway.toml", self.gateway_conf(lab, [APP]))
        self.gw_conf = gw_conf
        for p, ip, port, proto in started:
            procs.wait_listening(p, ip, port, proto)
        for host, _, ident in self.clients:
            self.start_agent(lab, host, ident)

    def gateway_conf(self, lab: Lab, resources: list[str]) -> str:
        pki = lab.pki_dir
        return (f"[gateway]\nlisten = \"{GW}\"\ncert = \"{pki}/gateway.pem\"\nkey = \"{pki}/gateway.key\"\n"
                f"ca = \"{pki}/ca.pem\"\nprivate_dns = [\"{PRIV_DNS}\"]\n\n"
                f"[pop]\naddress = \"{POP}\"\nname = \"{CONNECTOR_NAME}\"\nresources = {json.dumps(resources)}\n"
                f"cert = \"{pki}/gw1.pem\"\nkey = \"{pki}/gw1.key\"\n\n"
                # the gateway checks the identity the PoP vouches for once more (defence in depth)
                f"[policy]\nalice = [\"{APP}\"]\nbob = [\"{APP}\"]\n")

    def start_agent(self, lab: Lab, host: str, ident: str) -> procs.Proc:
        lab.set_resolvers(host, [PUBLIC_DNS])
        conf = lab.write_conf(f"agent-{host}.toml", (
            f"[agent]\ncert = \"{lab.pki_dir}/{ident}.pem\"\nkey = \"{lab.pki_dir}/{ident}.key\"\n"
            f"ca = \"{lab.pki_dir}/ca.pem\"\ngateway = \"{TUNNEL_NAME}\"\napps = {json.dumps([APP])}\n"
            f"resolv_conf = \"{lab.resolv_conf_path(host)}\"\nstate_dir = \"{lab.root}/agent-{host}\"\n"))
        p = lab.start(host, procs.ztna_argv("agent", "run", "--config", str(conf)), name=f"agent-{host}")
        procs.wait_listening(p, "100.64.0.2", 53, "udp")
        procs.wait_until(lambda: "100.64.0.2" in lab.resolv_conf_path(host).read_text(), what="the agent to take over DNS")
        return p

    def start_gateway(self, lab: Lab, resources: tuple = (APP,)):
        """Start the gateway in connector mode and wait until the PoP says each resource is published."""
        gw = lab.start("gateway", procs.ztna_argv("gateway", "run", "--config", str(self.gw_conf)), name="gateway")
        poplog = Path(lab.procs["pop"].log)
        procs.wait_until(lambda: all(f"publishes {r}" in poplog.read_text(errors="replace") for r in resources)
                         or not gw.alive(), timeout=15, what="the gateway's connector tunnels to reach the PoP")
        if not gw.alive():
            raise RuntimeError("the gateway in connector mode stopped; see its log")
        return gw

    # ---- the users' actions ---------------------------------------------------------
    def drive(self, lab: Lab) -> dict:
        ca = str(lab.pki_dir / "ca.pem")
        seen = {}
        # The gateway starts while every link is captured, so its connector tunnel's dial-out is on record.
        gw = self.start_gateway(lab)
        poplog = Path(lab.procs["pop"].log)
        r = lab.exec("client", ["dig", "+noall", "+answer", f"@{PUBLIC_DNS}", APP, "A"])
        seen["public_app"] = r.stdout.decode()
        seen["dig_app"] = dig.short(lab, "client", APP)
        r = lab.exec("client", ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "15",
                                "--cacert", ca, f"https://{APP}/"])
        seen["curl_status"], seen["curl_rc"], seen["curl_err"] = r.stdout.decode(), r.returncode, r.stderr.decode()
        r = lab.exec("client", ["curl", "-sS", "--max-time", "15", "--cacert", ca, f"https://{APP}/"])
        seen["curl_body"] = r.stdout.decode()
        r = lab.exec("client2", ["curl", "-sS", "--max-time", "8", "--cacert", ca, f"https://{APP}/"])
        seen["bob_rc"], seen["bob_err"] = r.returncode, r.stderr.decode()
        # Bad input at the PoP, from the internet; then alice's curl again through the same PoP.
        import sys

        pki = lab.pki_dir
        probe = [sys.executable, "-m", "netns.popprobe"]
        seen["probes"] = {}
        for what, argv in (
                ("garbage", ["garbage", "--addr", POP]),
                ("connector", ["connector", "--addr", POP, "--sni", CONNECTOR_NAME, "--cert", f"{pki}/gw1.pem",
                               "--key", f"{pki}/gw1.key", "--ca", f"{pki}/ca.pem", "--resource", "secret.mycompany.net"]),
                ("unknown_ca", ["tls", "--addr", POP, "--sni", TUNNEL_NAME, "--cert", f"{pki}/mallory.pem",
                                "--key", f"{pki}/mallory.key", "--ca", f"{pki}/ca.pem"])):
            r = lab.exec("inet", probe + argv)
            try:
                seen["probes"][what] = json.loads(r.stdout.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                seen["probes"][what] = {"rc": r.returncode, "stderr": r.stderr.decode()[-300:]}
        # A flood of half-open connections (TCP up, no ClientHello) from one internet address, held open
        # while alice's curl goes through the same PoP.
        flood = lab.start("inet", probe + ["halfopen", "--addr", POP, "--count", "100"], name="halfopen")
        flood_log = Path(flood.log)
        try:
            procs.wait_until(lambda: "still_open" in flood_log.read_text(), timeout=15, what="the half-open flood")
            seen["flood"] = json.loads(flood_log.read_text().strip().splitlines()[-1])
        except (TimeoutError, ValueError):
            seen["flood"] = {}
        r = lab.exec("client", ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "15",
                                "--cacert", ca, f"https://{APP}/"])
        seen["curl_after_probes"] = r.stdout.decode()
        lab.stop("halfopen")
        seen["pop_alive"] = lab.procs["pop"].alive()
        # SIGHUP with a resource added, then removed: only that resource's tunnel opens and closes.
        import os
        import signal

        def tunnels() -> list[str]:
            out = lab.exec("gateway", ["ss", "-Htn", "state", "established", "dst", POP]).stdout.decode()
            return sorted(l.split()[-2] for l in out.splitlines() if l.strip())

        seen["tunnels_before"] = tunnels()
        lab.write_conf("gateway.toml", self.gateway_conf(lab, [APP, HR]))
        os.kill(gw.pid, signal.SIGHUP)
        try:
            procs.wait_until(lambda: f"publishes {HR}" in poplog.read_text(errors="replace"), timeout=10,
                             what=f"the PoP to hear the {HR} tunnel")
            procs.wait_until(lambda: len(tunnels()) == 2, timeout=5, what="two connector tunnels")
        except TimeoutError:
            pass
        seen["tunnels_added"] = tunnels()
        lab.write_conf("gateway.toml", self.gateway_conf(lab, [APP]))
        os.kill(gw.pid, signal.SIGHUP)
        try:
            procs.wait_until(lambda: f"({HR}) closed" in poplog.read_text(errors="replace"), timeout=10,
                             what=f"the PoP to see the {HR} tunnel close")
            procs.wait_until(lambda: len(tunnels()) == 1, timeout=5, what="one connector tunnel")
        except TimeoutError:
            pass
        seen["tunnels_removed"] = tunnels()
        # alice's agent stops: her tunnel ends, and the PoP writes the flow's JSON line with its bytes.
        procs.stop(lab.procs["agent-client"])
        flows = lab.log_dir / "pop-flows.jsonl"
        try:
            procs.wait_until(lambda: flows.exists() and '"identity":"alice"' in flows.read_text(), timeout=10,
                             what="the PoP's flow line for alice")
        except TimeoutError:
            pass
        # Someone on the internet tries to open a connection to the gateway: the firewall drops it.
        r = lab.exec("inet", ["curl", "-sS", "--max-time", "2", f"https://{GW}/"])
        seen["probe_rc"] = r.returncode
        r = lab.exec("gateway", ["nft", "-j", "list", "counter", "inet", FW_TABLE, "inbound_syn"])
        try:
            seen["inbound_syn_dropped"] = next(o["counter"]["packets"] for o in json.loads(r.stdout)["nftables"]
                                               if "counter" in o)
        except (ValueError, KeyError, StopIteration):
            seen["inbound_syn_dropped"] = None
        lab.exec("gateway", ["nft", "delete", "table", "inet", FW_TABLE])
        return seen

    # ---- the steps ------------------------------------------------------------------------
    def verify(self, lab: Lab, seen: dict) -> list[Step]:
        up = capture.read(lab.pcap("client", "eth0"))
        up2 = capture.read(lab.pcap("client2", "eth0"))
        popl = capture.read(lab.pcap("pop", "eth0"))
        gwup = capture.read(lab.pcap("gateway", "eth0"))
        lan = capture.read(lab.pcap("gateway", "eth1"))
        app = capture.read(lab.pcap("app", "eth0"))
        client_ip = self.clients[0][1]
        poplog = Path(lab.procs["pop"].log).read_text(errors="replace")
        gwlog = Path(lab.procs["gateway"].log).read_text(errors="replace")
        flows_path = lab.log_dir / "pop-flows.jsonl"
        flows = [json.loads(x) for x in flows_path.read_text().splitlines()] if flows_path.exists() else []

        steps = [Step(str(i), text) for i, text in enumerate([
            f"public DNS: {APP} is a CNAME to the alias {ALIAS}, whose A record is the PoP {POP}",
            "the client's uplink carries only TLS to the PoP (SNI the PoP's tunnel name), nothing of the LAN",
            "the PoP's link shows the client's tunnel in and the gateway's connector tunnel (TLS 1.3, connector SNI)",
            f"the gateway's uplink: only outbound SYNs to {POP}:443; inbound SYNs dropped by the firewall, none answered",
            f"the gateway asks private DNS for {APP}",
            "the app sees the gateway's LAN address",
            f"alice's curl https://{APP}/ gets 200, and the PoP logs one JSON flow line",
            "bob (no PoP policy) is refused at the PoP; the gateway never sees his flow",
        ], start=1)]

        # 1. public DNS: CNAME then A
        ans = seen.get("public_app", "")
        rrs = [l.split() for l in ans.splitlines() if l.strip()]
        if [APP + ".", "CNAME", ALIAS + "."] in [[r[0], r[3], r[4]] for r in rrs if len(r) == 5] \
                and [ALIAS + ".", "A", POP] in [[r[0], r[3], r[4]] for r in rrs if len(r) == 5]:
            q = [m for m in evidence.dns(up) if m.response and m.name == APP and m.src == PUBLIC_DNS]
            steps[0].passed(f"dig @{PUBLIC_DNS} {APP}: " + " | ".join(f"{r[0]} {r[3]} {r[4]}" for r in rrs), *q[:1])
        else:
            steps[0].see(f"dig printed {ans!r}")
        # 2. client uplink: TLS to the PoP only
        segs = evidence.tcp(up)
        ul = evidence.uplink(up, client_ip, POP, nets=(LAN, AGENT_NET), hosts=(GW,))
        if ul.only_tls(TUNNEL_NAME):
            port = ul.syns[0].sport
            steps[1].passed(f"client:eth0  SYN {client_ip}:{port} -> {POP}:443, ClientHello SNI {TUNNEL_NAME}; "
                            f"0 packets touch {LAN}, {AGENT_NET} or the gateway {GW}", ul.syns[0],
                            flow.first_data(segs, client_ip, POP, sport=port, dport=443), label=f"ClientHello SNI {TUNNEL_NAME}")
        else:
            steps[1].see(ul.summary())
        # 3. the PoP's link: tunnel in, connector in (from the gateway, since the gateway dials out)
        psegs = evidence.tcp(popl)
        a_in = evidence.syns(popl, dst=POP, dport=443)
        from_client = [s for s in a_in if s.src == client_ip]
        from_gw = [s for s in a_in if s.src == GW]
        gw_ch = (evidence.tls(evidence.stream(psegs, GW, POP, sport=from_gw[0].sport, dport=443))
                 if from_gw else {"sni": None})
        gw_sh = (evidence.tls(evidence.stream(psegs, POP, GW, sport=443, dport=from_gw[0].sport))
                 if from_gw else {"selected": None})
        if from_client and from_gw and gw_ch.get("sni") == CONNECTOR_NAME and gw_sh.get("selected") == "TLSv1.3":
            steps[2].passed(f"pop:eth0  agent tunnel {client_ip}:{from_client[0].sport} -> {POP}:443; connector tunnel "
                            f"{GW}:{from_gw[0].sport} -> {POP}:443 SNI {gw_ch['sni']} ({gw_sh['selected']})",
                            from_client[0], from_gw[0],
                            flow.first_data(psegs, GW, POP, sport=from_gw[0].sport, dport=443), label=None)
        else:
            steps[2].see(f"{len(from_client)} SYNs from the client, {len(from_gw)} from the gateway, connector SNI {gw_ch.get('sni')}")
        # 4. the gateway's uplink and the firewall counter
        gsegs = evidence.tcp(gwup)
        out_syn = [s for s in gsegs if s.flags == "S" and s.src == GW]
        in_syn = [s for s in gsegs if s.flags == "S" and s.dst == GW]
        answered = [s for s in gsegs if s.flags == "SA" and s.src == GW]
        other = [s for s in out_syn if (s.dst, s.dport) != (POP, 443)]
        dropped = seen.get("inbound_syn_dropped")
        if out_syn and not other and not answered and in_syn and dropped is not None and dropped >= len(in_syn) > 0 \
                and seen.get("probe_rc") != 0:
            steps[3].passed(f"gateway:eth0  {len(out_syn)} outbound SYN(s), all to {POP}:443; {len(in_syn)} inbound "
                            f"SYN(s) (a probe from the internet), 0 SYN-ACKs from {GW}; nft counter inbound_syn = {dropped}",
                            out_syn[0], in_syn[0], label=None)
        else:
            steps[3].see(f"outbound SYNs {len(out_syn)} ({len(other)} elsewhere), inbound {len(in_syn)}, "
                         f"answered {len(answered)}, counter {dropped}")
        # 5. private DNS
        pq = [m for m in evidence.dns(lan) if not m.response and m.name == APP and m.dst == PRIV_DNS]
        if pq:
            steps[4].passed(f"gateway:eth1  {pq[0].src} -> {PRIV_DNS}:53  query {APP} A", pq[0])
        # 6. the app sees the gateway's LAN address
        app_syn = evidence.syns(app, dst=APP_IP, dport=443)
        if app_syn and all(s.src == "192.168.1.1" for s in app_syn):
            steps[5].passed(f"app:eth0  {len(app_syn)} SYN(s) to {APP_IP}:443, all from 192.168.1.1", app_syn[0])
        elif app_syn:
            steps[5].see(f"app SYNs from {sorted({s.src for s in app_syn})}")
        # 7. curl 200 and the flow line
        mine = [f for f in flows if f.get("event") == "flow" and f.get("identity") == "alice" and f.get("resource") == APP]
        if seen.get("curl_status") == "200" and f"hello from {APP}" in seen.get("curl_body", ""):
            steps[6].see(f"curl https://{APP}/ -> {seen['curl_status']}: {seen['curl_body'].strip()[:120]}")
            if mine and mine[0].get("connector") == "gw1" and mine[0].get("bytes_down", 0) > 0:
                steps[6].passed("PoP flow log: " + json.dumps(mine[0], separators=(",", ":")),
                                flow.note("pop", f"flow line: alice {APP} via gw1, {mine[0]['bytes_up']} bytes up, "
                                                 f"{mine[0]['bytes_down']} down"))
            else:
                steps[6].see(f"PoP flow lines: {flows}")
        else:
            steps[6].see(f"curl exit {seen.get('curl_rc')} status {seen.get('curl_status')!r}: {seen.get('curl_err', '').strip()[:200]}")
        # 8. bob refused at the PoP
        denied = [l for l in poplog.splitlines() if "bob" in l and "DENIED at the PoP" in l]
        bob_at_gw = [l for l in gwlog.splitlines() if "bob" in l]
        bob_syn_pop = evidence.syns(up2, dst=POP, dport=443)
        if seen.get("bob_rc") not in (0, None) and denied and not bob_at_gw and bob_syn_pop:
            steps[7].passed(f"client2:eth0 tunnel to {POP}:443; PoP log: {denied[0].split(' WARNING ', 1)[-1][:160]}; "
                            f"curl exit {seen['bob_rc']}; 0 gateway log lines name bob", bob_syn_pop[0],
                            flow.note("pop", "bob's lease DENIED at the PoP", flow.log_time(denied[0])))
        else:
            steps[7].see(f"bob curl exit {seen.get('bob_rc')}, {len(denied)} PoP refusals, {len(bob_at_gw)} gateway lines naming bob")
        # +. bad input at the PoP: each refused with a log line; alice's next curl still works
        bad = Step("9", "bad input at the PoP (garbage on 443, a connector publishing what it may not, "
                        "an unknown CA's agent certificate, 100 half-open connections from one address) is refused "
                        "with a log line; alice's curl through the same PoP still works")
        pr = seen.get("probes", {})
        lines = {
            "garbage": next((l for l in poplog.splitlines() if "refused" in l and "not a TLS ClientHello" in l), None),
            "connector": next((l for l in poplog.splitlines() if "may not publish secret.mycompany.net" in l), None),
            "unknown_ca": next((l for l in poplog.splitlines() if "agent TLS: certificate refused" in l), None),
            "half-open flood": next((l for l in poplog.splitlines() if "pending handshakes from 192.0.2.1 already" in l), None),
        }
        answered = {
            "garbage": pr.get("garbage", {}).get("alert") is True,
            "connector": any(f.get("type") == "CLOSE" and "may not publish" in f.get("reason", "")
                             for f in pr.get("connector", {}).get("frames", [])),
            "unknown_ca": "error" in pr.get("unknown_ca", {}) and not pr.get("unknown_ca", {}).get("frames"),
            "half-open flood": seen.get("flood", {}).get("opened") == 100
                               and seen.get("flood", {}).get("still_open", 100) <= 32,
        }
        for k in lines:
            if lines[k]:
                bad.see(f"{k}: peer saw {'a refusal' if answered[k] else 'no refusal'}; PoP log: "
                        f"{lines[k].split(' WARNING ', 1)[-1][:170]}", flow.note("pop", f"refused {k}", flow.log_time(lines[k])))
        if all(lines.values()) and all(answered.values()) and seen.get("pop_alive") \
                and seen.get("curl_after_probes") == "200":
            bad.passed(f"with the flood's {seen['flood']['still_open']} admitted connections still held open, "
                       f"alice's curl https://{APP}/ -> 200 through the same PoP")
        else:
            bad.see(f"answers {answered}, curl after {seen.get('curl_after_probes')!r}, PoP alive {seen.get('pop_alive')}; "
                    f"probes {json.dumps(pr)[:300]}")
        steps.append(bad)
        # +. reload
        rl = Step("10", f"SIGHUP with {HR} added to [pop] resources opens its tunnel, removed closes only it; "
                       f"the {APP} tunnel stays the same connection")
        before, added, removed = seen.get("tunnels_before", []), seen.get("tunnels_added", []), seen.get("tunnels_removed", [])
        opened = [l for l in poplog.splitlines() if f"publishes {HR}" in l]
        closed = [l for l in poplog.splitlines() if f"({HR}) closed" in l]
        if len(before) == 1 and len(added) == 2 and before[0] in added and removed == before and opened and closed:
            new = [p for p in added if p not in before][0]
            rl.passed(f"gateway sockets to {POP}:443: {before[0]} -> {before[0]} + {new} -> {removed[0]}; PoP: "
                      f"{opened[0].split(' INFO ', 1)[-1][:90]} / {closed[0].split(' INFO ', 1)[-1][:90]}",
                      flow.note("pop", f"{HR} tunnel opened", flow.log_time(opened[0])),
                      flow.note("pop", f"{HR} tunnel closed", flow.log_time(closed[0])))
        else:
            rl.see(f"tunnels before {before}, after adding {added}, after removing {removed}; "
                   f"PoP lines: {len(opened)} opened, {len(closed)} closed")
        steps.append(rl)
        return steps


SCENARIOS = [PopAgentScenario]
