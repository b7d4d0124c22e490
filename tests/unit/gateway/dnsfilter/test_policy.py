import random

import pytest

from gateway.dnsfilter.answers import Column
from gateway.dnsfilter.names import BadName, normalize, suffixes
from gateway.dnsfilter.policy import CategoryDB, DomainSet, Policy, PolicySet, column_of_category
import ipaddress


def nets(*n):
    return [ipaddress.ip_network(x) for x in n]


def policyset():
    cats = CategoryDB()
    cats.add("tunnel.bad.example", "dns-tunneling-vpn")
    cats.add("malware.bad.example", "malware")
    cats.add("ddns.bad.example", "dynamic-dns")
    cats.add("gambling.bad.example", "gambling")
    cats.add("both.bad.example", "gambling", "phishing")
    cats.add("bücher.example", "shopping")
    block = DomainSet(["listed.bad.example", "Both.Bad.Example."])
    allow = DomainSet(["ok.malware.bad.example"])
    office = Policy("office", nets("198.51.100.0/24"),
                    block_categories=frozenset({"dns-tunneling-vpn", "malware", "phishing", "dynamic-dns", "gambling", "shopping"}),
                    block_lists=[("corp-block", block)], allow_lists=[("corp-allow", allow)])
    lab = Policy("lab-subnet", nets("198.51.100.128/25"), block_categories=frozenset({"malware"}))
    roaming = Policy("roaming", [], devices=frozenset({"laptop-1"}), block_categories=frozenset({"malware"}))
    return PolicySet([office, lab, roaming], cats)


def test_normalize():
    assert normalize("WWW.Example.COM.") == "www.example.com"
    assert normalize("bücher.example") == "xn--bcher-kva.example"
    assert normalize(".") == ""
    for bad in ("a..b", "x" * 64 + ".com", ("a." * 130) + "com"):
        with pytest.raises(BadName):
            normalize(bad)
    assert suffixes("a.b.c") == ["a.b.c", "b.c", "c"]


def test_entry_covers_subdomains_case_and_dot():
    ds = DomainSet(["Listed.Bad.Example."])
    assert ds.match("listed.bad.example") == "listed.bad.example"
    assert ds.match("deep.sub.listed.bad.example") == "listed.bad.example"
    assert ds.match("notlisted.bad.example") is None
    assert ds.match("bad.example") is None


def test_domainset_against_naive_reference():
    rng = random.Random(7)
    labels = ["a", "b", "c", "xn--d", "e-f"]
    entries = {".".join(rng.choice(labels) for _ in range(rng.randint(1, 3))) for _ in range(40)}
    ds = DomainSet(entries)
    for _ in range(2000):
        name = ".".join(rng.choice(labels) for _ in range(rng.randint(1, 5)))
        naive = any(name == e or name.endswith("." + e) for e in entries)
        assert (ds.match(name) is not None) == naive, name


def test_columns_of_categories():
    assert column_of_category("dns-tunneling-vpn") is Column.TUNNEL
    assert column_of_category("dynamic-dns") is Column.DDNS
    for c in ("malware", "phishing", "command-and-control"):
        assert column_of_category(c) is Column.SECURITY
    assert column_of_category("gambling") is Column.CONTENT
    assert column_of_category("newly-registered", frozenset({"newly-registered"})) is Column.SECURITY


def test_verdicts_per_column():
    ps = policyset()
    office = ps.policies[0]
    assert ps.decide(office, "tunnel.bad.example").column is Column.TUNNEL
    assert ps.decide(office, "listed.bad.example").column is Column.LIST
    assert ps.decide(office, "x.malware.bad.example").column is Column.SECURITY
    assert ps.decide(office, "ddns.bad.example").column is Column.DDNS
    assert ps.decide(office, "gambling.bad.example").column is Column.CONTENT
    assert ps.decide(office, "xn--bcher-kva.example").column is Column.CONTENT
    assert not ps.decide(office, "www.good.example").blocked


def test_allow_beats_block_and_strictest_reason_wins():
    ps = policyset()
    office = ps.policies[0]
    v = ps.decide(office, "ok.malware.bad.example")
    assert not v.blocked and "corp-allow" in v.allowed_by
    # both.bad.example: list, phishing (security) and gambling (content): the list wins (stricter than security).
    v = ps.decide(office, "both.bad.example")
    assert v.column is Column.LIST and v.reason == "corp-block"
    # a detected tunnel beats everything
    v = ps.decide(office, "both.bad.example", tunnel_parent="bad.example")
    assert v.column is Column.TUNNEL


def test_policy_selection_precedence():
    ps = policyset()
    assert ps.select("198.51.100.10", None).name == "office"
    assert ps.select("198.51.100.200", None).name == "lab-subnet"      # most specific network
    assert ps.select("198.51.100.10", "laptop-1").name == "roaming"     # device beats network
    assert ps.select("198.51.100.10", "unknown-device").name == "office"
    assert ps.select("::ffff:198.51.100.10", None).name == "office"
    assert ps.select("203.0.113.9", None) is None                         # not served
    assert ps.select("203.0.113.9", "laptop-1") is None                   # a device id opens nothing
    assert ps.select("not-an-ip", None) is None


def test_different_identities_different_answers():
    ps = policyset()
    roaming = ps.select("198.51.100.10", "laptop-1")
    office = ps.select("198.51.100.10", None)
    assert ps.decide(office, "gambling.bad.example").blocked
    assert not ps.decide(roaming, "gambling.bad.example").blocked
