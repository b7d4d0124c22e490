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


log = logging.getLogger("ztna.dnsclient")


class UpstreamError(Exception):
    """No usable answer from one upstream server; the message says why."""


def _question(payload: bytes) -> tuple[bytes, bytes]:
    """(ID, question count and section in lower case) that a reply must repeat to answer ``payload``.

    Read from the bytes, not through a parser: the callers have parsed the query
    already and parse the answer themselves, and this runs on every forward."""
    if len(payload) < 12:
        raise UpstreamError(f"the query itself is not DNS: {len(payload)} bytes is shorter than a header")
    off = 12
    for _ in range(struct.unpack_from("!H", payload, 4)[0]):
        while True:
            if off >= len(payload):
                raise UpstreamError("the query itself is not DNS: its question runs past the end")
            n = payload[off]
            if n & 0xC0:
                raise UpstreamError("the query itself has a compressed question; it is not forwarded")
            off += 1 + n
            if n == 0:
                break
        off += 4
    if off > len(payload):
        raise UpstreamError("the query itself is not DNS: its question is cut short")
    return payload[:2], payload[4:6] + payload[12:off].lower()


def mismatch_untrusted(reply: bytes, expect: tuple[bytes, bytes]) -> str | None:
    """None when ``reply`` answers the query ``expect`` describes (``_question``); otherwise why not.

    The ID, the QR bit and the question (compared without case, as resolvers may
    echo it in other case) decide; the rest of the reply is its reader's to judge."""
    ident, qsec = expect
    if len(reply) < 12:
        return f"not DNS: {len(reply)} bytes is shorter than a header"
    if not reply[2] & 0x80:
        return "a query, not a response"
    if reply[:2] != ident:
        return f"ID {int.from_bytes(reply[:2], 'big')}, the query's is {int.from_bytes(ident, 'big')}"
    if reply[4:6] + reply[12:10 + len(qsec)].lower() != qsec:
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
        async with asyncio.timeout(timeout):  # one deadline for the whole exchange, not a task per datagram
            await loop.sock_connect(s, (server, port))
            await loop.sock_sendall(s, payload)
            while True:
                data = await loop.sock_recv(s, 65535)
                if mismatch_untrusted(data, expect) is None:
                    return data
                ignored += 1  # not the answer (stale, forged, garbage): keep waiting for the real one
    except TimeoutError:
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
