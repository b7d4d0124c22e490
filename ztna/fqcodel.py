"""A per-flow fair queue with a CoDel sojourn-time AQM, for inner packets waiting on the tunnel.

Sans-IO: the owner enqueues packets with ``now`` and dequeues them with ``now``
when its connection can take more; nothing here reads a clock or a socket.

Why: the tunnel is one outer TCP connection.  When it cannot take more (a slow
or lossy path), packets that keep coming from the TUN must wait somewhere.  A
plain byte queue lets one bulk download fill it, and every other flow in the
tunnel (a call, an SSH session) waits behind seconds of it; inner TCP never
learns that it should slow down, because nothing is lost.  This queue does
what fq_codel (RFC 8290) does in a router:

* packets are hashed by their inner 5-tuple into one of ``buckets`` flows;
* flows take turns by deficit round robin (``quantum`` bytes a turn); a flow
  that was idle goes in the "new" list and is served before the standing ones,
  so a sparse flow's packet jumps a bulk flow's backlog;
* each flow runs CoDel (RFC 8289): when the time its packets spent queued (the
  sojourn) stays above ``target`` for ``interval``, it drops a packet, then
  drops again at ``interval / sqrt(count)`` while the sojourn stays high.  A
  packet whose sender negotiated ECN (ECT(0) or ECT(1) in the IPv4 header) is
  marked CE instead of dropped, with the header checksum fixed;
* past ``limit_bytes`` or ``limit_packets`` the fattest flow loses packets from
  its head (the memory bound, whatever the senders do).

Packets are byte strings with ``offset`` bytes (the virtio-net header) before
the IPv4 header.  Anything not IPv4 lands in one flow of its own.
"""

from __future__ import annotations

import math
import os
from collections import deque

TARGET = 0.005
INTERVAL = 0.1
QUANTUM = 1514

ECT_MASK = 0x03
CE = 0x03


def ip_checksum(hdr: bytes | bytearray | memoryview) -> int:
    """The Internet checksum of an IPv4 header (its checksum field counted as is)."""
    s = 0
    for i in range(0, len(hdr) - 1, 2):
        s += (hdr[i] << 8) | hdr[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ecn_mark(pkt: bytearray, off: int) -> bool:
    """Set CE on an ECN-capable IPv4 packet in place (checksum fixed); False if it is not ECN-capable."""
    if len(pkt) < off + 20 or pkt[off] >> 4 != 4:
        return False
    tos = pkt[off + 1]
    if tos & ECT_MASK == 0:
        return False
    if tos & ECT_MASK == CE:
        return True
    pkt[off + 1] = tos | CE
    # Incremental update (RFC 1624, eqn. 3): HC' = ~(~HC + ~m + m'), m the 16-bit word holding TOS.
    old = (pkt[off] << 8) | tos
    new = (pkt[off] << 8) | pkt[off + 1]
    hc = (pkt[off + 10] << 8) | pkt[off + 11]
    s = (~hc & 0xFFFF) + (~old & 0xFFFF) + new
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    hc = ~s & 0xFFFF
    pkt[off + 10] = hc >> 8
    pkt[off + 11] = hc & 0xFF
    return True


class _Flow:
    __slots__ = ("q", "bytes", "deficit", "listed", "count", "lastcount", "dropping", "first_above", "drop_next")

    def __init__(self):
        self.q: deque = deque()  # (enqueue time, packet)
        self.bytes = 0
        self.deficit = 0
        self.listed = False  # in new_flows or old_flows
        self.count = 0
        self.lastcount = 0
        self.dropping = False
        self.first_above = 0.0
        self.drop_next = 0.0


class FqCodel:
    """See the module docstring.  ``drops`` (CoDel), ``marks`` (CE set) and ``overlimit`` (memory bound) count."""

    def __init__(self, *, offset: int = 10, target: float = TARGET, interval: float = INTERVAL,
                 quantum: int = QUANTUM, buckets: int = 1024, limit_bytes: int = 4 * 1024 * 1024,
                 limit_packets: int = 10240, ecn: bool = True, salt: int | None = None):
        self.offset = offset
        self.target = target
        self.interval = interval
        self.quantum = quantum
        self.buckets = buckets
        self.limit_bytes = limit_bytes
        self.limit_packets = limit_packets
        self.ecn = ecn
        self.salt = int.from_bytes(os.urandom(8), "big") if salt is None else salt
        self.flows: dict[int, _Flow] = {}
        self.new_flows: deque[_Flow] = deque()
        self.old_flows: deque[_Flow] = deque()
        self.bytes = 0
        self.packets = 0
        self.maxpacket = 0
        self.drops = 0
        self.marks = 0
        self.overlimit = 0

    def __len__(self) -> int:
        return self.packets

    # ---- classifying ---------------------------------------------------------------
    def bucket(self, pkt) -> int:
        """The flow a packet belongs to: a salted hash of its inner 5-tuple."""
        o = self.offset
        if len(pkt) < o + 20 or pkt[o] >> 4 != 4:
            return 0
        proto = pkt[o + 9]
        key = bytes(pkt[o + 12:o + 20])
        if proto in (6, 17):
            ihl = (pkt[o] & 0x0F) * 4
            key += bytes(pkt[o + ihl:o + ihl + 4])
        return hash((self.salt, proto, key)) % self.buckets

    # ---- enqueue ---------------------------------------------------------------------
    def enqueue(self, pkt, now: float) -> None:
        idx = self.bucket(pkt)
        flow = self.flows.get(idx)
        if flow is None:
            flow = self.flows[idx] = _Flow()
        n = len(pkt)
        flow.q.append((now, pkt))
        flow.bytes += n
        self.bytes += n
        self.packets += 1
        if n > self.maxpacket:
            self.maxpacket = n
        if not flow.listed:
            flow.listed = True
            flow.deficit = self.quantum
            self.new_flows.append(flow)
        if self.bytes > self.limit_bytes or self.packets > self.limit_packets:
            self._drop_from_fattest()

    def _drop_from_fattest(self) -> None:
        fat = max(self.flows.values(), key=lambda f: f.bytes)
        # As Linux's fq_codel: up to half of the fattest flow's backlog at once, so a flood
        # does not pay a scan of every flow for each packet it adds.
        goal = fat.bytes // 2
        while fat.q and (fat.bytes > goal or self.bytes > self.limit_bytes or self.packets > self.limit_packets):
            _, pkt = fat.q.popleft()
            self._forget(fat, pkt)
            self.overlimit += 1

    def _forget(self, flow: _Flow, pkt) -> None:
        n = len(pkt)
        flow.bytes -= n
        self.bytes -= n
        self.packets -= 1

    # ---- dequeue ---------------------------------------------------------------------
    def dequeue(self, now: float):
        """The next packet to send, or None when empty.  Drops and marks happen in here."""
        while True:
            if self.new_flows:
                lst = self.new_flows
            elif self.old_flows:
                lst = self.old_flows
            else:
                return None
            flow = lst[0]
            if flow.deficit <= 0:
                flow.deficit += self.quantum
                lst.popleft()
                self.old_flows.append(flow)
                continue
            pkt = self._codel(flow, now)
            if pkt is None:
                lst.popleft()
                if lst is self.new_flows and self.old_flows:
                    # RFC 8290 §4.2: an emptied new flow goes to the old list, lest it come back as new at once.
                    self.old_flows.append(flow)
                else:
                    flow.listed = False
                continue
            flow.deficit -= len(pkt)
            return pkt

    def dequeue_bytes(self, budget: int, now: float) -> list:
        """Packets up to about ``budget`` bytes (at least one, if any)."""
        out = []
        total = 0
        while total < budget:
            pkt = self.dequeue(now)
            if pkt is None:
                break
            out.append(pkt)
            total += len(pkt)
        return out

    # ---- CoDel (RFC 8289 §5, per flow) -------------------------------------------------
    def _head(self, flow: _Flow, now: float):
        """Pop the flow's head; returns (packet or None, ok_to_drop)."""
        if not flow.q:
            flow.first_above = 0.0
            return None, False
        t, pkt = flow.q.popleft()
        self._forget(flow, pkt)
        if now - t < self.target or flow.bytes <= self.maxpacket:
            flow.first_above = 0.0
            return pkt, False
        if flow.first_above == 0.0:
            flow.first_above = now + self.interval
            return pkt, False
        return pkt, now >= flow.first_above

    def _control_law(self, t: float, count: int) -> float:
        return t + self.interval / math.sqrt(count)

    def _signal(self, pkt):
        """Mark ``pkt`` CE and return it, or count it dropped and return None."""
        if self.ecn:
            buf = pkt if isinstance(pkt, bytearray) else bytearray(pkt)
            if ecn_mark(buf, self.offset):
                self.marks += 1
                return buf
        self.drops += 1
        return None

    def _codel(self, flow: _Flow, now: float):
        pkt, ok = self._head(flow, now)
        if pkt is None:
            flow.dropping = False
            return None
        if flow.dropping:
            if not ok:
                flow.dropping = False
            while flow.dropping and now >= flow.drop_next:
                flow.count += 1
                marked = self._signal(pkt)
                flow.drop_next = self._control_law(flow.drop_next, flow.count)
                if marked is not None:
                    return marked
                pkt, ok = self._head(flow, now)
                if pkt is None:
                    flow.dropping = False
                    return None
                if not ok:
                    flow.dropping = False
            return pkt
        if ok:
            marked = self._signal(pkt)
            if marked is None:
                pkt, _ = self._head(flow, now)
            else:
                pkt = marked
            flow.dropping = True
            delta = flow.count - flow.lastcount
            # Coming back soon after the last dropping state: start near where it left off.
            flow.count = delta if delta > 1 and now - flow.drop_next < 16 * self.interval else 1
            flow.drop_next = self._control_law(now, flow.count)
            flow.lastcount = flow.count
        return pkt
