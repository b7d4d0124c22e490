"""gateway.session: playbooks of events and the commands one agent's session answers with.

Every state (hello, up, closed) and every protocol error of SPEC.md §1 and
ztna/wire.py, without root: handshake, leases granted or refused, anti-spoofing,
replies and their fair queue, keepalive timeout, and each bad frame (issue 19's too).
"""

import ipaddress
import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP

from gateway import session as g
from gateway.nat import InsidePool
from gateway.policy import Policy
from ztna import wire
from ztna.ippacket import NO_VNET, ip4

APP, APP_REAL = "app.mycompany.net", "192.168.1.20"
LEASE = "100.64.0.3"
AGENT = "100.64.0.1"
NET = ipaddress.IPv4Network("100.64.0.0/10")

HELLO = wire.control(wire.HELLO, version=1, tunnel_addr=AGENT)


def session(identity="alice", pool=None, sid=1, **kw):
    policy = Policy({"alice": [APP, "*.apps.mycompany.net"], "bob": ["hr.mycompany.net"]})
    return g.GatewaySession(sid, identity, policy=policy, pool=pool or InsidePool("10.254.0.0/16"),
                            agent_network=NET, now=0.0, keepalive=15.0, **kw)


def frames(cmds):
    """The frames of every Send, decoded."""
    d = wire.Decoder()
    return [f for c in cmds if isinstance(c, g.Send) for f in d.feed_untrusted(c.data)]


def kinds(cmds):
    return [type(c).__name__ for c in cmds]


def up(s=None, now=0.1):
    s = s or session()
    cmds = s.receive_data(HELLO, now)
    assert kinds(cmds) == ["Bind", "Send", "Log"]
    assert s.state == g.UP
    return s


def leased(s=None, name=APP, addr=LEASE, real=APP_REAL):
    s = up(s)
    assert s.receive_data(wire.control(wire.LEASE, fqdn=name, addr=addr), 0.2) == [g.Resolve(name, ip4(addr))]
    cmds = s.resolved(name, ip4(addr), ip4(real))
    assert [f.fields["allowed"] for f in frames(cmds)] == [True]
    return s


def data(pkt: bytes) -> bytes:
    return wire.data_header(len(NO_VNET) + len(pkt)) + NO_VNET + pkt


def syn(src=AGENT, dst=LEASE, sport=40000):
    return bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=443, flags="S", seq=1000))


# ---- the handshake ------------------------------------------------------------------------

def test_hello_binds_an_inside_address_and_welcomes_with_the_identity():
    s = session(sid=7)
    cmds = s.receive_data(HELLO, 0.1)
    assert cmds[0] == g.Bind(ip4("10.254.0.2"))
    assert [(f.type, f.fields) for f in frames(cmds)] == [
        (wire.WELCOME, {"version": 1, "identity": "alice", "session": 7})]
    assert cmds[2].message == "session 7 alice: tunnel up, agent address 100.64.0.1, inside address 10.254.0.2"
    assert s.nat.client_addr == ip4(AGENT)


def test_hello_byte_by_byte_is_the_same_hello():
    s = session()
    cmds = [c for i in range(len(HELLO)) for c in s.receive_data(HELLO[i:i + 1], 0.1)]
    assert kinds(cmds) == ["Bind", "Send", "Log"] and s.state == g.UP


def test_another_protocol_version_is_told_and_closed():
    s = session()
    cmds = s.receive_data(wire.control(wire.HELLO, version=2, tunnel_addr=AGENT), 0.1)
    assert [f.fields for f in frames(cmds)] == [{"reason": "protocol version 2 not supported"}]
    assert cmds[-1] == g.Close("agent speaks protocol version 2") and s.closed


@pytest.mark.parametrize("addr,why", [
    ("10.0.0.1", "10.0.0.1 is outside 100.64.0.0/10"),
    ("not an address", "bad tunnel_addr"),
    (None, "bad tunnel_addr"),
])
def test_a_tunnel_address_outside_the_agent_network_is_a_protocol_error(addr, why):
    s = session()
    cmds = s.receive_data(wire.control(wire.HELLO, version=1, tunnel_addr=addr), 0.1)
    assert kinds(cmds) == ["Close"] and why in cmds[0].reason and cmds[0].reason.startswith("protocol error")
    assert s.inside == b""  # nothing was taken from the pool


def test_hello_twice_closes():
    s = up()
    assert s.receive_data(HELLO, 0.2) == [g.Close("protocol error: HELLO twice")]
    assert s.closed and s.receive_data(HELLO, 0.3) == []  # closed: nothing more is acted on


def test_data_before_hello_closes_without_writing():
    s = session()
    assert s.receive_data(data(syn()), 0.1) == [g.Close("protocol error: DATA before HELLO")]


def test_lease_before_hello_closes():
    s = session()
    cmds = s.receive_data(wire.control(wire.LEASE, fqdn=APP, addr=LEASE), 0.1)
    assert cmds == [g.Close("protocol error: LEASE before HELLO")]


def test_keepalive_and_release_before_hello_do_not_open_anything():
    s = session()
    assert frames(s.receive_data(wire.frame(wire.KEEPALIVE), 0.1))[0].type == wire.KEEPALIVE
    assert s.receive_data(wire.control(wire.RELEASE, addr=LEASE), 0.1) == []
    assert s.state == g.HELLO


def test_no_inside_address_left_is_told_and_closed():
    pool = InsidePool("10.254.0.0/30")  # .1 is the gateway's own, .2 the only one for sessions
    up(session(pool=pool, sid=1))
    s2 = session(pool=pool, sid=2)
    cmds = s2.receive_data(HELLO, 0.1)
    assert "no inside address left" in frames(cmds)[0].fields["reason"]
    assert kinds(cmds) == ["Send", "Close"] and s2.closed


# ---- leases ---------------------------------------------------------------------------------

def test_lease_allowed_resolves_then_answers_allowed_with_the_reason():
    s = up()
    assert s.receive_data(wire.control(wire.LEASE, fqdn="App.MyCompany.net.", addr=LEASE), 0.2) == [
        g.Resolve(APP, ip4(LEASE))]
    cmds = s.resolved(APP, ip4(LEASE), ip4(APP_REAL))
    assert cmds[0] == g.Log(logging.INFO, "session 1 alice: lease app.mycompany.net 100.64.0.3 => 192.168.1.20 "
                                          "(private DNS); allowed by 'app.mycompany.net'")
    assert frames(cmds)[0].fields == {"fqdn": APP, "addr": LEASE, "allowed": True,
                                      "reason": "allowed by 'app.mycompany.net'"}
    assert s.nat.routes[ip4(LEASE)].real == ip4(APP_REAL)


def test_lease_the_policy_refuses_is_denied_at_once_without_a_lookup():
    s = up()
    cmds = s.receive_data(wire.control(wire.LEASE, fqdn="hr.mycompany.net", addr=LEASE), 0.2)
    assert kinds(cmds) == ["Log", "Send"] and cmds[0].level == logging.WARNING
    f = frames(cmds)[0]
    assert f.fields["allowed"] is False and f.fields["reason"] == "identity 'alice' is not allowed to reach hr.mycompany.net"
    assert "retry" not in f.fields  # the policy says no: for good
    assert s.counters["leases_denied"] == 1 and ip4(LEASE) not in s.nat.routes


def test_identity_without_policy_is_denied():
    s = up(session("carol"))
    f = frames(s.receive_data(wire.control(wire.LEASE, fqdn=APP, addr=LEASE), 0.2))[0]
    assert f.fields["allowed"] is False and "has no policy" in f.fields["reason"]


def test_lease_private_dns_cannot_resolve_is_denied_with_the_reason():
    s = up()
    s.receive_data(wire.control(wire.LEASE, fqdn=APP, addr=LEASE), 0.2)
    cmds = s.resolved(APP, ip4(LEASE), None, "private DNS 192.168.1.53 has no address for app.mycompany.net (NXDOMAIN)")
    f = frames(cmds)[0]
    assert f.fields["allowed"] is False and "NXDOMAIN" in f.fields["reason"]
    assert f.fields["retry"] is True  # private DNS may answer the next time: the agent asks again
    assert s.counters["leases_denied"] == 1


@pytest.mark.parametrize("fields,why", [
    ({"fqdn": APP, "addr": "10.1.2.3"}, "bad LEASE: 10.1.2.3 is outside 100.64.0.0/10"),  # a foreign address
    ({"fqdn": APP, "addr": "nope"}, "bad LEASE"),
    ({"fqdn": "bad..name", "addr": LEASE}, "bad LEASE"),
    ({"fqdn": "a" * 300, "addr": LEASE}, "bad LEASE"),
    ({"addr": LEASE}, "bad LEASE: fqdn None is not a name"),  # not the name "none"
    ({"fqdn": 5, "addr": LEASE}, "bad LEASE: fqdn 5 is not a name"),
])
def test_a_bad_lease_is_a_protocol_error(fields, why):
    s = up()
    cmds = s.receive_data(wire.control(wire.LEASE, **fields), 0.2)
    assert kinds(cmds) == ["Close"] and cmds[0].reason.startswith(f"protocol error: {why}")


def test_a_late_dns_answer_after_close_does_nothing():
    s = up()
    s.receive_data(wire.control(wire.LEASE, fqdn=APP, addr=LEASE), 0.2)
    s.closed_by_shell()
    assert s.resolved(APP, ip4(LEASE), ip4(APP_REAL)) == []


def test_an_answer_nobody_asked_for_does_nothing():
    s = up()
    assert s.resolved(APP, ip4(LEASE), ip4(APP_REAL)) == []
    assert ip4(LEASE) not in s.nat.routes


def test_the_same_lease_twice_while_it_is_looked_up_is_one_lookup_and_one_answer():
    s = up()
    lease = wire.control(wire.LEASE, fqdn=APP, addr=LEASE)
    assert s.receive_data(lease + lease, 0.2) == [g.Resolve(APP, ip4(LEASE))]
    assert len(frames(s.resolved(APP, ip4(LEASE), ip4(APP_REAL)))) == 1
    assert s.resolved(APP, ip4(LEASE), ip4(APP_REAL)) == []
    assert s.receive_data(lease, 0.3) == [g.Resolve(APP, ip4(LEASE))]  # asked again later: looked up again


def test_a_lease_flood_of_distinct_names_is_bounded_in_lookups():
    s = up()
    flood = b"".join(wire.control(wire.LEASE, fqdn=f"n{i}.apps.mycompany.net", addr=f"100.64.1.{i % 250 + 1}")
                     for i in range(g.MAX_LOOKUPS + 10))
    cmds = s.receive_data(flood, 0.2)
    assert kinds(cmds).count("Resolve") == g.MAX_LOOKUPS
    denied = [f for f in frames(cmds) if f.type == wire.LEASE_RESULT]
    assert len(denied) == 10 and all(not f.fields["allowed"] and "lookups" in f.fields["reason"] and f.fields["retry"]
                                     for f in denied)
    assert s.state == g.UP  # refused, not closed: the lookups already asked still get their answers


# ---- data, anti-spoofing ------------------------------------------------------------------------

def test_data_to_an_allowed_lease_is_rewritten_and_written_with_a_flow_line_once():
    s = leased()
    cmds = s.receive_data(data(syn()) + data(syn()), 1.0)
    assert kinds(cmds) == ["Log", "WriteTun"]
    assert cmds[0].message == "flow session 1 alice tcp :40000 -> app.mycompany.net => 192.168.1.20:443"
    assert len(cmds[1].packets) == 2
    out = IP(bytes(cmds[1].packets[0][10:]))
    assert (out.src, out.dst, out[TCP].dport) == ("10.254.0.2", APP_REAL, 443)


@pytest.mark.parametrize("pkt,counter", [
    (syn(src="100.64.0.9"), "spoofed_src"),     # not the agent's address
    (syn(dst="100.64.0.77"), "spoofed_dst"),    # not one of its leases
    (syn(dst="192.168.1.20"), "spoofed_dst"),   # the private address itself
])
def test_anti_spoofing_drops_counts_and_keeps_the_session(pkt, counter):
    s = leased()
    cmds = s.receive_data(data(pkt) + data(syn()), 1.0)
    assert kinds(cmds) == ["Log", "Log", "WriteTun"] and len(cmds[2].packets) == 1  # the good one passes
    assert "dropped a packet not from its address" in cmds[0].message
    assert getattr(s.nat.counters, counter) == 1 and s.counters["dropped_spoofed"] == 1
    assert s.state == g.UP


def test_drop_lines_are_bounded():
    s = leased()
    cmds = s.receive_data(b"".join(data(syn(src="100.64.0.9")) for _ in range(20)), 1.0)
    assert kinds(cmds) == ["Log"] * 5 and s.counters["dropped_spoofed"] == 20


def test_data_before_the_lease_is_decided_is_dropped():
    s = up()
    s.receive_data(wire.control(wire.LEASE, fqdn=APP, addr=LEASE), 0.2)
    assert kinds(s.receive_data(data(syn()), 0.3)) == ["Log"] and s.nat.counters.spoofed_dst == 1


def test_release_forgets_the_route_and_its_flows():
    s = leased()
    s.receive_data(data(syn()), 1.0)
    assert s.receive_data(wire.control(wire.RELEASE, addr=LEASE), 1.1) == []
    assert not s.nat.routes and not s.nat.flows
    assert kinds(s.receive_data(data(syn()), 1.2)) == ["Log"]  # dropped now


def test_release_with_a_bad_address_closes():
    s = up()
    assert s.receive_data(wire.control(wire.RELEASE, addr="x"), 0.2) == [
        g.Close("protocol error: RELEASE without a valid addr")]


def test_frames_in_one_read_keep_their_order():
    s = leased()
    cmds = s.receive_data(data(syn()) + wire.frame(wire.KEEPALIVE) + data(syn(sport=40001)), 1.0)
    assert kinds(cmds) == ["Log", "WriteTun", "Send", "Log", "WriteTun"]


# ---- replies, their fair queue ----------------------------------------------------------------------

def reply(src=APP_REAL, dst="10.254.0.2", dport=40000):
    return bytearray(NO_VNET + bytes(IP(src=src, dst=dst) / TCP(sport=443, dport=dport, flags="SA", seq=5, ack=1001)))


def test_a_reply_is_mapped_back_and_sent_in_one_write_per_burst():
    s = leased()
    s.receive_data(data(syn()), 1.0)
    assert s.reply(reply(), 1.1) and s.reply(reply(), 1.1)
    cmds = s.flush(False, 1.1)
    fs = frames(cmds)
    assert kinds(cmds) == ["Send"] and [f.type for f in fs] == [wire.DATA, wire.DATA]
    back = IP(bytes(fs[0].payload[10:]))
    assert (back.src, back.dst, back[TCP].dport) == (LEASE, AGENT, 40000)
    assert s.flush(False, 1.1) == []  # nothing left


def test_a_reply_no_flow_claims_is_not_taken():
    s = leased()
    assert not s.reply(reply(dport=5555), 1.1)
    assert not s.reply(reply(src="192.168.1.99"), 1.1)
    assert s.nat.counters.no_flow == 2


def test_a_reply_before_hello_is_not_taken():
    assert not session().reply(reply(), 0.1)


def test_while_the_connection_is_blocked_replies_wait_and_go_when_it_takes_more():
    s = leased()
    s.receive_data(data(syn()), 1.0)
    s.reply(reply(), 1.1)
    assert s.flush(True, 1.1) == [] and s.backlog == 1
    s.reply(reply(), 1.2)
    assert s.flush(True, 1.2) == [] and s.backlog == 2
    fs = frames(s.writable(1.201))
    assert [f.type for f in fs] == [wire.DATA, wire.DATA] and s.backlog == 0
    assert s.writable(1.3) == []


def test_a_burst_past_one_batch_is_split_and_the_rest_waits():
    s = leased()
    s.receive_data(data(syn()), 1.0)
    big = reply()
    big += bytes(60000)
    n = g.BATCH // len(big) + 3
    for _ in range(n):
        assert s.reply(bytearray(big), 1.1)
    first = frames(s.flush(False, 1.1))
    assert 0 < len(first) < n and s.backlog == n - len(first)
    rest = frames(s.writable(1.1))
    assert len(first) + len(rest) == n


def reply_from(sport: int, ecn: int = 0, pad: int = 1000):
    return bytearray(NO_VNET + bytes(IP(src=APP_REAL, dst="10.254.0.2", tos=ecn) /
                                     TCP(sport=443, dport=sport, flags="A", seq=5, ack=1001) / (b"x" * pad)))


def test_a_standing_queue_drops_and_is_counted_and_memory_stays_bounded():
    s = leased(session(queue_limit=300_000))
    s.receive_data(data(syn()), 1.0)
    t = 1.0
    # A download the connection drains at half the rate it arrives, for a second.
    for i in range(1000):
        t += 0.001
        assert s.reply(reply_from(40000), t) and s.reply(reply_from(40000), t)
        s.flush(True, t)
        pk = s.fq.dequeue(t)  # the connection takes one packet a millisecond
        assert pk is not None
        assert s.fq.bytes <= 300_000
    s.writable(t)
    assert s.counters["aqm_drops"] > 0
    assert s.counters["aqm_drops"] == s.fq.drops
    assert s.counters["queue_drops"] == s.fq.overlimit


def test_a_reply_of_an_interactive_flow_is_not_stuck_behind_a_download():
    s = leased()
    s.receive_data(data(syn()) + data(syn(sport=40001)), 1.0)
    for _ in range(500):
        s.reply(reply_from(40000), 1.1)
    s.flush(True, 1.1)
    assert s.reply(reply_from(40001, pad=10), 1.2)
    s.flush(True, 1.2)
    got = []
    while s.backlog:
        got += [IP(bytes(f.payload[10:]))[TCP].dport for f in frames(s.writable(1.21))]
    assert got.index(40001) < 5  # not at position 500
    assert len(got) == 501


def test_closed_by_shell_forgets_the_queue():
    s = leased()
    s.receive_data(data(syn()), 1.0)
    s.reply(reply(), 1.1)
    s.flush(True, 1.1)
    s.closed_by_shell()
    assert s.backlog == 0 and s.writable(1.2) == []


# ---- keepalive, close ---------------------------------------------------------------------------------

def test_keepalive_is_answered():
    s = up()
    assert [f.type for f in frames(s.receive_data(wire.frame(wire.KEEPALIVE), 5.0))] == [wire.KEEPALIVE]


def test_silence_for_three_keepalives_closes():
    s = up(now=0.0)
    assert s.tick(44.0) == []
    s.receive_data(wire.frame(wire.KEEPALIVE), 44.0)  # any bytes count as word from the agent
    assert s.tick(89.0) == []
    assert s.tick(89.1) == [g.Close("no word from the agent for 45s")] and s.closed
    assert s.tick(100.0) == []


def test_hello_never_sent_times_out_too():
    s = session()
    assert s.tick(45.1) == [g.Close("no word from the agent for 45s")]


def test_tick_expires_idle_flows():
    s = leased()
    s.receive_data(data(syn()), 1.0)
    assert s.nat.flows
    s.receive_data(wire.frame(wire.KEEPALIVE), 399.0)
    s.tick(400.0)
    assert not s.nat.flows


def test_close_from_the_agent_closes():
    s = up()
    assert s.receive_data(wire.control(wire.CLOSE, reason="bye"), 0.2) == [g.Close("agent closed: bye")]


@pytest.mark.parametrize("ftype", [wire.WELCOME, wire.LEASE_RESULT])
def test_a_frame_only_the_gateway_sends_closes(ftype):
    s = up()
    cmds = s.receive_data(wire.control(ftype, x=1), 0.2)
    assert cmds == [g.Close(f"protocol error: agent sent {wire.NAMES[ftype]}")]


def test_frames_after_a_close_in_the_same_read_are_ignored():
    s = leased()
    cmds = s.receive_data(wire.control(wire.CLOSE, reason="bye") + data(syn()), 1.0)
    assert cmds == [g.Close("agent closed: bye")]


def test_closed_by_the_shell_gives_the_inside_address_back():
    pool = InsidePool("10.254.0.0/16")
    s = up(session(pool=pool))
    assert s.closed_by_shell() == [g.Unbind(ip4("10.254.0.2"))]
    assert s.closed_by_shell() == []  # once
    s2 = up(session(pool=pool, sid=2))
    assert s2.inside == ip4("10.254.0.2")  # reused


# ---- bad frames (ztna/wire.py, issue 19) ----------------------------------------------------------------

BAD = {
    "unknown type": (bytes([0x7E, 0, 0, 1]) + b"x", "unknown frame type 0x7e"),
    "overlong control": (bytes([wire.LEASE, 0, 0x20, 0]), "exceeds 4096"),
    "overlong DATA": (wire.data_header(wire.MAX_DATA + 1), "outside"),
    "short DATA": (wire.data_header(5) + bytes(5), "outside"),
    "not JSON": (wire.frame(wire.LEASE, b"{nope"), "not JSON"),
    "not an object": (wire.frame(wire.LEASE, json.dumps([1, 2]).encode()), "payload is not a JSON object"),
    "nested JSON": (wire.frame(wire.LEASE, b"[" * 2000 + b"]" * 2000), "nested deeper than 8"),
    "bad UTF-8": (wire.frame(wire.LEASE, b'{"fqdn": "\xff"}'), "not JSON"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_frame_gets_close_with_the_reason(case):
    raw, why = BAD[case]
    s = up()
    cmds = s.receive_data(raw, 0.2)
    assert kinds(cmds) == ["Send", "Close"] and why in cmds[1].reason
    assert cmds[1].reason.startswith("protocol error: ")
    assert frames(cmds)[0].fields == {"reason": cmds[1].reason}
    assert s.closed


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_frame_after_a_good_hello_in_the_same_read_answers_the_hello_first(case):
    raw, why = BAD[case]
    s = session()
    cmds = s.receive_data(HELLO + raw, 0.1)
    assert kinds(cmds) == ["Bind", "Send", "Log", "Send", "Close"]
    assert [f.type for f in frames(cmds)] == [wire.WELCOME, wire.CLOSE]
    assert why in cmds[-1].reason


def test_a_bad_frame_after_good_data_in_the_same_read_still_writes_the_data():
    s = leased()
    cmds = s.receive_data(data(syn()) + BAD["nested JSON"][0], 1.0)
    assert kinds(cmds) == ["Log", "WriteTun", "Send", "Close"]


def test_an_unfinished_frame_waits_and_is_counted_as_pending():
    s = up()
    part = wire.control(wire.LEASE, fqdn=APP, addr=LEASE)[:-3]
    assert s.receive_data(part, 0.2) == []
    assert s.decoder.pending() == len(part)  # what the shell reports when the connection drops


@pytest.mark.parametrize("pkt", [
    bytes(IP(src=AGENT, dst=LEASE) / UDP(sport=5353, dport=53)),
    bytes(IP(src=AGENT, dst=LEASE) / ICMP(type=8, id=7)),
])
def test_udp_and_icmp_pass_like_tcp(pkt):
    s = leased()
    assert kinds(s.receive_data(data(pkt), 1.0)) == ["Log", "WriteTun"]


def test_malformed_ip_in_a_data_frame_is_dropped_and_counted():
    s = leased()
    junk = bytes([0x4F]) + bytes(19)  # IPv4 claiming a 60-byte header in 20 bytes
    cmds = s.receive_data(wire.data_header(10 + 20) + NO_VNET + junk, 1.0)
    assert kinds(cmds) == ["Log"] and s.nat.counters.malformed == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6), st.integers(min_value=0, max_value=len(HELLO)))
def test_any_bytes_after_any_prefix_of_a_hello_give_commands_never_an_exception(chunks, cut):
    s = session()
    cmds = s.receive_data(HELLO[:cut], 0.1)
    for c in chunks:
        cmds += s.receive_data(c, 0.2)
    assert all(type(c) in (g.Send, g.WriteTun, g.Resolve, g.Bind, g.Close, g.Log) for c in cmds)
    assert sum(isinstance(c, g.Close) for c in cmds) <= 1  # closed once, then nothing more is acted on


# Well-framed input reaches past the frame header into the control and NAT paths: every frame type,
# JSON objects whose values are of any type, DATA whose IP header fields are chosen, on a leased session.
_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=40) |
                            st.sampled_from([APP, LEASE, AGENT, "100.64.0.9", "0.0.0.0", "x" * 300]),
                            lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
                            max_leaves=6)
_control_frame = st.builds(
    lambda t, fields: wire.frame(t, json.dumps(fields).encode()[:wire.MAX_CONTROL]),
    st.sampled_from(sorted(wire.CONTROL)),
    st.dictionaries(st.sampled_from(["fqdn", "addr", "version", "tunnel_addr", "reason", "allowed", "x"]),
                    _json_values, max_size=4))
_ip_packet = st.builds(
    lambda src, dst, proto, ihl, tail: bytes([0x40 | ihl, 0]) + (20 + len(tail)).to_bytes(2, "big") + bytes(5)
    + bytes([proto]) + bytes(2) + ip4(src) + ip4(dst) + tail,
    st.sampled_from([AGENT, "100.64.0.2", "10.0.0.1"]), st.sampled_from([LEASE, "100.64.0.9", APP_REAL]),
    st.sampled_from([1, 6, 17, 47]), st.integers(min_value=0, max_value=15), st.binary(min_size=10, max_size=60))
_data_frame = _ip_packet.map(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_control_frame, _data_frame), min_size=1, max_size=8), st.booleans())
def test_well_framed_hostile_frames_on_a_leased_session_give_commands_never_an_exception(fs, joined):
    s = leased()
    chunks = [b"".join(fs)] if joined else fs
    cmds = []
    for c in chunks:
        cmds += s.receive_data(c, 1.0)
    assert all(type(c) in (g.Send, g.WriteTun, g.Resolve, g.Bind, g.Close, g.Log) for c in cmds)
    assert sum(isinstance(c, g.Close) for c in cmds) <= 1
    for c in cmds:
        if isinstance(c, g.WriteTun):  # only the agent's own address, to a lease it holds, ever enters the LAN
            for pkt in c.packets:
                assert bytes(pkt[10 + 12:10 + 16]) == ip4("10.254.0.2") and bytes(pkt[10 + 16:10 + 20]) == ip4(APP_REAL)
