"""gateway.proxy.reload: what a reload changes, what it refuses, which open connections end (no root)."""

import copy

import pytest

from gateway.proxy import config
from gateway.proxy.reload import Open, ReloadRefused, plan, to_end

BASE = {
    "proxy": {"mode": "explicit", "listen": "198.51.100.1:3128", "resolvers": ["203.0.113.53"]},
    "policy": {"client_networks": ["198.51.100.0/24"], "default": "deny", "allow": ["*.example.com"],
               "deny": ["blocked.example.com"], "decrypt": False},
}


def cfg(**changes):
    doc = copy.deepcopy(BASE)
    for key, value in changes.items():
        table, _, k = key.partition("__")
        doc.setdefault(table, {})[k] = value
    return config.from_dict(doc)


def test_a_policy_change_is_planned_and_described():
    p = plan(cfg(), cfg(policy__deny=["blocked.example.com", "bank.example.com"], policy__allow=["*.example.org"]),
             decrypting=False)
    assert p.policy.decide("bank.example.com", 443).action == "deny"
    assert "[policy] deny: +bank.example.com" in p.changes
    assert "[policy] allow: +*.example.org -*.example.com" in p.changes
    assert plan(cfg(), cfg(), decrypting=False).changes == ()


def test_limits_and_timeouts_change_live():
    p = plan(cfg(), cfg(proxy__idle_timeout=30, proxy__max_connections=10), decrypting=False)
    assert p.config.idle_timeout == 30 and p.config.max_connections == 10
    assert any("idle_timeout" in c for c in p.changes) and any("max_connections" in c for c in p.changes)


@pytest.mark.parametrize("changes, word", [
    ({"proxy__listen": "198.51.100.1:3129"}, "listen"),
    ({"proxy__mode": "transparent"}, "mode"),
    ({"proxy__log": "/tmp/other.log"}, "log"),
    ({"transparent__ports": [443, 8443]}, "transparent"),
])
def test_restart_only_settings_refuse_the_whole_reload(changes, word):
    with pytest.raises(ReloadRefused, match=f"{word} changed, which takes a restart"):
        plan(cfg(), cfg(**changes), decrypting=False)


def test_transparent_client_networks_need_a_restart_but_explicit_ones_do_not():
    t = {"proxy__mode": "transparent"}
    with pytest.raises(ReloadRefused, match="client_networks"):
        plan(cfg(**t), cfg(**t, policy__client_networks=["10.0.0.0/8"]), decrypting=False)
    assert plan(cfg(), cfg(policy__client_networks=["10.0.0.0/8"]), decrypting=False)


def test_turning_decryption_on_needs_the_ca_loaded_at_start():
    on = copy.deepcopy(BASE)
    on["policy"]["decrypt"] = True
    on["proxy"].update(trust_store="/x/ca.pem", ca_cert="/x/p.pem", ca_key="/x/p.key")
    off = copy.deepcopy(on)
    off["policy"]["decrypt"] = False
    with pytest.raises(ReloadRefused, match="decryption off"):
        plan(config.from_dict(off), config.from_dict(on), decrypting=False)
    assert plan(config.from_dict(off), config.from_dict(on), decrypting=True).policy.decrypt


def test_open_connections_the_new_policy_refuses_are_named():
    new = cfg(policy__deny=["bank.example.com"], policy__client_networks=["198.51.100.0/25"]).policy()
    conns = [
        Open("198.51.100.10", "bank.example.com", 443, "connect"),    # now denied
        Open("198.51.100.10", "decrypt.example.com", 443, "connect"),  # still allowed
        Open("198.51.100.10", None, 0, ""),                           # head not read yet: judged when it comes
        Open("198.51.100.200", "decrypt.example.com", 443, "tls"),    # client network taken away
        Open("198.51.100.10", "decrypt.example.com", 80, "http"),
        Open("198.51.100.10", None, 443, "passthrough"),             # no name to judge
    ]
    ends = dict(to_end(new, conns))
    assert set(ends) == {0, 3}
    assert "matches deny bank.example.com" in ends[0] and "198.51.100.200" in ends[3]
