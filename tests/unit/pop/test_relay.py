"""pop.relay against gateway.connector.ConnectorCore and a real GatewaySession, all sans-IO.

The bytes the PoP would write to a connector tunnel are fed to the connector's
core and back, so the agent's HELLO/LEASE/DATA cross the mux exactly as on the wire.
"""

import ipaddress

from scapy.layers.inet import IP, TCP

from gateway import session as g
from gateway.connector import Backoff, ChannelData, ConnectorCore, NewChannel, SendTunnel, Up, CloseTunnel
from gateway.nat import InsidePool
from gateway.policy import Policy
from pop import relay as r
from pop.policy import PopPolicy
from ztna import mux, wire
from ztna.ippacket import NO_VNET, ip4

APP, REAL, LEASE, AGENT = "app.corp.example", "192.168.1.20", "100.64.0.3", "100.64.0.1"
NET = ipaddress.IPv4Network("100.64.0.0/10")


class Lab:
    """A PoP relay, one connector (gateway side core + its sessions) and the agent's inbox."""

    def __init__(self, window=1024 * 1024, resources=(APP,)):
        self.relay = r.Relay(PopPolicy({"alice": [APP], "bob": ["other.example"]}, {"gw1": [APP]}), window=window)
        self.gw_policy = Policy({"alice": [APP]})
        self.pool = InsidePool("10.254.0.0/16")
        self.cores = {}
        self.sessions = {}   # (cid, ch) -> GatewaySession
        self.agent_in = {}   # aid -> wire.Decoder, frames
        self.inbox = {}
        self.logs = []
        self.flows = []
        self.closed_agents = []
        self.closed_connectors = []
        self.tun = []
        for i, res in enumerate(resources, 1):
            self.connector(i, "gw1", res)

    def connector(self, cid, identity, resource):
        core = ConnectorCore(resource, window=self.relay.window)
        self.cores[cid] = core
        self.do(self.relay.connector_up(cid, identity, "1.2.3.4:5", 0.0))
        self.do(self.relay.connector_data(cid, core.hello(), 0.0))
        return core

    def do(self, cmds):
        for c in cmds:
            t = type(c)
            if t is r.SendConnector:
                if c.data and c.connector in self.cores:
                    self.gw(c.connector, self.cores[c.connector].receive(c.data, 0.0))
            elif t is r.SendAgent:
                d, box = self.agent_in.setdefault(c.agent, (wire.Decoder(), []))
                box.extend(d.feed_untrusted(c.data))
            elif t is r.CloseAgent:
                self.closed_agents.append((c.agent, c.reason))
            elif t is r.CloseConnector:
                self.closed_connectors.append((c.connector, c.reason))
                self.cores.pop(c.connector, None)
            elif t is r.FlowLog:
                self.flows.append(c.fields)
            else:
                self.logs.append(c)

    def gw(self, cid, events):
        core = self.cores[cid]
        for ev in events:
            t = type(ev)
            if t is SendTunnel:
                if ev.data:
                    self.do(self.relay.connector_data(cid, ev.data, 0.0))
            elif t is NewChannel:
                self.sessions[(cid, ev.ch)] = g.GatewaySession(
                    ev.ch, ev.identity, policy=self.gw_policy, pool=self.pool, agent_network=NET, now=0.0)
            elif t is ChannelData:
                s = self.sessions[(cid, ev.ch)]
                self.session_cmds(cid, ev.ch, s.receive_data(ev.data, 0.0))
                self.do(self.relay.connector_data(cid, core.mux.consumed(ev.ch, len(ev.data)), 0.0))
            elif t is CloseTunnel:
                self.closed_connectors.append((cid, ev.reason))
            elif t is Up:
                pass

    def session_cmds(self, cid, ch, cmds):
        core = self.cores[cid]
        s = self.sessions[(cid, ch)]
        for c in cmds:
            if isinstance(c, g.Send):
                out = core.mux.send(ch, c.data)
                if out is not None:
                    self.do(self.relay.connector_data(cid, out, 0.0))
            elif isinstance(c, g.Resolve):
                self.session_cmds(cid, ch, s.resolved(c.name, c.addr, ip4(REAL)))
            elif isinstance(c, g.WriteTun):
                self.tun.extend(c.packets)

    def agent(self, aid, identity):
        self.do(self.relay.agent_up(aid, identity, 0.0))
        self.do(self.relay.agent_data(aid, wire.control(wire.HELLO, version=1, tunnel_addr=AGENT), 0.0))
        return self.agent_in[aid][1]


def packet(dst=LEASE, sport=40000, payload=b""):
    return NO_VNET + bytes(IP(src=AGENT, dst=dst) / TCP(sport=sport, dport=443, flags="S") / payload)


def test_allowed_lease_goes_through_the_connector_and_data_reaches_the_tun():
    lab = Lab()
    box = lab.agent(7, "alice")
    assert box[0].type == wire.WELCOME and box[0].fields["identity"] == "alice"
    lab.do(lab.relay.agent_data(7, wire.control(wire.LEASE, fqdn=APP, addr=LEASE), 0.0))
    results = [f for f in box if f.type == wire.LEASE_RESULT]
    assert [f.fields["allowed"] for f in results] == [True], results
    # the gateway's session saw the agent's HELLO first (its WELCOME stayed at the PoP)
    assert [f.type for f in box] == [wire.WELCOME, wire.LEASE_RESULT]
    (s,) = lab.sessions.values()
    assert s.identity == "alice" and s.state == g.UP
    pkt = packet()
    lab.do(lab.relay.agent_data(7, wire.data_header(len(pkt)) + pkt, 0.0))
    assert len(lab.tun) == 1 and lab.tun[0][26:30] == ip4(REAL)  # rewritten by the gateway's NAT
    # a reply from the app comes back to the agent as DATA
    inside = s.inside
    reply = bytearray(NO_VNET + bytes(IP(src=REAL, dst=".".join(map(str, inside)))
                                      / TCP(sport=443, dport=lab.tun[0][10 + 20:10 + 22][0] << 8 | lab.tun[0][31], flags="SA")))
    assert s.reply(reply, 0.0)
    lab.session_cmds(*next(iter(lab.sessions)), s.flush(False, 0.0))
    data = [f for f in box if f.type == wire.DATA]
    assert len(data) == 1 and bytes(data[0].payload[10 + 12:10 + 16]) == ip4(LEASE)
    lab.do(lab.relay.agent_closed(7, "agent went"))
    (line,) = [f for f in lab.flows if f["event"] == "flow"]
    assert line["identity"] == "alice" and line["resource"] == APP and line["connector"] == "gw1"
    assert line["bytes_up"] == len(pkt) and line["bytes_down"] == len(reply)
    assert lab.relay.connectors[1].agents == {}  # the channel was closed at the PoP's side


def test_denied_identity_is_refused_at_the_pop_and_no_channel_opens():
    lab = Lab()
    box = lab.agent(8, "bob")
    lab.do(lab.relay.agent_data(8, wire.control(wire.LEASE, fqdn=APP, addr=LEASE), 0.0))
    (res,) = [f for f in box if f.type == wire.LEASE_RESULT]
    assert res.fields["allowed"] is False and res.fields["reason"].startswith("PoP:")
    assert lab.sessions == {}  # the gateway never saw it
    assert lab.flows[0]["event"] == "denied" and lab.flows[0]["identity"] == "bob"


def test_connector_may_not_publish_a_resource_outside_its_table():
    lab = Lab(resources=())
    lab.connector(5, "gw1", "secret.example")
    assert lab.closed_connectors and "may not publish" in lab.closed_connectors[0][1]
    assert 5 not in lab.relay.connectors
    lab.connector(6, "stranger", APP)
    assert "not in [connectors]" in lab.closed_connectors[-1][1]


def test_no_connector_is_a_retryable_refusal():
    lab = Lab(resources=())
    box = lab.agent(9, "alice")
    lab.do(lab.relay.agent_data(9, wire.control(wire.LEASE, fqdn=APP, addr=LEASE), 0.0))
    (res,) = [f for f in box if f.type == wire.LEASE_RESULT]
    assert res.fields["allowed"] is False and res.fields["retry"] is True


def test_spent_credit_holds_one_agent_bounded_then_drops():
    lab = Lab(window=4096)
    lab.relay.hold_limit = 6 * 1024
    lab.agent(7, "alice")
    lab.do(lab.relay.agent_data(7, wire.control(wire.LEASE, fqdn=APP, addr=LEASE), 0.0))
    ((cid, ch),) = lab.sessions
    lab.cores.pop(cid)  # the connector's reads stall: nothing the PoP sends is consumed, no CREDIT comes
    big = packet(payload=b"x" * 1400)
    burst = b"".join(wire.data_header(len(big)) + big for _ in range(10))
    cmds = lab.relay.agent_data(7, burst, 0.0)
    assert r.PauseAgent(7) in cmds  # the PoP stops reading alice: TCP pushes back on her agent
    c, a = lab.relay.connectors[cid], lab.relay.agents[7]
    assert c.mux.channels[ch].sent <= 4096  # the credit is never overrun
    held = len(a.held[(cid, ch)][1])
    assert held == 4 and lab.relay.counters["credit_drops"] == 10 - 2 - 4  # 2 sent, 4 fit the 6 KiB hold
    assert a.held_bytes <= lab.relay.hold_limit and c.holding == {7}
    # no credit within hold_timeout: what is held is dropped and alice is read again
    assert lab.relay.tick(0.5) == []
    cmds = lab.relay.tick(1.5)
    assert r.ResumeAgent(7) in cmds and a.held == {} and not a.paused and c.holding == set()
    assert lab.relay.counters["credit_drops"] == 8 and lab.relay.counters["hold_timeouts"] == 1


def test_held_frames_go_in_order_when_the_credit_comes_and_the_agent_resumes():
    lab = Lab(window=8192)
    lab.agent(7, "alice")
    lab.do(lab.relay.agent_data(7, wire.control(wire.LEASE, fqdn=APP, addr=LEASE), 0.0))
    ((cid, ch),) = lab.sessions
    core = lab.cores.pop(cid)  # from here the test plays the gateway's end itself, one step at a time
    inner = wire.Decoder()
    pkts = [packet(sport=42000 + i, payload=bytes([i]) * 1400) for i in range(12)]
    cmds = lab.relay.agent_data(7, b"".join(wire.data_header(len(p)) + p for p in pkts), 0.0)
    assert r.PauseAgent(7) in cmds
    seen, resumed = [], False
    for _ in range(20):
        credit = b""
        for c in cmds:
            if type(c) is r.SendConnector:
                for ev in core.receive(c.data, 0.0):
                    if type(ev) is ChannelData:
                        seen.extend(f.payload[-1] for f in inner.feed_untrusted(ev.data) if f.type == wire.DATA)
                        credit += core.mux.consumed(ev.ch, len(ev.data))
            resumed = resumed or c == r.ResumeAgent(7)
        if not credit:
            break
        cmds = lab.relay.connector_data(cid, credit, 0.0)
    assert seen == list(range(12))  # all of them, in order
    assert resumed and lab.relay.counters["credit_drops"] == 0
    assert not lab.relay.agents[7].paused and lab.relay.connectors[cid].holding == set()


def test_connector_sending_past_its_credit_closes_its_tunnel():
    lab = Lab(window=4096)
    box = lab.agent(7, "alice")
    lab.do(lab.relay.agent_data(7, wire.control(wire.LEASE, fqdn=APP, addr=LEASE), 0.0))
    ((cid, ch),) = lab.sessions
    lab.cores.pop(cid)
    lab.do(lab.relay.connector_data(cid, mux.chdata(ch, b"\0" * 5000), 0.0))
    assert any("past the" in why for _, why in lab.closed_connectors)
    # the agent's lease through it ends (to be leased again elsewhere); its tunnel stays
    assert lab.closed_agents == [] and 7 in lab.relay.agents
    last = [f for f in box if f.type == wire.LEASE_RESULT][-1]
    assert last.fields["allowed"] is False and last.fields["retry"] is True and "gone" in last.fields["reason"]


def test_a_lost_connector_ends_only_the_leases_through_it_and_the_agent_leases_again_on_the_survivor():
    lab = Lab(resources=(APP, APP))
    other = "100.64.0.4"
    box = lab.agent(1, "alice")
    for addr in (LEASE, other):  # round robin: one lease on each connector
        lab.do(lab.relay.agent_data(1, wire.control(wire.LEASE, fqdn=APP, addr=addr), 0.0))
    a = lab.relay.agents[1]
    by_addr = {fl.addr: fl.connector for fl in a.flows.values()}
    assert sorted(by_addr.values()) == [1, 2]
    dead, alive = by_addr[LEASE], by_addr[other]
    lab.cores.pop(dead)
    lab.do(lab.relay.connector_closed(dead, "reset"))
    assert lab.closed_agents == [] and 1 in lab.relay.agents  # the tunnel stays up
    assert {fl.addr for fl in a.flows.values()} == {other} and dead not in a.channels
    results = [f.fields for f in box if f.type == wire.LEASE_RESULT]
    assert results[-1]["addr"] == LEASE and results[-1]["allowed"] is False and results[-1]["retry"] is True
    (line,) = [f for f in lab.flows if f["event"] == "flow"]
    assert line["addr"] == LEASE and line["connector"] == "gw1" and "gone" in line["end"]
    # the other lease still carries packets
    pkt = packet(dst=other)
    lab.do(lab.relay.agent_data(1, wire.data_header(len(pkt)) + pkt, 0.0))
    assert len(lab.tun) == 1
    # the agent leases the lost name again: it goes to the survivor at once
    lab.do(lab.relay.agent_data(1, wire.control(wire.LEASE, fqdn=APP, addr=LEASE), 0.0))
    assert [f.fields["allowed"] for f in box if f.type == wire.LEASE_RESULT][-1] is True
    assert {fl.connector for fl in a.flows.values()} == {alive}
    lab.do(lab.relay.agent_data(1, wire.data_header(len(packet())) + packet(), 0.0))
    assert len(lab.tun) == 2 and lab.relay.counters["leases_lost_with_connector"] == 1


def test_garbage_from_an_agent_closes_only_that_agent():
    lab = Lab()
    lab.agent(7, "alice")
    lab.do(lab.relay.agent_data(7, b"\xff" * 16, 0.0))
    assert lab.closed_agents and "protocol error" in lab.closed_agents[0][1]
    assert 1 in lab.relay.connectors


def test_keepalive_timeouts():
    lab = Lab()
    lab.agent(7, "alice")
    lab.do(lab.relay.tick(100.0))
    assert 7 in [a for a, _ in lab.closed_agents] and lab.closed_connectors


def test_backoff_full_jitter_grows_to_its_cap_and_resets():
    import random

    b = Backoff(0.5, 8.0, rng=random.Random(1))
    ceilings = []
    for _ in range(8):
        ceilings.append(b.ceiling())
        d = b.next()
        assert 0 <= d <= ceilings[-1]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    b.reset()
    assert b.ceiling() == 0.5
    draws = {round(Backoff(1, 1, rng=random.Random(i)).next(), 3) for i in range(20)}
    assert len(draws) > 10  # jitter, not one fixed delay


def test_connector_core_refuses_open_before_welcome_and_unknown_kinds():
    core = ConnectorCore(APP)
    out = core.receive(wire.control(wire.OPEN, ch=1, kind="agent", window=4096, identity="a"), 0.0)
    assert isinstance(out[-1], CloseTunnel) and "before WELCOME" in out[-1].reason
    core = ConnectorCore(APP)
    core.receive(wire.control(wire.WELCOME, version=1, resource=APP), 0.0)
    out = core.receive(wire.control(wire.OPEN, ch=1, kind="mystery", window=4096, identity="a"), 0.0)
    (send,) = out
    assert b"not served here" in send.data and core.mux.channels == {}


def test_resource_changes_keep_the_unchanged_ones():
    from gateway.connector import resource_changes

    assert resource_changes(["a.example", "b.example"], ["b.example", "c.example"]) == (["c.example"], ["a.example"])
    assert resource_changes(["a.example"], ["a.example"]) == ([], [])


def test_runs_split_frames_at_the_piece_limit_never_inside_a_frame():
    flows = [(None, n) for n in (100, 200, 50, 300)]
    assert list(r.runs(flows, 10_000)) == [(0, 4, 650 + 4 * wire.HEADER)]
    assert list(r.runs(flows, 310)) == [(0, 2, 308), (2, 3, 54), (3, 4, 304)]
    # a frame larger than the limit still makes a run of its own
    assert list(r.runs([(None, 500), (None, 10)], 100)) == [(0, 1, 504), (1, 2, 14)]
    assert list(r.runs([], 100)) == []


def test_mux_reserve_takes_credit_like_send_and_frames_the_same_bytes():
    a, b = mux.Mux(opener=True, window=1000), mux.Mux(opener=False, window=1000)
    ch, opening = a.open("agent")
    b.feed_untrusted(opening)
    a.feed_untrusted(b.accept(ch))
    head = a.reserve(ch, 600)
    assert head is not None and head + b"y" * 600 == mux.chdata(ch, b"y" * 600)
    assert a.channels[ch].send_credit == 400
    assert a.reserve(ch, 401) is None and a.channels[ch].dropped == 1  # not enough credit: nothing taken
    assert a.reserve(ch, 0) is None and a.reserve(ch, mux.PIECE + 1) is None
    (ev,) = b.feed_untrusted(head + b"y" * 600)
    assert ev.data == b"y" * 600


def test_a_burst_past_one_piece_goes_as_several_whole_chdata_runs():
    lab = Lab()
    lab.agent(7, "alice")
    lab.do(lab.relay.agent_data(7, wire.control(wire.LEASE, fqdn=APP, addr=LEASE), 0.0))
    ((cid, ch),) = lab.sessions
    pkts = [packet(sport=41000 + i, payload=bytes([i % 256]) * 1400) for i in range(300)]  # ~430 KB
    sent = []
    core = lab.cores[cid]
    real = core.receive
    core.receive = lambda data, now: sent.append(data) or real(data, now)
    lab.do(lab.relay.agent_data(7, b"".join(wire.data_header(len(p)) + p for p in pkts), 0.0))
    chdata = [f for d in sent for f in wire.Decoder(mux=True).feed_untrusted(d) if f.type == wire.CHDATA]
    assert len(chdata) == 2 and all(len(f.payload) - 4 <= mux.PIECE for f in chdata)
    assert len(lab.tun) == 300 and [bytes(t[-1400:]) for t in lab.tun] == [p[-1400:] for p in pkts]
    assert lab.relay.counters["credit_drops"] == 0
