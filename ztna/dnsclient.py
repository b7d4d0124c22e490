"""One async DNS exchange with one upstream server, over UDP or TCP.

Used by the agent's stub (names that are not private applications) and by the
roaming client's forwarder.  The agent's forwarder used to hand back the first
datagram that came to its socket, whatever its ID; anyone able to send to the
port could answer first (issue 13).  Here a reply counts only if it is a
response (QR set) with the query's ID and the query's question (name compared
without case, type and class); over UDP anything else is ignored and the wait
goes on until the deadline, over TCP (a private stream) it is an error.

Every failure is one :class:`UpstreamError`: time-out, refused, unreachable,
a reply that is not DNS or not for this query.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct

from .dnswire import BadMessage, parse_untrusted

log = logging.getLogger("ztna.dnsclient")


class UpstreamError(Exception):
    """No usable answer from one upstream server; the message says why."""


def _question(payload: bytes) -> tuple:
    """(ID, question) a reply must carry to answer ``payload``."""
    try:
        q = parse_untrusted(payload)
    except BadMessage as exc:
        raise UpstreamError(f"the query itself is not DNS: {exc}") from None
    qs = tuple((str(x.qname).lower(), x.qtype, x.qclass) for x in q.questions)
    return q.header.id, qs


def mismatch_untrusted(reply: bytes, expect: tuple) -> str | None:
    """None when ``reply`` answers the query ``expect`` describes; otherwise why not."""
    try:
        r = parse_untrusted(reply)
    except BadMessage as exc:
        return f"not DNS: {exc}"
    ident, qs = expect
    if not r.header.qr:
        return "a query, not a response"
    if r.header.id != ident:
        return f"ID {r.header.id}, the query's is {ident}"
    got = tuple((str(x.qname).lower(), x.qtype, x.qclass) for x in r.questions)
    if got != qs:
        return "a question other than the query's"
    return None


def _socket(kind: int, iface: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, kind)
    s.setblocking(False)
    if iface:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                # The interface the server was learned from is gone: the kernel's
                # route is the best remaining path, so do not fail the query.
                log.warning("interface %s is gone; sending by the routing table instead", iface)
            else:
                s.close()
                raise UpstreamError(f"cannot bind to {iface}: {exc}") from None
    return s


async def query_udp(server: str, payload: bytes, *, port: int = 53, iface: str = "", timeout: float = 1.5) -> bytes:
    """Send ``payload`` over UDP (out of ``iface`` if given); the first reply that answers it."""
    expect = _question(payload)
    loop = asyncio.get_running_loop()
    s = _socket(socket.SOCK_DGRAM, iface)
    ignored = 0
    try:
        await loop.sock_connect(s, (server, port))
        await loop.sock_sendall(s, payload)
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise asyncio.TimeoutError
            data = await asyncio.wait_for(loop.sock_recv(s, 65535), left)
            if mismatch_untrusted(data, expect) is None:
                return data
            ignored += 1  # not the answer (stale, forged, garbage): keep waiting for the real one
    except asyncio.TimeoutError:
        raise UpstreamError(f"no answer from {server} within {timeout:g}s"
                            + (f" ({ignored} replies for another query ignored)" if ignored else "")) from None
    except OSError as exc:
        raise UpstreamError(f"{server}: {exc.strerror or exc}") from None
    finally:
        s.close()


async def query_tcp(server: str, payload: bytes, *, port: int = 53, iface: str = "", timeout: float = 1.5) -> bytes:
    """Send ``payload`` over TCP (out of ``iface`` if given); the reply, which must answer it."""
    expect = _question(payload)
    loop = asyncio.get_running_loop()
    s = _socket(socket.SOCK_STREAM, iface)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(s, (server, port))
            await loop.sock_sendall(s, struct.pack("!H", len(payload)) + payload)
            buf = b""
            while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                chunk = await loop.sock_recv(s, 65535)
                if not chunk:
                    raise UpstreamError(f"{server} closed the connection before a full reply")
                buf += chunk
    except TimeoutError:
        raise UpstreamError(f"no answer from {server} (tcp) within {timeout:g}s") from None
    except OSError as exc:
        raise UpstreamError(f"{server} (tcp): {exc.strerror or exc}") from None
    finally:
        s.close()
    data = buf[2:2 + struct.unpack("!H", buf[:2])[0]]
    why = mismatch_untrusted(data, expect)
    if why is not None:
        raise UpstreamError(f"{server} (tcp) answered with {why}")
    return data
