"""agent/backoff.py: exponential bounds, full jitter, no floor, the reset after a healthy session."""

from agent.backoff import Backoff


def test_first_attempt_is_at_once_then_bounds_double_to_the_cap():
    b = Backoff(base=0.25, cap=2.0, rand=lambda: 1.0)
    assert b.may_try(0.0)
    assert [b.failed(0.0) for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert not b.may_try(1.9) and b.may_try(2.0)


def test_full_jitter_has_no_floor():
    b = Backoff(base=0.25, cap=15.0, rand=lambda: 0.0)
    assert [b.failed(5.0) for _ in range(8)] == [0.0] * 8 and b.may_try(5.0)
    half = Backoff(base=1.0, cap=15.0, rand=lambda: 0.5)
    assert [half.failed(0.0) for _ in range(3)] == [0.5, 1.0, 2.0]


def test_a_healthy_session_resets_a_short_one_counts_as_a_failure():
    b = Backoff(base=1.0, cap=15.0, healthy=10.0, rand=lambda: 1.0)
    for _ in range(3):
        b.failed(0.0)
    assert b.ended(up_for=2.0, now=100.0) == 8.0 and b.failures == 4  # welcomed, then dropped at once
    assert b.ended(up_for=60.0, now=200.0) == 0.0 and b.failures == 0 and b.may_try(200.0)
    assert b.failed(200.0) == 1.0


def test_real_randomness_stays_inside_the_bound():
    b = Backoff(base=0.25, cap=3.0)
    for n in range(1, 40):
        d = b.failed(0.0)
        assert 0.0 <= d <= min(3.0, 0.25 * 2 ** (n - 1))
