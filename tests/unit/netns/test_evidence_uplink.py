"""netns.evidence.uplink: the shared "the uplink carries only the tunnel" check of the PoP scenarios."""

from scapy.layers.inet import IP, TCP
from scapy.layers.tls.extensions import ServerName, TLS_Ext_ServerName
from scapy.layers.tls.handshake import TLSClientHello
from scapy.layers.tls.record import TLS

from netns import evidence

C, S = "198.51.100.10", "192.0.2.10"


def _conn(sport: int, sni: bytes, t: float = 1.0) -> list:
    hello = TLS(msg=[TLSClientHello(ext=[TLS_Ext_ServerName(servernames=[ServerName(servername=sni)])])])
    syn = IP(src=C, dst=S) / TCP(sport=sport, dport=443, flags="S", seq=100)
    data = IP(src=C, dst=S) / TCP(sport=sport, dport=443, flags="PA", seq=101) / bytes(hello)
    syn.time, data.time = t, t + 0.01
    return [syn, data]


def test_only_the_tunnel_passes():
    ul = evidence.uplink(_conn(40000, b"tunnel.pop.example"), C, S, nets=("10.10.0.0/24",), hosts=("203.0.113.20",))
    assert ul.snis == ["tunnel.pop.example"]
    assert ul.only_tls("tunnel.pop.example")
    assert not ul.only_tls("connector.pop.example")


def test_a_second_connection_with_another_sni_fails():
    pkts = _conn(40000, b"tunnel.pop.example") + _conn(40001, b"other.example", t=2.0)
    assert not evidence.uplink(pkts, C, S).only_tls("tunnel.pop.example")


def test_stray_packets_fail_unless_after_until():
    leak = IP(src=C, dst="10.10.0.5") / TCP(sport=5, dport=80, flags="S")
    leak.time = 5.0
    pkts = _conn(40000, b"tunnel.pop.example") + [leak]
    ul = evidence.uplink(pkts, C, S, nets=("10.10.0.0/24",))
    assert ul.stray == {"10.10.0.0/24": 1} and not ul.only_tls("tunnel.pop.example")
    assert "10.10.0.0/24" in ul.summary()
    assert evidence.uplink(pkts, C, S, nets=("10.10.0.0/24",), until=4.0).only_tls("tunnel.pop.example")


def test_no_connection_fails():
    assert not evidence.uplink([], C, S).only_tls("tunnel.pop.example")
