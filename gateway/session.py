"""One agent's tunnel at the gateway, as a sans-IO state machine.

Theory of operation
-------------------
The shell (gateway/service.py) accepts TCP, completes mutual TLS and learns the
identity from the client certificate; then it creates a :class:`GatewaySession`
and from that moment only reports what happened (bytes from the agent, a reply
packet from the TUN, a private-DNS answer, a timer tick, the connection gone)
and performs the commands the session returns, in order.  The session never
touches a socket, the TUN or a clock: time comes in as ``now``.

States (SPEC.md §1 steps 5-8; frames as in ztna/wire.py)::

    hello --HELLO {version 1, tunnel_addr in agent_network}--> up   (Bind, WELCOME)
          --anything but HELLO, KEEPALIVE, RELEASE-->          closed (protocol error)
    up    --LEASE {fqdn, addr in agent_network}-->  policy says no:  LEASE_RESULT denied
                                                   policy says yes: Resolve, later
          --resolved(...)-->                        NAT route + LEASE_RESULT allowed (or denied: no address)
          --DATA-->      NAT outbound (anti-spoofing: the agent's address, to one of its
                         allowed leases; else dropped and counted) -> WriteTun
          --RELEASE-->   the route and its flows forgotten
          --KEEPALIVE--> KEEPALIVE back
          --CLOSE, HELLO again, a frame only the gateway sends-->  closed
    any   --a bad frame (unknown type, too long, JSON not an object or too deep)-->
              the good frames before it in the same read are acted on, then
              CLOSE {reason} and Close
    any   --no bytes for 3 x keepalive (tick)-->  Close

Replies from the LAN come through the gateway's one TUN: the shell finds the
session by the inside address (``Bind``), ``reply`` maps each packet back and
queues it; at the end of the read burst ``flush`` hands the burst to the shell
as one write when the connection can take it.  When it cannot (the shell says
``blocked``), the packets wait in a per-flow fair queue with CoDel
(ztna/fqcodel.py): a bulk download cannot hold an interactive flow behind it,
a queue that stands longer than 5 ms for 100 ms drops or ECN-marks so that
inner TCP slows down, and ``queue_limit`` bounds its memory.  The shell calls
``writable`` while the connection takes more and the queue is not empty; each
call hands over at most ``BATCH`` bytes, so little waits outside the queue's
control (the socket's own unsent data is kept small by TCP_NOTSENT_LOWAT).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections import Counter
from dataclasses import dataclass

from ztna import wire
from ztna.fqcodel import FqCodel
from ztna.names import BadName, normalize
from ztna.tunnelcmds import Close, Log, Send, WriteTun  # noqa: F401  (commands of this session too)
from ztna.segment import coalesce
from ztna.udppath import GatewayPath, SendControl, SendDatagram, SendDatagrams  # noqa: F401

from .nat import ClientNat, InsidePool
from .policy import Policy

HELLO = "hello"
UP = "up"
CLOSED = "closed"

PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp"}
# Private-DNS lookups one session may have waiting at once: a LEASE flood of distinct names
# must not start a lookup each without end (the agent leases one name at a time per flow).
MAX_LOOKUPS = 64
# Bytes handed to the connection in one Send while replies are queued (see the module docstring).
BATCH = 64 * 1024


# ---- commands (what the shell must do; Send, WriteTun, Close, Log: ztna.tunnelcmds) --------
@dataclass(frozen=True)
class Resolve:
    """Ask private DNS for ``name`` (A), then call ``resolved(name, addr, ...)``."""
    name: str
    addr: bytes


@dataclass(frozen=True)
class Bind:
    """TUN packets to ``inside`` belong to this session from now on."""
    inside: bytes


@dataclass(frozen=True)
class Unbind:
    """``inside`` no longer belongs to this session."""
    inside: bytes


class GatewaySession:
    """The decisions for one agent's tunnel (see the module docstring)."""

    def __init__(self, sid: int, identity: str, *, policy: Policy, pool: InsidePool,
                 agent_network: ipaddress.IPv4Network, now: float, keepalive: float = 15.0,
                 queue_limit: int = 8 * 1024 * 1024, counters: Counter | None = None,
                 udp_port: int | None = None, gateway_identity: str = "", udp_mtu: int = 1400):
        self.id = sid
        # The UDP data channel (ztna/udppath.py): answered only with ``udp_port``; the path once offered.
        self.udp_port = udp_port
        self.gateway_identity = gateway_identity
        self.udp_mtu = udp_mtu
        self.path: GatewayPath | None = None
        self.identity = identity
        self.policy = policy
        self.pool = pool
        self.agent_net = agent_network
        self.keepalive = keepalive
        self.queue_limit = queue_limit
        self.fq = FqCodel(offset=wire.VNET_HDR_LEN, limit_bytes=queue_limit)
        self._fq_seen = (0, 0, 0)  # the queue's drops, marks, overlimit already counted
        self.counters = counters if counters is not None else Counter()  # shared with the gateway's
        self.state = HELLO
        self.decoder = wire.Decoder()
        self.nat: ClientNat | None = None
        self.inside = b""
        self.started = now
        self.last_rx = now
        self.last_expire = now
        self.out: list = []  # reply packets of the current TUN burst
        self.asking: dict[tuple[str, bytes], str] = {}  # (name, addr) being looked up -> the policy's reason
        self.drops_logged = 0
        self.queue_drops = 0

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def _close(self, cmds: list, reason: str, *, tell: bool = False) -> list:
        """End the session: CLOSE {reason} to the agent first when ``tell``."""
        self.state = CLOSED
        if tell:
            cmds.append(Send(wire.control(wire.CLOSE, reason=reason)))
        cmds.append(Close(reason))
        return cmds

    # ---- events --------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> list:
        """Bytes from the agent's TLS connection."""
        if self.state == CLOSED:
            return []
        self.last_rx = now
        try:
            frames = self.decoder.feed_untrusted(data)
            bad = None
        except wire.BadFrame as exc:
            # The good frames before the bad one are still the agent's word (a HELLO is answered).
            frames, bad = exc.frames, exc
        cmds: list = []
        pkts: list = []
        nat = self.nat
        for f in frames:
            if f.type == wire.DATA:
                if nat is None:
                    if pkts:
                        cmds.append(WriteTun(pkts))
                    return self._close(cmds, "protocol error: DATA before HELLO")
                pkt = f.payload
                verdict = nat.outbound(pkt, wire.VNET_HDR_LEN, bool(pkt[0] & 1), now)
                if verdict is None:
                    self._dropped(cmds)
                    continue
                if verdict[1]:
                    cmds.append(self._flow_line(verdict[0]))
                pkts.append(pkt)
                continue
            if pkts:
                cmds.append(WriteTun(pkts))
                pkts = []
            self._control(f, now, cmds)
            if self.state == CLOSED:
                return cmds
            nat = self.nat
        if pkts:
            cmds.append(WriteTun(pkts))
        if bad is not None:
            return self._close(cmds, f"protocol error: {bad}", tell=True)
        return cmds

    def resolved(self, name: str, addr: bytes, real: bytes | None, error: str = "") -> list:
        """Private DNS answered ``Resolve(name, addr)``: ``real`` is the address, or None and ``error``."""
        why = self.asking.pop((name, addr), None)
        if why is None or self.state != UP:
            return []
        a = socket.inet_ntoa(addr)
        if real is None:
            return self._denied(name, a, error, retry=True)  # private DNS may answer the next time
        self.nat.allow(addr, name, real)
        return [Log(logging.INFO, f"session {self.id} {self.identity}: lease {name} {a} => "
                                  f"{socket.inet_ntoa(real)} (private DNS); {why}"),
                Send(wire.control(wire.LEASE_RESULT, fqdn=name, addr=a, allowed=True, reason=why))]

    def tick(self, now: float) -> list:
        """Called about once a second."""
        if self.state == CLOSED:
            return []
        if now - self.last_rx > 3 * self.keepalive:
            return self._close([], f"no word from the agent for {3 * self.keepalive:.0f}s")
        if self.nat is not None and now - self.last_expire >= 10.0:
            self.last_expire = now
            self.nat.expire(now)
        return []

    def set_policy(self, policy: Policy) -> list:
        """A reloaded policy: leases it no longer allows are withdrawn, with their flows.

        The NAT route goes (later packets to it are dropped as to no lease, replies
        find no flow) and the agent is told with an unsolicited LEASE_RESULT
        denied, so it refuses (RST) the next packet of each flow instead of letting
        it wait.  Lookups still running for a name now denied are answered denied."""
        self.policy = policy
        if self.state != UP:
            return []
        cmds: list = []
        for addr, route in list(self.nat.routes.items()):
            ok, why = policy.allows(self.identity, route.fqdn)
            if ok:
                continue
            flows = sum(1 for v in self.nat.flows.values() if v[0] == addr)
            self.nat.release(addr)
            a = socket.inet_ntoa(addr)
            self.counters["leases_withdrawn"] += 1
            cmds.append(Log(logging.WARNING, f"session {self.id} {self.identity}: lease {route.fqdn} {a} withdrawn "
                                             f"by the reloaded policy, {flows} flow(s) ended: {why}"))
            cmds.append(Send(wire.control(wire.LEASE_RESULT, fqdn=route.fqdn, addr=a, allowed=False,
                                          reason=f"policy reloaded: {why}")))
        for (name, addr), _ in list(self.asking.items()):
            ok, why = policy.allows(self.identity, name)
            if not ok:
                del self.asking[(name, addr)]
                cmds.extend(self._denied(name, socket.inet_ntoa(addr), f"policy reloaded: {why}"))
        return cmds

    def end(self, reason: str) -> list:
        """The gateway ends this session (its certificate revoked, ...): tell the agent why, then Close."""
        if self.state == CLOSED:
            return []
        return self._close([Log(logging.WARNING, f"session {self.id} {self.identity}: ended: {reason}")],
                           reason, tell=True)

    def closed_by_shell(self) -> list:
        """The connection is gone (for whatever reason): give the inside address back."""
        self.state = CLOSED
        self.asking.clear()
        self.out.clear()
        self.fq = FqCodel(offset=wire.VNET_HDR_LEN, limit_bytes=self.queue_limit)
        if not self.inside:
            return []
        inside, self.inside = self.inside, b""
        self.pool.give_back(inside)
        return [Unbind(inside)]

    # ---- replies from the LAN (hot path) ------------------------------------------
    def reply(self, buf: bytearray, now: float) -> bool:
        """A TUN packet to this session's inside address: mapped back and queued, or False (no flow claims it)."""
        if self.nat is None or not self.nat.inbound(buf, wire.VNET_HDR_LEN, bool(buf[0] & 1), now):
            return False
        self.out.append(buf)
        return True

    def flush(self, blocked: bool, now: float) -> list:
        """End of a TUN burst; ``blocked``: the connection cannot take more now."""
        if not self.out:
            return []
        out = self.out
        self.out = []
        if self.state == CLOSED:
            return []
        fq = self.fq
        if self.path is not None and not fq.packets and self.path.udp(now):
            udp, out = self._udp_out(out)
            if not out:
                return udp
            return udp + self._flush_tls(out, blocked, now)
        return self._flush_tls(out, blocked, now)

    def _flush_tls(self, out: list, blocked: bool, now: float) -> list:
        fq = self.fq
        if not blocked and not fq.packets:
            # The common case: nothing waits, so nothing to schedule; the burst goes as is,
            # except what is past one batch.
            total = 0
            for i, buf in enumerate(out):
                total += len(buf)
                if total >= BATCH:
                    for rest in out[i + 1:]:
                        fq.enqueue(rest, now)
                    out = out[:i + 1]
                    break
            self._count()
            return [Send(_frames(out))]
        self.counters["reply_queued_packets"] += len(out)
        for buf in out:
            fq.enqueue(buf, now)
        if blocked:
            self._count()
            return []
        return self.writable(now)

    def writable(self, now: float) -> list:
        """The connection takes more: the next batch of queued replies (``[]`` when none wait)."""
        if self.state == CLOSED or not self.fq.packets:
            return []
        pkts = self.fq.dequeue_bytes(BATCH, now)
        self._count()
        return [Send(_frames(pkts))] if pkts else []

    @property
    def backlog(self) -> int:
        """Reply packets waiting for the connection."""
        return self.fq.packets

    def _count(self) -> None:
        fq = self.fq
        seen = self._fq_seen
        if (fq.drops, fq.marks, fq.overlimit) != seen:
            c = self.counters
            c["aqm_drops"] += fq.drops - seen[0]
            c["aqm_marks"] += fq.marks - seen[1]
            c["queue_drops"] += fq.overlimit - seen[2]
            self.queue_drops += fq.overlimit - seen[2]
            self._fq_seen = (fq.drops, fq.marks, fq.overlimit)

    # ---- control frames ------------------------------------------------------------
    def _control(self, f: wire.Frame, now: float, cmds: list) -> None:
        t = f.type
        if t == wire.HELLO:
            self._hello(f.fields, cmds)
        elif t == wire.LEASE:
            self._lease(f.fields, cmds)
        elif t == wire.RELEASE:
            if self.nat is not None:
                try:
                    self.nat.release(socket.inet_aton(str(f.fields.get("addr"))))
                except OSError:
                    self._close(cmds, "protocol error: RELEASE without a valid addr")
        elif t == wire.KEEPALIVE:
            cmds.append(Send(wire.frame(wire.KEEPALIVE)))
        elif t == wire.DC_OFFER or t == wire.DC_PATH:
            self._data_channel(f, now, cmds)
        elif t == wire.CLOSE:
            self._close(cmds, f"agent closed: {f.fields.get('reason', '')}")
        else:
            self._close(cmds, f"protocol error: agent sent {wire.NAMES.get(t)}")

    def _data_channel(self, f: wire.Frame, now: float, cmds: list) -> None:
        if self.state != UP:
            self._close(cmds, f"protocol error: {wire.NAMES[f.type]} before HELLO")
            return
        if self.udp_port is None:
            self.counters["udp_offers_ignored"] += 1  # no UDP here: the agent's try times out, data stays in TLS
            return
        if f.type == wire.DC_PATH:
            if self.path is not None:
                self.path.path(f.fields)
                cmds.append(Log(logging.INFO, f"session {self.id} {self.identity}: data over "
                                              f"{'UDP' if self.path.agent_says_udp else 'TLS'}"))
            return
        if self.path is None:
            self.path = GatewayPath(self.id, port=self.udp_port, agent_identity=self.identity,
                                    gateway_identity=self.gateway_identity)
            self.path.counters = self.counters  # the gateway's counters (metrics)
        try:
            for pc in self.path.offered(f.fields, now):
                cmds.append(Send(pc.data))
        except ValueError as exc:
            self._close(cmds, f"protocol error: bad DC_OFFER: {exc}", tell=True)

    def datagram(self, data: bytes, source: tuple, now: float) -> list:
        """One datagram whose header names this session (the shell found it by ``udppath.session_of``)."""
        return self.datagrams([(data, source)], now)

    def datagrams(self, items: list, now: float) -> list:
        """Datagrams, each (data, source), whose headers name this session, in the order they came.
        Their inner packets go through the NAT and to the TUN in one write list, in-order TCP segments
        of one flow joined into super-packets first (ztna.segment.coalesce)."""
        path, nat = self.path, self.nat
        if path is None or nat is None or self.state == CLOSED:
            self.counters["udp_dropped_no_path"] += len(items)
            return []
        cmds, bufs, moved, _ = path.receive_many(items, now)
        for source in moved:
            cmds.append(Log(logging.INFO, f"session {self.id} {self.identity}: UDP peer now {source[0]}:{source[1]}"))
        if not bufs:
            return cmds
        out: list = []
        outbound = nat.outbound
        for buf in coalesce(bufs) if len(bufs) > 1 else bufs:
            if len(buf) < 30:
                self._dropped(cmds)
                continue
            verdict = outbound(buf, wire.VNET_HDR_LEN, bool(buf[0] & 1), now)
            if verdict is None:
                self._dropped(cmds)
                continue
            if verdict[1]:
                cmds.append(self._flow_line(verdict[0]))
            out.append(buf)
        if out:
            cmds.append(WriteTun(out))
        return cmds

    def _udp_out(self, out: list) -> tuple[list, list]:
        """(commands sending what fits as datagrams, the packets left for TLS)."""
        dgs, rest = self.path.seal_packets(out, self.udp_mtu)
        self.counters["udp_tx_packets"] += len(dgs)
        return ([SendDatagrams(dgs, self.path.channel.peer)] if dgs else []), rest

    def _hello(self, fields: dict, cmds: list) -> None:
        if self.state != HELLO:
            self._close(cmds, "protocol error: HELLO twice")
            return
        version = fields.get("version")
        if version != wire.VERSION:
            self.state = CLOSED
            cmds.append(Send(wire.control(wire.CLOSE, reason=f"protocol version {version} not supported")))
            cmds.append(Close(f"agent speaks protocol version {version!r}"))
            return
        try:
            addr = ipaddress.IPv4Address(str(fields.get("tunnel_addr")))
            if addr not in self.agent_net:
                raise ValueError(f"{addr} is outside {self.agent_net}")
        except ValueError as exc:
            self._close(cmds, f"protocol error: bad tunnel_addr: {exc}")
            return
        try:
            self.inside = self.pool.take()
        except RuntimeError as exc:
            self._close(cmds, str(exc), tell=True)
            return
        self.nat = ClientNat(addr.packed, self.inside)
        self.state = UP
        cmds.append(Bind(self.inside))
        cmds.append(Send(wire.control(wire.WELCOME, version=wire.VERSION, identity=self.identity, session=self.id)))
        cmds.append(Log(logging.INFO, f"session {self.id} {self.identity}: tunnel up, agent address {addr}, "
                                      f"inside address {socket.inet_ntoa(self.inside)}"))

    def _lease(self, fields: dict, cmds: list) -> None:
        if self.state != UP:
            self._close(cmds, "protocol error: LEASE before HELLO")
            return
        try:
            fqdn = fields.get("fqdn")
            if not isinstance(fqdn, str):
                raise ValueError(f"fqdn {fqdn!r} is not a name")
            name = normalize(fqdn)
            a = ipaddress.IPv4Address(str(fields.get("addr")))
            if a not in self.agent_net:
                raise ValueError(f"{a} is outside {self.agent_net}")
        except (BadName, ValueError) as exc:
            self._close(cmds, f"protocol error: bad LEASE: {exc}")
            return
        ok, why = self.policy.allows(self.identity, name)
        if not ok:
            cmds.extend(self._denied(name, str(a), why))
            return
        key = (name, a.packed)
        if key in self.asking:
            return  # the same LEASE again while its lookup runs: the one answer serves both
        if len(self.asking) >= MAX_LOOKUPS:
            cmds.extend(self._denied(name, str(a), f"{MAX_LOOKUPS} private-DNS lookups of this session are "
                                                   "waiting already; lease again later", retry=True))
            return
        self.asking[key] = why
        cmds.append(Resolve(name, a.packed))

    def _denied(self, name: str, a: str, why: str, *, retry: bool = False) -> list:
        """Refuse a lease; ``retry``: the refusal is for now (the agent asks again on its next packet)."""
        self.counters["leases_denied"] += 1
        fields = {"fqdn": name, "addr": a, "allowed": False, "reason": why}
        if retry:
            fields["retry"] = True
        return [Log(logging.WARNING, f"session {self.id} {self.identity}: lease {name} {a} DENIED"
                                     f"{' for now' if retry else ''}: {why}"),
                Send(wire.control(wire.LEASE_RESULT, **fields))]

    # ---- the data path's rare lines ------------------------------------------------
    def _flow_line(self, key: tuple) -> Log:
        proto, sport, real, dport = key
        entry = self.nat.flows.get(key)
        fqdn = self.nat.routes[entry[0]].fqdn if entry and entry[0] in self.nat.routes else "?"
        return Log(logging.INFO, f"flow session {self.id} {self.identity} {PROTOCOLS.get(proto, str(proto))} "
                                 f":{sport} -> {fqdn} => {socket.inet_ntoa(real)}:{dport}")

    def _dropped(self, cmds: list) -> None:
        self.counters["dropped_spoofed"] += 1
        self.drops_logged += 1
        if self.drops_logged <= 5 or self.drops_logged % 1000 == 0:
            c = self.nat.counters
            cmds.append(Log(logging.WARNING, f"session {self.id} {self.identity}: dropped a packet not from its "
                                             f"address or not to one of its leases (spoofed src {c.spoofed_src}, "
                                             f"dst {c.spoofed_dst}, malformed {c.malformed} so far)"))


def _frames(pkts: list) -> bytes:
    """DATA frames for these packets, as one string."""
    out = []
    for p in pkts:
        out.append(wire.data_header(len(p)))
        out.append(p)
    return b"".join(out)
