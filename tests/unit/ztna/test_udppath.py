"""ztna.udppath: the agent's trying/up/fallback/reprobing states, the gateway's answers, rekeying, rebinding."""

import os

import pytest

from ztna import datachannel as dc
from ztna import udppath as u
from ztna import wire

AGENT_ID, GW_ID, SESSION, PORT = "alice", "gw.mycompany.net", 9, 51820
AT, ELSEWHERE = ("198.51.100.10", 40000), ("198.51.100.10", 41234)


def controls(cmds):
    frames = wire.Decoder().feed_untrusted(b"".join(c.data for c in cmds if isinstance(c, u.SendControl)))
    return [(f.type, f.fields) for f in frames]


def datagrams(cmds):
    return [c for c in cmds if isinstance(c, u.SendDatagram)]


def exchange(now=0.0):
    """An agent that offered and got the gateway's answer; returns (agent, gateway, the agent's probe)."""
    agent = u.AgentPath(agent_identity=AGENT_ID, gateway_identity=GW_ID)
    gw = u.GatewayPath(SESSION, port=PORT, agent_identity=AGENT_ID, gateway_identity=GW_ID)
    [(t, offer)] = controls(agent.start(now))
    assert t == wire.DC_OFFER and agent.state == u.TRYING
    [(t, accept)] = controls(gw.offered(offer, now))
    assert t == wire.DC_ACCEPT and accept["session"] == SESSION and accept["port"] == PORT
    [probe] = datagrams(agent.accepted(accept, now))
    return agent, gw, probe


def bring_up(now=0.0):
    agent, gw, probe = exchange(now)
    cmds, got = gw.datagram(probe.data, AT, now)
    [reply] = datagrams(cmds)
    assert reply.to == AT and got.moved and got.packet is None
    cmds, _ = agent.datagram(reply.data, ("203.0.113.1", PORT), now)
    assert agent.state == u.UP and agent.udp
    [(t, f)] = controls(cmds)
    assert t == wire.DC_PATH and f == {"udp": True}
    gw.path(f)
    assert gw.udp(now)
    return agent, gw


def test_trying_goes_up_on_an_authenticated_reply_and_data_crosses_both_ways():
    agent, gw = bring_up()
    _, got = gw.datagram(agent.seal_data(b"E" + b"\x00" * 39), AT, 0.1)
    assert got.packet == b"E" + b"\x00" * 39
    _, got = agent.datagram(gw.seal_data(b"reply packet"), ("203.0.113.1", PORT), 0.1)
    assert got.packet == b"reply packet"


def test_no_reply_within_the_bound_falls_back_and_the_state_waits_for_the_reprobe():
    agent, gw, probe = exchange()
    assert agent.tick(u.TRY_TIMEOUT - 0.01) == [] and agent.state == u.TRYING
    assert agent.tick(u.TRY_TIMEOUT) == [] and agent.state == u.FALLBACK and not agent.udp
    assert agent.tick(u.TRY_TIMEOUT + u.REPROBE_AFTER - 0.01) == []
    [probe] = datagrams(agent.tick(u.TRY_TIMEOUT + u.REPROBE_AFTER))
    assert agent.state == u.REPROBING
    t = u.TRY_TIMEOUT + u.REPROBE_AFTER
    assert agent.tick(t + u.TRY_TIMEOUT) == [] and agent.state == u.FALLBACK  # unanswered again
    [probe] = datagrams(agent.tick(t + u.TRY_TIMEOUT + u.REPROBE_AFTER))
    cmds, _ = gw.datagram(probe.data, AT, t + 17)
    cmds, _ = agent.datagram(datagrams(cmds)[0].data, ("203.0.113.1", PORT), t + 17)
    assert agent.state == u.UP and controls(cmds) == [(wire.DC_PATH, {"udp": True})]
    assert [s for _, s in agent.switches] == [u.FALLBACK, u.FALLBACK, u.UP]


def test_no_accept_at_all_falls_back_and_offers_again_later():
    agent = u.AgentPath(agent_identity=AGENT_ID, gateway_identity=GW_ID)
    agent.start(0.0)
    agent.tick(u.TRY_TIMEOUT)
    assert agent.state == u.FALLBACK
    [(t, f)] = controls(agent.tick(u.TRY_TIMEOUT + u.REPROBE_AFTER))
    assert t == wire.DC_OFFER and f["epoch"] == 0 and agent.state == u.TRYING


def test_an_up_path_probes_when_quiet_and_falls_back_after_silence():
    agent, gw = bring_up()
    [p] = datagrams(agent.tick(u.PROBE_EVERY))
    assert agent.tick(u.PROBE_EVERY + 0.5) == []  # one probe per PROBE_EVERY
    cmds, _ = gw.datagram(p.data, AT, u.PROBE_EVERY)
    agent.datagram(datagrams(cmds)[0].data, AT, u.PROBE_EVERY + 0.01)  # answered: alive
    t = u.PROBE_EVERY + 0.01
    assert agent.tick(t + u.DEAD_AFTER - 0.01) != [] and agent.state == u.UP  # a probe, still up
    cmds = agent.tick(t + u.DEAD_AFTER)
    assert agent.state == u.FALLBACK and controls(cmds) == [(wire.DC_PATH, {"udp": False})]
    gw.path({"udp": False})
    assert not gw.udp(t + 0.5)


def test_the_gateway_leaves_udp_by_itself_when_the_agent_goes_silent():
    agent, gw = bring_up()
    assert gw.udp(u.DEAD_AFTER - 0.01) and not gw.udp(u.DEAD_AFTER)


def test_forged_and_garbage_datagrams_are_counted_and_change_nothing():
    agent, gw = bring_up()
    before = (gw.channel.peer, gw.last_udp_rx)
    bad = [b"", b"\x5a", os.urandom(100), bytes([dc.MAGIC]) + SESSION.to_bytes(4, "big") + b"\x00" * 40,
           agent.seal_data(b"x")[:-1] + b"\x00"]
    for data in bad:
        cmds, got = gw.datagram(data, ELSEWHERE, 1.0)
        assert cmds == [] and got == u.Received(None)
    assert (gw.channel.peer, gw.last_udp_rx) == before
    assert sum(v for k, v in gw.counters.items() if k.startswith("udp_rejected_")) == len(bad)
    # an authenticated datagram of an unknown kind is dropped too
    cmds, got = gw.datagram(agent.channel.seal(b"\x07junk"), AT, 1.0)
    assert got.packet is None and gw.counters["udp_rejected_bad_kind"] == 1
    # a replay from elsewhere neither delivers nor moves
    dg = agent.seal_data(b"once")
    assert gw.datagram(dg, AT, 1.0)[1].packet == b"once"
    assert gw.datagram(dg, ELSEWHERE, 1.0)[1] == u.Received(None) and gw.channel.peer == AT
    # garbage at the agent does not bring a fallen path up
    agent2, _, _ = exchange()
    agent2.datagram(os.urandom(64), AT, 0.1)
    assert agent2.state == u.TRYING


def test_an_authenticated_datagram_from_a_new_source_moves_the_gateways_peer():
    agent, gw = bring_up()
    cmds, got = gw.datagram(agent.seal_data(b"after NAT rebinding"), ELSEWHERE, 1.0)
    assert got.moved and gw.channel.peer == ELSEWHERE and gw.counters["udp_peer_moves"] == 2
    [p] = datagrams(agent.tick(2.5))
    [reply] = datagrams(gw.datagram(p.data, ELSEWHERE, 2.5)[0])
    assert reply.to == ELSEWHERE


def test_rekey_by_time_keeps_the_path_up_and_the_new_epoch_works():
    agent, gw = bring_up()
    t = dc.REKEY_AFTER_SECONDS
    gw.datagram(agent.seal_data(b"keep alive"), AT, t - 1)
    agent.last_udp_rx = t - 0.1  # pretend the gateway's traffic kept the path alive
    cmds = agent.tick(t)
    [(typ, offer)] = [c for c in controls(cmds) if c[0] == wire.DC_OFFER]
    assert offer["epoch"] == 1 and agent.state == u.UP
    assert wire.DC_OFFER not in [typ for typ, _ in controls(agent.tick(t + 0.01))]  # one offer outstanding
    [(_, accept)] = controls(gw.offered(offer, t))
    assert agent.accepted(accept, t) == [] and agent.epoch == 1
    _, got = gw.datagram(agent.seal_data(b"new epoch"), AT, t + 0.1)
    assert got.packet == b"new epoch" and gw.channel.current == 1
    with pytest.raises(ValueError):
        gw.offered(offer, t)  # an epoch is keyed once


def test_rekey_by_packet_count(monkeypatch):
    monkeypatch.setattr(dc, "REKEY_AFTER_PACKETS", 5)
    agent, gw = bring_up()
    for _ in range(5):
        agent.seal_data(b"p")
    assert [t for t, _ in controls(agent.tick(0.1))] == [wire.DC_OFFER]


@pytest.mark.parametrize("change", [
    {"epoch": 3}, {"epoch": "0"}, {"session": -1}, {"session": True}, {"port": 0}, {"port": 70000},
    {"pub": "not base64!"}, {"pub": "AAAA"}, {"nonce": None}, {"pub": "A" * 43 + "="},
])
def test_a_bad_accept_is_refused_and_installs_nothing(change):
    agent = u.AgentPath(agent_identity=AGENT_ID, gateway_identity=GW_ID)
    gw = u.GatewayPath(SESSION, port=PORT, agent_identity=AGENT_ID, gateway_identity=GW_ID)
    [(_, offer)] = controls(agent.start(0.0))
    [(_, accept)] = controls(gw.offered(offer, 0.0))
    with pytest.raises(ValueError):
        agent.accepted({**accept, **change}, 0.0)
    assert agent.channel is None and agent.state == u.TRYING


def test_keys_bound_to_the_identities_do_not_open_across_identities():
    agent = u.AgentPath(agent_identity="mallory", gateway_identity=GW_ID)
    gw = u.GatewayPath(SESSION, port=PORT, agent_identity=AGENT_ID, gateway_identity=GW_ID)
    [(_, offer)] = controls(agent.start(0.0))
    [(_, accept)] = controls(gw.offered(offer, 0.0))
    [probe] = datagrams(agent.accepted(accept, 0.0))
    assert gw.datagram(probe.data, AT, 0.0) == ([], u.Received(None))
    assert gw.counters["udp_rejected_bad_tag"] == 1


def test_a_bad_offer_is_refused():
    gw = u.GatewayPath(SESSION, port=PORT, agent_identity=AGENT_ID, gateway_identity=GW_ID)
    for bad in ({}, {"epoch": 0, "pub": "x", "nonce": "y"}, {"epoch": 300, "pub": "", "nonce": ""}):
        with pytest.raises(ValueError):
            gw.offered(bad, 0.0)
    assert gw.channel.sender is None


def test_session_of_reads_the_header_or_says_none():
    agent, gw = bring_up()
    assert u.session_of(agent.seal_data(b"x")) == SESSION
    assert u.session_of(b"\x00" * 40) is None and u.session_of(b"\x5a") is None


def test_stop_forgets_the_keys():
    agent, _ = bring_up()
    agent.stop()
    assert agent.state == u.OFF and agent.channel is None and agent.tick(100.0) == []


def _super_packet(size=5000):
    from scapy.layers.inet import IP, TCP

    from ztna import segment as s
    from ztna.ippacket import checksum
    raw = bytearray(bytes(IP(src="100.64.0.2", dst="10.20.0.5", flags="DF") / TCP(sport=1, dport=2, flags="A")
                          / os.urandom(size)))
    pseudo = raw[12:20] + bytes([0, 6]) + (len(raw) - 20).to_bytes(2, "big")
    raw[36:38] = (~checksum(bytes(pseudo)) & 0xFFFF).to_bytes(2, "big")
    return s.VNET.pack(s.F_NEEDS_CSUM, s.GSO_TCPV4, 40, 1460, 20, 16) + bytes(raw)


def test_partial_checksums_go_only_to_a_peer_that_said_it_takes_them():
    from ztna import segment as s
    agent, gw = bring_up()
    assert agent.peer_partial and gw.peer_partial  # both ends of this version say so
    sp = _super_packet()
    dgs, rest = agent.seal_packets([sp], 1400)
    assert rest == [] and len(dgs) == 4
    got = [gw.datagram(d, AT, 0.2)[1] for d in dgs]
    assert all(g.partial for g in got) and [g.packet for g in got] == s.cut(sp, 1400)[0]
    [joined] = s.coalesce([s.vnet_for(g.packet, True) for g in got])
    assert s.VNET.unpack_from(joined)[1] == s.GSO_TCPV4 and joined[10:] == sp[10:]  # the same bytes as sent
    # a peer that did not say it (an older one) gets DATA with complete checksums
    gw.peer_partial = False
    dgs, _ = gw.seal_packets([sp], 1400)
    got = [agent.datagram(d, ("203.0.113.1", PORT), 0.2)[1] for d in dgs]
    assert not any(g.partial for g in got) and [g.packet for g in got] == s.segment(sp, 1400)


def test_a_partial_datagram_that_is_not_tcp_or_udp_over_ipv4_is_refused():
    agent, gw = bring_up()
    before = gw.counters["udp_rx"]
    for body in (b"", b"E\x00\x00\x14", bytes(20), b"E" + bytes(8) + b"\x01" + bytes(10)):
        _, got = gw.datagram(agent.channel.seal(bytes([u.KIND_DATA_PARTIAL]) + body), AT, 0.3)
        assert got.packet is None
    assert gw.counters["udp_rejected_bad_partial"] == 4 and gw.counters["udp_rx"] == before
