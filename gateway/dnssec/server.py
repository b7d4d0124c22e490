"""The resolver's shell: UDP and TCP listeners on asyncio, forwarding, the log.

Every decision is the engine's; this module moves bytes, measures latency,
coalesces identical upstream questions, and writes the query log.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time

from . import upstream
from .config import Config
from .engine import Drop, Engine, Forward, Reply
from .querylog import QueryLog

log = logging.getLogger("ztna.dns")

MAX_TCP_CLIENTS = 512


class Resolver:
    """A running resolver: one engine, its listeners and its query log."""

    def __init__(self, cfg: Config, engine: Engine | None = None):
        self.cfg = cfg
        self.engine = engine or Engine(cfg)
        self.qlog = QueryLog(cfg.query_log)
        self._inflight: dict[tuple[str, int, int], list[tuple[Forward, object, float]]] = {}
        self._tcp_slots = asyncio.Semaphore(MAX_TCP_CLIENTS)
        self._reported = 0

    # ---- one message -------------------------------------------------------
    def _finish(self, rec: dict | None, t0: float) -> None:
        if rec is not None:
            rec["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
            self.qlog.write(rec)

    def on_message(self, data: bytes, source: str, send, *, tcp: bool) -> None:
        """Handle one query; ``send(bytes)`` delivers the answer (now or after forwarding)."""
        t0 = time.perf_counter()
        out = self.engine.handle(data, source, time.time(), tcp=tcp)
        if type(out) is Reply:
            send(out.data)
            self._finish(out.log, t0)
        elif type(out) is Forward:
            waiters = self._inflight.get(out.key)
            if waiters is not None:
                waiters.append((out, send, t0))  # the same question is already on its way
                return
            self._inflight[out.key] = [(out, send, t0)]
            asyncio.get_running_loop().create_task(self._forward(out.key, out.question))
        else:
            self._finish(out.log, t0)

    async def _forward(self, key, question: bytes) -> None:
        try:
            up = await upstream.resolve(self.cfg.upstreams, question, timeout=self.cfg.upstream_timeout,
                                        negative_ttl=self.cfg.negative_ttl)
        except Exception:  # never lose the waiting clients to a bug
            log.exception("forwarding %s failed", key)
            up = None
        for fwd, send, t0 in self._inflight.pop(key, []):
            out = self.engine.complete(fwd, up, time.time())
            try:
                send(out.data)
            except OSError as exc:
                log.info("could not answer %s: %s", fwd.log.get("client"), exc)
            self._finish(out.log, t0)

    # ---- listeners -----------------------------------------------------------
    async def start(self) -> list:
        loop = asyncio.get_running_loop()
        servers = []
        for addr in self.cfg.listen:
            transport, _ = await loop.create_datagram_endpoint(lambda: _UDP(self), local_addr=(addr, self.cfg.port))
            servers.append(transport)
            servers.append(await asyncio.start_server(self._tcp, addr, self.cfg.port))
            log.info("resolver listening on %s:%d (udp, tcp), upstreams %s", addr, self.cfg.port,
                     ", ".join(f"{h}:{p}" for h, p in self.cfg.upstreams))
        loop.create_task(self._housekeeping())
        return servers

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            for rec in self.engine.drop_reports(time.time()):
                self.qlog.write(rec)
            self.qlog.flush()
            det = self.engine.detector.detections
            for when, parent, why in det[self._reported:]:
                log.warning("tunnelling detected under %s (%s): classified dns-tunneling-vpn for %.0f s",
                            parent, why, self.cfg.tunnel.hold)
            self._reported = len(det)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        if self._tcp_slots.locked():
            log.warning("refused a TCP connection from %s: %d connections open", peer[0], MAX_TCP_CLIENTS)
            writer.close()
            return
        async with self._tcp_slots:

            def send(data: bytes) -> None:
                if not writer.is_closing():
                    writer.write(struct.pack("!H", len(data)) + data)

            try:
                while True:
                    hdr = await asyncio.wait_for(reader.readexactly(2), self.cfg.tcp_idle)
                    (ln,) = struct.unpack("!H", hdr)
                    data = await asyncio.wait_for(reader.readexactly(ln), self.cfg.tcp_idle)
                    self.on_message(data, peer[0], send, tcp=True)
                    await writer.drain()
            except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                pass
            finally:
                # Let forwarded answers for this connection go out before closing.
                for _ in range(int(self.cfg.upstream_timeout * len(self.cfg.upstreams) * 10) + 1):
                    if not any(s is send for waiters in self._inflight.values() for _, s, _ in waiters):
                        break
                    await asyncio.sleep(0.1)
                writer.close()

    def close(self) -> None:
        self.qlog.close()


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, r: Resolver):
        self.r = r

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        try:
            self.r.on_message(data, addr[0], lambda out: self.transport.sendto(out, addr), tcp=False)
        except Exception:  # a bug on one query must not stop the listener
            log.exception("query from %s failed", addr[0])

    def error_received(self, exc):
        log.debug("udp error: %s", exc)


async def serve(cfg: Config, *, extra=None) -> None:
    """Run the resolver (and ``extra`` coroutines, e.g. the block page) until cancelled."""
    r = Resolver(cfg)
    await r.start()
    if extra is not None:
        await extra(r.engine)
    try:
        await asyncio.Event().wait()
    finally:
        r.close()
