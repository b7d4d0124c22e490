"""Multiplexing and fairness through the PoP (issue 15): two users' flows share one connector tunnel, each
channel with its own credit.  alice starts a large download from the app and then stops reading for 30 s;
bob's curl https://app/ every 0.5 s keeps answering 200 quickly, and the PoP's memory stays bounded
(the measurement is tests/lab/pausecheck.py)."""

from __future__ import annotations

import pytest

from netns.scenarios.pop_agent import APP, POP, PopAgentScenario
from pausecheck import check, connector_lab, connector_tunnels, pause_and_probe, with_bob


@pytest.fixture(scope="module")
def lab():
    yield from connector_lab(with_bob(PopAgentScenario, "pop-fairness")())


def curl(lab, host: str) -> tuple[str, float]:
    """(HTTP status, curl's time_total in seconds) for https://app/ from ``host``."""
    r = lab.exec(host, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "--max-time", "10",
                        "--cacert", str(lab.pki_dir / "ca.pem"), f"https://{APP}/"], timeout=20)
    parts = r.stdout.decode().split()
    if r.returncode != 0 or len(parts) != 2:
        return f"rc={r.returncode} {r.stderr.decode().strip()[:120]}", float("inf")
    return parts[0], float(parts[1])


def test_a_paused_reader_stalls_only_its_own_channel(lab):
    # Both users' tunnels up, both allowed: one curl each.
    assert curl(lab, "client")[0] == "200"
    assert curl(lab, "client2")[0] == "200"
    assert len(connector_tunnels(lab, POP)) == 1
    run = pause_and_probe(lab, pop=POP, app=APP, reader_host="client", probe=lambda: curl(lab, "client2"))
    check(run, reader="alice", other="bob")
    assert len(run.tunnels) == 1 and len(next(iter(run.tunnels))) == 1, run.tunnels  # one connector tunnel, shared
    assert lab.procs["pop"].alive() and lab.procs["gateway"].alive()
