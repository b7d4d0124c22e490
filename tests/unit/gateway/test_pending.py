import random

import pytest

from gateway.pending import HandshakeGate


def test_per_source_and_total_bounds():
    g = HandshakeGate(max_total=5, max_per_source=2)
    assert g.admit("a") is None and g.admit("a") is None
    assert "from a already (max_pending_per_source)" in g.admit("a")
    assert [g.admit(s) for s in "bbc"] == [None, None, None]
    assert "5 handshakes pending already (max_pending)" in g.admit("d")
    g.done("a")
    assert g.admit("a") is None  # a slot freed is a slot again
    assert (g.refused_source, g.refused_total) == (1, 1)


def test_the_deadline_shortens_under_pressure():
    g = HandshakeGate(max_total=4, max_per_source=4, timeout=10, pressure_timeout=2)
    assert g.timeout() == 10
    g.admit("a")
    assert g.timeout() == 10
    g.admit("a")
    assert g.under_pressure and g.timeout() == 2  # half of max_total waiting
    g.done("a")
    assert g.timeout() == 10


def test_a_drained_burst_is_reported_once():
    g = HandshakeGate(max_total=100, max_per_source=100, burst=3)
    for _ in range(3):
        g.admit("a")
    assert [g.done("a") for _ in range(3)] == [False, False, True]
    g.admit("a")
    assert g.done("a") is False  # one handshake is no burst
    with pytest.raises(ValueError):
        g.done("a")


def test_against_a_naive_count():
    rng = random.Random(19)
    g = HandshakeGate(max_total=20, max_per_source=4)
    live: list[str] = []
    for _ in range(5000):
        if live and rng.random() < 0.45:
            g.done(live.pop(rng.randrange(len(live))))
        else:
            src = rng.choice("abcdefgh")
            ok = g.admit(src) is None
            assert ok == (len(live) < 20 and live.count(src) < 4)
            if ok:
                live.append(src)
        assert g.total == len(live) and sum(g.by_source.values()) == len(live)
