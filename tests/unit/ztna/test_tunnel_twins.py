"""An agent session and a gateway session against each other in one process, on the in-memory twins.

The agent's TUN and the gateway's TUN are ztna.tuntest.MemoryTun, the TLS
connection between them is a ztna.conntest link; two small drivers perform the
cores' commands the way agent/service.py and gateway/service.py do.  A DNS
query leases an address, a SYN to it builds the tunnel and comes out of the
gateway's TUN NATed to the application; the reply comes back to the agent's TUN
as if from the leased address (SPEC.md §1 steps 2-9).  The lab tests do the
same with real processes, TUNs and TLS; these run without root.
"""

import ipaddress
import os

import pytest
from dnslib import DNSRecord
from scapy.layers.inet import IP, TCP

from agent import session as a
from agent.leases import LeasePool
from gateway import session as g
from gateway.nat import InsidePool
from gateway.policy import Policy
from ztna import conntest, tuntest
from ztna.ippacket import NO_VNET
from ztna.names import PatternSet

APP, APP_REAL, HR = "app.mycompany.net", "192.168.1.20", "hr.mycompany.net"
PRIVATE_DNS = {APP: APP_REAL, HR: "192.168.1.21"}


class AgentDriver:
    """What agent/service.py does with the agent core's commands, on the twins."""

    def __init__(self, clock):
        self.clock = clock
        self.tun = tuntest.MemoryTun("ztna0")
        pool = LeasePool("100.64.0.0/10", ["100.64.0.1", "100.64.0.2"])
        self.core = a.AgentSession(pool, PatternSet([APP, HR]), address="100.64.0.1")
        self.conn = None
        self.dial = None  # set by the test: builds the link to the gateway
        self.log = []

    def perform(self, cmds):
        for c in cmds:
            if isinstance(c, a.Send):
                self.conn.send(c.data)
            elif isinstance(c, a.WriteTun):
                for p in c.packets:
                    os.write(self.tun.fd, p)
            elif isinstance(c, a.Connect):
                self.conn = self.dial()
                self.conn.on_data = lambda data: self.perform(self.core.receive_data(data, self.clock()))
                self.conn.on_close = self.closed
                self.conn.start_reading()
                self.perform(self.core.tunnel_up(self.clock()))
            elif isinstance(c, a.Close):
                self.conn.close(c.reason)
            elif isinstance(c, a.Log):
                self.log.append(c.message)

    def closed(self, reason):
        self.conn = None
        self.perform(self.core.tunnel_closed(reason, self.clock()))

    def on_tun(self):
        bufs = self.tun.read_burst()
        if bufs:
            self.perform(self.core.tun_packets(bufs, self.clock()))

    def dig(self, name):
        d, cmds = self.core.dns_query(DNSRecord.question(name), self.clock())
        self.perform(cmds)
        return d.lease.addr_text if d.lease else None


class GatewayDriver:
    """What gateway/service.py does with its sessions' commands, on the twins."""

    def __init__(self, clock):
        self.clock = clock
        self.tun = tuntest.MemoryTun("ztgw0")
        self.pool = InsidePool("10.254.0.0/16")
        self.policy = Policy({"alice": [APP]})
        self.by_inside = {}
        self.sessions = []
        self.log = []

    def accept(self, conn, identity):
        core = g.GatewaySession(len(self.sessions) + 1, identity, policy=self.policy, pool=self.pool,
                                agent_network=ipaddress.IPv4Network("100.64.0.0/10"), now=self.clock())
        conn.on_data = lambda data: self.perform(conn, core, core.receive_data(data, self.clock()))
        conn.on_close = lambda reason: self.perform(conn, core, core.closed_by_shell())
        conn.start_reading()
        self.sessions.append((conn, core))

    def perform(self, conn, core, cmds):
        for c in cmds:
            if isinstance(c, g.Send):
                conn.send(c.data)
            elif isinstance(c, g.WriteTun):
                for p in c.packets:
                    os.write(self.tun.fd, p)
            elif isinstance(c, g.Resolve):  # the private DNS server, answered at once
                real = PRIVATE_DNS.get(c.name)
                self.perform(conn, core, core.resolved(c.name, c.addr, ipaddress.IPv4Address(real).packed
                                                       if real else None, "NXDOMAIN"))
            elif isinstance(c, g.Bind):
                self.by_inside[c.inside] = (conn, core)
            elif isinstance(c, g.Unbind):
                self.by_inside.pop(c.inside, None)
            elif isinstance(c, g.Close):
                conn.close(c.reason)
            elif isinstance(c, g.Log):
                self.log.append(c.message)

    def on_tun(self):
        busy = []
        for buf in self.tun.read_burst():
            buf = bytearray(buf)
            hit = self.by_inside.get(bytes(buf[26:30]))
            if hit and hit[1].reply(buf, self.clock()) and hit not in busy:
                busy.append(hit)
        for conn, core in busy:
            self.perform(conn, core, core.flush(conn.blocked, self.clock()))


@pytest.fixture(params=[None, 7], ids=["whole reads", "7-byte reads"])
def world(request):
    t = [100.0]
    clock = lambda: t[0]  # noqa: E731
    ag, gw = AgentDriver(clock), GatewayDriver(clock)
    links = []

    def dial():
        end_a, end_g, ln = conntest.link(chunk=request.param)
        gw.accept(end_g, "alice")  # mutual TLS proved this identity
        links.append(ln)
        return end_a

    ag.dial = dial

    def pump():
        while links and links[-1].pump():
            pass

    yield ag, gw, pump, t
    ag.tun.close()
    gw.tun.close()


def valid(pkt: bytes) -> bool:
    """The IP and TCP checksums are what scapy computes afresh."""
    p = IP(pkt)
    q = IP(pkt)
    del q.chksum
    del q[TCP].chksum
    q = IP(bytes(q))
    return p.chksum == q.chksum and p[TCP].chksum == q[TCP].chksum


def test_dns_lease_syn_through_both_sessions_natted_and_the_reply_back(world):
    ag, gw, pump, t = world
    addr = ag.dig(APP)
    assert addr == "100.64.0.3"
    ag.tun.inject(NO_VNET + bytes(IP(src="100.64.0.1", dst=addr) / TCP(sport=40000, dport=443, flags="S", seq=1000)))
    ag.on_tun()  # first packet: the tunnel is built, the packet waits
    pump()       # HELLO, WELCOME, LEASE, (private DNS), LEASE_RESULT, DATA
    out = gw.tun.written()
    assert len(out) == 1
    syn = IP(out[0][10:])
    assert (syn.src, syn.dst, syn[TCP].sport, syn[TCP].dport, str(syn[TCP].flags)) == (
        "10.254.0.2", APP_REAL, 40000, 443, "S")
    assert valid(out[0][10:])
    assert ag.core.state == a.UP and ag.core.pool.by_name[APP].state == "allowed"
    assert any(f"lease {APP} {addr} => {APP_REAL}" in m for m in gw.log)

    # The application answers; the kernel routes the reply (after masquerade) back to the inside address.
    gw.tun.inject(NO_VNET + bytes(IP(src=APP_REAL, dst="10.254.0.2") /
                                  TCP(sport=443, dport=40000, flags="SA", seq=5000, ack=1001)))
    gw.on_tun()
    pump()
    back = ag.tun.written()
    assert len(back) == 1
    sa = IP(back[0][10:])
    assert (sa.src, sa.dst, sa[TCP].sport, sa[TCP].dport, str(sa[TCP].flags)) == (addr, "100.64.0.1", 443, 40000, "SA")
    assert valid(back[0][10:])

    # Later packets of the flow go straight through, both ways.
    ag.tun.inject(NO_VNET + bytes(IP(src="100.64.0.1", dst=addr) / TCP(sport=40000, dport=443, flags="A", seq=1001, ack=5001)))
    ag.on_tun()
    pump()
    assert [str(IP(p[10:])[TCP].flags) for p in gw.tun.written()] == ["A"]


def test_a_name_the_identity_may_not_reach_is_refused_at_the_agent(world):
    ag, gw, pump, t = world
    addr = ag.dig(HR)
    ag.tun.inject(NO_VNET + bytes(IP(src="100.64.0.1", dst=addr) / TCP(sport=40001, dport=443, flags="S", seq=9)))
    ag.on_tun()
    pump()
    assert gw.tun.written() == []  # nothing reached the LAN
    rst = IP(ag.tun.written()[0][10:])
    assert (rst.src, str(rst[TCP].flags), rst[TCP].ack) == (addr, "RA", 10)
    assert any("DENIED: identity 'alice' is not allowed to reach hr.mycompany.net" in m for m in gw.log)


def test_a_keepalive_timeout_at_the_agent_closes_both_and_the_next_packet_reconnects(world):
    ag, gw, pump, t = world
    addr = ag.dig(APP)
    ag.tun.inject(NO_VNET + bytes(IP(src="100.64.0.1", dst=addr) / TCP(sport=40000, dport=443, flags="S")))
    ag.on_tun()
    pump()
    gw.tun.written()
    t[0] += 46  # the gateway said nothing for three keepalives
    ag.perform(ag.core.tick(t[0]))
    pump()
    assert ag.core.state == a.DOWN and gw.sessions[0][1].closed and not gw.by_inside
    t[0] += 2
    ag.tun.inject(NO_VNET + bytes(IP(src="100.64.0.1", dst=addr) / TCP(sport=40002, dport=443, flags="S")))
    ag.on_tun()
    pump()
    assert len(gw.sessions) == 2 and ag.core.state == a.UP
    again = IP(gw.tun.written()[0][10:])
    assert (again.dst, again[TCP].sport) == (APP_REAL, 40002)
    assert again.src == "10.254.0.2"  # the inside address came back to the pool and was given again
