"""agent.session: playbooks of events and the commands the agent's core answers with.

Every tunnel state (down, connecting, hello, up) and every protocol error of
SPEC.md §1 and ztna/wire.py from the agent's side, without root: the first
packet building the tunnel, leases granted or refused, reconnect with queued
first packets, queue limits, idle reclaim, keepalives, refusals, anti-spoofing,
every bad frame from the gateway.
"""

import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from dnslib import DNSRecord
from scapy.layers.inet import ICMP, IP, TCP, UDP

from agent import session as a
from agent.leases import LeasePool
from ztna import wire
from ztna.ippacket import NO_VNET, checksum
from ztna.names import PatternSet

APP, HR = "app.mycompany.net", "hr.mycompany.net"
ME = "100.64.0.1"


def agent(**kw):
    pool_kw = {k: kw.pop(k) for k in ("max_leases", "max_per_wildcard", "idle_timeout") if k in kw}
    pool = LeasePool("100.64.0.0/10", [ME, "100.64.0.2"], grace=30.0, **{"idle_timeout": 300.0, **pool_kw})
    return a.AgentSession(pool, PatternSet([APP, HR, "*.apps.mycompany.net"]), address=ME, keepalive=15.0, **kw)


def lease(s, name=APP, now=0.0):
    d, cmds = s.dns_query(DNSRecord.question(name), now)
    assert d.lease is not None, d.why
    return d.lease.addr_text


def syn(dst, sport=40000, src=ME, seq=1000):
    return NO_VNET + bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=443, flags="S", seq=seq))


def frames(cmds):
    d = wire.Decoder()
    return [f for c in cmds if isinstance(c, a.Send) for f in d.feed_untrusted(c.data)]


def kinds(cmds):
    return [type(c).__name__ for c in cmds]


def welcome(identity="alice", session=1):
    return wire.control(wire.WELCOME, version=1, identity=identity, session=session)


def result(addr, allowed=True, fqdn=APP, reason="allowed by 'app.mycompany.net'"):
    return wire.control(wire.LEASE_RESULT, fqdn=fqdn, addr=addr, allowed=allowed, reason=reason)


def up(s=None, now=0.5):
    """An agent whose tunnel is up (HELLO answered), nothing leased yet."""
    s = s or agent()
    s.state = a.CONNECTING  # as after Connect
    assert [f.type for f in frames(s.tunnel_up(now))] == [wire.HELLO]
    s.receive_data(welcome(), now)
    assert s.state == a.UP
    return s


def allowed(s=None, name=APP, now=1.0):
    s = up(s)
    addr = lease(s, name, now)
    cmds = s.tun_packets([syn(addr)], now)
    assert [f.type for f in frames(cmds)] == [wire.LEASE]
    cmds = s.receive_data(result(addr, fqdn=name), now)
    assert [f.type for f in frames(cmds)] == [wire.DATA]
    return s, addr


# ---- DNS ---------------------------------------------------------------------------------------

def test_a_private_name_gets_a_lease_and_another_name_is_forwarded():
    s = agent()
    d, cmds = s.dns_query(DNSRecord.question(APP), 0.0)
    assert d.lease.addr_text == "100.64.0.3" and cmds == []
    d, _ = s.dns_query(DNSRecord.question("www.example.com"), 0.0)
    assert d.forward


# ---- the first packet builds the tunnel ------------------------------------------------------------

def test_first_packet_to_a_lease_connects_and_waits():
    s = agent()
    addr = lease(s)
    cmds = s.tun_packets([syn(addr)], 1.0)
    assert kinds(cmds) == ["Log", "Connect"]  # the flow's line, then the tunnel
    assert cmds[0].message == f"flow tcp {ME}:40000 -> {APP} ({addr}):443"
    assert s.state == a.CONNECTING and len(s.pending[s.pool.by_name[APP].addr]) == 1


def test_while_connecting_packets_wait_and_no_second_connect():
    s = agent()
    addr = lease(s)
    s.tun_packets([syn(addr)], 1.0)
    assert kinds(s.tun_packets([syn(addr), syn(addr)], 1.5)) == []
    assert sum(len(q) for q in s.pending.values()) == 3


def test_handshake_hello_then_welcome_announces_the_waiting_lease_then_its_packets_go():
    s = agent()
    addr = lease(s)
    s.tun_packets([syn(addr, seq=1), syn(addr, seq=2)], 1.0)
    hello = frames(s.tunnel_up(1.2))
    assert [(f.type, f.fields) for f in hello] == [(wire.HELLO, {"version": 1, "tunnel_addr": ME})]
    assert s.state == a.HELLO
    cmds = s.receive_data(welcome(), 1.3)
    assert s.state == a.UP and s.counters["tunnel_up"] == 1
    assert cmds[0].message == "tunnel up: gateway knows us as alice (session 1)"
    assert [(f.type, f.fields) for f in frames(cmds)] == [(wire.LEASE, {"fqdn": APP, "addr": addr})]
    cmds = s.receive_data(result(addr), 1.4)
    sent = frames(cmds)
    assert [f.type for f in sent] == [wire.DATA, wire.DATA]  # in the order they came
    assert [IP(bytes(f.payload[10:]))[TCP].seq for f in sent] == [1, 2]
    assert not s.pending
    # From now on a packet goes straight into the tunnel, one write for the burst.
    cmds = s.tun_packets([syn(addr, sport=40001), syn(addr, sport=40002)], 1.5)
    assert kinds(cmds) == ["Log", "Log", "Send"] and len(frames(cmds)) == 2
    assert s.counters["tunnel_tx_packets"] == 2


def test_connect_is_retried_after_the_backoff_by_a_packet_or_by_the_tick():
    from agent.backoff import Backoff

    s = agent(backoff=Backoff(base=1.0, cap=4.0, healthy=10.0, rand=lambda: 1.0))
    addr = lease(s)
    assert "Connect" in kinds(s.tun_packets([syn(addr)], 1.0))  # the first attempt waits for nothing
    assert "next attempt in 1.00s" in s.tunnel_failed("cannot find gateway", 1.1)[0].message
    assert "Connect" not in kinds(s.tun_packets([syn(addr)], 1.5))
    assert "Connect" in kinds(s.tun_packets([syn(addr)], 2.1))
    assert "in 2.00s" in s.tunnel_failed("cannot find gateway", 2.2)[0].message
    s.tun_packets([syn(addr)], 2.3)  # waits in the queue past the failure
    assert "Connect" not in kinds(s.tick(3.0)) and "Connect" in kinds(s.tick(4.3))  # nobody else sends: the tick tries
    s.tunnel_up(4.4)
    s.receive_data(wire.control(wire.WELCOME, version=1, identity="alice", session=1), 4.5)
    s.tunnel_closed("peer closed the connection", 5.0)  # up for half a second: still failing
    assert s.backoff.failures == 3 and not s.backoff.may_try(5.0)
    s.tunnel_up(9.0)
    s.receive_data(wire.control(wire.WELCOME, version=1, identity="alice", session=2), 9.1)
    s.tunnel_closed("peer closed the connection", 60.0)  # a healthy session: the count starts again
    assert s.backoff.failures == 0 and "Connect" in kinds(s.tun_packets([syn(addr)], 60.0))


def test_tunnel_not_built_tells_every_waiting_sender_host_unreachable():
    s = agent()
    addr = lease(s)
    s.tun_packets([syn(addr, sport=1), syn(addr, sport=2)], 1.0)
    cmds = s.tunnel_failed("connection refused", 1.5)
    assert kinds(cmds) == ["Log", "WriteTun"] and len(cmds[1].packets) == 2
    err = IP(cmds[1].packets[0][10:])
    assert (err.src, err.dst, err[ICMP].type, err[ICMP].code) == (addr, ME, 3, 1)
    assert checksum(bytes(err[ICMP])) == 0
    assert s.state == a.DOWN and not s.pending and s.last_error == "connection refused"


def test_gateway_refusing_during_hello_fails_the_waiting_packets():
    s = agent()
    addr = lease(s)
    s.tun_packets([syn(addr)], 1.0)
    s.tunnel_up(1.1)
    s.tun_packets([NO_VNET + bytes(IP(src=ME, dst=addr) / TCP(sport=40001, dport=443, flags="A", seq=5, ack=77))], 1.15)
    cmds = s.tunnel_closed("gateway closed the tunnel: certificate revoked", 1.2)
    assert kinds(cmds)[0] == "Log" and kinds(cmds)[-1] == "WriteTun" and cmds[0].level == logging.ERROR
    # Refused, not "unreachable": a RST for the new connection and for the established flow's ACK.
    rsts = [IP(p[10:]) for p in cmds[-1].packets]
    assert [(r[TCP].dport, "R" in str(r[TCP].flags)) for r in rsts] == [(40000, True), (40001, True)]
    assert rsts[1][TCP].seq == 77  # the ACK's ack number: the RST lands in the window
    assert s.state == a.DOWN and not s.pending


# ---- leases granted or refused ----------------------------------------------------------------------

def test_a_denied_lease_refuses_its_waiting_packets_and_every_later_one():
    s = up()
    addr = lease(s, HR)
    s.tun_packets([syn(addr)], 1.0)
    cmds = s.receive_data(result(addr, allowed=False, fqdn=HR, reason="identity 'alice' is not allowed"), 1.1)
    assert kinds(cmds) == ["Log", "Log", "WriteTun"] and cmds[0].level == logging.WARNING
    rst = IP(cmds[-1].packets[0][10:])
    assert (rst.src, rst.dst, str(rst[TCP].flags), rst[TCP].ack) == (addr, ME, "RA", 1001)
    cmds = s.tun_packets([syn(addr)], 1.2)
    assert kinds(cmds) == ["Log", "WriteTun"] and cmds[0].message == f"refused SYN to {addr}: denied by the gateway"
    assert s.counters["refused"] == 2


def test_a_refusal_for_now_refuses_the_waiting_packets_and_the_next_packet_asks_again():
    s = up()
    addr = lease(s)
    s.tun_packets([syn(addr)], 1.0)
    refusal = wire.control(wire.LEASE_RESULT, fqdn=APP, addr=addr, allowed=False, retry=True,
                           reason="64 private-DNS lookups of this session are waiting already; lease again later")
    cmds = s.receive_data(refusal, 1.1)
    assert kinds(cmds)[-1] == "WriteTun" and "denied by the gateway for now" in cmds[0].message
    cmds = s.tun_packets([syn(addr, sport=2)], 1.2)  # not refused for good: leased again
    assert [f.type for f in frames(cmds)] == [wire.LEASE]
    assert [f.type for f in frames(s.receive_data(result(addr), 1.3))] == [wire.DATA]


def test_a_result_for_a_lease_reclaimed_meanwhile_is_ignored():
    s = up()
    assert s.receive_data(result("100.64.0.99"), 1.0) == []
    addr = lease(s)
    assert s.receive_data(result(addr, fqdn="other.mycompany.net"), 1.0) == []


def test_a_result_without_a_valid_address_closes():
    s = up()
    assert s.receive_data(result("nope"), 1.0) == [a.Close("protocol error: LEASE_RESULT without a valid addr")]


def test_a_result_before_welcome_closes():
    s = agent()
    s.tunnel_up(0.1)
    assert s.receive_data(result("100.64.0.3"), 0.2) == [a.Close("protocol error: LEASE_RESULT before WELCOME")]


def test_data_before_welcome_closes_and_never_reaches_the_tun():
    s = agent()
    s.tunnel_up(0.1)
    pkt = NO_VNET + bytes(IP(src="192.168.1.20", dst=ME) / TCP(sport=443, dport=40000, flags="SA"))
    assert s.receive_data(wire.frame(wire.DATA, pkt), 0.2) == [a.Close("protocol error: DATA before WELCOME")]


# ---- refusals, anti-spoofing, what never enters the tunnel -----------------------------------------------

@pytest.mark.parametrize("pkt,want", [
    (syn("100.64.9.9"), ("TCP", "RA")),
    (NO_VNET + bytes(IP(src=ME, dst="100.64.9.9") / UDP(sport=5000, dport=53)), ("ICMP", 3)),   # port unreachable
    (NO_VNET + bytes(IP(src=ME, dst="100.64.9.9") / ICMP(type=8)), ("ICMP", 1)),              # host unreachable
])
def test_an_address_not_leased_is_refused_at_once(pkt, want):
    s = agent()
    cmds = s.tun_packets([pkt], 1.0)
    out = IP(next(c for c in cmds if isinstance(c, a.WriteTun)).packets[0][10:])
    assert out.src == "100.64.9.9" and out.dst == ME
    if want[0] == "TCP":
        assert str(out[TCP].flags) == want[1]
    else:
        assert out[ICMP].type == 3 and out[ICMP].code == want[1]
    assert s.state == a.DOWN and s.counters["refused"] == 1  # no tunnel for it


def test_rst_and_icmp_errors_are_never_answered():
    s = agent()
    rst = NO_VNET + bytes(IP(src=ME, dst="100.64.9.9") / TCP(flags="R"))
    err = NO_VNET + bytes(IP(src=ME, dst="100.64.9.9") / ICMP(type=3))
    assert s.tun_packets([rst, err], 1.0) == []
    assert s.counters["refused"] == 2


def test_a_forged_source_is_dropped_counted_and_logged_at_a_bounded_rate():
    s, addr = allowed()
    cmds = s.tun_packets([syn(addr, src="100.64.7.7")] * 3 + [syn(addr, sport=1)], 2.0)
    assert kinds(cmds) == ["Log", "Log", "Send"] and len(frames(cmds)) == 1  # only the real one enters
    assert "dropped a packet from 100.64.7.7" in cmds[0].message and cmds[0].level == logging.WARNING
    assert s.counters["dropped_spoofed_src"] == 3
    assert kinds(s.tun_packets([syn(addr, src="100.64.7.7")], 5.0)) == []  # within 10 s: counted, not logged
    assert s.tun_packets([syn(addr, src="100.64.7.7")], 12.1)[0].message.endswith("(3 similar lines suppressed)")
    assert s.counters["dropped_spoofed_src"] == 5


def test_forged_sources_each_new_share_one_log_budget():
    """A flood forging a new source every packet writes one line per interval, not one per packet."""
    s, addr = allowed()
    forged = [syn(addr, src=f"100.64.{i // 250}.{i % 250 + 2}") for i in range(500)]
    cmds = s.tun_packets(forged, 2.0)
    assert kinds(cmds).count("Log") == 1
    assert s.counters["dropped_spoofed_src"] == 500


def test_not_ipv4_and_malformed_are_dropped_and_counted():
    s = agent()
    v6 = NO_VNET + bytes([0x60]) + bytes(39)
    bad = NO_VNET + bytes([0x4F]) + bytes(19)  # header length past the packet
    assert s.tun_packets([v6, b"short", bad], 1.0) == []
    assert s.counters["dropped_not_ipv4"] == 2 and s.counters["dropped_malformed"] == 1


# ---- queue limits ------------------------------------------------------------------------------------------

def test_at_most_pending_max_packets_wait_per_lease():
    s = agent(pending_max=64)
    addr = lease(s)
    other = lease(s, "x.apps.mycompany.net")
    s.tun_packets([syn(addr, sport=i % 60000 + 1) for i in range(70)] + [syn(other)], 1.0)
    assert [len(q) for q in s.pending.values()] == [64, 1]
    assert s.counters["dropped_pending_full"] == 6


# ---- reconnect with queued first packets -----------------------------------------------------------------------

def test_reconnect_decides_every_lease_again_and_announces_the_busy_ones():
    s, addr = allowed()
    idle = lease(s, "y.apps.mycompany.net", 1.0)  # leased, never used: not announced again
    cmds = s.tunnel_closed("no word from the gateway for 45s", 2.0)
    assert kinds(cmds) == ["Log"] and s.state == a.DOWN
    assert all(l.state == "new" for l in s.pool.by_name.values())
    cmds = s.tun_packets([syn(addr, sport=50000)], 2.5)  # a new first packet
    assert "Connect" in kinds(cmds) and len(s.pending) == 1
    s.tunnel_up(2.6)
    cmds = s.receive_data(welcome(session=2), 2.7)
    assert [f.fields for f in frames(cmds)] == [{"fqdn": APP, "addr": addr}]
    assert idle not in [f.fields["addr"] for f in frames(cmds)]
    sent = frames(s.receive_data(result(addr), 2.8))
    assert [IP(bytes(f.payload[10:]))[TCP].sport for f in sent] == [50000]


def test_a_new_tunnel_starts_a_new_frame_stream():
    s = up()
    s.receive_data(wire.control(wire.KEEPALIVE)[:2], 1.0)  # half a frame, then the tunnel drops
    s.tunnel_closed("peer closed the connection", 1.1)
    s.tunnel_up(1.2)
    assert s.receive_data(welcome(), 1.3)[0].message.startswith("tunnel up")


# ---- timers: keepalive, keepalive timeout, idle reclaim -------------------------------------------------------

def test_keepalive_after_quiet_and_close_after_three_silent_keepalives():
    s = up(now=0.0)
    assert s.tick(10.0) == []
    assert [f.type for f in frames(s.tick(15.1))] == [wire.KEEPALIVE]
    s.receive_data(wire.frame(wire.KEEPALIVE), 20.0)
    assert [f.type for f in frames(s.tick(64.9))] == [wire.KEEPALIVE]  # quiet, not yet silent
    assert s.tick(65.1) == [a.Close("no word from the gateway for 45s")]


def test_no_keepalive_while_the_tunnel_is_down():
    s = agent()
    assert s.tick(100.0) == []


def test_an_idle_lease_is_reclaimed_and_released_at_the_gateway():
    s = up(now=0.0)
    addr = lease(s, APP, 0.0)
    s.receive_data(wire.frame(wire.KEEPALIVE), 300.5)
    cmds = s.tick(301.0)
    assert cmds[0] == a.Log(logging.INFO, f"lease {APP} {addr} reclaimed (idle)")
    assert [(f.type, f.fields) for f in frames(cmds)] == [(wire.RELEASE, {"addr": addr})]
    assert APP not in s.pool.by_name


def test_a_lease_with_a_live_flow_is_not_reclaimed():
    s, addr = allowed(now=0.0)
    s.tun_packets([syn(addr)], 299.0)
    s.receive_data(wire.frame(wire.KEEPALIVE), 301.0)
    assert not any(isinstance(c, a.Log) and "reclaimed" in c.message for c in s.tick(301.0))


def test_a_lease_cap_takes_the_idle_lease_and_releases_it():
    s = up(agent(max_per_wildcard=1), now=0.0)
    first = lease(s, "a.apps.mycompany.net", 0.0)
    d, cmds = s.dns_query(DNSRecord.question("b.apps.mycompany.net"), 100.0)
    assert d.lease.addr_text == first  # the address goes to the new name
    assert kinds(cmds) == ["Log", "Send"] and "cap reached" in cmds[0].message
    assert [(f.type, f.fields) for f in frames(cmds)] == [(wire.RELEASE, {"addr": first})]
    assert s.counters["lease_cap_reached"] == 1


# ---- frames from the gateway ---------------------------------------------------------------------------------

def test_data_from_the_gateway_is_written_to_the_tun():
    s, addr = allowed()
    pkt = NO_VNET + bytes(IP(src=addr, dst=ME) / TCP(sport=443, dport=40000, flags="SA"))
    cmds = s.receive_data(wire.data_header(len(pkt)) + pkt + wire.data_header(len(pkt)) + pkt, 2.0)
    assert cmds == [a.WriteTun([bytearray(pkt), bytearray(pkt)])]


def test_welcome_twice_closes():
    s = up()
    assert s.receive_data(welcome(), 1.0) == [a.Close("protocol error: WELCOME twice")]


@pytest.mark.parametrize("ftype", [wire.HELLO, wire.LEASE, wire.RELEASE])
def test_a_frame_only_the_agent_sends_closes(ftype):
    s = up()
    assert s.receive_data(wire.control(ftype, x=1), 1.0) == [
        a.Close(f"protocol error: gateway sent {wire.NAMES[ftype]}")]


def test_close_from_the_gateway_closes_and_later_frames_are_ignored():
    s = up()
    cmds = s.receive_data(wire.control(wire.CLOSE, reason="gateway stopping") + welcome(), 1.0)
    assert cmds == [a.Close("gateway closed the tunnel: gateway stopping")]


def test_keepalive_from_the_gateway_needs_no_answer():
    s = up()
    assert s.receive_data(wire.frame(wire.KEEPALIVE), 1.0) == []
    assert s.last_rx == 1.0


BAD = {
    "unknown type": (bytes([0x7E, 0, 0, 1]) + b"x", "unknown frame type 0x7e"),
    "overlong control": (bytes([wire.LEASE_RESULT, 0, 0x20, 0]), "exceeds 4096"),
    "overlong DATA": (wire.data_header(wire.MAX_DATA + 1), "outside"),
    "not JSON": (wire.frame(wire.LEASE_RESULT, b"{nope"), "not JSON"),
    "not an object": (wire.frame(wire.LEASE_RESULT, json.dumps("x").encode()), "not a JSON object"),
    "nested JSON": (wire.frame(wire.LEASE_RESULT, b"[" * 2000 + b"]" * 2000), "nested deeper than 8"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_frame_after_a_good_welcome_in_the_same_read(case):
    raw, why = BAD[case]
    s = agent()
    addr = lease(s)
    s.tun_packets([syn(addr)], 1.0)
    s.tunnel_up(1.1)
    cmds = s.receive_data(welcome() + raw, 1.2)
    # The WELCOME is acted on (the lease announced), then the gateway is told why, and the tunnel closes.
    assert kinds(cmds) == ["Log", "Send", "Send", "Close"]
    assert [f.type for f in frames(cmds)] == [wire.LEASE, wire.CLOSE]
    assert why in cmds[-1].reason and cmds[-1].reason.startswith("protocol error: ")
    assert frames(cmds)[1].fields == {"reason": cmds[-1].reason}


def test_bytes_when_no_tunnel_is_up_are_ignored():
    assert agent().receive_data(welcome(), 1.0) == []


# ---- stopping ----------------------------------------------------------------------------------------------------

def test_stop_says_close_to_the_gateway():
    s = up()
    cmds = s.stop(5.0)
    assert [f.fields for f in frames(cmds)] == [{"reason": "agent stopping"}]
    assert cmds[-1] == a.Close("agent stopping")
    assert agent().stop(5.0) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_any_bytes_from_the_gateway_give_commands_never_an_exception(chunks):
    s = up()
    cmds = []
    for c in chunks:
        cmds += s.receive_data(c, 1.0)
        if cmds and isinstance(cmds[-1], a.Close):
            break  # the shell closes the tunnel here; nothing more is read
    assert all(type(c) in (a.Send, a.WriteTun, a.Close, a.Log) for c in cmds)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=80), max_size=8))
def test_any_tun_packets_give_commands_never_an_exception(bufs):
    s, addr = allowed()
    cmds = s.tun_packets([NO_VNET + b for b in bufs] + list(bufs), 2.0)
    assert all(type(c) in (a.Send, a.WriteTun, a.Connect, a.Log) for c in cmds)


# ---- the fair queue while the connection is blocked -------------------------------------------------

def data_pkt(dst, sport=40000, pad=1000):
    return NO_VNET + bytes(IP(src=ME, dst=dst) / TCP(sport=sport, dport=443, flags="A", seq=1001) / (b"x" * pad))


def test_while_the_tunnel_is_blocked_packets_wait_and_go_when_it_takes_more():
    s, addr = allowed()
    assert s.tunnel_blocked(True, 2.0) == []
    assert frames(s.tun_packets([data_pkt(addr), data_pkt(addr)], 2.0)) == []
    assert s.backlog == 2
    fs = frames(s.tunnel_blocked(False, 2.001))
    assert [f.type for f in fs] == [wire.DATA, wire.DATA] and s.backlog == 0
    # Not blocked and nothing waiting: straight through.
    assert [f.type for f in frames(s.tun_packets([data_pkt(addr)], 2.1))] == [wire.DATA]


def test_a_packet_of_a_second_flow_jumps_the_uploads_backlog():
    s, addr = allowed()
    s.tunnel_blocked(True, 2.0)
    s.tun_packets([data_pkt(addr)] * 300, 2.0)
    s.tun_packets([data_pkt(addr, sport=40001, pad=10)], 2.05)
    got = []
    s.blocked = False
    while s.backlog:
        got += [IP(bytes(f.payload[10:]))[TCP].sport for f in frames(s.tunnel_writable(2.06))]
    assert len(got) == 301 and got.index(40001) < 5


def test_a_queue_that_stands_is_cut_by_codel_and_counted():
    s, addr = allowed()
    s.tunnel_blocked(True, 2.0)
    t = 2.0
    for _ in range(1000):
        t += 0.001
        s.tun_packets([data_pkt(addr), data_pkt(addr)], t)
        assert s.fq.dequeue(t) is not None  # the connection drains half of what comes
    s.tunnel_blocked(False, t)
    assert s.counters["aqm_drops"] == s.fq.drops > 0
    assert s.fq.bytes <= a.QUEUE_LIMIT


def test_a_closed_tunnel_forgets_its_queue():
    s, addr = allowed()
    s.tunnel_blocked(True, 2.0)
    s.tun_packets([data_pkt(addr)], 2.0)
    s.tunnel_closed("gone", 2.1)
    assert s.backlog == 0 and not s.blocked
