"""gateway.proxy.sessions.SessionCache: upstream TLS sessions by exact key, for their lifetime, capped."""

import pytest

from gateway.proxy.sessions import MAX_AGE, SessionCache

KEY = ("decrypt.example.com", "203.0.113.80", 443, True)


def test_lifetime_and_max_age():
    c = SessionCache()
    c.put(KEY, "s1", 60, now=100.0)
    assert c.get(KEY, 159.9) == "s1"
    assert c.get(KEY, 160.0) is None and len(c) == 0
    c.put(KEY, "s2", 10**7, now=0.0)
    assert c.get(KEY, MAX_AGE - 1) == "s2" and c.get(KEY, MAX_AGE) is None


def test_only_the_exact_key_resumes():
    c = SessionCache()
    c.put(KEY, "s", 60, now=0.0)
    for other in (("other.example.com",) + KEY[1:], (KEY[0], "203.0.113.81") + KEY[2:],
                  KEY[:2] + (8443, True), KEY[:3] + (False,)):
        assert c.get(other, 1.0) is None
    assert c.get(KEY, 1.0) == "s"


def test_zero_lifetime_forgets_drop_and_lru():
    c = SessionCache(size=2)
    c.put(KEY, "s", 60, now=0.0)
    c.put(KEY, "t", 0, now=1.0)
    assert c.get(KEY, 1.0) is None
    c.put("a", 1, 60, now=0.0)
    c.put("b", 2, 60, now=0.0)
    c.get("a", 1.0)
    c.put("c", 3, 60, now=0.0)
    assert c.get("b", 1.0) is None and c.get("a", 1.0) == 1 and c.get("c", 1.0) == 3
    c.drop("a")
    c.drop("missing")
    assert c.get("a", 1.0) is None and len(c) == 1
    with pytest.raises(ValueError):
        SessionCache(size=0)


def test_a_session_is_read_only_when_needed_and_at_most_once_a_minute_per_key():
    c = SessionCache(refetch=60.0)
    # First connection: nothing cached, nothing read yet: read it.
    assert c.wants(KEY, 0.0, offered=False, resumed=False)
    c.put(KEY, "s1", 7200, now=0.0)  # kept for MAX_AGE (3600 s)
    # Connections that resume it: no read (each read leaks on Python 3.11), until half its life is over.
    assert not c.wants(KEY, 10.0, offered=True, resumed=True)
    assert not c.wants(KEY, 1799.0, offered=True, resumed=True)
    assert c.wants(KEY, 1800.0, offered=True, resumed=True)
    c.put(KEY, "s2", 7200, now=1800.0)
    assert c.get(KEY, 1801.0) == "s2"
    # The server refuses it: dropped, and a fresh one read, but not again within a minute.
    assert not c.wants(KEY, 1830.0, offered=True, resumed=False)  # last read at 1800
    assert c.get(KEY, 1830.0) is None
    assert c.wants(KEY, 1860.0, offered=False, resumed=False)
    # A server that never gives a resumable session: one read a minute, not one per connection.
    reads = sum(c.wants(("no-ticket",) + KEY[1:], t, offered=False, resumed=False) for t in range(0, 600, 1))
    assert reads == 10


def test_read_times_are_bounded_like_the_sessions():
    c = SessionCache(size=2)
    for k in ("a", "b", "c"):
        assert c.wants(k, 0.0, offered=False, resumed=False)
    assert len(c._read) == 2 and "a" not in c._read
