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
