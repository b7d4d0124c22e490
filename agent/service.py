"""The running agent: TUN, DNS stub, on-demand mTLS tunnel, status socket.

One asyncio loop, one thread for the data path.  A packet read from the TUN
goes to a leased address; if the lease is allowed and the tunnel is up it
leaves at once (batched with the other packets of the same read burst), else it
waits in a short per-lease queue while the tunnel is built and the lease
announced.  A packet to an address that is not leased, or whose lease the
gateway denied, is refused at once (TCP RST, ICMP unreachable).
"""

from __future__ import annotations

import asyncio
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

from ztna import dnsclient, dnswire, pki, wire
from ztna.loglimit import LogLimiter, suffix
from ztna.ippacket import NO_VNET, TCP_RST, TCP_SYN, BadPacket, ip4_text, parse_untrusted, refusal_for, icmp_unreachable_for
from ztna.tlsconn import FramedTLS, client_context
from ztna.tun import Tun

from . import takeover
from .config import AgentConfig
from .dnsdecide import decide
from .leases import Lease, LeasePool

log = logging.getLogger("ztna.agent")

PENDING_MAX = 64
TUN_READ = 65536 + 128


class Agent:
    """One agent process."""

    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        self.pool = LeasePool(cfg.network, [cfg.address, cfg.dns_stub], idle_timeout=cfg.idle_timeout,
                              grace=max(30.0, 3.0 * cfg.dns_ttl), max_leases=cfg.max_leases,
                              max_per_wildcard=cfg.max_leases_per_wildcard)
        self.address = socket.inet_aton(cfg.address)
        # Bad input is logged once per source per interval, with a count of the lines held back.
        self.bad_log = LogLimiter(interval=10.0)
        self.identity = pki.identity_of(x509.load_pem_x509_certificate(Path(cfg.cert).read_bytes()))
        self.ctx = client_context(cfg.ca, cfg.cert, cfg.key)
        self.counters: Counter = Counter()
        self.state_dir = Path(cfg.state_dir)
        self.state_path = self.state_dir / "dns-takeover.json"
        self.control_path = self.state_dir / "control.sock"
        self.upstreams: list[str] = []
        self.tun: Tun | None = None
        self.tunnel: FramedTLS | None = None
        self.tstate = "down"
        self.tsince = time.time()
        self.gateway_ip: str | None = None
        self.last_error = ""
        self.last_attempt = -1e9
        self.last_rx = self.last_tx = 0.0
        self.pending: dict[bytes, list[bytes]] = {}
        self.announced: set[bytes] = set()
        self.reading_tun = False
        self.loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle -------------------------------------------------------
    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, stop.set)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        msg = takeover.recover_stale(self.state_path)
        if msg:
            log.warning("a previous agent did not stop cleanly: %s", msg)
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
            resolv = Path(self.cfg.resolv_conf)
            # The guardian first: from the moment the file is taken over, a kill -9 must find it there.
            guardian_fd = takeover.start_guardian(self.state_path)
            self.upstreams = takeover.take_over(resolv, self.cfg.dns_stub, self.state_path, os.getpid())
            log.info("DNS taken over in %s: stub %s; other names go to %s", resolv, self.cfg.dns_stub,
                     ", ".join(self.upstreams))
            servers.append(await asyncio.start_unix_server(self._control, path=str(self.control_path)))
            os.chmod(self.control_path, 0o600)
            self._resume_tun()
            ticker = asyncio.create_task(self._tick())
            log.info("agent %s ready; gateway %s:%d (found through public DNS on first use)",
                     self.identity, self.cfg.gateway, self.cfg.gateway_port)
            await stop.wait()
            ticker.cancel()
            log.info("stopping")
        finally:
            if self.tunnel is not None:
                self.tunnel.send(wire.control(wire.CLOSE, reason="agent stopping"))
                self.tunnel.close("agent stopping")
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
            if self.tun is not None:
                if self.reading_tun:
                    self.loop.remove_reader(self.tun.fd)
                self.tun.close()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for lease in self.pool.expire(now):
                log.info("lease %s %s reclaimed (idle)", lease.fqdn, lease.addr_text)
                self._forget_lease(lease)
            if self.tstate == "up":
                if now - self.last_rx > 3 * self.cfg.keepalive:
                    self.tunnel.close(f"no word from the gateway for {3 * self.cfg.keepalive:.0f}s")
                elif now - self.last_tx > self.cfg.keepalive:
                    self._send(wire.frame(wire.KEEPALIVE))

    def _forget_lease(self, lease: Lease) -> None:
        """A lease is gone (idle, or its address given to another name): the gateway forgets it too."""
        self.pending.pop(lease.addr, None)
        self.announced.discard(lease.addr)
        if self.tstate == "up":
            self._send(wire.control(wire.RELEASE, addr=lease.addr_text))

    def _pool_news(self) -> None:
        events, reclaimed = self.pool.drain()
        for e in events:
            self.counters["lease_cap_reached"] += 1
            quiet = self.bad_log.allow(("lease cap", e.split(";")[0]), time.monotonic())
            if quiet is not None:
                log.warning("leases: %s%s", e, suffix(quiet))
        for lease in reclaimed:
            self._forget_lease(lease)

    # ---- the TUN side (hot path) ----------------------------------------
    def _resume_tun(self) -> None:
        if not self.reading_tun and self.tun is not None:
            self.loop.add_reader(self.tun.fd, self._on_tun)
            self.reading_tun = True

    def _pause_tun(self) -> None:
        if self.reading_tun:
            self.loop.remove_reader(self.tun.fd)
            self.reading_tun = False

    def _on_blocked(self, blocked: bool) -> None:
        # Backpressure: while the tunnel cannot take more, leave packets in the
        # TUN queue so the senders' TCP slows down instead of us buffering.
        if blocked:
            self._pause_tun()
        else:
            self._resume_tun()

    def _on_tun(self) -> None:
        now = time.monotonic()
        out: list[bytes] = []
        fd = self.tun.fd
        for _ in range(128):
            try:
                buf = os.read(fd, TUN_READ)
            except BlockingIOError:
                break
            self._tun_packet(buf, now, out)
        if out and self.tunnel is not None:
            self.counters["tunnel_tx_packets"] += len(out) // 2
            self._send(b"".join(out))

    def _tun_packet(self, buf: bytes, now: float, out: list) -> None:
        c = self.counters
        c["tun_rx_packets"] += 1
        if len(buf) < 30 or buf[10] >> 4 != 4:
            c["dropped_not_ipv4"] += 1
            return
        try:
            f = parse_untrusted(buf, 10)
        except BadPacket:
            c["dropped_malformed"] += 1
            return
        if f.src != self.address:
            # Only this machine's own traffic to a lease may enter the tunnel (issue 19): a forged
            # source stops here, counted, instead of being left to the gateway.
            c["dropped_spoofed_src"] += 1
            quiet = self.bad_log.allow(("spoofed", f.src), now)
            if quiet is not None:
                log.warning("dropped a packet from %s to %s on the TUN: not this agent's address %s%s",
                            ip4_text(f.src), ip4_text(f.dst), self.cfg.address, suffix(quiet))
            return
        lease = self.pool.by_addr.get(f.dst)
        if lease is None or lease.state == "denied":
            self._refuse(buf, f, "not leased" if lease is None else "denied by the gateway")
            return
        if self.pool.note_packet(lease, (f.proto, f.sport, f.dport), now, closing=bool(f.flags & TCP_RST)):
            c["flows"] += 1
            log.info("flow %s %s:%d -> %s (%s):%d", {6: "tcp", 17: "udp", 1: "icmp"}.get(f.proto, f.proto),
                     ip4_text(f.src), f.sport, lease.fqdn, lease.addr_text, f.dport)
        if lease.state == "allowed" and self.tstate == "up":
            out.append(wire.data_header(len(buf)))
            out.append(buf)
            return
        q = self.pending.setdefault(lease.addr, [])
        if len(q) < PENDING_MAX:
            q.append(buf)
        else:
            c["dropped_pending_full"] += 1
        if self.tstate == "up":
            self._announce(lease)
        else:
            self._ensure_tunnel()

    def _refuse(self, buf: bytes, f, why: str) -> None:
        answer = refusal_for(buf, 10)
        self.counters["refused"] += 1
        if answer is not None:
            self._tun_write(NO_VNET + answer)
        if f.proto == 6 and f.flags & TCP_SYN:
            log.info("refused SYN to %s: %s", ip4_text(f.dst), why)

    def _tun_write(self, data: bytes | bytearray) -> None:
        try:
            os.write(self.tun.fd, data)
            self.counters["tun_tx_packets"] += 1
        except OSError as exc:
            self.counters["tun_write_errors"] += 1
            log.debug("TUN write failed: %s", exc)

    # ---- the tunnel ------------------------------------------------------
    def _send(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.send(data)
            self.last_tx = time.monotonic()

    def _ensure_tunnel(self) -> None:
        now = time.monotonic()
        if self.tstate != "down" or now - self.last_attempt < 1.0:
            return
        self.last_attempt = now
        self._set_state("connecting")
        asyncio.ensure_future(self._connect())

    def _resolve_gateway(self) -> str:
        last: Exception | None = None
        for server in self.upstreams:
            try:
                rec = dnswire.ask(server, self.cfg.gateway, "A", timeout=2.0, tries=1)
                addrs = dnswire.addresses(rec, "A")
                if addrs:
                    return addrs[0]
                last = LookupError(f"{server} answered {dnswire.rcode_name(rec)} with no address")
            except (OSError, TimeoutError, dnswire.BadPacket) as exc:
                last = exc
        raise LookupError(f"cannot find gateway {self.cfg.gateway} through public DNS ({', '.join(self.upstreams)}): {last}")

    async def _connect(self) -> None:
        sock = None
        try:
            self.gateway_ip = await self.loop.run_in_executor(None, self._resolve_gateway)
            log.info("gateway %s is %s (public DNS)", self.cfg.gateway, self.gateway_ip)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.wait_for(self.loop.sock_connect(sock, (self.gateway_ip, self.cfg.gateway_port)),
                                   self.cfg.connect_timeout)
            ssock = self.ctx.wrap_socket(sock, server_hostname=self.cfg.gateway, do_handshake_on_connect=False)
            sock = ssock
            conn = FramedTLS(ssock, name=f"gateway {self.gateway_ip}", on_frames=self._on_frames,
                             on_close=self._on_tunnel_close, on_blocked=self._on_blocked)
            await conn.handshake(self.cfg.connect_timeout)
        except (OSError, LookupError, ssl.SSLError, asyncio.TimeoutError) as exc:
            if sock is not None:
                sock.close()
            reason = str(exc) or type(exc).__name__
            self.last_error = reason
            log.warning("tunnel to %s not built: %s", self.cfg.gateway, reason)
            self._set_state("down")
            self._fail_pending()
            return
        self.tunnel = conn
        self.last_rx = self.last_tx = time.monotonic()
        self._set_state("hello")
        conn.start_reading()
        log.info("TLS %s with %s:%d (%s), certificate %s presented", ssock.version(), self.gateway_ip,
                 self.cfg.gateway_port, ssock.cipher()[0], self.identity)
        self._send(wire.control(wire.HELLO, version=wire.VERSION, tunnel_addr=self.cfg.address))

    def _set_state(self, state: str) -> None:
        self.tstate = state
        self.tsince = time.time()

    def _fail_pending(self) -> None:
        # Tell waiting senders at once (host unreachable) instead of letting them hang.
        for addr, q in list(self.pending.items()):
            for buf in q:
                try:
                    self._tun_write(NO_VNET + icmp_unreachable_for(buf, 10))
                except BadPacket:
                    pass
        self.pending.clear()

    def _on_tunnel_close(self, reason: str) -> None:
        was = self.tstate
        self.tunnel = None
        self.last_error = reason
        self._set_state("down")
        self.announced.clear()
        for lease in self.pool.by_name.values():
            lease.state = "new"  # a new tunnel (maybe a new gateway) decides again
        self.counters["tunnel_closed"] += 1
        self._resume_tun()
        if was == "hello":
            log.error("gateway refused the tunnel: %s", reason)
            self._fail_pending()
        else:
            log.warning("tunnel closed: %s", reason)

    def _on_frames(self, frames: list) -> None:
        self.last_rx = time.monotonic()
        for f in frames:
            if f.type == wire.DATA:
                self._tun_write(f.payload)
            elif f.type == wire.WELCOME:
                self._welcome(f.fields)
            elif f.type == wire.LEASE_RESULT:
                self._lease_result(f.fields)
            elif f.type == wire.KEEPALIVE:
                pass
            elif f.type == wire.CLOSE:
                self.tunnel.close(f"gateway closed the tunnel: {f.fields.get('reason', '')}")
                return
            else:
                self.tunnel.close(f"protocol error: gateway sent {wire.NAMES.get(f.type)}")
                return
            if self.tunnel is None:
                return

    def _welcome(self, fields: dict) -> None:
        if self.tstate != "hello":
            self.tunnel.close("protocol error: WELCOME twice")
            return
        self._set_state("up")
        self.counters["tunnel_up"] += 1
        log.info("tunnel up: gateway knows us as %s (session %s)", fields.get("identity"), fields.get("session"))
        for lease in list(self.pool.by_name.values()):
            if lease.addr in self.pending or lease.flows:
                self._announce(lease)

    def _announce(self, lease: Lease) -> None:
        if lease.addr not in self.announced:
            self.announced.add(lease.addr)
            self._send(wire.control(wire.LEASE, fqdn=lease.fqdn, addr=lease.addr_text))

    def _lease_result(self, fields: dict) -> None:
        try:
            addr = socket.inet_aton(str(fields.get("addr")))
        except OSError:
            self.tunnel.close("protocol error: LEASE_RESULT without a valid addr")
            return
        lease = self.pool.by_addr.get(addr)
        if lease is None or lease.fqdn != fields.get("fqdn"):
            return  # reclaimed meanwhile
        waiting = self.pending.pop(addr, [])
        if fields.get("allowed") is True:
            lease.state = "allowed"
            log.info("lease %s %s allowed by the gateway", lease.fqdn, lease.addr_text)
            if waiting:
                out = []
                for buf in waiting:
                    out += [wire.data_header(len(buf)), buf]
                self._send(b"".join(out))
        else:
            lease.state = "denied"
            log.warning("lease %s %s denied by the gateway: %s", lease.fqdn, lease.addr_text, fields.get("reason"))
            for buf in waiting:
                self._refuse(buf, parse_untrusted(buf, 10), "denied by the gateway")

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
        except dnswire.BadPacket as exc:
            return self._malformed(data, proto, source, str(exc))
        d = decide(q, self.cfg.patterns, self.pool, time.monotonic(), ttl=self.cfg.dns_ttl)
        self._pool_news()
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

    # ---- status ------------------------------------------------------------
    def status(self) -> dict:
        now = time.monotonic()
        t = self.tunnel
        return {
            "identity": self.identity,
            "tun": self.cfg.tun,
            "dns": {"stub": self.cfg.dns_stub, "upstreams": self.upstreams, "resolv_conf": self.cfg.resolv_conf},
            "tunnel": {
                "state": self.tstate, "since": self.tsince, "gateway": self.cfg.gateway,
                "gateway_ip": self.gateway_ip, "last_error": self.last_error,
                "bytes_in": t.bytes_in if t else 0, "bytes_out": t.bytes_out if t else 0,
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
