"""The resolver's shell: UDP and TCP listeners on asyncio, forwarding, the log.

Every decision is the engine's; this module moves bytes, measures latency,
coalesces identical upstream questions, and writes the query log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import struct
import time

from pathlib import Path

from ztna.config import ConfigError, describe

from . import config as config_mod
from . import metrics, mmsg, upstream
from .config import Config
from .reload import ReloadRefused, plan
from .engine import Drop, Engine, Forward, Reply
from .querylog import QueryLog
from .tunnel import EVERYONE

log = logging.getLogger("ztna.dns")

MAX_TCP_CLIENTS = 512
UDP_BATCH = 256


class Resolver:
    """A running resolver: one engine, its listeners and its query log."""

    def __init__(self, cfg: Config, engine: Engine | None = None):
        self.cfg = cfg
        self.engine = engine or Engine(cfg)
        self.qlog = QueryLog(cfg.query_log)
        self._inflight: dict[tuple[str, int, int], list[tuple[Forward, object, float]]] = {}
        self._tcp_slots = asyncio.Semaphore(MAX_TCP_CLIENTS)
        self._tcp_open: dict[str, int] = {}  # TCP connections open per client address
        self._tcp_refused: dict[str, int] = {}  # refused since the last report, per client address
        self._reported = 0
        self._udp: list[socket.socket] = []
        self.upstream_failures = 0  # questions no upstream answered (metrics)
        self.exporter = None

    # ---- one message -------------------------------------------------------
    def _finish(self, out: Reply | Drop, t0: float) -> None:
        """Write ``out``'s query-log line with its latency (a memo hit's comes as the line so far)."""
        if type(out) is Reply and out.line is not None:  # a memo hit: the engine counted it
            self.qlog.write_line(f'{out.line},"latency_ms":{(time.perf_counter() - t0) * 1000:.3f}}}\n')
        elif out.log is not None:
            metrics.count(self.engine.counts, out.log)
            out.log["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
            self.qlog.write(out.log)

    def on_message(self, data: bytes, source: str, send, *, tcp: bool) -> None:
        """Handle one query; ``send(bytes)`` delivers the answer (now or after forwarding)."""
        t0 = time.perf_counter()
        self._dispatch(self.engine.handle(data, source, time.time(), tcp=tcp), send, t0)

    def _dispatch(self, out, send, t0: float) -> None:
        if type(out) is Reply:
            send(out.data)
            self._finish(out, t0)
        elif type(out) is Forward:
            waiters = self._inflight.get(out.key)
            if waiters is not None:
                waiters.append((out, send, t0))  # the same question is already on its way
                return
            self._inflight[out.key] = [(out, send, t0)]
            asyncio.get_running_loop().create_task(self._forward(out.key, out.question))
        else:
            self._finish(out, t0)

    def _drain_udp(self, sock: socket.socket) -> None:
        """Answer every datagram waiting on ``sock`` (up to a batch), without a wake-up per packet.

        Why not asyncio's datagram transport: it reads one datagram per
        wake-up and wraps each send; this loop is the resolver's hot path.
        """
        handle = self.engine.handle
        for _ in range(UDP_BATCH):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("udp receive: %s", exc)
                continue
            t0 = time.perf_counter()
            try:
                out = handle(data, addr[0], time.time())
                if type(out) is Reply:
                    try:
                        sock.sendto(out.data, addr)
                    except OSError as exc:  # full send buffer or unreachable client: this answer is lost
                        log.debug("udp send to %s: %s", addr[0], exc)
                    self._finish(out, t0)
                else:
                    self._dispatch(out, functools.partial(_sendto, sock, addr), t0)
            except Exception:  # a bug on one query must not stop the listener
                log.exception("query from %s failed", addr[0])

    def _drain_batched(self, bs: mmsg.BatchSocket) -> None:
        """Like ``_drain_udp``, with one ``recvmmsg`` and one ``sendmmsg`` per batch of datagrams.

        A batch shares one ``now`` (its datagrams arrived together) and one
        latency: from its arrival to the moment its answers went out, which
        bounds every query's own time in the resolver.  The engine decides
        for the whole batch in one call (``Engine.handle_batch``).
        """
        handle_batch = self.engine.handle_batch
        qlog = self.qlog
        for _ in range(max(1, UDP_BATCH // bs.batch)):
            try:
                datas, hosts = bs.receive()
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("udp receive: %s", exc)
                continue
            if not datas:
                return
            t0 = time.perf_counter()
            b = handle_batch(datas, hosts, time.time())
            which, answers, lines = b.which, b.answers, b.lines
            recs: list[dict] = []
            for i, out in b.slow:
                try:
                    if type(out) is Reply:  # decided afresh, so with a log record (memo hits are in b.lines)
                        which.append(i)
                        answers.append(out.data)
                        if out.log is not None:
                            recs.append(out.log)
                    elif type(out) is Drop:  # no address to decode: a flood stays cheap
                        if out.log is not None:
                            recs.append(out.log)
                    else:
                        self._dispatch(out, functools.partial(_sendto, bs.sock, bs.address(i)), t0)
                except Exception:  # a bug on one query must not stop the listener
                    log.exception("query from %s failed", hosts[i])
            bs.answer(which, answers)
            if bs.flush():
                log.debug("udp send: %d answers could not be sent", bs.send_errors)
            ms = (time.perf_counter() - t0) * 1000
            if lines:
                tail = f',"latency_ms":{ms:.3f}}}\n'
                qlog.write_line(tail.join(lines) + tail)
            counts = self.engine.counts
            for rec in recs:
                rec["latency_ms"] = round(ms, 3)
                metrics.count(counts, rec)
                qlog.write(rec)
            if len(datas) < bs.batch:
                return

    async def _forward(self, key, question: bytes) -> None:
        try:
            up = await upstream.resolve(self.cfg.upstreams, question, timeout=self.cfg.upstream_timeout,
                                        negative_ttl=self.cfg.negative_ttl)
        except Exception:  # never lose the waiting clients to a bug
            log.exception("forwarding %s failed", key)
            up = None
        if up is None:
            self.upstream_failures += 1
        for fwd, send, t0 in self._inflight.pop(key, []):
            out = self.engine.complete(fwd, up, time.time())
            try:
                send(out.data)
            except OSError as exc:
                log.info("could not answer %s: %s", fwd.log.get("client"), exc)
            self._finish(out, t0)

    # ---- metrics -----------------------------------------------------------------
    def metric_families(self) -> list:
        """What a scrape reads (on the exporter's thread: only reads of ints and a copied dict)."""
        eng = self.engine
        return metrics.families(eng.counts, rate_limited=eng.dropped_before + eng.limiter.total_dropped,
                                upstream_failures=self.upstream_failures, cache_entries=len(eng.cache._d))

    def start_metrics(self) -> None:
        """Serve /metrics on ``[metrics] listen`` when set (off by default)."""
        from ztna import metrics as ztna_metrics

        self.exporter = ztna_metrics.serve(self.metric_families, self.cfg.metrics_listen)

    # ---- live reload -----------------------------------------------------------
    def reload(self, path: Path) -> tuple[bool, str, list[str]]:
        """Read ``path`` again and put its policies, lists and categories in force (SIGHUP).

        (ok, message, changes); a file that does not load or a change that
        takes a restart leaves everything in force as it was."""
        try:
            new = config_mod.load(path)
            changes = plan(self.cfg, new)
        except ConfigError as exc:
            msg = f"reload refused, the running configuration stays: {describe(path, exc)}"
            log.error("%s", msg)
            return False, msg, []
        except ReloadRefused as exc:
            msg = f"reload refused, the running configuration stays: {path}: {exc}"
            log.error("%s", msg)
            return False, msg, []
        self.cfg = new
        self.engine.apply(new)
        msg = (f"reloaded {path}: {len(new.policies.policies)} policies, "
               f"{len(new.policies.categories)} categorised domains; {len(changes)} change(s)")
        log.warning("%s%s", msg, "".join(f"\n  {c}" for c in changes))
        return True, msg, changes

    # ---- listeners -----------------------------------------------------------
    async def start(self) -> list:
        loop = asyncio.get_running_loop()
        servers = []
        for addr in self.cfg.listen:
            sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
            try:
                # Room for bursts: the kernel drops what does not fit while we are busy.
                # SO_RCVBUFFORCE (33, Linux) passes net.core.rmem_max when we are root.
                sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 4 << 20)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((addr, self.cfg.port))
            sock.setblocking(False)
            if self.cfg.udp_batch and mmsg.available():
                loop.add_reader(sock.fileno(), self._drain_batched, mmsg.BatchSocket(sock))
            else:
                loop.add_reader(sock.fileno(), self._drain_udp, sock)
            self._udp.append(sock)
            servers.append(await asyncio.start_server(self._tcp, addr, self.cfg.port))
            log.info("resolver listening on %s:%d (udp, tcp), upstreams %s", addr, self.cfg.port,
                     ", ".join(f"{h}:{p}" for h, p in self.cfg.upstreams))
        self._housekeeper = loop.create_task(self._housekeeping())
        self._servers = servers
        return servers

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            for rec in self.engine.drop_reports(time.time()):
                self.qlog.write(rec)
            self.qlog.flush()
            det = self.engine.detector
            new = min(det.detected - self._reported, len(det.detections))
            for when, parent, why, client in list(det.detections)[len(det.detections) - new:]:
                who = "every client" if client is EVERYONE else f"client {client}"
                log.warning("tunnelling detected under %s (%s): classified dns-tunneling-vpn for %s for %.0f s",
                            parent, why, who, self.cfg.tunnel.hold)
            self._reported = det.detected
            if self._tcp_refused:
                refused, self._tcp_refused = self._tcp_refused, {}
                for src, n in sorted(refused.items(), key=lambda kv: -kv[1])[:10]:
                    log.warning("refused %d TCP connection(s) from %s: it holds %d (tcp_per_client = %d); "
                                "%d of %d open in all", n, src, self._tcp_open.get(src, 0), self.cfg.tcp_per_client,
                                sum(self._tcp_open.values()), MAX_TCP_CLIENTS)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        src = peer[0]
        # One client may hold only its share of the slots: idle connections from one address must not
        # shut every other client out of DNS over TCP.  Refusals are reported in bulk (housekeeping).
        if self._tcp_slots.locked() or self._tcp_open.get(src, 0) >= self.cfg.tcp_per_client:
            if len(self._tcp_refused) < 10_000:
                self._tcp_refused[src] = self._tcp_refused.get(src, 0) + 1
            writer.close()
            return
        self._tcp_open[src] = self._tcp_open.get(src, 0) + 1
        try:
            await self._tcp_session(reader, writer, peer)
        finally:
            left = self._tcp_open.pop(src) - 1
            if left:
                self._tcp_open[src] = left

    async def _tcp_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer) -> None:
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
        if self.exporter is not None:
            self.exporter.stop()
        for sock in self._udp:
            try:
                asyncio.get_running_loop().remove_reader(sock.fileno())
            except RuntimeError:
                pass
            sock.close()
        self.qlog.close()


def _sendto(sock: socket.socket, addr, data: bytes) -> None:
    sock.sendto(data, addr)

