"""Forward-proxy benchmark in the sealed lab (run by scripts/bench/proxy.sh, as root).

The proxy-explicit topology (client -- proxy -- web/dns), real curl as the
client, the lab web server (netns/tlsweb) as origin.  Every proxy runs at the
same time on its own port (an idle one costs nothing), is warmed up (DNS and
certificate caches filled, 20 requests and a 10 MB download), and then the
contenders take turns, round after round (``BENCH_REPEATS``, default 5, every
other round in reverse order), so a change in the machine's load hits them all
alike.  A round: each contender downloads 100 MB over HTTPS ``BENCH_DOWNLOADS``
times (default 6; the median counts), then makes 500 small HTTPS requests, each
on a new connection (``Connection: close``, 8 in parallel, the same for
everyone), so every request costs a CONNECT and a TLS handshake (two when the
proxy decrypts).  The downloads, and the requests in ``BENCH_CHUNKS`` slices
(default 5 of 100), go round-robin over the contenders, every other pass in
reverse order, so a drift of the machine's speed, the largest noise on this
kind of VM, reaches every contender alike; the contenders a goal compares sit
next to each other in the order (Squid and ztna splice, ztna and mitmproxy
decrypt).  curl speaks HTTP/1.1 everywhere (``--http1.1``): mitmproxy offers HTTP/2 to the
client when it decrypts, and over HTTP/2 curl ran its parallel requests on one kept
connection, so they were not new connections and mitmproxy paid no handshake for them.
The table shows the median of the rounds, the proxy's CPU per MB downloaded, and the CPU
each request costs the proxy, curl and the origin (which sets the request rate: see the
lines under the table).  A goal's ratio is the median of the ratios of the pairs of turns
the two took in the same pass (adjacent, so the machine's drift cancels), with a 95 %
bootstrap interval: "met, beyond noise" when the interval's low end reaches the goal, "met
at the median, within noise" when only the median does, "below at the median, within
noise" when only the interval's high end does, "NOT met, beyond noise" when none does.

Contenders: no proxy (routed through the proxy host), ztna splice and decrypt (one
process each, the same config, as mitmproxy runs one process per mode),
Squid (CONNECT tunnel: bytes copied untouched, no bumping) doing the same job as
ztna (its policy, a log line per connection: the goals' reference) and a bare
Squid (no domain ACLs, no log) to show what those cost it, mitmproxy splice
(ignore_hosts) and decrypt (stream_large_bodies so it does not buffer 100 MB).
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from netns import procs  # noqa: E402
from netns.lab import Lab  # noqa: E402
from netns.scenarios import proxy as sc  # noqa: E402

SIZE = 100 * 1024 * 1024
SMALL = int(os.environ.get("BENCH_REQUESTS", "500"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))  # 5: single rounds spread by about 20 %
DOWNLOADS = int(os.environ.get("BENCH_DOWNLOADS", "6"))  # per turn (the turn's figure is their median); 30 pairs
CHUNKS = int(os.environ.get("BENCH_CHUNKS", "5"))  # a round's requests in this many round-robin slices
PARALLEL = 8
PORTS = {"ztna": sc.EXPLICIT_PORT, "squid": 3129, "mitm-splice": 3130, "mitm-decrypt": 3131, "squid-bare": 3132,
         "ztna-decrypt": 3133}
SPLICED, DECRYPTED = sc.BANK, sc.DECRYPT
BARE_SQUID = "squid, no ACL/log"


def bundle(lab: Lab, extra: list[Path]) -> Path:
    path = lab.pki_dir / "bench-trust.pem"
    path.write_bytes(b"".join(p.read_bytes() for p in [lab.pki_dir / "ca.pem", lab.pki_dir / "proxy-ca.pem", *extra] if p.exists()))
    return path


def proxy_url(port: int) -> str:
    return f"http://{sc.PROXY_IN}:{port}"


def download(lab: Lab, name: str, proxy: int | None, trust: Path, size: int = SIZE, pid: int | None = None) -> dict:
    argv = ["curl", "-s", "--http1.1", "-o", "/dev/null", "--max-time", "120", "--cacert", str(trust),
            "-w", "%{http_code} %{size_download} %{time_total}"]
    if proxy:
        argv += ["--proxy", proxy_url(proxy)]
    c0 = procs.live_cpu_seconds(pid) if pid else 0.0
    out = lab.exec("client", argv + [f"https://{name}/bytes/{size}"], timeout=150)
    cpu = procs.live_cpu_seconds(pid) - c0 if pid else None
    code, got, secs = out.stdout.decode().split()
    ok = code == "200" and int(got) == size
    return {"ok": ok, "seconds": float(secs), "MB/s": round(size / float(secs) / 1e6, 1) if ok else 0.0,
            "cpu_ms_per_MB": round(cpu * 1000 / (size / 1e6), 3) if cpu is not None and ok else None}


def children_cpu() -> float:
    """CPU time of this process's finished children (the curl runs)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def requests(lab: Lab, name: str, proxy: int | None, trust: Path, count: int = SMALL, pid: int | None = None) -> dict:
    """``count`` requests on new connections; with them the CPU they cost the proxy (``pid``,
    its live threads), curl, and the origin (``web``, whose request threads exit: counted in ticks)."""
    cfg = lab.conf_dir / f"urls-{name}-{count}.txt"
    cfg.write_text("".join(f'url = "https://{name}/"\noutput = "/dev/null"\n' for _ in range(count)))
    argv = ["curl", "-s", "--http1.1", "-Z", "--parallel-max", str(PARALLEL), "--max-time", "30", "--cacert", str(trust),
            "-H", "Connection: close", "-w", "%{http_code} %{exitcode} %{errormsg}\n", "-K", str(cfg)]
    if proxy:
        argv += ["--proxy", proxy_url(proxy)]
    web = lab.procs["web"].pid
    c0 = procs.live_cpu_seconds(pid) if pid else 0.0
    k0, w0 = children_cpu(), procs.cpu_seconds(web)
    t0 = time.monotonic()
    out = lab.exec("client", argv, timeout=300)
    secs = time.monotonic() - t0
    cpu = procs.live_cpu_seconds(pid) - c0 if pid else None
    lines = out.stdout.decode().splitlines()
    good = sum(1 for l in lines if l.startswith("200 "))
    errors = sorted({l for l in lines if not l.startswith("200 ")})[:5]
    return {"ok": good == count, "done": good, "seconds": secs, "cpu_s": cpu, "errors": errors,
            "curl_cpu_s": children_cpu() - k0, "origin_cpu_s": procs.cpu_seconds(web) - w0}


def refuses_blocked(lab: Lab, port: int, trust: Path) -> bool:
    """The proxy answers a CONNECT to the blocked name with 403 (the policy really is in force)."""
    out = lab.exec("client", ["curl", "-s", "-o", "/dev/null", "--max-time", "10", "--cacert", str(trust),
                              "-w", "%{http_connect}", "--proxy", proxy_url(port), f"https://{sc.BLOCKED}/"], timeout=20)
    return out.stdout.decode().strip() == "403"


def merged(parts: list[dict]) -> dict:
    """One contender's request slices of a round, as if one run: requests over seconds, CPU over requests."""
    done = sum(p["done"] for p in parts)
    secs = sum(p["seconds"] for p in parts)

    def per_request(key: str) -> float | None:
        vals = [p[key] for p in parts]
        return None if None in vals else round(sum(vals) * 1000 / max(done, 1), 3)

    return {"ok": all(p["ok"] for p in parts), "done": done, "seconds": round(secs, 2), "req/s": round(done / secs, 1),
            "cpu_ms_per_request": per_request("cpu_s"), "curl_cpu_ms_per_request": per_request("curl_cpu_s"),
            "origin_cpu_ms_per_request": per_request("origin_cpu_s"),
            "errors": sorted({e for p in parts for e in p["errors"]})[:5],
            "slices": [round(p["done"] / p["seconds"], 1) for p in parts]}


def median(vals: list[dict], field: str, each: str) -> dict:
    """The measurement with the median ``field``, ``ok`` only if all were, and every value in ``each``."""
    out = dict(sorted(vals, key=lambda v: v[field])[len(vals) // 2])
    out["ok"] = all(v["ok"] for v in vals)
    out[each] = [v[field] for v in vals]
    return out


def alternating(order: list, passes: int):
    """``order`` ``passes`` times, every other pass reversed: nobody always first or after the same one."""
    for k in range(passes):
        yield from (order if k % 2 == 0 else order[::-1])


def measure_round(lab: Lab, order: list[dict], trust: Path, runs: dict) -> None:
    """One round: DOWNLOADS downloads and then CHUNKS slices of the requests per contender, each
    taken round-robin (every other pass in reverse order), so that a drift of the machine's
    speed, the largest noise here, reaches every contender alike.  A round's download is the
    median of its DOWNLOADS (one lasts a fraction of a second and swings with how the three
    processes' wake-ups interleave)."""
    got: dict[str, list] = {c["label"]: [] for c in order}
    for c in alternating(order, DOWNLOADS):
        got[c["label"]].append(download(lab, c["name"], c["port"], trust, pid=c["pid"]))
    parts: dict[str, list] = {c["label"]: [] for c in order}
    per = SMALL // CHUNKS
    for c in alternating(order, CHUNKS):
        parts[c["label"]].append(requests(lab, c["name"], c["port"], trust, count=per, pid=c["pid"]))
    for c in order:
        label = c["label"]
        d = median(got[label], "MB/s", "each")
        r = merged(parts[label])
        runs.setdefault(label, []).append({"download": d, "requests": r})
        cpu = f", proxy CPU {r['cpu_ms_per_request']} ms/request" if r["cpu_ms_per_request"] is not None else ""
        each = "/".join(f"{x:.0f}" for x in d["each"])
        print(f"  {label}: {d['MB/s']} MB/s (of {each}), {r['req/s']} req/s ({r['done']}/{per * CHUNKS} ok){cpu}", flush=True)
        for e in r["errors"]:
            print(f"    curl: {e}", flush=True)


def median_of(runs: list) -> dict:
    """The median round of each measurement (all rounds are kept in the JSON report)."""
    return {key: median([r[key] for r in runs], field, "runs") for key, field in (("download", "MB/s"), ("requests", "req/s"))}


def start_ztna(lab: Lab, name: str = "ztna") -> procs.Proc:
    """ztna with the lab's proxy config (decryption on, bank.example.com on the no-decrypt list),
    listening on PORTS[name]; the bench runs one for the spliced turns and one for the decrypted
    ones, as it runs one mitmproxy per mode."""
    toml = sc.proxy_toml(lab, mode="explicit", decrypt=True, port=PORTS[name],
                         extra_proxy=f'log = "{lab.log_dir / (name + "-conn.jsonl")}"\n')
    conf = lab.write_conf(f"bench-{name}.toml", toml)
    p = lab.start("proxy", procs.ztna_argv("proxy", "run", "--config", str(conf)), name=name)
    procs.wait_listening(p, sc.PROXY_IN, PORTS[name])
    return p


def start_squid(lab: Lab, *, same_job: bool = True) -> procs.Proc:
    """Squid as a CONNECT tunnel.  ``same_job``: what ztna does per connection too, the bench's
    reference for the goals: the same policy as ztna's bench config (client network, CONNECT
    to 443 only, blocked.example.com denied before *.example.com allowed, nothing else, no
    loopback or link-local destination) and one access-log line per connection, written to
    a file by Squid itself (``stdio:``), as ztna writes its JSON lines.  Without: client
    network and port only, and no log (``access_log none``)."""
    name = "squid" if same_job else "squid-bare"
    d = lab.root / name
    d.mkdir(exist_ok=True)
    os.chmod(d, 0o777)
    if same_job:
        rules = f"""acl blocked dstdomain {sc.BLOCKED}
acl allowed dstdomain .example.com
acl dst_loopback dst 127.0.0.0/8
acl dst_linklocal dst 169.254.0.0/16
http_access deny CONNECT !SSL_ports
http_access deny !clients
http_access deny blocked
http_access deny dst_loopback
http_access deny dst_linklocal
http_access allow allowed
http_access deny all
access_log stdio:{d}/access.log"""
    else:
        rules = """http_access deny CONNECT !SSL_ports
http_access allow clients
http_access deny all
access_log none"""
    conf = lab.write_conf(f"{name}.conf", f"""
http_port {sc.PROXY_IN}:{PORTS[name]}
acl clients src 198.51.100.0/24
acl SSL_ports port 443
acl CONNECT method CONNECT
{rules}
dns_nameservers {sc.DNS}
hosts_file none
visible_hostname proxy.lab
cache deny all
cache_log {d}/cache.log
pid_filename none
coredump_dir {d}
shutdown_lifetime 1 seconds
""")
    p = lab.start("proxy", ["squid", "-N", "-f", str(conf)], name=name)
    procs.wait_listening(p, sc.PROXY_IN, PORTS[name], timeout=30)
    return p


def start_mitm(lab: Lab, decrypt: bool) -> tuple[procs.Proc, Path]:
    confdir = lab.root / "mitm"
    confdir.mkdir(exist_ok=True)
    port = PORTS["mitm-decrypt" if decrypt else "mitm-splice"]
    argv = [str(ROOT / ".venv-bench/bin/mitmdump"), "-q", "--mode", "regular", "--listen-host", sc.PROXY_IN,
            "--listen-port", str(port), "--set", f"confdir={confdir}",
            "--set", f"ssl_verify_upstream_trusted_ca={lab.pki_dir / 'ca.pem'}",
            "--set", "stream_large_bodies=1m", "--set", "connection_strategy=lazy"]
    if not decrypt:
        argv += ["--ignore-hosts", ".*"]
    p = lab.start("proxy", argv, name="mitm-decrypt" if decrypt else "mitm-splice")
    procs.wait_listening(p, sc.PROXY_IN, port, timeout=60)
    return p, confdir / "mitmproxy-ca-cert.pem"


def main() -> int:
    lab = Lab("proxy-bench", sc.topology("proxy-bench", transparent=True))
    runs: dict = {}
    lab.up()
    try:
        sc.start_services(lab, mode="explicit")
        lab.stop("proxy")
        # The order: each pair a goal compares is adjacent (Squid and ztna splice, ztna decrypt
        # and mitmproxy decrypt), so a drift between turns touches their ratio least.
        contenders = [{"label": "direct (no proxy)", "name": SPLICED, "port": None, "pid": None}]
        ztna, ztna_dec = start_ztna(lab), start_ztna(lab, "ztna-decrypt")
        if shutil.which("squid"):
            bare = start_squid(lab, same_job=False)
            squid = start_squid(lab)
            contenders += [{"label": BARE_SQUID, "name": SPLICED, "port": PORTS["squid-bare"], "pid": bare.pid},
                           {"label": "squid splice", "name": SPLICED, "port": PORTS["squid"], "pid": squid.pid}]
        else:
            print("squid is not installed (scripts/install.sh --bench): skipped", flush=True)
        contenders += [{"label": "ztna splice", "name": SPLICED, "port": PORTS["ztna"], "pid": ztna.pid},
                       {"label": "ztna decrypt", "name": DECRYPTED, "port": PORTS["ztna-decrypt"], "pid": ztna_dec.pid}]
        extra = []
        if (ROOT / ".venv-bench/bin/mitmdump").exists():
            ms, _ = start_mitm(lab, decrypt=False)
            md, mitm_ca = start_mitm(lab, decrypt=True)
            extra = [mitm_ca]
            contenders += [{"label": "mitmproxy decrypt", "name": DECRYPTED, "port": PORTS["mitm-decrypt"], "pid": md.pid},
                           {"label": "mitmproxy splice", "name": SPLICED, "port": PORTS["mitm-splice"], "pid": ms.pid}]
        else:
            print("mitmproxy is not installed in .venv-bench: skipped", flush=True)
        trust = bundle(lab, extra)
        for c in contenders:
            if c["label"] in ("ztna splice", "squid splice") and not refuses_blocked(lab, c["port"], trust):
                raise SystemExit(f"{c['label']} does not refuse {sc.BLOCKED}: its policy is not the bench's")
        print("warm-up (caches filled, same for everyone)", flush=True)
        for c in contenders:
            requests(lab, c["name"], c["port"], trust, count=20)
            download(lab, c["name"], c["port"], trust, size=10 * 1024 * 1024)
        for i in range(REPEATS):
            # Every other round in reverse order: nobody always goes first or right after the same one.
            print(f"round {i + 1} of {REPEATS}", flush=True)
            measure_round(lab, contenders if i % 2 == 0 else contenders[::-1], trust, runs)
    finally:
        lab.down()
    shown = ["direct (no proxy)", "ztna splice", "ztna decrypt", "squid splice", BARE_SQUID, "mitmproxy splice",
             "mitmproxy decrypt"]
    results = [{"proxy": label, **median_of(runs[label])} for label in sorted(runs, key=shown.index)]
    report(results, runs)
    return 0 if all(r["download"]["ok"] and r["requests"]["ok"] for r in results) else 1


def paired(a_rounds: list, b_rounds: list, key: str) -> list[float]:
    """a/b for every pair of turns the two took in the same pass of a round (next to each other
    in the order, so the machine's drift, which moves both, cancels in the ratio), all rounds."""
    field = {"download": "each", "requests": "slices"}[key]
    return [x / y for ra, rb in zip(a_rounds, b_rounds) for x, y in zip(ra[key][field], rb[key][field]) if y]


def median_ci(vals: list[float], draws: int = 4000, seed: int = 5) -> tuple[float, float, float]:
    """The median of ``vals`` and a 95 % bootstrap interval for it (fixed seed: the same data
    gives the same interval)."""
    rnd = random.Random(seed)
    meds = sorted(statistics.median(rnd.choices(vals, k=len(vals))) for _ in range(draws))
    return statistics.median(vals), meds[int(draws * 0.025)], meds[int(draws * 0.975) - 1]


MIN_PAIRS = 8  # fewer pairs than this make no interval worth the name


def verdict(mid: float, lo: float, hi: float, goal: float, pairs: int) -> str:
    """Where the goal lies against the median pair and its 95 % interval."""
    if pairs < MIN_PAIRS:
        return f"{'met' if mid >= goal else 'NOT met'} (under {MIN_PAIRS} pairs: no interval to tell it from noise)"
    if lo >= goal:
        return "met, beyond noise"
    if mid >= goal:
        return "met at the median, within noise"
    if hi >= goal:
        return "below at the median, within noise"
    return "NOT met, beyond noise"


def report(results: list, rounds: dict) -> None:
    by = {r["proxy"]: r for r in results}
    print()
    print(f"median of {REPEATS} rounds (a round's download: the median of {DOWNLOADS}); CPU in ms, the median round's")
    print(f"{'proxy':<22} {'100 MB download':>16} {'proxy CPU/MB':>13} {str(SMALL) + ' new-conn requests':>24}"
          f" {'CPU/request: proxy':>19} {'curl':>5} {'origin':>6}")

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for r in results:
        d, q = r["download"], r["requests"]
        dl = f"{d['MB/s']:.1f} MB/s" if d["ok"] else "FAILED"
        rq = f"{q['req/s']:.1f} req/s" + ("" if q["ok"] else f" ({q['done']} ok)")
        print(f"{r['proxy']:<22} {dl:>16} {ms(d.get('cpu_ms_per_MB')):>13} {rq:>24} {ms(q['cpu_ms_per_request']):>19}"
              f" {ms(q['curl_cpu_ms_per_request']):>5} {ms(q['origin_cpu_ms_per_request']):>6}")
    for r in results:
        q = r["requests"]
        if r["proxy"] in ("ztna splice", "squid splice") and None not in (q["cpu_ms_per_request"], q["curl_cpu_ms_per_request"]):
            total = q["cpu_ms_per_request"] + q["curl_cpu_ms_per_request"] + q["origin_cpu_ms_per_request"]
            print(f"{r['proxy']}: curl, origin and proxy use {total:.2f} ms of CPU per request, so {os.cpu_count()} cores"
                  f" make at most {1000 * os.cpu_count() / total:.0f} req/s and curl's one thread at most"
                  f" {1000 / q['curl_cpu_ms_per_request']:.0f}; the proxy's share is {100 * q['cpu_ms_per_request'] / total:.0f} %")
    print()

    def ratio(a, b, key, field):
        if a in by and b in by and by[b][key][field]:
            return by[a][key][field] / by[b][key][field]
        return None

    verdicts = []
    for a, b, key, field, goal in (
        ("ztna splice", "squid splice", "download", "MB/s", 1.0),
        ("ztna splice", "squid splice", "requests", "req/s", 1.0),
        ("ztna splice", BARE_SQUID, "download", "MB/s", None),
        ("ztna splice", BARE_SQUID, "requests", "req/s", None),
        ("ztna decrypt", "mitmproxy decrypt", "download", "MB/s", 1.5),
        ("ztna decrypt", "mitmproxy decrypt", "requests", "req/s", 3.0),
        ("ztna splice", "mitmproxy splice", "download", "MB/s", None),
        ("ztna splice", "mitmproxy splice", "requests", "req/s", None),
    ):
        x = ratio(a, b, key, field)
        if x is None:
            continue
        pairs = paired(rounds[a], rounds[b], key)
        if not pairs:  # every turn of the reference failed: the table says so
            continue
        mid, lo, hi = median_ci(pairs)
        said = verdict(mid, lo, hi, goal, len(pairs)) if goal else None
        line = f"{a} / {b}, {key}: {mid:.2f}x (95% CI {lo:.2f}-{hi:.2f}, {len(pairs)} pairs of adjacent turns)"
        if said:
            line += f"; goal >= {goal:g}: {said}"
        print(f"{line}; medians of rounds {x:.2f}x")
        verdicts.append({"a": a, "b": b, "what": key, "paired_median": round(mid, 3), "ci95": [round(lo, 3), round(hi, 3)],
                         "pairs": len(pairs), "ratio_of_round_medians": round(x, 3), "goal": goal, "verdict": said})
    out = ROOT / "reports"
    out.mkdir(exist_ok=True)
    (out / "bench-proxy.json").write_text(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "size": SIZE,
                                                      "requests": SMALL, "parallel": PARALLEL, "repeats": REPEATS,
                                                      "request_chunks": CHUNKS,
                                                      "downloads_per_turn": DOWNLOADS,
                                                      "results": results, "ratios": verdicts}, indent=2))
    print(f"\nwritten: {out / 'bench-proxy.json'}")


if __name__ == "__main__":
    sys.exit(main())
