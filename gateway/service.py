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
import ipaddress
import itertools
import logging
import os
import signal
import socket
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field

from ztna import dnswire, nft, pki, wire
from ztna.nft import NftError
from ztna.loglimit import LogLimiter, suffix
from ztna.names import BadName, normalize
from ztna.tlsconn import FramedTLS, server_context
from ztna.tun import Tun

from .config import GatewayConfig
from .nat import ClientNat, InsidePool
from .pending import HandshakeGate
from .policy import Policy

log = logging.getLogger("ztna.gateway")

NFT_TABLE = "ztna_gw"
TUN_READ = 65536 + 128


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
    """One agent's tunnel."""

    id: int
    peer: str
    identity: str
    conn: FramedTLS
    started: float
    state: str = "hello"
    nat: ClientNat | None = None
    inside: bytes = b""
    last_rx: float = 0.0
    out: list = field(default_factory=list)
    drops_logged: int = 0
    queue_drops: int = 0


class Gateway:
    """One gateway process."""

    def __init__(self, cfg: GatewayConfig, policy: Policy):
        self.cfg = cfg
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

    # ---- lifecycle -------------------------------------------------------
    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, stop.set)
        lsock = None
        nft_on = False
        try:
            prefix = self.pool.network.prefixlen
            # pyroute2's synchronous API will not run inside a running event loop.
            self.tun = await self.loop.run_in_executor(
                None, lambda: Tun(self.cfg.tun, [f"{self.pool.gateway_addr}/{prefix}"]))
            with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
                f.write("1")
            nft.replace_table(NFT_TABLE, nft_rules(self.tun.name, self.cfg.inside_network),
                              what="the gateway's rules")  # a table left by a crash goes first
            nft_on = True
            lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind((self.cfg.listen, self.cfg.port))
            lsock.listen(128)
            lsock.setblocking(False)
            self.loop.add_reader(lsock.fileno(), self._on_accept, lsock)
            self.loop.add_reader(self.tun.fd, self._on_tun)
            ticker = asyncio.create_task(self._tick())
            log.info("gateway listening on %s:%d (TLS 1.3, client certificates from %s); TUN %s %s; private DNS %s",
                     self.cfg.listen, self.cfg.port, self.cfg.ca, self.tun.name, self.cfg.inside_network,
                     ", ".join(self.cfg.private_dns))
            await stop.wait()
            ticker.cancel()
            await self._read_nft()
            log.info("stopping; dropped by nftables: %s", ", ".join(f"{k} {v}" for k, v in self.nft_seen.items()))
        finally:
            for s in list(self.sessions.values()):
                s.conn.send(wire.control(wire.CLOSE, reason="gateway stopping"))
                s.conn.close("gateway stopping")
            if lsock is not None:
                self.loop.remove_reader(lsock.fileno())
                lsock.close()
            if nft_on:
                nft.delete_table(NFT_TABLE)
            if self.tun is not None:
                self.tun.close()

    async def _tick(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(1.0)
            n += 1
            now = time.monotonic()
            for s in list(self.sessions.values()):
                if now - s.last_rx > 3 * self.cfg.keepalive:
                    s.conn.close(f"no word from the agent for {3 * self.cfg.keepalive:.0f}s")
                elif s.nat is not None and n % 10 == 0:
                    s.nat.expire(now)
            if n % 2 == 0:
                await self._read_nft()

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
        while True:
            try:
                sock, addr = lsock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
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
        ssock = self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        conn = FramedTLS(ssock, name=peer)
        try:
            await conn.handshake(timeout)
            identity = pki.identity_from_peercert(ssock.getpeercert())
        except (ssl.SSLError, OSError, asyncio.TimeoutError, pki.PKIError) as exc:
            self.counters["tls_refused"] += 1
            log.warning("refused TLS from %s: %s", peer, _tls_reason(exc))
            conn.close()
            return None
        return conn, ssock, peer, identity

    def _start_session(self, conn: FramedTLS, ssock: ssl.SSLSocket, peer: str, identity: str) -> None:
        sid = next(self.ids)
        s = Session(sid, peer, identity, conn, time.monotonic(), last_rx=time.monotonic())
        conn.on_frames = lambda frames: self._on_frames(s, frames)
        conn.on_close = lambda reason: self._on_close(s, reason)
        self.sessions[sid] = s
        cert = ssock.getpeercert()
        issuer = dict(x for rdn in cert.get("issuer", ()) for x in rdn).get("commonName", "?")
        log.info("session %d from %s: identity %s (certificate CN=%s, issuer %s, valid until %s), %s",
                 sid, peer, identity, identity, issuer, cert.get("notAfter"), ssock.version())
        conn.start_reading()

    def _on_close(self, s: Session, reason: str) -> None:
        self.sessions.pop(s.id, None)
        if s.inside:
            self.by_inside.pop(s.inside, None)
            self.pool.give_back(s.inside)
        c = s.nat.counters if s.nat else None
        if s.conn.decoder.pending():
            reason += f" ({s.conn.decoder.pending()} bytes of an unfinished frame dropped)"
        log.info("session %d %s closed after %.0fs: %s; %d bytes in, %d out%s", s.id, s.identity,
                 time.monotonic() - s.started, reason, s.conn.bytes_in, s.conn.bytes_out,
                 f"; dropped spoofed src {c.spoofed_src}, dst {c.spoofed_dst}, malformed {c.malformed}" if c else "")

    # ---- frames from an agent ------------------------------------------------
    def _on_frames(self, s: Session, frames: list) -> None:
        now = time.monotonic()
        s.last_rx = now
        fd = self.tun.fd
        for f in frames:
            if s.conn.closed:
                return
            t = f.type
            if t == wire.DATA:
                if s.state != "up":
                    s.conn.close("protocol error: DATA before HELLO")
                    return
                pkt = f.payload
                verdict = s.nat.outbound(pkt, wire.VNET_HDR_LEN, bool(pkt[0] & 1), now)
                if verdict is None:
                    self._dropped(s)
                    continue
                key, new = verdict
                if new:
                    self._log_flow(s, key)
                try:
                    os.write(fd, pkt)
                except OSError as exc:
                    self.counters["tun_write_errors"] += 1
                    log.debug("TUN write: %s", exc)
            elif t == wire.HELLO:
                self._hello(s, f.fields)
            elif t == wire.LEASE:
                self._lease(s, f.fields)
            elif t == wire.RELEASE:
                if s.nat is not None:
                    try:
                        s.nat.release(socket.inet_aton(str(f.fields.get("addr"))))
                    except OSError:
                        s.conn.close("protocol error: RELEASE without a valid addr")
            elif t == wire.KEEPALIVE:
                s.conn.send(wire.frame(wire.KEEPALIVE))
            elif t == wire.CLOSE:
                s.conn.close(f"agent closed: {f.fields.get('reason', '')}")
            else:
                s.conn.close(f"protocol error: agent sent {wire.NAMES.get(t)}")

    def _log_flow(self, s: Session, key: tuple) -> None:
        proto, sport, real, dport = key
        entry = s.nat.flows.get(key)
        fqdn = s.nat.routes[entry[0]].fqdn if entry and entry[0] in s.nat.routes else "?"
        log.info("flow session %d %s %s :%d -> %s => %s:%d", s.id, s.identity,
                 {6: "tcp", 17: "udp", 1: "icmp"}.get(proto, str(proto)), sport, fqdn, socket.inet_ntoa(real), dport)

    def _dropped(self, s: Session) -> None:
        self.counters["dropped_spoofed"] += 1
        s.drops_logged += 1
        if s.drops_logged <= 5 or s.drops_logged % 1000 == 0:
            c = s.nat.counters
            log.warning("session %d %s: dropped a packet not from its address or not to one of its leases "
                        "(spoofed src %d, dst %d, malformed %d so far)", s.id, s.identity, c.spoofed_src,
                        c.spoofed_dst, c.malformed)

    def _hello(self, s: Session, fields: dict) -> None:
        if s.state != "hello":
            s.conn.close("protocol error: HELLO twice")
            return
        if fields.get("version") != wire.VERSION:
            s.conn.send(wire.control(wire.CLOSE, reason=f"protocol version {fields.get('version')} not supported"))
            s.conn.close(f"agent speaks protocol version {fields.get('version')!r}")
            return
        try:
            addr = ipaddress.IPv4Address(str(fields.get("tunnel_addr")))
            if addr not in self.agent_net:
                raise ValueError(f"{addr} is outside {self.agent_net}")
        except ValueError as exc:
            s.conn.close(f"protocol error: bad tunnel_addr: {exc}")
            return
        try:
            s.inside = self.pool.take()
        except RuntimeError as exc:
            s.conn.send(wire.control(wire.CLOSE, reason=str(exc)))
            s.conn.close(str(exc))
            return
        s.nat = ClientNat(addr.packed, s.inside)
        self.by_inside[s.inside] = s
        s.state = "up"
        s.conn.send(wire.control(wire.WELCOME, version=wire.VERSION, identity=s.identity, session=s.id))
        log.info("session %d %s: tunnel up, agent address %s, inside address %s", s.id, s.identity, addr,
                 socket.inet_ntoa(s.inside))

    def _lease(self, s: Session, fields: dict) -> None:
        if s.state != "up":
            s.conn.close("protocol error: LEASE before HELLO")
            return
        fqdn, addr = fields.get("fqdn"), fields.get("addr")
        try:
            name = normalize(str(fqdn))
            a = ipaddress.IPv4Address(str(addr))
            if a not in self.agent_net:
                raise ValueError(f"{a} is outside {self.agent_net}")
        except (BadName, ValueError) as exc:
            s.conn.close(f"protocol error: bad LEASE: {exc}")
            return
        asyncio.ensure_future(self._decide_lease(s, name, a))

    async def _decide_lease(self, s: Session, name: str, a: ipaddress.IPv4Address) -> None:
        ok, why = self.policy.allows(s.identity, name)
        real = None
        if ok:
            try:
                real = await self._resolve(name)
            except LookupError as exc:
                ok, why = False, str(exc)
        if s.conn.closed:
            return
        if ok:
            s.nat.allow(a.packed, name, real)
            log.info("session %d %s: lease %s %s => %s (private DNS); %s", s.id, s.identity, name, a,
                     socket.inet_ntoa(real), why)
        else:
            self.counters["leases_denied"] += 1
            log.warning("session %d %s: lease %s %s DENIED: %s", s.id, s.identity, name, a, why)
        s.conn.send(wire.control(wire.LEASE_RESULT, fqdn=name, addr=str(a), allowed=ok, reason=why))

    async def _resolve(self, name: str) -> bytes:
        now = time.monotonic()
        hit = self.dns_cache.get(name)
        if hit and hit[1] > now:
            return hit[0]
        last = None
        for server in self.cfg.private_dns:
            try:
                rec = await self.loop.run_in_executor(None, lambda: dnswire.ask(server, name, "A", timeout=2.0))
            except (OSError, TimeoutError, dnswire.BadPacket) as exc:
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

    # ---- the TUN side (hot path) -------------------------------------------
    def _on_tun(self) -> None:
        now = time.monotonic()
        fd = self.tun.fd
        busy: list[Session] = []
        by_inside = self.by_inside
        for _ in range(128):
            try:
                buf = bytearray(os.read(fd, TUN_READ))
            except BlockingIOError:
                break
            if len(buf) < 30:
                continue
            s = by_inside.get(bytes(buf[26:30]))
            if s is None or not s.nat.inbound(buf, wire.VNET_HDR_LEN, bool(buf[0] & 1), now):
                self.counters["tun_unclaimed"] += 1
                continue
            if not s.out:
                busy.append(s)
            s.out.append(wire.data_header(len(buf)))
            s.out.append(buf)
        for s in busy:
            data = b"".join(s.out)
            s.out.clear()
            if s.conn.queued > self.cfg.queue_limit:
                # One slow agent must not hold the others' packets: drop its excess like a router queue.
                s.queue_drops += 1
                self.counters["queue_drops"] += 1
                continue
            s.conn.send(data)


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
