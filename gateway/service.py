"""The running gateway: mTLS tunnel server, per-client NAT, private DNS, TUN.

Agents connect over TLS 1.3 and must present a certificate that chains to the
configured CA; its common name is the identity the policy speaks of.  Each
announced lease is checked against the policy and resolved with the private
DNS server; packets are then rewritten by the session's NAT and injected into
the gateway's TUN, from where the kernel routes them into the LAN with
masquerade.  Replies come back through the TUN and are mapped per flow.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import ipaddress
import itertools
import logging
import signal
import socket
import ssl
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ztna import dnswire, nft, pki, runstate, wire
from ztna.config import ConfigError, describe
from ztna.crl import CrlWatch
from ztna.nft import NftError
from ztna.loglimit import LogLimiter, suffix
from ztna.tlsconn import FramedTLS, accept_ready, server_context, tune_tunnel_socket
from ztna.tun import Tun, read_batch, write_packets
from ztna.udppath import session_of
from ztna.udpsock import BatchSocket

from . import reload as reload_mod
from .config import GatewayConfig
from .nat import InsidePool
from .pending import HandshakeGate
from .policy import Policy
from .session import Bind, Close, GatewaySession, Log, Resolve, Send, SendDatagram, SendDatagrams, Unbind, WriteTun

log = logging.getLogger("ztna.gateway")

NFT_TABLE = "ztna_gw"


def nft_rules(tun: str, inside: str) -> str:
    """The gateway's only nftables table: masquerade agent traffic into the LAN.

    Conntrack does not NAT a packet it marks INVALID (SYN+FIN, SYN+RST, no flags,
    a bad checksum): masquerade would let it into the LAN with its inside source
    (issue 19), so the forward chain drops it, counted in ``ct_invalid``.  A last
    chain after source NAT drops, counted in ``inside_leak``, anything that would
    still leave the LAN side from an inside address, whatever the reason.
    """
    return (
        f"table ip {NFT_TABLE} {{\n"
        f"  counter ct_invalid {{ }}\n"
        f"  counter inside_leak {{ }}\n"
        f"  chain postrouting {{\n"
        f"    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    ip saddr {inside} oifname != \"{tun}\" masquerade\n"
        f"  }}\n"
        f"  chain forward {{\n"
        f"    type filter hook forward priority filter; policy accept;\n"
        f"    iifname \"{tun}\" ct state invalid counter name ct_invalid drop\n"
        f"    iifname \"{tun}\" ip saddr != {inside} counter drop\n"
        f"  }}\n"
        f"  chain guard {{\n"
        f"    type filter hook postrouting priority srcnat + 10; policy accept;\n"
        f"    oifname != \"{tun}\" ip saddr {inside} counter name inside_leak drop\n"
        f"  }}\n"
        f"}}\n"
    )


NFT_COUNTERS = ("ct_invalid", "inside_leak")


def nft_counters() -> dict[str, int]:
    """Packets counted so far by the table's named counters."""
    return nft.counters(NFT_TABLE, NFT_COUNTERS)


def _malloc_trim() -> bool:
    """Give freed heap pages back to the system (glibc only); False where there is no malloc_trim."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False


def _rss_mib() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return -1


@dataclass
class Session:
    """One agent's connection: its TLS socket and the session core that decides for it."""

    peer: str
    conn: FramedTLS
    core: GatewaySession
    serial: int = 0  # of the agent's certificate, for the CRL

    @property
    def id(self) -> int:
        return self.core.id

    @property
    def identity(self) -> str:
        return self.core.identity


# The UDP port's socket buffers (the kernel doubles them). Datagrams wait here whenever the gateway is
# the bottleneck, and a ping waits behind them: 8 MiB gave 21-25 ms of loaded RTT in the bench, 512 KiB
# 10.6 ms, 256 KiB 5.2 ms, each with more throughput than the last (docs/datachannel.md, "Speed"); a full
# buffer drops, and the inner TCP slows down instead of queueing.
UDP_BUFFERS = 256 << 10


class Gateway:
    """One gateway process."""

    def __init__(self, cfg: GatewayConfig, policy: Policy, *, config_path=None, run_dir=None):
        self.cfg = cfg
        self.config_path = config_path
        self.state = runstate.RunState(run_dir, "gateway", config=config_path) if run_dir else None
        self.policy = policy
        self.ctx = server_context(cfg.ca, cfg.cert, cfg.key)
        self.pool = InsidePool(cfg.inside_network)
        self.agent_net = ipaddress.IPv4Network(cfg.agent_network)
        self.sessions: dict[int, Session] = {}
        self.by_inside: dict[bytes, Session] = {}
        self.ids = itertools.count(1)
        self.counters: Counter = Counter()
        self.dns_cache: dict[str, tuple[bytes, float]] = {}
        self.gate = HandshakeGate(max_total=cfg.max_pending, max_per_source=cfg.max_pending_per_source,
                                  timeout=cfg.handshake_timeout, pressure_timeout=cfg.pressure_handshake_timeout)
        self.refusal_log = LogLimiter(interval=10.0)
        self.nft_seen: dict[str, int] = dict.fromkeys(NFT_COUNTERS, 0)
        self.tun: Tun | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.crl = CrlWatch(cfg.crl, x509.load_pem_x509_certificate(Path(cfg.ca).read_bytes())) if cfg.crl else None
        self.connectors: list = []  # gateway.connector.Connector, one per [pop] resource
        self.udp_sock: BatchSocket | None = None
        self.udp_log = LogLimiter(interval=10.0)
        # The data channel's keys are bound to this certificate (agent/service.py hashes the same one).
        self.cert_id = hashlib.sha256(x509.load_pem_x509_certificate(Path(cfg.cert).read_bytes()).public_bytes(
            serialization.Encoding.DER)).hexdigest()

    def _start_connectors(self) -> None:
        from .connector import Connector

        self.connectors = [Connector(self, self.cfg.pop, r) for r in self.cfg.pop.resources]
        for c in self.connectors:
            c.start()

    # ---- lifecycle -------------------------------------------------------
    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, stop.set)
        self.loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        lsock = None
        nft_on = False
        try:
            self._poll_crl()
            prefix = self.pool.network.prefixlen
            # pyroute2's synchronous API will not run inside a running event loop.
            self.tun = await self.loop.run_in_executor(
                None, lambda: Tun(self.cfg.tun, [f"{self.pool.gateway_addr}/{prefix}"]))
            with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
                f.write("1")
            nft.replace_table(NFT_TABLE, nft_rules(self.tun.name, self.cfg.inside_network),
                              what="the gateway's rules")  # a table left by a crash goes first
            nft_on = True
            if self.cfg.pop is not None:
                self._start_connectors()  # connector mode: outbound tunnels to the PoP, no listening socket
            else:
                lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                lsock.bind((self.cfg.listen, self.cfg.port))
                lsock.listen(128)
                lsock.setblocking(False)
                self.loop.add_reader(lsock.fileno(), self._on_accept, lsock)
                if self.cfg.udp_port:
                    self.udp_sock = BatchSocket((self.cfg.listen, self.cfg.udp_port), self.counters, log,
                                                buffers=UDP_BUFFERS)
                    self.loop.add_reader(self.udp_sock.fileno(), self._on_udp)
                    log.info("UDP data channel on %s:%d", self.cfg.listen, self.cfg.udp_port)
            self.loop.add_reader(self.tun.fd, self._on_tun)
            ticker = asyncio.create_task(self._tick())
            self._start_metrics()
            log.info("gateway %s; TUN %s %s; private DNS %s",
                     f"listening on {self.cfg.listen}:{self.cfg.port} (TLS 1.3, client certificates from {self.cfg.ca})"
                     if lsock is not None else f"in connector mode to the PoP {self.cfg.pop.address}:{self.cfg.pop.port}",
                     self.tun.name, self.cfg.inside_network, ", ".join(self.cfg.private_dns))
            if self.state is not None:
                self.state.write()
            await stop.wait()
            ticker.cancel()
            await self._read_nft()
            log.info("stopping; dropped by nftables: %s", ", ".join(f"{k} {v}" for k, v in self.nft_seen.items()))
        finally:
            for s in list(self.sessions.values()):
                s.conn.send(wire.control(wire.CLOSE, reason="gateway stopping"))
                s.conn.close("gateway stopping")
            for c in self.connectors:
                await c.stop()
            if lsock is not None:
                self.loop.remove_reader(lsock.fileno())
                lsock.close()
            if self.udp_sock is not None:
                self.loop.remove_reader(self.udp_sock.fileno())
                self.udp_sock.close()
            if nft_on:
                nft.delete_table(NFT_TABLE)
            if self.tun is not None:
                self.tun.close()
            if self.state is not None:
                self.state.remove()
            if getattr(self, "exporter", None) is not None:
                self.exporter.stop()

    async def _tick(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(1.0)
            n += 1
            now = time.monotonic()
            self._poll_crl()
            for s in list(self.sessions.values()):
                self._perform(s, s.core.tick(now))
            for c in self.connectors:
                c.tick(now)
            if n % 2 == 0:
                await self._read_nft()

    # ---- metrics (off unless [metrics] listen) ------------------------------------
    def _start_metrics(self) -> None:
        from ztna import metrics

        self.exporter = metrics.serve(self.metric_families, self.cfg.metrics_listen)

    def metric_families(self) -> list:
        """A scrape (on the exporter's thread): a snapshot of the counts the loop keeps anyway."""
        from .metrics import Snapshot, families

        for _ in range(3):  # the loop may change the dicts meanwhile: take the copy again
            try:
                sessions = list(self.sessions.values())
                counters = dict(self.counters)
                break
            except RuntimeError:
                continue
        else:
            sessions, counters = [], dict(self.counters)
        snap = Snapshot(counters, sessions=len(sessions),
                        leases=sum(len(s.core.nat.routes) for s in sessions if s.core.nat is not None),
                        bytes_in=counters.get("closed_bytes_in", 0) + sum(s.conn.bytes_in for s in sessions),
                        bytes_out=counters.get("closed_bytes_out", 0) + sum(s.conn.bytes_out for s in sessions))
        return families(snap)

    # ---- live reload (SIGHUP, `ztna gateway reload`) ----------------------------
    def _on_hup(self) -> None:
        if self.config_path is None:
            log.error("SIGHUP: no configuration file to reload")
            return
        ok, msg, changes = self.reload(self.config_path)
        if self.state is not None:
            self.state.reloaded(ok=ok, message=msg, changes=changes, now=time.time())

    def reload(self, path) -> tuple[bool, str, list[str]]:
        """Read ``path`` again and put its [policy] in force; (ok, message, changes).

        Sessions stay; each one withdraws the leases its identity lost (gateway/session.py
        ``set_policy``).  A file that does not load, or changes more than [policy], is refused."""
        from .config import load

        try:
            cfg, policy = load(path)
            p = reload_mod.plan(path, self.cfg, self.policy.source, cfg, policy.source)
        except ConfigError as exc:
            p = reload_mod.Plan(False, f"reload refused, the running configuration stays: {describe(path, exc)}", [])
        except (OSError, ValueError) as exc:  # a file named by the config that cannot be read, ...
            p = reload_mod.Plan(False, f"reload refused, the running configuration stays: {path}: {exc}", [])
        if not p.ok:
            self.counters["reloads_refused"] += 1
            log.error("%s", p.message)
            return False, p.message, []
        self.policy = policy
        if getattr(self, "_front", None) is not None:
            self._front.gate.policy = policy
        before = self.counters["leases_withdrawn"]
        for s in list(self.sessions.values()):
            self._perform(s, s.core.set_policy(policy))
        self.counters["reloads_taken"] += 1
        if cfg.pop is not None and cfg.pop.resources != self.cfg.pop.resources:
            from .connector import apply_resources

            # Connector mode: an added resource's tunnel opens, a removed one's closes, the others stay.
            asyncio.ensure_future(apply_resources(self, cfg.pop))
        msg = f"{p.message}, {self.counters['leases_withdrawn'] - before} lease(s) withdrawn"
        log.info("%s%s", msg, "".join(f"; {c}" for c in p.changes))
        return True, msg, p.changes

    def _poll_crl(self) -> None:
        """Re-read the CRL when its file changed (each tick, so within a second) and end revoked sessions."""
        if self.crl is None:
            return
        added, refused = self.crl.refresh(log)
        self.counters["crl_errors"] += refused
        for s in list(self.sessions.values()):
            if s.serial in added:
                self.counters["sessions_revoked"] += 1
                self._perform(s, s.core.end(f"certificate revoked (serial {s.serial:x}, {s.identity})"))

    async def _read_nft(self) -> None:
        # The drops happen in the kernel; say so in the log as they grow, so an operator sees them.
        try:
            now = await self.loop.run_in_executor(None, nft_counters)
        except (NftError, ValueError) as exc:
            log.debug("%s", exc)
            return
        what = {"ct_invalid": "packets from agents dropped as conntrack INVALID",
                "inside_leak": "packets dropped that would have left the LAN side with an inside source"}
        for name, total in now.items():
            if total > self.nft_seen.get(name, 0):
                log.warning("nft: %d more %s (%d so far)", total - self.nft_seen.get(name, 0), what[name], total)
                self.nft_seen[name] = total

    # ---- accepting agents --------------------------------------------------
    def _on_accept(self, lsock: socket.socket) -> None:
        for sock, addr in accept_ready(lsock):
            peer = f"{addr[0]}:{addr[1]}"
            if len(self.sessions) >= self.cfg.max_sessions:
                self._refuse_connection(sock, peer, addr[0], f"{len(self.sessions)} sessions already")
                continue
            why = self.gate.admit(addr[0])
            if why is not None:
                # Refused before any TLS state exists: a flood costs an accept and a close each.
                self._refuse_connection(sock, peer, addr[0], why)
                continue
            asyncio.ensure_future(self._handshake(sock, peer, addr[0], self.gate.timeout()))

    def _refuse_connection(self, sock: socket.socket, peer: str, source: str, why: str) -> None:
        self.counters["connections_refused"] += 1
        sock.close()
        quiet = self.refusal_log.allow(source, time.monotonic())
        if quiet is not None:
            log.warning("refused %s: %s%s", peer, why, suffix(quiet))

    async def _handshake(self, sock: socket.socket, peer: str, source: str, timeout: float) -> None:
        try:
            ok = await self._handshake_gated(sock, peer, timeout)
        finally:
            if self.gate.done(source):
                self._give_memory_back()
        if ok is not None:
            self._start_session(*ok)

    def _give_memory_back(self) -> None:
        # Every pending handshake held an OpenSSL object (about 45 KB with its buffers); once
        # freed, glibc keeps those heap pages for reuse, so RSS stayed at its peak after a
        # flood (issue 19).  A burst has drained: hand them back.
        before = _rss_mib()
        if _malloc_trim():
            log.info("a burst of pending handshakes has drained: memory given back, RSS %d -> %d MB",
                     before, _rss_mib())

    async def _handshake_gated(self, sock: socket.socket, peer: str, timeout: float):
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.cfg.agentless is not None and await self.agentless_front().claim(sock, peer, timeout):
            return  # SNI named a published application (served by gateway/agentless) or nothing we serve (refused)
        tune_tunnel_socket(sock)
        ssock = self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        conn = FramedTLS(ssock, name=peer)
        try:
            await conn.handshake(timeout)
            identity = pki.identity_from_peercert(ssock.getpeercert())
            serial = x509.load_der_x509_certificate(ssock.getpeercert(binary_form=True)).serial_number
        except (ssl.SSLError, OSError, asyncio.TimeoutError, pki.PKIError, ValueError) as exc:
            self.counters["tls_refused"] += 1
            log.warning("refused TLS from %s: %s", peer, _tls_reason(exc))
            conn.close()
            return None
        if self.crl is not None and self.crl.revoked(serial):
            # Checked here, not by OpenSSL, so the CRL can change under a running gateway (ztna/crl.py).
            self.counters["tls_refused"] += 1
            self.counters["revoked_refused"] += 1
            log.warning("refused TLS from %s: certificate of %s (serial %x) is revoked", peer, identity, serial)
            conn.send(wire.control(wire.CLOSE, reason="certificate revoked"))
            conn.close()
            return None
        return conn, ssock, peer, identity, serial

    def _start_session(self, conn: FramedTLS, ssock: ssl.SSLSocket, peer: str, identity: str, serial: int = 0) -> None:
        sid = next(self.ids)
        core = GatewaySession(sid, identity, policy=self.policy, pool=self.pool, agent_network=self.agent_net,
                              now=time.monotonic(), keepalive=self.cfg.keepalive, queue_limit=self.cfg.queue_limit,
                              counters=self.counters, udp_port=self.cfg.udp_port or None,
                              gateway_identity=self.cert_id, udp_mtu=self.cfg.udp_mtu)
        s = Session(peer, conn, core, serial)
        conn.on_data = lambda data: self._perform(s, core.receive_data(data, time.monotonic()))
        conn.on_close = lambda reason: self._on_close(s, reason)
        conn.on_blocked = lambda blocked: blocked or self._drain(s)
        self.sessions[sid] = s
        self.counters["sessions_started"] += 1
        cert = ssock.getpeercert()
        issuer = dict(x for rdn in cert.get("issuer", ()) for x in rdn).get("commonName", "?")
        log.info("session %d from %s: identity %s (certificate CN=%s, issuer %s, valid until %s), %s",
                 sid, peer, identity, identity, issuer, cert.get("notAfter"), ssock.version())
        conn.start_reading()

    def agentless_front(self):
        # Port 443 is shared with browsers of published applications (SPEC §2); built on first use.
        if getattr(self, "_front", None) is None:
            from .agentless.server import Front
            self._front = Front(self.cfg.agentless, self.policy, self._resolve)
            self._front.crl = self.crl
        return self._front

    def _on_close(self, s: Session, reason: str) -> None:
        self.sessions.pop(s.id, None)
        self.counters["closed_bytes_in"] += s.conn.bytes_in
        self.counters["closed_bytes_out"] += s.conn.bytes_out
        core = s.core
        nat = core.nat
        self._perform(s, core.closed_by_shell())
        c = nat.counters if nat else None
        if core.decoder.pending():
            reason += f" ({core.decoder.pending()} bytes of an unfinished frame dropped)"
        log.info("session %d %s closed after %.0fs: %s; %d bytes in, %d out%s", s.id, s.identity,
                 time.monotonic() - core.started, reason, s.conn.bytes_in, s.conn.bytes_out,
                 f"; dropped spoofed src {c.spoofed_src}, dst {c.spoofed_dst}, malformed {c.malformed}" if c else "")

    # ---- performing a session's commands ----------------------------------------
    def _perform(self, s: Session, cmds: list) -> None:
        for c in cmds:
            t = type(c)
            if t is WriteTun:
                write_packets(self.tun.fd, c.packets, self.counters, log)
            elif t is Send:
                s.conn.send(c.data)
            elif t is Log:
                log.log(c.level, "%s", c.message)
            elif t is Resolve:
                asyncio.ensure_future(self._resolve_lease(s, c))
            elif t is Bind:
                self.by_inside[c.inside] = s
            elif t is Unbind:
                if self.by_inside.get(c.inside) is s:
                    del self.by_inside[c.inside]
            elif t is SendDatagrams:
                self._udp_send(c.datagrams, c.to)
            elif t is SendDatagram:
                self._udp_send([c.data], c.to)
            elif t is Close:
                s.conn.close(c.reason)
            else:
                raise TypeError(f"unknown session command {c!r}")

    async def _resolve_lease(self, s: Session, c: Resolve) -> None:
        try:
            real, error = await self._resolve(c.name), ""
        except LookupError as exc:
            real, error = None, str(exc)
        if not s.conn.closed:
            self._perform(s, s.core.resolved(c.name, c.addr, real, error))

    async def _resolve(self, name: str) -> bytes:
        now = time.monotonic()
        hit = self.dns_cache.get(name)
        if hit and hit[1] > now:
            return hit[0]
        last = None
        for server in self.cfg.private_dns:
            try:
                rec = await self.loop.run_in_executor(None, lambda: dnswire.ask(server, name, "A", timeout=2.0))
            except (OSError, TimeoutError, dnswire.BadMessage) as exc:
                last = f"private DNS {server} did not answer: {exc}"
                continue
            addrs = dnswire.addresses(rec, "A")
            if not addrs:
                last = f"private DNS {server} has no address for {name} ({dnswire.rcode_name(rec)})"
                continue
            ttl = min((rr.ttl for rr in rec.rr), default=60)
            real = socket.inet_aton(addrs[0])
            self.dns_cache[name] = (real, now + max(5, min(ttl, 300)))
            return real
        raise LookupError(last or "no private DNS server configured")

    # ---- the UDP data channel (only with udp_port) ---------------------------
    def _udp_send(self, datagrams: list, to) -> None:
        if self.udp_sock is None or to is None:
            return
        self.udp_sock.send(datagrams, to)

    def _on_udp(self) -> None:
        now = time.monotonic()
        sessions = self.sessions
        # GRO buffers come split; non-blocking reads until EAGAIN, bounded per wake-up.
        batches: dict[int, list] = {}  # session -> its datagrams, in order: one call, one TUN write list each
        for data, source in self.udp_sock.receive():
            sid = session_of(data)
            if sid is None or sid not in sessions:
                self.counters["udp_rejected_no_session"] += 1
                quiet = self.udp_log.allow(("no session", source[0]), now)
                if quiet is not None:
                    log.warning("dropped a datagram from %s:%d on the UDP port: %s%s", source[0], source[1],
                                "not a data-channel datagram" if sid is None else f"no session {sid}", suffix(quiet))
                continue
            batches.setdefault(sid, []).append((data, source))
        for sid, items in batches.items():
            s = sessions.get(sid)
            if s is None:
                continue
            path = s.core.path
            before = path.counters["udp_rx"] if path is not None else 0
            self._perform(s, s.core.datagrams(items, now))
            if path is not None and path.counters["udp_rx"] - before < len(items):  # some did not authenticate
                source = items[-1][1]
                quiet = self.udp_log.allow(("session", sid, source[0]), now)
                if quiet is not None:
                    log.warning("dropped a datagram from %s:%d for session %d: it did not authenticate "
                                "(%s)%s", source[0], source[1], sid, _rejections(path.counters), suffix(quiet))

    # ---- the TUN side (hot path) -------------------------------------------
    def _on_tun(self) -> None:
        now = time.monotonic()
        busy: list[Session] = []
        by_inside = self.by_inside
        for raw in read_batch(self.tun.fd):
            buf = bytearray(raw)
            if len(buf) < 30:
                continue
            s = by_inside.get(bytes(buf[26:30]))
            if s is None:
                self.counters["tun_unclaimed"] += 1
                continue
            core = s.core
            fresh = not core.out
            if not core.reply(buf, now):
                self.counters["tun_unclaimed"] += 1
                continue
            if fresh:
                busy.append(s)
        for s in busy:
            # One write per session per burst; what the connection cannot take waits in the session's fair queue.
            self._perform(s, s.core.flush(s.conn.blocked, now))
            self._drain(s)

    def _drain(self, s: Session) -> None:
        """The connection takes more: hand it the session's queued replies until it stops or they run out."""
        conn, core = s.conn, s.core
        while core.backlog and not conn.blocked and not conn.closed:
            cmds = core.writable(time.monotonic())
            if not cmds:
                return
            self._perform(s, cmds)


def _rejections(counters) -> str:
    return ", ".join(f"{k[len('udp_rejected_'):]} {v}" for k, v in counters.items() if k.startswith("udp_rejected_"))


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        if exc.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no client certificate presented"
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, asyncio.TimeoutError):
        return "handshake timed out"
    return f"{type(exc).__name__}: {exc}"
