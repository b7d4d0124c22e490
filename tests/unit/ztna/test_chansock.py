"""ztna/chansock.py: a stream channel joined to real sockets at both ends, over two Mux ends."""

import asyncio
import socket

import pytest

from ztna import mux
from ztna.chansock import ChannelSocket


class End:
    """One side of a connector tunnel: its Mux and the ChannelSockets on it; frames go to ``peer`` on the loop."""

    def __init__(self, opener, window):
        self.mux = mux.Mux(opener=opener, window=window)
        self.socks: dict[int, ChannelSocket] = {}
        self.peer = None
        self.done: list[str] = []

    def send(self, data):
        if data:
            asyncio.get_running_loop().call_soon(self.peer.feed, data)

    def feed(self, data):
        for ev in self.mux.feed_untrusted(data):
            cs = self.socks.get(ev.ch)
            if isinstance(ev, mux.Data):
                cs.deliver(ev.data)
            elif isinstance(ev, mux.Closed):
                cs.closed_by_peer(ev.reason, reset=ev.reset, half=ev.half)
        for cs in list(self.socks.values()):
            cs.credit()

    def join(self, sock, ch):
        cs = ChannelSocket(sock, self.mux, ch, self.send, on_done=lambda c, why: self.done.append(why))
        self.socks[ch] = cs
        cs.start()
        return cs


def joined(window):
    pop, gw = End(True, window), End(False, window)
    pop.peer, gw.peer = gw, pop
    ch, frame = pop.mux.open(mux.STREAM, identity="alice", resource="r", host="r", port=443)
    (opened,) = gw.mux.feed_untrusted(frame)
    pop.mux.feed_untrusted(gw.mux.accept(ch))
    browser, pop_end = socket.socketpair()   # at the PoP: TLS would run on ``browser``
    app, gw_end = socket.socketpair()        # at the gateway: the TCP connection to the app
    cps, cgs = pop.join(pop_end, ch), gw.join(gw_end, ch)
    for s in (browser, app):
        s.setblocking(False)
    return pop, gw, ch, browser, app, cps, cgs


async def read_all(s, n=None):
    loop = asyncio.get_running_loop()
    got = bytearray()
    while n is None or len(got) < n:
        data = await asyncio.wait_for(loop.sock_recv(s, 65536), 5)
        if not data:
            break
        got += data
    return bytes(got)


def test_bytes_both_ways_half_close_then_closed_both_ways():
    async def main():
        pop, gw, ch, browser, app, cps, cgs = joined(64 * 1024)
        loop = asyncio.get_running_loop()
        request = bytes(range(256)) * 2000  # 512 000 bytes: many windows
        async def send():
            await loop.sock_sendall(browser, request)
            browser.shutdown(socket.SHUT_WR)   # the browser's side is done sending
        sender = asyncio.ensure_future(send())
        assert await read_all(app) == request  # EOF reached the app as a half-close
        await asyncio.wait_for(sender, 5)
        await loop.sock_sendall(app, b"answer")
        app.shutdown(socket.SHUT_WR)
        assert await read_all(browser) == b"answer"
        for _ in range(100):
            if cps.closed and cgs.closed:
                break
            await asyncio.sleep(0.01)
        assert cps.closed and cgs.closed and ch not in pop.mux.channels and ch not in gw.mux.channels
        assert cps.bytes_up == len(request) == cgs.bytes_down and cgs.bytes_up == 6 == cps.bytes_down
        assert pop.done == ["closed both ways"] and gw.done == ["closed both ways"]
        browser.close(), app.close()

    asyncio.run(main())


def test_a_reader_that_stops_bounds_what_is_held():
    async def main():
        window = 16 * 1024
        pop, gw, ch, browser, app, cps, cgs = joined(window)
        loop = asyncio.get_running_loop()
        app.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        blob = b"z" * (8 * 1024 * 1024)
        sender = asyncio.ensure_future(loop.sock_sendall(browser, blob))  # the app reads nothing
        await asyncio.sleep(0.5)
        assert not sender.done()                 # pushed back: the browser's socket is full
        assert cps.pauses >= 1 and not cps.reading
        assert len(cgs.out) <= window            # the gateway holds at most one window
        assert cps.bytes_up - cgs.bytes_down <= window
        got = await read_all(app, len(blob))     # the app reads: everything arrives, in order
        assert got == blob
        await asyncio.wait_for(sender, 5)
        browser.close(), app.close()

    asyncio.run(main())


def test_an_app_reset_reaches_the_other_end_as_a_reset():
    async def main():
        pop, gw, ch, browser, app, cps, cgs = joined(64 * 1024)
        cgs.abort("connect to the app failed")
        for _ in range(100):
            if cps.closed:
                break
            await asyncio.sleep(0.01)
        assert cps.closed and pop.done == ["connect to the app failed"]
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            data = await read_all(browser)
            if not data:
                raise ConnectionResetError("reset read as EOF")
        browser.close(), app.close()

    asyncio.run(main())
