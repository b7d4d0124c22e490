"""Branch -> PoP -> HQ -> WAN1 -> internet against branch -> PoP -> internet, in one run (issue 16's speed).

``python scripts/bench/backhaul_bench.py [--seconds 10] [--json]`` (as root; scripts/bench.sh backhaul)

One ``backhaul-hq`` lab (netns/scenarios/backhaul_hq.py), captures off, the rule
"SaaS via HQ" loaded: the branch user runs iperf3 (1 stream, download and
upload) and ping to jp-only.saas.example, resolved through the PoP's DNS and so
backhauled through HQ's WAN1, and to the whoami host 203.0.113.80, which leaves
by the PoP's egress.  Both servers are one hop from the lab's internet router.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import time

from netns import procs
from netns.lab import Lab
from netns.scenarios.backhaul_hq import COUNTRY, COUNTRY_NAME, RULE, WEB, BackhaulHqScenario, pop_log, wait_log


def iperf(lab: Lab, target: str, seconds: int, *extra: str) -> float:
    """Mbit/s received, 1 stream."""
    doc: dict = {}
    for _ in (1, 2):
        time.sleep(1)  # one test at a time per server
        r = lab.exec("user", ["iperf3", "-c", target, "-t", str(seconds), "-J", "--connect-timeout", "3000", *extra],
                     timeout=seconds + 30)
        doc = json.loads(r.stdout or b"{}")
        if "end" in doc and "error" not in doc:
            return doc["end"]["sum_received"]["bits_per_second"] / 1e6
    raise RuntimeError(f"iperf3 to {target} failed twice: {doc.get('error') or r.stderr.decode()}")


def rtt(lab: Lab, target: str, count: int = 40) -> float:
    """Median ping RTT in ms."""
    r = lab.exec("user", ["ping", "-n", "-i", "0.05", "-c", str(count), "-W", "2", target], timeout=30)
    rtts = [float(m) for m in re.findall(rb"time=([0-9.]+) ms", r.stdout)]
    if not rtts:
        raise RuntimeError(f"no ping reply from {target}: {r.stdout.decode()[-300:]} {r.stderr.decode()[-300:]}")
    return statistics.median(rtts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if a.json else (lambda s: print(s, flush=True))
    sc = BackhaulHqScenario()
    lab = Lab("bench-backhaul", sc.topology())
    res: dict = {}
    try:
        say("building the lab and starting the services")
        lab.up()
        sc.start(lab)
        n = pop_log(lab).count("rules reloaded")
        sc.rules.write_text(RULE)
        os.kill(lab.procs["pop"].pid, signal.SIGHUP)
        wait_log(lab, "pop", lambda t: t.count("rules reloaded") > n, 10, "the PoP to reload its rules")
        for host, addr in (("saas", COUNTRY), ("web", WEB)):
            p = lab.start(host, ["iperf3", "-s", "-B", addr], name=f"iperf3-{host}")
            procs.wait_listening(p, addr, 5201)
        for path, target in (("hq", COUNTRY_NAME), ("egress", WEB)):
            out = res[path] = {}
            out["idle_rtt_ms"] = rtt(lab, target)
            say(f"  {path:<7} download, {a.seconds}s ...")
            out["down_mbit"] = iperf(lab, target, a.seconds, "-R")
            say(f"  {path:<7} upload, {a.seconds}s ...")
            out["up_mbit"] = iperf(lab, target, a.seconds)
        # The branch's end writes its flow lines: the backhauled runs must say so, or the figures mean nothing.
        lab.stop("branch-site")
        flows = lab.log_dir / "pop-flows.jsonl"
        procs.wait_until(lambda: flows.exists() and f"{COUNTRY}:5201" in flows.read_text(), timeout=10,
                         what="the PoP's flow lines")
        lines = [json.loads(x) for x in flows.read_text().splitlines() if f"{COUNTRY}:5201" in x]
        big = max(lines, key=lambda f: f.get("bytes_down", 0) + f.get("bytes_up", 0))
        if big.get("exit") != "backhaul" or big.get("via") != "hq" or big.get("port") != "wan1":
            raise RuntimeError(f"the iperf3 flow to {COUNTRY} did not go through HQ's WAN1: {big}")
        res["hq_flow"] = {k: big.get(k) for k in ("network_rule", "exit", "via", "port", "bytes_up", "bytes_down")}
    finally:
        lab.down()
    if a.json:
        print(json.dumps({"seconds": a.seconds, **res}, indent=2))
        return
    h, e = res["hq"], res["egress"]
    print()
    print(f"branch user -> internet, {a.seconds}s iperf3 runs, 1 stream (this machine: {os.cpu_count()} cores)")
    print(f"{'':<22}{'PoP egress':>12}{'via HQ WAN1':>13}{'HQ/egress':>11}")
    for key, label in (("down_mbit", "download Mbit/s"), ("up_mbit", "upload Mbit/s"), ("idle_rtt_ms", "idle RTT ms")):
        print(f"{label:<22}{e[key]:>12.2f}{h[key]:>13.2f}{h[key] / e[key]:>11.2f}")
    print(f"added idle RTT through HQ: {h['idle_rtt_ms'] - e['idle_rtt_ms']:.2f} ms; the largest iperf3 flow's "
          f"line: {json.dumps(res['hq_flow'], separators=(',', ':'))}")


if __name__ == "__main__":
    main()
