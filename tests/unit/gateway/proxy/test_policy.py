"""gateway.proxy.policy: FQDN patterns, precedence, ports, clients and forbidden destinations."""

import random

import pytest

from gateway.proxy.policy import ALLOW, DENY, Policy, PolicyError
from ztna.names import PatternSet


def pol(**kw):
    d = {"client_networks": ["198.51.100.0/24"], "allow": ["*.example.com", "exact.org"],
         "deny": ["blocked.example.com", "*.bad.example.com"], "no_decrypt": ["bank.example.com"]}
    d.update(kw)
    return Policy.from_dict(d, own_addresses=["198.51.100.1", "203.0.113.1"])


@pytest.mark.parametrize("name,action,decrypt", [
    ("decrypt.example.com", ALLOW, True),
    ("a.b.example.com", ALLOW, True),
    ("DECRYPT.Example.COM.", ALLOW, True),
    ("bank.example.com", ALLOW, False),
    ("blocked.example.com", DENY, False),
    ("x.bad.example.com", DENY, False),
    ("bad.example.com", ALLOW, True),        # *.bad.example.com is below, not the apex
    ("example.com", DENY, False),            # *.example.com does not match the apex
    ("exact.org", ALLOW, True),
    ("sub.exact.org", DENY, False),
    ("notexample.com", DENY, False),
    ("evil-example.com", DENY, False),
])
def test_verdicts(name, action, decrypt):
    v = pol().decide(name, 443)
    assert (v.action, v.decrypt) == (action, decrypt), v.reason


def test_default_allow_and_deny_still_wins():
    p = pol(default="allow")
    assert p.decide("anything.net", 443).allowed
    assert not p.decide("blocked.example.com", 443).allowed


def test_ports():
    p = pol()
    assert not p.decide("decrypt.example.com", 8443).allowed
    assert "8443" in p.decide("decrypt.example.com", 8443).reason
    assert p.decide("decrypt.example.com", 80, kind="http").allowed
    assert not p.decide("decrypt.example.com", 443, kind="http").allowed
    assert pol(connect_ports=[443, 8443]).decide("decrypt.example.com", 8443).allowed


def test_ip_literals_and_garbage_are_not_names():
    p = pol(default="allow")
    for n in ("203.0.113.80", "a..b", "-x.com", "x" * 300, "", "a b.com", "a\x00.com"):
        assert not p.decide(n, 443).allowed, n


def test_decrypt_off_splices_everything():
    assert not pol(decrypt=False).decide("decrypt.example.com", 443).decrypt


def test_clients_only_from_configured_networks():
    p = pol()
    assert p.client_allowed("198.51.100.10")
    assert not p.client_allowed("203.0.113.9")
    assert not p.client_allowed("not-an-ip")


@pytest.mark.parametrize("ip,ok", [("203.0.113.80", True), ("127.0.0.1", False), ("169.254.1.1", False),
                                   ("198.51.100.1", False), ("203.0.113.1", False), ("0.0.0.0", False),
                                   ("10.9.9.9", False), ("224.0.0.1", False)])
def test_forbidden_destinations(ip, ok):
    p = pol(forbidden_destinations=["10.0.0.0/8"])
    assert p.destination_allowed(ip)[0] == ok


def test_own_addresses_allowed_when_asked():
    assert pol(allow_proxy_addresses=True).destination_allowed("198.51.100.1")[0]


@pytest.mark.parametrize("bad", [{"default": "maybe"}, {"allow": "x.com"}, {"allow": ["*"]}, {"connect_ports": [0]},
                                 {"client_networks": ["nonsense"]}, {"colour": 1}, {"deny": ["a..b"]}])
def test_config_errors(bad):
    with pytest.raises(PolicyError):
        pol(**bad)


def test_client_networks_required():
    with pytest.raises(PolicyError, match="open proxy"):
        Policy.from_dict({"allow": ["x.com"]})


def test_pattern_against_naive_reference():
    rng = random.Random(5)
    labels = ["a", "b", "example", "com", "x-y"]
    for _ in range(2000):
        name = ".".join(rng.choice(labels) for _ in range(rng.randint(1, 4)))
        base = ".".join(rng.choice(labels) for _ in range(rng.randint(1, 3)))
        wildcard = rng.random() < 0.5
        p = PatternSet([("*." if wildcard else "") + base])
        if wildcard:
            want = name.split(".")[-len(base.split(".")):] == base.split(".") and len(name.split(".")) > len(base.split("."))
        else:
            want = name == base
        assert (name in p) == want, (base, wildcard, name)


def test_remembered_verdicts_equal_fresh_ones():
    """The memo (decide, client and destination checks) answers exactly what the uncached code does."""
    rng = random.Random(5)
    names = ["decrypt.example.com", "BANK.example.com.", "blocked.example.com", "x.bad.example.com", "exact.org",
             "1.2.3.4", "a" * 300, "", "-x.example.com", "sub.exact.org"]
    addrs = ["198.51.100.7", "198.51.100.1", "127.0.0.1", "203.0.113.80", "10.0.0.1", "not-an-ip", "169.254.1.1"]
    p = pol()
    for _ in range(500):
        n, port, kind = rng.choice(names), rng.choice([443, 80, 8443]), rng.choice(["connect", "tls", "http"])
        assert p.decide(n, port, kind=kind) == p._decide(n, port, kind)
        a = rng.choice(addrs)
        assert p.client_allowed(a) == p._client_allowed(a)
        assert p.destination_allowed(a) == p._destination_allowed(a)


def test_memo_is_bounded():
    p = pol()
    for i in range(10000):
        p.decide(f"h{i}.example.com", 443)
    assert len(p._memo) <= 4097


def test_international_names_compare_as_punycode_both_ways():
    p = pol(allow=["*.bücher.example"], deny=["böse.example"], default="deny")
    assert p.decide("shop.BÜCHER.example", 443).allowed
    assert p.decide("shop.xn--bcher-kva.example.", 443).allowed  # the same name, as a client sends it
    v = p.decide("xn--bse-sna.example", 443)
    assert not v.allowed and "matches deny xn--bse-sna.example" in v.reason
