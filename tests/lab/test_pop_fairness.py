"""Multiplexing and fairness through the PoP (issue 15): two users' flows share one connector tunnel, each
channel with its own credit.  alice starts a large download from the app and then stops reading for 30 s;
bob's curl https://app/ every 0.5 s keeps answering 200 quickly, and the PoP's memory stays bounded."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import pytest

from netns import procs
from netns.lab import started
from netns.scenarios.pop_agent import APP, POP, PopAgentScenario

PAUSE = 30.0          # seconds alice's reader does not call recv
READ_FIRST = 4 << 20  # bytes it reads before the pause
MIB = 1 << 20
# The PoP's defaults (docs/pop.md): window 1 MiB per channel, queue_limit 4 MiB per agent connection.  Two agents,
# so the PoP can hold at most about 2 x (1 + 4) MiB for them; the bound leaves room for Python's own churn.
RSS_SLACK = 64 * MIB

# alice's reader: TLS to the app's name through her agent, GET a 500 MB body, read READ_FIRST bytes, stop reading
# for PAUSE seconds with the connection open, then close.  One JSON line per phase on stdout.
READER = r"""
import json, socket, ssl, sys, time
app, ca, first, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
cookie = f"Cookie: {sys.argv[5]}\r\n" if len(sys.argv) > 5 else ""  # agentless: the PoP's session cookie
ctx = ssl.create_default_context(cafile=ca)
t0 = time.monotonic()
s = ctx.wrap_socket(socket.create_connection((app, 443), timeout=20), server_hostname=app)
s.sendall(f"GET /bytes/500000000 HTTP/1.1\r\nHost: {app}\r\n{cookie}Connection: close\r\n\r\n".encode())
got, head = 0, b""
while got < first:
    b = s.recv(65536)
    if not b:
        break
    if not head:
        head = b.split(b"\r\n", 1)[0]
    got += len(b)
print(json.dumps({"phase": "paused", "read": got, "status": head.decode(errors="replace"),
                  "seconds": round(time.monotonic() - t0, 3)}), flush=True)
time.sleep(pause)
print(json.dumps({"phase": "closing", "read": got}), flush=True)
s.close()
"""


class Rig(PopAgentScenario):
    """pop-agent with bob allowed at the PoP too: both agents' flows go through the one connector tunnel."""

    name = "pop-fairness"

    def pop_policy(self) -> str:
        return f"alice = [\"{APP}\"]\nbob = [\"{APP}\"]\n"


@pytest.fixture(scope="module")
def lab():
    sc = Rig()
    with started(sc) as lab:
        lab.start("gateway", procs.ztna_argv("gateway", "run", "--config", str(sc.gw_conf)), name="gateway")
        poplog = Path(lab.procs["pop"].log)
        procs.wait_until(lambda: f"publishes {APP}" in poplog.read_text(errors="replace"), timeout=15,
                         what="the connector tunnel to reach the PoP")
        yield lab


def curl(lab, host: str) -> tuple[str, float]:
    """(HTTP status, curl's time_total in seconds) for https://app/ from ``host``."""
    r = lab.exec(host, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "--max-time", "10",
                        "--cacert", str(lab.pki_dir / "ca.pem"), f"https://{APP}/"], timeout=20)
    parts = r.stdout.decode().split()
    if r.returncode != 0 or len(parts) != 2:
        return f"rc={r.returncode} {r.stderr.decode().strip()[:120]}", float("inf")
    return parts[0], float(parts[1])


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def connector_tunnels(lab) -> list[str]:
    out = lab.exec("gateway", ["ss", "-Htn", "state", "established", "dst", POP]).stdout.decode()
    return sorted(line.split()[-2] for line in out.splitlines() if line.strip())


def figures(xs: list[float]) -> str:
    s = sorted(xs)
    p95 = s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]
    return f"median {statistics.median(s) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, max {s[-1] * 1000:.1f} ms (n={len(s)})"


def phase(log: Path, name: str) -> dict | None:
    import json

    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            if d.get("phase") == name:
                return d
    return None


def test_a_paused_reader_stalls_only_its_own_channel(lab):
    pop_pid = lab.procs["pop"].pid
    assert b"pop" in Path(f"/proc/{pop_pid}/cmdline").read_bytes()  # the PoP itself, not a wrapper
    # Both users' tunnels up, both allowed: one curl each.
    assert curl(lab, "client")[0] == "200"
    assert curl(lab, "client2")[0] == "200"
    assert len(connector_tunnels(lab)) == 1

    # Baseline: bob every 0.5 s, nothing else going on.
    base, base_rss = [], []
    for _ in range(12):
        t = time.monotonic()
        status, took = curl(lab, "client2")
        assert status == "200", status
        base.append(took)
        base_rss.append(rss(pop_pid))
        time.sleep(max(0.0, 0.5 - (time.monotonic() - t)))
    rss0 = max(base_rss)

    # alice's download, then her pause with the connection open.
    reader = lab.start("client", [sys.executable, "-c", READER, APP, str(lab.pki_dir / "ca.pem"), str(READ_FIRST),
                                  str(PAUSE)], name="paused-reader")
    log = Path(reader.log)
    procs.wait_until(lambda: phase(log, "paused") or not reader.alive(), timeout=60, what="alice's first 4 MB")
    first = phase(log, "paused")
    assert first, log.read_text(errors="replace")[-500:]
    assert first["status"].startswith("HTTP/1.1 200") and first["read"] >= READ_FIRST, first
    t_pause = time.monotonic()
    during, during_rss, tunnels, queued = [], [], set(), []
    while time.monotonic() - t_pause < PAUSE - 1.0:
        t = time.monotonic()
        during.append(curl(lab, "client2"))
        during_rss.append(rss(pop_pid))
        tunnels.add(tuple(connector_tunnels(lab)))
        if len(queued) < 3:  # alice's socket: bytes arrived and left unread (Recv-Q), the connection still up
            out = lab.exec("client", ["ss", "-Htn", "state", "established", "dport", "443"]).stdout.decode()
            queued.append(max((int(line.split()[0]) for line in out.splitlines() if line.strip()), default=0))
        time.sleep(max(0.0, 0.5 - (time.monotonic() - t)))
    still_paused = phase(log, "closing") is None and reader.alive()
    procs.wait_until(lambda: not reader.alive(), timeout=15, what="alice's reader to close and exit")
    closing = phase(log, "closing")

    base_med = statistics.median(base)
    bound = max(1.0, 20 * base_med)
    times = [t for _, t in during]
    rss_max = max(during_rss)
    print(f"\nalice read {first['read']} bytes in {first['seconds']} s, then paused {PAUSE:.0f} s; "
          f"her socket's Recv-Q during the pause: {queued}")
    print(f"bob baseline: {figures(base)}")
    print(f"bob during the pause: {figures(times)}; bound {bound * 1000:.0f} ms")
    print(f"PoP VmRSS: baseline {rss0 / MIB:.1f} MiB, max during the pause {rss_max / MIB:.1f} MiB "
          f"(+{(rss_max - rss0) / MIB:.1f} MiB; bound +{RSS_SLACK // MIB} MiB)")
    print(f"connector tunnels seen during the pause: {sorted(tunnels)}")

    assert still_paused, "alice's reader was not paused for the whole measurement"
    assert closing and closing["read"] == first["read"], closing  # she really read nothing during the pause
    assert len(during) >= 40, len(during)
    assert all(s == "200" for s, _ in during), [s for s, _ in during if s != "200"]
    assert max(times) <= bound, (max(times), bound)
    assert rss_max <= rss0 + RSS_SLACK, (rss_max, rss0)
    assert len(tunnels) == 1 and len(next(iter(tunnels))) == 1, tunnels  # one connector tunnel, shared
    assert max(queued) > 0, queued  # alice's data sat unread in her socket during the pause
    assert lab.procs["pop"].alive() and lab.procs["gateway"].alive()
