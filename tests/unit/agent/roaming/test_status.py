"""Status model: verdicts from facts, honest timestamps, cloud health."""

from agent.roaming import status as s


def test_protected_when_owning_and_cloud_up():
    v = s.derive(s.Facts(owning=True, stub_bound=True))
    assert v.state == s.PROTECTED


def test_open_when_cloud_down_and_fail_open():
    v = s.derive(s.Facts(owning=True, stub_bound=True, cloud_up=False, fail_open=True))
    assert v.state == s.OPEN and v.reason == "cloud_unreachable" and "fail-open" in v.detail


def test_unprotected_when_cloud_down_and_fail_closed():
    v = s.derive(s.Facts(owning=True, stub_bound=True, cloud_up=False, fail_open=False))
    assert v.state == s.UNPROTECTED and v.reason == "cloud_unreachable"


def test_clash_and_conflict_beat_everything():
    v = s.derive(s.Facts(owning=True, stub_bound=True, clash="127.0.0.1:53 is already served by dnsmasq"))
    assert (v.state, v.reason) == (s.UNPROTECTED, "loopback_in_use")
    v = s.derive(s.Facts(owning=False, stub_bound=True, backed_off="rewritten 3 times"))
    assert (v.state, v.reason, v.detail) == (s.UNPROTECTED, "conflict", "rewritten 3 times")


def test_not_owning():
    v = s.derive(s.Facts(owning=False, stub_bound=True))
    assert v.state == s.UNPROTECTED and v.reason == "not_owning"
    assert s.derive(s.Facts()).state == s.STARTING


def test_tracker_since_moves_only_on_change():
    t = s.Tracker()
    p = s.Verdict(s.PROTECTED)
    assert t.update(p, 100)
    assert not t.update(p, 150)
    assert (t.since, t.updated) == (100, 150)
    assert t.update(s.Verdict(s.UNPROTECTED, "conflict", "x"), 200)
    assert t.since == 200
    d = t.to_dict()
    assert d["state"] == s.UNPROTECTED and [e["state"] for e in d["events"]] == [s.PROTECTED, s.UNPROTECTED]


def test_tracker_keeps_last_events():
    t = s.Tracker(keep=3)
    for i in range(10):
        t.update(s.Verdict(s.PROTECTED if i % 2 else s.OPEN), i + 1)
    assert len(t.events) == 3 and t.events[-1]["at"] == 10


def test_cloud_health_down_after_failures_and_probe_pacing():
    h = s.CloudHealth(fail_after=2, probe_every=5)
    assert not h.failure(1)
    assert h.failure(2) and not h.up
    assert h.should_probe(8)
    assert not h.should_probe(9)  # paced
    assert h.should_probe(13.5)
    assert h.success(14) and h.up
    assert not h.success(15)
    assert not h.failure(16)  # the count started again
