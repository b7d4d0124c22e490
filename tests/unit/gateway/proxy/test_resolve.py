"""gateway.proxy.resolve.DnsCache: answers kept for their TTL, capped, least recently used out."""

from gateway.proxy.resolve import MAX_TTL, DnsCache


def test_ttl_and_cap():
    c = DnsCache(size=2)
    c.put("a", ["203.0.113.80"], 30, now=100.0)
    assert c.get("a", 129.9) == ["203.0.113.80"]
    assert c.get("a", 130.0) is None
    c.put("b", ["1.2.3.4"], 10**6, now=0.0)
    assert c.get("b", MAX_TTL - 1) and c.get("b", MAX_TTL + 1) is None


def test_zero_ttl_and_empty_not_cached_and_lru():
    c = DnsCache(size=2)
    c.put("z", ["1.1.1.1"], 0, now=0.0)
    c.put("e", [], 60, now=0.0)
    assert c.get("z", 0.0) is None and c.get("e", 0.0) is None
    c.put("a", ["1"], 60, now=0.0)
    c.put("b", ["2"], 60, now=0.0)
    c.get("a", 1.0)
    c.put("c", ["3"], 60, now=0.0)
    assert c.get("b", 1.0) is None and c.get("a", 1.0) == ["1"]
