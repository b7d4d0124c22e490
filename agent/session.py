"""The agent's tunnel and its leases, as a sans-IO state machine.

Theory of operation
-------------------
The shell (agent/service.py) owns the TUN, the DNS stub's sockets and the TLS
connection; it reports what happened (a burst of TUN packets, bytes from the
gateway, a DNS query, the tunnel built or lost, a timer tick) and performs the
commands the session returns, in order.  The session never touches a socket,
the TUN or a clock: time comes in as ``now``.

Tunnel states (SPEC.md §1 steps 2-6; frames as in ztna/wire.py)::

    down --first packet to a leased address--> connecting   (Connect, when agent/backoff.py allows;
                                                              a tick retries for packets still waiting)
    connecting --tunnel_up--> hello (HELLO sent)     --tunnel_failed--> down (waiting packets: ICMP host unreachable)
    hello --WELCOME--> up (LEASE for every lease with waiting packets or flows)
    hello --closed--> down (the gateway refused us, e.g. a revoked certificate: waiting packets are
                            refused, TCP with a RST, so established flows end too)
    up --LEASE_RESULT allowed--> the lease's waiting packets go out as DATA
       --LEASE_RESULT denied-->  they are refused (RST, ICMP port/host unreachable)
       --no word for 3 x keepalive--> Close;  --quiet for keepalive--> KEEPALIVE
       --closed--> down (every lease decided again on the next tunnel)
    any --a bad frame from the gateway--> the frames before it are acted on, then CLOSE {reason} and Close

A packet read from the TUN is parsed once (``ippacket.parse_untrusted``) and
its ``Flow`` goes with it: into the lease's queue and into the refusal built
for it.  Its source must be the adapter's address (anti-spoofing); its
destination must be a leased address whose lease the gateway has not denied,
or it is refused at once.  Up to ``pending_max`` packets wait per lease while
the tunnel is built and the lease announced; the rest are dropped and counted.

While the tunnel's connection cannot take more (the shell reports it with
``tunnel_blocked``), packets for allowed leases wait in a per-flow fair queue
with CoDel (ztna/fqcodel.py) instead of in the TUN or the socket: flows take
turns, and a queue that stands too long drops or ECN-marks so that the
application's TCP slows down.  ``tunnel_writable`` hands the shell the next
batch of at most ``BATCH`` bytes.
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from dataclasses import dataclass

from dnslib import DNSRecord

from ztna import wire
from ztna.fqcodel import FqCodel
from ztna.ippacket import NO_VNET, TCP_RST, TCP_SYN, BadPacket, icmp_unreachable_for, ip4_text, parse_untrusted, refusal_for
from ztna.loglimit import LogLimiter, suffix
from ztna.names import PatternSet
from ztna.tunnelcmds import Close, Log, Send, WriteTun  # noqa: F401  (commands of this session too)
from ztna.segment import coalesce
from ztna.udppath import AgentPath, SendControl, SendDatagram, SendDatagrams  # noqa: F401

from .backoff import Backoff
from .dnsdecide import Decision, decide
from .leases import Lease, LeasePool

DOWN = "down"
CONNECTING = "connecting"
HELLO = "hello"
UP = "up"

PENDING_MAX = 64
BATCH = 64 * 1024  # bytes handed to the connection in one Send while packets are queued
QUEUE_LIMIT = 4 * 1024 * 1024  # the fair queue's memory bound
UDP_TURN = 256 * 1024  # bytes of inner packets sealed and sent per turn of the UDP path's queue
PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp"}


# ---- commands (what the shell must do; Send, WriteTun, Close, Log: ztna.tunnelcmds) --------
@dataclass(frozen=True)
class Connect:
    """Build the tunnel (gateway's address from public DNS, TCP, TLS); then call
    ``tunnel_up`` or ``tunnel_failed``."""


class AgentSession:
    """The decisions of one agent: its leases and its tunnel (see the module docstring)."""

    def __init__(self, pool: LeasePool, apps: PatternSet, *, address: str, keepalive: float = 15.0,
                 dns_ttl: int = 10, pending_max: int = PENDING_MAX, now: float = 0.0,
                 backoff: Backoff | None = None, path: AgentPath | None = None, udp_mtu: int = 1400):
        self.pool = pool
        # The UDP data channel (ztna/udppath.py); None: off, all data inside TLS.
        self.path = path
        self.udp_mtu = udp_mtu
        self._path_seen = path.state if path is not None else ""
        self.apps = apps
        self.address_text = address
        self.address = socket.inet_aton(address)
        self.keepalive = keepalive
        self.dns_ttl = dns_ttl
        self.pending_max = pending_max
        self.state = DOWN
        self.changed = now  # when ``state`` last changed
        self.decoder = wire.Decoder()
        self.pending: dict[bytes, list] = {}  # lease address -> [(packet, its Flow)]
        self.announced: set[bytes] = set()
        self.backoff = backoff or Backoff()
        self.up_since = now
        self.last_rx = self.last_tx = now
        self.last_error = ""
        self.counters: Counter = Counter()
        # Bad input is logged once per source per interval, with a count of the lines held back.
        self.bad_log = LogLimiter(interval=10.0)
        self.fq = FqCodel(offset=wire.VNET_HDR_LEN, limit_bytes=QUEUE_LIMIT)
        self._fq_seen = (0, 0, 0)
        # The UDP path's own fair queue: the shell reads the TUN into it and takes a turn at a time,
        # so a sparse flow (a ping, a call) passes a bulk upload, and CoDel keeps the upload's queue short.
        self.udp_fq = FqCodel(offset=wire.VNET_HDR_LEN, limit_bytes=QUEUE_LIMIT)
        self._udp_seen = (0, 0, 0)
        self.blocked = False
        if path is not None:
            path.counters = self.counters  # one set of counters in the status

    def _set(self, state: str, now: float) -> None:
        self.state = state
        self.changed = now

    def _send(self, cmds: list, data: bytes, now: float) -> None:
        cmds.append(Send(data))
        self.last_tx = now

    # ---- the TUN (hot path) -------------------------------------------------------
    def tun_packets(self, bufs: list, now: float) -> list:
        """One read burst from the TUN (each packet with its virtio-net header)."""
        c = self.counters
        c["tun_rx_packets"] += len(bufs)
        cmds: list = []
        out: list = []
        refusals: list = []
        by_addr = self.pool.by_addr
        up = self.state == UP
        for buf in bufs:
            if len(buf) < 30 or buf[10] >> 4 != 4:
                c["dropped_not_ipv4"] += 1
                continue
            try:
                f = parse_untrusted(buf, 10)
            except BadPacket:
                c["dropped_malformed"] += 1
                continue
            if f.src != self.address:
                # Only this machine's own traffic to a lease may enter the tunnel (issue 19): a forged
                # source stops here, counted, instead of being left to the gateway.
                c["dropped_spoofed_src"] += 1
                # One budget for the kind, not one per forged address: each packet may forge another.
                quiet = self.bad_log.allow("spoofed", now)
                if quiet is not None:
                    cmds.append(Log(logging.WARNING, f"dropped a packet from {ip4_text(f.src)} to {ip4_text(f.dst)} "
                                                     f"on the TUN: not this agent's address {self.address_text}"
                                                     f"{suffix(quiet)}"))
                continue
            lease = by_addr.get(f.dst)
            if lease is None or lease.state == "denied":
                self._refuse(buf, f, "not leased" if lease is None else "denied by the gateway", refusals, cmds)
                continue
            if self.pool.note_packet(lease, (f.proto, f.sport, f.dport), now, closing=bool(f.flags & TCP_RST)):
                c["flows"] += 1
                cmds.append(Log(logging.INFO, f"flow {PROTOCOLS.get(f.proto, f.proto)} {ip4_text(f.src)}:{f.sport} "
                                              f"-> {lease.fqdn} ({lease.addr_text}):{f.dport}"))
            if up and lease.state == "allowed":
                out.append(buf)
                continue
            q = self.pending.setdefault(lease.addr, [])
            if len(q) < self.pending_max:
                q.append((buf, f))
            else:
                c["dropped_pending_full"] += 1
            if up:
                self._announce(lease, cmds, now)
            else:
                self._ensure_tunnel(cmds, now)
        if refusals:
            cmds.append(WriteTun(refusals))
        if out and self.path is not None and self.path.udp:
            c["tunnel_tx_packets"] += len(out)
            q = self.udp_fq
            for buf in out:
                q.enqueue(buf, now)
            out = self._udp_turn(cmds, now)
            if out:
                self._tls_out(out, cmds, now)
        elif out:
            c["tunnel_tx_packets"] += len(out)
            self._tls_out(out, cmds, now)
        return cmds

    def _tls_out(self, out: list, cmds: list, now: float) -> None:
        c = self.counters
        if out:
            fq = self.fq
            if not self.blocked and not fq.packets:
                self._send(cmds, _frames(out), now)  # nothing waits: nothing to schedule
            else:
                c["tunnel_queued_packets"] += len(out)
                for buf in out:
                    fq.enqueue(buf, now)
                if not self.blocked:
                    self._dequeue(cmds, now)
                self._count()

    # ---- the UDP data channel (only with ``path``) ----------------------------------
    def _udp_turn(self, cmds: list, now: float) -> list:
        """One turn of the UDP queue: seal what fits into datagrams; return what must still go over TLS."""
        q = self.udp_fq
        pkts = q.dequeue_bytes(UDP_TURN, now)
        self._udp_seen = _tally(self.counters, "udp_aqm_", q, self._udp_seen)
        if not pkts:
            return []
        dgs, rest = self.path.seal_packets(pkts, self.udp_mtu)
        if dgs:
            self.counters["udp_tx_packets"] += len(dgs)
            cmds.append(SendDatagrams(dgs))
        return rest

    @property
    def udp_backlog(self) -> int:
        """Packets waiting in the UDP path's queue; the shell calls ``udp_writable`` while there are any."""
        return self.udp_fq.packets

    def udp_writable(self, now: float) -> list:
        """The next turn of the UDP path's queue (``[]`` when none wait).  If the path went down
        meanwhile, what waited goes over TLS."""
        cmds: list = []
        q = self.udp_fq
        if not q.packets or self.state != UP:
            return cmds
        if self.path is not None and self.path.udp:
            rest = self._udp_turn(cmds, now)
        else:
            rest = []
            while q.packets:
                rest += q.dequeue_bytes(BATCH, now)
        if rest:
            self._tls_out(rest, cmds, now)
        return cmds

    def _path_cmds(self, pcmds: list, cmds: list, now: float) -> None:
        for pc in pcmds:
            if type(pc) is SendControl:
                self._send(cmds, pc.data, now)
            else:
                cmds.append(pc)
        st = self.path.state
        if st != self._path_seen:
            cmds.append(Log(logging.INFO, f"UDP data channel: {self._path_seen} -> {st}"
                                          f"{' (data over TLS)' if st == 'fallback' else ''}"))
            self._path_seen = st

    def datagrams(self, items: list, now: float) -> list:
        """Datagrams from the UDP socket, each (data, source)."""
        cmds: list = []
        path = self.path
        if path is None or self.state != UP:
            self.counters["udp_dropped_no_path"] += len(items)
            return cmds
        pcmds, bufs, _, refused = path.receive_many(items, now)
        if pcmds or path.state != self._path_seen:
            self._path_cmds(pcmds, cmds, now)
        for source in dict.fromkeys(refused):
            quiet = self.bad_log.allow(("udp", source[0]), now)
            if quiet is not None:
                cmds.append(Log(logging.WARNING, f"dropped a datagram from {source[0]}:{source[1]} that did not "
                                                 f"authenticate{suffix(quiet)}"))
        pkts = []
        for buf in bufs:
            if len(buf) < 30 or buf[10] >> 4 != 4:
                self.counters["udp_dropped_not_ipv4"] += 1
                continue
            pkts.append(buf)
        if pkts:
            self.counters["udp_rx_packets"] += len(pkts)
            # in-order TCP segments of one flow go to the TUN as one super-packet
            cmds.append(WriteTun(coalesce(pkts) if len(pkts) > 1 else pkts))
        return cmds

    # ---- the connection's backpressure ------------------------------------------------
    def tunnel_blocked(self, blocked: bool, now: float) -> list:
        """The connection stopped taking more (True) or takes more again (False)."""
        self.blocked = blocked
        return [] if blocked else self.tunnel_writable(now)

    def tunnel_writable(self, now: float) -> list:
        """The next batch of queued packets, ``[]`` when none wait; the shell calls it while it can send."""
        cmds: list = []
        if self.fq.packets and self.state == UP:
            self._dequeue(cmds, now)
            self._count()
        return cmds

    @property
    def backlog(self) -> int:
        """Packets waiting in the fair queue for the connection."""
        return self.fq.packets

    def _dequeue(self, cmds: list, now: float) -> None:
        pkts = self.fq.dequeue_bytes(BATCH, now)
        if pkts:
            self._send(cmds, _frames(pkts), now)

    def _count(self) -> None:
        self._fq_seen = _tally(self.counters, "aqm_", self.fq, self._fq_seen)

    def _refuse(self, buf, f, why: str, refusals: list, cmds: list) -> None:
        answer = refusal_for(buf, 10, f)
        self.counters["refused"] += 1
        if answer is not None:
            refusals.append(NO_VNET + answer)
        if f.proto == 6 and f.flags & TCP_SYN:
            cmds.append(Log(logging.INFO, f"refused SYN to {ip4_text(f.dst)}: {why}"))

    def _ensure_tunnel(self, cmds: list, now: float) -> None:
        if self.state != DOWN or not self.backoff.may_try(now):
            return
        self._set(CONNECTING, now)
        cmds.append(Connect())

    def _unreachable(self) -> list:
        """Tell every waiting sender at once (host unreachable) instead of letting it hang."""
        out = []
        for q in self.pending.values():
            for buf, f in q:
                out.append(NO_VNET + icmp_unreachable_for(buf, 10, flow=f))
        self.pending.clear()
        return [WriteTun(out)] if out else []

    # ---- the tunnel's life ---------------------------------------------------------
    def tunnel_up(self, now: float) -> list:
        """TLS with the gateway is up: say HELLO."""
        self._set(HELLO, now)
        self.decoder = wire.Decoder()
        self.last_rx = now
        cmds: list = []
        self._send(cmds, wire.control(wire.HELLO, version=wire.VERSION, tunnel_addr=self.address_text), now)
        return cmds

    def tunnel_failed(self, reason: str, now: float) -> list:
        """The tunnel could not be built (``reason`` says why)."""
        self.last_error = reason
        self._set(DOWN, now)
        self.counters["tunnel_failed"] += 1
        delay = self.backoff.failed(now)
        return [Log(logging.INFO, f"next attempt in {delay:.2f}s at the earliest "
                                  f"({self.backoff.failures} failure(s) in a row)"), *self._unreachable()]

    def tunnel_closed(self, reason: str, now: float) -> list:
        """The tunnel is gone, whoever closed it."""
        was = self.state
        self.last_error = reason
        self.backoff.ended(now - self.up_since if was == UP else 0.0, now)
        self._set(DOWN, now)
        self.announced.clear()
        self.blocked = False
        self.fq = FqCodel(offset=wire.VNET_HDR_LEN, limit_bytes=QUEUE_LIMIT)  # their flows retransmit
        self._fq_seen = (0, 0, 0)
        self.udp_fq = FqCodel(offset=wire.VNET_HDR_LEN, limit_bytes=QUEUE_LIMIT)
        self._udp_seen = (0, 0, 0)
        for lease in self.pool.by_name.values():
            lease.state = "new"  # a new tunnel (maybe a new gateway) decides again
        self.counters["tunnel_closed"] += 1
        if self.path is not None:
            self.path.stop()
            self._path_seen = self.path.state
        if was == HELLO:
            self.counters["tunnel_refused"] += 1
            # The gateway itself said no: asking again will not help, so refuse (a RST ends even an
            # established TCP flow, where host unreachable is only a soft error that leaves it hanging).
            cmds = [Log(logging.ERROR, f"gateway refused the tunnel: {reason}")]
            refusals: list = []
            for q in self.pending.values():
                for buf, f in q:
                    self._refuse(buf, f, "the gateway refused the tunnel", refusals, cmds)
            self.pending.clear()
            if refusals:
                cmds.append(WriteTun(refusals))
            return cmds
        return [Log(logging.WARNING, f"tunnel closed: {reason}")]

    def stop(self, now: float) -> list:
        """The agent is stopping: tell the gateway."""
        if self.state not in (HELLO, UP):
            return []
        cmds: list = []
        self._send(cmds, wire.control(wire.CLOSE, reason="agent stopping"), now)
        cmds.append(Close("agent stopping"))
        return cmds

    def tick(self, now: float) -> list:
        """Called about once a second: idle leases, keepalives."""
        cmds: list = []
        for lease in self.pool.expire(now):
            cmds.append(Log(logging.INFO, f"lease {lease.fqdn} {lease.addr_text} reclaimed (idle)"))
            self._forget(lease, cmds, now)
        if self.state == DOWN and self.pending:
            self._ensure_tunnel(cmds, now)  # packets wait out a backoff: try when it allows
        if self.state == UP:
            if now - self.last_rx > 3 * self.keepalive:
                cmds.append(Close(f"no word from the gateway for {3 * self.keepalive:.0f}s"))
            elif now - self.last_tx > self.keepalive:
                self._send(cmds, wire.frame(wire.KEEPALIVE), now)
            if self.path is not None:
                self._path_cmds(self.path.tick(now), cmds, now)
        return cmds

    # ---- the DNS stub's leases -----------------------------------------------------
    def dns_query(self, query: DNSRecord, now: float) -> tuple[Decision, list]:
        """A parsed query to the stub: the decision, and what the pool's changes need done."""
        d = decide(query, self.apps, self.pool, now, ttl=self.dns_ttl)
        cmds: list = []
        events, reclaimed = self.pool.drain()
        for e in events:
            self.counters["lease_cap_reached"] += 1
            quiet = self.bad_log.allow(("lease cap", e.split(";")[0]), now)
            if quiet is not None:
                cmds.append(Log(logging.WARNING, f"leases: {e}{suffix(quiet)}"))
        for lease in reclaimed:
            self._forget(lease, cmds, now)
        return d, cmds

    def _forget(self, lease: Lease, cmds: list, now: float) -> None:
        """A lease is gone (idle, or its address given to another name): the gateway forgets it too."""
        self.pending.pop(lease.addr, None)
        self.announced.discard(lease.addr)
        if self.state == UP:
            self._send(cmds, wire.control(wire.RELEASE, addr=lease.addr_text), now)

    # ---- frames from the gateway -------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> list:
        """Bytes from the tunnel."""
        if self.state not in (HELLO, UP):
            return []
        self.last_rx = now
        try:
            frames = self.decoder.feed_untrusted(data)
            bad = None
        except wire.BadFrame as exc:
            frames, bad = exc.frames, exc
        cmds: list = []
        pkts: list = []
        for f in frames:
            t = f.type
            if t == wire.DATA:
                if self.state != UP:
                    # Nothing was leased on this tunnel yet: no packet of the gateway's belongs in the TUN.
                    cmds.append(Close("protocol error: DATA before WELCOME"))
                    return cmds
                pkts.append(f.payload)
                continue
            if pkts:
                cmds.append(WriteTun(pkts))
                pkts = []
            if t == wire.WELCOME:
                self._welcome(f.fields, cmds, now)
            elif t == wire.LEASE_RESULT:
                self._lease_result(f.fields, cmds, now)
            elif t == wire.KEEPALIVE:
                pass
            elif t == wire.DC_ACCEPT and self.path is not None and self.state == UP:
                try:
                    self._path_cmds(self.path.accepted(f.fields, now), cmds, now)
                except ValueError as exc:
                    cmds.append(Close(f"protocol error: bad DC_ACCEPT: {exc}"))
            elif t == wire.CLOSE:
                cmds.append(Close(f"gateway closed the tunnel: {f.fields.get('reason', '')}"))
            else:
                cmds.append(Close(f"protocol error: gateway sent {wire.NAMES.get(t)}"))
            if cmds and type(cmds[-1]) is Close:
                return cmds
        if pkts:
            cmds.append(WriteTun(pkts))
        if bad is not None:
            reason = f"protocol error: {bad}"
            self._send(cmds, wire.control(wire.CLOSE, reason=reason), now)
            cmds.append(Close(reason))
        return cmds

    def _welcome(self, fields: dict, cmds: list, now: float) -> None:
        if self.state != HELLO:
            cmds.append(Close("protocol error: WELCOME twice"))
            return
        self._set(UP, now)
        self.up_since = now
        self.counters["tunnel_up"] += 1
        cmds.append(Log(logging.INFO, f"tunnel up: gateway knows us as {fields.get('identity')} "
                                      f"(session {fields.get('session')})"))
        for lease in list(self.pool.by_name.values()):
            if lease.addr in self.pending or lease.flows:
                self._announce(lease, cmds, now)
        if self.path is not None:
            self.path.agent_identity = str(fields.get("identity", ""))
            self._path_cmds(self.path.start(now), cmds, now)

    def _announce(self, lease: Lease, cmds: list, now: float) -> None:
        if lease.addr not in self.announced:
            self.announced.add(lease.addr)
            self._send(cmds, wire.control(wire.LEASE, fqdn=lease.fqdn, addr=lease.addr_text), now)

    def _lease_result(self, fields: dict, cmds: list, now: float) -> None:
        if self.state != UP:
            cmds.append(Close("protocol error: LEASE_RESULT before WELCOME"))
            return
        try:
            addr = socket.inet_aton(str(fields.get("addr")))
        except OSError:
            cmds.append(Close("protocol error: LEASE_RESULT without a valid addr"))
            return
        lease = self.pool.by_addr.get(addr)
        if lease is None or lease.fqdn != fields.get("fqdn"):
            return  # reclaimed meanwhile
        waiting = self.pending.pop(addr, [])
        if fields.get("allowed") is True:
            lease.state = "allowed"
            cmds.append(Log(logging.INFO, f"lease {lease.fqdn} {lease.addr_text} allowed by the gateway"))
            if waiting:
                out = []
                for buf, _ in waiting:
                    out += [wire.data_header(len(buf)), buf]
                self._send(cmds, b"".join(out), now)
        else:
            retry = fields.get("retry") is True
            # A refusal the gateway marks for retry (its lookups busy, private DNS failing) holds for the
            # flows waiting now; the next packet to the lease asks again instead of a RST for good.
            lease.state = "new" if retry else "denied"
            if retry:
                self.announced.discard(addr)
            cmds.append(Log(logging.WARNING, f"lease {lease.fqdn} {lease.addr_text} denied by the gateway"
                                             f"{' for now' if retry else ''}: {fields.get('reason')}"))
            refusals: list = []
            for buf, f in waiting:
                self._refuse(buf, f, "denied by the gateway", refusals, cmds)
            if refusals:
                cmds.append(WriteTun(refusals))


def _tally(counters, prefix: str, fq: FqCodel, seen: tuple) -> tuple:
    """Add what ``fq`` dropped, marked and refused since ``seen`` to ``counters`` (``prefix`` + drops, marks,
    overlimit); the new ``seen``."""
    now = (fq.drops, fq.marks, fq.overlimit)
    if now != seen:
        for name, n, was in zip(("drops", "marks", "overlimit"), now, seen):
            counters[prefix + name] += n - was
    return now


def _frames(pkts: list) -> bytes:
    """DATA frames for these packets, as one string."""
    out = []
    for p in pkts:
        out.append(wire.data_header(len(p)))
        out.append(p)
    return b"".join(out)
