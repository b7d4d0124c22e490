"""Fairness on the agentless path through the PoP (issue 15): browsers' HTTPS connections become ``stream``
channels of the one connector tunnel.  alice (signed in at the PoP) starts a large download and stops reading
for 30 s; bob's signed-in requests through the same connector keep answering 200 quickly, and the PoP's
memory stays bounded.  The same measurement as tests/lab/test_pop_fairness.py, on the stream channels."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import pytest

from gateway.agentless.rewrite import SESSION_COOKIE
from netns import procs
from netns.lab import started
from netns.scenarios.agentless import USERS
from netns.scenarios.pop_agentless import APP, POP, PopAgentlessScenario
from test_pop_fairness import MIB, PAUSE, READ_FIRST, READER, RSS_SLACK, figures, phase, rss


class Rig(PopAgentlessScenario):
    """pop-agentless with bob allowed at the PoP too (the gateway allows him already)."""

    name = "pop-stream-fairness"

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
        lab.sc = sc
        yield lab


def cookie(jar: str) -> str:
    """The PoP's session cookie from a curl cookie jar, as ``name=value``."""
    for line in Path(jar).read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 7 and parts[5] == SESSION_COOKIE:
            return f"{parts[5]}={parts[6]}"
    raise AssertionError(f"no {SESSION_COOKIE} in {jar}")


def curl(lab, host: str, jar: str) -> tuple[str, float]:
    r = lab.exec(host, ["curl", "-sS", "-o", "/dev/null", "-b", jar, "-w", "%{http_code} %{time_total}",
                        "--max-time", "10", "--cacert", str(lab.pki_dir / "ca.pem"), f"https://{APP}/"], timeout=20)
    parts = r.stdout.decode().split()
    if r.returncode != 0 or len(parts) != 2:
        return f"rc={r.returncode} {r.stderr.decode().strip()[:120]}", float("inf")
    return parts[0], float(parts[1])


def connector_tunnels(lab) -> list[str]:
    out = lab.exec("gateway", ["ss", "-Htn", "state", "established", "dst", POP]).stdout.decode()
    return sorted(line.split()[-2] for line in out.splitlines() if line.strip())


def test_a_paused_browser_stalls_only_its_own_stream(lab):
    sc = lab.sc
    pop_pid = lab.procs["pop"].pid
    jar_a, jar_d = str(lab.conf_dir / "fair-alice.txt"), str(lab.conf_dir / "fair-bob.txt")
    rc, out, err = sc.sign_in(lab, "alice", USERS["alice"], jar_a)
    assert rc == 0 and out.rstrip().endswith(" 200"), (out[-300:], err)
    rc, out, err = sc.sign_in(lab, "bob", USERS["bob"], jar_d, host="browser2")
    assert rc == 0 and out.rstrip().endswith(" 200"), (out[-300:], err)
    tunnels0 = connector_tunnels(lab)

    base, base_rss = [], []
    for _ in range(12):
        t = time.monotonic()
        status, took = curl(lab, "browser2", jar_d)
        assert status == "200", status
        base.append(took)
        base_rss.append(rss(pop_pid))
        time.sleep(max(0.0, 0.5 - (time.monotonic() - t)))
    rss0 = max(base_rss)

    reader = lab.start("browser", [sys.executable, "-c", READER, APP, str(lab.pki_dir / "ca.pem"), str(READ_FIRST),
                                   str(PAUSE), cookie(jar_a)], name="paused-browser")
    log = Path(reader.log)
    procs.wait_until(lambda: phase(log, "paused") or not reader.alive(), timeout=60, what="alice's first 4 MB")
    first = phase(log, "paused")
    assert first, log.read_text(errors="replace")[-500:]
    assert first["status"].startswith("HTTP/1.1 200") and first["read"] >= READ_FIRST, first
    t_pause = time.monotonic()
    during, during_rss, tunnels, queued = [], [], set(), []
    while time.monotonic() - t_pause < PAUSE - 1.0:
        t = time.monotonic()
        during.append(curl(lab, "browser2", jar_d))
        during_rss.append(rss(pop_pid))
        tunnels.add(tuple(connector_tunnels(lab)))
        if len(queued) < 3:
            out = lab.exec("browser", ["ss", "-Htn", "state", "established", "dport", "443"]).stdout.decode()
            queued.append(max((int(line.split()[0]) for line in out.splitlines() if line.strip()), default=0))
        time.sleep(max(0.0, 0.5 - (time.monotonic() - t)))
    still_paused = phase(log, "closing") is None and reader.alive()
    procs.wait_until(lambda: not reader.alive(), timeout=15, what="alice's reader to close and exit")
    closing = phase(log, "closing")

    base_med = statistics.median(base)
    bound = max(1.0, 20 * base_med)
    times = [t for _, t in during]
    rss_max = max(during_rss)
    print(f"\nalice (browser) read {first['read']} bytes in {first['seconds']} s, then paused {PAUSE:.0f} s; "
          f"her socket's Recv-Q during the pause: {queued}")
    print(f"bob baseline: {figures(base)}")
    print(f"bob during the pause: {figures(times)}; bound {bound * 1000:.0f} ms")
    print(f"PoP VmRSS: baseline {rss0 / MIB:.1f} MiB, max during the pause {rss_max / MIB:.1f} MiB "
          f"(+{(rss_max - rss0) / MIB:.1f} MiB; bound +{RSS_SLACK // MIB} MiB)")
    print(f"connector tunnels before and during the pause: {tunnels0} {sorted(tunnels)}")

    assert still_paused, "alice's reader was not paused for the whole measurement"
    assert closing and closing["read"] == first["read"], closing
    assert len(during) >= 40, len(during)
    assert all(s == "200" for s, _ in during), [s for s, _ in during if s != "200"]
    assert max(times) <= bound, (max(times), bound)
    assert rss_max <= rss0 + RSS_SLACK, (rss_max, rss0)
    assert tunnels == {tuple(tunnels0)}, (tunnels0, tunnels)  # the same connector tunnels throughout
    assert max(queued) > 0, queued
    assert lab.procs["pop"].alive() and lab.procs["gateway"].alive()
