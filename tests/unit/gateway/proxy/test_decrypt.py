"""gateway.proxy.decrypt.TLSSide: its socket waits through the splice reactor (no root, socketpairs)."""

import asyncio
import contextlib
import socket
import ssl
import time

import pytest

from gateway.proxy.decrypt import TLSSide
from gateway.proxy.reactor import IN, OUT, TICK, SpliceReactor, new_loop


def run(coro):
    with asyncio.Runner(loop_factory=new_loop) as r:
        return r.run(coro)


def _side(r: SpliceReactor, sock: socket.socket, idle: float = 300.0) -> TLSSide:
    # A client-side TLS object that is never driven: the tests feed and read its BIOs directly.
    return TLSSide(r, sock, ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), server_side=False,
                   server_hostname="decrypt.example.com", idle=idle)


@contextlib.asynccontextmanager
async def _rig(idle: float = 300.0):
    """A reactor on the running loop and a TLS side on one end of a socketpair (``a``, non-blocking),
    the peer ``b``; all closed afterwards, on a failure too."""
    r = SpliceReactor(asyncio.get_running_loop())
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        yield r, a, b, _side(r, a, idle)
    finally:
        r.close()
        a.close()
        b.close()


def _idle(r: SpliceReactor, side: TLSSide) -> bool:
    """Nothing watched or due for this side: every wait is over."""
    return side.mask == 0 and side.fd not in r.cbs and r.deadlines == {} and side.waits == [None, None]


def test_a_read_waits_for_bytes_then_for_the_end():
    async def main():
        async with _rig() as (r, a, b, side):
            asyncio.get_running_loop().call_later(0.05, b.send, b"record")
            assert await side._fill() is True and side.inc.read() == b"record"
            assert _idle(r, side)
            b.close()
            assert await side._fill() is False and side.inc.eof
            assert _idle(r, side)

    run(main())


def test_a_wait_times_out_at_its_deadline_and_leaves_nothing_behind():
    async def main():
        async with _rig(idle=0.2) as (r, a, b, side):
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await side._fill()  # the idle timeout
            took = time.monotonic() - t0
            assert 0.2 <= took <= 0.2 + TICK + 0.2, took
            assert _idle(r, side)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await side.handshake(0.3)  # the client's hello goes out, the server never answers
            assert 0.3 <= time.monotonic() - t0 <= 0.3 + TICK + 0.2
            assert b.recv(65536)[:1] == b"\x16"  # its ClientHello was sent first
            assert _idle(r, side)

    run(main())


def test_a_cancelled_wait_leaves_nothing_watched():
    async def main():
        async with _rig() as (r, a, b, side):
            t = asyncio.create_task(side._fill())
            await asyncio.sleep(0.02)
            assert side.fd in r.cbs and side.waits[0] is not None  # waiting
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            assert _idle(r, side)

    run(main())


def test_a_read_and_a_blocked_write_wait_at_once_and_the_bytes_keep_their_order():
    async def main():
        async with _rig() as (r, a, b, side):
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            b.setblocking(False)
            reader = asyncio.create_task(side._fill())
            first, second = bytes(range(256)) * 1024, b"after" * 1000
            side.out.write(first)
            writer = asyncio.create_task(side.flush())  # more than the buffer holds: waits to write
            await asyncio.sleep(0.02)
            assert side.wlock.locked() and side.mask == IN | OUT  # both waits on the one fd
            side.out.write(second)
            later = asyncio.create_task(side.flush())  # queued behind the first, never interleaved
            got = b""
            end = time.monotonic() + 5
            while len(got) < len(first) + len(second) and time.monotonic() < end:
                try:
                    got += b.recv(65536)
                except BlockingIOError:
                    await asyncio.sleep(0.002)
            await asyncio.wait_for(asyncio.gather(writer, later), 2)
            assert got == first + second
            assert not reader.done()  # the read still waits, on the same fd
            b.send(b"reply")
            assert await asyncio.wait_for(reader, 2) is True and side.inc.read() == b"reply"
            assert _idle(r, side)

    run(main())
