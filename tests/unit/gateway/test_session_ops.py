"""gateway.session: the gateway's own decisions about a live session: ending it (a revoked
certificate) and a reloaded policy that withdraws leases (issue 20)."""

from gateway import session as g
from gateway.policy import Policy
from tests.unit.gateway.test_session import (
    APP,
    APP_REAL,
    LEASE,
    data,
    frames,
    ip4,
    kinds,
    leased,
    syn,
    up,
)
from ztna import wire


def test_end_tells_the_agent_why_and_closes_once():
    s = leased()
    cmds = s.end("certificate revoked (serial 1f, alice)")
    assert kinds(cmds) == ["Log", "Send", "Close"] and "ended: certificate revoked" in cmds[0].message
    assert [(f.type, f.fields) for f in frames(cmds)] == [(wire.CLOSE, {"reason": "certificate revoked (serial 1f, alice)"})]
    assert s.closed and s.end("again") == []


def test_a_reloaded_policy_withdraws_the_leases_it_no_longer_allows_and_keeps_the_others():
    s = leased()
    hr = "x.apps.mycompany.net"
    s.receive_data(wire.control(wire.LEASE, fqdn=hr, addr="100.64.0.4"), 0.3)
    s.resolved(hr, ip4("100.64.0.4"), ip4("192.168.1.30"))
    assert len(kinds(s.receive_data(data(syn()), 0.4))) == 2  # Log (new flow), WriteTun
    cmds = s.set_policy(Policy({"alice": ["*.apps.mycompany.net"]}))
    f = frames(cmds)
    assert [(x.type, x.fields["fqdn"], x.fields["allowed"]) for x in f] == [(wire.LEASE_RESULT, APP, False)]
    assert f[0].fields["reason"].startswith("policy reloaded: identity 'alice' is not allowed")
    assert "withdrawn by the reloaded policy, 1 flow(s) ended" in cmds[0].message
    assert ip4(LEASE) not in s.nat.routes and ip4("100.64.0.4") in s.nat.routes and not s.nat.flows
    assert "WriteTun" not in kinds(s.receive_data(data(syn()), 0.5))  # to the withdrawn lease: dropped
    assert s.nat.counters.spoofed_dst >= 1 and s.counters["leases_withdrawn"] == 1
    assert s.set_policy(Policy({"alice": ["*.apps.mycompany.net"]})) == []  # nothing more to withdraw


def test_a_lookup_running_when_the_policy_drops_the_name_is_denied_and_its_answer_ignored():
    s = up()
    assert s.receive_data(wire.control(wire.LEASE, fqdn=APP, addr=LEASE), 0.2) == [g.Resolve(APP, ip4(LEASE))]
    cmds = s.set_policy(Policy({}))
    assert [x.fields["allowed"] for x in frames(cmds)] == [False]
    assert s.resolved(APP, ip4(LEASE), ip4(APP_REAL)) == [] and not s.nat.routes
