"""gateway/reload.py: which reloads are taken, and the lines that say what changed."""

import dataclasses

from gateway import reload as r
from gateway.config import GatewayConfig

CFG = GatewayConfig(listen="203.0.113.20", cert="g.pem", key="g.key", ca="ca.pem", private_dns=["192.168.1.53"])


def test_policy_changes_are_listed_per_identity():
    old = {"alice": ["app.x", "hr.x"], "bob": ["hr.x"], "carol": ["a.x"]}
    new = {"alice": ["app.x", "*.x"], "bob": ["hr.x"], "dave": []}
    assert r.policy_changes(old, new) == ["[policy] alice: +*.x -hr.x", "[policy] carol: removed (reaches nothing now)",
                                          "[policy] dave: added: nothing"]


def test_only_the_policy_is_taken_live():
    p = r.plan("gateway.toml", CFG, {"alice": ["a.x"]}, dataclasses.replace(CFG), {"alice": []})
    assert p.ok and p.changes == ["[policy] alice: -a.x"] and "1 policy changed" in p.message
    p = r.plan("gateway.toml", CFG, {}, dataclasses.replace(CFG, port=8443), {})
    assert not p.ok and "gateway.toml: [gateway] port changed, which takes a restart" in p.message
    p = r.plan("gateway.toml", CFG, {}, dataclasses.replace(CFG, crl="crl.pem"), {})
    assert not p.ok and "crl changed" in p.message
    assert r.plan("gateway.toml", CFG, {}, CFG, {}).message.endswith("no policies changed")
