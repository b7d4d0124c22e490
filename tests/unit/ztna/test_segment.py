"""ztna.segment: super-packets cut to the MTU with correct checksums (checked by scapy, not by our own code)."""

import os
import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from ztna import segment as s
from ztna.ippacket import checksum


def partial(pkt: bytes) -> bytes:
    """``pkt`` as the offloading TUN gives it: the TCP checksum field holds only the pseudo-header sum."""
    raw = bytearray(pkt)
    ihl = (raw[0] & 0x0F) * 4
    pseudo = raw[12:20] + struct.pack("!BBH", 0, 6, len(raw) - ihl)
    struct.pack_into("!H", raw, ihl + 16, ~checksum(bytes(pseudo)) & 0xFFFF)
    return bytes(raw)


def vnet(flags=0, gso=0, hdr_len=0, gso_size=0, start=0, offset=0) -> bytes:
    return s.VNET.pack(flags, gso, hdr_len, gso_size, start, offset)


def valid(raw: bytes) -> IP:
    """Parse with scapy and check that both checksums are what scapy computes itself."""
    got = IP(raw)
    again = IP(raw)
    del again.chksum
    del again[TCP].chksum
    again = IP(bytes(again))
    assert got.chksum == again.chksum and got[TCP].chksum == again[TCP].chksum
    assert got.len == len(raw) and got.flags == "DF"
    return got


@pytest.mark.parametrize("size,flags", [(64000, "PA"), (5000, "FPA"), (1388, "A"), (2777, "PAC")])
def test_a_super_packet_becomes_mtu_sized_segments_with_correct_checksums(size, flags):
    data = os.urandom(size)
    sp = IP(src="100.64.0.2", dst="10.20.0.5", id=1000, flags="DF") / TCP(
        sport=40000, dport=443, seq=0xFFFFF000, ack=77, flags=flags, options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]) / data
    raw = partial(bytes(sp))
    hl = 20 + 32
    segs = s.segment(vnet(s.F_NEEDS_CSUM, s.GSO_TCPV4 | (s.GSO_ECN if "C" in flags else 0), hl, 1448, 20, 16) + raw, 1400)
    mss = 1400 - hl
    assert len(segs) == -(-size // mss)
    payload = b""
    for i, seg in enumerate(segs):
        assert len(seg) <= 1400
        p = valid(seg)
        assert p.id == 1000 + i and p[TCP].seq == (0xFFFFF000 + i * mss) & 0xFFFFFFFF and p[TCP].ack == 77
        last, first = i == len(segs) - 1, i == 0
        assert ("F" in p[TCP].flags) == ("F" in flags and last)
        assert ("P" in p[TCP].flags) == ("P" in flags and last)
        assert ("C" in p[TCP].flags) == ("C" in flags and first)
        assert p[TCP].options == sp[TCP].options
        payload += bytes(p[TCP].payload)
    assert payload == data


def test_gso_size_smaller_than_the_mtu_is_kept():
    sp = IP(src="1.2.3.4", dst="5.6.7.8") / TCP(flags="A") / (b"x" * 3000)
    segs = s.segment(vnet(s.F_NEEDS_CSUM, s.GSO_TCPV4, 40, 1000, 20, 16) + partial(bytes(sp)), 1400)
    assert [len(x) for x in segs] == [1040, 1040, 1040]


def test_a_full_sized_plain_tcp_packet_longer_than_the_mtu_is_cut_too():
    data = os.urandom(1460)
    p = IP(src="192.168.1.20", dst="10.254.0.2", flags="DF") / TCP(seq=5, flags="PA") / data
    segs = s.segment(vnet() + bytes(p), 1400)
    assert [len(x) for x in segs] == [1400, 140]
    assert b"".join(bytes(valid(x)[TCP].payload) for x in segs) == data


def test_a_plain_packet_gets_its_partial_checksum_completed():
    p = IP(src="100.64.0.2", dst="10.20.0.5", flags="DF") / TCP(flags="S")
    [out] = s.segment(vnet(s.F_NEEDS_CSUM, 0, 0, 0, 20, 16) + partial(bytes(p)), 1400)
    valid(out)
    u = bytes(IP(src="100.64.0.2", dst="10.20.0.5") / UDP(sport=1, dport=53) / b"q")
    assert s.segment(vnet() + u, 1400) == [u]  # complete already: untouched


@pytest.mark.parametrize("buf,why", [
    (vnet() + bytes(IP(dst="1.2.3.4") / ICMP() / (b"x" * 2000)), "not TCP over IPv4"),
    (vnet() + bytes(IP(dst="1.2.3.4", flags="MF") / TCP() / (b"x" * 2000)), "not TCP over IPv4"),
    (vnet(0, s.GSO_TCPV6) + bytes(40) * 2, "not TCP over IPv4"),
    (vnet(0, s.GSO_UDP) + bytes(IP() / UDP()), "not TCP over IPv4"),
    (vnet(0, s.GSO_TCPV4) + bytes(IP(proto=17) / UDP()), "without a TCP header"),
    (vnet(s.F_NEEDS_CSUM, 0, 0, 0, 20, 5000) + bytes(IP() / TCP()), "outside the packet"),
    (b"\x00" * 12, "shorter"),
])
def test_what_cannot_be_cut_raises_too_big(buf, why):
    with pytest.raises(s.TooBig, match=why):
        s.segment(buf, 1400)


def test_garbage_never_raises_anything_but_too_big():
    for n in range(2000):
        buf = os.urandom(n % 200 + 10)
        try:
            s.segment(buf, 1400)
        except s.TooBig:
            pass


# ---- partial checksums (the UDP path's DATA_PARTIAL) and coalescing on receive ------------------
def finish(buf: bytes) -> bytes:
    """What the kernel does with a NEEDS_CSUM packet from the TUN: complete the L4 checksum."""
    flags, gso, _, _, start, offset = s.VNET.unpack_from(buf)
    pkt = bytearray(buf[s.VNET.size:])
    assert flags == s.F_NEEDS_CSUM and gso == s.GSO_NONE
    s._complete_csum(pkt, start, offset)
    return bytes(pkt)


def super_packet(size=64000, flags="A", seq=1000, sport=40000):
    sp = IP(src="100.64.0.2", dst="10.20.0.5", id=7, flags="DF") / TCP(
        sport=sport, dport=443, seq=seq, ack=77, flags=flags,
        options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]) / os.urandom(size)
    return sp, vnet(s.F_NEEDS_CSUM, s.GSO_TCPV4, 52, 1448, 20, 16) + partial(bytes(sp))


def test_cut_leaves_partial_sums_that_the_kernel_completes_to_valid_checksums():
    sp, buf = super_packet(20000, "PA")
    pieces, part = s.cut(buf, 1400)
    assert part and len(pieces) == -(-20000 // 1348)
    assert [bytes(valid(finish(s.vnet_for(p, True)))[TCP].payload) for p in pieces] == [
        bytes(valid(p)[TCP].payload) for p in s.segment(buf, 1400)]
    assert all(s.partial_ok(p) for p in pieces)
    # a plain partial packet stays partial; a complete one stays complete
    syn = bytes(IP(src="100.64.0.2", dst="10.20.0.5", flags="DF") / TCP(flags="S"))
    assert s.cut(vnet(s.F_NEEDS_CSUM, 0, 0, 0, 20, 16) + partial(syn), 1400) == ([partial(syn)], True)
    assert s.cut(vnet() + syn, 1400) == ([syn], False)
    assert s.vnet_for(syn, False) == bytes(10) + syn
    assert not s.partial_ok(bytes(IP() / ICMP())) and not s.partial_ok(b"E\x00")


def test_coalesce_joins_the_pieces_of_a_super_packet_into_one_gso_packet():
    sp, buf = super_packet(60000, "PA")
    pieces, _ = s.cut(buf, 1400)
    [out] = s.coalesce([s.vnet_for(p, True) for p in pieces])
    flags, gso, hdr_len, gso_size, start, offset = s.VNET.unpack_from(out)
    assert (flags, gso, hdr_len, gso_size, start, offset) == (s.F_NEEDS_CSUM, s.GSO_TCPV4, 52, 1348, 20, 16)
    got = IP(bytes(out[10:]))
    assert got.len == len(out) - 10 and bytes(got[TCP].payload) == bytes(sp[TCP].payload)
    again = IP(bytes(out[10:]))
    del again.chksum
    assert got.chksum == IP(bytes(again)).chksum  # a valid IP header checksum
    assert got[TCP].flags == "PA" and got[TCP].seq == 1000 and got[TCP].options == sp[TCP].options
    assert bytes(out[10:]) == partial(bytes(got))  # the TCP field: the pseudo-header sum of the whole
    # cut again, it gives the same pieces (the IP ids follow the first one's, as the kernel's GSO does)
    assert s.cut(out, 1400)[0] == pieces
    assert [bytes(valid(x)[TCP].payload) for x in s.segment(out, 1400)] == [
        bytes(valid(x)[TCP].payload) for x in s.segment(buf, 1400)]


def test_coalesce_keeps_order_and_joins_only_what_a_run_allows():
    _, a = super_packet(4000, "A", seq=0, sport=1)
    _, b = super_packet(4000, "A", seq=0, sport=2)
    pa, pb = s.cut(a, 1400)[0], s.cut(b, 1400)[0]
    va, vb = [s.vnet_for(p, True) for p in pa], [s.vnet_for(p, True) for p in pb]
    # interleaved flows: nothing joins, order kept
    mixed = [va[0], vb[0], va[1], vb[1]]
    assert s.coalesce(mixed) == mixed
    # a gap in the sequence numbers ends the run
    out = s.coalesce([va[0], va[2]])
    assert out == [va[0], va[2]]
    # a short piece ends a run; what follows starts a new one
    out = s.coalesce(va + va)
    assert len(out) == 2 and [IP(bytes(o[10:]))[TCP].seq for o in out] == [0, 0]
    # non-TCP, SYN and complete-checksum packets pass through untouched, and never join
    u = bytes(10) + bytes(IP(src="1.2.3.4", dst="5.6.7.8") / UDP(sport=1, dport=2) / (b"x" * 100))
    syn = bytes(10) + bytes(IP(src="1.2.3.4", dst="5.6.7.8") / TCP(flags="S"))
    assert s.coalesce([u, syn, va[0]]) == [u, syn, va[0]]
    plain = [bytes(10) + p for p in s.segment(a, 1400)]
    [one] = s.coalesce(plain)
    assert s.VNET.unpack_from(one)[1] == s.GSO_TCPV4 and bytes(one[10:]) == partial(bytes(IP(bytes(one[10:]))))
    # PSH ends a run
    _, c = super_packet(2696, "PA", seq=0, sport=3)
    pc = [s.vnet_for(p, True) for p in s.cut(c, 1400)[0]]
    _, d = super_packet(2696, "A", seq=2696, sport=3)
    pd = [s.vnet_for(p, True) for p in s.cut(d, 1400)[0]]
    assert len(s.coalesce(pc + pd)) == 2


def test_coalesce_never_raises_on_garbage():
    for n in range(3000):
        s.coalesce([os.urandom(n % 120 + 1), bytes(10) + b"\x45" + os.urandom(n % 90)])
