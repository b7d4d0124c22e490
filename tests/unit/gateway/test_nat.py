from scapy.layers.inet import ICMP, IP, TCP, UDP

from gateway.nat import ClientNat, InsidePool
from gateway.policy import Policy
from ztna.ippacket import ip4

AGENT = ip4("100.64.0.1")
LEASE = ip4("100.64.0.3")


def nat(inside="10.254.0.2", real="192.168.1.20"):
    n = ClientNat(AGENT, ip4(inside))
    n.allow(LEASE, "app.mycompany.net", ip4(real))
    return n


def test_outbound_rewrites_and_reply_maps_back():
    n = nat()
    pkt = bytearray(bytes(IP(src="100.64.0.1", dst="100.64.0.3") / TCP(sport=40000, dport=443, flags="S")))
    assert n.outbound(pkt, 0, False, 0)
    out = IP(bytes(pkt))
    assert (out.src, out.dst) == ("10.254.0.2", "192.168.1.20")
    rep = bytearray(bytes(IP(src="192.168.1.20", dst="10.254.0.2") / TCP(sport=443, dport=40000, flags="SA")))
    assert n.inbound(rep, 0, False, 1)
    back = IP(bytes(rep))
    assert (back.src, back.dst) == ("100.64.0.3", "100.64.0.1")


def test_two_clients_same_lease_different_apps():
    alice, bob = nat("10.254.0.2", "192.168.1.20"), nat("10.254.0.3", "192.168.1.21")
    for n, real in ((alice, "192.168.1.20"), (bob, "192.168.1.21")):
        pkt = bytearray(bytes(IP(src="100.64.0.1", dst="100.64.0.3") / TCP(sport=40000, dport=443)))
        assert n.outbound(pkt, 0, False, 0)
        assert IP(bytes(pkt)).dst == real


def test_spoofed_source_and_destination_dropped_and_counted():
    n = nat()
    spoof_src = bytearray(bytes(IP(src="100.64.0.9", dst="100.64.0.3") / UDP()))
    spoof_dst = bytearray(bytes(IP(src="100.64.0.1", dst="192.168.1.53") / UDP()))
    assert n.outbound(spoof_src, 0, False, 0) is None
    assert n.outbound(spoof_dst, 0, False, 0) is None
    assert n.outbound(bytearray(b"\x45junk"), 0, False, 0) is None
    assert (n.counters.spoofed_src, n.counters.spoofed_dst, n.counters.malformed) == (1, 1, 1)


def test_unsolicited_reply_dropped():
    n = nat()
    rep = bytearray(bytes(IP(src="192.168.1.20", dst="10.254.0.2") / TCP(sport=443, dport=40000)))
    assert not n.inbound(rep, 0, False, 0)
    assert n.counters.no_flow == 1


def test_same_private_ip_two_leases_map_back_by_flow():
    n = nat()
    other = ip4("100.64.0.4")
    n.allow(other, "alias.mycompany.net", ip4("192.168.1.20"))
    for lease_txt, sport in (("100.64.0.3", 1000), ("100.64.0.4", 2000)):
        pkt = bytearray(bytes(IP(src="100.64.0.1", dst=lease_txt) / TCP(sport=sport, dport=443)))
        assert n.outbound(pkt, 0, False, 0)
    for lease_txt, sport in (("100.64.0.3", 1000), ("100.64.0.4", 2000)):
        rep = bytearray(bytes(IP(src="192.168.1.20", dst="10.254.0.2") / TCP(sport=443, dport=sport)))
        assert n.inbound(rep, 0, False, 0)
        assert IP(bytes(rep)).src == lease_txt


def test_icmp_echo_flow_and_release():
    n = nat()
    ping = bytearray(bytes(IP(src="100.64.0.1", dst="100.64.0.3") / ICMP(type=8, id=9)))
    assert n.outbound(ping, 0, False, 0)
    n.release(LEASE)
    pong = bytearray(bytes(IP(src="192.168.1.20", dst="10.254.0.2") / ICMP(type=0, id=9)))
    assert not n.inbound(pong, 0, False, 1)
    assert n.flows == {}


def test_flows_expire():
    n = nat()
    pkt = bytearray(bytes(IP(src="100.64.0.1", dst="100.64.0.3") / TCP()))
    n.outbound(pkt, 0, False, 0)
    assert n.expire(1000) == 1 and not n.flows


def test_inside_pool_reuses_addresses():
    p = InsidePool("10.254.0.0/30")
    assert str(p.gateway_addr) == "10.254.0.1"
    a = p.take()
    try:
        p.take()
        raise AssertionError("a /30 has one session address")
    except RuntimeError as exc:
        assert "too many sessions" in str(exc)
    p.give_back(a)
    assert p.take() == a


def test_policy_per_identity():
    pol = Policy({"alice": ["app.mycompany.net"], "bob": ["*.hr.mycompany.net", "hr.mycompany.net"]})
    assert pol.allows("alice", "APP.mycompany.net.")[0]
    assert not pol.allows("alice", "hr.mycompany.net")[0]
    assert pol.allows("bob", "x.hr.mycompany.net")[0]
    ok, why = pol.allows("mallory", "app.mycompany.net")
    assert not ok and "no policy" in why
    assert not pol.allows("alice", "bad..name")[0]
