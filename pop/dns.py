"""The PoP's DNS forwarder for its sites' users: UDP and TCP 53 on the PoP's TUN address (a shell).

A site's users (and its router) may use the PoP's TUN address as their DNS
server: the site tunnel carries the query there like any packet, and the PoP
answers it from its cache or from ``[pop] dns_upstream``.  It exists so the
PoP sees the answers its rules' ``domain:``/``fqdn:`` destinations need:
each answer given, fresh or cached, goes to ``on_answer(msg, now)``
(pop/dnsmap.py learns the addresses from it).

Built from the project's DNS pieces rather than anew: the gateway resolver's
query parser, answer builder and upstream client (gateway/dnsfilter/wire.py,
upstream.py: random ID and source port, TCP when truncated, only a reply to
our question counts), its bounded answer cache (cache.py) and the shared TCP
framing (ztna.dnswire.serve_tcp_client).  No policy here: that is the DNS
security resolver's job (docs/dns-security.md).

Bounded against floods: at most ``max_inflight`` upstream exchanges at once
(past that, SERVFAIL), at most ``max_tcp`` TCP clients, the cache capped, and
the map behind ``on_answer`` capped (pop/dnsmap.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from gateway.dnsfilter import upstream as up_client
from gateway.dnsfilter import wire
from gateway.dnsfilter.cache import AnswerCache
from ztna.dnswire import BadMessage, UdpServer, serve_tcp_client

log = logging.getLogger("ztna.pop.dns")
SERVFAIL = wire.SERVFAIL


class PopDns:
    def __init__(self, upstream: tuple[str, int], on_answer, *, cache_size: int = 10_000, max_inflight: int = 256,
                 max_tcp: int = 64, timeout: float = 2.0):
        self.upstream = upstream
        self.on_answer = on_answer
        self.cache = AnswerCache(cache_size)
        self.max_inflight = max_inflight
        self.max_tcp = max_tcp
        self.timeout = timeout
        self.inflight = 0
        self.tcp_clients = 0
        self.counters = {"queries": 0, "cache_answers": 0, "upstream_answers": 0, "servfail": 0, "refused": 0,
                         "formerr": 0, "busy": 0}
        self.udp = None
        self.tcp = None

    async def answer_untrusted(self, data: bytes, *, tcp: bool) -> bytes | None:
        """The reply to one query from a site's user (None: nothing to answer)."""
        try:
            q = wire.parse_query_untrusted(data)
        except BadMessage as exc:
            if exc.rcode is None:
                return None
            self.counters["formerr"] += 1
            ident, flags, question = wire.question_of_untrusted(data)
            return wire.error_answer(ident, flags, question, exc.rcode)
        self.counters["queries"] += 1
        if q.qclass != wire.CLASS_IN:
            self.counters["refused"] += 1
            return wire.refusal(q)
        key = (q.qname, q.qtype, q.qclass)
        now = time.monotonic()
        hit = self.cache.get(key, now)
        if hit is not None:
            self.counters["cache_answers"] += 1
            return self._out(q, wire.cached_answer(q, hit.reply, hit.age(now)), tcp, now)
        if self.inflight >= self.max_inflight:
            self.counters["busy"] += 1
            return wire.refusal(q, SERVFAIL)
        self.inflight += 1
        try:
            got = await up_client.resolve([self.upstream], q.question, timeout=self.timeout, negative_ttl=60)
        finally:
            self.inflight -= 1
        if got is None:
            self.counters["servfail"] += 1
            return wire.refusal(q, SERVFAIL)
        now = time.monotonic()
        self.cache.put(key, got, now)
        self.counters["upstream_answers"] += 1
        return self._out(q, wire.cached_answer(q, got, 0), tcp, now)

    def _out(self, q, msg: bytes, tcp: bool, now: float) -> bytes:
        try:
            if q.qtype == wire.T_A:  # the rules route IPv4: only A answers teach the map
                self.on_answer(msg, now)
        except Exception:  # the map is a side effect: a bug there must not cost the answer
            log.exception("learning from the answer for %s failed", q.qname)
        if len(msg) > q.limit(tcp):
            return wire.truncated(q)
        return msg

    async def start(self, listen: str, port: int = 53) -> None:
        loop = asyncio.get_running_loop()
        us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ts = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            us.bind((listen, port))
            ts.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ts.bind((listen, port))
            ts.listen(64)
        except OSError:
            us.close()
            ts.close()
            raise
        self.udp, _ = await loop.create_datagram_endpoint(lambda: UdpServer(
            lambda data: self.answer_untrusted(data, tcp=False), log=log,
            max_tasks=4 * self.max_inflight, on_busy=self._busy), sock=us)  # queries waiting: bounded too
        self.tcp = await asyncio.start_server(self._tcp, sock=ts)
        log.info("DNS for the sites on %s:%d (UDP and TCP), forwarding to %s:%d", listen, port, *self.upstream)

    async def _tcp(self, reader, writer) -> None:
        if self.tcp_clients >= self.max_tcp:
            self.counters["busy"] += 1
            writer.close()
            return
        self.tcp_clients += 1
        try:
            await serve_tcp_client(reader, writer, lambda data: self.answer_untrusted(data, tcp=True), log=log)
        finally:
            self.tcp_clients -= 1

    def _busy(self) -> None:
        self.counters["busy"] += 1

    def close(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()
