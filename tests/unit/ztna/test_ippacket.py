import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from ztna import ippacket as P


def valid_checksums(raw: bytes) -> bool:
    pkt = IP(raw)
    fresh = IP(raw)
    del fresh.chksum
    l4 = fresh.payload
    if hasattr(l4, "chksum"):
        del l4.chksum
    fresh = IP(bytes(fresh))
    ok = pkt.chksum == fresh.chksum
    if pkt.haslayer(TCP):
        ok &= pkt[TCP].chksum == fresh[TCP].chksum
    if pkt.haslayer(UDP) and pkt[UDP].chksum != 0:
        ok &= pkt[UDP].chksum == fresh[UDP].chksum
    return ok


def test_parse_tcp_udp_icmp():
    f = P.parse_untrusted(bytes(IP(src="100.64.0.1", dst="100.64.0.3") / TCP(sport=40000, dport=443, flags="S")))
    assert (P.ip4_text(f.src), P.ip4_text(f.dst), f.proto, f.sport, f.dport) == ("100.64.0.1", "100.64.0.3", 6, 40000, 443)
    assert f.flags & P.TCP_SYN
    f = P.parse_untrusted(bytes(IP() / ICMP(type=8, id=77)))
    assert f.sport == f.dport == 77


@pytest.mark.parametrize("raw,msg", [
    (b"\x45" + bytes(10), "shorter"),
    (b"\x65" + bytes(IP() / TCP())[1:], "version"),
    (bytes(IP(ihl=15) / TCP())[:24], "header length"),
    (bytes(IP(proto=6))[:20] + b"\x00" * 8, "truncated TCP"),
])
def test_parse_rejects(raw, msg):
    with pytest.raises(P.BadPacket, match=msg):
        P.parse_untrusted(raw)


@pytest.mark.parametrize("l4", [TCP(sport=1234, dport=443, flags="PA") / Raw(b"x" * 33),
                                UDP(sport=5353, dport=53) / Raw(b"y" * 11)])
def test_rewrite_keeps_full_checksums_valid(l4):
    raw = bytearray(bytes(IP(src="100.64.0.1", dst="100.64.0.3") / l4))
    P.rewrite(raw, 0, P.ip4("10.254.0.2"), P.ip4("192.168.1.20"), partial_csum=False)
    assert IP(bytes(raw)).src == "10.254.0.2" and IP(bytes(raw)).dst == "192.168.1.20"
    assert valid_checksums(bytes(raw))


def test_rewrite_updates_a_partial_checksum_as_the_kernel_would():
    # A partial checksum is the folded pseudo-header sum; after the rewrite it
    # must equal the partial sum computed afresh for the new addresses.
    def partial(src, dst, length):
        s = sum(struct.unpack("!4H", P.ip4(src) + P.ip4(dst))) + 6 + length
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return s

    seg = bytes(TCP(sport=1, dport=2, chksum=0) / Raw(b"z" * 100))
    raw = bytearray(bytes(IP(src="100.64.0.1", dst="100.64.0.3", proto=6) / Raw(seg)))
    struct.pack_into("!H", raw, 20 + 16, partial("100.64.0.1", "100.64.0.3", len(seg)))
    P.rewrite(raw, 0, P.ip4("10.254.0.9"), P.ip4("192.168.1.20"), partial_csum=True)
    assert struct.unpack_from("!H", raw, 36)[0] == partial("10.254.0.9", "192.168.1.20", len(seg))
    hdr = bytes(raw[:20])
    assert P.checksum(hdr) == 0  # the IP header checksum still verifies


def test_udp_without_checksum_stays_without():
    raw = bytearray(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / UDP(chksum=0) / Raw(b"q")))
    struct.pack_into("!H", raw, 26, 0)
    P.rewrite(raw, 0, P.ip4("3.3.3.3"), None, partial_csum=False)
    assert struct.unpack_from("!H", raw, 26)[0] == 0


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.ip_addresses(v=4), st.ip_addresses(v=4), st.binary(max_size=64))
def test_rewrite_property(s, d, ns, nd, payload):
    raw = bytearray(bytes(IP(src=str(s), dst=str(d)) / TCP(sport=9, dport=10) / Raw(payload)))
    P.rewrite(raw, 0, ns.packed, nd.packed, partial_csum=False)
    assert valid_checksums(bytes(raw))


def test_rst_answers_a_syn():
    syn = bytes(IP(src="100.64.0.1", dst="100.64.9.9") / TCP(sport=40000, dport=443, flags="S", seq=1000))
    rst = IP(P.refusal_for(syn))
    assert rst.src == "100.64.9.9" and rst.dst == "100.64.0.1"
    assert rst[TCP].flags == "RA" and rst[TCP].ack == 1001 and rst[TCP].seq == 0
    assert (rst[TCP].sport, rst[TCP].dport) == (443, 40000)
    assert valid_checksums(bytes(rst))


def test_rst_answers_an_ack_with_its_ack_number():
    seg = bytes(IP(src="100.64.0.1", dst="100.64.9.9") / TCP(flags="A", seq=5, ack=777))
    rst = IP(P.refusal_for(seg))
    assert rst[TCP].flags == "R" and rst[TCP].seq == 777


def test_icmp_unreachable_quotes_the_datagram():
    dgram = bytes(IP(src="100.64.0.1", dst="100.64.9.9") / UDP(sport=5000, dport=53) / Raw(b"abcdefgh" * 3))
    err = IP(P.refusal_for(dgram))
    assert err[ICMP].type == 3 and err[ICMP].code == 3  # port unreachable: UDP sockets see ECONNREFUSED
    assert bytes(err[ICMP].payload)[:28] == dgram[:28]
    assert P.checksum(bytes(err[ICMP])) == 0
    ping = IP(P.refusal_for(bytes(IP(src="100.64.0.1", dst="100.64.9.9") / ICMP(type=8))))
    assert ping[ICMP].code == 1 and P.checksum(bytes(ping[ICMP])) == 0


def test_no_refusal_for_rst_or_icmp_errors():
    assert P.refusal_for(bytes(IP() / TCP(flags="R"))) is None
    assert P.refusal_for(bytes(IP() / ICMP(type=3))) is None
    assert P.refusal_for(bytes(IP() / ICMP(type=8))) is not None


@pytest.mark.parametrize("pkt", [
    bytes(IP(src="100.64.0.1", dst="100.64.9.9") / TCP(sport=40000, dport=443, flags="S", seq=1000)),
    bytes(IP(src="100.64.0.1", dst="100.64.9.9") / TCP(flags="A", seq=5, ack=777)),
    bytes(IP(src="100.64.0.1", dst="100.64.9.9") / UDP(sport=5000, dport=53) / Raw(b"abcdefgh")),
    bytes(IP(src="100.64.0.1", dst="100.64.9.9") / ICMP(type=8)),
])
def test_a_refusal_from_the_callers_parse_is_the_refusal_from_the_bytes(pkt):
    """The agent hands its parse on (issue 13: a refused packet was parsed three times)."""
    f = P.parse_untrusted(pkt)
    assert P.refusal_for(pkt, 0, f) == P.refusal_for(pkt)
    assert P.icmp_unreachable_for(pkt, flow=f) == P.icmp_unreachable_for(pkt)


def _checksum_by_words(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@given(st.binary(max_size=3000) | st.sampled_from([b"", b"\0", b"\0\0\0", b"\xff\xff", b"\xff\xff\xff\xff", b"\xff",
                                                  b"\x00\x01\xff\xfe"]))
def test_checksum_is_rfc1071_word_sums(data):
    assert P.checksum(data) == _checksum_by_words(data)
    assert P.checksum(bytearray(data)) == _checksum_by_words(data)
