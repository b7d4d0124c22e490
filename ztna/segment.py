"""Cutting the offloading TUN's TCP super-packets to the UDP path's MTU (issue 17, part 2).

Theory of operation
-------------------
The TUN (ztna/tun.py) hands over TCP super-packets of up to 64 KiB with a
virtio-net header and a partial checksum.  Over TLS they cross whole; a UDP
datagram must fit the path, and IP fragmentation is not an option (one lost
fragment loses the whole datagram, and middleboxes drop fragments).  So before
a packet is sealed into a datagram, :func:`segment` does what the NIC would
have done: one IPv4 packet per ``mss`` bytes of TCP payload, each with its own
total length, IP id, sequence number and full IP and TCP checksums; FIN and PSH
only on the last piece, CWR only on the first.  A packet that is not a super-
packet only gets its partial checksum completed (and a TCP one longer than the
MTU, sized for the TUN's, is cut too).  What cannot be cut (a UDP or ICMP packet
longer than the MTU, a fragment, an IPv6 super-packet) raises :class:`TooBig`,
and the shell sends that packet over TLS instead.  Pure: bytes in, bytes out.
"""

from __future__ import annotations

import struct

from ztna.ippacket import checksum

VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_ECN = 0, 1, 3, 4, 0x80
TCP_FIN, TCP_PSH, TCP_CWR = 0x01, 0x08, 0x80


class TooBig(ValueError):
    """This packet cannot be cut to the MTU here; ``why`` says what it is."""


def _complete_csum(pkt: bytearray, start: int, offset: int) -> None:
    # NEEDS_CSUM: the field holds the pseudo-header sum; the checksum covers start..end.
    pos = start + offset
    if pos + 2 > len(pkt) or start > len(pkt):
        raise TooBig("the checksum offsets point outside the packet")
    struct.pack_into("!H", pkt, pos, checksum(bytes(pkt[start:])))


def segment(buf: bytes | bytearray | memoryview, mtu: int) -> list[bytes]:
    """One packet from the TUN (virtio-net header first) as IPv4 packets of at most ``mtu`` bytes."""
    if len(buf) < VNET.size + 20:
        raise TooBig("shorter than a virtio-net and an IPv4 header")
    flags, gso, _hdr_len, gso_size, csum_start, csum_offset = VNET.unpack_from(buf)
    pkt = bytearray(buf[VNET.size:])
    kind = gso & ~GSO_ECN
    if kind == GSO_NONE:
        if flags & F_NEEDS_CSUM:
            _complete_csum(pkt, csum_start, csum_offset)
        if len(pkt) <= mtu:
            return [bytes(pkt)]
        if pkt[0] >> 4 != 4 or pkt[9] != 6 or struct.unpack_from("!H", pkt, 6)[0] & 0x3FFF:
            raise TooBig(f"a {len(pkt)}-byte packet that is not TCP over IPv4")
        gso_size = 0  # a full-sized TCP packet of the TUN's larger MTU: cut like a super-packet
    elif kind != GSO_TCPV4 or pkt[0] >> 4 != 4:
        raise TooBig(f"GSO type {gso} is not TCP over IPv4")
    ihl = (pkt[0] & 0x0F) * 4
    if ihl < 20 or len(pkt) < ihl + 20 or pkt[9] != 6:
        raise TooBig("a TCPv4 super-packet without a TCP header")
    doff = (pkt[ihl + 12] >> 4) * 4
    hlen = ihl + doff
    if doff < 20 or len(pkt) < hlen:
        raise TooBig("a TCP header longer than the packet")
    mss = min(gso_size or mtu, mtu - hlen)
    if mss <= 0:
        raise TooBig(f"headers of {hlen} bytes leave no room under an MTU of {mtu}")
    ip_id, = struct.unpack_from("!H", pkt, 4)
    seq, = struct.unpack_from("!I", pkt, ihl + 4)
    tcp_flags = pkt[ihl + 13]
    src_dst = bytes(pkt[12:20])
    payload = memoryview(pkt)[hlen:]
    out: list[bytes] = []
    pieces = max(1, -(-len(payload) // mss))
    for i in range(pieces):
        chunk = payload[i * mss:(i + 1) * mss]
        seg = bytearray(pkt[:hlen])
        seg += chunk
        struct.pack_into("!HH", seg, 2, len(seg), (ip_id + i) & 0xFFFF)
        struct.pack_into("!H", seg, 10, 0)
        struct.pack_into("!H", seg, 10, checksum(bytes(seg[:ihl])))
        struct.pack_into("!I", seg, ihl + 4, (seq + i * mss) & 0xFFFFFFFF)
        f = tcp_flags
        if i != pieces - 1:
            f &= ~(TCP_FIN | TCP_PSH)
        if i != 0:
            f &= ~TCP_CWR
        seg[ihl + 13] = f
        struct.pack_into("!H", seg, ihl + 16, 0)
        tcp_len = len(seg) - ihl
        pseudo = src_dst + struct.pack("!BBH", 0, 6, tcp_len)
        struct.pack_into("!H", seg, ihl + 16, checksum(pseudo + bytes(seg[ihl:])))
        out.append(bytes(seg))
    return out
