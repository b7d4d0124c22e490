"""Scenario ``pop-agentless``: a browser with no agent reaches a private app through the cloud PoP.

    browser  (alice) --+                       +-- pop 192.0.2.10 (ztna pop run, [agentless])
    browser2 (bob)   --+-- inet (router, DNS) -+
    198.51.100.30/31      .1/.53               +-- gateway 203.0.113.20 --[lan]-- privdns .53, app .20
                                                   (connector mode; inbound SYNs dropped, counted)

The topology, the servers and the gateway are ``pop-agent``'s.  The app's
public record is a CNAME to an alias under the PoP's domain, so the browser's
TLS (SNI ``app.mycompany.net``) lands on the PoP, which presents the app's
public certificate, signs the user in (login form, session cookie) and checks
its ``[policy]``.  Allowed requests go on a ``stream`` channel of the gateway's
outbound connector tunnel; the gateway checks its own policy, resolves the app
with private DNS and connects to it, so the app sees the gateway's LAN address.
bob has a password but no PoP policy: 403 at the PoP, and the gateway never
sees a channel for him.  carol signs in to ``hr.mycompany.net`` with a client
certificate.  dave is allowed by the PoP's policy but not by the gateway's: the
gateway refuses his stream and the PoP answers 502.
"""

from __future__ import annotations

import json
from pathlib import Path

from gateway.agentless.users import UserStore

from .. import capture, evidence, flow, procs
from ..lab import Lab
from ..report import Step
from .agentless import USERS, AgentlessScenario
from .pop_agent import (ALIAS, APP, APP_IP, CONNECTOR_NAME, FIREWALL, FW_TABLE, GW, HR, LAN, POP, PRIV_DNS,
                        PUBLIC_DNS, TUNNEL_NAME, PopAgentScenario, start_servers)

PASSWORDS = {**USERS, "dave": "dave-password-1"}
BROWSERS = [("browser", "198.51.100.30", "alice"), ("browser2", "198.51.100.31", "bob")]


class PopAgentlessScenario(PopAgentScenario):
    """Browser -> PoP (sign-in, policy) -> stream channel on the connector tunnel -> gateway -> app."""

    name = "pop-agentless"
    summary = "cloud PoP, agentless (SPEC §3): CNAME to the PoP's alias, sign-in and policy at the PoP, stream channel"
    clients = BROWSERS  # the hosts on the public side; no agent runs on them
    browser = BROWSERS[0][:2]
    aliases = {"10.254.0.0/16": "gateway"}
    tunnels = [flow.Tunnel("connector tunnel", ("gateway", "pop"), [], 443)]
    # The sign-in as a person does it, from the agentless scenario (same form, same cookie).
    curl = AgentlessScenario.curl
    sign_in = AgentlessScenario.sign_in

    @property
    def capture_extra(self):
        return []

    def start(self, lab: Lab) -> None:
        lab.ca()
        lab.issue("pop", "server", dns=[TUNNEL_NAME, CONNECTOR_NAME])
        lab.issue("gateway", "gateway", dns=["gateway.mycompany.net"])
        lab.issue("gw1", "client")
        lab.issue(APP, "server", dns=[APP])            # what the app presents (checked by the PoP, end to end)
        lab.issue(HR, "server", dns=[HR])
        for name in (APP, HR):
            lab.issue(f"public-{name}", "server", dns=[name])  # what the PoP presents to browsers for it
        lab.issue("carol", "client")
        fw = lab.write_conf("firewall.nft", FIREWALL)
        r = lab.exec("gateway", ["nft", "-f", str(fw)])
        if r.returncode != 0:
            raise RuntimeError(f"the gateway's firewall: {r.stderr.decode()}")
        started = start_servers(lab, public_extra=f"hr IN CNAME {ALIAS}.\n", private_extra=f"hr IN A {APP_IP}\n",
                                more_names=(HR,))
        users = lab.conf_dir / "pop-users.json"
        store = UserStore(users)
        for user, password in PASSWORDS.items():
            store.add(user, password)
        pki = lab.pki_dir
        pop_conf = lab.write_conf("pop.toml", (
            f"[pop]\nlisten = \"{POP}\"\ncert = \"{pki}/pop.pem\"\nkey = \"{pki}/pop.key\"\nca = \"{pki}/ca.pem\"\n"
            f"tunnel_name = \"{TUNNEL_NAME}\"\nconnector_name = \"{CONNECTOR_NAME}\"\n"
            f"flow_log = \"{lab.log_dir}/pop-flows.jsonl\"\nalias_names = [\"{ALIAS}\"]\n\n"
            f"[policy]\n{self.pop_policy()}\n"
            f"[connectors]\ngw1 = [\"{APP}\", \"{HR}\"]\n\n"
            f"[agentless]\nusers = \"{users}\"\nsession_key = \"{lab.conf_dir}/pop-session.key\"\n"
            f"access_log = \"{lab.log_dir}/pop-access.jsonl\"\n\n"
            f"[[agentless.app]]\nname = \"{APP}\"\ncert = \"{pki}/public-{APP}.pem\"\nkey = \"{pki}/public-{APP}.key\"\n"
            f"upstream_ca = \"{pki}/ca.pem\"\nauth = \"password\"\n\n"
            f"[[agentless.app]]\nname = \"{HR}\"\ncert = \"{pki}/public-{HR}.pem\"\nkey = \"{pki}/public-{HR}.key\"\n"
            f"upstream_ca = \"{pki}/ca.pem\"\nauth = \"certificate\"\n"))
        pop = lab.start("pop", procs.ztna_argv("pop", "run", "--config", str(pop_conf)), name="pop")
        procs.wait_listening(pop, POP, 443)
        # The gateway's own [policy] (pop-agent's: alice, bob) plus carol for hr; it has no entry for dave.
        self.gw_conf = lab.write_conf("gateway.toml", self.gateway_conf(lab, [APP, HR]) + f"carol = [\"{HR}\"]\n")
        for p, ip, port, proto in started:
            procs.wait_listening(p, ip, port, proto)
        for host, _, _ in self.clients:
            lab.set_resolvers(host, [PUBLIC_DNS])

    def pop_policy(self) -> str:
        """The PoP's ``[policy]``: alice and dave to the app, carol to hr (bob has none)."""
        return f"alice = [\"{APP}\"]\ncarol = [\"{HR}\"]\ndave = [\"{APP}\"]\n"

    # ---- the users' actions ---------------------------------------------------------
    def drive(self, lab: Lab) -> dict:
        seen: dict = {}
        self.start_gateway(lab, (APP, HR))
        r = lab.exec("browser", ["dig", "+noall", "+answer", f"@{PUBLIC_DNS}", APP, "A"])
        seen["public_app"] = r.stdout.decode()
        rc, out, err = self.curl(lab, "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", f"https://{APP}/")
        seen["anon"], seen["anon_rc"], seen["anon_err"] = out, rc, err
        jar = str(lab.conf_dir / "browser-cookies.txt")
        rc, out, err = self.sign_in(lab, "alice", USERS["alice"], jar)
        seen["alice"], seen["alice_rc"], seen["alice_err"] = out, rc, err
        flows = lab.log_dir / "pop-flows.jsonl"
        try:
            procs.wait_until(lambda: flows.exists() and '"event":"agentless"' in flows.read_text(), timeout=10,
                             what="the PoP's agentless flow line")
        except TimeoutError:
            pass
        jar2 = str(lab.conf_dir / "browser2-cookies.txt")
        rc, out, err = self.sign_in(lab, "bob", USERS["bob"], jar2, host="browser2")
        seen["bob"], seen["bob_rc"] = out, rc
        pki = lab.pki_dir
        rc, out, err = self.curl(lab, "-w", "\n%{http_code}", f"https://{HR}/", host="browser2")
        seen["hr_nocert"] = out
        rc, out, err = self.curl(lab, "-w", "\n%{http_code}", "--cert", f"{pki}/carol.pem", "--key", f"{pki}/carol.key",
                                 f"https://{HR}/", host="browser2")
        seen["carol"], seen["carol_rc"], seen["carol_err"] = out, rc, err
        rc, out, err = self.sign_in(lab, "dave", PASSWORDS["dave"], str(lab.conf_dir / "dave-cookies.txt"))
        seen["dave"], seen["dave_rc"] = out, rc
        try:
            procs.wait_until(lambda: flows.exists() and '"identity":"carol"' in flows.read_text(), timeout=10,
                             what="the PoP's flow line for carol")
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
        up = capture.read(lab.pcap("browser", "eth0"))
        up2 = capture.read(lab.pcap("browser2", "eth0"))
        gwup = capture.read(lab.pcap("gateway", "eth0"))
        lan = capture.read(lab.pcap("gateway", "eth1"))
        app = capture.read(lab.pcap("app", "eth0"))
        browser_ip = self.clients[0][1]
        gwlog = Path(lab.procs["gateway"].log).read_text(errors="replace")
        flows_path = lab.log_dir / "pop-flows.jsonl"
        flows = [json.loads(x) for x in flows_path.read_text().splitlines()] if flows_path.exists() else []
        access_path = lab.log_dir / "pop-access.jsonl"
        access = [json.loads(x) for x in access_path.read_text().splitlines()] if access_path.exists() else []

        steps = [Step(str(i), text) for i, text in enumerate([
            f"public DNS: {APP} is a CNAME to the alias {ALIAS}, whose A record is the PoP {POP}",
            f"the browser's TLS goes to the PoP {POP}:443 with SNI {APP}; nothing of the LAN or the gateway",
            "unauthenticated, the PoP sends the browser to its sign-in page (302 /.ztna/login)",
            "signed in as alice, the browser gets 200 and the app's page; the PoP writes an access line and "
            "one agentless flow line (identity, resource, connector, bytes)",
            f"the gateway's uplink: only outbound SYNs to {POP}:443 (the connector tunnel); inbound SYNs dropped",
            f"the gateway asks private DNS for {APP} and connects to the app from its LAN address",
            "bob (a valid password, no PoP policy) gets 403 at the PoP; the gateway never sees a channel for him",
            f"{HR} (auth = certificate): no client certificate -> refused at the PoP; carol's certificate -> 200",
            "dave (allowed by the PoP, not by the gateway): the gateway refuses his stream with a log line, "
            "the PoP answers 502",
        ], start=1)]

        # 1. public DNS: CNAME then A
        rrs = [x.split() for x in seen.get("public_app", "").splitlines() if x.strip()]
        pairs = [[x[0], x[3], x[4]] for x in rrs if len(x) == 5]
        if [APP + ".", "CNAME", ALIAS + "."] in pairs and [ALIAS + ".", "A", POP] in pairs:
            q = [m for m in evidence.dns(up) if m.response and m.name == APP and m.src == PUBLIC_DNS]
            steps[0].passed(f"dig @{PUBLIC_DNS} {APP}: " + " | ".join(" ".join(p) for p in pairs), *q[:1])
        else:
            steps[0].see(f"dig printed {seen.get('public_app')!r}")
        # 2. the browser's ClientHello to the PoP names the app
        segs = evidence.tcp(up)
        ul = evidence.uplink(up, browser_ip, POP, nets=(LAN,), hosts=(GW,))
        if ul.only_tls(APP):
            steps[1].passed(f"browser:eth0  {len(ul.syns)} connection(s) {browser_ip} -> {POP}:443, every ClientHello "
                            f"SNI {APP}; 0 packets touch {LAN} or the gateway {GW}", ul.syns[0],
                            flow.first_data(segs, browser_ip, POP, sport=ul.syns[0].sport, dport=443),
                            label=f"ClientHello SNI {APP}")
        else:
            steps[1].see(ul.summary())
        # 3. unauthenticated: redirect to the sign-in page
        anon = seen.get("anon", "")
        if anon.startswith("302 ") and "/.ztna/login" in anon:
            steps[2].passed(f"curl https://{APP}/ -> {anon}",
                            flow.note("pop", "302 to /.ztna/login: no session yet"))
        else:
            steps[2].see(f"curl exit {seen.get('anon_rc')}: {anon!r} {seen.get('anon_err', '')[:200]}")
        # 4. alice: 200 and the page, access line, flow line
        page = seen.get("alice", "")
        mine = [f for f in flows if f.get("event") == "agentless" and f.get("identity") == "alice"
                and f.get("resource") == APP]
        allowed = [a for a in access if a.get("identity") == "alice" and a.get("status") == 200]
        if page.rstrip().endswith(f"https://{APP}/ 200") and f"hello from {APP}" in page:
            steps[3].see(f"after signing in: {page.splitlines()[-1]}; page: {page.splitlines()[0][:100]}")
            if mine and allowed and mine[0].get("connector") == "gw1" and mine[0].get("bytes_down", 0) > 0:
                steps[3].passed("PoP flow line: " + json.dumps(mine[0], separators=(",", ":")),
                                flow.note("pop", f"agentless flow: alice {APP} via gw1, {mine[0]['bytes_up']} bytes up, "
                                                 f"{mine[0]['bytes_down']} down"))
            else:
                steps[3].see(f"flow lines {flows}; {len(allowed)} allowed access lines")
        else:
            steps[3].see(f"curl exit {seen.get('alice_rc')}: {page[-200:]!r} {seen.get('alice_err', '')[:200]}")
        # 5. the gateway's uplink
        gsegs = evidence.tcp(gwup)
        out_syn = [s for s in gsegs if s.flags == "S" and s.src == GW]
        in_syn = [s for s in gsegs if s.flags == "S" and s.dst == GW]
        answered = [s for s in gsegs if s.flags == "SA" and s.src == GW]
        other = [s for s in out_syn if (s.dst, s.dport) != (POP, 443)]
        dropped = seen.get("inbound_syn_dropped")
        gw_ch = (evidence.tls(evidence.stream(gsegs, GW, POP, sport=out_syn[0].sport, dport=443))
                 if out_syn else {"sni": None})
        if out_syn and not other and not answered and gw_ch.get("sni") == CONNECTOR_NAME and in_syn \
                and dropped is not None and dropped >= len(in_syn) > 0 and seen.get("probe_rc") != 0:
            steps[4].passed(f"gateway:eth0  {len(out_syn)} outbound SYN(s), all to {POP}:443, SNI {CONNECTOR_NAME}; "
                            f"{len(in_syn)} inbound SYN(s), 0 SYN-ACKs; nft counter inbound_syn = {dropped}",
                            out_syn[0], in_syn[0], label=None)
        else:
            steps[4].see(f"outbound SYNs {len(out_syn)} ({len(other)} elsewhere, SNI {gw_ch.get('sni')}), inbound "
                         f"{len(in_syn)}, answered {len(answered)}, counter {dropped}")
        # 6. private DNS, then the app sees the gateway's LAN address
        pq = [m for m in evidence.dns(lan) if not m.response and m.name == APP and m.dst == PRIV_DNS]
        app_syn = evidence.syns(app, dst=APP_IP, dport=443)
        streams = [x for x in gwlog.splitlines() if "stream" in x and "alice" in x and "connected to" in x]
        if pq and app_syn and all(s.src == "192.168.1.1" for s in app_syn) and streams:
            steps[5].passed(f"gateway:eth1  {pq[0].src} -> {PRIV_DNS}:53 query {APP} A; app:eth0 {len(app_syn)} SYN(s) "
                            f"to {APP_IP}:443, all from 192.168.1.1; gateway log: "
                            f"{streams[0].split(' INFO ', 1)[-1][:140]}", pq[0], app_syn[0])
        else:
            steps[5].see(f"{len(pq)} private DNS queries, app SYNs from {sorted({s.src for s in app_syn})}, "
                         f"{len(streams)} gateway stream lines")
        # 7. bob: 403 at the PoP, nothing at the gateway
        bob = seen.get("bob", "")
        bob_at_gw = [x for x in gwlog.splitlines() if "bob" in x]
        denied = [a for a in access if a.get("identity") == "bob" and a.get("status") == 403]
        bob_syn = evidence.syns(up2, dst=POP, dport=443)
        if bob.rstrip().endswith(" 403") and denied and not bob_at_gw and bob_syn \
                and not [f for f in flows if f.get("identity") == "bob"]:
            steps[6].passed(f"browser2:eth0 TLS to {POP}:443; PoP access line: {denied[0].get('reason')}; "
                            f"0 gateway log lines name bob, no flow line", bob_syn[0],
                            flow.note("pop", "bob 403 at the PoP"))
        else:
            steps[6].see(f"bob: {bob[-120:]!r}, {len(denied)} 403 access lines, {len(bob_at_gw)} gateway lines")
        # 8. client certificate sign-in
        nocert, carol = seen.get("hr_nocert", "").rstrip(), seen.get("carol", "").rstrip()
        cflow = [f for f in flows if f.get("event") == "agentless" and f.get("identity") == "carol"
                 and f.get("resource") == HR]
        if not nocert.endswith("200") and nocert[-3:].isdigit() and carol.endswith("200") \
                and f"hello from {HR}" in carol and cflow:
            steps[7].passed(f"curl https://{HR}/ without a certificate -> {nocert[-3:]}; with carol's -> 200 "
                            f"({carol.splitlines()[0][:80]}); flow line bytes up {cflow[0]['bytes_up']}, "
                            f"down {cflow[0]['bytes_down']}",
                            flow.note("pop", f"carol {HR} by client certificate, via gw1"))
        else:
            steps[7].see(f"without a certificate {nocert[-60:]!r}; carol exit {seen.get('carol_rc')}: {carol[-120:]!r} "
                         f"{seen.get('carol_err', '')[:150]}; {len(cflow)} flow lines")
        # 9. refused by the gateway's own policy
        dave = seen.get("dave", "").rstrip()
        gw_refused = [x for x in gwlog.splitlines() if "dave" in x and "refused by the gateway's policy" in x]
        pop_refused = [x for x in Path(lab.procs["pop"].log).read_text(errors="replace").splitlines()
                       if "dave" in x and "refused the stream" in x]
        if dave.endswith(" 502") and gw_refused and pop_refused:
            steps[8].passed(f"after signing in: {dave.splitlines()[-1]}; gateway log: "
                            f"{gw_refused[0].split(' WARNING ', 1)[-1][:150]}",
                            flow.note("gateway", "dave's stream refused", flow.log_time(gw_refused[0])),
                            flow.note("pop", "502 for dave", flow.log_time(pop_refused[0])))
        else:
            steps[8].see(f"dave: {dave[-100:]!r}; {len(gw_refused)} gateway refusals, {len(pop_refused)} PoP lines")
        return steps


SCENARIOS = [PopAgentlessScenario]
