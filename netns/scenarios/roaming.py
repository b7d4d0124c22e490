"""Roaming DNS client scenarios (SPEC.md §6, seed 003).

``roaming``: takeover, split DNS (internal to the LAN server, the rest to the
cloud resolver with the device id), blocking by the cloud resolver, restore
on stop and after ``kill -9``.
``roaming-vpn-conflict``: a VPN stand-in that keeps rewriting resolv.conf; the
client backs off, says why, and comes back when the VPN's interface goes.
``roaming-metric``: the internal DNS server answers only through the VPN, whose
route metric is worse; internal queries fail until ``egress = "learned"``.

Every claim is checked in the captures: which interface each query left by,
which server it went to, and what came back.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from .. import capture, evidence, flow, procs
from .. import dig as lab_dig
from ..lab import Lab
from ..report import Step
from ..scenario import Scenario
from ..topology import Topology

CORP_ZONE = """$ORIGIN corp.example.
@ IN SOA ns hostmaster 1 60 60 60 60
intranet IN A 192.168.1.20
ns IN A 192.168.1.53
"""
GOOD_ZONE = """$ORIGIN good.example.
@ IN SOA ns hostmaster 1 60 60 60 60
www IN A 198.51.100.80
"""
BAD_ZONE = """$ORIGIN bad.example.
@ IN SOA ns hostmaster 1 60 60 60 60
malware IN A 198.51.100.66
"""
INTRANET = "intranet.corp.example"
GOOD = "www.good.example"
BAD = "malware.bad.example"
CLOUD = ["208.67.222.222", "208.67.220.220"]
DEVICE_ID = "laptop-1"
LAN_DNS = "192.168.1.53"


# ---- reading captures ---------------------------------------------------------
def dns_packets(path: Path) -> list[evidence.DnsMsg]:
    """Every DNS message in a capture (netns.evidence.dns)."""
    return evidence.dns(capture.read(path))


def between(pkts: list[evidence.DnsMsg], t0: float, t1: float) -> list[evidence.DnsMsg]:
    return [p for p in pkts if t0 <= p.time <= t1]


def describe(p: evidence.DnsMsg, where: str) -> str:
    kind = "answer" if p.response else "query"
    extra = f" -> {', '.join(p.a)}" if p.a else (f" rcode {p.rcode}" if p.response else "")
    dev = ""
    for code, data in p.opts:
        if code == 65001:
            dev = f" [EDNS0 device-id {data.decode(errors='replace')}]"
    return f"{where}: {kind} {p.src} -> {p.dst} {p.name}{extra}{dev}"


# ---- driving the client -----------------------------------------------------------
def dig(lab: Lab, host: str, name: str, *extra: str) -> tuple[list[str], str]:
    """Resolve ``name`` on ``host`` with dig through the host's own resolv.conf; (addresses, status)."""
    d = lab_dig.ask(lab, host, "+nocookie", *extra, name, "A", timeout=15)
    return lab_dig.addresses(d), d["status"] or "no answer"


def roaming_conf(lab: Lab, name: str, **over) -> Path:
    """Write a roaming.toml for the laptop; ``over`` replaces settings (lists/strings/bools/numbers)."""
    settings = {
        "resolv_conf": str(lab.resolv_conf_path("laptop")),
        "state_dir": str(lab.conf_dir / "roaming-state"),
        "listen": "127.0.0.1",
        "cloud": CLOUD,
        "device_id": DEVICE_ID,
        "internal_domains": ["corp.example"],
        "upstream_timeout": 1.0,
        "poll_interval": 0.2,
    }
    settings.update(over)
    conflict = settings.pop("conflict", {"threshold": 3, "window": 10})
    metrics = settings.pop("metrics", None)
    lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    lines += ["", "[conflict]"] + [f"{k} = {json.dumps(v)}" for k, v in conflict.items()]
    if metrics:
        lines += ["", "[metrics]"] + [f"{k} = {json.dumps(v)}" for k, v in metrics.items()]
    return lab.write_conf(name, "\n".join(lines) + "\n")


def start_client(lab: Lab, conf: Path, *, name: str = "roaming", wait_for: str | None = "protected") -> procs.Proc:
    p = lab.start("laptop", procs.ztna_argv("roaming", "run", "--config", str(conf), "-v"), name=name)
    if wait_for:
        wait_status(lab, conf, wait_for, proc=p)
    return p


def status(lab: Lab, conf: Path) -> dict:
    r = lab.exec("laptop", procs.ztna_argv("roaming", "status", "--json", "--config", str(conf)))
    try:
        return json.loads(r.stdout.decode())
    except ValueError:
        return {"state": "?", "raw": r.stdout.decode() + r.stderr.decode()}


def wait_status(lab: Lab, conf: Path, state: str, *, reason: str | None = None, proc: procs.Proc | None = None,
                timeout: float = 15.0) -> dict:
    """Poll ``ztna roaming status --json`` until it says ``state`` (and ``reason``, if given)."""
    seen: dict = {}

    def ready() -> bool:
        nonlocal seen
        if proc is not None and not proc.alive():
            raise RuntimeError(f"roaming client exited; its log ends:\n{Path(proc.log).read_text()[-2000:]}")
        seen = status(lab, conf)
        return seen.get("state") == state and (reason is None or seen.get("reason") == reason)

    try:
        procs.wait_until(ready, timeout=timeout, interval=0.2, what=f"roaming status {state!r}")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; last status: {json.dumps(seen)[:600]}") from None
    return seen


# ---- the cloud resolver ------------------------------------------------------------
def start_cloud(lab: Lab, zones: dict[str, Path]) -> str:
    """Start the project's DNS security resolver on 208.67.222.222/208.67.220.220 (see roaming_cloud)."""
    from . import roaming_cloud

    return roaming_cloud.start(lab, zones)


def lan_topology(name: str) -> Topology:
    """An office LAN: laptop and the corp DNS server on a switch, a router to the cloud resolver."""
    t = Topology(name)
    t.host("laptop").addr("eth0", "192.168.1.10/24").route("default", "192.168.1.1")
    t.host("corpdns").addr("eth0", f"{LAN_DNS}/24").route("default", "192.168.1.1")
    r = t.host("router", forward=True).addr("eth0", "192.168.1.1/24")
    r.addr("eth1", "208.67.222.1/24").addr("eth1", "208.67.220.1/24").addr("eth2", "198.51.100.1/24")
    t.host("cloud").addr("eth0", "208.67.222.222/24").addr("eth0", "208.67.220.220/24").route("default", "208.67.222.1")
    t.host("pubdns").addr("eth0", "198.51.100.53/24").route("default", "198.51.100.1")
    t.switch("lan", ("laptop", "eth0"), ("corpdns", "eth0"), ("router", "eth0"))
    t.link("router", "eth1", "cloud", "eth0")
    t.link("router", "eth2", "pubdns", "eth0")
    return t


def write_zones(lab: Lab) -> dict[str, Path]:
    return {"corp": lab.write_conf("corp.zone", CORP_ZONE), "good": lab.write_conf("good.zone", GOOD_ZONE),
            "bad": lab.write_conf("bad.zone", BAD_ZONE)}


def start_lan(lab: Lab, zones: dict[str, Path], host: str = "corpdns") -> None:
    # The LAN server knows the corp zone and, as a LAN resolver would, the
    # public names too: the machine's own DNS must work without the client.
    p = lab.start(host, procs.ztna_argv("authdns", "run", "--zone", str(zones["corp"]), "--zone", str(zones["good"]),
                                        "--zone", str(zones["bad"]), "--listen", LAN_DNS), name=host)
    procs.wait_listening(p, LAN_DNS, 53, "udp")
    pub = lab.start("pubdns", procs.ztna_argv("authdns", "run", "--zone", str(zones["good"]), "--zone", str(zones["bad"]),
                                              "--listen", "198.51.100.53"), name="pubdns")
    procs.wait_listening(pub, "198.51.100.53", 53, "udp")


ORIGINAL = f"# written by the lab's DHCP client\nnameserver {LAN_DNS}\nsearch corp.example\noptions edns0\n"


class _OnTheLan(Scenario):
    """A laptop on a LAN with its DHCP-given resolver, the LAN's DNS server and the cloud resolver."""

    conf_overrides: dict = {}

    def topology(self) -> Topology:
        return lan_topology(self.name)

    def start(self, lab: Lab) -> None:
        zones = write_zones(lab)
        start_lan(lab, zones)
        start_cloud(lab, zones)
        lab.set_resolvers("laptop", [])
        lab.resolv_conf_path("laptop").write_text(ORIGINAL)
        self.conf = roaming_conf(lab, "roaming.toml", **self.conf_overrides)


class Roaming(_OnTheLan):
    """Takeover, split DNS, cloud blocking, restore after stop and after kill -9."""

    name = "roaming"
    summary = "Roaming DNS client: loopback takeover, split DNS to LAN server and cloud resolver, restore after stop and kill -9"
    capture_extra = [("laptop", "lo")]
    try_this = [
        "sudo {ztna} lab exec laptop -- {ztna} roaming run --config {run}/conf/roaming.toml &",
        "sudo {ztna} lab exec laptop -- dig intranet.corp.example     (to the LAN server)",
        "sudo {ztna} lab exec laptop -- dig malware.bad.example       (blocked by the cloud resolver)",
        "sudo {ztna} lab exec laptop -- {ztna} roaming status --config {run}/conf/roaming.toml",
    ]


    def drive(self, lab: Lab) -> dict:
        seen: dict = {}
        rc = lab.resolv_conf_path("laptop")
        seen["t0"] = time.time()
        start_client(lab, self.conf)
        seen["t_up"] = time.time()
        seen["file_running"] = rc.read_text()
        seen["state_file"] = json.loads((lab.conf_dir / "roaming-state" / "state.json").read_text())
        seen["intranet"] = dig(lab, "laptop", INTRANET)
        seen["good"] = dig(lab, "laptop", GOOD)
        seen["bad"] = dig(lab, "laptop", BAD)
        seen["status_running"] = status(lab, self.conf)
        seen["t_stop"] = time.time()
        lab.stop("roaming")
        seen["file_after_stop"] = rc.read_text()
        seen["intranet_after_stop"] = dig(lab, "laptop", INTRANET)
        seen["t_crash"] = time.time()
        start_client(lab, self.conf)
        lab.stop("roaming", sig=signal.SIGKILL)  # a crash: whatever it left on disk stays
        seen["file_after_kill"] = rc.read_text()
        seen["status_after_kill"] = status(lab, self.conf)
        seen["t_restart"] = time.time()
        start_client(lab, self.conf, name="roaming2")
        seen["good_after_restart"] = dig(lab, "laptop", GOOD)
        lab.stop("roaming2")
        seen["file_after_restart_stop"] = rc.read_text()
        seen["t_end"] = time.time()
        return seen

    def verify(self, lab: Lab, seen: dict) -> list[Step]:
        lo = dns_packets(lab.pcap("laptop", "lo"))
        eth0 = dns_packets(lab.pcap("laptop", "eth0"))
        up = (seen["t_up"], seen["t_stop"])
        steps: list[Step] = []

        s = Step("1", "takeover: the LAN server and search domain are recorded with their interface; resolv.conf points at 127.0.0.1")
        st = seen["state_file"]
        rec = [(x["value"], x["iface"]) for x in st["servers"]]
        if rec == [(LAN_DNS, "eth0")] and [x["value"] for x in st["search"]] == ["corp.example"] \
                and "nameserver 127.0.0.1" in seen["file_running"] and st["original_text"] == ORIGINAL:
            s.passed(f"state file records {rec}, search corp.example, original text kept byte for byte",
                     flow.note("laptop", f"state file: {LAN_DNS} on eth0 recorded; resolv.conf -> 127.0.0.1", seen["t_up"]))
            s.see("resolv.conf now: " + " | ".join(l for l in seen["file_running"].splitlines() if not l.startswith("#ztna-orig")))
        else:
            s.see(f"state: {st}; file: {seen['file_running']!r}")
        steps.append(s)

        s = Step("2", f"{INTRANET} goes stub -> LAN server {LAN_DNS} out of eth0, never to the cloud")
        q_lo = [p for p in between(lo, *up) if p.name == INTRANET and not p.response and p.dst == "127.0.0.1"]
        q_lan = [p for p in between(eth0, *up) if p.name == INTRANET and not p.response and p.dst == LAN_DNS]
        q_cloud = [p for p in between(eth0, *up) if p.name == INTRANET and p.dst in CLOUD]
        a = [p for p in between(lo, *up) if p.name == INTRANET and p.response and "192.168.1.20" in p.a]
        if q_lo and q_lan and a and not q_cloud and seen["intranet"][0] == ["192.168.1.20"]:
            s.passed(describe(q_lo[0], "laptop:lo"), q_lo[0])
            s.see(describe(q_lan[0], "laptop:eth0"), q_lan[0])
            s.see(describe(a[0], "laptop:lo"), a[0])
        else:
            s.see(f"dig: {seen['intranet']}; lo queries {len(q_lo)}, LAN queries {len(q_lan)}, cloud {len(q_cloud)}")
        steps.append(s)

        s = Step("3", f"{GOOD} goes stub -> cloud resolver {CLOUD[0]} with EDNS0 device-id {DEVICE_ID}, not to the LAN server")
        q_cloud = [p for p in between(eth0, *up) if p.name == GOOD and not p.response and p.dst in CLOUD]
        q_lan = [p for p in between(eth0, *up) if p.name == GOOD and p.dst == LAN_DNS]
        tagged = [p for p in q_cloud if (65001, DEVICE_ID.encode()) in p.opts]
        if tagged and not q_lan and seen["good"][0] == ["198.51.100.80"]:
            s.passed(describe(tagged[0], "laptop:eth0"), tagged[0])
            ans = [p for p in between(eth0, *up) if p.name == GOOD and p.response and p.src in CLOUD]
            if ans:
                s.see(describe(ans[0], "laptop:eth0"), ans[0])
        else:
            s.see(f"dig: {seen['good']}; cloud queries {len(q_cloud)} (with device id {len(tagged)}), LAN {len(q_lan)}")
        steps.append(s)

        s = Step("4", f"{BAD} is blocked by the cloud resolver under the device's own policy (EDNS0 device id)")
        from .roaming_cloud import query_log

        q = [p for p in between(eth0, *up) if p.name == BAD and p.response and p.src in CLOUD]
        blocked = [p for p in q if "198.51.100.66" not in p.a and p.a]
        logged = [e for e in query_log(lab) if e.get("name", "").rstrip(".") == BAD and e.get("decision") == "blocked"
                  and e.get("device") == DEVICE_ID]
        if blocked and logged and "198.51.100.66" not in seen["bad"][0]:
            s.passed(describe(blocked[0], "laptop:eth0") + "  (the real address 198.51.100.66 was not given)", blocked[0])
            e = logged[0]
            s.see(f"cloud query log: client {e.get('client')} device {e.get('device')} policy {e.get('policy')} "
                  f"decision {e.get('decision')} category {e.get('category')}",
                  flow.note("cloud", f"query log: {BAD} blocked for device {e.get('device')}", e.get("time")))
        else:
            s.see(f"dig: {seen['bad']}; cloud answers: {[describe(p, 'eth0') for p in q]}; log entries {logged}")
        steps.append(s)

        s = Step("5", "status says protected, with timestamps")
        stt = seen["status_running"]
        if stt.get("state") == "protected" and stt.get("since") and stt.get("resolv_conf_points_at_stub"):
            s.passed(f"state {stt['state']} since {time.strftime('%H:%M:%S', time.localtime(stt['since']))}, "
                     f"queries {stt.get('queries')}", flow.note("laptop", f"status: {stt['state']}", seen["t_stop"]))
        else:
            s.see(f"status: {stt}")
        steps.append(s)

        s = Step("6", "on stop the original resolv.conf is back byte for byte and the LAN server is asked directly")
        after = (seen["t_stop"], seen["t_crash"])
        direct = [p for p in between(eth0, *after) if p.name == INTRANET and not p.response and p.src == "192.168.1.10"
                  and p.dst == LAN_DNS]
        via_lo = [p for p in between(lo, *after) if p.name == INTRANET]
        if seen["file_after_stop"] == ORIGINAL and direct and not via_lo and seen["intranet_after_stop"][0] == ["192.168.1.20"]:
            s.passed("resolv.conf == original; " + describe(direct[0], "laptop:eth0") + " (no loopback leg)",
                     flow.note("laptop", "resolv.conf is the original again", seen["t_stop"]), direct[0])
        else:
            s.see(f"file {seen['file_after_stop']!r}; direct {len(direct)}; via lo {len(via_lo)}")
        steps.append(s)

        s = Step("7", "after kill -9 the file still points at the dead stub and status says so; the next start restores it first")
        sk = seen["status_after_kill"]
        if "127.0.0.1" in seen["file_after_kill"] and sk.get("state") == "not running" and "restore" in sk.get("detail", "") \
                and seen["good_after_restart"][0] == ["198.51.100.80"] and seen["file_after_restart_stop"] == ORIGINAL:
            s.passed(f"status after kill -9: {sk['state']}: {sk['detail']}",
                     flow.note("laptop", f"after kill -9: resolv.conf -> dead stub; status {sk['state']}", seen["t_restart"]))
            log = Path(lab.log_dir / "roaming2.log").read_text()
            rec = [l for l in log.splitlines() if "recovery at start" in l]
            s.see(rec[0].split(" WARNING ")[-1] if rec else "(recovery line not in log)")
            s.see("after the restarted client stopped: resolv.conf == original",
                  flow.note("laptop", "restarted, then stopped: resolv.conf is the original", seen["t_end"]))
        else:
            s.see(f"file after kill {seen['file_after_kill']!r}; status {sk}; restart dig {seen['good_after_restart']}; "
                  f"final file {seen['file_after_restart_stop']!r}")
        steps.append(s)
        return steps


def standin_writes(lab: Lab, name: str = "vpn") -> int:
    """How many times the VPN stand-in has written resolv.conf (from its log)."""
    return Path(lab.log_dir / f"{name}.log").read_text().count("re-asserted")


class RoamingVpnConflict(_OnTheLan):
    """A VPN that keeps rewriting resolv.conf: detect the race, back off, say why, come back on network change."""

    name = "roaming-vpn-conflict"
    summary = "Roaming client vs a VPN that keeps rewriting resolv.conf: detects the race, backs off, reports why, returns on network change"
    capture_extra = [("laptop", "lo")]

    conf_overrides = {"conflict": {"threshold": 3, "window": 10}}

    def drive(self, lab: Lab) -> dict:
        seen: dict = {}
        rc = lab.resolv_conf_path("laptop")
        start_client(lab, self.conf)
        seen["t_up"] = time.time()
        seen["good_protected"] = dig(lab, "laptop", GOOD)
        seen["t_vpn"] = time.time()
        lab.start("laptop", [sys.executable, "-m", "netns.vpn_standin", "--resolv-conf", str(rc),
                             "--server", LAN_DNS, "--search", "corp.example", "--iface", "vpn0", "--every", "0.3"],
                  name="vpn")
        seen["status_conflict"] = wait_status(lab, self.conf, "unprotected", reason="conflict", timeout=20)
        seen["t_backed"] = time.time()
        w0 = standin_writes(lab)
        time.sleep(2.0)  # long enough for several more rounds if anyone were still fighting
        seen["writes_during_quiet"] = standin_writes(lab) - w0
        seen["writes_total"] = standin_writes(lab)
        seen["file_backed_off"] = rc.read_text()
        seen["t_q"] = time.time()
        seen["intranet_backed_off"] = dig(lab, "laptop", INTRANET)
        seen["status_still"] = status(lab, self.conf)
        seen["t_disc"] = time.time()
        lab.stop("vpn")
        seen["status_back"] = wait_status(lab, self.conf, "protected", timeout=15)
        seen["t_back"] = time.time()
        seen["good_back"] = dig(lab, "laptop", GOOD)
        seen["t_stop"] = time.time()
        lab.stop("roaming")
        seen["file_final"] = rc.read_text()
        return seen

    def verify(self, lab: Lab, seen: dict) -> list[Step]:
        lo = dns_packets(lab.pcap("laptop", "lo"))
        eth0 = dns_packets(lab.pcap("laptop", "eth0"))
        steps: list[Step] = []

        s = Step("1", "before the VPN: protected, external names go through the stub to the cloud resolver")
        w = (seen["t_up"], seen["t_vpn"])
        q = [p for p in between(eth0, *w) if p.name == GOOD and not p.response and p.dst in CLOUD]
        if q and seen["good_protected"][0] == ["198.51.100.80"]:
            s.passed(describe(q[0], "laptop:eth0"), q[0])
        else:
            s.see(f"dig {seen['good_protected']}; cloud queries {len(q)}")
        steps.append(s)

        s = Step("2", "the VPN keeps rewriting resolv.conf: the client detects the race and backs off")
        sc = seen["status_conflict"]
        if sc.get("reason") == "conflict" and sc.get("conflict", {}).get("backed_off"):
            s.passed(f"status: {sc['state']} ({sc['reason']}): {sc['detail']}",
                     flow.note("laptop", f"status: {sc['state']} ({sc['reason']}), backed off", sc.get("since")))
            s.see(f"since {time.strftime('%H:%M:%S', time.localtime(sc['since']))}, "
                  f"{sc['since'] - seen['t_vpn']:.1f}s after the VPN connected; VPN stand-in wrote {seen['writes_total']} times in all")
        else:
            s.see(f"status {sc}")
        steps.append(s)

        s = Step("3", "backed off: no more fighting, the VPN's settings stay, status keeps saying why")
        st2 = seen["status_still"]
        if seen["writes_during_quiet"] == 0 and "vpn-standin" in seen["file_backed_off"] \
                and st2.get("reason") == "conflict":
            s.passed("the VPN wrote resolv.conf 0 times in 2s after the back-off; file: "
                     + " | ".join(seen["file_backed_off"].splitlines()),
                     flow.note("laptop", "resolv.conf keeps the VPN's settings; 0 rewrites in 2 s", seen["t_q"]))
        else:
            s.see(f"writes in the quiet 2s: {seen['writes_during_quiet']}; file {seen['file_backed_off']!r}; status {st2}")
        steps.append(s)

        s = Step("4", "meanwhile the machine still resolves, through the VPN's DNS server directly (no loopback leg)")
        w = (seen["t_q"], seen["t_disc"])
        direct = [p for p in between(eth0, *w) if p.name == INTRANET and not p.response and p.src == "192.168.1.10"]
        via_lo = [p for p in between(lo, *w) if p.name == INTRANET]
        if direct and not via_lo and seen["intranet_backed_off"][0] == ["192.168.1.20"]:
            s.passed(describe(direct[0], "laptop:eth0"), direct[0])
        else:
            s.see(f"dig {seen['intranet_backed_off']}; direct {len(direct)}; via lo {len(via_lo)}")
        steps.append(s)

        s = Step("5", "the VPN disconnects (vpn0 goes): that network change, not a timer, brings protection back")
        sb = seen["status_back"]
        log = Path(lab.log_dir / "roaming.log").read_text()
        change = [l.split(" WARNING ")[-1] for l in log.splitlines() if "network change" in l and "vpn0 went" in l]
        w = (seen["t_back"], seen["t_stop"])
        q = [p for p in between(eth0, *w) if p.name == GOOD and not p.response and p.dst in CLOUD]
        if sb.get("state") == "protected" and change and q and seen["good_back"][0] == ["198.51.100.80"]:
            s.passed(change[0], flow.note("laptop", "network change: vpn0 went; protection back", seen["t_back"]))
            s.see(f"status: {sb['state']} again; " + describe(q[0], "laptop:eth0"), q[0])
        else:
            s.see(f"status {sb}; log lines {change}; cloud queries {len(q)}")
        steps.append(s)

        s = Step("6", "on stop, the machine's original resolv.conf is back")
        if seen["file_final"] == ORIGINAL:
            s.passed("resolv.conf == original", flow.note("laptop", "resolv.conf is the original again", seen["t_stop"]))
        else:
            s.see(repr(seen["file_final"]))
        steps.append(s)
        return steps


class RoamingMetric(Scenario):
    """The wrong path: the VPN's route metric is worse, so internal queries leave by the uplink and fail."""

    name = "roaming-metric"
    summary = "Roaming client and a VPN with a worse route metric: internal DNS fails by eth0, works with egress = \"learned\" (vpn0)"
    capture_extra = [("laptop", "lo")]
    # vpn0 stands for the VPN's tunnel (a veth to the VPN gateway here): drawn as its band.
    tunnels = [flow.Tunnel("VPN tunnel (vpn0)", ("laptop", "vpngw"), ["laptop:vpn0"])]

    def topology(self) -> Topology:
        t = Topology(self.name)
        lap = t.host("laptop").addr("eth0", "203.0.113.10/24").addr("vpn0", "10.8.0.2/24")
        lap.route("default", "203.0.113.1", metric=100)
        # The VPN's full-tunnel route, with a metric worse than the uplink's:
        # the situation the seed describes on Windows 10.
        lap.route("default", "10.8.0.1", dev="vpn0", metric=500)
        isp = t.host("isp", forward=True).addr("eth0", "203.0.113.1/24")
        isp.addr("eth1", "208.67.222.1/24").addr("eth1", "208.67.220.1/24").addr("eth2", "198.51.100.1/24")
        t.host("cloud").addr("eth0", "208.67.222.222/24").addr("eth0", "208.67.220.220/24").route("default", "208.67.222.1")
        t.host("pubdns").addr("eth0", "198.51.100.53/24").route("default", "198.51.100.1")
        t.host("vpngw", forward=True).addr("vpn0", "10.8.0.1/24").addr("eth1", "192.168.1.1/24")
        t.host("corpdns").addr("eth0", f"{LAN_DNS}/24").route("default", "192.168.1.1")
        t.link("laptop", "eth0", "isp", "eth0")
        t.link("isp", "eth1", "cloud", "eth0")
        t.link("isp", "eth2", "pubdns", "eth0")
        t.link("laptop", "vpn0", "vpngw", "vpn0")
        t.link("vpngw", "eth1", "corpdns", "eth0")
        return t

    def start(self, lab: Lab) -> None:
        zones = write_zones(lab)
        # The corporate server knows only the corp zone and sits behind the VPN gateway.
        p = lab.start("corpdns", procs.ztna_argv("authdns", "run", "--zone", str(zones["corp"]), "--listen", LAN_DNS),
                      name="corpdns")
        procs.wait_listening(p, LAN_DNS, 53, "udp")
        pub = lab.start("pubdns", procs.ztna_argv("authdns", "run", "--zone", str(zones["good"]), "--zone",
                                                  str(zones["bad"]), "--listen", "198.51.100.53"), name="pubdns")
        procs.wait_listening(pub, "198.51.100.53", 53, "udp")
        start_cloud(lab, zones)
        # The VPN is connected: its DNS server and domain are in resolv.conf and,
        # as resolvconf(8) keeps them, in a per-interface file named after vpn0.
        self.vpn_text = f"# written by the VPN client\nnameserver {LAN_DNS}\nsearch corp.example\n"
        lab.set_resolvers("laptop", [])
        lab.resolv_conf_path("laptop").write_text(self.vpn_text)
        self.iface_dir = lab.conf_dir / "resolvconf-interfaces"
        self.iface_dir.mkdir()
        (self.iface_dir / "vpn0.vpn").write_text(self.vpn_text)
        self.conf_route = roaming_conf(lab, "roaming-route.toml", interface_dir=str(self.iface_dir), egress="route")
        self.conf_learned = roaming_conf(lab, "roaming-learned.toml", interface_dir=str(self.iface_dir), egress="learned")

    def drive(self, lab: Lab) -> dict:
        seen: dict = {}
        seen["routes"] = lab.exec("laptop", ["ip", "route"]).stdout.decode()
        seen["route_get"] = lab.exec("laptop", ["ip", "route", "get", LAN_DNS]).stdout.decode().split("\n")[0]
        seen["t_a"] = time.time()
        start_client(lab, self.conf_route, name="roaming-route")
        seen["intranet_route"] = dig(lab, "laptop", INTRANET)
        seen["good_route"] = dig(lab, "laptop", GOOD)
        seen["status_route"] = status(lab, self.conf_route)
        lab.stop("roaming-route")
        seen["t_b"] = time.time()
        start_client(lab, self.conf_learned, name="roaming-learned")
        seen["intranet_learned"] = dig(lab, "laptop", INTRANET)
        seen["good_learned"] = dig(lab, "laptop", GOOD)
        seen["status_learned"] = status(lab, self.conf_learned)
        seen["t_c"] = time.time()
        # The VPN interface disappears under the running client.
        lab.exec("laptop", ["ip", "link", "del", "vpn0"])
        time.sleep(0.5)
        seen["good_gone"] = dig(lab, "laptop", GOOD)
        seen["intranet_gone"] = dig(lab, "laptop", INTRANET)
        seen["alive_gone"] = lab.procs["roaming-learned"].alive()
        seen["status_gone"] = status(lab, self.conf_learned)
        lab.stop("roaming-learned")
        seen["file_final"] = lab.resolv_conf_path("laptop").read_text()
        seen["t_d"] = time.time()
        return seen

    def verify(self, lab: Lab, seen: dict) -> list[Step]:
        eth0 = dns_packets(lab.pcap("laptop", "eth0"))
        vpn0 = dns_packets(lab.pcap("laptop", "vpn0"))
        a, b, c = (seen["t_a"], seen["t_b"]), (seen["t_b"], seen["t_c"]), (seen["t_c"], seen["t_d"])
        steps: list[Step] = []

        s = Step("1", f"the kernel routes the internal DNS server {LAN_DNS} by eth0 (metric 100), not by vpn0 (metric 500)")
        if "dev eth0" in seen["route_get"]:
            s.passed(f"ip route get {LAN_DNS}: {seen['route_get'].strip()}",
                     flow.note("laptop", f"ip route get {LAN_DNS}: dev eth0", seen["t_a"]))
            s.see("routes: " + " | ".join(l for l in seen["routes"].splitlines() if l.startswith("default")))
        else:
            s.see(seen["route_get"])
        steps.append(s)

        s = Step("2", f"egress = \"route\": {INTRANET} leaves by eth0 and fails; nothing on vpn0")
        out = [p for p in between(eth0, *a) if p.name == INTRANET and not p.response and p.dst == LAN_DNS]
        on_vpn = [p for p in between(vpn0, *a) if p.name == INTRANET]
        if out and not on_vpn and seen["intranet_route"][1] in ("SERVFAIL", "TIMEOUT") and not seen["intranet_route"][0]:
            # The query leaves towards the ISP, which has no way to the corporate server: drawn to where it went.
            s.passed(describe(out[0], "laptop:eth0") + f"  -> dig says {seen['intranet_route'][1]}", out[0],
                     label=f"query {INTRANET} A (by eth0; no answer: {seen['intranet_route'][1]})", to="isp")
            s.see("laptop:vpn0: no query")
        else:
            s.see(f"dig {seen['intranet_route']}; eth0 queries {len(out)}, vpn0 {len(on_vpn)}")
        steps.append(s)

        s = Step("3", f"egress = \"learned\": {INTRANET} leaves by vpn0, where its server was learned, and resolves")
        out = [p for p in between(vpn0, *b) if p.name == INTRANET and not p.response and p.dst == LAN_DNS]
        ans = [p for p in between(vpn0, *b) if p.name == INTRANET and p.response and "192.168.1.20" in p.a]
        on_eth = [p for p in between(eth0, *b) if p.name == INTRANET]
        srv = [(x["value"], x["iface"]) for x in seen["status_learned"].get("recorded_servers", [])]
        if out and ans and not on_eth and seen["intranet_learned"][0] == ["192.168.1.20"]:
            s.passed(describe(out[0], "laptop:vpn0"), out[0])
            s.see(describe(ans[0], "laptop:vpn0"), ans[0])
            s.see(f"laptop:eth0: no query for {INTRANET}; recorded servers {srv}")
        else:
            s.see(f"dig {seen['intranet_learned']}; vpn0 queries {len(out)}, answers {len(ans)}; eth0 {len(on_eth)}; {srv}")
        steps.append(s)

        s = Step("4", "external names keep going to the cloud resolver by eth0 in both settings")
        ext = [p for p in between(eth0, seen["t_a"], seen["t_c"]) if p.name == GOOD and not p.response and p.dst in CLOUD]
        ext_vpn = [p for p in between(vpn0, seen["t_a"], seen["t_c"]) if p.name == GOOD]
        if len(ext) >= 2 and not ext_vpn and seen["good_route"][0] == seen["good_learned"][0] == ["198.51.100.80"]:
            s.passed(describe(ext[0], "laptop:eth0"), ext[0])
        else:
            s.see(f"eth0 {len(ext)}, vpn0 {len(ext_vpn)}; dig {seen['good_route']} {seen['good_learned']}")
        steps.append(s)

        s = Step("5", "vpn0 disappears under the running client: it keeps serving; external names still resolve")
        sg = seen["status_gone"]
        log = Path(lab.log_dir / "roaming-learned.log").read_text()
        went = [l.split(" WARNING ")[-1] for l in log.splitlines() if "vpn0 went" in l]
        ext = [p for p in between(eth0, *c) if p.name == GOOD and not p.response and p.dst in CLOUD]
        if seen["alive_gone"] and went and ext and seen["good_gone"][0] == ["198.51.100.80"] and sg.get("state") == "protected":
            s.passed(went[0], flow.note("laptop", "log: vpn0 went; still serving", seen["t_c"]))
            s.see(f"{INTRANET}: {seen['intranet_gone'][1]} (its only path is gone); " + describe(ext[0], "laptop:eth0"),
                  ext[0])
            s.see(f"status {sg['state']}; on stop resolv.conf is the VPN's file again: {seen['file_final'] == self.vpn_text}")
            if seen["file_final"] != self.vpn_text:
                s.ok = False
        else:
            s.see(f"alive {seen['alive_gone']}; log {went}; dig {seen['good_gone']}; status {sg.get('state')}")
        steps.append(s)
        return steps


SCENARIOS = [Roaming, RoamingVpnConflict, RoamingMetric]
