"""Forward-proxy benchmark in the sealed lab (run by scripts/bench/proxy.sh, as root).

The proxy-explicit topology (client -- proxy -- web/dns), real curl as the
client, the lab web server (netns/tlswire) as origin.  For each proxy, once:
a 100 MB HTTPS download, and 500 small HTTPS requests each on a new
connection (``Connection: close``, 8 in parallel), so every request costs a
CONNECT and a TLS handshake (two when the proxy decrypts).

Contenders: no proxy (routed through the proxy host), ztna splice and decrypt,
Squid (CONNECT tunnel: bytes copied untouched, no bumping), mitmproxy splice
(ignore_hosts) and decrypt (stream_large_bodies so it does not buffer 100 MB).
"""

from __future__ import annotations

import json
import os
import shutil
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
PARALLEL = 8
PROXY_URL = f"http://{sc.PROXY_IN}:{sc.EXPLICIT_PORT}"
SPLICED, DECRYPTED = sc.BANK, sc.DECRYPT


def bundle(lab: Lab, extra: list[Path]) -> Path:
    path = lab.pki_dir / "bench-trust.pem"
    path.write_bytes(b"".join(p.read_bytes() for p in [lab.pki_dir / "ca.pem", lab.pki_dir / "proxy-ca.pem", *extra] if p.exists()))
    return path


def download(lab: Lab, name: str, proxy: bool, trust: Path) -> dict:
    argv = ["curl", "-s", "-o", "/dev/null", "--max-time", "120", "--cacert", str(trust),
            "-w", "%{http_code} %{size_download} %{time_total}"]
    if proxy:
        argv += ["--proxy", PROXY_URL]
    out = lab.exec("client", argv + [f"https://{name}/bytes/{SIZE}"], timeout=150)
    code, size, secs = out.stdout.decode().split()
    ok = code == "200" and int(size) == SIZE
    return {"ok": ok, "seconds": float(secs), "MB/s": round(SIZE / float(secs) / 1e6, 1) if ok else 0.0}


def requests(lab: Lab, name: str, proxy: bool, trust: Path) -> dict:
    cfg = lab.conf_dir / f"urls-{name}.txt"
    cfg.write_text("".join(f'url = "https://{name}/"\noutput = "/dev/null"\n' for _ in range(SMALL)))
    argv = ["curl", "-s", "-Z", "--parallel-max", str(PARALLEL), "--max-time", "30", "--cacert", str(trust),
            "-H", "Connection: close", "-w", "%{http_code} %{exitcode} %{errormsg}\n", "-K", str(cfg)]
    if proxy:
        argv += ["--proxy", PROXY_URL]
    t0 = time.monotonic()
    out = lab.exec("client", argv, timeout=300)
    secs = time.monotonic() - t0
    lines = out.stdout.decode().splitlines()
    good = sum(1 for l in lines if l.startswith("200 "))
    errors = sorted({l for l in lines if not l.startswith("200 ")})[:5]
    return {"ok": good == SMALL, "done": good, "seconds": round(secs, 2), "req/s": round(good / secs, 1), "errors": errors}


def measure(lab: Lab, label: str, name: str, proxy: bool, trust: Path, results: list) -> None:
    print(f"  {label}: 100 MB download ...", flush=True)
    d = download(lab, name, proxy, trust)
    print(f"  {label}: {SMALL} new-connection requests ...", flush=True)
    r = requests(lab, name, proxy, trust)
    results.append({"proxy": label, "download": d, "requests": r})
    print(f"  {label}: {d['MB/s']} MB/s, {r['req/s']} req/s ({r['done']}/{SMALL} ok)", flush=True)
    for e in r["errors"]:
        print(f"    curl: {e}", flush=True)


def start_ztna(lab: Lab, decrypt: bool) -> procs.Proc:
    conf = lab.write_conf("bench-ztna.toml", sc.proxy_toml(lab, mode="explicit", decrypt=decrypt,
                                                            extra_proxy=f'log = "{lab.log_dir / "ztna-conn.jsonl"}"\n'))
    p = lab.start("proxy", procs.ztna_argv("proxy", "run", "--config", str(conf)), name="ztna")
    procs.wait_listening(p, sc.PROXY_IN, sc.EXPLICIT_PORT)
    return p


def start_squid(lab: Lab) -> procs.Proc:
    d = lab.root / "squid"
    d.mkdir(exist_ok=True)
    os.chmod(d, 0o777)
    conf = lab.write_conf("squid.conf", f"""
http_port {sc.PROXY_IN}:{sc.EXPLICIT_PORT}
acl clients src 198.51.100.0/24
acl SSL_ports port 443
acl CONNECT method CONNECT
http_access deny CONNECT !SSL_ports
http_access allow clients
http_access deny all
dns_nameservers {sc.DNS}
hosts_file none
visible_hostname proxy.lab
cache deny all
access_log none
cache_log {d}/cache.log
pid_filename none
coredump_dir {d}
shutdown_lifetime 1 seconds
""")
    p = lab.start("proxy", ["squid", "-N", "-f", str(conf)], name="squid")
    procs.wait_listening(p, sc.PROXY_IN, sc.EXPLICIT_PORT, timeout=30)
    return p


def start_mitm(lab: Lab, decrypt: bool) -> tuple[procs.Proc, Path]:
    confdir = lab.root / "mitm"
    confdir.mkdir(exist_ok=True)
    argv = [str(ROOT / ".venv-bench/bin/mitmdump"), "-q", "--mode", "regular", "--listen-host", sc.PROXY_IN,
            "--listen-port", str(sc.EXPLICIT_PORT), "--set", f"confdir={confdir}",
            "--set", f"ssl_verify_upstream_trusted_ca={lab.pki_dir / 'ca.pem'}",
            "--set", "stream_large_bodies=1m", "--set", "connection_strategy=lazy"]
    if not decrypt:
        argv += ["--ignore-hosts", ".*"]
    p = lab.start("proxy", argv, name="mitm-decrypt" if decrypt else "mitm-splice")
    procs.wait_listening(p, sc.PROXY_IN, sc.EXPLICIT_PORT, timeout=60)
    return p, confdir / "mitmproxy-ca-cert.pem"


def main() -> int:
    lab = Lab("proxy-bench", sc.topology("proxy-bench", transparent=True))
    results: list = []
    lab.up()
    try:
        sc.start_services(lab, mode="explicit")
        lab.stop("proxy")
        trust = bundle(lab, [])
        print("no proxy (routed through the proxy host)", flush=True)
        measure(lab, "direct (no proxy)", SPLICED, False, trust, results)
        print("ztna", flush=True)
        start_ztna(lab, decrypt=True)
        measure(lab, "ztna splice", SPLICED, True, trust, results)
        measure(lab, "ztna decrypt", DECRYPTED, True, trust, results)
        lab.stop("ztna")
        if shutil.which("squid"):
            print("squid", flush=True)
            start_squid(lab)
            measure(lab, "squid splice", SPLICED, True, trust, results)
            lab.stop("squid")
        else:
            print("squid is not installed (scripts/install.sh --bench): skipped", flush=True)
        if (ROOT / ".venv-bench/bin/mitmdump").exists():
            print("mitmproxy", flush=True)
            start_mitm(lab, decrypt=False)
            measure(lab, "mitmproxy splice", SPLICED, True, trust, results)
            lab.stop("mitm-splice")
            _, mitm_ca = start_mitm(lab, decrypt=True)
            trust = bundle(lab, [mitm_ca])
            measure(lab, "mitmproxy decrypt", DECRYPTED, True, trust, results)
            lab.stop("mitm-decrypt")
        else:
            print("mitmproxy is not installed in .venv-bench: skipped", flush=True)
    finally:
        lab.down()
    report(results)
    return 0 if all(r["download"]["ok"] and r["requests"]["ok"] for r in results) else 1


def report(results: list) -> None:
    by = {r["proxy"]: r for r in results}
    print()
    print(f"{'proxy':<22} {'100 MB download':>16} {str(SMALL) + ' new-conn requests':>24}")
    for r in results:
        d, q = r["download"], r["requests"]
        dl = f"{d['MB/s']:.1f} MB/s" if d["ok"] else "FAILED"
        rq = f"{q['req/s']:.1f} req/s" + ("" if q["ok"] else f" ({q['done']} ok)")
        print(f"{r['proxy']:<22} {dl:>16} {rq:>24}")
    print()

    def ratio(a, b, key, field):
        if a in by and b in by and by[b][key][field]:
            return by[a][key][field] / by[b][key][field]
        return None

    for a, b, key, field, goal in (
        ("ztna splice", "squid splice", "download", "MB/s", 1.0),
        ("ztna splice", "squid splice", "requests", "req/s", 1.0),
        ("ztna decrypt", "mitmproxy decrypt", "download", "MB/s", 1.5),
        ("ztna decrypt", "mitmproxy decrypt", "requests", "req/s", 3.0),
        ("ztna splice", "mitmproxy splice", "download", "MB/s", None),
        ("ztna splice", "mitmproxy splice", "requests", "req/s", None),
    ):
        x = ratio(a, b, key, field)
        if x is not None:
            target = f" (goal >= {goal:g}: {'met' if x >= goal else 'NOT met'})" if goal else ""
            print(f"{a} / {b}, {key}: {x:.2f}x{target}")
    out = ROOT / "reports"
    out.mkdir(exist_ok=True)
    (out / "bench-proxy.json").write_text(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "size": SIZE,
                                                      "requests": SMALL, "parallel": PARALLEL, "results": results}, indent=2))
    print(f"\nwritten: {out / 'bench-proxy.json'}")


if __name__ == "__main__":
    sys.exit(main())
