"""``ztna lab run pop-agentless``: browser -> PoP (sign-in, policy) -> stream channel -> gateway -> app, from captures."""

from netns.scenario import run
from netns.scenarios.pop_agentless import PopAgentlessScenario


def test_every_step_is_observed(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTNA_LAB_DIR", str(tmp_path / "run"))
    lines = []
    ok, steps, report = run(PopAgentlessScenario(), say=lines.append, color=False)
    assert ok, "\n".join(lines)
    assert [s.number for s in steps] == [str(i) for i in range(1, 10)]
    assert all(s.evidence for s in steps)
    assert report is not None and report.exists()
