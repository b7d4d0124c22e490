"""The rewrite-race detector as a playbook of events and expected decisions."""

import pytest

from agent.roaming import conflict as c


def _play(det, events):
    out = []
    for ev in events:
        if ev[0] == "rewrite":
            out.append(det.foreign_rewrite(ev[1], servers=ev[2] if len(ev) > 2 else ["10.8.0.53"], our_listen="127.0.0.1").action)
        else:
            out.append(det.network_changed(ev[1], "vpn0 went").action)
    return out


def test_isolated_rewrites_are_reasserted():
    det = c.ConflictDetector(c.ConflictPolicy(threshold=3, window=10))
    assert _play(det, [("rewrite", 0), ("rewrite", 11), ("rewrite", 22), ("rewrite", 33)]) == [c.REASSERT] * 4
    assert not det.backed_off


def test_race_within_window_backs_off_and_stays_off():
    det = c.ConflictDetector(c.ConflictPolicy(threshold=3, window=10))
    acts = _play(det, [("rewrite", 0), ("rewrite", 1), ("rewrite", 2), ("rewrite", 3), ("rewrite", 500)])
    assert acts == [c.REASSERT, c.REASSERT, c.BACK_OFF, c.NOTHING, c.NOTHING]
    assert det.backed_off and det.backed_off_at == 2
    assert "3 times in 10s" in det.reason and "10.8.0.53" in det.reason and "network changes" in det.reason


def test_only_a_network_change_ends_the_back_off():
    det = c.ConflictDetector(c.ConflictPolicy(threshold=2, window=5))
    _play(det, [("rewrite", 0), ("rewrite", 1)])
    assert det.backed_off
    # time alone never brings it back
    assert det.foreign_rewrite(10_000).action == c.NOTHING
    d = det.network_changed(10_001, "vpn0 went")
    assert d.action == c.RETAKE and "vpn0 went" in d.reason
    assert not det.backed_off and det.reason == ""
    # a fresh race is counted from zero
    assert _play(det, [("rewrite", 10_002)]) == [c.REASSERT]


def test_network_change_without_back_off_does_nothing():
    det = c.ConflictDetector()
    assert det.network_changed(1).action == c.NOTHING


def test_window_is_sliding():
    det = c.ConflictDetector(c.ConflictPolicy(threshold=3, window=10))
    assert _play(det, [("rewrite", 0), ("rewrite", 9), ("rewrite", 18.5), ("rewrite", 19)]) == \
        [c.REASSERT, c.REASSERT, c.REASSERT, c.BACK_OFF]


def test_threshold_one_backs_off_at_first_rewrite():
    det = c.ConflictDetector(c.ConflictPolicy(threshold=1, window=1))
    assert _play(det, [("rewrite", 0)]) == [c.BACK_OFF]


def test_another_loopback_proxy_is_named():
    det = c.ConflictDetector(c.ConflictPolicy(threshold=2, window=10))
    _play(det, [("rewrite", 0, ["127.0.0.53"]), ("rewrite", 1, ["127.0.0.53"])])
    assert "another DNS proxy on loopback (127.0.0.53)" in det.reason


@pytest.mark.parametrize("kw", [dict(threshold=0), dict(window=0), dict(window=-1)])
def test_bad_policy(kw):
    with pytest.raises(ValueError):
        c.ConflictPolicy(**kw)


def test_interfaces_appearing_or_going():
    ifs = c.Interfaces()
    assert ifs.update({"eth0"}) == ""  # first look: baseline, not a change
    assert ifs.update({"eth0"}) == ""
    assert ifs.update({"eth0", "vpn0"}) == "vpn0 appeared"
    assert ifs.update({"eth0"}) == "vpn0 went"
    assert ifs.update({"eth1"}) == "eth1 appeared, eth0 went"
