"""Split DNS: longest suffix on whole labels, private reverse zones, the cloud for the rest."""

import random

from hypothesis import given, settings
from hypothesis import strategies as hs

from agent.roaming import split
from agent.roaming.state import Learned

LAN = Learned("192.168.1.53", "eth0")
VPN = Learned("10.8.0.53", "vpn0")


def _table(**kw):
    args = dict(recorded=[LAN], search=[Learned("corp.example", "eth0")], configured=["lab.example"],
                cloud=["208.67.222.222", "208.67.220.220"])
    args.update(kw)
    return split.SplitDNS.build(**args)


def test_internal_by_search_and_configured_domains():
    t = _table()
    r = t.route("intranet.corp.example")
    assert r.kind == split.INTERNAL and r.suffix == "corp.example" and r.servers == (LAN,)
    assert t.route("a.b.lab.example.").kind == split.INTERNAL
    assert t.route("CORP.EXAMPLE").kind == split.INTERNAL


def test_whole_labels_only():
    t = _table()
    assert t.route("notcorp.example").kind == split.CLOUD
    assert t.route("corp.example.evil").kind == split.CLOUD
    assert t.route("xlab.example").kind == split.CLOUD


def test_everything_else_goes_to_the_cloud_in_order():
    r = _table().route("www.good.example")
    assert r.kind == split.CLOUD
    assert [s.value for s in r.servers] == ["208.67.222.222", "208.67.220.220"]


def test_private_reverse_zones_are_internal_public_ones_are_not():
    t = _table()
    for name in ("53.1.168.192.in-addr.arpa", "1.0.0.10.in-addr.arpa", "1.1.20.172.in-addr.arpa",
                 "1.1.254.169.in-addr.arpa", "1.0.0.127.in-addr.arpa", "1.1.64.100.in-addr.arpa"):
        assert t.route(name).kind == split.INTERNAL, name
    for name in ("1.1.15.172.in-addr.arpa", "1.1.32.172.in-addr.arpa", "222.222.67.208.in-addr.arpa",
                 "1.1.63.100.in-addr.arpa"):
        assert t.route(name).kind == split.CLOUD, name
    assert _table(private_reverse=False).route("1.0.0.10.in-addr.arpa").kind == split.CLOUD


def test_longest_suffix_wins_with_per_domain_servers():
    t = _table(per_domain={"vpn.corp.example": [VPN]})
    assert t.route("host.vpn.corp.example").servers == (VPN,)
    assert t.route("host.corp.example").servers == (LAN,)


def test_no_recorded_server_means_cloud():
    t = split.SplitDNS.build(recorded=[], search=[], configured=["corp.example"], cloud=["208.67.222.222"])
    assert t.route("a.corp.example").kind == split.CLOUD


def _naive(domains: list[str], qname: str) -> str:
    """Reference: try every domain, keep the longest that is a whole-label suffix."""
    q = qname.lower().rstrip(".")
    best = ""
    for d in domains:
        if (q == d or q.endswith("." + d)) and len(d) > len(best):
            best = d
    return best


@settings(max_examples=300, deadline=None)
@given(hs.lists(hs.lists(hs.sampled_from(["a", "b", "corp", "x", "example"]), min_size=1, max_size=3), max_size=6),
       hs.lists(hs.sampled_from(["a", "b", "corp", "x", "example", "y"]), min_size=1, max_size=5))
def test_matches_naive_reference(domain_labels, q_labels):
    domains = [".".join(d) for d in domain_labels]
    qname = ".".join(q_labels)
    t = split.SplitDNS.build(recorded=[LAN], search=[], configured=domains, cloud=["208.67.222.222"],
                             private_reverse=False)
    want = _naive(domains, qname)
    r = t.route(qname)
    assert r.suffix == want
    assert r.kind == (split.INTERNAL if want else split.CLOUD)


def test_seeded_random_against_naive():
    rng = random.Random(4)
    words = ["corp", "example", "lab", "a", "b", "in-addr", "arpa", "10"]
    for _ in range(2000):
        domains = [".".join(rng.choices(words, k=rng.randint(1, 3))) for _ in range(rng.randint(0, 5))]
        q = ".".join(rng.choices(words, k=rng.randint(1, 5)))
        t = split.SplitDNS.build(recorded=[LAN], search=[], configured=domains, cloud=["1.2.3.4"], private_reverse=False)
        assert t.route(q).suffix == _naive(domains, q)
