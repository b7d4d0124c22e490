"""The proxy bench's goal verdicts: turns paired within a pass, a bootstrap interval, four outcomes."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "scripts" / "bench"))

import proxy_bench as bench  # noqa: E402


def rounds(slices: list[list[float]]) -> list[dict]:
    return [{"requests": {"slices": s}, "download": {"each": s}} for s in slices]


def test_pairs_are_turns_of_the_same_pass_over_all_rounds():
    a = rounds([[200, 300], [400]])
    b = rounds([[100, 300], [800]])
    assert bench.paired(a, b, "requests") == [2.0, 1.0, 0.5]
    assert bench.paired(a, b, "download") == [2.0, 1.0, 0.5]


def test_a_failed_turn_of_the_reference_is_left_out():
    assert bench.paired(rounds([[5, 5]]), rounds([[0, 5]]), "requests") == [1.0]


def test_interval_holds_the_median_and_is_repeatable():
    vals = [0.9, 0.95, 0.97, 1.0, 1.01, 1.03, 1.05, 1.1, 1.2]
    mid, lo, hi = bench.median_ci(vals)
    assert mid == 1.01
    assert lo <= mid <= hi and lo >= min(vals) and hi <= max(vals) and lo < hi
    assert bench.median_ci(vals) == (mid, lo, hi)


def test_a_steady_ratio_has_a_narrow_interval():
    mid, lo, hi = bench.median_ci([1.5] * 20 + [1.49, 1.51])
    assert (mid, lo, hi) == (1.5, 1.5, 1.5)


def test_verdicts():
    many = bench.MIN_PAIRS
    assert bench.verdict(1.05, 1.01, 1.10, 1.0, many) == "met, beyond noise"
    assert bench.verdict(1.01, 0.97, 1.05, 1.0, many) == "met at the median, within noise"
    assert bench.verdict(0.98, 0.95, 1.02, 1.0, many) == "below at the median, within noise"
    assert bench.verdict(0.90, 0.85, 0.95, 1.0, many) == "NOT met, beyond noise"
    assert bench.verdict(3.5, 3.5, 3.5, 3.0, 1).startswith("met (under")
    assert bench.verdict(0.5, 0.5, 0.5, 1.0, 1).startswith("NOT met (under")
