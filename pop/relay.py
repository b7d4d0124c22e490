"""The PoP's decisions: agents in, connector tunnels out, sans-IO.

Theory of operation
-------------------
The shell (pop/service.py) accepts TLS, learns each peer's identity from its
certificate and reports events with the time; the :class:`Relay` returns
commands.  Two kinds of peer:

* **connectors** (gateways in connector mode): one mTLS tunnel per published
  resource.  ``HELLO {version, resource}`` -> the PoP's ``[connectors]`` table says
  whether this certificate may publish that resource -> ``WELCOME`` or
  ``CLOSE {reason}``.  The tunnel then carries channels (ztna/mux.py).
* **agents**: the ordinary tunnel protocol of ztna/wire.py.  The PoP answers
  HELLO with WELCOME itself.  On ``LEASE {fqdn, addr}`` it checks its own policy
  (identity -> resources); denied: ``LEASE_RESULT`` denied here (no connector
  sees it).  Allowed: it picks a connector tunnel publishing a resource that
  matches (round robin over the live ones), opens there once per (agent,
  connector) an ``agent`` channel ``OPEN {kind: agent, identity, resource}``,
  and sends the agent's HELLO and the LEASE inside it; the gateway's session at
  the other end answers, and its LEASE_RESULT, DATA and CLOSE come back to the
  agent.  DATA from the agent goes to the channel its destination address was
  leased through.

Credit, agent -> connector: a DATA frame the channel's credit cannot take is
*held* with every later frame of that channel (their order kept), and the shell
is told to stop reading that agent's tunnel (``PauseAgent``); the connector's
next CREDIT sends what is held and resumes it (``ResumeAgent``).  So a busy
connector pushes back through TCP on the agent, whose own fair queue (CoDel)
decides what to drop, as when a directly dialled gateway is slow, instead of
the PoP dropping whole GSO super-packets.  What is held is bounded: at most
``hold_limit`` bytes per agent (the shell's one read of a wake-up fits) and
``hold_timeout`` seconds; past either the frames are dropped and counted
(``credit_drops``, router semantics) and the agent is read again.  Only that
agent waits: other agents' channels on the same connector have their own credit.

Credit, connector -> agent: given back as the PoP hands the bytes to the agent,
unless the agent's connection holds more than ``queue_limit`` bytes unsent; then
it is owed and granted at ``agent_drained``.

One JSON log line per flow (a lease through a connector, from LEASE_RESULT
allowed to its release or the end of either tunnel): identity, resource,
connector, the leased address and bytes each way.
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from dataclasses import dataclass, field

from ztna import mux, wire
from ztna.names import BadName, normalize
from ztna.tunnelcmds import Log

from .policy import PopPolicy

HELLO = "hello"
UP = "up"


# ---- commands -------------------------------------------------------------------------
@dataclass(frozen=True)
class SendAgent:
    agent: int
    data: bytes


@dataclass(frozen=True)
class SendConnector:
    connector: int
    data: bytes


@dataclass(frozen=True)
class CloseAgent:
    agent: int
    reason: str


@dataclass(frozen=True)
class PauseAgent:
    """Stop reading the agent's tunnel: its frames wait for a connector's credit (held at the PoP)."""
    agent: int


@dataclass(frozen=True)
class ResumeAgent:
    agent: int


@dataclass(frozen=True)
class CloseConnector:
    connector: int
    reason: str


@dataclass(frozen=True)
class StreamEvent:
    """A mux event (Accepted, Data, Closed) of an agentless ``stream`` channel, for the shell's ChannelSocket."""
    connector: int
    ch: int
    event: object


@dataclass(frozen=True)
class FlowLog:
    """One JSON line for the flow log."""
    fields: dict


def runs(flows: list, limit: int):
    """(first, end, bytes) of consecutive runs of DATA frames (``flows``: (flow, payload length) each, the frame
    ``wire.HEADER`` longer) of at most ``limit`` bytes; a run holds at least one frame."""
    i, n = 0, len(flows)
    while i < n:
        j, size = i, 0
        while j < n:
            f = wire.HEADER + flows[j][1]
            if size and size + f > limit:
                break
            size += f
            j += 1
        yield i, j, size
        i = j


# ---- state ------------------------------------------------------------------------------
@dataclass
class Flow:
    fqdn: str
    addr: str
    connector: int
    ch: int
    up: int = 0
    down: int = 0
    allowed: bool = False


@dataclass
class AgentLink:
    id: int
    identity: str
    last_rx: float
    state: str = HELLO
    decoder: wire.Decoder = field(default_factory=wire.Decoder)
    hello: bytes = b""
    channels: dict = field(default_factory=dict)   # connector id -> channel id
    flows: dict = field(default_factory=dict)      # leased address (4 bytes) -> Flow
    drops: int = 0
    held: dict = field(default_factory=dict)       # (connector, channel) -> [frame parts, (flow, length) each]
    held_bytes: int = 0
    held_since: float = 0.0
    paused: bool = False


@dataclass
class ConnectorLink:
    id: int
    identity: str
    peer: str
    last_rx: float
    state: str = HELLO
    resource: str = ""
    mux: mux.Mux = field(default_factory=lambda: mux.Mux(opener=True))
    agents: dict = field(default_factory=dict)     # channel id -> agent id
    decoders: dict = field(default_factory=dict)   # channel id -> wire.Decoder of the gateway's frames
    pending: dict = field(default_factory=dict)    # channel id -> frames waiting for OPENED
    owed: dict = field(default_factory=dict)       # channel id -> credit not yet granted (agent slow)
    streams: set = field(default_factory=set)      # agentless stream channels (their bytes are the shell's)
    holding: set = field(default_factory=set)      # agents with frames held for this connector's credit


class Relay:
    """Every agent and connector of one PoP (see the module docstring)."""

    def __init__(self, policy: PopPolicy, *, keepalive: float = 15.0, queue_limit: int = 4 * 1024 * 1024,
                 window: int = mux.DEFAULT_WINDOW, hold_limit: int = 2 * 1024 * 1024, hold_timeout: float = 1.0):
        self.policy = policy
        self.keepalive = keepalive
        self.queue_limit = queue_limit
        self.hold_limit = hold_limit
        self.hold_timeout = hold_timeout
        self.window = window
        self.agents: dict[int, AgentLink] = {}
        self.connectors: dict[int, ConnectorLink] = {}
        self.counters: Counter = Counter()
        self._rr = 0

    # ==== connectors ===========================================================================
    def connector_up(self, cid: int, identity: str, peer: str, now: float) -> list:
        self.connectors[cid] = ConnectorLink(cid, identity, peer, now, mux=mux.Mux(opener=True, window=self.window))
        return []

    def connector_data(self, cid: int, data: bytes, now: float, agent_queued=lambda aid: 0) -> list:
        c = self.connectors.get(cid)
        if c is None:
            return []
        c.last_rx = now
        cmds: list = []
        try:
            events = c.mux.feed_untrusted(data)
            bad = None
        except wire.BadFrame as exc:
            events, bad = exc.frames, exc
        for ev in events:
            if cid not in self.connectors:
                return cmds
            t = type(ev)
            if t in (mux.Data, mux.Accepted, mux.Closed) and ev.ch in c.streams:
                if t is mux.Closed and ev.ch not in c.mux.channels:
                    c.streams.discard(ev.ch)
                cmds.append(StreamEvent(cid, ev.ch, ev))
            elif t is mux.Data:
                self._channel_data(c, ev.ch, ev.data, cmds, agent_queued)
            elif t is mux.Accepted:
                waiting = c.pending.pop(ev.ch, [])
                out = [c.mux.send(ev.ch, b) for b in waiting]
                cmds.append(SendConnector(cid, b"".join(x for x in out if x)))
            elif t is mux.Closed:
                self._channel_gone(c, ev.ch, f"connector closed the channel: {ev.reason}", cmds, tell=False)
            elif t is mux.Opened:
                cmds.append(SendConnector(cid, c.mux.close(ev.ch, "the PoP opens the channels")))
            elif t is mux.Tunnel:
                self._connector_control(c, ev.frame, cmds)
        if bad is not None and cid in self.connectors:
            self.counters["connector_protocol_errors"] += 1
            self._close_connector(c, f"protocol error: {bad}", cmds, tell=True)
        elif c.holding and cid in self.connectors:
            self._retry_held(c, cmds)  # a CREDIT may have come
        return cmds

    def _retry_held(self, c: ConnectorLink, cmds: list) -> None:
        """Send what agents hold for ``c`` as far as the credit goes; resume the agents that hold nothing more."""
        dest: list = []
        for aid in sorted(c.holding):
            a = self.agents.get(aid)
            if a is None:
                c.holding.discard(aid)
                continue
            for key in [k for k in a.held if k[0] == c.id]:
                parts, flows = a.held[key]
                k = self._send_frames(c, key[1], parts, flows, 0, dest)
                sent = sum(wire.HEADER + n for _, n in flows[:k])
                a.held_bytes -= sent
                if k == len(flows):
                    del a.held[key]
                else:
                    a.held[key] = [parts[2 * k:], flows[k:]]
            if not any(k[0] == c.id for k in a.held):
                c.holding.discard(aid)
            self._maybe_resume(a, cmds)
        if dest:
            cmds.append(SendConnector(c.id, b"".join(dest)))

    def _maybe_resume(self, a: AgentLink, cmds: list) -> None:
        if a.paused and not a.held:
            a.paused = False
            a.held_bytes = 0
            cmds.append(ResumeAgent(a.id))

    def _drop_held(self, a: AgentLink, cid: int | None, cmds: list) -> None:
        """Drop what ``a`` holds (for connector ``cid``, or all), counted; resume it if nothing else waits."""
        for key in [k for k in a.held if cid is None or k[0] == cid]:
            parts, flows = a.held.pop(key)
            a.drops += len(flows)
            self.counters["credit_drops"] += len(flows)
            a.held_bytes -= sum(wire.HEADER + n for _, n in flows)
            c = self.connectors.get(key[0])
            if c is not None and not any(k[0] == key[0] for k in a.held):
                c.holding.discard(a.id)
        self._maybe_resume(a, cmds)

    def _connector_control(self, c: ConnectorLink, f: wire.Frame, cmds: list) -> None:
        t = f.type
        if t == wire.HELLO and c.state == HELLO:
            version, res = f.fields.get("version"), f.fields.get("resource")
            if version != wire.VERSION:
                self._close_connector(c, f"protocol version {version!r} not supported", cmds, tell=True)
                return
            ok, why = self.policy.may_publish(c.identity, res)
            if not ok:
                self.counters["connectors_refused"] += 1
                self._close_connector(c, f"refused: {why}", cmds, tell=True)
                return
            c.state, c.resource = UP, res
            cmds.append(SendConnector(c.id, wire.control(wire.WELCOME, version=wire.VERSION, resource=res)))
            cmds.append(Log(logging.INFO, f"connector {c.id} {c.identity} from {c.peer}: publishes {res} ({why})"))
        elif t == wire.KEEPALIVE:
            cmds.append(SendConnector(c.id, wire.frame(wire.KEEPALIVE)))
        elif t == wire.CLOSE:
            self._close_connector(c, f"connector closed: {str(f.fields.get('reason', ''))[:200]}", cmds)
        else:
            self._close_connector(c, f"protocol error: connector sent {wire.NAMES.get(t)} in state {c.state}",
                                  cmds, tell=True)

    def _close_connector(self, c: ConnectorLink, reason: str, cmds: list, *, tell: bool = False) -> None:
        if tell:
            cmds.append(SendConnector(c.id, wire.control(wire.CLOSE, reason=reason)))
        cmds.append(CloseConnector(c.id, reason))
        self._forget_connector(c, reason, cmds)

    def _forget_connector(self, c: ConnectorLink, reason: str, cmds: list) -> None:
        if self.connectors.pop(c.id, None) is None:
            return
        level = logging.WARNING if "refused" in reason or "error" in reason else logging.INFO
        cmds.append(Log(level, f"connector {c.id} {c.identity} from {c.peer} ({c.resource or 'no resource'}) "
                               f"closed: {reason}"))
        for ch in sorted(c.streams):  # agentless streams on it are reset; their browsers get 502 or a broken answer
            cmds.append(StreamEvent(c.id, ch, mux.Closed(ch, f"connector gone: {reason}"[:200], True)))
        c.streams.clear()
        for aid in sorted(c.holding):
            a = self.agents.get(aid)
            if a is not None:
                self._drop_held(a, c.id, cmds)
        c.holding.clear()
        # Only the flows through it end: each of its agents hears, per lease, LEASE_RESULT {allowed: false,
        # retry: true}; the agent refuses nothing yet, and its next packet to the name leases again, on a
        # live connector.  The established flows' packets then reach an app that does not know them, and
        # its RST ends them.  The agents' tunnels and their other flows stay up.
        for ch, aid in sorted(c.agents.items()):
            a = self.agents.get(aid)
            if a is not None:
                self._connector_lost(a, c, reason, cmds)
        c.agents.clear()

    def _connector_lost(self, a: AgentLink, c: ConnectorLink, reason: str, cmds: list) -> None:
        a.channels.pop(c.id, None)
        self._drop_held(a, c.id, cmds)
        ended = []
        for addr, fl in list(a.flows.items()):
            if fl.connector != c.id:
                continue
            del a.flows[addr]
            ended.append(fl.fqdn)
            if fl.allowed:
                self._flow_line(a, fl, f"connector {c.identity} gone: {reason}", cmds, c)
            cmds.append(SendAgent(a.id, wire.control(wire.LEASE_RESULT, fqdn=fl.fqdn, addr=fl.addr, allowed=False,
                                                     retry=True, reason=f"PoP: connector {c.identity} gone; "
                                                                        "lease again")))
        self.counters["leases_lost_with_connector"] += len(ended)
        cmds.append(Log(logging.INFO, f"agent {a.id} {a.identity}: {len(ended)} lease(s) through connector {c.id} "
                                      f"{c.identity} ended ({', '.join(ended) or 'none'}); its tunnel stays up"))

    def connector_closed(self, cid: int, reason: str) -> list:
        c = self.connectors.get(cid)
        if c is None:
            return []
        cmds: list = []
        self._forget_connector(c, reason, cmds)
        return cmds

    # ==== agentless streams =====================================================================
    def open_stream(self, identity: str, resource: str, host: str, port: int) -> tuple[int, int, list]:
        """(connector id, channel, commands) of a new ``stream`` channel for an authenticated browser connection.

        Raises PermissionError when ``[policy]`` refuses (the front asked it already: this is the
        second lock), LookupError when no live connector publishes ``resource``."""
        ok, why = self.policy.allows(identity, resource)
        if not ok:
            self.counters["streams_denied"] += 1
            raise PermissionError(why)
        c = self._pick(resource)
        if c is None:
            self.counters["streams_no_connector"] += 1
            raise LookupError(f"no live connector publishes {resource}")
        ch, frame = c.mux.open(mux.STREAM, identity=identity, resource=resource, host=host, port=port)
        c.streams.add(ch)
        self.counters["streams"] += 1
        return c.id, ch, [SendConnector(c.id, frame)]

    def stream_gone(self, cid: int, ch: int) -> None:
        """The shell's stream on ``ch`` has ended (its ChannelSocket closed the channel or saw it closed)."""
        c = self.connectors.get(cid)
        if c is not None:
            c.streams.discard(ch)

    # ==== agents ===============================================================================
    def agent_up(self, aid: int, identity: str, now: float) -> list:
        self.agents[aid] = AgentLink(aid, identity, now)
        return []

    def agent_data(self, aid: int, data: bytes, now: float) -> list:
        a = self.agents.get(aid)
        if a is None:
            return []
        a.last_rx = now
        try:
            frames = a.decoder.feed_untrusted(data)
            bad = None
        except wire.BadFrame as exc:
            frames, bad = exc.frames, exc
        cmds: list = []
        out: dict[int, list] = {}  # connector id -> frames, one write each
        batch: dict = {}           # (connector, channel) -> [DATA frames, their bytes, their flows]: one CHDATA
        held = bool(a.held)
        for f in frames:
            if aid not in self.agents:
                break
            if f.type == wire.DATA:
                self._agent_packet(a, f.payload, batch, cmds)
            else:
                if batch:
                    self._flush(a, batch, out)
                self._agent_control(a, f, out, cmds)
        if batch and aid in self.agents:
            self._flush(a, batch, out)
        for cid, parts in out.items():
            if parts:
                cmds.append(SendConnector(cid, b"".join(parts)))
        if a.held and aid in self.agents and not a.paused:
            a.paused = True
            if not held:
                a.held_since = now
            cmds.append(PauseAgent(aid))
        if bad is not None and aid in self.agents:
            self._close_agent(a, f"protocol error: {bad}", cmds, tell=True)
        return cmds

    def _agent_packet(self, a: AgentLink, payload, batch: dict, cmds: list) -> None:
        if a.state != UP:
            self._close_agent(a, "protocol error: DATA before HELLO", cmds)
            return
        fl = a.flows.get(bytes(payload[wire.VNET_HDR_LEN + 16:wire.VNET_HDR_LEN + 20]))
        if fl is None or not fl.allowed:
            self.counters["unleased_drops"] += 1
            return
        b = batch.get((fl.connector, fl.ch))
        if b is None:
            b = batch[(fl.connector, fl.ch)] = [[], 0, []]
        b[0].append(wire.data_header(len(payload)))
        b[0].append(payload)
        b[1] += wire.HEADER + len(payload)
        b[2].append((fl, len(payload)))

    def _flush(self, a: AgentLink, batch: dict, out: dict) -> None:
        """The DATA frames of one read: per channel, runs of whole frames of up to a PIECE each, one CHDATA
        per run, its header and the frames' own bytes joined once by the caller.  What the credit cannot
        take is held, in order, with what follows it on that channel (see the module docstring)."""
        for (cid, ch), (parts, _total, flows) in batch.items():
            c = self.connectors.get(cid)
            if c is None:
                a.drops += len(flows)
                self.counters["credit_drops"] += len(flows)
                continue
            key = (cid, ch)
            k = 0 if key in a.held else self._send_frames(c, ch, parts, flows, 0, out.setdefault(cid, []))
            if k < len(flows):
                self._hold(a, c, key, parts[2 * k:], flows[k:])
        batch.clear()

    def _send_frames(self, c: ConnectorLink, ch: int, parts: list, flows: list, k: int, dest: list) -> int:
        """Frames ``k..`` (``parts``: header and payload each; ``flows``: (flow, length) each) onto ``dest`` as
        CHDATA runs while the credit lasts; returns the index of the first frame not sent."""
        for i, j, size in runs(flows[k:], mux.PIECE):
            i, j = i + k, j + k
            head = c.mux.reserve(ch, size)
            if head is not None:
                dest.append(head)
                dest.extend(parts[2 * i:2 * j])
                for fl, n in flows[i:j]:
                    fl.up += n
                continue
            for m in range(i, j):  # the run does not fit: as many whole frames as do, in order
                fl, n = flows[m]
                head = c.mux.reserve(ch, wire.HEADER + n)
                if head is None:
                    return m
                fl.up += n
                dest.append(head)
                dest.append(parts[2 * m])
                dest.append(parts[2 * m + 1])
        return len(flows)

    def _hold(self, a: AgentLink, c: ConnectorLink, key: tuple, parts: list, flows: list) -> None:
        room = self.hold_limit - a.held_bytes
        keep = 0
        for _, n in flows:
            if room < wire.HEADER + n:
                break
            room -= wire.HEADER + n
            keep += 1
        if keep < len(flows):  # past the bound: router semantics
            a.drops += len(flows) - keep
            self.counters["credit_drops"] += len(flows) - keep
        if not keep:
            return
        slot = a.held.setdefault(key, [[], []])
        slot[0].extend(parts[:2 * keep])
        slot[1].extend(flows[:keep])
        a.held_bytes += sum(wire.HEADER + n for _, n in flows[:keep])
        c.holding.add(a.id)
        self.counters["credit_holds"] += 1

    def _agent_control(self, a: AgentLink, f: wire.Frame, out: dict, cmds: list) -> None:
        t = f.type
        if t == wire.HELLO:
            if a.state != HELLO:
                self._close_agent(a, "protocol error: HELLO twice", cmds)
                return
            if f.fields.get("version") != wire.VERSION:
                self._close_agent(a, f"protocol version {f.fields.get('version')!r} not supported", cmds, tell=True)
                return
            a.state = UP
            a.hello = wire.control(wire.HELLO, **f.fields)
            cmds.append(SendAgent(a.id, wire.control(wire.WELCOME, version=wire.VERSION, identity=a.identity,
                                                     session=a.id)))
        elif t == wire.LEASE:
            self._lease(a, f.fields, out, cmds)
        elif t == wire.RELEASE:
            try:
                addr = socket.inet_aton(str(f.fields.get("addr")))
            except OSError:
                self._close_agent(a, "protocol error: RELEASE without a valid addr", cmds)
                return
            fl = a.flows.pop(addr, None)
            if fl is not None:
                self._to_channel(fl.connector, fl.ch, wire.control(wire.RELEASE, **f.fields), out)
                self._flow_line(a, fl, "released", cmds)
        elif t == wire.KEEPALIVE:
            cmds.append(SendAgent(a.id, wire.frame(wire.KEEPALIVE)))
            for cid, ch in a.channels.items():  # the gateways' sessions hear from their agent too
                self._to_channel(cid, ch, wire.frame(wire.KEEPALIVE), out)
        elif t == wire.CLOSE:
            self._close_agent(a, f"agent closed: {str(f.fields.get('reason', ''))[:200]}", cmds)
        else:
            self._close_agent(a, f"protocol error: agent sent {wire.NAMES.get(t)}", cmds)

    def _lease(self, a: AgentLink, fields: dict, out: dict, cmds: list) -> None:
        if a.state != UP:
            self._close_agent(a, "protocol error: LEASE before HELLO", cmds)
            return
        try:
            fqdn = fields.get("fqdn")
            if not isinstance(fqdn, str):
                raise ValueError(f"fqdn {fqdn!r} is not a name")
            name = normalize(fqdn)
            addr = socket.inet_aton(str(fields.get("addr")))
        except (BadName, ValueError, OSError) as exc:
            self._close_agent(a, f"protocol error: bad LEASE: {exc}", cmds)
            return
        ok, why = self.policy.allows(a.identity, name)
        if not ok:
            self.counters["leases_denied"] += 1
            cmds.append(Log(logging.WARNING, f"agent {a.id} {a.identity}: lease {name} DENIED at the PoP: {why}"))
            cmds.append(FlowLog({"event": "denied", "identity": a.identity, "resource": name,
                                 "connector": None, "reason": why, "bytes_up": 0, "bytes_down": 0}))
            cmds.append(SendAgent(a.id, wire.control(wire.LEASE_RESULT, fqdn=name, addr=socket.inet_ntoa(addr),
                                                     allowed=False, reason=f"PoP: {why}")))
            return
        old = a.flows.get(addr)
        c = self.connectors.get(old.connector) if old is not None else None
        if c is None:
            c = self._pick(name)
        if c is None:
            self.counters["leases_no_connector"] += 1
            cmds.append(Log(logging.WARNING, f"agent {a.id} {a.identity}: lease {name}: no connector publishes it"))
            cmds.append(SendAgent(a.id, wire.control(wire.LEASE_RESULT, fqdn=name, addr=socket.inet_ntoa(addr),
                                                     allowed=False, retry=True,
                                                     reason="PoP: no connector publishes it now")))
            return
        ch = a.channels.get(c.id)
        if ch is None:
            ch, opening = c.mux.open("agent", identity=a.identity, resource=c.resource, session=a.id)
            a.channels[c.id] = ch
            c.agents[ch] = a.id
            c.decoders[ch] = wire.Decoder()
            c.pending[ch] = [a.hello]
            out.setdefault(c.id, []).append(opening)
        a.flows[addr] = Flow(name, socket.inet_ntoa(addr), c.id, ch, allowed=old.allowed if old else False)
        self._to_channel(c.id, ch, wire.control(wire.LEASE, **fields), out)

    def _pick(self, name: str) -> ConnectorLink | None:
        live = [c for c in self.connectors.values() if c.state == UP and self.policy.serves(c.resource, name)]
        if not live:
            return None
        self._rr += 1
        return live[self._rr % len(live)]

    def _to_channel(self, cid: int, ch: int, frame: bytes, out: dict) -> None:
        """A control frame for the gateway's session; waits for OPENED; dropped when the credit is spent."""
        c = self.connectors.get(cid)
        if c is None:
            return
        if ch in c.pending:
            c.pending[ch].append(frame)
            return
        fr = c.mux.send(ch, frame)
        if fr is None:
            self.counters["credit_drops"] += 1
            return
        out.setdefault(cid, []).append(fr)

    def _channel_data(self, c: ConnectorLink, ch: int, data: bytes, cmds: list, agent_queued) -> None:
        aid = c.agents.get(ch)
        a = self.agents.get(aid) if aid is not None else None
        if a is None:
            return
        dec = c.decoders[ch]
        whole = dec.pending() == 0  # the piece starts on a frame boundary
        try:
            frames = dec.feed_untrusted(data)
            bad = None
        except wire.BadFrame as exc:
            frames, bad = exc.frames, exc
        parts = []
        only_data = bad is None
        for f in frames:
            t = f.type
            if t == wire.DATA:
                fl = a.flows.get(bytes(f.payload[wire.VNET_HDR_LEN + 12:wire.VNET_HDR_LEN + 16]))
                if fl is not None:
                    fl.down += len(f.payload)
                parts.append(wire.data_header(len(f.payload)))
                parts.append(f.payload)
                continue
            only_data = False
            if t == wire.LEASE_RESULT:
                try:
                    addr = socket.inet_aton(str(f.fields.get("addr")))
                except OSError:
                    addr = b""
                fl = a.flows.get(addr)
                if fl is not None and fl.ch == ch:
                    if f.fields.get("allowed") is True:
                        fl.allowed = True
                    else:
                        a.flows.pop(addr)
                        self._flow_line(a, fl, f"denied by the gateway: {f.fields.get('reason')}", cmds)
                parts.append(wire.control(wire.LEASE_RESULT, **f.fields))
            elif t == wire.CLOSE:
                bad = f"the gateway closed the agent's session: {str(f.fields.get('reason', ''))[:200]}"
                break
            # WELCOME and KEEPALIVE are for the PoP, which already answered the agent itself
        if only_data and whole and frames and dec.pending() == 0:
            cmds.append(SendAgent(a.id, data))  # whole DATA frames only: pass the bytes on as they came
        elif parts:
            cmds.append(SendAgent(a.id, b"".join(parts)))
        if bad is not None:
            self._close_agent(a, str(bad), cmds, tell=True)
            return
        if agent_queued(a.id) > self.queue_limit:
            c.owed[ch] = c.owed.get(ch, 0) + len(data)
            return
        grant = c.mux.consumed(ch, len(data))
        if grant:
            cmds.append(SendConnector(c.id, grant))

    def agent_drained(self, aid: int) -> list:
        """The agent's connection has sent what it held: grant the credit owed to its channels."""
        a = self.agents.get(aid)
        if a is None:
            return []
        cmds = []
        for cid, ch in a.channels.items():
            c = self.connectors.get(cid)
            n = c.owed.pop(ch, 0) if c is not None else 0
            if n:
                grant = c.mux.consumed(ch, n)
                if grant:
                    cmds.append(SendConnector(cid, grant))
        return cmds

    def _channel_gone(self, c: ConnectorLink, ch: int, reason: str, cmds: list, *, tell: bool) -> None:
        aid = c.agents.pop(ch, None)
        c.decoders.pop(ch, None)
        c.pending.pop(ch, None)
        c.owed.pop(ch, None)
        a = self.agents.get(aid) if aid is not None else None
        if a is not None:
            self._close_agent(a, reason, cmds, tell=True)

    def _flow_line(self, a: AgentLink, fl: Flow, end: str, cmds: list, c: ConnectorLink | None = None) -> None:
        c = c or self.connectors.get(fl.connector)
        cmds.append(FlowLog({"event": "flow", "identity": a.identity, "resource": fl.fqdn, "addr": fl.addr,
                             "connector": c.identity if c else fl.connector,
                             "connector_id": fl.connector, "bytes_up": fl.up, "bytes_down": fl.down, "end": end}))

    def _close_agent(self, a: AgentLink, reason: str, cmds: list, *, tell: bool = False) -> None:
        if self.agents.pop(a.id, None) is None:
            return
        if tell:
            cmds.append(SendAgent(a.id, wire.control(wire.CLOSE, reason=reason)))
        cmds.append(CloseAgent(a.id, reason))
        self._forget_agent(a, reason, cmds)

    def _forget_agent(self, a: AgentLink, reason: str, cmds: list) -> None:
        self.agents.pop(a.id, None)
        for cid, _ in a.held:
            c = self.connectors.get(cid)
            if c is not None:
                c.holding.discard(a.id)
        a.held.clear()
        for fl in a.flows.values():
            if fl.allowed:
                self._flow_line(a, fl, reason, cmds)
        a.flows.clear()
        for cid, ch in a.channels.items():
            c = self.connectors.get(cid)
            if c is None:
                continue
            c.agents.pop(ch, None)
            c.decoders.pop(ch, None)
            c.pending.pop(ch, None)
            c.owed.pop(ch, None)
            fr = c.mux.close(ch, f"agent gone: {reason}"[:200])
            if fr:
                cmds.append(SendConnector(cid, fr))
        a.channels.clear()
        level = logging.WARNING if "error" in reason else logging.INFO
        cmds.append(Log(level, f"agent {a.id} {a.identity} closed: {reason} ({a.drops} packets dropped for credit)"))

    def agent_closed(self, aid: int, reason: str) -> list:
        a = self.agents.get(aid)
        if a is None:
            return []
        cmds: list = []
        self._forget_agent(a, reason, cmds)
        return cmds

    # ==== time =====================================================================================
    def tick(self, now: float) -> list:
        cmds: list = []
        limit = 3 * self.keepalive
        for a in list(self.agents.values()):
            if a.held and now - a.held_since > self.hold_timeout:
                self.counters["hold_timeouts"] += 1
                self._drop_held(a, None, cmds)  # no credit came: router semantics
            if now - a.last_rx > limit and not a.paused:
                self._close_agent(a, f"no word from the agent for {limit:.0f}s", cmds)
        for c in list(self.connectors.values()):
            if now - c.last_rx > limit:
                self._close_connector(c, f"no word from the connector for {limit:.0f}s", cmds)
        return cmds
