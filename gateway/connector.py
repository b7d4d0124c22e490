"""The gateway in connector mode: outbound-only tunnels to the PoP, one per published resource.

Theory of operation
-------------------
With a ``[pop]`` section the gateway listens on nothing.  For each resource in
``[pop] resources`` it dials the PoP on 443 (SNI ``[pop] name``, its own client
certificate), says ``HELLO {version, resource}`` and waits for ``WELCOME``.  The
tunnel then carries channels (ztna/mux.py) the PoP opens: each ``agent``
channel is one agent's tunnel frame stream, and the gateway runs an ordinary
:class:`gateway.session.GatewaySession` for it, exactly as for an agent that
dialled in (private DNS, NAT, the TUN), except that its ``Send`` bytes leave as
CHDATA on the channel (:class:`ChannelConn` stands in for the TLS connection).

A ``stream`` channel is one agentless browser connection the PoP has
authenticated: ``OPEN {kind: stream, identity, resource, host, port}``.  The
gateway checks its own policy, resolves ``host`` with its private DNS, connects
TCP to it and only then answers OPENED; the bytes then move between the channel
and that socket (:class:`ztna.chansock.ChannelSocket`, credit-bounded).  A
refusal or a failed connect is a CHCLOSE with ``reset`` and a log line.

A reply burst the channel's credit cannot take is dropped (the session's queue
rule, counted), never queued.  A lost tunnel is dialled again after a delay
from :class:`Backoff` (exponential, full jitter).

:class:`ConnectorCore` is the tunnel's sans-IO part (hello, mux events, keepalive);
:class:`Connector` is the shell of one resource's tunnel.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from ztna import mux, wire
from ztna.chansock import ChannelSocket
from ztna.config import ConfigError, section
from ztna.names import BadName, normalize, normalize_pattern
from ztna.biotls import BioTLS
from ztna.tlsconn import client_context

from .session import GatewaySession

log = logging.getLogger("ztna.gateway.connector")


@dataclass
class PopLink:
    """``[pop]`` in gateway.toml: where the PoP is and what this gateway publishes there."""

    address: str               # the PoP's IPv4 address
    name: str                  # SNI and certificate name of the PoP's connector endpoint
    resources: list[str]       # one tunnel each: exact names or *.domain patterns
    cert: str                  # this gateway's client certificate (its CN is the connector identity)
    key: str
    ca: str = ""               # the PoP's certificate chains to this; default: [gateway] ca
    port: int = 443
    window: int = 4 * mux.DEFAULT_WINDOW
    connect_timeout: float = 10.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0


def load_pop(data: dict, path: Path, *, default_ca: str) -> PopLink | None:
    if "pop" not in data:
        return None
    cfg: PopLink = section(PopLink, data, "pop", path)
    try:
        socket.inet_aton(cfg.address)
        cfg.name = normalize(cfg.name)
        cfg.resources = [normalize_pattern(r) for r in cfg.resources]
    except (OSError, BadName) as exc:
        raise ConfigError(f"{path}: [pop] {exc}") from exc
    if not cfg.resources:
        raise ConfigError(f"{path}: [pop] resources is empty: name what this gateway publishes")
    if len(set(cfg.resources)) != len(cfg.resources):
        raise ConfigError(f"{path}: [pop] resources names one twice")
    cfg.ca = cfg.ca or default_ca
    for key in ("cert", "key", "ca"):
        if not Path(getattr(cfg, key)).is_file():
            raise ConfigError(f"{path}: [pop] {key} = {getattr(cfg, key)} does not exist")
    return cfg


def resource_changes(old: list[str], new: list[str]) -> tuple[list[str], list[str]]:
    """(added, removed) between two ``[pop] resources`` lists, each in its list's order."""
    return [r for r in new if r not in old], [r for r in old if r not in new]


async def apply_resources(gw, pop) -> tuple[list[str], list[str]]:
    """A reload in connector mode (``Gateway.reload`` took the file): open the tunnels of added
    ``[pop] resources``, close only the removed ones; the others are not touched."""
    old = [c.resource for c in gw.connectors]
    added, removed = resource_changes(old, pop.resources)
    for c in [c for c in gw.connectors if c.resource in removed]:
        gw.connectors.remove(c)
        await c.stop(f"resource {c.resource} removed from [pop]")
        log.info("connector %s: tunnel closed (removed from [pop] resources)", c.resource)
    gw.cfg.pop = pop
    for r in added:
        c = Connector(gw, pop, r)
        gw.connectors.append(c)
        c.start()
        log.info("connector %s: added to [pop] resources, dialling the PoP", r)
    log.info("[pop] resources now %s (added %s, removed %s)", ", ".join(pop.resources),
             ", ".join(added) or "none", ", ".join(removed) or "none")
    return added, removed


class Backoff:
    """Delays before the next dial: full jitter over ``base * 2**n``, capped (sans-IO; ``rng`` for tests)."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None):
        self.base, self.cap = base, cap
        self.rng = rng or random.Random()
        self.failures = 0

    def ceiling(self) -> float:
        return min(self.cap, self.base * (2 ** min(self.failures, 30)))

    def next(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        d = self.rng.uniform(0, self.ceiling())
        self.failures += 1
        return d

    def reset(self) -> None:
        """The tunnel came up: the next failure starts from ``base`` again."""
        self.failures = 0


# ---- the tunnel's sans-IO core ----------------------------------------------------------------
@dataclass(frozen=True)
class Up:
    resource: str


@dataclass(frozen=True)
class NewChannel:
    ch: int
    identity: str
    fields: dict
    kind: str = "agent"


@dataclass(frozen=True)
class ChannelData:
    ch: int
    data: bytes


@dataclass(frozen=True)
class ChannelGone:
    ch: int
    reason: str
    reset: bool = False
    half: bool = False  # a stream's half-close: the PoP sends no more on it


@dataclass(frozen=True)
class SendTunnel:
    data: bytes


@dataclass(frozen=True)
class CloseTunnel:
    reason: str


class ConnectorCore:
    """One connector tunnel's protocol: bytes in, events and frames out."""

    KINDS = ("agent", mux.STREAM)

    def __init__(self, resource: str, *, window: int = mux.DEFAULT_WINDOW, keepalive: float = 15.0, now: float = 0.0):
        self.resource = resource
        self.mux = mux.Mux(opener=False, window=window)
        self.up = False
        self.closed = False
        self.keepalive = keepalive
        self.last_rx = self.last_tx = now

    def hello(self) -> bytes:
        return wire.control(wire.HELLO, version=wire.VERSION, resource=self.resource)

    def receive(self, data: bytes, now: float) -> list:
        if self.closed:
            return []
        self.last_rx = now
        out: list = []
        try:
            events = self.mux.feed_untrusted(data)
            bad = None
        except wire.BadFrame as exc:
            events, bad = exc.frames, exc
        for ev in events:
            t = type(ev)
            if t is mux.Data:
                out.append(ChannelData(ev.ch, ev.data))
            elif t is mux.Opened:
                identity = ev.fields.get("identity")
                if not self.up:
                    return self._close(out, "protocol error: OPEN before WELCOME")
                if ev.kind not in self.KINDS or not isinstance(identity, str) or not identity:
                    out.append(SendTunnel(self.mux.close(ev.ch, f"kind {ev.kind!r} with identity {identity!r} "
                                                                 "is not served here")))
                    continue
                if ev.kind == mux.STREAM:
                    try:
                        mux.stream_fields(ev.fields)
                    except ValueError as exc:
                        out.append(SendTunnel(self.mux.close(ev.ch, str(exc)[:200], reset=True)))
                        continue
                    out.append(NewChannel(ev.ch, identity, ev.fields, mux.STREAM))  # OPENED once the app's TCP is up
                    continue
                out.append(NewChannel(ev.ch, identity, ev.fields))
                out.append(SendTunnel(self.mux.accept(ev.ch)))
            elif t is mux.Closed:
                out.append(ChannelGone(ev.ch, ev.reason, ev.reset, ev.half))
            elif t is mux.Tunnel:
                f = ev.frame
                if f.type == wire.WELCOME and not self.up:
                    self.up = True
                    out.append(Up(str(f.fields.get("resource", self.resource))))
                elif f.type == wire.KEEPALIVE:
                    pass
                elif f.type == wire.CLOSE:
                    return self._close(out, f"PoP closed: {str(f.fields.get('reason', ''))[:300]}", tell=False)
                else:
                    return self._close(out, f"protocol error: PoP sent {wire.NAMES.get(f.type)}")
            # Accepted: the gateway opens no channels
            if self.closed:
                return out
        if bad is not None:
            return self._close(out, f"protocol error: {bad}")
        return out

    def _close(self, out: list, reason: str, *, tell: bool = True) -> list:
        self.closed = True
        if tell:
            out.append(SendTunnel(wire.control(wire.CLOSE, reason=reason)))
        out.append(CloseTunnel(reason))
        return out

    def tick(self, now: float) -> list:
        if self.closed:
            return []
        if now - self.last_rx > 3 * self.keepalive:
            return self._close([], f"no word from the PoP for {3 * self.keepalive:.0f}s", tell=False)
        if now - self.last_tx >= self.keepalive:
            self.last_tx = now
            return [SendTunnel(wire.frame(wire.KEEPALIVE))]
        return []


# ---- the shell ---------------------------------------------------------------------------------
class ChannelConn:
    """What a GatewaySession's shell expects of its connection (BioTLS's send/close/queued), on a channel."""

    def __init__(self, connector: "Connector", ch: int):
        self.connector = connector
        self.ch = ch
        self.closed = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.drops = 0
        self.on_close = None

    @property
    def queued(self) -> int:
        t = self.connector.conn
        return t.queued if t is not None else 0

    @property
    def blocked(self) -> bool:
        """The session's replies must wait in its fair queue: the tunnel's socket is full, or the
        PoP has not granted this channel room for a full batch."""
        t, core = self.connector.conn, self.connector.core
        return t is None or t.blocked or core is None or not core.mux.can_send(self.ch, 64 * 1024)

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        frames = self.connector.core.mux.send(self.ch, data)
        if frames is None:
            self.drops += 1  # the PoP has not granted that much: router semantics, the burst goes
            self.connector.gw.counters["channel_credit_drops"] += 1
            return
        self.bytes_out += len(data)
        self.connector.send(frames)

    def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self.connector.send(self.connector.core.mux.close(self.ch, reason[:200]))
        self.connector.channel_gone(self.ch, reason)


class Connector:
    """One resource's tunnel to the PoP, dialled again and again until stopped."""

    def __init__(self, gw, pop_cfg, resource: str):
        self.gw = gw
        self.cfg = pop_cfg
        self.resource = resource
        self.ctx: ssl.SSLContext = client_context(pop_cfg.ca, pop_cfg.cert, pop_cfg.key)
        self.backoff = Backoff(pop_cfg.backoff_base, pop_cfg.backoff_cap)
        self.conn: BioTLS | None = None
        self.core: ConnectorCore | None = None
        self.sessions: dict[int, object] = {}  # channel -> gateway.service.Session
        self.streams: dict[int, ChannelSocket | None] = {}  # stream channel -> its socket (None: connecting)
        self.task: asyncio.Task | None = None
        self.stopping = False
        self.lost: asyncio.Event | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    async def stop(self, reason: str = "gateway stopping") -> None:
        self.stopping = True
        if self.conn is not None and not self.conn.closed:
            self.conn.send(wire.control(wire.CLOSE, reason=reason))
            self.conn.close(reason)
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self) -> None:
        while not self.stopping:
            ok = await self._dial()
            if ok:
                self.backoff.reset()
                await self.lost.wait()
            if self.stopping:
                return
            delay = self.backoff.next()
            log.info("connector %s: dialling the PoP again in %.2fs (attempt %d)", self.resource, delay,
                     self.backoff.failures)
            await asyncio.sleep(delay)

    async def _dial(self) -> bool:
        loop = asyncio.get_running_loop()
        sock = None
        self.lost = asyncio.Event()
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.wait_for(loop.sock_connect(sock, (self.cfg.address, self.cfg.port)), self.cfg.connect_timeout)
            now = time.monotonic()
            core = ConnectorCore(self.resource, window=self.cfg.window, keepalive=self.gw.cfg.keepalive, now=now)
            # OpenSSL on memory buffers, as the PoP's end (ztna/biotls.py)
            conn = BioTLS(sock, self.ctx, server_side=False, server_hostname=self.cfg.name,
                          name=f"PoP {self.cfg.address}")
            await conn.handshake(self.cfg.connect_timeout)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            if sock is not None:
                sock.close()
            log.warning("connector %s: no tunnel to the PoP %s:%d: %s", self.resource, self.cfg.address,
                        self.cfg.port, str(exc) or type(exc).__name__)
            return False
        self.core, self.conn = core, conn
        conn.on_data = self._on_data
        conn.on_close = self._on_close
        conn.on_blocked = lambda blocked: blocked or self._drain()
        conn.start_reading()
        conn.send(core.hello())
        log.info("connector %s: TLS %s with the PoP %s:%d (%s), HELLO sent", self.resource, conn.tls.version(),
                 self.cfg.address, self.cfg.port, self.cfg.name)
        return True

    def send(self, data: bytes) -> None:
        if data and self.conn is not None:
            self.conn.send(data)

    def tick(self, now: float) -> None:
        if self.core is not None and self.conn is not None and not self.conn.closed:
            self._perform(self.core.tick(now))

    def _perform(self, cmds: list) -> None:
        gw = self.gw
        for c in cmds:
            t = type(c)
            if t is ChannelData and c.ch in self.streams:
                cs = self.streams[c.ch]
                if cs is not None:
                    cs.deliver(c.data)
            elif t is ChannelGone and c.ch in self.streams:
                cs = self.streams[c.ch]
                if cs is not None:
                    cs.closed_by_peer(c.reason, reset=c.reset, half=c.half)
                elif not c.half:
                    self.streams.pop(c.ch, None)  # the PoP gave up while we were connecting
            elif t is NewChannel and c.kind == mux.STREAM:
                self.streams[c.ch] = None
                asyncio.ensure_future(self._new_stream(c, self.core))
            elif t is ChannelData:
                s = self.sessions.get(c.ch)
                if s is None:
                    continue
                s.conn.bytes_in += len(c.data)
                gw._perform(s, s.core.receive_data(c.data, time.monotonic()))
                if not s.conn.closed:
                    # Delivered to the session (the TUN has it): the PoP may send as much again.
                    self.send(self.core.mux.consumed(c.ch, len(c.data)))
            elif t is SendTunnel:
                self.send(c.data)
            elif t is NewChannel:
                self._new_session(c)
            elif t is ChannelGone:
                s = self.sessions.get(c.ch)
                if s is not None:
                    s.conn.closed = True
                    self.channel_gone(c.ch, f"PoP closed the channel: {c.reason}")
            elif t is Up:
                log.info("connector %s: the PoP says WELCOME; publishing %s", self.resource, c.resource)
            elif t is CloseTunnel:
                log.warning("connector %s: tunnel closed: %s", self.resource, c.reason)
                if self.conn is not None:
                    self.conn.close(c.reason)

    def _new_session(self, c: NewChannel) -> None:
        from .service import Session

        gw = self.gw
        sid = next(gw.ids)
        core = GatewaySession(sid, c.identity, policy=gw.policy, pool=gw.pool, agent_network=gw.agent_net,
                              now=time.monotonic(), keepalive=gw.cfg.keepalive, queue_limit=gw.cfg.queue_limit,
                              counters=gw.counters)
        s = Session(f"PoP channel {c.ch} ({self.resource})", ChannelConn(self, c.ch), core)
        self.sessions[c.ch] = s
        gw.sessions[sid] = s
        log.info("session %d: identity %s (vouched for by the PoP, its session %s) on channel %d of %s",
                 sid, c.identity, c.fields.get("session"), c.ch, self.resource)

    async def _new_stream(self, c: NewChannel, core: ConnectorCore) -> None:
        """An agentless stream: our policy, private DNS, TCP to the app, then OPENED (or CHCLOSE reset)."""
        identity, resource, host, port = mux.stream_fields(c.fields)
        gw = self.gw
        where = f"stream {c.ch} of {self.resource} for {identity} to {host}:{port}"
        ok, why = gw.policy.allows(identity, host)
        sock = None
        if ok:
            try:
                addr = socket.inet_ntoa(await gw._resolve(host))
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (addr, port)),
                                       self.cfg.connect_timeout)
            except (LookupError, OSError, asyncio.TimeoutError) as exc:
                if sock is not None:
                    sock.close()
                    sock = None
                ok, why = False, f"cannot connect: {str(exc) or type(exc).__name__}"
        else:
            why = f"refused by the gateway's policy: {why}"
        if self.core is not core or c.ch not in self.streams:  # the tunnel or the channel went meanwhile
            if sock is not None:
                sock.close()
            self.streams.pop(c.ch, None) if self.core is core else None
            return
        if not ok:
            self.streams.pop(c.ch, None)
            gw.counters["streams_refused"] += 1
            log.warning("%s: %s", where, why)
            self.send(core.mux.close(c.ch, why[:200], reset=True))
            return
        self.send(core.mux.accept(c.ch))
        cs = ChannelSocket(sock, core.mux, c.ch, self.send, on_done=self._stream_done, name=where)
        self.streams[c.ch] = cs
        gw.counters["streams"] += 1
        log.info("%s: connected to %s (%s)", where, addr, why)
        cs.start()

    def _stream_done(self, cs: ChannelSocket, reason: str) -> None:
        if self.streams.get(cs.ch) is cs:
            del self.streams[cs.ch]
        log.info("%s: ended: %s; %d bytes to the app, %d back", cs.name, reason, cs.bytes_down, cs.bytes_up)

    def channel_gone(self, ch: int, reason: str) -> None:
        s = self.sessions.pop(ch, None)
        if s is not None:
            self.gw._on_close(s, reason)

    def _on_data(self, data: bytes) -> None:
        self._perform(self.core.receive(data, time.monotonic()))
        self._drain()  # a CREDIT may have come: the sessions' queued replies may go now
        for cs in list(self.streams.values()):
            if cs is not None:
                cs.credit()

    def _drain(self) -> None:
        for s in list(self.sessions.values()):
            if s.core.backlog:
                self.gw._drain(s)

    def _on_close(self, reason: str) -> None:
        for ch in list(self.sessions):
            s = self.sessions.get(ch)
            if s is not None:
                s.conn.closed = True
            self.channel_gone(ch, f"tunnel to the PoP lost: {reason}")
        for cs in list(self.streams.values()):
            if cs is not None:
                cs.closed_by_peer(f"tunnel to the PoP lost: {reason}", reset=True, half=False)
        self.streams.clear()
        self.conn = None
        if not self.stopping:
            log.warning("connector %s: tunnel to the PoP lost: %s", self.resource, reason)
        if self.lost is not None:
            self.lost.set()


