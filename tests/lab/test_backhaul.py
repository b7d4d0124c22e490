"""``ztna lab run backhaul`` and ``backhaul-hq``: a branch site's internet traffic through the PoP's egress, and
through the HQ gateway site's WAN ports, every step from captures."""

from netns.scenario import run
from netns.scenarios.backhaul import BackhaulScenario
from netns.scenarios.backhaul_hq import BackhaulHqScenario


def test_every_step_is_observed(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTNA_LAB_DIR", str(tmp_path / "run"))
    lines = []
    ok, steps, report = run(BackhaulScenario(), say=lines.append, color=False)
    assert ok, "\n".join(lines)
    assert [s.number for s in steps] == ["1", "2", "3", "4"]
    assert all(s.evidence for s in steps)
    assert report is not None and report.exists()


def test_the_gateway_site_steps_are_observed(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTNA_LAB_DIR", str(tmp_path / "run"))
    lines = []
    ok, steps, report = run(BackhaulHqScenario(), say=lines.append, color=False)
    assert ok, "\n".join(lines)
    assert [s.number for s in steps] == ["1", "2", "1m", "2m", "3a", "3b", "4", "5a", "5b", "5c", "6"]
    assert all(s.ok and s.evidence for s in steps)
    assert report is not None and report.exists()
