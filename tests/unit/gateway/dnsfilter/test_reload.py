"""gateway.dnsfilter.reload and Engine.apply: a reload's plan, its refusals, and the engine after it (no root)."""

import copy
import re

import pytest

from gateway.dnsfilter.config import ConfigError, from_dict
from gateway.dnsfilter.engine import Engine, Forward, Reply
from gateway.dnsfilter.reload import ReloadRefused, plan

from .test_engine import DOC, ask, parsed


def doc(**over):
    d = copy.deepcopy(DOC)
    for key, value in over.items():
        table, _, k = key.partition("__")
        if k:
            d.setdefault(table, {})[k] = value
        else:
            d[table] = value
    return d


def test_the_plan_names_what_changes():
    new = doc(lists__block={"domains": ["listed.bad.example", "more.bad.example"]}, server__block_ttl=60)
    changes = plan(from_dict(DOC), from_dict(new))
    assert "list block: 1 -> 2 domains (+1 -0)" in changes and not any(c.startswith("policy") for c in changes)
    assert "server block_ttl: 30 -> 60" in changes
    added = copy.deepcopy(DOC)
    added["policy"].append({"name": "guests", "networks": ["192.0.2.0/24"]})
    assert "policy guests: added" in plan(from_dict(DOC), from_dict(added))
    assert plan(from_dict(DOC), from_dict(DOC)) == []


@pytest.mark.parametrize("over, word", [
    ({"server__port": 5353}, "port"),
    ({"server__listen": ["127.0.0.1"]}, "listen"),
    ({"server__query_log": "/tmp/q.jsonl"}, "query_log"),
    ({"blockpage__address": "192.0.2.99"}, "blockpage"),  # its listeners are bound to the addresses
    ({"server__cache_size": 10}, "cache_size"),
    ({"tunneling__unique_names": 99}, "tunnel"),
])
def test_settings_the_process_was_built_from_refuse_the_reload(over, word):
    with pytest.raises(ReloadRefused, match=f"{word} changed, which takes a restart"):
        plan(from_dict(DOC), from_dict(doc(**over)))


@pytest.mark.parametrize("table, where", [("server", "[server]"), ("ratelimit", "[ratelimit]"),
                                          ("blockpage", "[blockpage]"), ("categories", "[categories]")])
def test_a_misspelt_key_is_refused_not_ignored(table, where):
    with pytest.raises(ConfigError, match=re.escape(f"unknown key(s) in {where}: colour;")):
        from_dict(doc(**{f"{table}__colour": 1}))
    bad = copy.deepcopy(DOC)
    bad["policy"][0]["block_list"] = ["block"]  # the key is block_lists
    with pytest.raises(ConfigError, match=r"in \[policy\[0\]\]: block_list;"):
        from_dict(bad)


def test_applied_policies_decide_at_once_and_forget_old_answers():
    eng = Engine(from_dict(DOC))
    first = ask(eng, "www.good.example")
    assert isinstance(first, Forward)
    blocked = parsed(ask(eng, "listed.bad.example"))
    assert str(blocked.rr[0].rdata) == "192.0.2.80"
    ask(eng, "listed.bad.example")  # now a memo hit as well
    new = from_dict(doc(lists__block={"domains": ["good.example"]}))
    eng.apply(new)
    assert str(parsed(ask(eng, "www.good.example")).rr[0].rdata) == "192.0.2.80"
    assert isinstance(ask(eng, "listed.bad.example"), Forward)  # no longer listed: neither memo nor verdict kept
    assert eng.cfg is new and eng.policies is new.policies


def test_a_forward_decided_before_the_reload_completes_under_its_policy():
    eng = Engine(from_dict(DOC))
    fwd = ask(eng, "www.good.example")
    eng.apply(from_dict(doc(lists__block={"domains": ["good.example"]})))
    from .test_engine import upstream_reply
    from dnslib import RR, A

    out = eng.complete(fwd, upstream_reply(fwd, RR("www.good.example", rdata=A("203.0.113.80"), ttl=60)), 1000.5)
    assert isinstance(out, Reply) and str(parsed(out).rr[0].rdata) == "203.0.113.80"


def test_a_new_rate_limit_takes_effect():
    eng = Engine(from_dict(DOC))
    old = eng.limiter
    eng.apply(from_dict(DOC))
    assert eng.limiter is old  # unchanged limits keep their buckets
    eng.apply(from_dict(doc(ratelimit={"qps": 5, "burst": 5})))
    assert eng.limiter.qps == 5


def test_a_list_of_the_same_size_with_other_domains_is_a_change():
    new = doc(lists__block={"domains": ["other.bad.example"]},
              categories__domains={**DOC["categories"]["domains"], "tunnel.bad.example": "malware"})
    changes = plan(from_dict(DOC), from_dict(new))
    assert "list block: 1 -> 1 domains (+1 -1)" in changes
    assert "categories: 4 -> 4 domains (1 changed)" in changes
