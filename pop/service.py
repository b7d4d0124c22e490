"""The running PoP: port 443, routed by SNI to agent tunnels and connector tunnels (docs/pop.md).

The shell accepts TCP, peeks at the ClientHello (the bytes stay for the TLS
handshake, as the gateway's agentless front does), completes mutual TLS, takes
the identity from the client certificate and hands everything else to
:class:`pop.relay.Relay`, performing the commands it returns.

With ``[agentless]`` a browser's SNI naming one of its apps goes to the
gateway's agentless front (gateway/agentless/server.py), run here with the
PoP's ``[policy]``; its dial hook opens a ``stream`` channel on a live
connector tunnel instead of a TCP connection, and the front's TLS to the app
runs over one end of a socketpair whose other end is joined to that channel
(ztna/chansock.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import socket
import ssl
import time
from pathlib import Path

from cryptography import x509

from gateway.agentless.route import Refuse
from gateway.agentless.server import _alert_and_close, _peek
from gateway.pending import HandshakeGate
from ztna import mux, pki, tlswire, wire
from ztna.chansock import ChannelSocket
from ztna.config import ConfigError
from ztna.crl import CrlWatch
from ztna.loglimit import LogLimiter, suffix
from ztna.biotls import BioTLS
from ztna.tlsconn import accept_ready, server_context
from ztna.tun import read_batch, write_packets
from ztna.tunnelcmds import Log

from . import relay as r
from .config import PopConfig
from .policy import PopPolicy
from . import dnsmap
from . import sitehub as sh
from .dnsmap import DnsMap
from .route import Agent, Alias, Site, route

log = logging.getLogger("ztna.pop")
SITE_TABLE = "ztna_pop_egress"
flowlog = logging.getLogger("ztna.pop.flow")


class Pop:
    def __init__(self, cfg: PopConfig, policy: PopPolicy):
        self.cfg = cfg
        self.relay = r.Relay(policy, keepalive=cfg.keepalive, queue_limit=cfg.queue_limit, window=cfg.window)
        self.ctx = server_context(cfg.ca, cfg.cert, cfg.key)
        self.ids = itertools.count(1)
        self.agents: dict[int, BioTLS] = {}
        self.connectors: dict[int, BioTLS] = {}
        self.sites: dict[int, BioTLS] = {}
        # Site routers (ztna site run): their LANs' packets through the PoP's TUN and egress (pop/sitehub.py).
        self.hub = sh.SiteHub({i: sh.SiteDef(e.name, e.lan) for i, e in cfg.sites.items()},
                              keepalive=cfg.keepalive, queue_limit=cfg.queue_limit,
                              decide=self._decide) if cfg.site_name else None
        # The network rules and internet firewall (pop/netrules.py): each new flow's exit; SIGHUP reads them again.
        self.rules = cfg.rule_set
        # With [pop] dns_upstream the PoP answers its sites' DNS (pop/dns.py) and learns which names each
        # address was answered for (pop/dnsmap.py): the rules' domain destinations, and nft sets of them.
        self.dmap = DnsMap(cfg.dns_max_entries) if cfg.dns_upstream else None
        self.names_of = self.dmap.names if self.dmap is not None else None
        self.dns = None
        self.rule_sets = False  # table ip ztna_pop_rules is loaded
        self.set_flush = None
        self.tun_ip = cfg.tun_address.split("/")[0]
        self.tun = None
        self.refusal_log = LogLimiter(interval=10.0)
        self.flow_file = open(cfg.flow_log, "a", buffering=1) if cfg.flow_log else None
        self.front = None
        self.streams: dict[tuple[int, int], dict] = {}  # (connector, channel) -> an agentless stream's state
        if cfg.agentless is not None:
            from gateway.agentless.server import Front

            self.front = Front(cfg.agentless, policy.agents, self._no_resolve, dial=self._dial_stream)
        self.aliases = frozenset(cfg.alias_names) | (self.front.names if self.front is not None else frozenset())
        # Revocation as the gateway does it (ztna/crl.py): checked after each handshake, and the file
        # re-read each tick so a revoked agent's or connector's live tunnel ends within a second or two.
        self.crl = CrlWatch(cfg.crl, x509.load_pem_x509_certificate(Path(cfg.ca).read_bytes())) if cfg.crl else None
        if self.front is not None:
            self.front.crl = self.crl
        self.serials: dict[int, tuple[int, str, str]] = {}  # connection id -> (serial, identity, agent|connector)
        # Connections between accept and an established tunnel (the ClientHello peek and the handshake):
        # bounded in total and per source, with a shorter deadline under pressure (as the gateway's).
        self.gate = HandshakeGate(max_total=cfg.max_pending, max_per_source=cfg.max_pending_per_source,
                                  timeout=cfg.handshake_timeout, pressure_timeout=cfg.pressure_handshake_timeout)

    async def run(self) -> None:
        prof = _profiler()
        try:
            await self._run()
        finally:
            if prof is not None:
                prof.disable()
                prof.dump_stats(os.environ["ZTNA_POP_PROFILE"])
                log.info("cProfile of this run written to %s", os.environ["ZTNA_POP_PROFILE"])

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_rules)
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._poll_crl()
            if self.hub is not None:
                await self._start_sites(loop)
            lsock.bind((self.cfg.listen, self.cfg.port))
            lsock.listen(256)
            lsock.setblocking(False)
            loop.add_reader(lsock.fileno(), self._on_accept, lsock)
            ticker = asyncio.create_task(self._tick())
            log.info("PoP listening on %s:%d: agents as %s, connectors as %s (client certificates from %s)",
                     self.cfg.listen, self.cfg.port, self.cfg.tunnel_name, self.cfg.connector_name, self.cfg.ca)
            await stop.wait()
            ticker.cancel()
        finally:
            try:
                loop.remove_reader(lsock.fileno())
            except (ValueError, OSError):
                pass
            lsock.close()
            for conn in list(self.agents.values()) + list(self.connectors.values()) + list(self.sites.values()):
                conn.close("PoP stopping")
            if self.hub is not None:
                self._stop_sites(loop)
            log.info("PoP stopped; counters: %s", dict(self.relay.counters))
            if self.flow_file is not None:
                self.flow_file.close()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._poll_crl()
            self._perform(self.relay.tick(time.monotonic()))
            if self.hub is not None:
                self._perform(self.hub.tick(time.monotonic()))
            if self.dmap is not None:
                self.dmap.expire(time.monotonic())

    def _poll_crl(self) -> None:
        if self.crl is None:
            return
        added, refused = self.crl.refresh(log)
        self.relay.counters["crl_errors"] += refused
        for cid, (serial, identity, what) in list(self.serials.items()):
            if serial in added:
                conn = self._table(what)[0].get(cid)
                if conn is not None:
                    self.relay.counters["tunnels_revoked"] += 1
                    log.warning("%s %d %s: ended: certificate revoked (serial %x)", what, cid, identity, serial)
                    conn.send(wire.control(wire.CLOSE, reason="certificate revoked"))
                    conn.close("certificate revoked")

    # ---- accepting ------------------------------------------------------------------------
    def _on_accept(self, lsock: socket.socket) -> None:
        for sock, addr in accept_ready(lsock):
            peer = f"{addr[0]}:{addr[1]}"
            why = self.gate.admit(addr[0])
            if why is not None:
                # Refused before any TLS state exists: a flood costs an accept and a close each.
                self.relay.counters["handshakes_refused"] += 1
                self._refused(peer, why, "busy")
                sock.close()
                continue
            asyncio.ensure_future(self._handshake(sock, peer, addr[0], self.gate.timeout()))

    def _refused(self, peer: str, why: str, kind: str) -> None:
        # One line per source and kind of refusal per 10 s: a flood cannot fill the log, and one
        # source's garbage does not hide its next, different refusal.
        self.relay.counters["connections_refused"] += 1
        quiet = self.refusal_log.allow(f"{peer.rpartition(':')[0]} {kind}", time.monotonic())
        if quiet is not None:
            log.warning("refused %s: %s%s", peer, why, suffix(quiet))

    async def _handshake(self, sock: socket.socket, peer: str, source: str, timeout: float) -> None:
        try:
            await self._handshake_routed(sock, peer, timeout)
        finally:
            self.gate.done(source)

    async def _handshake_routed(self, sock: socket.socket, peer: str, timeout: float) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hello, error = await _peek(sock, timeout)
        where = route(hello, tunnel_name=self.cfg.tunnel_name, connector_name=self.cfg.connector_name,
                      aliases=self.aliases, error=error, site_name=self.cfg.site_name)
        if isinstance(where, Alias):
            if self.front is not None and where.name in self.front.apps:
                await self.front.claim(sock, peer, timeout)  # peeks again: the ClientHello is still queued
                return
            where = self.agentless_alias(sock, peer, where.name)
        if isinstance(where, Refuse):
            self._refused(peer, f"on port 443: {where.reason} (TLS alert {where.alert})", "route")
            _alert_and_close(sock, where.alert)
            return
        what = "agent" if isinstance(where, Agent) else "site" if isinstance(where, Site) else "connector"
        # OpenSSL on memory buffers: one recv and one send per wake-up, not two syscalls per record (ztna/biotls.py)
        conn = BioTLS(sock, self.ctx, server_side=True, name=peer)
        tls = conn.tls
        try:
            await conn.handshake(timeout)
            identity = pki.identity_from_peercert(tls.getpeercert())
            serial = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number
        except (ssl.SSLError, OSError, asyncio.TimeoutError, pki.PKIError, ValueError) as exc:
            self.relay.counters["tls_refused"] += 1
            self._refused(peer, f"{what} TLS: {_tls_reason(exc)}", what)
            conn.close()
            return
        if self.crl is not None and self.crl.revoked(serial):
            self.relay.counters["tls_refused"] += 1
            self.relay.counters["revoked_refused"] += 1
            self._refused(peer, f"{what} TLS: certificate of {identity} (serial {serial:x}) is revoked", what)
            conn.send(wire.control(wire.CLOSE, reason="certificate revoked"))
            conn.close()
            return
        now = time.monotonic()
        cid = next(self.ids)
        self.serials[cid] = (serial, identity, what)
        if isinstance(where, Agent):
            self.agents[cid] = conn
            conn.on_data = lambda data: self._perform(self.relay.agent_data(cid, data, time.monotonic()))
            conn.on_close = lambda reason: self._gone("agent", cid, reason)
            conn.on_blocked = lambda blocked: blocked or self._perform(self.relay.agent_drained(cid))
            self._perform(self.relay.agent_up(cid, identity, now))
        elif what == "site":
            self.sites[cid] = conn
            conn.on_data = lambda data: self._perform(self.hub.site_data(cid, data, time.monotonic(), self._site_queued))
            conn.on_close = lambda reason: self._gone("site", cid, reason)
            self._perform(self.hub.site_up(cid, identity, peer, now))
        else:
            self.connectors[cid] = conn
            conn.on_data = lambda data: self._connector_data(cid, data)
            conn.on_close = lambda reason: self._gone("connector", cid, reason)
            self._perform(self.relay.connector_up(cid, identity, peer, now))
        log.info("%s %d from %s: identity %s, %s", what, cid, peer, identity, tls.version())
        conn.start_reading()

    def agentless_alias(self, sock: socket.socket, peer: str, name: str) -> Refuse:
        """An alias name that no ``[[agentless.app]]`` serves: refused with a log line that says so."""
        return Refuse(f"SNI {name} is an alias name but no [[agentless.app]] of this PoP serves it",
                      tlswire.ALERT_UNRECOGNIZED_NAME)

    # ---- agentless streams (the front's dial hook) ------------------------------------------
    @staticmethod
    async def _no_resolve(name: str) -> bytes:
        raise LookupError("the PoP has no private DNS: its apps are reached through connectors")

    async def _dial_stream(self, app, identity: str) -> tuple[socket.socket, str]:
        """A stream channel to ``app`` for ``identity``; returns our end of a socketpair joined to it."""
        cid, ch, cmds = self.relay.open_stream(identity, app.name, app.name, app.upstream_port)
        link = self.relay.connectors[cid]
        st = {"opened": asyncio.get_running_loop().create_future(), "identity": identity, "resource": app.name,
              "connector": link.identity, "cs": None}
        self.streams[(cid, ch)] = st
        self._perform(cmds)
        mine = theirs = None
        try:
            await st["opened"]
            mine, theirs = socket.socketpair()
        except BaseException:
            self.streams.pop((cid, ch), None)
            self.relay.stream_gone(cid, ch)
            conn = self.connectors.get(cid)
            if conn is not None and cid in self.relay.connectors:
                fr = link.mux.close(ch, "the PoP gave up waiting", reset=True)
                if fr:
                    conn.send(fr)
            raise
        send = self._connector_sender(cid)
        cs = ChannelSocket(theirs, link.mux, ch, send, name=f"agentless {identity} -> {app.name} (connector "
                           f"{link.identity}, channel {ch})", on_done=lambda c, why: self._stream_done(cid, ch, why))
        st["cs"] = cs
        cs.start()
        return mine, f"connector {link.identity} channel {ch}"

    def _connector_sender(self, cid: int):
        def send(data: bytes) -> None:
            conn = self.connectors.get(cid)
            if conn is not None and data:
                conn.send(data)
        return send

    def _stream_event(self, c: r.StreamEvent) -> None:
        st = self.streams.get((c.connector, c.ch))
        if st is None:
            return
        ev, cs = c.event, st["cs"]
        if cs is None:  # still waiting for OPENED
            fut = st["opened"]
            if not fut.done():
                if type(ev) is mux.Accepted:
                    fut.set_result(True)
                elif type(ev) is mux.Closed:
                    self.streams.pop((c.connector, c.ch), None)
                    self.relay.stream_gone(c.connector, c.ch)
                    log.warning("agentless %s -> %s: the connector %s refused the stream: %s", st["identity"],
                                st["resource"], st["connector"], ev.reason)
                    fut.set_exception(OSError(f"connector {st['connector']} refused: {ev.reason}"))
            return
        if type(ev) is mux.Data:
            cs.deliver(ev.data)
        elif type(ev) is mux.Closed:
            cs.closed_by_peer(ev.reason, reset=ev.reset, half=ev.half)

    def _stream_done(self, cid: int, ch: int, reason: str) -> None:
        st = self.streams.pop((cid, ch), None)
        self.relay.stream_gone(cid, ch)
        if st is None:
            return
        cs = st["cs"]
        self._perform([r.FlowLog({"event": "agentless", "identity": st["identity"], "resource": st["resource"],
                                  "connector": st["connector"], "connector_id": cid, "channel": ch,
                                  "bytes_up": cs.bytes_up, "bytes_down": cs.bytes_down, "end": reason})])

    def _streams_credit(self, cid: int) -> None:
        for (c, _), st in list(self.streams.items()):
            if c == cid and st["cs"] is not None:
                st["cs"].credit()

    def _connector_data(self, cid: int, data: bytes) -> None:
        self._perform(self.relay.connector_data(cid, data, time.monotonic(), self._agent_queued))
        if self.streams:
            self._streams_credit(cid)  # a CREDIT may have come: paused streams read again

    # ---- network rules ([pop] rules) -------------------------------------------------------
    def _decide(self, site: str, proto: int, src: str, dst: str, dport: int) -> sh.Exit:
        if self.rules is None or dst == self.tun_ip:  # the PoP's own address (its DNS for the sites) stays here
            return sh.Exit()
        # "up": the gateway sites whose tunnel is connected; a backhaul to another takes its fallback.
        return self.rules.decide(site, proto, src, dst, dport, time.monotonic(), up=self.hub.by_site,
                                 names_of=self.names_of)

    def reload_rules(self) -> bool:
        """SIGHUP: read ``[pop] rules`` again; a bad file is refused and logged, the running rules stay."""
        from .config import load_rules

        if not self.cfg.rules:
            log.warning("SIGHUP: [pop] rules names no rules file; nothing to reload")
            return False
        try:
            new = load_rules(self.cfg)
        except ConfigError as exc:
            self.relay.counters["rules_reloads_refused"] += 1
            kept = f"{len(self.rules)} rules" if self.rules is not None else "no rules"
            log.error("rules reload refused: %s; the running rules stay (%s)", exc, kept)
            return False
        self.rules = new
        self.relay.counters["rules_reloads"] += 1
        log.info("rules reloaded from %s: %d firewall rule(s), %d network rule(s); new flows take them",
                 self.cfg.rules, len(new.firewall), len(new.network))
        if self.dmap is not None:
            gone = self.dmap.keep_only(new.name_matches)
            if gone:
                log.info("DNS map: %d entries for names no rule covers now dropped", gone)
            if self.rule_sets or self.tun is not None:
                self._load_rule_sets()
        return True

    # ---- the sites' DNS and the rule sets (pop/dns.py, pop/dnsmap.py) ---------------------------
    def _load_rule_sets(self) -> None:
        """(Re)create table ip ztna_pop_rules for the rules in force, then put every live entry in it."""
        from ztna import nft

        text = dnsmap.table_text(self.rules, 2 * self.cfg.dns_max_entries)
        try:
            if text is None:
                nft.delete_table(dnsmap.TABLE)
                self.rule_sets = False
                return
            nft.replace_table(dnsmap.TABLE, text, what="the rules' DNS sets")
        except nft.NftError as exc:
            log.error("%s; domain rules still match in the PoP, but not in nft sets", exc)
            self.rule_sets = False
            return
        self.rule_sets = True
        self.dmap.dirty = set(self.dmap.by_addr)
        self._flush_sets()

    def _dns_answer(self, msg: bytes, now: float) -> None:
        if self.rules is None:
            return
        names, addrs = dnsmap.records_of(msg)
        self._perform(self.dmap.answered(names, addrs, now, self.rules.name_matches))
        if self.dmap.dirty and self.rule_sets and self.set_flush is None:
            # one nft transaction per 0.2 s at most, whatever the answer rate
            self.set_flush = asyncio.get_running_loop().call_later(0.2, self._flush_sets)

    def _flush_sets(self) -> None:
        from ztna import nft

        self.set_flush = None
        dirty, self.dmap.dirty = self.dmap.dirty, set()
        if not self.rule_sets or not dirty or self.rules is None:
            return
        text = dnsmap.elements_text(self.dmap, dirty, self.rules, time.monotonic())
        if not text:
            return
        try:
            nft.apply(text, what=f"{len(dirty)} address(es) for the rules' DNS sets")
        except nft.NftError as exc:
            self.relay.counters["rule_set_errors"] += 1
            quiet = self.refusal_log.allow("rule sets", time.monotonic())
            if quiet is not None:
                log.warning("%s%s", exc, suffix(quiet))

    # ---- sites (ztna site run) ------------------------------------------------------------
    async def _start_sites(self, loop) -> None:
        from ztna import nft
        from ztna.tun import Tun

        if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "1":
            raise OSError("[pop] site_name needs IPv4 forwarding: sysctl -w net.ipv4.ip_forward=1")
        lans = [str(n) for e in self.cfg.sites.values() for n in e.lan]
        # pyroute2 runs its own loop: configure the TUN off this one (as the agent does)
        self.tun = await loop.run_in_executor(None, lambda: Tun(self.cfg.tun, [self.cfg.tun_address], lans))
        nat = (f"snat to {self.cfg.egress_address}" if self.cfg.egress_address else "masquerade")
        nft.replace_table(SITE_TABLE, (
            f"table ip {SITE_TABLE} {{\n  chain egress {{\n    type nat hook postrouting priority 100; policy accept;\n"
            + "".join(f"    oifname \"{self.cfg.egress_interface}\" ip saddr {n} {nat}\n" for n in lans)
            + "  }\n}\n"), what="the PoP's egress NAT")
        loop.add_reader(self.tun.fd, self._on_tun)
        if self.dmap is not None:
            from .config import dns_upstream
            from .dns import PopDns

            self._load_rule_sets()
            self.dns = PopDns(dns_upstream(self.cfg), self._dns_answer)
            await self.dns.start(self.tun_ip, 53)
        log.info("sites as %s: TUN %s routes %s; internet traffic leaves %s as %s", self.cfg.site_name,
                 self.tun.name, ", ".join(lans) or "nothing yet", self.cfg.egress_interface,
                 self.cfg.egress_address or "its address")

    def _stop_sites(self, loop) -> None:
        from ztna import nft

        self._perform(self.hub.flush_flows("PoP stopping"))
        log.info("sites stopped; counters: %s", dict(self.hub.counters))
        if self.dns is not None:
            self.dns.close()
        if self.set_flush is not None:
            self.set_flush.cancel()
        if self.dmap is not None:
            nft.delete_table(dnsmap.TABLE)
        if self.tun is not None:
            try:
                loop.remove_reader(self.tun.fd)
            except (ValueError, OSError):
                pass
            self.tun.close()
        nft.delete_table(SITE_TABLE)

    def _on_tun(self) -> None:
        bufs = read_batch(self.tun.fd)
        if bufs:
            self._perform(self.hub.tun_packets(bufs, time.monotonic(), self._site_queued))

    # ---- a tunnel's connection ends ----------------------------------------------------------
    def _table(self, what: str):
        """(the open connections of this kind, the core's call for one that ended)."""
        if what == "agent":
            return self.agents, self.relay.agent_closed
        if what == "connector":
            return self.connectors, self.relay.connector_closed
        return self.sites, self.hub.site_closed  # only a PoP with [sites] has site connections (and a hub)

    def _queued(self, what: str, cid: int) -> int:
        conn = self._table(what)[0].get(cid)
        return conn.queued if conn is not None else 0

    def _agent_queued(self, aid: int) -> int:
        return self._queued("agent", aid)

    def _site_queued(self, sid: int) -> int:
        return self._queued("site", sid)

    def _gone(self, what: str, cid: int, reason: str) -> None:
        conns, closed = self._table(what)
        self.serials.pop(cid, None)
        conn = conns.pop(cid, None)
        self._perform(closed(cid, reason))
        if conn is not None:
            log.info("%s %d closed: %s; %d bytes in, %d out", what, cid, reason, conn.bytes_in, conn.bytes_out)

    # ---- performing -----------------------------------------------------------------------
    def _perform(self, cmds: list) -> None:
        for c in cmds:
            t = type(c)
            if t is r.SendAgent:
                conn = self.agents.get(c.agent)
                if conn is not None:
                    conn.send(c.data)
            elif t is r.SendConnector:
                conn = self.connectors.get(c.connector)
                if conn is not None and c.data:
                    conn.send(c.data)
            elif t is r.PauseAgent:
                conn = self.agents.get(c.agent)
                if conn is not None:
                    conn.pause_reading()
            elif t is r.ResumeAgent:
                conn = self.agents.get(c.agent)
                if conn is not None:
                    conn.resume_reading()
            elif t is r.CloseAgent:
                conn = self.agents.get(c.agent)
                if conn is not None:
                    conn.close(c.reason)
            elif t is r.CloseConnector:
                conn = self.connectors.get(c.connector)
                if conn is not None:
                    conn.close(c.reason)
            elif t is sh.SendSite:
                conn = self.sites.get(c.site)
                if conn is not None:
                    conn.send(c.data)
            elif t is sh.CloseSite:
                conn = self.sites.get(c.site)
                if conn is not None:
                    conn.close(c.reason)
            elif t is sh.WriteTun:
                write_packets(self.tun.fd, c.packets, self.hub.counters, log)
            elif t is r.FlowLog:
                line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **c.fields},
                                  separators=(",", ":"))
                flowlog.info("%s", line)
                if self.flow_file is not None:
                    self.flow_file.write(line + "\n")
            elif t is r.StreamEvent:
                self._stream_event(c)
            elif t is Log:
                log.log(c.level, "%s", c.message)
            else:
                raise TypeError(f"unknown relay command {c!r}")


def _profiler():
    """ZTNA_POP_PROFILE=FILE (for the bench): a running cProfile.Profile written to FILE when the PoP stops."""
    if not os.environ.get("ZTNA_POP_PROFILE"):
        return None
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    return prof


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
