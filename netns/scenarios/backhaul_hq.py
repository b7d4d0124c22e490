"""Scenario ``backhaul-hq`` (SPEC §7, issue 16 steps 1-6): a branch's flows backhauled through the HQ gateway site.

    user 10.10.0.10 --LAN-- branch (ztna site run) ----+   mobile 198.18.0.2 (ztna agent run, full tunnel:
                                                       |   alice, 10.99.0.10 at the PoP) --+
    pop 192.0.2.10, egress 150.195.219.10 -------- inet (router) ---- web 203.0.113.80 (whoami; saas.example's DNS)
                                                   |   |    |
                                 isp1 198.18.11.2 -+   |    +- saas 198.18.20.80 (SaaS: WAN1 only)
                                 isp2 198.18.12.2 -----+       198.18.20.81 (country-only: WAN addresses only)
                                   |        |
                        wan1 198.18.1.2  wan2 198.18.2.2
                                hq (ztna site run, [backhaul] gateway = true) 192.168.50.1
                                   |
                         hqgw 192.168.50.254 (the HQ LAN's next hop) -- intranet 172.20.0.80 (whoami)

The PoP's rules file (``[pop] rules``, pop/netrules.py) starts empty; step 2
writes "SaaS via HQ" (``domain:saas.example``, ``backhaul_via = "hq"``) and sends
SIGHUP.  The user resolves app.saas.example (the SaaS) and jp-only.saas.example
(the country-only server) through the PoP's DNS (``[pop] dns_upstream``), so the
PoP knows those addresses by that domain.  It then sends the flows into HQ's
site tunnel unchanged, HQ marks them for its port,
routes them out of WAN1 (or WAN2) with SNAT, and the replies come back the same
way.  Each server is the lab web server, whose page names the client address it
saw; the SaaS and country-only servers refuse other sources with a TCP reset
(nft allow lists in their namespace).
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

from .. import capture, evidence, flow, procs
from ..lab import Lab
from ..report import Step
from ..scenario import Scenario
from ..topology import Topology
from .agent import web_argv
from .backhaul import (BRANCH_UP, CONNECTOR_NAME, EGRESS, LAN, POP, SITE_NAME, TUNNEL_NAME, USER, WEB,  # noqa: F401
                       pop_section)

WAN1, WAN2, HQ_LAN, HQ_IN = "198.18.1.2", "198.18.2.2", "192.168.50.0/24", "192.168.50.1"
SAAS, COUNTRY, LOCAL_GW, INTRANET = "198.18.20.80", "198.18.20.81", "192.168.50.254", "172.20.0.80"
HEALTH_TARGET = "203.0.113.1"
POP_DNS = "100.127.255.254"  # the PoP answers its sites' DNS on its TUN address ([pop] dns_upstream)
SAAS_NAME, COUNTRY_NAME = "app.saas.example", "jp-only.saas.example"
ZONE = (f"$ORIGIN saas.example.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 60 60 60 60\n"
        f"app IN A {SAAS}\njp-only IN A {COUNTRY}\n")
TUN = "ztna-site0"
MOBILE, MOBILE_GW, ALICE = "198.18.0.2", "198.18.0.1", "10.99.0.10"  # alice's address at the PoP ([mobile])
HQ_ENDED = "site said CLOSE: site stopping"

RULE = """[[network_rule]]
name = "SaaS via HQ"
type = "internet"
source = ["site:branch1"]
destination = ["domain:saas.example"]
backhaul_via = "hq"

[[network_rule]]
name = "alice's country-only site via HQ"
type = "internet"
source = ["user:alice"]
destination = ["198.18.20.81"]
backhaul_via = "hq"

[[network_rule]]
name = "HQ intranet via HQ"
type = "internet"
source = ["site:branch1"]
destination = ["172.20.0.0/24"]
backhaul_via = "hq"
"""
BLOCK = f"""[[firewall_rule]]
name = "block SaaS for branch1"
action = "block"
source = ["site:branch1"]
destination = ["fqdn:{SAAS_NAME}"]

"""
ALLOW_LISTS = f"""table inet saas_allow {{
  set saas {{ type ipv4_addr; elements = {{ {WAN1} }}; }}
  set country {{ type ipv4_addr; elements = {{ {WAN1}, {WAN2} }}; }}
  chain input {{
    type filter hook input priority 0; policy accept;
    ip daddr {SAAS} tcp dport 80 ip saddr != @saas reject with tcp reset
    ip daddr {COUNTRY} tcp dport 80 ip saddr != @country reject with tcp reset
  }}
}}
"""


class BackhaulHqScenario(Scenario):
    name = "backhaul-hq"
    summary = ("backhauling through a gateway site (SPEC §7, issue 16): rule \"SaaS via HQ\", WAN1/WAN2 with health "
               "checks, the firewall before routing, the fallback, the local gateway IP")
    aliases = {"100.127.0.1/32": "branch", "100.127.0.2/32": "hq", "10.99.0.10/32": "mobile"}
    tunnels = [flow.Tunnel("branch site tunnel", ("branch", "pop"), ["branch:ztna-site0"], 443),
               flow.Tunnel("HQ site tunnel", ("hq", "pop"), ["hq:ztna-site0"], 443)]
    capture_extra = [("branch", TUN), ("hq", TUN), ("pop", "ztna-pop0")]

    def topology(self) -> Topology:
        t = Topology(self.name)
        t.host("user").addr("eth0", f"{USER}/24").route("default", "10.10.0.1")
        t.host("branch", forward=True).addr("eth0", "10.10.0.1/24").addr("eth1", f"{BRANCH_UP}/24") \
            .route("default", "198.51.100.1")
        inet = t.host("inet", forward=True)
        inet.addr("eth0", "198.51.100.1/24").addr("eth1", "192.0.2.1/24").addr("eth2", "203.0.113.1/24")
        inet.addr("eth3", "198.18.11.1/24").addr("eth4", "198.18.12.1/24").addr("eth5", "198.18.20.1/24")
        inet.route(f"{EGRESS}/32", POP).route("198.18.1.0/24", "198.18.11.2").route("198.18.2.0/24", "198.18.12.2")
        t.host("pop", forward=True).addr("eth0", f"{POP}/24").addr("eth0", f"{EGRESS}/32") \
            .route("default", "192.0.2.1")
        t.host("web").addr("eth0", f"{WEB}/24").route("default", "203.0.113.1")
        t.host("saas").addr("eth0", f"{SAAS}/24").addr("eth0", f"{COUNTRY}/24").route("default", "198.18.20.1")
        t.host("isp1", forward=True).addr("eth0", "198.18.1.1/24").addr("eth1", "198.18.11.2/24") \
            .route("default", "198.18.11.1")
        t.host("isp2", forward=True).addr("eth0", "198.18.2.1/24").addr("eth1", "198.18.12.2/24") \
            .route("default", "198.18.12.1")
        t.host("hq", forward=True).addr("eth0", f"{HQ_IN}/24").addr("wan1", f"{WAN1}/24") \
            .addr("wan2", f"{WAN2}/24").route("default", "198.18.1.1")
        t.host("hqgw", forward=True).addr("eth0", f"{LOCAL_GW}/24").addr("eth1", "172.20.0.1/24") \
            .route(LAN, HQ_IN)
        t.host("intranet").addr("eth0", f"{INTRANET}/24").route("default", "172.20.0.1")
        inet.addr("eth6", f"{MOBILE_GW}/24")
        t.host("mobile").addr("eth0", f"{MOBILE}/24").route("default", MOBILE_GW)
        t.link("inet", "eth6", "mobile", "eth0")
        t.link("user", "eth0", "branch", "eth0")
        t.link("branch", "eth1", "inet", "eth0")
        t.link("inet", "eth1", "pop", "eth0")
        t.link("inet", "eth2", "web", "eth0")
        t.link("inet", "eth3", "isp1", "eth1")
        t.link("inet", "eth4", "isp2", "eth1")
        t.link("inet", "eth5", "saas", "eth0")
        t.link("isp1", "eth0", "hq", "wan1")
        t.link("isp2", "eth0", "hq", "wan2")
        t.link("hq", "eth0", "hqgw", "eth0")
        t.link("hqgw", "eth1", "intranet", "eth0")
        return t

    # ---- services -------------------------------------------------------------------------
    def start(self, lab: Lab) -> None:
        lab.ca()
        lab.issue("pop", "server", dns=[TUNNEL_NAME, CONNECTOR_NAME, SITE_NAME])
        lab.issue("branch1", "client")
        lab.issue("hq", "client")
        lab.issue("alice", "agent")
        pki = lab.pki_dir
        webs = [lab.start("web", web_argv(WEB, http_port=80), name="whoami"),
                lab.start("saas", web_argv(SAAS, http_port=80), name="saas-web"),
                lab.start("saas", web_argv(COUNTRY, http_port=80), name="country-web"),
                lab.start("intranet", web_argv(INTRANET, http_port=80), name="intranet-web")]
        # saas.example's authoritative server (on the web host): the PoP forwards its sites' DNS there
        zone = lab.write_conf("saas.zone", ZONE)
        dns = lab.start("web", procs.ztna_argv("authdns", "run", "--listen", WEB, "--zone", str(zone)), name="saas-dns")
        procs.wait_listening(dns, WEB, 53, "udp")
        lab.set_resolvers("user", [POP_DNS])
        allow = lab.write_conf("saas-allow.nft", ALLOW_LISTS)
        r = lab.exec("saas", ["nft", "-f", str(allow)])
        if r.returncode:
            raise RuntimeError(f"the SaaS allow lists: {r.stderr.decode().strip()}")
        self.rules = lab.write_conf("rules.toml", "# no rules yet: everything leaves by the PoP's egress\n")
        pop_conf = lab.write_conf("pop.toml", (
            pop_section(lab, f"rules = \"{self.rules}\"\ndns_upstream = \"{WEB}\"\n") + "\n"
            f"[sites]\nbranch1 = {{ lan = [\"{LAN}\"] }}\n"
            f"hq = {{ lan = [\"{HQ_LAN}\"], backhaul_gateway = true, fallback = \"pop-egress\" }}\n\n"
            f"[mobile]\nalice = \"{ALICE}\"\n"))
        pop = lab.start("pop", procs.ztna_argv("pop", "run", "--config", str(pop_conf)), name="pop")
        procs.wait_listening(pop, POP, 443)
        for w, addr in zip(webs, (WEB, SAAS, COUNTRY, INTRANET)):
            procs.wait_listening(w, addr, 80)
        site = (f"pop = \"{POP}\"\npop_name = \"{SITE_NAME}\"\nca = \"{pki}/ca.pem\"\n")
        branch_conf = lab.write_conf("branch.toml", (
            f"[site]\nname = \"branch1\"\n{site}cert = \"{pki}/branch1.pem\"\nkey = \"{pki}/branch1.key\"\n"
            f"lan = [\"{LAN}\"]\ntun_address = \"100.127.0.1/32\"\n"))
        hq_site = (f"[site]\nname = \"hq\"\n{site}cert = \"{pki}/hq.pem\"\nkey = \"{pki}/hq.key\"\nlan = [\"{HQ_LAN}\"]\n"
                   f"tun_address = \"100.127.0.2/32\"\n\n")
        wans = (f"[wan1]\ninterface = \"wan1\"\naddress = \"{WAN1}\"\ngateway = \"198.18.1.1\"\n\n"
                f"[wan2]\ninterface = \"wan2\"\naddress = \"{WAN2}\"\ngateway = \"198.18.2.1\"\n\n")
        self.hq_conf = lab.write_conf("hq.toml", (
            hq_site + "[backhaul]\ngateway = true\ndestination = \"internet\"\nport = \"auto\"\n\n" + wans
            + f"[health]\ntarget = \"{HEALTH_TARGET}\"\ninterval = 0.5\ntimeout = 0.4\nfail_after = 3\n"
              "recover_after = 3\n"))
        self.hq_local_conf = lab.write_conf("hq-local.toml", (
            hq_site + f"[backhaul]\ngateway = true\ndestination = \"local\"\nlocal_gateway_ip = \"{LOCAL_GW}\"\n"))
        lab.set_resolvers("mobile", [WEB])
        agent_conf = lab.write_conf("agent-mobile.toml", (
            f"[agent]\ncert = \"{pki}/alice.pem\"\nkey = \"{pki}/alice.key\"\nca = \"{pki}/ca.pem\"\n"
            f"gateway = \"{TUNNEL_NAME}\"\napps = [\"*.mycompany.net\"]\n"
            f"resolv_conf = \"{lab.resolv_conf_path('mobile')}\"\nstate_dir = \"{lab.root}/agent-mobile\"\n\n"
            f"[internet]\npop = \"{POP}\"\npop_name = \"{SITE_NAME}\"\naddress = \"{ALICE}\"\n"))
        # The sites and the mobile agent run before the captures start, so their TUNs are captured too.
        lab.start("branch", procs.ztna_argv("site", "run", "--config", str(branch_conf)), name="branch-site")
        lab.start("hq", procs.ztna_argv("site", "run", "--config", str(self.hq_conf)), name="hq-site")
        lab.start("mobile", procs.ztna_argv("agent", "run", "--config", str(agent_conf)), name="agent")
        wait_log(lab, "pop", lambda t: "site branch1 up" in t and "site hq up" in t and "site user:alice up" in t, 20,
                 "both sites' and alice's tunnels to reach the PoP")
        wait_log(lab, "hq-site", lambda t: "gateway site: backhauled flows leave by wan1" in t, 10,
                 "the HQ site's gateway set-up")

    # ---- the user's actions ---------------------------------------------------------------
    def drive(self, lab: Lab) -> dict:
        seen: dict = {}
        # 1. no rule yet
        seen["t1"] = time.time()
        seen["s1_web"] = curl(lab, WEB)
        seen["s1_country"] = curl(lab, COUNTRY_NAME)
        seen["s1m_web"] = curl(lab, WEB, host="mobile")
        # 2. "SaaS via HQ"
        self.reload(lab, RULE, seen, "s2")
        seen["t2"] = time.time()
        seen["s2_saas"] = curl(lab, SAAS_NAME)
        seen["s2_country"] = curl(lab, COUNTRY_NAME)
        seen["s2_web"] = curl(lab, WEB)
        seen["s2m_country"] = curl(lab, COUNTRY, host="mobile")
        seen["s2m_web"] = curl(lab, WEB, host="mobile")
        seen["t2_end"] = time.time()
        # 3. WAN1 taken down in isp1's namespace, then back
        # a request through the PoP's egress whose answer comes after the failover: untouched by it
        egress_req = lab.start("user", slow_argv(WEB, 4), name="egress-slow")
        mark = log_size(lab, "hq-site")
        seen["t3_down"] = time.time()
        lab.exec("isp1", ["ip", "link", "set", "eth0", "down"])
        seen["s3_wan2_line"] = wait_line(lab, "hq-site", r"port wan2 at (\S+): ", 15, mark)
        wait_log(lab, "pop", lambda t: f"site hq up from {WAN2}" in t, 15, "HQ's tunnel over WAN2")
        seen["t3_failed_over"] = time.time()
        seen["s3_country"] = curl(lab, COUNTRY_NAME)
        seen["s3_saas"] = curl(lab, SAAS_NAME, max_time=5)
        seen["s3_egress_slow"] = finished(egress_req)
        # a request through WAN2 whose answer comes after WAN1 is back: it stays on WAN2
        held = lab.start("user", slow_argv(COUNTRY_NAME, 5), name="wan2-slow")
        time.sleep(0.5)
        mark = log_size(lab, "hq-site")
        seen["t3_up"] = time.time()
        lab.exec("isp1", ["ip", "link", "set", "eth0", "up"])
        seen["s3_wan1_line"] = wait_line(lab, "hq-site", r"port wan1 at (\S+): .*healthy again", 15, mark)
        seen["t3_failed_back"] = time.time()
        seen["s3_back_country"] = curl(lab, COUNTRY_NAME)
        seen["s3_wan2_slow"] = finished(held)
        # 4. the firewall before routing
        self.reload(lab, BLOCK + RULE, seen, "s4")
        seen["t4"] = time.time()
        seen["s4_saas"] = curl(lab, SAAS_NAME, max_time=3)
        seen["s4_country"] = curl(lab, COUNTRY_NAME)
        seen["t4_end"] = time.time()
        # 5. the gateway site stopped, then back
        ended = pop_log(lab).count(HQ_ENDED)
        lab.stop("hq-site")
        wait_log(lab, "pop", lambda t: t.count(HQ_ENDED) > ended, 15, "the PoP to see HQ's tunnel end")
        seen["t5_down"] = time.time()
        seen["s5_country"] = curl(lab, COUNTRY_NAME, max_time=5)
        seen["s5_web"] = curl(lab, WEB)
        ups = pop_log(lab).count("site hq up")
        seen["t5_restart"] = time.time()
        lab.start("hq", procs.ztna_argv("site", "run", "--config", str(self.hq_conf)), name="hq-site")
        wait_log(lab, "pop", lambda t: t.count("site hq up") > ups, 20, "HQ's tunnel back")
        seen["t5_up"] = time.time()
        seen["s5_back_country"] = curl(lab, COUNTRY_NAME)
        # 5c. HQ started while its WAN1 is down: the tunnel's first dial hangs over WAN1 until the probes move it
        lab.stop("hq-site")
        wait_log(lab, "pop", lambda t: t.count(HQ_ENDED) > ended + 1, 15, "the PoP to see HQ's tunnel end")
        lab.exec("isp1", ["ip", "link", "set", "eth0", "down"])
        over_wan2 = pop_log(lab).count(f"site hq up from {WAN2}")
        mark = log_size(lab, "hq-site")
        seen["t5c"] = time.time()
        lab.start("hq", procs.ztna_argv("site", "run", "--config", str(self.hq_conf)), name="hq-site")
        wait_log(lab, "pop", lambda t: t.count(f"site hq up from {WAN2}") > over_wan2, 20, "HQ's tunnel over WAN2")
        seen["t5c_up"] = time.time()
        seen["s5c_country"] = curl(lab, COUNTRY_NAME)
        seen["s5c_log"] = Path(lab.procs["hq-site"].log).read_text(errors="replace")[mark:]
        mark = log_size(lab, "hq-site")
        lab.exec("isp1", ["ip", "link", "set", "eth0", "up"])
        wait_line(lab, "hq-site", r"port wan1 at (\S+): .*healthy again", 15, mark)
        seen["t5c_end"] = time.time()
        # 6. the local gateway IP
        lab.stop("hq-site")
        ups = pop_log(lab).count("site hq up")
        lab.start("hq", procs.ztna_argv("site", "run", "--config", str(self.hq_local_conf)), name="hq-site")
        wait_log(lab, "pop", lambda t: t.count("site hq up") > ups, 20, "HQ's tunnel back (local gateway IP)")
        seen["t6"] = time.time()
        seen["s6_intranet"] = curl(lab, INTRANET)
        seen["hqgw_mac"] = mac(lab, "hqgw", "eth0")
        lab.stop("hq-site")
        seen["s6_left_nft"] = lab.exec("hq", ["nft", "list", "table", "ip", "ztna_site_gw"]).returncode == 0
        seen["s6_left_route"] = lab.exec("hq", ["ip", "route", "show", f"{POP}/32"]).stdout.decode().strip()
        seen["s6_left_rules"] = [x for x in lab.exec("hq", ["ip", "rule"]).stdout.decode().splitlines()
                                 if x.split(":")[0].strip().startswith("51")]
        # The branch's and alice's ends close their flows, so the PoP writes their lines.
        lab.stop("agent")
        lab.stop("branch-site")
        flows = lab.log_dir / "pop-flows.jsonl"
        try:
            procs.wait_until(lambda: flows.exists() and "HQ intranet via HQ" in flows.read_text(), timeout=10,
                             what="the PoP's flow lines")
        except TimeoutError:
            pass
        return seen

    def reload(self, lab: Lab, text: str, seen: dict, key: str) -> None:
        n = pop_log(lab).count("rules reloaded")
        self.rules.write_text(text)
        lab.procs["pop"].popen.send_signal(signal.SIGHUP)
        wait_log(lab, "pop", lambda t: t.count("rules reloaded") > n, 10, "the PoP to reload its rules")
        seen[f"{key}_rules"] = text

    # ---- the checks -----------------------------------------------------------------------
    def verify(self, lab: Lab, seen: dict) -> list[Step]:
        cap = {k: capture.read(lab.pcap(*k.split(":"))) for k in (
            "pop:eth0", "pop:ztna-pop0", "hq:ztna-site0", "hq:wan1", "hq:wan2", "hq:eth0", "saas:eth0", "web:eth0",
            "branch:eth1", "branch:ztna-site0", "hqgw:eth1", "intranet:eth0")}
        seg = {k: evidence.tcp(v) for k, v in cap.items()}
        flows = evidence.json_lines(lab.log_dir / "pop-flows.jsonl")
        steps = [Step(n, text) for n, text in [
            ("1", f"before any rule: whoami sees the PoP's egress {EGRESS}; the country-only server refuses it"),
            ("2", f"rule \"SaaS via HQ\": the SaaS and country-only servers see HQ's WAN1 {WAN1}; the flow enters the "
                  f"PoP, crosses HQ's site tunnel unchanged and leaves WAN1; whoami still sees {EGRESS}"),
            ("1m", f"before any rule: the mobile agent's full tunnel leaves by the PoP's egress too: whoami sees {EGRESS}"),
            ("2m", f"rule \"alice's country-only site via HQ\" (source user:alice): the mobile user's flow crosses HQ's "
                   f"tunnel from {ALICE} and the server sees {WAN1}; whoami still sees {EGRESS}"),
            ("3a", f"automatic port, WAN1 down in isp1: after the health checks notice, new flows leave WAN2 {WAN2}; "
                   "a flow by the PoP's egress is untouched"),
            ("3b", "WAN1 back: new flows leave WAN1 again; a flow begun on WAN2 stays on WAN2 to its end"),
            ("4", "firewall: a block rule on the SaaS blocks it for the branch although the backhaul rule matches; "
                  "the flow line names both rules and the site"),
            ("5a", f"HQ's site stopped: the fallback (pop-egress) applies: the flow leaves from {EGRESS}"),
            ("5b", "HQ's site back: backhaul through WAN1 returns by itself"),
            ("5c", "HQ started while WAN1 is down: its first dial over WAN1 is given up when the probes fail, the "
                   "tunnel comes up over WAN2 and flows leave WAN2"),
            ("6", f"local gateway IP: {INTRANET} on HQ's LAN side reached through HQ's next hop {LOCAL_GW}; the site's "
                  "nft table and ip rules are gone when it stops"),
        ]]
        by = {s.number: s for s in steps}

        def syns(k, dst, after=0.0, before=float("inf"), src=None):
            return [s for s in seg[k] if s.flags == "S" and s.dst == dst and s.dport == 80
                    and after <= s.time < before and (src is None or s.src == src)]

        # 1
        w, c = seen.get("s1_web", {}), seen.get("s1_country", {})
        t1, t2 = seen.get("t1", 0), seen.get("t2", 0)
        wsyn = syns("web:eth0", WEB, t1, t2)
        csyn = syns("saas:eth0", COUNTRY, t1, t2)
        rst = [s for s in seg["saas:eth0"] if "R" in s.flags and s.src == COUNTRY and t1 <= s.time < t2]
        if f"to client {EGRESS}" in w.get("out", "") and wsyn and all(s.src == EGRESS for s in wsyn) \
                and csyn and all(s.src == EGRESS for s in csyn) and rst and c.get("rc") != 0:
            by["1"].passed(f"whoami: {w['out'].strip()[:100]}; saas:eth0 SYN {EGRESS} -> {COUNTRY}:80 answered by "
                           f"RST (curl: {c.get('err', '').strip()[:60]})", wsyn[0], csyn[0], rst[0])
        else:
            by["1"].see(f"whoami {w}, country {c}, SYNs at web {[s.src for s in wsyn]}, at saas "
                        f"{[s.src for s in csyn]}, {len(rst)} RST")
        # 2
        t3 = seen.get("t3_down", 0)
        s, c, w = seen.get("s2_saas", {}), seen.get("s2_country", {}), seen.get("s2_web", {})
        br_in = syns("branch:ztna-site0", SAAS, t2, t3, src=USER)
        answered = [m for m in evidence.dns(cap["branch:ztna-site0"]) if m.response and m.name == SAAS_NAME
                    and SAAS in m.a and m.src == POP_DNS and t2 <= m.time < t3]
        tun_in = syns("hq:ztna-site0", SAAS, t2, t3, src=USER)
        wan_out = syns("hq:wan1", SAAS, t2, t3)
        at_saas = syns("saas:eth0", SAAS, t2, t3)
        csaas = syns("saas:eth0", COUNTRY, t2, t3)
        pop_tun = [x for x in seg["pop:ztna-pop0"] if x.dst in (SAAS, COUNTRY) and t2 <= x.time < t3]
        pop_out = [x for x in seg["pop:eth0"] if x.dst in (SAAS, COUNTRY) and x.src == EGRESS and t2 <= x.time < t3]
        branch_in = [x for x in seg["pop:eth0"] if x.src == BRANCH_UP and x.dport == 443 and x.payload
                     and t2 <= x.time < t3]
        hq_out = [x for x in seg["pop:eth0"] if x.dst == WAN1 and x.sport == 443 and x.payload and t2 <= x.time < t3]
        wsyn = syns("web:eth0", WEB, t2, t3)
        bh = [f for f in flows if f.get("dst") == f"{SAAS}:80" and f.get("exit") == "backhaul"
              and f.get("via") == "hq" and f.get("port") == "wan1" and f.get("network_rule") == "SaaS via HQ"]
        if bh and f"to client {WAN1}" in s.get("out", "") and f"to client {WAN1}" in c.get("out", "") \
                and f"to client {EGRESS}" in w.get("out", "") and answered and br_in and tun_in and wan_out and at_saas \
                and all(x.src == WAN1 for x in wan_out + at_saas + csaas) and not pop_tun and not pop_out \
                and branch_in and hq_out and wsyn and all(x.src == EGRESS for x in wsyn):
            by["2"].passed(f"SaaS: {s['out'].strip()[:90]}; country-only: {c['out'].strip()[:90]}; whoami: "
                           f"{w['out'].strip()[:90]}", branch_in[0], hq_out[0])
            by["2"].see(f"branch:{TUN} the PoP's DNS {POP_DNS} answers {SAAS_NAME} A {SAAS} (so the address matches "
                        f"domain:saas.example), then SYN {USER}:{br_in[0].sport} -> {SAAS}:80 into the branch's tunnel",
                        answered[0], br_in[0])
            by["2"].see(f"hq:{TUN} SYN {USER}:{tun_in[0].sport} -> {SAAS}:80 (the branch user's source, out of HQ's "
                        f"tunnel); hq:wan1 SYN {wan_out[0].src}:{wan_out[0].sport} -> {SAAS}:80; saas:eth0 from "
                        f"{at_saas[0].src}", tun_in[0], wan_out[0], at_saas[0])
            by["2"].see(f"pop:eth0 TLS records branch {BRANCH_UP} -> {POP}:443 and {POP}:443 -> HQ {WAN1}; 0 packets "
                        f"of these flows on the PoP's TUN, 0 from {EGRESS} to them; whoami's SYN from {EGRESS}",
                        wsyn[0])
            by["2"].see("flow line: " + json.dumps(bh[0], separators=(",", ":")))
        else:
            by["2"].see(f"flow lines {bh[:1]}; saas {s}, country {c}, whoami {w}; hq TUN SYNs {len(tun_in)}, wan1 SYNs "
                        f"{[x.src for x in wan_out]}, at saas {[x.src for x in at_saas + csaas]}, PoP TUN {len(pop_tun)}, "
                        f"PoP egress {len(pop_out)}, DNS answers {len(answered)}, branch TUN {len(br_in)}, branch TLS {len(branch_in)}, HQ TLS {len(hq_out)}")
        # 1m
        w = seen.get("s1m_web", {})
        wsyn = [x for x in syns("web:eth0", WEB, t1, t2) if x.src == EGRESS]
        alice_in = [x for x in seg["pop:eth0"] if x.src == MOBILE and x.dport == 443 and x.payload and t1 <= x.time < t2]
        if f"to client {EGRESS}" in w.get("out", "") and wsyn and alice_in:
            by["1m"].passed(f"mobile: curl http://{WEB}/ -> {w['out'].strip()[:100]}; pop:eth0 TLS records of alice's "
                            f"full tunnel {MOBILE}:{alice_in[0].sport} -> {POP}:443 meanwhile", alice_in[0], wsyn[-1])
        else:
            by["1m"].see(f"mobile whoami {w}; {len(alice_in)} TLS records from {MOBILE}")
        # 2m
        c, w = seen.get("s2m_country", {}), seen.get("s2m_web", {})
        t2e = seen.get("t2_end", 0)
        m_tun = [x for x in syns("hq:ztna-site0", COUNTRY, t2, t2e) if x.src == ALICE]
        m_wan = [x for x in syns("hq:wan1", COUNTRY, t2, t2e) if m_tun and x.sport == m_tun[0].sport]
        m_lines = [f for f in flows if f.get("site") == "user:alice" and f.get("dst") == f"{COUNTRY}:80"
                   and f.get("exit") == "backhaul" and f.get("via") == "hq"]
        if f"to client {WAN1}" in c.get("out", "") and f"to client {EGRESS}" in w.get("out", "") and m_tun \
                and m_wan and all(x.src == WAN1 for x in m_wan) and m_lines:
            by["2m"].passed(f"mobile: {c['out'].strip()[:90]}; hq:{TUN} SYN {ALICE}:{m_tun[0].sport} -> {COUNTRY}:80, "
                            f"hq:wan1 SYN {WAN1}:{m_wan[0].sport}; whoami: {w['out'].strip()[:70]}", m_tun[0], m_wan[0])
            by["2m"].see("flow line: " + json.dumps(m_lines[0], separators=(",", ":")))
        else:
            by["2m"].see(f"mobile country {c}, whoami {w}; hq TUN SYNs from {ALICE} {len(m_tun)}, wan1 {len(m_wan)}; "
                         f"lines {m_lines[:1]}")
        # 3a
        line = seen.get("s3_wan2_line") or ""
        t_over, t_up = seen.get("t3_failed_over", 0), seen.get("t3_up", 0)
        c, s = seen.get("s3_country", {}), seen.get("s3_saas", {})
        w2 = syns("hq:wan2", COUNTRY, t_over, t_up)
        w1 = syns("hq:wan1", COUNTRY, t3, t_up)
        logged = _utc(re.search(r"port wan2 at (\S+):", line).group(1)) if line else None
        bh = [f for f in flows if f.get("dst") == f"{COUNTRY}:80" and f.get("exit") == "backhaul" and f.get("port") == "wan2"]
        ebody, eport = seen.get("s3_egress_slow", ["", 0])
        # (the PoP's NAT keeps the source port: nothing else in the lab holds it)
        answer = [x for x in seg["web:eth0"] if x.src == WEB and x.dst == EGRESS and x.dport == eport and x.payload]
        edl_last = max((x.time for x in answer), default=0)
        if "slow answer after 4s" in ebody and logged and edl_last > logged and bh and line \
                and f"to client {WAN2}" in c.get("out", "") and w2 and all(x.src == WAN2 for x in w2) and not w1 \
                and s.get("rc") != 0:
            by["3a"].passed(f"isp1 eth0 down at {_hms(t3)}; HQ logged at {_hms(logged)} "
                            f"(+{logged - t3:.1f} s): {line.split(': ', 1)[-1][:220]}", flow.note("hq", line[:160], logged))
            by["3a"].see(f"country-only: {c['out'].strip()[:90]}; hq:wan2 SYN {w2[0].src}:{w2[0].sport} -> {COUNTRY}:80 "
                         f"at {_hms(w2[0].time)}; the SaaS (WAN1 only) refuses WAN2: curl {s.get('err', '').strip()[:60]}",
                         w2[0])
            by["3a"].see("flow line: " + json.dumps(bh[0], separators=(",", ":")))
            by["3a"].see(f"a request by the PoP's egress made before WAN1 went down got its answer after the "
                         f"failover: web:eth0 {WEB}:80 -> {EGRESS}:{eport} at {_hms(edl_last)}, curl: {ebody.strip()}",
                         answer[-1])
        else:
            by["3a"].see(f"egress request {ebody!r} port {eport}, answer {_hms(edl_last)}; flow lines {bh[:1]}; log "
                         f"{line[:120]!r}; country {c}; wan2 SYNs {[x.src for x in w2]}, wan1 SYNs {len(w1)}; saas {s}")
        # 3b
        line = seen.get("s3_wan1_line") or ""
        t_back, t4 = seen.get("t3_failed_back", 0), seen.get("t4", 0)
        c = seen.get("s3_back_country", {})
        w1 = syns("hq:wan1", COUNTRY, t_back, t4)
        hbody, hport = seen.get("s3_wan2_slow", ["", 0])
        # (HQ's SNAT keeps the source port: nothing else in the lab holds it)
        h_tun = [x for x in seg["hq:ztna-site0"] if USER in (x.src, x.dst) and hport in (x.sport, x.dport)
                 and COUNTRY in (x.src, x.dst)]
        h_w1 = [x for x in seg["hq:wan1"] if COUNTRY in (x.src, x.dst) and hport in (x.sport, x.dport)]
        h_ans = [x for x in seg["hq:wan2"] if x.src == COUNTRY and x.dst == WAN2 and x.dport == hport and x.payload]
        logged = _utc(re.search(r"port wan1 at (\S+):", line).group(1)) if line else None
        last_w2 = max((x.time for x in h_ans), default=0)
        if line and f"to client {WAN1}" in c.get("out", "") and w1 and all(x.src == WAN1 for x in w1) \
                and "slow answer after 5s" in hbody and h_tun and h_ans and not h_w1 and logged and last_w2 > logged:
            by["3b"].passed(f"isp1 eth0 up at {_hms(t_up)}; HQ logged at {_hms(logged)} (+{logged - t_up:.1f} s): "
                            f"{line.split(': ', 1)[-1][:220]}; country-only: {c['out'].strip()[:80]}",
                            flow.note("hq", line[:160], logged), w1[0])
            by["3b"].see(f"a request from {USER}:{hport} made on WAN2 before WAN1 came back got its answer on "
                         f"hq:wan2 at {_hms(last_w2)}, after the fail back ({COUNTRY}:80 -> {WAN2}:{hport}); 0 of "
                         f"its packets on wan1; curl: {hbody.strip()}", h_ans[-1])
        else:
            by["3b"].see(f"log {line[:120]!r}; country {c}; wan1 SYNs {[x.src for x in w1]}; held request {hbody!r} "
                         f"port {hport} ({len(h_tun)} on the TUN, {len(h_ans)} answers on wan2, {len(h_w1)} on wan1, "
                         f"last {last_w2}, fail back {logged})")
        # 4
        t4_end = seen.get("t4_end", 0)
        s, c = seen.get("s4_saas", {}), seen.get("s4_country", {})
        leaked = [x for k in ("hq:ztna-site0", "hq:wan1", "hq:wan2", "saas:eth0", "pop:eth0", "pop:ztna-pop0")
                  for x in seg[k] if x.dst == SAAS and t4 <= x.time < t4_end]
        blocked = [f for f in flows if f.get("dst") == f"{SAAS}:80" and f.get("exit") == "drop"]
        if s.get("rc") != 0 and not leaked and blocked and blocked[0].get("firewall_rule") == "block SaaS for branch1" \
                and blocked[0].get("network_rule") == "SaaS via HQ" and blocked[0].get("site") == "branch1" \
                and f"to client {WAN1}" in c.get("out", ""):
            by["4"].passed("flow line: " + json.dumps(blocked[0], separators=(",", ":")),
                           flow.note("pop", f"flow {blocked[0]['src']} -> {SAAS}:80 dropped by \"block SaaS for "
                                            "branch1\" (network rule \"SaaS via HQ\")"))
            by["4"].see(f"curl {SAAS_NAME}: {s.get('err', '').strip()[:60]}; 0 packets to {SAAS} on HQ's TUN, WANs, the "
                        f"SaaS or the PoP's egress; the country-only server still backhauled: {c['out'].strip()[:70]}")
        else:
            by["4"].see(f"saas {s}; {len(leaked)} packets to {SAAS} leaked; drop lines {blocked[:1]}; country {c}")
        # 5a
        t5, t5r, t5u = seen.get("t5_down", 0), seen.get("t5_restart", 0), seen.get("t5_up", 0)
        c, w = seen.get("s5_country", {}), seen.get("s5_web", {})
        out = [x for x in seg["pop:eth0"] if x.flags == "S" and x.dst == COUNTRY and t5 <= x.time < t5r]
        rst = [x for x in seg["saas:eth0"] if "R" in x.flags and x.src == COUNTRY and x.dst == EGRESS and t5 <= x.time < t5r]
        fb = [f for f in flows if f.get("dst") == f"{COUNTRY}:80" and f.get("fallback_of") == "hq"]
        if out and all(x.src == EGRESS for x in out) and rst and fb and fb[0].get("exit") == "pop-egress" \
                and f"to client {EGRESS}" in w.get("out", ""):
            by["5a"].passed(f"pop:eth0 SYN {EGRESS}:{out[0].sport} -> {COUNTRY}:80 (the country-only server resets "
                            f"it); flow line: " + json.dumps(fb[0], separators=(",", ":")), out[0], rst[0])
        else:
            by["5a"].see(f"country {c}; whoami {w}; SYNs out {[x.src for x in out]}; {len(rst)} RST; fallback lines {fb[:1]}")
        # 5b
        c = seen.get("s5_back_country", {})
        t6 = seen.get("t6", 0)
        w1 = syns("hq:wan1", COUNTRY, t5u, t6)
        if f"to client {WAN1}" in c.get("out", "") and w1 and all(x.src == WAN1 for x in w1):
            by["5b"].passed(f"HQ restarted at {_hms(t5r)}, its tunnel up at {_hms(t5u)}; country-only: "
                            f"{c['out'].strip()[:80]}; hq:wan1 SYN {w1[0].src}:{w1[0].sport} -> {COUNTRY}:80", w1[0])
        else:
            by["5b"].see(f"country {c}; wan1 SYNs {[x.src for x in w1]}")
        # 5c
        t5c, t5c_up, t5c_end = seen.get("t5c", 0), seen.get("t5c_up", 0), seen.get("t5c_end", 0)
        c, hlog = seen.get("s5c_country", {}), seen.get("s5c_log", "")
        tunnel = [x for x in seg["hq:wan2"] if x.flags == "S" and x.dst == POP and x.dport == 443 and x.src == WAN2
                  and t5c <= x.time < t5c_up]
        w2 = syns("hq:wan2", COUNTRY, t5c_up, t5c_end)
        moved = [x for x in hlog.splitlines() if "the tunnel to the PoP moves to wan2" in x]
        if f"to client {WAN2}" in c.get("out", "") and tunnel and w2 and all(x.src == WAN2 for x in w2) and moved:
            gave_up = any("dial over the old port given up" in x for x in hlog.splitlines())
            by["5c"].passed(f"hq: {moved[0].split('site hq: ', 1)[-1].strip()[:120]}" + ("; the hanging dial over wan1 given up" if gave_up
                            else "") + f"; hq:wan2 SYN {WAN2}:{tunnel[0].sport} -> {POP}:443 at {_hms(tunnel[0].time)} "
                            f"(started at {_hms(t5c)}); country-only: {c['out'].strip()[:80]}", tunnel[0], w2[0])
        else:
            by["5c"].see(f"country {c}; tunnel SYNs over wan2 {len(tunnel)}; country SYNs {[x.src for x in w2]}; "
                         f"moved {moved[:1]}")
        # 6
        i = seen.get("s6_intranet", {})
        from scapy.layers.l2 import Ether

        lan_syn = [p for p in cap["hq:eth0"] if p.haslayer(Ether) and float(p.time) >= t6
                   and [x for x in evidence.tcp([p]) if x.flags == "S" and x.dst == INTRANET]]
        via_gw = [p for p in lan_syn if p[Ether].dst == seen.get("hqgw_mac")]
        at_srv = syns("intranet:eth0", INTRANET, t6)
        local = [f for f in flows if f.get("dst") == f"{INTRANET}:80" and f.get("exit") == "backhaul"]
        if f"to client {USER}" in i.get("out", "") and lan_syn and len(via_gw) == len(lan_syn) and at_srv \
                and all(x.src == USER for x in at_srv) and local and local[0].get("port") == "local" \
                and not seen.get("s6_left_nft") and not seen.get("s6_left_rules") and not seen.get("s6_left_route"):
            by["6"].passed(f"intranet: {i['out'].strip()[:90]}; hq:eth0 SYN {USER} -> {INTRANET}:80 to the MAC of "
                           f"{LOCAL_GW} ({seen['hqgw_mac']})", via_gw[0], at_srv[0])
            by["6"].see("flow line: " + json.dumps(local[0], separators=(",", ":")) + "; after the site stopped: no "
                        "table ip ztna_site_gw, no ip rule 51xx, no host route to the PoP in hq")
        else:
            by["6"].see(f"intranet {i}; LAN SYNs {len(lan_syn)} ({len(via_gw)} to {seen.get('hqgw_mac')}); at the "
                        f"server {[x.src for x in at_srv]}; flow lines {local[:1]}; left nft {seen.get('s6_left_nft')}, "
                        f"rules {seen.get('s6_left_rules')}, route {seen.get('s6_left_route')!r}")
        return steps


def _utc(stamp: str) -> float | None:
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _hms(t) -> str:
    import datetime as dt

    if not t:
        return "?"
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def slow_argv(addr: str, seconds: int) -> list[str]:
    """A request the server answers after ``seconds``; curl prints the answer and its own port."""
    return ["curl", "-sS", "--max-time", str(seconds + 10), "-w", "%{local_port}\n", f"http://{addr}/slow/{seconds}"]


def finished(p: procs.Proc) -> list:
    """[the answer, the local port] of a slow_argv request once it has ended."""
    try:
        p.popen.wait(timeout=30)
    except Exception:  # a hung curl: stopped with the lab; the step says what it got
        pass
    text = Path(p.log).read_text(errors="replace").strip().splitlines()
    port = int(text[-1]) if text and text[-1].isdigit() else 0
    return ["\n".join(text[:-1]) if port else "\n".join(text), port]


def curl(lab: Lab, addr: str, *, max_time: float = 10, host: str = "user") -> dict:
    r = lab.exec(host, ["curl", "-sS", "--max-time", str(max_time), f"http://{addr}/"], timeout=max_time + 5)
    return {"out": r.stdout.decode(errors="replace"), "rc": r.returncode, "err": r.stderr.decode(errors="replace")}


def mac(lab: Lab, host: str, iface: str) -> str:
    r = lab.exec(host, ["ip", "-j", "link", "show", iface])
    try:
        return json.loads(r.stdout)[0]["address"]
    except (ValueError, IndexError, KeyError):
        return ""


def pop_log(lab: Lab) -> str:
    return Path(lab.procs["pop"].log).read_text(errors="replace")


def wait_log(lab: Lab, name: str, pred, timeout: float, what: str) -> None:
    p = lab.procs[name]

    def ready() -> bool:
        if not p.alive():
            raise RuntimeError(f"{name} exited; its log ends:\n{Path(p.log).read_text(errors='replace')[-1500:]}")
        return pred(Path(p.log).read_text(errors="replace"))

    procs.wait_until(ready, timeout=timeout, what=what)


def log_size(lab: Lab, name: str) -> int:
    """How much of ``name``'s log exists now (its file outlives the process: a restart appends)."""
    path = lab.log_dir / f"{name}.log"
    return len(path.read_text(errors="replace")) if path.exists() else 0


def wait_line(lab: Lab, name: str, pattern: str, timeout: float, start: int) -> str | None:
    """The first line of ``name``'s log after offset ``start`` matching ``pattern``, or None after ``timeout``."""
    path = Path(lab.procs[name].log)
    rx = re.compile(pattern)
    found: list[str] = []

    def ready() -> bool:
        for line in path.read_text(errors="replace")[start:].splitlines():
            if rx.search(line):
                found.append(line)
                return True
        return False

    try:
        procs.wait_until(ready, timeout=timeout, what=pattern)
    except TimeoutError:
        return None
    return found[0]


SCENARIOS = [BackhaulHqScenario]
