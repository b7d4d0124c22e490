"""The running agent: TUN, DNS stub, on-demand mTLS tunnel, status socket.

One asyncio loop, one thread for the data path.  Every decision (which packet
goes into the tunnel, waits or is refused, when to build the tunnel, what the
gateway's frames mean, when a lease is released) is the session core's,
agent/session.py; this shell reads the TUN a burst at a time, reads the
tunnel, answers DNS, ticks the clock, and performs the commands it returns.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import socket
import ssl
import time
from collections import Counter
from pathlib import Path

from cryptography import x509

from ztna import dnsclient, dnswire, pki, resolvectl
from ztna.loglimit import suffix
from ztna.resolved import RESOLVED, ResolvedError, routing_domains
from ztna.tlsconn import FramedTLS, client_context, tune_tunnel_socket
from ztna.tun import Tun, read_batch, write_packets
from ztna.udppath import AgentPath, SendDatagram, SendDatagrams
from ztna.udpsock import BatchSocket

from . import takeover
from .config import AgentConfig
from .leases import LeasePool
from .session import AgentSession, Close, Connect, Log, Send, WriteTun

log = logging.getLogger("ztna.agent")



class Agent:
    """One agent process."""

    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        self.pool = LeasePool(cfg.network, [cfg.address, cfg.dns_stub], idle_timeout=cfg.idle_timeout,
                              grace=max(30.0, 3.0 * cfg.dns_ttl), max_leases=cfg.max_leases,
                              max_per_wildcard=cfg.max_leases_per_wildcard)
        self.core = AgentSession(self.pool, cfg.patterns, address=cfg.address, keepalive=cfg.keepalive,
                                 dns_ttl=cfg.dns_ttl, now=time.monotonic(),
                                 path=AgentPath() if cfg.udp else None, udp_mtu=cfg.udp_mtu)
        self.udp_sock: BatchSocket | None = None
        # Bad input is logged once per source per interval, with a count of the lines held back.
        self.bad_log = self.core.bad_log
        self.identity = pki.identity_of(x509.load_pem_x509_certificate(Path(cfg.cert).read_bytes()))
        self.ctx = client_context(cfg.ca, cfg.cert, cfg.key)
        self.counters: Counter = self.core.counters
        self.state_dir = Path(cfg.state_dir)
        self.state_path = self.state_dir / "dns-takeover.json"
        self.control_path = self.state_dir / "control.sock"
        self.upstreams: list[str] = []
        self.dns_backend = ""
        self.tun: Tun | None = None
        self.tunnel: FramedTLS | None = None
        self.gateway_ip: str | None = None
        self.reading_tun = False
        self.udp_scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle -------------------------------------------------------
    def _full_tunnel(self, stop: asyncio.Event):
        """``[internet] mode = "full"``: the internet through the PoP, as a one-address site of this identity
        (backhaul/site.py in this process; the PoP's [mobile] table names its address)."""
        inet = self.cfg.internet
        if inet is None:
            return None
        from backhaul.config import SiteConfig
        from backhaul.site import Site

        site = Site(SiteConfig(name=f"user:{self.identity}", pop=inet.pop, pop_name=inet.pop_name, cert=self.cfg.cert,
                               key=self.cfg.key, ca=self.cfg.ca, lan=[f"{inet.address}/32"], tun=inet.tun,
                               tun_address=f"{inet.address}/32", port=inet.port, keepalive=self.cfg.keepalive))
        log.info("full tunnel: the internet through the PoP %s (%s) from %s on %s; private apps stay on %s",
                 inet.pop, inet.pop_name, inet.address, inet.tun, self.cfg.tun)

        async def run() -> None:
            try:
                await site.run(stop)
            except Exception as exc:  # the private apps keep working without it; say why
                log.error("full tunnel stopped: %s", exc)

        return asyncio.ensure_future(run())

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, stop.set)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        msg = takeover.recover_stale(self.state_path)
        if msg:
            log.warning("a previous agent did not stop cleanly: %s", msg)
        try:
            choice, dns_output = resolvectl.choose(self.cfg.dns_backend, self.cfg.resolv_conf, self.cfg.resolvectl)
        except ResolvedError as exc:
            raise takeover.TakeoverError(str(exc)) from exc
        log.info("DNS backend %s: %s", choice.backend, choice.reason)
        self.dns_backend = choice.backend
        guardian_fd = None
        servers = []
        try:
            net_len = int(self.cfg.network.split("/")[1])
            # pyroute2's synchronous API will not run inside a running event loop.
            self.tun = await self.loop.run_in_executor(
                None, lambda: Tun(self.cfg.tun, [f"{self.cfg.address}/{net_len}", f"{self.cfg.dns_stub}/32"]))
            log.info("TUN %s up: %s/%d, DNS stub %s, offloads %s", self.tun.name, self.cfg.address, net_len,
                     self.cfg.dns_stub, "on" if self.tun.offload else "off")
            servers = await self._start_dns()
            if self.cfg.udp:
                self.udp_sock = BatchSocket(("0.0.0.0", 0), self.counters, log, buffers=4 << 20)
                self.loop.add_reader(self.udp_sock.fileno(), self._on_udp)
            resolv = Path(self.cfg.resolv_conf)
            # The guardian first: from the moment the file is taken over, a kill -9 must find it there.
            guardian_fd = takeover.start_guardian(self.state_path)
            if choice.backend == RESOLVED:
                domains = routing_domains(self.cfg.apps)
                self.upstreams = await self.loop.run_in_executor(None, lambda: takeover.take_over_link(
                    self.cfg.resolvectl, self.tun.name, self.cfg.dns_stub, domains, dns_output, self.state_path,
                    os.getpid()))
                log.info("DNS set on %s in systemd-resolved: stub %s for %s, not the default route; "
                         "nothing global changed; other names go to %s", self.tun.name, self.cfg.dns_stub,
                         " ".join(domains), ", ".join(self.upstreams))
            else:
                self.upstreams = takeover.take_over(resolv, self.cfg.dns_stub, self.state_path, os.getpid())
                log.info("DNS taken over in %s: stub %s; other names go to %s", resolv, self.cfg.dns_stub,
                         ", ".join(self.upstreams))
            servers.append(await asyncio.start_unix_server(self._control, path=str(self.control_path)))
            os.chmod(self.control_path, 0o600)
            self._resume_tun()
            ticker = asyncio.create_task(self._tick())
            from ztna import metrics

            self.exporter = metrics.serve(self.metric_families, self.cfg.metrics_listen)
            log.info("agent %s ready; gateway %s:%d (found through public DNS on first use)",
                     self.identity, self.cfg.gateway, self.cfg.gateway_port)
            internet = self._full_tunnel(stop)
            await stop.wait()
            ticker.cancel()
            if internet is not None:
                await internet  # the site tunnel's own teardown: its TUN, the pinned route
            log.info("stopping")
        finally:
            self._perform(self.core.stop(time.monotonic()))
            for s in servers:
                s.close()
            try:
                log.info("%s", takeover.restore(self.state_path))
            except takeover.TakeoverError as exc:
                log.error("%s", exc)
            if guardian_fd is not None:
                os.close(guardian_fd)
            if self.control_path.exists():
                self.control_path.unlink()
            if getattr(self, "exporter", None) is not None:
                self.exporter.stop()
            if self.udp_sock is not None:
                self.loop.remove_reader(self.udp_sock.fileno())
                self.udp_sock.close()
            if self.tun is not None:
                if self.reading_tun:
                    self.loop.remove_reader(self.tun.fd)
                self.tun.close()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._perform(self.core.tick(time.monotonic()))

    # ---- performing the core's commands ------------------------------------
    def _perform(self, cmds: list) -> None:
        for c in cmds:
            t = type(c)
            if t is Send:
                if self.tunnel is not None:
                    self.tunnel.send(c.data)
            elif t is WriteTun:
                self.counters["tun_tx_packets"] += write_packets(self.tun.fd, c.packets, self.counters, log)
            elif t is Log:
                log.log(c.level, "%s", c.message)
            elif t is Connect:
                asyncio.ensure_future(self._connect())
            elif t is SendDatagrams:
                self._udp_send(c.datagrams)
            elif t is SendDatagram:
                self._udp_send([c.data])
            elif t is Close:
                if self.tunnel is not None:
                    self.tunnel.close(c.reason)
            else:
                raise TypeError(f"unknown session command {c!r}")

    # ---- the UDP data channel (only with udp = true) ---------------------------
    def _udp_send(self, datagrams: list) -> None:
        path = self.core.path
        if self.udp_sock is None or self.gateway_ip is None or path is None or path.port is None:
            return
        self.udp_sock.send(datagrams, (self.gateway_ip, path.port))

    def _on_udp(self) -> None:
        # GRO buffers come split; non-blocking reads until EAGAIN, bounded per wake-up.
        items = self.udp_sock.receive()
        if items:
            self._perform(self.core.datagrams(items, time.monotonic()))

    # ---- the TUN side (hot path) ----------------------------------------
    def _resume_tun(self) -> None:
        if not self.reading_tun and self.tun is not None:
            self.loop.add_reader(self.tun.fd, self._on_tun)
            self.reading_tun = True

    def _on_blocked(self, blocked: bool) -> None:
        # While the tunnel cannot take more, the TUN is still read: its packets wait in the
        # session's fair queue, whose CoDel tells the senders' TCP to slow down (agent/session.py).
        self._perform(self.core.tunnel_blocked(blocked, time.monotonic()))
        if not blocked:
            self._drain()

    def _drain(self) -> None:
        conn = self.tunnel
        while conn is not None and self.core.backlog and not conn.blocked and not conn.closed:
            cmds = self.core.tunnel_writable(time.monotonic())
            if not cmds:
                return
            self._perform(cmds)

    def _on_tun(self) -> None:
        bufs = read_batch(self.tun.fd)
        if bufs:
            self._perform(self.core.tun_packets(bufs, time.monotonic()))
            self._drain()
            self._udp_later()

    def _udp_later(self) -> None:
        # What waits for the UDP path goes a turn per loop pass, between TUN reads: a packet that
        # arrives meanwhile enters the fair queue at once instead of waiting in the TUN behind a bulk flow.
        if self.core.udp_backlog and not self.udp_scheduled:
            self.udp_scheduled = True
            self.loop.call_soon(self._udp_turn)

    def _udp_turn(self) -> None:
        self.udp_scheduled = False
        self._perform(self.core.udp_writable(time.monotonic()))
        self._drain()
        self._udp_later()

    # ---- the tunnel ------------------------------------------------------
    def _resolve_gateway(self) -> list[str]:
        """Every A record of the gateway's name, from the first upstream that has any."""
        last: Exception | None = None
        for server in self.upstreams:
            try:
                rec = dnswire.ask(server, self.cfg.gateway, "A", timeout=2.0, tries=1)
                addrs = dnswire.addresses(rec, "A")
                if addrs:
                    return addrs
                last = LookupError(f"{server} answered {dnswire.rcode_name(rec)} with no address")
            except (OSError, TimeoutError, dnswire.BadMessage) as exc:
                last = exc
        raise LookupError(f"cannot find gateway {self.cfg.gateway} through public DNS ({', '.join(self.upstreams)}): {last}")

    async def _connect(self) -> None:
        """Every address of the gateway in turn (the one that served last first), until one takes us."""
        try:
            addrs = await self.loop.run_in_executor(None, self._resolve_gateway)
        except LookupError as exc:
            addrs, errors = [], [str(exc)]
        else:
            errors = []
            log.info("gateway %s is %s (public DNS)", self.cfg.gateway, ", ".join(addrs))
            if self.gateway_ip in addrs:
                addrs.remove(self.gateway_ip)
                addrs.insert(0, self.gateway_ip)
        for ip in addrs:
            got = await self._connect_to(ip)
            if isinstance(got, str):
                errors.append(f"{ip}: {got}")
                log.warning("gateway %s at %s: %s%s", self.cfg.gateway, ip, got,
                            "; trying the next address" if ip != addrs[-1] else "")
                continue
            conn, ssock = got
            self.gateway_ip = ip
            if self.core.path is not None:
                # The gateway's side of the data channel's key binding: its certificate, as TLS verified it.
                self.core.path.gateway_identity = hashlib.sha256(ssock.getpeercert(binary_form=True)).hexdigest()
            self.tunnel = conn
            conn.start_reading()
            log.info("TLS %s with %s:%d (%s), certificate %s presented", ssock.version(), ip,
                     self.cfg.gateway_port, ssock.cipher()[0], self.identity)
            self._perform(self.core.tunnel_up(time.monotonic()))
            return
        reason = "; ".join(errors) or "no address"
        log.warning("tunnel to %s not built: %s", self.cfg.gateway, reason)
        self._perform(self.core.tunnel_failed(reason, time.monotonic()))

    async def _connect_to(self, ip: str):
        """(FramedTLS, SSLSocket) with the gateway at ``ip``, or the reason it failed."""
        sock = None
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            tune_tunnel_socket(sock)
            await asyncio.wait_for(self.loop.sock_connect(sock, (ip, self.cfg.gateway_port)),
                                   self.cfg.connect_timeout)
            ssock = self.ctx.wrap_socket(sock, server_hostname=self.cfg.gateway, do_handshake_on_connect=False)
            sock = ssock
            conn = FramedTLS(ssock, name=f"gateway {ip}",
                             on_data=lambda data: self._perform(self.core.receive_data(data, time.monotonic())),
                             on_close=self._on_tunnel_close, on_blocked=self._on_blocked)
            await conn.handshake(self.cfg.connect_timeout)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            if sock is not None:
                sock.close()
            return str(exc) or type(exc).__name__
        return conn, ssock

    def _on_tunnel_close(self, reason: str) -> None:
        if self.tunnel is not None:
            self.counters["closed_bytes_in"] += self.tunnel.bytes_in
            self.counters["closed_bytes_out"] += self.tunnel.bytes_out
        self.tunnel = None
        self._resume_tun()
        self._perform(self.core.tunnel_closed(reason, time.monotonic()))

    # ---- DNS stub ----------------------------------------------------------
    async def _start_dns(self) -> list:
        agent = self

        class UDP(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                reply = agent._dns_answer(data, "udp", addr[0])
                if reply is None:
                    agent.counters["dns_forwarded"] += 1
                    asyncio.ensure_future(agent._forward_udp(data, addr, self.transport))
                elif reply:
                    self.transport.sendto(reply, addr)

        transport, _ = await self.loop.create_datagram_endpoint(UDP, local_addr=(self.cfg.dns_stub, 53))
        tcp = await asyncio.start_server(self._dns_tcp, self.cfg.dns_stub, 53)
        return [transport, tcp]

    def _dns_answer(self, data: bytes, proto: str, source: str) -> bytes | None:
        """Bytes to answer now, b'' to drop, None to forward."""
        self.counters["dns_queries"] += 1
        try:
            q = dnswire.parse_untrusted(data)
        except dnswire.BadMessage as exc:
            return self._malformed(data, proto, source, str(exc))
        d, cmds = self.core.dns_query(q, time.monotonic())
        self._perform(cmds)
        if d.forward:
            return None
        if d.reply is None:
            return b""
        if d.malformed:
            return self._malformed(data, proto, source, d.why)
        try:
            reply = d.reply.pack()
        except Exception as exc:  # dnslib raises assorted types on names it read but cannot write
            return self._malformed(data, proto, source, f"cannot answer it: {type(exc).__name__}")
        if d.lease is not None:
            self.counters["dns_leased"] += 1
            log.info("DNS %s %s -> %s (%s)", dnswire.qname_of(q), "A", d.lease.addr_text, proto)
        return reply

    def _malformed(self, data: bytes, proto: str, source: str, why: str) -> bytes:
        """FORMERR for a bad query (nothing when it is shorter than a header), logged at a bounded rate."""
        self.counters["dns_malformed"] += 1
        quiet = self.bad_log.allow(("dns", source), time.monotonic())
        if quiet is not None:
            # The reason quotes the hostile name; a line stays short whatever came in.
            log.info("malformed DNS query from %s over %s (%d bytes) answered FORMERR/dropped: %.160s%s",
                     source, proto, len(data), why, suffix(quiet))
        return dnswire.formerr_for(data) or b""

    async def _forward_udp(self, data: bytes, addr, transport) -> None:
        for server in self.upstreams:
            try:
                reply = await dnsclient.query_udp(server, data, timeout=2.0)
            except dnsclient.UpstreamError as exc:
                log.info("upstream %s did not answer: %s", server, exc)
                continue
            transport.sendto(reply, addr)
            return
        self.counters["dns_upstream_failed"] += 1

    async def _dns_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)

        async def answer(data: bytes) -> bytes | None:
            reply = self._dns_answer(data, "tcp", peer[0])
            return await self._forward_tcp(data) if reply is None else reply

        await dnswire.serve_tcp_client(reader, writer, answer, log=log)

    async def _forward_tcp(self, data: bytes) -> bytes:
        for server in self.upstreams:
            try:
                return await dnsclient.query_tcp(server, data, timeout=2.0)
            except dnsclient.UpstreamError as exc:
                log.info("upstream %s (tcp) did not answer: %s", server, exc)
        self.counters["dns_upstream_failed"] += 1
        return b""

    # ---- metrics (off unless [metrics] listen) ------------------------------------
    def metric_families(self) -> list:
        """A scrape (on the exporter's thread): a snapshot of the counts the core keeps anyway."""
        from .metrics import Snapshot, families

        c, t = dict(self.counters), self.tunnel
        return families(Snapshot(c, tunnel_up=self.core.state == "up", leases=len(self.pool.by_addr),
                                 bytes_in=c.get("closed_bytes_in", 0) + (t.bytes_in if t else 0),
                                 bytes_out=c.get("closed_bytes_out", 0) + (t.bytes_out if t else 0)))

    # ---- status ------------------------------------------------------------
    def status(self) -> dict:
        now = time.monotonic()
        t = self.tunnel
        return {
            "identity": self.identity,
            "tun": self.cfg.tun,
            "dns": {"stub": self.cfg.dns_stub, "upstreams": self.upstreams, "resolv_conf": self.cfg.resolv_conf,
                    "backend": self.dns_backend},
            "tunnel": {
                # The core keeps monotonic time; the status shows wall-clock time.
                "state": self.core.state, "since": time.time() - (now - self.core.changed),
                "gateway": self.cfg.gateway, "gateway_ip": self.gateway_ip, "last_error": self.core.last_error,
                "bytes_in": t.bytes_in if t else 0, "bytes_out": t.bytes_out if t else 0,
                # The UDP data channel's path (docs/datachannel.md): "off" when not configured.
                "udp": {"state": self.core.path.state if self.core.path else "off",
                        "port": self.core.path.port if self.core.path else None,
                        "switches": [[time.time() - (now - at), st] for at, st in self.core.path.switches[-10:]]
                        if self.core.path else []},
            },
            "leases": [
                {"fqdn": l.fqdn, "addr": l.addr_text, "state": l.state, "flows": len(l.flows),
                 "idle_s": round(now - l.last_used, 1)}
                for l in sorted(self.pool.by_name.values(), key=lambda l: l.addr)
            ],
            "counters": dict(sorted(self.counters.items())),
        }

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readline(), 2)
            writer.write(json.dumps(self.status()).encode() + b"\n")
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


def query_status(state_dir: Path, timeout: float = 2.0) -> dict:
    """Ask a running agent for its status over its control socket."""
    path = Path(state_dir) / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ConnectionError(f"no agent is running (nothing answers on {path})") from exc
        s.sendall(b"status\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)
