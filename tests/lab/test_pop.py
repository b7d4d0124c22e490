"""``ztna lab run pop-agent``: agent -> PoP -> outbound-only connector -> gateway -> app, every step from captures."""

from netns.scenario import run
from netns.scenarios.pop_agent import PopAgentScenario


def test_every_step_is_observed(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTNA_LAB_DIR", str(tmp_path / "run"))
    lines = []
    ok, steps, report = run(PopAgentScenario(), say=lines.append, color=False)
    assert ok, "\n".join(lines)
    assert [s.number for s in steps] == [str(i) for i in range(1, 11)]
    assert all(s.evidence for s in steps)
    assert report is not None and report.exists()


def test_two_gateways_share_flows_and_the_survivor_takes_new_ones(tmp_path, monkeypatch):
    from netns.scenarios.pop_failover import PopFailoverScenario

    monkeypatch.setenv("ZTNA_LAB_DIR", str(tmp_path / "run"))
    lines = []
    ok, steps, report = run(PopFailoverScenario(), say=lines.append, color=False)
    assert ok, "\n".join(lines)
    assert [s.number for s in steps] == ["1", "2", "3", "4", "5"]
