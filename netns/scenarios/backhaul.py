"""Scenario ``backhaul`` (SPEC §7), its first step: a branch site's internet traffic through the PoP's egress.

    user 10.10.0.10 --[branch LAN]-- branch 10.10.0.1 / 198.51.100.2 (ztna site run)
                                        |
                              inet (router) 198.51.100.1 / 192.0.2.1 / 203.0.113.1
                                        |                               |
                 pop 192.0.2.10, egress 150.195.219.10 (ztna pop run)   web 203.0.113.80 (whoami)

The branch router's TUN takes the internet half of its routing table; its
packets reach the PoP inside one mTLS site tunnel, the PoP writes them to its
own TUN, and nftables there sends them out with the PoP's egress address.
``whoami`` (the lab web server's page) names the source it saw.  Network rules,
the HQ gateway site, WAN1/WAN2 and the firewall (issue 16's later steps) are not
built yet.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import capture, evidence, flow, procs
from ..lab import Lab
from ..report import Step
from ..scenario import Scenario
from ..topology import Topology
from .agent import web_argv

POP, EGRESS, WEB = "192.0.2.10", "150.195.219.10", "203.0.113.80"
BRANCH_UP, LAN, USER = "198.51.100.2", "10.10.0.0/24", "10.10.0.10"
SITE_NAME = "site.pop.example"
TUNNEL_NAME, CONNECTOR_NAME = "tunnel.pop.example", "connector.pop.example"


def pop_section(lab: Lab, extra: str = "") -> str:
    """pop.toml's ``[pop]`` for the backhaul labs: the PoP's names and certificate, its egress, the flow log."""
    pki = lab.pki_dir
    return (f"[pop]\nlisten = \"{POP}\"\ncert = \"{pki}/pop.pem\"\nkey = \"{pki}/pop.key\"\nca = \"{pki}/ca.pem\"\n"
            f"tunnel_name = \"{TUNNEL_NAME}\"\nconnector_name = \"{CONNECTOR_NAME}\"\nsite_name = \"{SITE_NAME}\"\n"
            f"egress_address = \"{EGRESS}\"\negress_interface = \"eth0\"\n{extra}"
            f"flow_log = \"{lab.log_dir}/pop-flows.jsonl\"\n")


class BackhaulScenario(Scenario):
    name = "backhaul"
    summary = "backhauling (SPEC §7), step 1: a branch site's internet traffic leaves from the PoP's egress"
    aliases = {"100.127.0.0/16": "branch"}
    tunnels = [flow.Tunnel("site tunnel", ("branch", "pop"), [], 443)]

    def topology(self) -> Topology:
        t = Topology(self.name)
        t.host("user").addr("eth0", f"{USER}/24").route("default", "10.10.0.1")
        t.host("branch", forward=True).addr("eth0", "10.10.0.1/24").addr("eth1", f"{BRANCH_UP}/24") \
            .route("default", "198.51.100.1")
        inet = t.host("inet", forward=True)
        inet.addr("eth0", "198.51.100.1/24").addr("eth1", "192.0.2.1/24").addr("eth2", "203.0.113.1/24")
        inet.route(f"{EGRESS}/32", POP)
        t.host("pop", forward=True).addr("eth0", f"{POP}/24").addr("eth0", f"{EGRESS}/32") \
            .route("default", "192.0.2.1")
        t.host("web").addr("eth0", f"{WEB}/24").route("default", "203.0.113.1")
        t.link("user", "eth0", "branch", "eth0")
        t.link("branch", "eth1", "inet", "eth0")
        t.link("inet", "eth1", "pop", "eth0")
        t.link("inet", "eth2", "web", "eth0")
        return t

    def start(self, lab: Lab) -> None:
        lab.ca()
        lab.issue("pop", "server", dns=[TUNNEL_NAME, CONNECTOR_NAME, SITE_NAME])
        lab.issue("branch1", "client")
        pki = lab.pki_dir
        web = lab.start("web", web_argv(WEB, http_port=80), name="whoami")
        pop_conf = lab.write_conf("pop.toml", pop_section(lab) + f"\n[sites]\nbranch1 = {{ lan = [\"{LAN}\"] }}\n")
        pop = lab.start("pop", procs.ztna_argv("pop", "run", "--config", str(pop_conf)), name="pop")
        procs.wait_listening(pop, POP, 443)
        procs.wait_listening(web, WEB, 80)
        self.site_conf = lab.write_conf("site.toml", (
            f"[site]\nname = \"branch1\"\npop = \"{POP}\"\npop_name = \"{SITE_NAME}\"\ncert = \"{pki}/branch1.pem\"\n"
            f"key = \"{pki}/branch1.key\"\nca = \"{pki}/ca.pem\"\nlan = [\"{LAN}\"]\n"))

    def drive(self, lab: Lab) -> dict:
        seen: dict = {}
        # The site starts while every link is captured, so its tunnel's dial-out is on record.
        lab.start("branch", procs.ztna_argv("site", "run", "--config", str(self.site_conf)), name="site")
        poplog = Path(lab.procs["pop"].log)
        procs.wait_until(lambda: "site branch1 up" in poplog.read_text(errors="replace"), timeout=15,
                         what="the branch site's tunnel to reach the PoP")
        r = lab.exec("user", ["curl", "-sS", "--max-time", "10", f"http://{WEB}/"])
        seen["whoami"], seen["whoami_rc"], seen["whoami_err"] = r.stdout.decode(), r.returncode, r.stderr.decode()
        r = lab.exec("user", ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", "--max-time", "20",
                              f"http://{WEB}/bytes/5000000"])
        seen["bytes"], seen["bytes_rc"] = r.stdout.decode(), r.returncode
        # The site's end closes its flows, so the PoP writes their lines.  A stopped site router takes
        # its routes with it: what the LAN sends after that leaves by the router's own default route
        # (docs/backhaul.md), so the uplink is checked up to this moment.
        seen["site_stopped_at"] = time.time()
        procs.stop(lab.procs["site"])
        flows = lab.log_dir / "pop-flows.jsonl"
        try:
            procs.wait_until(lambda: flows.exists() and '"site":"branch1"' in flows.read_text(), timeout=10,
                             what="the PoP's flow lines for branch1")
        except TimeoutError:
            pass
        return seen

    def verify(self, lab: Lab, seen: dict) -> list[Step]:
        up = capture.read(lab.pcap("branch", "eth1"))
        popl = capture.read(lab.pcap("pop", "eth0"))
        web = capture.read(lab.pcap("web", "eth0"))
        flows_path = lab.log_dir / "pop-flows.jsonl"
        flows = [json.loads(x) for x in flows_path.read_text().splitlines()] if flows_path.exists() else []
        steps = [Step(str(i), text) for i, text in enumerate([
            f"the branch router's uplink carries only TLS to the PoP {POP}:443 (SNI {SITE_NAME}), nothing of its LAN",
            f"the PoP's link shows the site tunnel in and the user's flow leaving from the egress address {EGRESS}",
            f"whoami on {WEB} sees {EGRESS}, not the branch's addresses; a 5 MB download completes",
            "the PoP writes one JSON line per flow naming the site, the exit and the bytes",
        ], start=1)]
        # 1. the branch uplink
        segs = evidence.tcp(up)
        syn = evidence.syns(up, dst=POP, dport=443)
        port = syn[0].sport if syn else None
        ch = evidence.tls(evidence.stream(segs, BRANCH_UP, POP, sport=port, dport=443)) if syn else {"sni": None}
        until = seen.get("site_stopped_at", float("inf"))
        lan_pkts = [p for p in evidence.touching(up, LAN) if float(p.time) < until]
        to_web = [s for s in segs if WEB in (s.src, s.dst) and s.time < until]
        if syn and ch.get("sni") == SITE_NAME and not lan_pkts and not to_web:
            steps[0].passed(f"branch:eth1  SYN {BRANCH_UP}:{port} -> {POP}:443, ClientHello SNI {ch['sni']}; while the "
                            f"site ran, 0 packets touch {LAN} or {WEB}", syn[0],
                            flow.first_data(segs, BRANCH_UP, POP, sport=port, dport=443), label=f"ClientHello SNI {SITE_NAME}")
        else:
            steps[0].see(f"SYN to PoP {bool(syn)}, SNI {ch.get('sni')}, {len(lan_pkts)} LAN packets, {len(to_web)} to {WEB}")
        # 2. the PoP's link: the tunnel in, the flow out as the egress address
        psegs = evidence.tcp(popl)
        tunnel_in = [s for s in evidence.syns(popl, dst=POP, dport=443) if s.src == BRANCH_UP]
        out = [s for s in psegs if s.flags == "S" and s.dst == WEB and s.dport == 80]
        if tunnel_in and out and all(s.src == EGRESS for s in out) and not evidence.touching(popl, LAN):
            steps[1].passed(f"pop:eth0  site tunnel {BRANCH_UP}:{tunnel_in[0].sport} -> {POP}:443; {len(out)} SYN(s) "
                            f"{EGRESS}:{out[0].sport} -> {WEB}:80; 0 packets of {LAN}", tunnel_in[0], out[0], label=None)
        else:
            steps[1].see(f"tunnel SYNs {len(tunnel_in)}, SYNs out {[(s.src, s.dport) for s in out]}")
        # 3. whoami
        wsyn = evidence.syns(web, dst=WEB, dport=80)
        body = seen.get("whoami", "")
        if f"to client {EGRESS}" in body and wsyn and all(s.src == EGRESS for s in wsyn) \
                and seen.get("bytes") == "5000000" and seen.get("bytes_rc") == 0:
            steps[2].passed(f"user: curl http://{WEB}/ -> {body.strip()[:120]}; web:eth0 {len(wsyn)} SYN(s), all from "
                            f"{EGRESS}; curl /bytes/5000000 got {seen['bytes']} bytes", wsyn[0])
        else:
            steps[2].see(f"whoami said {body.strip()[:160]!r} (rc {seen.get('whoami_rc')}, "
                         f"{seen.get('whoami_err', '').strip()[:120]}); SYN sources {sorted({s.src for s in wsyn})}; "
                         f"download {seen.get('bytes')!r} rc {seen.get('bytes_rc')}")
        # 4. flow lines
        mine = [f for f in flows if f.get("site") == "branch1" and f.get("dst") == f"{WEB}:80"]
        big = [f for f in mine if f.get("bytes_down", 0) >= 5_000_000]
        if len(mine) >= 2 and big and all(f.get("exit") == "pop-egress" for f in mine):
            steps[3].passed(f"{len(mine)} flow lines for branch1 -> {WEB}:80; the download's: "
                            + json.dumps(big[0], separators=(",", ":")),
                            flow.note("pop", f"flow line: branch1 {big[0]['src']} -> {big[0]['dst']} via pop-egress, "
                                             f"{big[0]['bytes_down']} bytes down"))
        else:
            steps[3].see(f"PoP flow lines: {flows[:4]}")
        return steps


SCENARIOS = [BackhaulScenario]
