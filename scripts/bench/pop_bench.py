"""Client -> app through the cloud PoP against the direct agent -> gateway tunnel.

``python scripts/bench/pop_bench.py [--seconds 10] [--repeat 1] [--json]`` (as root; scripts/bench.sh pop)

Two labs in turn, captures off:
  direct  the agent scenario: agent --mTLS--> gateway --> app
  pop     the pop-agent scenario: agent --mTLS--> PoP --connector mTLS--> gateway --> app
For each: iperf3 with 1 and 4 streams, idle RTT (ping through the tunnel), RTT while
a 1-stream iperf3 runs, and curl's TCP connect and first-byte times (median of 10).
With ``--repeat N`` each lab runs its measurements N times and each figure is the median.
ZTNA_POP_PROFILE=FILE makes the PoP write a cProfile of its run to FILE when it stops.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import threading
import time

from netns import procs
from netns.lab import Lab
from netns.scenarios.agent import APP, APP_IP, AgentScenario
from netns.scenarios.pop_agent import PopAgentScenario

sys.path.insert(0, os.path.dirname(__file__))
from tunnel_bench import iperf as _iperf  # noqa: E402


def iperf(lab: Lab, target: str, streams: int, seconds: int) -> float:
    """Gbit/s received at the app with ``streams`` parallel streams."""
    return _iperf(lab, target, seconds, "-P", str(streams)) / 1000


def rtt(lab: Lab, target: str, count: int = 20) -> float:
    r = lab.exec("client", ["ping", "-q", "-c", str(count), "-i", "0.1", target], timeout=30)
    m = re.search(r"= [\d.]+/([\d.]+)/", r.stdout.decode())
    if not m:
        raise RuntimeError(f"ping {target}: {r.stdout.decode()[-200:]} {r.stderr.decode()[-200:]}")
    return float(m.group(1))


def curl_times(lab: Lab, n: int = 10) -> tuple[float, float]:
    ca = str(lab.pki_dir / "ca.pem")
    conn, first = [], []
    for _ in range(n):
        r = lab.exec("client", ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_connect} %{time_starttransfer}",
                                "--cacert", ca, f"https://{APP}/"])
        c, f = r.stdout.decode().split()
        conn.append(float(c) * 1000)
        first.append(float(f) * 1000)
    return statistics.median(conn), statistics.median(first)


def measure(name: str, sc, lab_name: str, seconds: int, say, pop: bool, repeat: int = 1) -> dict:
    lab = Lab(lab_name, sc.topology())
    runs: list = []
    try:
        say(f"{name}: building the lab and starting the services")
        lab.up()
        sc.start(lab)
        if pop:
            lab.start("gateway", procs.ztna_argv("gateway", "run", "--config", str(sc.gw_conf)), name="gateway")
            procs.wait_until(lambda: "publishes" in open(lab.procs["pop"].log).read(), timeout=15,
                             what="the connector tunnel")
        lab.start("app", ["iperf3", "-s", "-B", APP_IP], name="iperf3")
        procs.wait_listening(lab.procs["iperf3"], APP_IP, 5201)
        lease = lab.exec("client", ["dig", "+short", APP]).stdout.decode().strip()
        curl_times(lab, 2)  # the lease and the tunnel are up before anything is timed
        for i in range(repeat):
            out: dict = {}
            out["connect_ms"], out["first_byte_ms"] = curl_times(lab)
            out["idle_rtt_ms"] = rtt(lab, lease)
            for streams in (1, 4):
                say(f"  {name:<7} run {i + 1}/{repeat}: {streams} stream(s), {seconds}s ...")
                out[f"gbit_{streams}"] = iperf(lab, lease, streams, seconds)
            loaded: list = []
            t = threading.Thread(target=lambda: loaded.append(iperf(lab, lease, 1, seconds)))
            t.start()
            time.sleep(2)
            out["loaded_rtt_ms"] = rtt(lab, lease, count=10)
            t.join()
            runs.append(out)
    finally:
        lab.down()
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=1, help="measure each lab N times; report the medians")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if a.json else (lambda s: print(s, flush=True))
    res = {"direct": measure("direct", AgentScenario(), "bench-pop-direct", a.seconds, say, False, a.repeat),
           "pop": measure("pop", PopAgentScenario(), "bench-pop", a.seconds, say, True, a.repeat)}
    if a.json:
        print(json.dumps({"seconds": a.seconds, "repeat": a.repeat, **res}, indent=2))
        return
    d, p = res["direct"], res["pop"]
    print()
    print(f"client -> app, {a.seconds}s iperf3 runs, median of {a.repeat} (this machine: {os.cpu_count()} cores)")
    print(f"{'':<22}{'direct':>10}{'via PoP':>10}{'PoP/direct':>12}")
    for key, label in (("gbit_1", "Gbit/s, 1 stream"), ("gbit_4", "Gbit/s, 4 streams"),
                       ("idle_rtt_ms", "idle RTT ms"), ("loaded_rtt_ms", "loaded RTT ms"),
                       ("connect_ms", "TCP connect ms"), ("first_byte_ms", "first byte ms")):
        print(f"{label:<22}{d[key]:>10.2f}{p[key]:>10.2f}{p[key] / d[key]:>12.2f}")
    print(f"added idle RTT: {p['idle_rtt_ms'] - d['idle_rtt_ms']:.2f} ms (goal < 1 ms); "
          f"1-stream throughput {p['gbit_1'] / d['gbit_1']:.2f}x direct (goal >= 0.6x)")


if __name__ == "__main__":
    main()
