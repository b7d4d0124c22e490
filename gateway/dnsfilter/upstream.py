"""Forwarding to the configured upstreams: UDP first, TCP when the reply is truncated.

Each query uses a fresh UDP socket (random source port) and a random ID, and
only a reply from the upstream's own address with our ID and our question is
accepted.  Upstreams are tried in order; the first usable reply wins.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct

from . import wire
from .wire import BadMessage, Upstream

log = logging.getLogger("ztna.dns.upstream")


class _OneShot(asyncio.DatagramProtocol):
    def __init__(self, server: tuple[str, int], qid: int, question: bytes, negative_ttl: int):
        self.server, self.qid, self.question, self.negative_ttl = server, qid, question, negative_ttl
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    def datagram_received(self, data, addr):
        if self.done.done() or addr[0] != self.server[0] or addr[1] != self.server[1]:
            return
        try:
            self.done.set_result(wire.parse_reply_untrusted(data, self.qid, self.question, negative_ttl=self.negative_ttl))
        except BadMessage as exc:
            log.info("ignored a reply from %s:%d: %s", *addr, exc)

    def error_received(self, exc):
        if not self.done.done():
            self.done.set_exception(exc)


async def ask_udp(server: tuple[str, int], question: bytes, timeout: float, negative_ttl: int) -> Upstream:
    loop = asyncio.get_running_loop()
    qid = secrets.randbelow(65536)
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _OneShot(server, qid, question, negative_ttl), remote_addr=server)
    try:
        transport.sendto(wire.query_bytes(qid, question))
        return await asyncio.wait_for(proto.done, timeout)
    finally:
        transport.close()


async def ask_tcp(server: tuple[str, int], question: bytes, timeout: float, negative_ttl: int) -> Upstream:
    qid = secrets.randbelow(65536)
    msg = wire.query_bytes(qid, question, udp_size=65535)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*server), timeout)
    try:
        writer.write(struct.pack("!H", len(msg)) + msg)
        await writer.drain()
        ln = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), timeout))[0]
        data = await asyncio.wait_for(reader.readexactly(ln), timeout)
        return wire.parse_reply_untrusted(data, qid, question, negative_ttl=negative_ttl)
    finally:
        writer.close()


async def resolve(upstreams: list[tuple[str, int]], question: bytes, *, timeout: float, negative_ttl: int) -> Upstream | None:
    """Ask each upstream in turn; None when none gave a usable reply."""
    for server in upstreams:
        try:
            up = await ask_udp(server, question, timeout, negative_ttl)
            if up.truncated:
                up = await ask_tcp(server, question, timeout, negative_ttl)
            return up
        except (OSError, asyncio.TimeoutError, BadMessage, asyncio.IncompleteReadError) as exc:
            log.warning("upstream %s:%d gave no usable answer: %s", *server, exc or type(exc).__name__)
    return None
