"""Agentless reverse-proxy benchmark (run by scripts/bench/agentless.sh, as root).

The agentless topology (browser -- inet -- gateway -- app), captures off, curl
(HTTP/1.1) on the browser host as the client, the lab web server (netns/tlsweb,
HTTPS with the internal CA's certificate) as the one origin for everyone.  In the
gateway's namespace, side by side:

* ztna: the gateway itself on 203.0.113.20:443, doing its whole job per request
  (session cookie check, policy, rewritten and forwarded headers, the identity
  header, an access-log line), the app found by private DNS and verified;
* nginx (nginx-light, ``worker_processes 1``) on :8443: TLS 1.3 towards the client,
  ``proxy_pass https://`` with upstream keep-alive, the app's certificate verified
  against the same internal CA, X-Forwarded-* set, an access log, buffering in
  memory only (16 x 64 KiB, ``proxy_max_temp_file_size 0``: it streams, as ztna does,
  instead of spooling a 100 MB body to disk);
* mitmproxy (``--mode reverse:https://app.mycompany.net``, ``stream_large_bodies``)
  on :9443, upstream verified against the internal CA.

Each round (``BENCH_REPEATS``, default 3; every other round in reverse order) every
contender does: a 100 MB download (the median of ``BENCH_DOWNLOADS``, default 3),
``BENCH_REQUESTS`` (default 1000) requests for 1 KiB on kept-alive connections (8 in
parallel), and ``BENCH_NEW`` (default 300) on new connections (``Connection: close``).
Reported: medians of rounds, the proxy's CPU per MB and per request, and the ratios
against the goals (ztna at least 2x mitmproxy on every figure, at least 0.5x nginx).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.agentless.auth import LocalPasswords  # noqa: E402
from gateway.agentless.cookies import Signer  # noqa: E402
from gateway.agentless.rewrite import SESSION_COOKIE  # noqa: E402
from gateway.agentless.users import UserStore  # noqa: E402
from netns import procs  # noqa: E402
from netns.lab import Lab  # noqa: E402
from netns.scenarios.agent import APP, APP_IP, GW_PUBLIC, PRIV_DNS  # noqa: E402
from netns.scenarios.agent import web_argv  # noqa: E402
from netns.scenarios.agentless import AgentlessScenario  # noqa: E402

SIZE = 100 * 1024 * 1024
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
DOWNLOADS = int(os.environ.get("BENCH_DOWNLOADS", "3"))
KEEP = int(os.environ.get("BENCH_REQUESTS", "1000"))
NEW = int(os.environ.get("BENCH_NEW", "300"))
PARALLEL = 8
PORTS = {"ztna": 443, "nginx": 8443, "mitmproxy": 9443}


class Rig(AgentlessScenario):
    name = "agentless-bench"
    clients = []  # no agent: only the browser side is measured


def start_nginx(lab: Lab) -> procs.Proc:
    d = lab.root / "nginx"
    d.mkdir(exist_ok=True)
    os.chmod(d, 0o777)
    pki = lab.pki_dir
    conf = lab.write_conf("nginx.conf", f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream app {{ server {APP_IP}:443; keepalive 32; }}
  server {{
    listen {GW_PUBLIC}:{PORTS['nginx']} ssl;
    server_name {APP};
    ssl_certificate {pki}/public-{APP}.pem;
    ssl_certificate_key {pki}/public-{APP}.key;
    ssl_protocols TLSv1.3;
    location / {{
      proxy_pass https://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-Forwarded-Host $host;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {pki}/internal-ca.pem;
      proxy_ssl_name {APP};
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
      proxy_buffers 16 64k;
      proxy_buffer_size 64k;
      proxy_max_temp_file_size 0;
      proxy_request_buffering off;
    }}
  }}
}}
""")
    p = lab.start("gateway", ["nginx", "-c", str(conf)], name="nginx")
    procs.wait_listening(p, GW_PUBLIC, PORTS["nginx"], timeout=20)
    return p


def start_mitm(lab: Lab) -> procs.Proc:
    confdir = lab.root / "mitm"
    confdir.mkdir(exist_ok=True)
    combined = lab.pki_dir / "mitm-app.pem"
    combined.write_bytes((lab.pki_dir / f"public-{APP}.pem").read_bytes() + (lab.pki_dir / f"public-{APP}.key").read_bytes())
    os.chmod(combined, 0o600)
    argv = [str(ROOT / ".venv-bench/bin/mitmdump"), "-q", "--mode", f"reverse:https://{APP}:443",
            "--listen-host", GW_PUBLIC, "--listen-port", str(PORTS["mitmproxy"]), "--set", f"confdir={confdir}",
            "--certs", f"{APP}={combined}", "--set", f"ssl_verify_upstream_trusted_ca={lab.pki_dir / 'internal-ca.pem'}",
            "--set", "keep_host_header=true", "--set", "stream_large_bodies=1m", "--set", "http2=false"]
    p = lab.start("gateway", argv, name="mitmproxy")
    procs.wait_listening(p, GW_PUBLIC, PORTS["mitmproxy"], timeout=60)
    return p


def tree_cpu(pid: int) -> float:
    """CPU of ``pid`` and its live children (nginx's worker is the master's child)."""
    total = procs.live_cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        total += sum(tree_cpu(int(k)) for k in kids)
    return total


def base_argv(lab: Lab, c: dict) -> list[str]:
    argv = ["curl", "-s", "--http1.1", "--cacert", str(lab.pki_dir / "ca.pem"),
            "--resolve", f"{APP}:{c['port']}:{GW_PUBLIC}"]
    if c["cookie"]:
        argv += ["-H", f"Cookie: {c['cookie']}"]
    return argv


def url(c: dict, path: str) -> str:
    return f"https://{APP}{'' if c['port'] == 443 else ':' + str(c['port'])}{path}"


def download(lab: Lab, c: dict) -> dict:
    argv = base_argv(lab, c) + ["-o", "/dev/null", "--max-time", "120", "-w", "%{http_code} %{size_download} %{time_total}",
                                url(c, f"/bytes/{SIZE}")]
    c0 = tree_cpu(c["pid"])
    out = lab.exec("browser", argv, timeout=150)
    cpu = tree_cpu(c["pid"]) - c0
    code, got, secs = out.stdout.decode().split()
    ok = code == "200" and int(got) == SIZE
    return {"ok": ok, "MB/s": round(SIZE / float(secs) / 1e6, 1) if ok else 0.0,
            "cpu_ms_per_MB": round(cpu * 1000 / (SIZE / 1e6), 3)}


def requests(lab: Lab, c: dict, count: int, new: bool) -> dict:
    cfg = lab.conf_dir / f"urls-{c['label']}-{count}.txt"
    cfg.write_text("".join(f'url = "{url(c, "/bytes/1024")}"\noutput = "/dev/null"\n' for _ in range(count)))
    argv = base_argv(lab, c) + ["-Z", "--parallel-max", str(PARALLEL), "--max-time", "30",
                                "-w", "%{http_code}\n", "-K", str(cfg)]
    if new:
        argv += ["-H", "Connection: close"]
    c0 = tree_cpu(c["pid"])
    t0 = time.monotonic()
    out = lab.exec("browser", argv, timeout=300)
    secs = time.monotonic() - t0
    cpu = tree_cpu(c["pid"]) - c0
    good = out.stdout.decode().split().count("200")
    return {"ok": good == count, "done": good, "req/s": round(good / secs, 1),
            "cpu_ms_per_request": round(cpu * 1000 / max(good, 1), 3)}


def main() -> int:
    sc = Rig()
    lab = Lab(sc.name, sc.topology())
    runs: dict = {}
    lab.up()
    try:
        sc.start(lab)
        # The origin answers with TCP_NODELAY: Python's http.server writes a response's head and
        # body apart, and Nagle with delayed ACKs held every kept-alive answer ~40 ms for everyone.
        lab.stop("web-app")
        procs.wait_listening(lab.start("app", web_argv(APP_IP, nodelay=True, cert=(APP, lab.pki_dir / f"{APP}.pem",
                                                                              lab.pki_dir / f"{APP}.key")),
                                       name="web-app"), APP_IP, 443)
        lab.set_resolvers("gateway", [PRIV_DNS])  # mitmproxy looks the app up like the gateway: private DNS
        stamp = LocalPasswords(UserStore(lab.conf_dir / "gateway-users.json")).stamp("alice") or ""
        token, _ = Signer((lab.conf_dir / "gateway-session.key").read_bytes()).session("alice", APP, time.time(), 3600,
                                                                                        stamp)
        contenders = [
            {"label": "ztna", "port": PORTS["ztna"], "pid": lab.procs["gateway"].pid, "cookie": f"{SESSION_COOKIE}={token}"},
            {"label": "nginx", "port": PORTS["nginx"], "pid": start_nginx(lab).pid, "cookie": None},
        ]
        if (ROOT / ".venv-bench/bin/mitmdump").exists():
            contenders.append({"label": "mitmproxy", "port": PORTS["mitmproxy"], "pid": start_mitm(lab).pid, "cookie": None})
        for c in contenders:  # warm-up, and proof each one serves the app through a verified upstream
            r = lab.exec("browser", base_argv(lab, c) + [url(c, "/")])
            if "hello from app.mycompany.net over https" not in r.stdout.decode():
                raise SystemExit(f"{c['label']} does not serve the app: {r.stdout[-300:]!r} {r.stderr[-300:]!r}")
            requests(lab, c, 50, False)
        for i in range(REPEATS):
            order = contenders if i % 2 == 0 else contenders[::-1]
            print(f"round {i + 1} of {REPEATS}", flush=True)
            for c in order:
                d = [download(lab, c) for _ in range(DOWNLOADS)]
                d = sorted(d, key=lambda x: x["MB/s"])[len(d) // 2] | {"ok": all(x["ok"] for x in d)}
                k = requests(lab, c, KEEP, False)
                n = requests(lab, c, NEW, True)
                runs.setdefault(c["label"], []).append({"download": d, "keep-alive": k, "new-conn": n})
                print(f"  {c['label']}: {d['MB/s']} MB/s ({d['cpu_ms_per_MB']} ms CPU/MB), keep-alive {k['req/s']} req/s "
                      f"({k['cpu_ms_per_request']} ms/req), new connections {n['req/s']} req/s "
                      f"({n['cpu_ms_per_request']} ms/req)", flush=True)
    finally:
        lab.down()
    return report(runs)


def med(rounds: list, key: str, field: str) -> float:
    return statistics.median(r[key][field] for r in rounds)


def report(runs: dict) -> int:
    figures = (("download", "MB/s", "cpu_ms_per_MB", "100 MB download"), ("keep-alive", "req/s", "cpu_ms_per_request",
               "1 KiB keep-alive"), ("new-conn", "req/s", "cpu_ms_per_request", "1 KiB new connections"))
    print(f"\nmedians of {REPEATS} rounds; proxy CPU per MB / per request in ms")
    print(f"{'proxy':<10}" + "".join(f"{title:>34}" for *_, title in figures))
    table = {}
    for label, rounds in runs.items():
        cells = []
        for key, field, cpu, _ in figures:
            table[(label, key)] = (med(rounds, key, field), med(rounds, key, cpu))
            cells.append(f"{table[(label, key)][0]:.1f} {field} ({table[(label, key)][1]:.2f} ms)")
        print(f"{label:<10}" + "".join(f"{c:>34}" for c in cells))
    print()
    verdicts = []
    for other, goal in (("mitmproxy", 2.0), ("nginx", 0.5)):
        if other not in runs:
            continue
        for key, field, cpu, title in figures:
            x = table[("ztna", key)][0] / table[(other, key)][0]
            c = table[(other, key)][1] / table[("ztna", key)][1]
            said = "met" if x >= goal else "NOT met"
            print(f"ztna / {other}, {title}: {x:.2f}x ({field}); CPU: {other} uses {c:.2f}x ztna's; goal >= {goal:g}x: {said}")
            verdicts.append({"vs": other, "figure": key, "ratio": round(x, 3), "cpu_ratio": round(c, 3), "goal": goal,
                             "met": x >= goal})
    out = ROOT / "reports"
    out.mkdir(exist_ok=True)
    (out / "bench-agentless.json").write_text(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "size": SIZE,
                                                          "keep_alive_requests": KEEP, "new_connections": NEW,
                                                          "parallel": PARALLEL, "repeats": REPEATS, "runs": runs,
                                                          "ratios": verdicts}, indent=2))
    print(f"\nwritten: {out / 'bench-agentless.json'}")
    ok = all(r[k]["ok"] for rounds in runs.values() for r in rounds for k in ("download", "keep-alive", "new-conn"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
