"""DNS resolver benchmark in sealed lab namespaces: ztna dns vs dnsmasq vs unbound.

Same block list (10,000 names answered with the block-page address), same
upstream (ztna authdns serving 10,000 allowed names), same query file (half
blocked, half allowed, A queries), same dnsperf settings.  Each server gets a
warm-up run (so allowed names are cached, as on a busy resolver) and then a
measured run.  Bounded: every process has a timeout and the lab is removed at
the end, also on failure or Ctrl-C.

Run through ``sudo scripts/bench.sh dns`` (installs dnsperf, dnsmasq, unbound).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from netns.lab import Lab
from netns.procs import wait_listening, ztna_argv
from netns.topology import Topology

RESOLVER = "208.67.222.222"
UPSTREAM = "203.0.113.53"
CLIENT = "198.51.100.10"
BLOCKPAGE = "192.0.2.80"
N = 10_000


def topology() -> Topology:
    t = Topology("bench-dns")
    t.host("bclient").addr("eth0", f"{CLIENT}/24").route("default", "198.51.100.1")
    cloud = t.host("bcloud").addr("eth0", "198.51.100.1/24").addr("eth0", f"{RESOLVER}/32")
    cloud.addr("eth1", "203.0.113.1/24")
    t.host("bauth").addr("eth0", f"{UPSTREAM}/24").route("default", "203.0.113.1")
    t.link("bclient", "eth0", "bcloud", "eth0")
    t.link("bcloud", "eth1", "bauth", "eth0")
    return t


def write_data(d: Path) -> dict[str, Path]:
    blocked = [f"bad{i}.blocked.example" for i in range(N)]
    allowed = [f"ok{i}.allowed.example" for i in range(N)]
    files = {k: d / v for k, v in {"zone": "allowed.example.zone", "block": "block.txt", "queries": "queries.txt",
                                   "dnsmasq": "dnsmasq-block.conf", "unbound": "unbound.conf", "ztna": "dns.toml"}.items()}
    lines = ["$ORIGIN allowed.example.", "@ IN SOA ns1 hostmaster 1 3600 600 86400 3600", "ns1 IN A 203.0.113.53"]
    lines += [f"ok{i} 3600 IN A 203.0.113.{i % 250 + 2}" for i in range(N)]
    files["zone"].write_text("\n".join(lines) + "\n")
    files["block"].write_text("\n".join(blocked) + "\n")
    # half blocked, half allowed, interleaved
    files["queries"].write_text("".join(f"{b} A\n{a} A\n" for b, a in zip(blocked, allowed)))
    files["dnsmasq"].write_text("".join(f"address=/{b}/{BLOCKPAGE}\n" for b in blocked))
    files["unbound"].write_text(f"""server:
    interface: {RESOLVER}
    port: 53
    do-ip6: no
    num-threads: 1
    access-control: 198.51.100.0/24 allow
    chroot: ""
    username: ""
    directory: "{d}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 0
    module-config: "iterator"
    qname-minimisation: no
    msg-cache-size: 64m
    rrset-cache-size: 64m
""" + "".join(f'    local-zone: "{b}." redirect\n    local-data: "{b}. 30 IN A {BLOCKPAGE}"\n' for b in blocked) + f"""
forward-zone:
    name: "."
    forward-addr: {UPSTREAM}
""")
    files["ztna"].write_text(f"""[server]
listen = ["{RESOLVER}"]
upstreams = ["{UPSTREAM}"]
query_log = "{{log}}"

[blockpage]
address = "{BLOCKPAGE}"
serve = false
https_port = 0

[lists.bench-block]
files = ["{files['block']}"]

[[policy]]
name = "bench"
networks = ["198.51.100.0/24"]
block_lists = ["bench-block"]
""")
    return files


def dnsperf(lab: Lab, queries: Path, seconds: int, clients: int, outstanding: int, *extra: str) -> dict:
    r = lab.exec("bclient", ["dnsperf", "-s", RESOLVER, "-d", str(queries), "-l", str(seconds), "-c", str(clients),
                             "-q", str(outstanding), "-t", "2", *extra], timeout=seconds + 30)
    text = r.stdout.decode(errors="replace")

    def num(pattern: str) -> float:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else float("nan")

    return {"qps": num(r"Queries per second:\s+([\d.]+)"), "lat": num(r"Average Latency \(s\):\s+([\d.]+)") * 1000,
            "lat_sd": num(r"Latency StdDev \(s\):\s+([\d.]+)") * 1000, "lost": num(r"Queries lost:\s+(\d+)"),
            "sent": num(r"Queries sent:\s+(\d+)"), "done": num(r"Queries completed:\s+(\d+)"), "raw": text}


def check_answers(lab: Lab) -> str:
    """One blocked and one allowed name, to show each server gives the same answers."""
    out = []
    for name in ("bad7.blocked.example", "ok7.allowed.example"):
        r = lab.exec("bclient", ["dig", "+short", "+tries=1", "+time=3", f"@{RESOLVER}", name], timeout=10)
        out.append(f"{name}={r.stdout.decode().strip() or '-'}")
    return " ".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10, help="measured dnsperf run per server")
    ap.add_argument("--warmup-qps", type=int, default=4000, help="rate of the warm-up pass through the query file")
    ap.add_argument("--clients", type=int, default=4, help="dnsperf -c")
    ap.add_argument("--outstanding", type=int, default=200, help="dnsperf -q (queries in flight)")
    ap.add_argument("--rounds", type=int, default=2, help="measure every server this many times, in alternating order")
    ap.add_argument("--only", default="", help="comma-separated subset of: ztna,ztna-nolog,dnsmasq,unbound")
    args = ap.parse_args()
    for tool in ("dnsperf", "dnsmasq", "unbound", "dig"):
        if not shutil.which(tool):
            print(f"bench dns: {tool} is missing; run sudo scripts/install.sh --bench", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="ztna-bench-dns-"))
    lab = Lab("bench-dns", topology(), root=work / "run")
    results: dict[str, list[dict]] = {}
    try:
        files = write_data(work)
        lab.up()
        auth = lab.start("bauth", ztna_argv("authdns", "run", "--zone", str(files["zone"]), "--listen", UPSTREAM), name="authdns")
        wait_listening(auth, UPSTREAM, 53, "udp", timeout=60)
        servers = {
            "ztna": ztna_argv("dns", "run", "--config", str(_ztna_conf(files, work, log=True))),
            "ztna-nolog": ztna_argv("dns", "run", "--config", str(_ztna_conf(files, work, log=False))),
            "dnsmasq": ["dnsmasq", "-k", "--no-resolv", "--no-hosts", f"--server={UPSTREAM}", f"--listen-address={RESOLVER}",
                        "--bind-interfaces", "--cache-size=20000", f"--conf-file={files['dnsmasq']}", "--user=root",
                        "--pid-file=", "--dns-forward-max=1000"],
            "unbound": ["unbound", "-d", "-c", str(files["unbound"])],
        }
        only = [s for s in args.only.split(",") if s] or list(servers)
        qlog = work / "queries.jsonl"
        for rnd in range(args.rounds):
            # Alternate the order so that a change in the machine's load hits every server alike.
            for name in (only if rnd % 2 == 0 else only[::-1]):
                lines_before = _lines(qlog)
                proc = lab.start("bcloud", servers[name], name=f"{name}-{rnd}")
                try:
                    wait_listening(proc, RESOLVER, 53, "udp", timeout=60)
                    answers = check_answers(lab)
                    # Warm-up: the whole file once at a rate the upstream keeps up with, so every
                    # allowed name is cached before the measured run (as on a busy resolver).
                    warm = dnsperf(lab, files["queries"], 30, args.clients, args.outstanding, "-n", "1",
                                   "-Q", str(args.warmup_qps))
                    res = dnsperf(lab, files["queries"], args.seconds, args.clients, args.outstanding)
                    res["answers"] = answers
                    results.setdefault(name, []).append(res)
                    print(f"  round {rnd + 1} {name:<11} {res['qps']:>9.0f} q/s  latency {res['lat']:.2f} ms "
                          f"(sd {res['lat_sd']:.2f})  lost {res['lost']:.0f}/{res['sent']:.0f}   {answers}", flush=True)
                finally:
                    lab.stop(f"{name}-{rnd}")
                if name == "ztna":
                    # The query log is on and flushed on stop: one line per answered query.
                    logged = _lines(qlog) - lines_before
                    answered = warm["done"] + res["done"] + 2
                    print(f"  round {rnd + 1} ztna query log: {logged} lines for {answered:.0f} answered queries "
                          f"(warm-up + measured + 2 dig)", flush=True)
    finally:
        lab.down()
        shutil.rmtree(work, ignore_errors=True)
    print()
    rounds = " ".join(f"{'round ' + str(i + 1):>9}" for i in range(args.rounds))
    print(f"{'server':<11} {rounds} {'mean QPS':>9} {'avg ms':>7} {'vs dnsmasq':>11} {'vs unbound':>11}")
    for name, rs in results.items():
        qps = [r["qps"] for r in rs]

        def ratio(base: str) -> str:
            # Per round, then averaged: the two servers of one round ran minutes apart at most.
            b = results.get(base)
            if not b:
                return "-"
            return f"{sum(q / x['qps'] for q, x in zip(qps, b)) / len(qps):.2f}x"

        cols = " ".join(f"{q:>9.0f}" for q in qps)
        print(f"{name:<11} {cols} {sum(qps) / len(qps):>9.0f} {sum(r['lat'] for r in rs) / len(rs):>7.2f} "
              f"{ratio('dnsmasq'):>11} {ratio('unbound'):>11}")
    print(f"\n{N} blocked + {N} allowed names, A queries alternating; dnsperf -c {args.clients} -q {args.outstanding}, "
          f"one warm-up pass at {args.warmup_qps} q/s + {args.seconds} s measured per server and round, "
          f"{args.rounds} rounds in alternating order; 2-core machine shared by dnsperf and the server.")
    return 0


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def _ztna_conf(files: dict[str, Path], work: Path, *, log: bool) -> Path:
    p = work / ("dns.toml" if log else "dns-nolog.toml")
    p.write_text(files["ztna"].read_text().replace("{log}", str(work / "queries.jsonl") if log else ""))
    return p


if __name__ == "__main__":
    sys.exit(main())
