"""DNS wire helpers shared by every role: parse untrusted messages, ask a server.

``parse_untrusted`` lets exactly one error escape (:class:`BadMessage`).
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct

from dnslib import QTYPE, RCODE, DNSRecord
from dnslib.buffer import BufferError
from dnslib.dns import DNSError


class BadMessage(Exception):
    """Bytes from the network that are not a usable DNS message, for every role that reads DNS.

    ``rcode`` is the answer a server should give (FORMERR by default; None:
    drop it, there is nothing to answer, e.g. a message shorter than a header)."""

    def __init__(self, why: str, rcode: int | None = 1):
        super().__init__(why)
        self.rcode = rcode


MAX_UDP = 4096


def parse_untrusted(data: bytes) -> DNSRecord:
    """Parse a DNS message from the network; only BadMessage escapes."""
    if len(data) < 12:
        raise BadMessage(f"DNS message of {len(data)} bytes is shorter than a header")
    try:
        return DNSRecord.parse(data)
    except (DNSError, BufferError, ValueError, IndexError, KeyError, struct.error, UnicodeError) as exc:
        raise BadMessage(f"malformed DNS message: {exc}") from exc
    except Exception as exc:  # dnslib raises assorted types on hostile input
        raise BadMessage(f"malformed DNS message: {type(exc).__name__}: {exc}") from exc


def qname_of(rec: DNSRecord) -> str:
    """The first question's name, lower case, without the trailing dot."""
    return str(rec.q.qname).rstrip(".").lower()


def ask(server: str, name: str, qtype: str = "A", *, port: int = 53, timeout: float = 2.0, tries: int = 2) -> DNSRecord:
    """Ask ``server`` one question over UDP (TCP if truncated); raise OSError/TimeoutError on no answer."""
    q = DNSRecord.question(name, qtype)
    q.header.id = random.randrange(1, 65535)
    last: Exception | None = None
    for _ in range(tries):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(timeout)
                s.sendto(q.pack(), (server, port))
                while True:
                    data, _ = s.recvfrom(MAX_UDP)
                    try:
                        r = parse_untrusted(data)
                    except BadMessage:
                        continue
                    if r.header.id == q.header.id:
                        break
            if r.header.tc:
                return ask_tcp(server, q, port=port, timeout=timeout)
            return r
        except (OSError, TimeoutError) as exc:
            last = exc
    raise TimeoutError(f"no answer from DNS server {server}:{port} for {name} {qtype}: {last}")


def ask_tcp(server: str, q: DNSRecord, *, port: int = 53, timeout: float = 2.0) -> DNSRecord:
    data = q.pack()
    with socket.create_connection((server, port), timeout=timeout) as s:
        s.sendall(struct.pack("!H", len(data)) + data)
        hdr = _recv_exact(s, 2)
        return parse_untrusted(_recv_exact(s, struct.unpack("!H", hdr)[0]))


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("DNS server closed the TCP connection early")
        buf += chunk
    return buf


def addresses(rec: DNSRecord, qtype: str = "A") -> list[str]:
    """Addresses of the answer section (following no CNAME: the server already did)."""
    want = getattr(QTYPE, qtype)
    return [str(rr.rdata) for rr in rec.rr if rr.rtype == want]


def rcode_name(rec: DNSRecord) -> str:
    return RCODE.get(rec.header.rcode)


def formerr_for(data: bytes) -> bytes | None:
    """A FORMERR reply to bytes that are no DNS message, echoing their ID; None when there is no header to echo."""
    if len(data) < 12:
        return None
    return data[:2] + struct.pack("!HHHHH", 0x8001, 0, 0, 0, 0)  # QR, opcode QUERY, rcode FORMERR


async def serve_tcp_client(reader, writer, answer, *, idle: float = 10.0, log=None) -> None:
    """Serve one DNS-over-TCP client (RFC 7766 framing): ``await answer(query bytes)`` gives the
    reply bytes, or None to close.  Slow, short or vanished clients are simply dropped."""
    import asyncio

    try:
        while True:
            hdr = await asyncio.wait_for(reader.readexactly(2), idle)
            data = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", hdr)[0]), idle)
            out = await answer(data)
            if not out:
                break
            writer.write(struct.pack("!H", len(out)) + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
        pass
    except Exception:
        if log is None:
            raise
        log.exception("internal error on a TCP query")
    finally:
        writer.close()


class UdpServer(asyncio.DatagramProtocol):
    """UDP beside ``serve_tcp_client``: each datagram answered by ``answer(data)`` (a coroutine, None = no reply)
    on a task of its own.  A bug costs one query and a log line, never the server.  With ``max_tasks`` set, a
    datagram that finds that many still waiting is dropped and ``on_busy()`` told."""

    def __init__(self, answer, *, log, max_tasks: int | None = None, on_busy=None):
        self.answer, self.log, self.max_tasks, self.on_busy = answer, log, max_tasks, on_busy
        self.tasks: set[asyncio.Task] = set()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if self.max_tasks is not None and len(self.tasks) >= self.max_tasks:
            if self.on_busy is not None:
                self.on_busy()
            return
        t = asyncio.ensure_future(self._handle(data, addr))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _handle(self, data, addr):
        try:
            out = await self.answer(data)
        except Exception:  # a bug must cost one query, never the server
            self.log.exception("internal error answering a query from %s", addr)
            return
        if out is not None:
            self.transport.sendto(out, addr)
