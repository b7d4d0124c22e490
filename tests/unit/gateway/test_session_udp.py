"""The UDP data channel between the two session cores: agent.session and gateway.session wired back to back.

No sockets: what one core sends (TLS bytes, datagrams) is handed to the other.
"""

import ipaddress
import os

from dnslib import DNSRecord
from scapy.layers.inet import IP, TCP

from agent import session as a
from agent.leases import LeasePool
from gateway import session as g
from gateway.nat import InsidePool
from gateway.policy import Policy
from ztna import udppath, wire
from ztna.ippacket import NO_VNET, ip4
from ztna.names import PatternSet

APP, APP_REAL, ME = "app.mycompany.net", "192.168.1.20", "100.64.0.1"
AT, GW = ("198.51.100.10", 40000), ("203.0.113.20", 51820)
CERT_ID = "ab" * 32


def pair(udp_port=51820, path=True):
    pool = LeasePool("100.64.0.0/10", [ME, "100.64.0.2"], grace=30.0, idle_timeout=300.0)
    ag = a.AgentSession(pool, PatternSet([APP]), address=ME, keepalive=15.0,
                        path=udppath.AgentPath(gateway_identity=CERT_ID) if path else None)
    gw = g.GatewaySession(1, "alice", policy=Policy({"alice": [APP]}), pool=InsidePool("10.254.0.0/16"),
                          agent_network=ipaddress.IPv4Network("100.64.0.0/10"), now=0.0,
                          udp_port=udp_port, gateway_identity=CERT_ID)
    return ag, gw


def tls(cmds):
    return b"".join(c.data for c in cmds if isinstance(c, a.Send))


def dgrams(cmds):
    out = []
    for c in cmds:
        if isinstance(c, udppath.SendDatagram):
            out.append((c.data, c.to))
        elif isinstance(c, udppath.SendDatagrams):
            out += [(d, c.to) for d in c.datagrams]
    return out


def types(data):
    return [f.type for f in wire.Decoder().feed_untrusted(data)]


def connect(ag, gw, now=0.5):
    """Tunnel up, keys offered and accepted, the probe answered; returns the gateway's last commands."""
    ag.state = a.CONNECTING
    gcmds = gw.receive_data(tls(ag.tunnel_up(now)), now)
    acmds = ag.receive_data(tls(gcmds), now)
    assert types(tls(acmds)) == ([wire.DC_OFFER] if ag.path else [])
    gcmds = gw.receive_data(tls(acmds), now)
    return acmds, gcmds


def bring_up(now=0.5):
    ag, gw = pair()
    _, gcmds = connect(ag, gw, now)
    assert types(tls(gcmds)) == [wire.DC_ACCEPT]
    [(probe, to)] = dgrams(ag.receive_data(tls(gcmds), now))
    assert to is None  # to the gateway's address: the shell knows it
    [(reply, to)] = dgrams(gw.datagram(probe, AT, now))
    assert to == AT
    acmds = ag.datagrams([(reply, GW)], now)
    assert types(tls(acmds)) == [wire.DC_PATH] and ag.path.udp
    gw.receive_data(tls(acmds), now)
    assert gw.path.udp(now)
    return ag, gw


def leased(ag, gw, now=1.0):
    d, _ = ag.dns_query(DNSRecord.question(APP), now)
    addr = d.lease.addr_text
    syn = NO_VNET + bytes(IP(src=ME, dst=addr) / TCP(sport=40000, dport=443, flags="S"))
    [res] = gw.receive_data(tls(ag.tun_packets([syn], now)), now)
    assert isinstance(res, g.Resolve)
    cmds = ag.receive_data(tls(gw.resolved(APP, ip4(addr), ip4(APP_REAL))), now)
    assert types(tls(cmds)) == [wire.DATA]  # the waiting SYN goes in TLS with the lease
    gw.receive_data(tls(cmds), now)
    return addr


def test_data_goes_over_udp_both_ways_once_the_path_is_up_and_control_stays_in_tls():
    ag, gw = bring_up()
    addr = leased(ag, gw)
    big = NO_VNET + bytes(IP(src=ME, dst=addr, flags="DF") / TCP(sport=40000, dport=443, flags="A") / os.urandom(3000))
    cmds = ag.tun_packets([big], 1.1)
    assert tls(cmds) == b"" and len(dgrams(cmds)) == 3  # cut to 1,400 bytes: three datagrams
    written = [p for d, _ in dgrams(cmds) for c in gw.datagram(d, AT, 1.1) if isinstance(c, g.WriteTun)
               for p in c.packets]
    assert len(written) == 3 and all(IP(bytes(p[10:])).dst == APP_REAL for p in written)
    inside = IP(bytes(written[0][10:])).src
    reply = bytearray(NO_VNET + bytes(IP(src=APP_REAL, dst=inside) / TCP(sport=443, dport=40000, flags="A")))
    assert gw.reply(reply, 1.2)
    cmds = gw.flush(False, 1.2)
    [(d, to)] = dgrams(cmds)
    assert to == AT and not [c for c in cmds if isinstance(c, g.Send)]
    [w] = [c for c in ag.datagrams([(d, GW)], 1.2) if isinstance(c, a.WriteTun)]
    assert IP(bytes(w.packets[0][10:])).src == addr
    assert ag.counters["udp_tx_packets"] == 3 and ag.counters["udp_rx_packets"] == 1


def test_when_the_agent_falls_back_both_ends_send_data_in_tls_and_the_leases_stay():
    ag, gw = bring_up()
    addr = leased(ag, gw)
    cmds = ag.tick(0.5 + udppath.DEAD_AFTER + 0.1)  # nothing authenticated came for 3 s
    assert ag.path.state == udppath.FALLBACK and wire.DC_PATH in types(tls(cmds))
    gw.receive_data(tls(cmds), 3.7)
    assert not gw.path.udp(3.7)
    pkt = NO_VNET + bytes(IP(src=ME, dst=addr) / TCP(sport=40000, dport=443, flags="A"))
    cmds = ag.tun_packets([pkt], 3.8)
    assert types(tls(cmds)) == [wire.DATA] and not dgrams(cmds) and ag.pool.by_addr[ip4(addr)].state == "allowed"


def test_a_gateway_without_udp_port_ignores_the_offer_and_the_agent_falls_back():
    ag, gw = pair(udp_port=None)
    _, gcmds = connect(ag, gw)
    assert gcmds == [] and gw.state == g.UP and gw.counters["udp_offers_ignored"] == 1
    ag.tick(2.0)
    assert ag.path.state == udppath.FALLBACK and ag.state == a.UP


def test_an_offer_before_hello_closes_and_a_bad_offer_closes():
    _, gw = pair()
    cmds = gw.receive_data(wire.control(wire.DC_OFFER, epoch=0, pub="", nonce=""), 0.0)
    assert isinstance(cmds[-1], g.Close) and "before HELLO" in cmds[-1].reason
    ag, gw = pair()
    ag.state = a.CONNECTING
    gw.receive_data(tls(ag.tunnel_up(0.1)), 0.1)
    cmds = gw.receive_data(wire.control(wire.DC_OFFER, epoch=0, pub="AAAA", nonce="AAAA"), 0.2)
    assert isinstance(cmds[-1], g.Close) and "bad DC_OFFER" in cmds[-1].reason


def test_a_bad_accept_closes_and_an_agent_without_the_channel_refuses_an_accept():
    ag, gw = pair()
    _, gcmds = connect(ag, gw)
    bad = wire.control(wire.DC_ACCEPT, epoch=0, pub="AAAA", nonce="AAAA", session=1, port=51820)
    cmds = ag.receive_data(bad, 0.6)
    assert isinstance(cmds[-1], a.Close) and "bad DC_ACCEPT" in cmds[-1].reason
    ag, gw = pair(path=False)
    connect(ag, gw)
    cmds = ag.receive_data(bad, 0.6)
    assert isinstance(cmds[-1], a.Close) and "protocol error" in cmds[-1].reason


def test_forged_datagrams_are_dropped_counted_and_logged_without_moving_anything():
    ag, gw = bring_up()
    leased(ag, gw)
    for data in (os.urandom(80), b"\x5a" + bytes(60), ag.path.channel.seal(b"\x00" + os.urandom(40))[:-1] + b"!"):
        assert [c for c in gw.datagram(data, ("192.0.2.66", 9), 2.0) if not isinstance(c, g.Log)] == []
        cmds = ag.datagrams([(data, ("192.0.2.66", 9))], 2.0)
        assert not [c for c in cmds if isinstance(c, (a.WriteTun, a.Send))]
    assert gw.path.channel.peer == AT and ag.path.state == udppath.UP
    assert sum(v for k, v in gw.counters.items() if k.startswith("udp_rejected_")) == 3
    assert sum(v for k, v in ag.counters.items() if k.startswith("udp_rejected_")) == 3
    logs = [c for c in ag.datagrams([(os.urandom(80), ("192.0.2.67", 9))], 2.1) if isinstance(c, a.Log)]
    assert logs and "did not authenticate" in logs[0].message


def test_datagrams_while_the_tunnel_is_down_are_dropped():
    ag, _ = pair()
    assert ag.datagrams([(os.urandom(80), GW)], 0.0) == [] and ag.counters["udp_dropped_no_path"] == 1


def _inner(dgs, gw, now):
    """What the gateway writes to its TUN for these datagrams, handed over as one wake-up's batch."""
    return [p for c in gw.datagrams([(d, AT) for d, _ in dgs], now) if isinstance(c, g.WriteTun) for p in c.packets]


def test_a_bulk_burst_waits_in_the_udp_queue_a_turn_at_a_time_and_a_ping_passes_it():
    from scapy.layers.inet import ICMP
    from ztna import segment
    ag, gw = bring_up()
    addr = leased(ag, gw)
    bulk = [NO_VNET + bytes(IP(src=ME, dst=addr, flags="DF") / TCP(sport=40000, dport=443, flags="A", seq=i * 60000)
                            / os.urandom(60000)) for i in range(10)]
    cmds = ag.tun_packets(bulk, 1.1)
    first = dgrams(cmds)
    assert first and sum(len(d) for d, _ in first) < 2 * a.UDP_TURN and ag.udp_backlog == 10 - 5
    ping = NO_VNET + bytes(IP(src=ME, dst=addr) / ICMP(id=7))
    cmds = ag.tun_packets([ping], 1.1)  # read while the bulk waits: a new flow, served first
    nxt = dgrams(cmds)
    assert IP(bytes(_inner(nxt[:1], gw, 1.1)[0][10:])).haslayer(ICMP)
    rest = []
    while ag.udp_backlog:
        rest += dgrams(ag.udp_writable(1.1))
    written = _inner(first, gw, 1.1) + _inner(nxt[1:] + rest, gw, 1.1)
    # the gateway joined each super-packet's pieces again: one TUN buffer per original, NATed to the app
    assert len(written) == 10 and all(segment.VNET.unpack_from(p)[1] == segment.GSO_TCPV4 for p in written)
    assert [IP(bytes(p[10:]))[TCP].seq for p in written] == [i * 60000 for i in range(10)]
    assert all(IP(bytes(p[10:])).dst == APP_REAL and len(p) == len(bulk[0]) for p in written)
    assert ag.udp_writable(1.2) == []


def test_what_waits_for_udp_goes_over_tls_when_the_path_falls_back():
    ag, gw = bring_up()
    addr = leased(ag, gw)
    bulk = [NO_VNET + bytes(IP(src=ME, dst=addr, flags="DF") / TCP(sport=40000, dport=443, flags="A", seq=i * 60000)
                            / os.urandom(60000)) for i in range(10)]
    ag.tun_packets(bulk, 1.1)
    waiting = ag.udp_backlog
    ag.tick(0.5 + udppath.DEAD_AFTER + 0.1)
    assert ag.path.state == udppath.FALLBACK
    cmds = ag.udp_writable(3.7)
    assert types(tls(cmds)).count(wire.DATA) == waiting and ag.udp_backlog == 0 and not dgrams(cmds)
