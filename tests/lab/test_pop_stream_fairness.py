"""Fairness on the agentless path through the PoP (issue 15): browsers' HTTPS connections become ``stream``
channels of the one connector tunnel.  alice (signed in at the PoP) starts a large download and stops reading
for 30 s; bob's signed-in requests through the same connector keep answering 200 quickly, and the PoP's
memory stays bounded.  The same measurement as tests/lab/test_pop_fairness.py (tests/lab/pausecheck.py),
on the stream channels."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.agentless.rewrite import SESSION_COOKIE
from netns.scenarios.agentless import USERS
from netns.scenarios.pop_agentless import APP, POP, PopAgentlessScenario
from pausecheck import check, connector_lab, connector_tunnels, pause_and_probe, with_bob


@pytest.fixture(scope="module")
def lab():
    yield from connector_lab(with_bob(PopAgentlessScenario, "pop-stream-fairness")())


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


def test_a_paused_browser_stalls_only_its_own_stream(lab):
    sc = lab.sc
    jar_a, jar_b = str(lab.conf_dir / "fair-alice.txt"), str(lab.conf_dir / "fair-bob.txt")
    rc, out, err = sc.sign_in(lab, "alice", USERS["alice"], jar_a)
    assert rc == 0 and out.rstrip().endswith(" 200"), (out[-300:], err)
    rc, out, err = sc.sign_in(lab, "bob", USERS["bob"], jar_b, host="browser2")
    assert rc == 0 and out.rstrip().endswith(" 200"), (out[-300:], err)
    tunnels0 = connector_tunnels(lab, POP)
    run = pause_and_probe(lab, pop=POP, app=APP, reader_host="browser", probe=lambda: curl(lab, "browser2", jar_b),
                          reader_args=(cookie(jar_a),))
    check(run, reader="alice (browser)", other="bob")
    assert run.tunnels == {tuple(tunnels0)}, (tunnels0, run.tunnels)  # the same connector tunnels throughout
    assert lab.procs["pop"].alive() and lab.procs["gateway"].alive()
