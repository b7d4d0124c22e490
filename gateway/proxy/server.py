"""The proxy's service: the listener, the connections, the log, and the process.

One asyncio loop (:func:`~.reactor.new_loop`) accepts connections and runs
each one's :class:`~.machine.Flow` through a :class:`~.conn.Conn`.  The
concepts live one per module: ``reactor`` (the loop's epoll with raw
readiness callbacks and deadlines), ``splice`` (pipes and spliced tunnels),
``decrypt`` (TLS sides, leaves, the decrypted relay), ``conn`` (one
connection's shell).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import json
import logging
import signal
import socket
import sys
import time
from pathlib import Path

from ztna import runstate
from ztna.config import ConfigError, describe

from . import config as config_mod
from . import machine, metrics, nft
from . import reload as reload_mod
from .config import Config
from .conn import Conn, ts
from .decrypt import Decryptor
from .reactor import IN, SpliceReactor, new_loop
from .resolve import DnsCache

log = logging.getLogger("ztna.proxy")

LOG_DELAY = 0.05  # seconds a finished connection's log line may wait to share a write with others


def _line_encoder():
    """``record -> compact JSON text``, as ``json.dumps(record, separators=(",", ":"))``.

    ``JSONEncoder.encode`` builds its C encoder (and a closure) again on every call;
    here it is built once.  No circular-reference check: log records are flat."""
    from json import encoder as je

    plain = json.JSONEncoder(separators=(",", ":"))
    if je.c_make_encoder is None:  # an interpreter without the C accelerator
        return plain.encode
    enc = je.c_make_encoder(None, plain.default, je.encode_basestring_ascii, None, ":", ",", False, False, True)
    return lambda record: "".join(enc(record, 0))


_json_line = _line_encoder()


def local_addresses() -> list[str]:
    """Every address of the namespace the proxy runs in (it refuses to connect to itself)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()]


class Proxy:
    """The running proxy: configuration, caches, listener and connection handling."""

    def __init__(self, cfg: Config, *, own_addresses: list[str] | None = None):
        self.cfg = cfg
        own = own_addresses if own_addresses is not None else local_addresses()
        self.own = own
        self.policy = cfg.policy(own_addresses=own)
        self.dns = DnsCache()
        # Only blocking DNS look-ups run here; splicing runs on the loop.
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="resolve")
        self.conns: set[Conn] = set()  # every open client connection: max_connections, the stop, SIGUSR1
        self.reactor: SpliceReactor | None = None  # made by serve(), on its loop
        self.decryptor = Decryptor(cfg) if self.policy.decrypt else None
        self.logf = sys.stdout if cfg.log == "-" else open(cfg.log, "a", buffering=1)
        self._log_lines: list[str] = []
        self._log_timer: asyncio.TimerHandle | None = None
        self.counts = metrics.Counts()  # Conn.finish adds each connection's record
        self.exporter = None

    # ---- logging ------------------------------------------------------------------
    def write_log(self, record: dict) -> None:
        """Queue one JSON line; lines go out together within LOG_DELAY (one write instead of one per connection)."""
        self._log_lines.append(_json_line(record))
        if self._log_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush_log()
                return
            self._log_timer = loop.call_later(LOG_DELAY, self.flush_log)

    def flush_log(self) -> None:
        if self._log_timer is not None:
            self._log_timer.cancel()
            self._log_timer = None
        if self._log_lines:
            lines, self._log_lines = self._log_lines, []
            self.logf.write("\n".join(lines) + "\n")
            self.logf.flush()

    # ---- accept loop ----------------------------------------------------------------
    async def serve(self, stop: asyncio.Event, ready=None) -> None:
        loop = asyncio.get_running_loop()
        self.reactor = SpliceReactor(loop)  # every connection's head waits, connects and splices
        self.reactor.busy = self.cfg.busy_poll_us / 1e6  # spin only on the proxy's own loop (new_loop)
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit these (two setsockopt calls fewer per connection): no Nagle
        # delay for the proxy's answers, and keepalive, which spliced tunnels rely on (probes
        # start after two idle hours, so for other connections it changes nothing).
        lsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        lsock.bind(self.cfg.listen)
        lsock.listen(1024)
        lsock.setblocking(False)
        log.info("%s proxy listening on %s:%d", self.cfg.mode, *self.cfg.listen)
        # Everything loaded so far (modules, caches, contexts) lives as long as the proxy: keep it
        # out of the collector's full passes, which otherwise walk it again and again.
        gc.freeze()
        if ready:
            ready()
        lfd = lsock.fileno()
        listening = True
        reactor = self.reactor

        def resume() -> None:
            if listening:
                reactor.watch(lfd, IN, on_acceptable)

        def on_acceptable(_events: int) -> None:
            # Accept from a readiness callback, as many as are queued (bounded so a burst
            # cannot starve the connections already running).
            for _ in range(64):
                try:
                    # socket.accept() less its two enum conversions (family and type, every call).
                    fd, addr = lsock._accept()
                    csock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # EMFILE and the like: pause, then try again
                    log.warning("accept failed: %s", exc)
                    reactor.unwatch(lfd)
                    loop.call_later(0.05, resume)
                    return
                if len(self.conns) >= self.cfg.max_connections:
                    rec = {"ts": ts(), "mode": self.cfg.mode, "client": f"{addr[0]}:{addr[1]}",
                           "decision": "error", "reason": f"over max_connections ({self.cfg.max_connections})"}
                    self.counts.add(rec)
                    self.write_log(rec)
                    csock.close()
                    continue
                Conn(self, csock, addr).start()

        reactor.watch(lfd, IN, on_acceptable)  # accepted straight from the epoll events, like the splices
        try:
            await stop.wait()
        finally:
            listening = False
            reactor.unwatch(lfd)
            lsock.close()
            for conn in list(self.conns):
                conn.abort()
            if self.conns:  # connections in their decryption part end as their tasks unwind
                await asyncio.gather(*(c.task for c in self.conns if c.task), return_exceptions=True)
            self.flush_log()

    # ---- metrics ------------------------------------------------------------------------
    def metric_families(self) -> list:
        """What a scrape reads (the exporter's thread); the QUIC count is read from nft then."""
        quic = None
        if self.cfg.mode == machine.TRANSPARENT:
            try:
                quic = nft.counter(self.cfg.transparent.nft_table)[0]
            except nft.NftError:
                pass
        return self.counts.families(open_connections=len(self.conns), quic_packets=quic)

    def start_metrics(self) -> None:
        """Serve /metrics on ``[metrics] listen`` when set (off by default)."""
        from ztna import metrics as ztna_metrics

        self.exporter = ztna_metrics.serve(self.metric_families, self.cfg.metrics_listen)

    # ---- live reload ------------------------------------------------------------------
    def reload(self, path: Path) -> tuple[bool, str, list[str]]:
        """Read ``path`` again and put it in force (SIGHUP); (ok, message, changes).

        A file that does not load, or a change that needs a restart, leaves the
        running configuration exactly as it was."""
        try:
            new = config_mod.load(path)
            p = reload_mod.plan(self.cfg, new, own_addresses=self.own, decrypting=self.decryptor is not None)
        except ConfigError as exc:
            msg = f"reload refused, the running configuration stays: {describe(path, exc)}"
            log.error("%s", msg)
            return False, msg, []
        except reload_mod.ReloadRefused as exc:
            msg = f"reload refused, the running configuration stays: {path}: {exc}"
            log.error("%s", msg)
            return False, msg, []
        self.cfg, self.policy = p.config, p.policy
        if self.reactor is not None:
            self.reactor.busy = p.config.busy_poll_us / 1e6
        conns = [c for c in self.conns if not c.done]
        for c in conns:  # from now on every open connection's next decision is the new policy's
            c.flow.policy = p.policy
        ends = reload_mod.to_end(p.policy, [
            reload_mod.Open(c.flow.client[0], c.flow.name, c.flow.port, c.flow.kind) for c in conns])
        for i, why in ends:
            conns[i].abort(why)
        msg = (f"reloaded {path}: {len(p.changes)} change(s), {len(ends)} open connection(s) ended, "
               f"{len(conns) - len(ends)} kept")
        log.info("%s%s", msg, "".join(f"\n  {c}" for c in p.changes))
        self.write_log({"ts": ts(), "event": "reload", "config": str(path), "changes": list(p.changes),
                        "ended": len(ends), "kept": len(conns) - len(ends)})
        return True, msg, list(p.changes)

    def close(self) -> None:
        if self.exporter is not None:
            self.exporter.stop()
        self.flush_log()  # connections cancelled at exit logged after serve returned
        if self.reactor is not None:
            self.reactor.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.decryptor is not None:
            self.decryptor.close()


def _dump_state(proxy: "Proxy") -> None:
    """SIGUSR1, for people: what each open connection is waiting for, then every task's stack."""
    for conn in list(proxy.conns):
        print(f"connection {conn.flow.record['client']} -> {conn.flow.name}: {conn.flow.state}, "
              f"{'task' if conn.task else 'callbacks'}, {time.monotonic() - conn.t0:.1f}s", file=sys.stderr)
    for t in asyncio.all_tasks():
        t.print_stack(limit=6, file=sys.stderr)
    sys.stderr.flush()


def run(cfg: Config, *, config_path: Path | None = None, run_dir: Path | None = None) -> None:
    """Run until SIGTERM/SIGINT; in transparent mode the nft table exists exactly as long as the proxy.

    SIGHUP reloads ``config_path`` (``Proxy.reload``); with ``run_dir`` the pid
    and state files (``ztna.runstate``) are written there for ``ztna proxy reload``."""
    proxy = Proxy(cfg)
    state = runstate.RunState(run_dir, "proxy", config=config_path) if run_dir else None
    table = None
    if cfg.mode == machine.TRANSPARENT:
        table = cfg.transparent.nft_table
        nets = [str(n) for n in proxy.policy.client_networks]
        nft.install(table, nft.ruleset(table, client_networks=nets, ports=list(cfg.transparent.ports),
                                       listen_port=cfg.listen[1], quic=cfg.transparent.quic))
        log.info("transparent: nft table ip %s redirects TCP %s from %s; UDP to those ports (QUIC): %s",
                 table, cfg.transparent.ports, ", ".join(nets), cfg.transparent.quic)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, _dump_state, proxy)  # for people: where is each connection waiting?

        def on_hup() -> None:
            if config_path is None:
                log.error("SIGHUP: no configuration file to reload")
                return
            ok, msg, changes = proxy.reload(config_path)
            if state is not None:
                state.reloaded(ok=ok, message=msg, changes=changes, now=time.time())

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        proxy.start_metrics()
        await proxy.serve(stop, ready=state.write if state else None)

    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(main())
    finally:
        if table:
            try:
                packets, nbytes = nft.counter(table)
                proxy.write_log({"ts": ts(), "event": "stop", "quic": cfg.transparent.quic, "quic_packets": packets,
                                 "quic_bytes": nbytes})
                log.info("transparent: %d QUIC (UDP %s) datagram(s) %s", packets, cfg.transparent.ports,
                         "rejected" if cfg.transparent.quic == nft.REJECT else "let through")
            except nft.NftError as exc:
                log.warning("transparent: QUIC counter unreadable: %s", exc)
            nft.remove(table)
            log.info("transparent: nft table ip %s removed", table)
        if state is not None:
            state.remove()
        proxy.close()
