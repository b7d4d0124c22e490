"""A mobile agent's full-tunnel internet through the PoP (issue 16), every step from captures.

Built on the pop-rules lab (tests/lab/test_pop_rules.py): the PoP with its rules and egress
150.195.219.10, the whoami web host with an authoritative server for saas.example.  A ``mobile``
host on its own internet link runs ``ztna agent run`` with ``[internet] mode = "full"``: besides its
private-app TUN (100.64/10, DNS stub) it runs a site tunnel of its own identity to the PoP, a second
TUN taking 0.0.0.0/1 and 128.0.0.0/1 with the address the PoP's ``[mobile]`` table gives alice.

    mobile 198.18.0.2 (ztna agent run, full tunnel) --- inet 198.18.0.1 --- pop 192.0.2.10 --- web
"""

import json
from pathlib import Path

from netns import capture, evidence, flow, procs
from netns.lab import Lab
from netns.report import Step
from netns.scenario import run
from netns.scenarios.backhaul import EGRESS, POP, SITE_NAME, WEB
from netns.scenarios.pop_agent import TUNNEL_NAME
from test_pop_rules import BLOCKED, RULES, PopRulesScenario

MOBILE, MOBILE_GW = "198.18.0.2", "198.18.0.1"
ADDR = "10.99.0.10"   # alice's address at the PoP ([mobile]); outside the agent's 100.64/10
MOBILE_RULES = RULES + f'''
[[firewall_rule]]
name = "alice: not {BLOCKED}"
action = "block"
source = ["user:alice"]
destination = ["{BLOCKED}"]
'''


class MobileScenario(PopRulesScenario):
    name = "mobile-full-tunnel"
    summary = "a mobile agent's full-tunnel internet through the PoP's egress, with user: rules"
    aliases = {**PopRulesScenario.aliases, "10.99.0.0/16": "mobile"}

    def topology(self):
        t = super().topology()
        t.hosts["inet"].addr("eth3", f"{MOBILE_GW}/24")
        t.host("mobile").addr("eth0", f"{MOBILE}/24").route("default", MOBILE_GW)
        t.link("inet", "eth3", "mobile", "eth0")
        return t

    def start(self, lab: Lab) -> None:
        lab.ca()
        lab.issue("alice", "agent")
        super().start(lab)
        lab.stop("pop")
        rules = lab.write_conf("rules-mobile.toml", MOBILE_RULES)
        text = (lab.conf_dir / "pop-rules.toml").read_text().replace(str(self.rules), str(rules), 1)
        conf = lab.write_conf("pop-mobile.toml", text + f"\n[mobile]\nalice = \"{ADDR}\"\n")
        pop = lab.start("pop", procs.ztna_argv("pop", "run", "--config", str(conf)), name="pop")
        procs.wait_listening(pop, POP, 443)
        lab.set_resolvers("mobile", [WEB])  # saas.example's server: the stub's upstream for other names
        pki = lab.pki_dir
        self.agent_conf = lab.write_conf("agent-mobile.toml", (
            f"[agent]\ncert = \"{pki}/alice.pem\"\nkey = \"{pki}/alice.key\"\nca = \"{pki}/ca.pem\"\n"
            f"gateway = \"{TUNNEL_NAME}\"\napps = [\"*.mycompany.net\"]\n"
            f"resolv_conf = \"{lab.resolv_conf_path('mobile')}\"\nstate_dir = \"{lab.root}/agent-mobile\"\n\n"
            f"[internet]\npop = \"{POP}\"\npop_name = \"{SITE_NAME}\"\naddress = \"{ADDR}\"\n"))

    def drive(self, lab: Lab) -> dict:
        seen: dict = {}
        agent = lab.start("mobile", procs.ztna_argv("agent", "run", "--config", str(self.agent_conf)), name="agent")
        poplog = Path(lab.procs["pop"].log)
        procs.wait_until(lambda: "site user:alice up" in poplog.read_text(errors="replace") or not agent.alive(),
                         timeout=15, what="alice's full tunnel at the PoP")
        procs.wait_until(lambda: "100.64.0.2" in lab.resolv_conf_path("mobile").read_text(), what="the agent's DNS")
        seen["routes"] = lab.exec("mobile", ["ip", "-4", "route"]).stdout.decode()
        r = lab.exec("mobile", ["curl", "-sS", "--max-time", "10", f"http://{WEB}/"])
        seen["whoami"], seen["whoami_rc"], seen["whoami_err"] = r.stdout.decode(), r.returncode, r.stderr.decode()
        r = lab.exec("mobile", ["dig", "+short", "+time=3", "+tries=2", "app.saas.example", "A"])
        seen["dig"] = r.stdout.decode().split()
        r = lab.exec("mobile", ["curl", "-sS", "--max-time", "3", f"http://{BLOCKED}/"])
        seen["blocked_rc"] = r.returncode
        seen["stopped_at"] = __import__("time").time()
        lab.stop("agent")
        flows = lab.log_dir / "pop-flows.jsonl"
        try:
            procs.wait_until(lambda: flows.exists() and flows.read_text().count('"site":"user:alice"') >= 2,
                             timeout=10, what="alice's flow lines")
        except TimeoutError:
            pass
        seen["routes_after"] = lab.exec("mobile", ["ip", "-4", "route"]).stdout.decode()
        seen["links_after"] = lab.exec("mobile", ["ip", "-br", "link"]).stdout.decode()
        seen["resolv_after"] = lab.resolv_conf_path("mobile").read_text()
        return seen

    def verify(self, lab: Lab, seen: dict) -> list[Step]:
        up = capture.read(lab.pcap("mobile", "eth0"))
        web = capture.read(lab.pcap("web", "eth0"))
        flows = [f for f in (evidence.json_lines(lab.log_dir / "pop-flows.jsonl")
                             if (lab.log_dir / "pop-flows.jsonl").exists() else []) if f.get("site") == "user:alice"]
        steps = [Step(str(i), text) for i, text in enumerate([
            f"the agent's second TUN takes 0/1 and 128/1 with {ADDR}; the PoP's route stays on the uplink",
            f"whoami on {WEB} sees the PoP's egress {EGRESS}; the PoP's flow line names user:alice",
            f"the DNS stub's other names still go to its upstream {WEB}, now through the PoP: the query arrives "
            f"from {EGRESS}",
            f"a firewall rule with source user:alice blocks {BLOCKED}; its flow line names the rule",
            f"the mobile uplink carries only TLS to the PoP {POP}:443 (SNI {SITE_NAME}), nothing to {WEB} itself",
            "the agent's stop removes both TUNs, their routes and the PoP's pinned route, and gives back resolv.conf",
        ], start=1)]
        routes = seen.get("routes", "")
        if "0.0.0.0/1 dev ztna-inet0" in routes and "128.0.0.0/1 dev ztna-inet0" in routes \
                and f"{POP} via {MOBILE_GW} dev eth0" in routes and "100.64.0.0/10 dev ztna0" in routes:
            steps[0].passed("mobile: ip route: " + " | ".join(
                ln.strip() for ln in routes.splitlines() if "ztna" in ln or ln.startswith(POP)),
                flow.note("mobile", f"TUN ztna-inet0 {ADDR}: 0/1, 128/1"))
        else:
            steps[0].see(f"ip route printed {routes!r}")
        syns = [s for s in evidence.syns(web, dst=WEB, dport=80)]
        mine = [f for f in flows if f.get("dst") == f"{WEB}:80"]
        if f"to client {EGRESS}" in seen.get("whoami", "") and syns and all(s.src == EGRESS for s in syns) \
                and mine and mine[0]["exit"] == "pop-egress" and mine[0]["src"].startswith(ADDR + ":"):
            steps[1].passed(f"whoami: {seen['whoami'].strip()[:80]!r}; web:eth0 SYN {syns[0].src} -> {WEB}:80; "
                            f"flow line {json.dumps(mine[0], separators=(',', ':'))[:200]}", syns[0])
        else:
            steps[1].see(f"whoami {seen.get('whoami')!r} rc {seen.get('whoami_rc')} {seen.get('whoami_err', '')[:120]}; "
                         f"SYN sources {sorted({s.src for s in syns})}; flows {mine[:1]}")
        asked = [m for m in evidence.dns(web) if not m.response and m.name == "app.saas.example" and m.dst == WEB]
        clear = evidence.dns(up)
        if seen.get("dig") == [WEB] and asked and all(m.src == EGRESS for m in asked) and not clear:
            steps[2].passed(f"dig app.saas.example (stub 100.64.0.2) -> {seen['dig']}; web:eth0 query from "
                            f"{asked[0].src}; mobile:eth0 0 DNS packets in clear", asked[0])
        else:
            steps[2].see(f"dig {seen.get('dig')}; {len(asked)} queries at web from {sorted({m.src for m in asked})}; "
                         f"{len(clear)} DNS packets on the uplink")
        blocked = [f for f in flows if f.get("dst") == f"{BLOCKED}:80"]
        to_blocked = evidence.touching(web, f"{BLOCKED}/32")
        if blocked and all(f["exit"] == "drop" and f["firewall_rule"] == f"alice: not {BLOCKED}" for f in blocked) \
                and not to_blocked and seen.get("blocked_rc") != 0:
            steps[3].passed(f"flow line {json.dumps(blocked[0], separators=(',', ':'))[:220]}; web:eth0 0 packets "
                            f"to {BLOCKED}", flow.note("pop", f"dropped by 'alice: not {BLOCKED}'"))
        else:
            steps[3].see(f"flows to {BLOCKED}: {blocked[:1]}; {len(to_blocked)} packets reached it; "
                         f"curl rc {seen.get('blocked_rc')}")
        ul = evidence.uplink(up, MOBILE, POP, hosts=(WEB, BLOCKED), until=seen.get("stopped_at", float("inf")))
        if ul.only_tls(SITE_NAME):
            steps[4].passed(f"mobile:eth0 {len(ul.syns)} TLS connection(s) to {POP}:443, SNI {SITE_NAME}; 0 packets "
                            f"to {WEB} or {BLOCKED}", ul.syns[0])
        else:
            steps[4].see(ul.summary())
        after, links = seen.get("routes_after", ""), seen.get("links_after", "")
        if "ztna" not in after and f"{POP} via" not in after and "ztna-inet0" not in links and "ztna0" not in links \
                and WEB in seen.get("resolv_after", "") and "100.64.0.2" not in seen.get("resolv_after", ""):
            steps[5].passed(f"after stop: ip route {' | '.join(after.split(chr(10))[:3])}; resolv.conf "
                            f"{seen['resolv_after'].strip()!r}", flow.note("mobile", "TUNs and routes gone"))
        else:
            steps[5].see(f"after stop: routes {after!r}, links {links!r}, resolv {seen.get('resolv_after')!r}")
        return steps


def test_full_tunnel_through_the_pop(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTNA_LAB_DIR", str(tmp_path / "run"))
    lines = []
    ok, steps, report = run(MobileScenario(), say=lines.append, color=False)
    print("\n".join(lines))
    assert ok, "\n".join(lines)
    assert [s.number for s in steps] == [str(i) for i in range(1, 7)]
