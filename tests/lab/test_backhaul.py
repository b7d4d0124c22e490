"""``ztna lab run backhaul``: a branch site's internet traffic through the PoP's egress, every step from captures."""

from netns.scenario import run
from netns.scenarios.backhaul import BackhaulScenario


def test_every_step_is_observed(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTNA_LAB_DIR", str(tmp_path / "run"))
    lines = []
    ok, steps, report = run(BackhaulScenario(), say=lines.append, color=False)
    assert ok, "\n".join(lines)
    assert [s.number for s in steps] == ["1", "2", "3", "4"]
    assert all(s.evidence for s in steps)
    assert report is not None and report.exists()
