"""The rule-cost bench's core part runs small, and its flows really match what they claim to (it asserts so)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "scripts" / "bench"))

import backhaul_rules as bench  # noqa: E402


def test_the_core_part_runs_small():
    lines = []
    out = bench.core(300, 3000, 0.01, lines.append)
    assert out["rules"] == 300 and out["entries"] == 3000
    for k in ("dns", "cidr", "none", "mixed"):
        assert out[f"decide_per_s_{k}"] > 0
    assert out["map_python_bytes"] > 0 and len(lines) == 4
