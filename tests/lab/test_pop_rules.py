"""The PoP's rules with its own DNS (issue 16): dig through the site tunnel, nft sets with timeouts, a block, SIGHUP.

Built on the ``backhaul`` scenario (netns/scenarios/backhaul.py): the same branch,
PoP and web hosts, with the PoP restarted on a pop.toml that adds ``rules`` and
``dns_upstream`` (an authoritative server for ``saas.example`` on the web host).
Every step is read from captures, the PoP's log, its flow lines and nft in its
namespace.
"""

import json
import os
import signal
import time
from pathlib import Path

from netns import capture, evidence, flow, procs
from netns.lab import Lab
from netns.report import Step
from netns.scenario import run
from netns.scenarios.backhaul import EGRESS, POP, USER, WEB, BackhaulScenario

POP_DNS = "100.127.255.254"   # the PoP's TUN address (PopConfig.tun_address)
BLOCKED = "203.0.113.81"
ZONE = f"$TTL 300\n@ IN SOA ns1 hostmaster 1 60 60 60 60\napp IN A {WEB}\nblocked IN A {BLOCKED}\n"
RULES = '''[[firewall_rule]]
name = "block blocked.saas"
action = "block"
source = ["site:branch1"]
destination = ["fqdn:blocked.saas.example"]

[[network_rule]]
name = "SaaS by egress"
source = ["site:branch1"]
destination = ["domain:saas.example"]
routing = "pop-egress"
'''
BAD_RULES = RULES + '\n[[network_rule]]\nname = "via nowhere"\nbackhaul_via = "paris"\n'


class PopRulesScenario(BackhaulScenario):
    name = "pop-rules"
    summary = "the PoP's network rules and firewall matching names from its own DNS answers"

    def topology(self):
        t = super().topology()
        t.hosts["web"].addr("eth0", f"{BLOCKED}/24")
        return t

    def start(self, lab: Lab) -> None:
        super().start(lab)
        zone = lab.write_conf("saas.zone", f"$ORIGIN saas.example.\n{ZONE}")
        dns = lab.start("web", procs.ztna_argv("authdns", "run", "--listen", WEB, "--zone", str(zone)), name="saas-dns")
        procs.wait_listening(dns, WEB, 53, "udp")
        # The PoP again, on the same pop.toml with the rules file and the sites' DNS added.
        self.rules = lab.write_conf("rules.toml", RULES)
        lab.stop("pop")
        text = (lab.conf_dir / "pop.toml").read_text().replace("[pop]\n", f"[pop]\nrules = \"{self.rules}\"\ndns_upstream = \"{WEB}\"\n", 1)
        pop_conf = lab.write_conf("pop-rules.toml", text)
        pop = lab.start("pop", procs.ztna_argv("pop", "run", "--config", str(pop_conf)), name="pop")
        procs.wait_listening(pop, POP, 443)

    def drive(self, lab: Lab) -> dict:
        seen: dict = {}
        lab.start("branch", procs.ztna_argv("site", "run", "--config", str(self.site_conf)), name="site")
        poplog = Path(lab.procs["pop"].log)
        procs.wait_until(lambda: "site branch1 up" in poplog.read_text(errors="replace"), timeout=15,
                         what="the branch site's tunnel to reach the PoP")
        procs.wait_listening(lab.procs["pop"], POP_DNS, 53, "udp")
        for name, extra in (("app.saas.example", []), ("blocked.saas.example", ["+tcp"])):
            r = lab.exec("user", ["dig", "+short", "+time=3", "+tries=2", *extra, f"@{POP_DNS}", name, "A"])
            seen[f"dig {name}"] = r.stdout.decode().split()

        def sets():
            r = lab.exec("pop", ["nft", "list", "table", "ip", "ztna_pop_rules"])
            return r.stdout.decode()
        try:
            procs.wait_until(lambda: WEB in sets() and BLOCKED in sets(), timeout=5, what="the rule sets to fill")
        except TimeoutError:
            pass
        seen["nft"] = sets()
        r = lab.exec("user", ["curl", "-sS", "--max-time", "10", f"http://{WEB}/"])
        seen["whoami"], seen["whoami_rc"] = r.stdout.decode(), r.returncode
        r = lab.exec("user", ["curl", "-sS", "--max-time", "3", f"http://{BLOCKED}/"])
        seen["blocked_rc"], seen["blocked_err"] = r.returncode, r.stderr.decode()
        # SIGHUP with a bad rules file: refused, the running rules stay in force.
        self.rules.write_text(BAD_RULES)
        os.kill(lab.procs["pop"].pid, signal.SIGHUP)
        try:
            procs.wait_until(lambda: "rules reload refused" in poplog.read_text(errors="replace"), timeout=5,
                             what="the PoP to refuse the bad rules file")
        except TimeoutError:
            pass
        seen["after_hup_at"] = time.time()
        r = lab.exec("user", ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", "--max-time", "10",
                              f"http://{WEB}/bytes/100000"])
        seen["after_hup_bytes"] = r.stdout.decode()
        procs.stop(lab.procs["site"])  # its flows end: the PoP writes their lines
        flows = lab.log_dir / "pop-flows.jsonl"
        try:
            procs.wait_until(lambda: flows.exists() and flows.read_text().count('"site":"branch1"') >= 3, timeout=10,
                             what="the flow lines")
        except TimeoutError:
            pass
        lab.stop("pop")
        r = lab.exec("pop", ["nft", "list", "table", "ip", "ztna_pop_rules"])
        seen["table_after_stop_rc"] = r.returncode
        return seen

    def verify(self, lab: Lab, seen: dict) -> list[Step]:
        user = capture.read(lab.pcap("user", "eth0"))
        up = capture.read(lab.pcap("branch", "eth1"))
        popl = capture.read(lab.pcap("pop", "eth0"))
        flows = evidence.json_lines(lab.log_dir / "pop-flows.jsonl") if (lab.log_dir / "pop-flows.jsonl").exists() else []
        poplog = Path(lab.log_dir / "pop.log").read_text(errors="replace")
        steps = [Step(str(i), text) for i, text in enumerate([
            f"the branch user's dig to the PoP's DNS {POP_DNS} is answered through the site tunnel; the PoP asks "
            f"{WEB}:53 from {POP}",
            "nft in the PoP's namespace holds each answered address in its rule's set, with a timeout",
            f"a flow to {WEB} names the domain rule and leaves from {EGRESS}; a flow to {BLOCKED} is dropped by the "
            "firewall rule, and its line names both rules",
            "SIGHUP with a bad rules file: refused with path:line, and the running rules stay in force",
            "the PoP's stop removes table ip ztna_pop_rules",
        ], start=1)]
        # 1. DNS through the tunnel
        answers = [m for m in evidence.dns(user) if m.response and m.src == POP_DNS and m.dst == USER]
        asked = [m for m in evidence.dns(popl) if not m.response and m.src == POP and m.dst == WEB]
        clear = [m for m in evidence.dns(up)]
        if seen.get("dig app.saas.example") == [WEB] and seen.get("dig blocked.saas.example") == [BLOCKED] \
                and answers and asked and not clear:
            steps[0].passed(f"user:eth0 {len(answers)} answer(s) from {POP_DNS} ({answers[0].name} -> {answers[0].a}); "
                            f"pop:eth0 {len(asked)} query(ies) {POP} -> {WEB}:53; branch:eth1 0 DNS packets in clear",
                            answers[0], asked[0])
        else:
            steps[0].see(f"dig said {seen.get('dig app.saas.example')} / {seen.get('dig blocked.saas.example')}; "
                         f"{len(answers)} answers at the user, {len(asked)} upstream queries, {len(clear)} in clear")
        # 2. the nft sets
        nft = seen.get("nft", "")
        net_set = _set_body(nft, "net0")
        fw_set = _set_body(nft, "fw0")
        if f"{WEB} timeout" in net_set and "expires" in net_set and f"{BLOCKED} timeout" in fw_set \
                and "size 200000" in nft:
            steps[1].passed("pop: nft list table ip ztna_pop_rules: net0 (SaaS by egress) "
                            + net_set.split("elements = ")[-1].split("}")[0].strip() + "}; fw0 (block blocked.saas) "
                            + fw_set.split("elements = ")[-1].split("}")[0].strip() + "}",
                            flow.note("pop", f"nft set net0 holds {WEB} with a timeout"))
        else:
            steps[1].see(f"nft printed {nft[:600]!r}")
        # 3. the flows
        ok = [f for f in flows if f.get("dst") == f"{WEB}:80"]
        blocked = [f for f in flows if f.get("dst") == f"{BLOCKED}:80"]
        out_syns = [s for s in evidence.syns(popl, dst=WEB, dport=80)]
        to_blocked = evidence.touching(popl, f"{BLOCKED}/32")
        if ok and all(f["network_rule"] == "SaaS by egress" and f["exit"] == "pop-egress" for f in ok) \
                and out_syns and all(s.src == EGRESS for s in out_syns) and f"to client {EGRESS}" in seen.get("whoami", "") \
                and blocked and all(f["exit"] == "drop" and f["firewall_rule"] == "block blocked.saas"
                                    and f["network_rule"] == "SaaS by egress" for f in blocked) \
                and not to_blocked and seen.get("blocked_rc") != 0:
            steps[2].passed(f"flow line {json.dumps(ok[0], separators=(',', ':'))}; pop:eth0 SYN {EGRESS} -> {WEB}:80; "
                            f"flow line {json.dumps(blocked[0], separators=(',', ':'))}; pop:eth0 0 packets to "
                            f"{BLOCKED}; curl rc {seen['blocked_rc']}", out_syns[0],
                            flow.note("pop", f"flow {blocked[0]['src']} -> {blocked[0]['dst']} dropped by "
                                             f"'{blocked[0]['firewall_rule']}'"))
        else:
            steps[2].see(f"flows to {WEB}: {ok[:2]}; to {BLOCKED}: {blocked[:2]}; SYN sources "
                         f"{sorted({s.src for s in out_syns})}; {len(to_blocked)} packets to {BLOCKED}; "
                         f"curl rc {seen.get('blocked_rc')} {seen.get('blocked_err', '')[:100]}")
        # 4. SIGHUP
        refused = [ln for ln in poplog.splitlines() if "rules reload refused" in ln]
        later = [f for f in ok if f.get("bytes_down", 0) >= 100_000]
        if refused and f"{self.rules}:15:" in refused[0] and "the running rules stay" in refused[0] \
                and seen.get("after_hup_bytes") == "100000" and later:
            steps[3].passed(f"pop log: {refused[0].split(' ERROR ')[-1][:240]}; the download after it: "
                            f"network_rule {later[0]['network_rule']!r}, {later[0]['bytes_down']} bytes down",
                            flow.note("pop", "rules reload refused; the running rules stay"))
        else:
            steps[3].see(f"refusal lines {refused[:1]}; download after {seen.get('after_hup_bytes')!r}; "
                         f"big flows {later[:1]}")
        # 5. cleanup
        if seen.get("table_after_stop_rc") not in (None, 0):
            steps[4].passed(f"pop: nft list table ip ztna_pop_rules after the PoP stopped: rc "
                            f"{seen['table_after_stop_rc']} (no such table)", flow.note("pop", "table removed"))
        else:
            steps[4].see(f"nft list table after stop: rc {seen.get('table_after_stop_rc')}")
        return steps


def _set_body(nft: str, name: str) -> str:
    i = nft.find(f"set {name} {{")
    if i < 0:
        return ""
    j = nft.find("\n\t}", i)
    return nft[i:j if j > 0 else None]


def test_rules_with_the_pops_dns(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTNA_LAB_DIR", str(tmp_path / "run"))
    lines = []
    ok, steps, report = run(PopRulesScenario(), say=lines.append, color=False)
    print("\n".join(lines))  # the steps and their evidence, for pytest -s
    assert ok, "\n".join(lines)
    assert [s.number for s in steps] == ["1", "2", "3", "4", "5"]
    assert all(s.evidence for s in steps)
