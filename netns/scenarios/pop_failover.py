"""Scenario ``pop-failover``: two gateways publish one resource through the PoP; one is killed with -9.

    client (alice), client3 (carol) -- inet -- pop 192.0.2.10
                                        |
                                      [wan] -- gwa 203.0.113.20 --+-- [lan] -- privdns, app
                                             -- gwb 203.0.113.21 --+   (gwa 192.168.1.1, gwb 192.168.1.2)

Both gateways run in connector mode (identities gw1 and gw2). The PoP hands
new leases to the live connectors in turn, so the two users' flows reach the app
from the two gateways' LAN addresses. Each user has a slow upload running when
gwa is killed with SIGKILL: the PoP sees gwa's tunnel end and ends only the
leases that went through it (LEASE_RESULT {allowed: false, retry: true} to
their agent); the agents' tunnels stay up. The upload through gwa ends with a
reset (its next packets reach the app through gwb, which does not know them),
the one through gwb completes, and every new flow goes to gwb.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from .. import capture, evidence, flow, procs
from ..lab import Lab
from ..report import Step
from ..topology import Topology
from .pop_agent import (start_servers, APP, CONNECTOR_NAME, POP, PRIV_DNS, APP_IP, PUBLIC_DNS, PopAgentScenario, TUNNEL_NAME)

# The PoP's line for a connector that published the app ("lease X: no connector publishes it" is not one:
# an agent that reconnected first logs it, and a bare "publishes" count took it for the connector).
PUBLISHED = f": publishes {APP} "
# An upload of about 10 s running across the kill: its client keeps sending, so its next packets after the
# kill meet the app through the survivor (a download's client may say nothing until curl gives up).
LONG_BYTES, LONG_RATE = 4_000_000, "400k"
GWS = {"gwa": ("203.0.113.20", "192.168.1.1", "gw1"), "gwb": ("203.0.113.21", "192.168.1.2", "gw2")}


class PopFailoverScenario(PopAgentScenario):
    name = "pop-failover"
    summary = "cloud PoP: two gateways publish one resource; new flows spread; kill -9 one, new flows go to the survivor"
    clients = [("client", "198.51.100.10", "alice"), ("client3", "198.51.100.12", "carol")]
    aliases = {"100.64.0.1/32": "client", "100.64.0.2/32": "client", "100.64.0.0/10": "app"}
    tunnels = [flow.Tunnel("agent tunnel", ("client", "pop"), ["client:ztna0"], 443)]

    def topology(self) -> Topology:
        t = Topology(self.name)
        for host, ip, _ in self.clients:
            t.host(host).addr("eth0", f"{ip}/24").route("default", "198.51.100.1")
        inet = t.host("inet", forward=True)
        inet.addr("eth0", "198.51.100.1/24").addr("eth0", f"{PUBLIC_DNS}/24")
        inet.addr("eth1", "203.0.113.1/24").addr("eth2", "192.0.2.1/24")
        t.host("pop").addr("eth0", f"{POP}/24").route("default", "192.0.2.1")
        for gw, (up, lan, _) in GWS.items():
            t.host(gw, forward=True).addr("eth0", f"{up}/24").addr("eth1", f"{lan}/24").route("default", "203.0.113.1")
        t.host("privdns").addr("eth0", f"{PRIV_DNS}/24")
        t.host("app").addr("eth0", f"{APP_IP}/24")
        t.switch("pub", *[(h, "eth0") for h, _, _ in self.clients], ("inet", "eth0"))
        t.switch("wan", ("inet", "eth1"), *[(gw, "eth0") for gw in GWS])
        t.link("inet", "eth2", "pop", "eth0")
        t.switch("lan", *[(gw, "eth1") for gw in GWS], ("privdns", "eth0"), ("app", "eth0"))
        return t

    @property
    def capture_extra(self):
        return []

    def start(self, lab: Lab) -> None:
        lab.ca()
        lab.issue("pop", "server", dns=[TUNNEL_NAME, CONNECTOR_NAME])
        lab.issue("gateway", "gateway", dns=["gateway.mycompany.net"])
        for _, _, ident in GWS.values():
            lab.issue(ident, "client")
        lab.issue(APP, "server", dns=[APP])
        for _, _, ident in self.clients:
            lab.issue(ident, "agent")
        started = start_servers(lab)
        pki = lab.pki_dir
        pop_conf = lab.write_conf("pop.toml", (
            f"[pop]\nlisten = \"{POP}\"\ncert = \"{pki}/pop.pem\"\nkey = \"{pki}/pop.key\"\nca = \"{pki}/ca.pem\"\n"
            f"tunnel_name = \"{TUNNEL_NAME}\"\nconnector_name = \"{CONNECTOR_NAME}\"\n"
            f"flow_log = \"{lab.log_dir}/pop-flows.jsonl\"\n\n"
            f"[policy]\nalice = [\"{APP}\"]\ncarol = [\"{APP}\"]\n\n[connectors]\ngw1 = [\"{APP}\"]\ngw2 = [\"{APP}\"]\n"))
        argv = procs.ztna_argv("pop", "run", "--config", str(pop_conf))
        (lab.root / "pop-argv.json").write_text(json.dumps(argv))
        pop = lab.start("pop", argv, name="pop")
        procs.wait_listening(pop, POP, 443)
        poplog = Path(pop.log)
        for gw, (up, _, ident) in GWS.items():
            conf = lab.write_conf(f"{gw}.toml", (
                f"[gateway]\nlisten = \"{up}\"\ncert = \"{pki}/gateway.pem\"\nkey = \"{pki}/gateway.key\"\n"
                f"ca = \"{pki}/ca.pem\"\nprivate_dns = [\"{PRIV_DNS}\"]\n\n"
                f"[pop]\naddress = \"{POP}\"\nname = \"{CONNECTOR_NAME}\"\nresources = [\"{APP}\"]\n"
                f"cert = \"{pki}/{ident}.pem\"\nkey = \"{pki}/{ident}.key\"\n\n"
                f"[policy]\nalice = [\"{APP}\"]\ncarol = [\"{APP}\"]\n"))
            lab.start(gw, procs.ztna_argv("gateway", "run", "--config", str(conf)), name=gw)
            procs.wait_until(lambda ident=ident, up=up: f"{ident} from {up}" in poplog.read_text(errors="replace")
                             and PUBLISHED in poplog.read_text(errors="replace"),
                             timeout=15, what=f"{gw}'s connector tunnel to reach the PoP")
        for p, ip, port, proto in started:
            procs.wait_listening(p, ip, port, proto)
        for host, _, ident in self.clients:
            self.start_agent(lab, host, ident)

    def drive(self, lab: Lab) -> dict:
        ca = str(lab.pki_dir / "ca.pem")
        seen: dict = {"before": {}, "after": {}}

        def curl(host: str) -> str:
            r = lab.exec(host, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "15",
                                "--cacert", ca, f"https://{APP}/"])
            code = r.stdout.decode()
            return code if code not in ("", "000") else f"{code or '-'} exit {r.returncode}: {r.stderr.decode().strip()[:120]}"

        def log(name: str) -> str:
            return Path(lab.procs[name].log).read_text(errors="replace")

        def tunnels() -> dict:
            """How often each agent logged its tunnel up, and how many agent connections the PoP accepted."""
            return {**{host: log(f"agent-{host}").count("tunnel up") for host, _, _ in self.clients},
                    "pop": len(re.findall(r"agent \d+ from", log("pop")))}

        for host, _, _ in self.clients:
            seen["before"][host] = curl(host)
        body = lab.root / "upload.bin"
        body.write_bytes(b"u" * LONG_BYTES)
        longs = {host: lab.start(host, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}",
                                        "--limit-rate", LONG_RATE, "--max-time", "30", "--cacert", ca,
                                        "--data-binary", f"@{body}", f"https://{APP}/upload"], name=f"long-{host}")
                 for host, _, _ in self.clients}
        time.sleep(2.0)
        seen["tunnels_before_kill"] = tunnels()
        seen["killed_at"] = time.time()
        lab.stop("gwa", sig=9)
        for host, _, _ in self.clients:
            seen["after"][host] = curl(host)
        seen["after_again"] = {host: curl(host) for host, _, _ in self.clients}
        seen["long"] = {}
        for host, p in longs.items():
            try:
                rc = p.popen.wait(timeout=40)
            except Exception:  # still running: stopped, and the step says so
                lab.stop(f"long-{host}")
                rc = None
            seen["long"][host] = {"rc": rc, "out": log(f"long-{host}").strip()[-200:]}
        seen["tunnels_after_kill"] = tunnels()
        # The PoP restarts: the surviving connector dials again (backoff with jitter), the agents on their next packet.
        pop = lab.procs["pop"]
        argv = json.loads(Path(lab.root / "pop-argv.json").read_text())
        log = Path(pop.log)  # the restarted PoP appends to the same file
        before = log.read_text(errors="replace").count(PUBLISHED)
        lab.stop("pop")
        seen["pop_restarted_at"] = time.time()
        pop = lab.start("pop", argv, name="pop")
        procs.wait_listening(pop, POP, 443)
        try:
            procs.wait_until(lambda: log.read_text(errors="replace").count(PUBLISHED) > before, timeout=40,
                             what="the connector back at the restarted PoP")
            seen["connector_back_s"] = time.time() - seen["pop_restarted_at"]
        except TimeoutError:
            seen["connector_back_s"] = None
        seen["after_restart"] = {host: curl(host) for host, _, _ in self.clients}
        seen["all_back_s"] = time.time() - seen["pop_restarted_at"]
        return seen

    def verify(self, lab: Lab, seen: dict) -> list[Step]:
        app = capture.read(lab.pcap("app", "eth0"))
        poplog = Path(lab.procs["pop"].log).read_text(errors="replace").splitlines()
        killed = seen["killed_at"]
        steps = [Step(str(i), text) for i, text in enumerate([
            f"two gateways (gw1, gw2) publish {APP}: two connector tunnels at the PoP",
            "the PoP spreads new flows: the app sees the two users from the two gateways' LAN addresses",
            "gwa is killed with -9: the PoP sees its tunnel end (and says how long after the kill) and ends only the "
            "leases through it: the upload through gwa ends with a reset, no agent's tunnel is rebuilt",
            "new flows go to the survivor: every curl after the kill gets 200, all from gwb's LAN address, and the "
            "upload through gwb completes",
            "the PoP restarts: the connector is back within 40 s (its backoff's cap is 30 s) and both users' curls get 200",
        ], start=1)]
        pubs = [l for l in poplog if PUBLISHED in l]
        if {"gw1", "gw2"} <= {m.group(1) for l in pubs if (m := re.search(r"connector \d+ (\S+) from", l))}:
            steps[0].passed("PoP: " + " | ".join(l.split(" INFO ", 1)[-1][:80] for l in pubs[:2]),
                            *[flow.note("pop", l.split(" INFO ", 1)[-1][:60], flow.log_time(l)) for l in pubs[:2]])
        syns = evidence.syns(app, dst=APP_IP, dport=443)
        pre = {s.src for s in syns if s.time < killed}
        post = {s.src for s in syns if s.time > killed}
        if all(v == "200" for v in seen["before"].values()) and pre == {GWS["gwa"][1], GWS["gwb"][1]}:
            steps[1].passed(f"curl before the kill: {seen['before']}; app:eth0 SYNs from {sorted(pre)}",
                            *[next(s for s in syns if s.src == a and s.time < killed) for a in sorted(pre)], label=None)
        else:
            steps[1].see(f"curl {seen['before']}; SYNs before the kill from {sorted(pre)}")
        gone = [l for l in poplog if "connector" in l and "gw1" in l and "closed" in l]
        ended = [l for l in poplog if "through connector" in l and "gw1" in l and "its tunnel stays up" in l]
        # whose upload went through gw1: the PoP's flow line for the lease that ended with gw1
        lines = evidence.json_lines(lab.log_dir / "pop-flows.jsonl")
        hosts = {ident: host for host, _, ident in self.clients}
        via_gw1 = {hosts.get(l.get("identity")) for l in lines if l.get("connector") == "gw1" and "gone" in str(l.get("end"))}
        long = seen.get("long", {})
        reset = {h for h, r in long.items() if r["rc"] in (55, 56) or "reset" in r["out"].lower()}
        done = {h for h, r in long.items() if r["rc"] == 0 and r["out"] == f"200 {LONG_BYTES}"}
        rsts = [s for s in evidence.tcp(app) if s.time > killed and s.src == APP_IP and "R" in s.flags]
        same = seen.get("tunnels_before_kill") == seen.get("tunnels_after_kill")
        if gone and ended and via_gw1 and reset == via_gw1 and same and rsts:
            t = flow.log_time(gone[0])
            dt = f"{(t - killed) * 1000:.0f} ms after the kill" if t else "time unknown"
            steps[2].passed(f"PoP ({dt}): {gone[0].split(' INFO ', 1)[-1][:110]} | {ended[0].split(' INFO ', 1)[-1][:110]}"
                            f" | upload via gw1 ({', '.join(sorted(reset))}): {[long[h] for h in sorted(reset)]}"
                            f" | tunnels up (agents' 'tunnel up' lines, PoP's agent connections) "
                            f"{seen['tunnels_after_kill']}, as before the kill",
                            flow.note("pop", "gw1's connector tunnel ended", t), rsts[0])
        else:
            steps[2].see(f"PoP: {gone[:1]} {ended[:1]}; via gw1 {via_gw1}; uploads {long}; tunnels "
                         f"{seen.get('tunnels_before_kill')} -> {seen.get('tunnels_after_kill')}; app RSTs {len(rsts)}")
        if all(v == "200" for v in list(seen["after"].values()) + list(seen["after_again"].values())) \
                and post == {GWS["gwb"][1]} and done and done | reset == set(long):
            steps[3].passed(f"curl after the kill: {seen['after']}, again {seen['after_again']}; app:eth0 SYNs after "
                            f"the kill only from {GWS['gwb'][1]}; upload via gw2 ({', '.join(sorted(done))}) "
                            f"complete: {[long[h]['out'] for h in sorted(done)]}", next(s for s in syns if s.time > killed))
        else:
            steps[3].see(f"curl after {seen['after']}, again {seen['after_again']}; SYNs after from {sorted(post)}; "
                         f"uploads {long}")
        back = seen.get("connector_back_s")
        if back is not None and all(v == "200" for v in seen.get("after_restart", {}).values()):
            steps[4].passed(f"connector back {back:.1f}s after the restart; curl {seen['after_restart']} "
                            f"{seen['all_back_s']:.1f}s after it",
                            flow.note("pop", f"connector back after {back:.1f}s"))
        else:
            steps[4].see(f"connector back: {back}; curl after the restart {seen.get('after_restart')}")
        return steps


SCENARIOS = [PopFailoverScenario]
