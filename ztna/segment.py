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
    """One packet from the TUN (virtio-net header first) as IPv4 packets of at most ``mtu`` bytes,
    each with complete checksums."""
    return _cut(buf, mtu, False)[0]


def cut(buf: bytes | bytearray | memoryview, mtu: int) -> tuple[list[bytes], bool]:
    """Like :func:`segment`, but the pieces' TCP checksum fields may hold only the pseudo-header
    sum (``partial`` True, for every piece; the receiver's kernel finishes or trusts them, see
    :func:`vnet_for`): a super-packet's payload is not summed here.  ``partial`` False: complete."""
    return _cut(buf, mtu, True)


def _standard_csum(pkt, start: int, offset: int) -> bool:
    # The only partial checksums a datagram carries: TCP's or UDP's field, counted from the IP header's end.
    ihl = (pkt[0] & 0x0F) * 4
    return start == ihl and ((pkt[9] == 6 and offset == 16 and len(pkt) >= ihl + 20)
                             or (pkt[9] == 17 and offset == 6 and len(pkt) >= ihl + 8))


def _cut(buf, mtu: int, partial: bool) -> tuple[list[bytes], bool]:
    if len(buf) < VNET.size + 20:
        raise TooBig("shorter than a virtio-net and an IPv4 header")
    flags, gso, _hdr_len, gso_size, csum_start, csum_offset = VNET.unpack_from(buf)
    pkt = bytearray(buf[VNET.size:])
    kind = gso & ~GSO_ECN
    if kind == GSO_NONE:
        if len(pkt) <= mtu:
            if flags & F_NEEDS_CSUM:
                if partial and pkt[0] >> 4 == 4 and _standard_csum(pkt, csum_start, csum_offset):
                    return [bytes(pkt)], True
                _complete_csum(pkt, csum_start, csum_offset)
            return [bytes(pkt)], False
        if flags & F_NEEDS_CSUM:
            _complete_csum(pkt, csum_start, csum_offset)
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
    addr_sum = sum(struct.unpack("!4H", src_dst)) + 6  # the pseudo-header's addresses and protocol
    payload = memoryview(pkt)[hlen:]
    out: list[bytes] = []
    pieces = max(1, -(-len(payload) // mss))
    head = bytes(pkt[:hlen])
    for i in range(pieces):
        chunk = payload[i * mss:(i + 1) * mss]
        seg = bytearray(head)
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
        tcp_len = len(seg) - ihl
        if partial:
            struct.pack_into("!H", seg, ihl + 16, _fold(addr_sum + tcp_len))
        else:
            struct.pack_into("!H", seg, ihl + 16, 0)
            pseudo = src_dst + struct.pack("!BBH", 0, 6, tcp_len)
            struct.pack_into("!H", seg, ihl + 16, checksum(pseudo + bytes(seg[ihl:])))
        out.append(bytes(seg))
    return out, partial


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


# ---- the receiving side -----------------------------------------------------------------------
def vnet_for(packet: bytes, partial: bool) -> bytearray:
    """An inner packet from a datagram as the TUN takes it: a virtio-net header first, with
    NEEDS_CSUM and the L4 checksum's place when ``partial`` (the kernel completes, or for local
    delivery trusts, the checksum; the datagram's AEAD tag already vouched for the bytes)."""
    if not partial:
        buf = bytearray(NO_VNET)
    else:
        ihl = (packet[0] & 0x0F) * 4
        buf = bytearray(VNET.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, ihl, 16 if packet[9] == 6 else 6))
    buf += packet
    return buf


def partial_ok(packet: bytes) -> bool:
    """Whether a packet a peer sent with a partial checksum is one :func:`vnet_for` can describe."""
    return len(packet) >= 20 and packet[0] >> 4 == 4 and (packet[0] & 0x0F) >= 5 and _standard_csum(
        packet, (packet[0] & 0x0F) * 4, 16 if packet[9] == 6 else 6)


NO_VNET = bytes(VNET.size)
_TCP_ACK = 0x10
MAX_COALESCED = 64 * 1024 - 1  # an IPv4 total length
MAX_PIECES = 64


def coalesce(pkts: list) -> list:
    """Packets for the TUN (virtio-net header first), in order, with each run of in-order TCP segments
    of one flow joined into one TCPv4 GSO super-packet, as a NIC's receive offload would: one TUN
    write and one trip through the kernel's stack instead of one per segment.

    A run: IPv4 without options, TCP flags ACK (PSH on its last), equal IP and TCP headers but for
    the length, id, checksums, sequence number and PSH; each sequence number where the one before
    ended; equal payload sizes, the last no larger.  Anything else passes through untouched."""
    out: list = []
    run: list = []      # the current run's packets
    key = None          # what must match in the run: IP tos, flags, ttl, proto, addresses; the TCP header but seq and sum
    nxt = mss = 0       # the sequence number the run expects next; its segment size
    closed = True       # the run's last piece was short or had PSH: nothing more joins it
    for buf in pkts:
        k = _tcp_key(buf)
        if k is not None:
            seq, plen, fl, kk = k
            if (not closed and kk == key and seq == nxt and plen <= mss and len(run) < MAX_PIECES
                    and 20 + kk[6] + (len(run) + 1) * mss <= MAX_COALESCED):
                run.append(buf)
                nxt = (seq + plen) & 0xFFFFFFFF
                closed = plen < mss or bool(fl & TCP_PSH)
                continue
            _flush(run, out)
            run, key, nxt, mss = [buf], kk, (seq + plen) & 0xFFFFFFFF, plen
            closed = bool(fl & TCP_PSH)
            continue
        _flush(run, out)
        run, key, closed = [], None, True
        out.append(buf)
    _flush(run, out)
    return out


# vnet flags, gso type, csum start/offset | IP version/ihl, tos, total length, fragment, ttl, protocol,
# addresses | TCP ports, seq, ack, data offset, flags, window, urgent pointer: one C call per packet
_HEADS = struct.Struct("!BB4x4sBBH2x2sBB2x8s4sI4sBB2s2x2s")


def _tcp_key(buf):
    """(seq, payload length, flags, key) of a packet that may join a run, else None."""
    if len(buf) < 50:
        return None
    (vflags, gso, csum_at, verihl, tos, tot, frag, ttl, proto, addrs, ports, seq, ack, doff, fl, win,
     urg) = _HEADS.unpack_from(buf)
    if verihl != 0x45 or proto != 6 or gso != GSO_NONE or fl & ~TCP_PSH != _TCP_ACK:
        return None
    if vflags and (vflags != F_NEEDS_CSUM or csum_at != b"\x14\x00\x10\x00"):
        return None  # only plain packets, or partial ones with the TCP field at 20 + 16
    if (frag != b"\x40\x00" and frag != b"\x00\x00") or tot != len(buf) - 10:
        return None
    doff = (doff >> 4) * 4
    plen = tot - 20 - doff
    if doff < 20 or plen <= 0:
        return None
    return seq, plen, fl, (tos, frag, ttl, addrs, ports, ack, doff, win, urg, bytes(buf[50:30 + doff]))


def _flush(run: list, out: list) -> None:
    if not run:
        return
    if len(run) == 1:
        out.append(run[0])
        return
    first, last = run[0], run[-1]
    doff = (first[42] >> 4) * 4
    hlen = 20 + doff
    mss = len(first) - 10 - hlen
    sp = bytearray(VNET.pack(F_NEEDS_CSUM, GSO_TCPV4, hlen, mss, 20, 16))
    sp += first[10:10 + hlen]
    for b in run:
        sp += memoryview(b)[10 + hlen:]
    total = len(sp) - 10
    struct.pack_into("!H", sp, 12, total)
    struct.pack_into("!H", sp, 20, 0)
    struct.pack_into("!H", sp, 20, checksum(bytes(sp[10:30])))
    sp[43] = _TCP_ACK | (last[43] & TCP_PSH)
    addr_sum = sum(struct.unpack_from("!4H", sp, 22)) + 6
    struct.pack_into("!H", sp, 46, _fold(addr_sum + total - 20))
    out.append(sp)
