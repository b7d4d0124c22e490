"""The PoP's fairness measurement, shared by the agent path (test_pop_fairness.py) and the agentless
stream path (test_pop_stream_fairness.py): a baseline of another user's requests, then one reader that
reads a little of a large download and stops reading for PAUSE seconds with its connection open, the
other user's requests measured again meanwhile, the PoP's VmRSS sampled throughout."""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from netns import procs

PAUSE = 30.0          # seconds the reader does not call recv
READ_FIRST = 4 << 20  # bytes it reads before the pause
MIB = 1 << 20
# The PoP's defaults (docs/pop.md): window 1 MiB per channel, queue_limit 4 MiB per agent connection.  Two users,
# so the PoP can hold at most about 2 x (1 + 4) MiB for them; the bound leaves room for Python's own churn.
RSS_SLACK = 64 * MIB

# The reader: TLS to the app's name, GET a 500 MB body (with a Cookie header when given one), read READ_FIRST
# bytes, stop reading for PAUSE seconds with the connection open, then close.  One JSON line per phase on stdout.
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


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def connector_tunnels(lab, pop: str) -> list[str]:
    out = lab.exec("gateway", ["ss", "-Htn", "state", "established", "dst", pop]).stdout.decode()
    return sorted(line.split()[-2] for line in out.splitlines() if line.strip())


def figures(xs: list[float]) -> str:
    s = sorted(xs)
    p95 = s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]
    return f"median {statistics.median(s) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, max {s[-1] * 1000:.1f} ms (n={len(s)})"


def phase(log: Path, name: str) -> dict | None:
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            if d.get("phase") == name:
                return d
    return None


@dataclass
class PauseRun:
    first: dict
    closing: dict | None
    still_paused: bool
    base: list = field(default_factory=list)       # the other user's request times before the pause
    during: list = field(default_factory=list)     # (status, seconds) during it
    rss0: int = 0
    rss_max: int = 0
    tunnels: set = field(default_factory=set)      # connector tunnels seen during the pause
    queued: list = field(default_factory=list)     # the reader's Recv-Q samples


def pause_and_probe(lab, *, pop: str, app: str, reader_host: str, probe, reader_args: tuple = ()) -> PauseRun:
    """``probe()`` is one request of the other user: (status, seconds)."""
    pop_pid = lab.procs["pop"].pid
    assert b"pop" in Path(f"/proc/{pop_pid}/cmdline").read_bytes()  # the PoP itself, not a wrapper
    base, base_rss = [], []
    for _ in range(12):
        t = time.monotonic()
        status, took = probe()
        assert status == "200", status
        base.append(took)
        base_rss.append(rss(pop_pid))
        time.sleep(max(0.0, 0.5 - (time.monotonic() - t)))
    reader = lab.start(reader_host, [sys.executable, "-c", READER, app, str(lab.pki_dir / "ca.pem"), str(READ_FIRST),
                                     str(PAUSE), *reader_args], name=f"paused-reader-{reader_host}")
    log = Path(reader.log)
    procs.wait_until(lambda: phase(log, "paused") or not reader.alive(), timeout=60, what="the reader's first 4 MB")
    first = phase(log, "paused")
    assert first, log.read_text(errors="replace")[-500:]
    assert first["status"].startswith("HTTP/1.1 200") and first["read"] >= READ_FIRST, first
    run = PauseRun(first, None, False, base=base, rss0=max(base_rss))
    t_pause = time.monotonic()
    rss_during = []
    while time.monotonic() - t_pause < PAUSE - 1.0:
        t = time.monotonic()
        run.during.append(probe())
        rss_during.append(rss(pop_pid))
        run.tunnels.add(tuple(connector_tunnels(lab, pop)))
        if len(run.queued) < 3:  # the reader's socket: bytes arrived and left unread (Recv-Q), the connection up
            out = lab.exec(reader_host, ["ss", "-Htn", "state", "established", "dport", "443"]).stdout.decode()
            run.queued.append(max((int(line.split()[0]) for line in out.splitlines() if line.strip()), default=0))
        time.sleep(max(0.0, 0.5 - (time.monotonic() - t)))
    run.rss_max = max(rss_during)
    run.still_paused = phase(log, "closing") is None and reader.alive()
    procs.wait_until(lambda: not reader.alive(), timeout=15, what="the reader to close and exit")
    run.closing = phase(log, "closing")
    return run


def check(run: PauseRun, *, reader: str, other: str) -> None:
    """Print the figures, then assert: the reader really paused, every request of the other user got 200
    within max(1 s, 20x its baseline median), and the PoP's RSS stayed under baseline + RSS_SLACK."""
    bound = max(1.0, 20 * statistics.median(run.base))
    times = [t for _, t in run.during]
    print(f"\n{reader} read {run.first['read']} bytes in {run.first['seconds']} s, then paused {PAUSE:.0f} s; "
          f"the socket's Recv-Q during the pause: {run.queued}")
    print(f"{other} baseline: {figures(run.base)}")
    print(f"{other} during the pause: {figures(times)}; bound {bound * 1000:.0f} ms")
    print(f"PoP VmRSS: baseline {run.rss0 / MIB:.1f} MiB, max during the pause {run.rss_max / MIB:.1f} MiB "
          f"(+{(run.rss_max - run.rss0) / MIB:.1f} MiB; bound +{RSS_SLACK // MIB} MiB)")
    print(f"connector tunnels seen during the pause: {sorted(run.tunnels)}")
    assert run.still_paused, "the reader was not paused for the whole measurement"
    assert run.closing and run.closing["read"] == run.first["read"], run.closing  # it read nothing meanwhile
    assert len(run.during) >= 40, len(run.during)
    assert all(s == "200" for s, _ in run.during), [s for s, _ in run.during if s != "200"]
    assert max(times) <= bound, (max(times), bound)
    assert run.rss_max <= run.rss0 + RSS_SLACK, (run.rss_max, run.rss0)
    assert max(run.queued) > 0, run.queued  # its data sat unread in its socket during the pause


def with_bob(base, name: str):
    """``base`` (a PoP scenario) with bob allowed to the app at the PoP too, so alice and bob share a connector."""
    from netns.scenarios.pop_agent import APP

    def pop_policy(self) -> str:
        return f"alice = [\"{APP}\"]\nbob = [\"{APP}\"]\n"

    return type(f"{base.__name__}WithBob", (base,), {"name": name, "pop_policy": pop_policy,
                                                      "__doc__": f"{base.__name__} with bob allowed at the PoP"})


def connector_lab(sc):
    """A module fixture's body: ``sc`` started, its gateway's connector tunnel at the PoP; yields the lab."""
    from netns.lab import started

    with started(sc) as lab:
        sc.start_gateway(lab)
        lab.sc = sc
        yield lab
