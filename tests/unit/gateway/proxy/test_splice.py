"""gateway.proxy.reactor and .splice: the splice reactor, the pipe pool and tunnels (no root, socketpairs and pipes)."""

import asyncio
import contextlib
import os
import select
import socket
import time
from types import SimpleNamespace

import pytest

from gateway.proxy.reactor import IN, OUT, RDHUP, READABLE, TICK, TUNNEL_IN, WRITABLE, SpliceReactor, SpliceSelector, new_loop
from gateway.proxy.splice import PIPES, PipePool, Tunnel

def run(coro):
    with asyncio.Runner(loop_factory=new_loop) as r:
        return r.run(coro)


async def _soon(pred, seconds: float = 1.0) -> None:
    """Let the loop run until ``pred()`` holds or ``seconds`` pass (the caller asserts what it wanted)."""
    end = time.monotonic() + seconds
    while not pred() and time.monotonic() < end:
        await asyncio.sleep(0.005)


def test_reactor_calls_back_with_the_events_and_unwatches():
    async def main():
        loop = asyncio.get_running_loop()
        r = SpliceReactor(loop)
        a, b = socket.socketpair()
        a.setblocking(False)
        got = []
        r.watch(a.fileno(), IN, lambda ev: got.append((ev, a.recv(100))))
        b.send(b"hello")
        await _soon(lambda: got)
        assert got == [(IN, b"hello")]
        wrote = []
        r.watch(a.fileno(), OUT, lambda ev: wrote.append(ev) or r.unwatch(a.fileno()))  # a change of interest
        await asyncio.sleep(0.05)
        assert wrote == [OUT]  # writable once, then unwatched by its own callback
        assert a.fileno() not in r.cbs
        b.send(b"more")
        await asyncio.sleep(0.05)
        assert len(got) == 1  # nothing called after unwatch
        woke = asyncio.Event()
        r.watch(a.fileno(), IN, lambda ev: woke.set())  # the unread bytes make it readable at once
        await asyncio.wait_for(woke.wait(), 1)
        r.unwatch(a.fileno())
        a.recv(100)
        hung = []
        r.watch(a.fileno(), OUT, lambda ev: hung.append(ev) or r.unwatch(a.fileno()))
        await asyncio.sleep(0.05)
        hung.clear()
        r.watch(a.fileno(), IN, lambda ev: hung.append(ev) or r.unwatch(a.fileno()))
        b.close()  # a hang-up counts as readable (and writable), like the loop's own selector
        await _soon(lambda: hung)
        assert hung and hung[0] & READABLE and hung[0] & WRITABLE
        assert r.cbs == {}
        r.watch(a.fileno(), IN, lambda ev: None)
        r.forget(a.fileno())  # about to close: no epoll_ctl, the close takes it out of the epoll
        a.close()
        c, d = socket.socketpair()  # may get a's number back: watching it must work as for a new fd
        seen = []
        r.watch(c.fileno(), IN, lambda ev: seen.append(c.recv(10)))
        d.send(b"new")
        await _soon(lambda: seen)
        assert seen == [b"new"]
        r.unwatch(c.fileno())
        for s in (c, d):
            s.close()
        r.close()
        assert asyncio.get_running_loop()._selector.reactor is None  # a new reactor may take its place
        SpliceReactor(asyncio.get_running_loop()).close()

    run(main())


def test_a_reactor_needs_the_proxy_loop_and_one_per_loop():
    async def main():
        with pytest.raises(ValueError, match="new_loop"):
            SpliceReactor(asyncio.get_running_loop())

    with asyncio.Runner() as r:  # a plain asyncio loop: its selector cannot hand over the events
        r.run(main())

    async def twice():
        r = SpliceReactor(asyncio.get_running_loop())
        with pytest.raises(ValueError):
            SpliceReactor(asyncio.get_running_loop())
        r.close()

    run(twice())


def test_shared_epoll_refuses_an_fd_the_loop_watches():
    async def main():
        loop = asyncio.get_running_loop()
        r = SpliceReactor(loop)
        a, b = socket.socketpair()
        loop.add_reader(a.fileno(), lambda: None)
        with pytest.raises(FileExistsError):
            r.watch(a.fileno(), IN, lambda ev: None)
        assert r.cbs == {}
        loop.remove_reader(a.fileno())
        a.close()
        b.close()
        r.close()

    run(main())


def test_pipe_pool_reuses_only_empty_pipes():
    pool = PipePool(keep=2)
    r, w = pool.get()
    pool.put(r, w, empty=True)
    assert pool.get() == (r, w)  # an empty pipe comes back
    os.write(w, b"left over")
    pool.put(r, w, empty=False)  # one holding bytes is closed, never handed to another tunnel
    assert pool.free == []
    try:
        os.fstat(r)
        raise AssertionError("a pipe with bytes left was kept open")
    except OSError:
        pass
    pipes = [pool.get() for _ in range(3)]
    for p in pipes:
        pool.put(*p, empty=True)
    assert len(pool.free) == 2  # bounded
    for p in pool.free:
        os.close(p[0])
        os.close(p[1])


class CountingEpoll:
    """The loop's epoll, with every poll's timeout written down."""

    def __init__(self, real):
        self.real = real
        self.timeouts = []

    def poll(self, timeout=-1, maxevents=-1):
        self.timeouts.append(timeout)
        return self.real.poll(timeout, maxevents)

    def __getattr__(self, name):
        return getattr(self.real, name)


class StubLoop:
    """What select() reads of the loop: its queue of handles and its timers."""

    def __init__(self):
        self._ready = []
        self._scheduled = []


def _busy_selector(busy):
    sel = SpliceSelector()
    r = SpliceReactor.__new__(SpliceReactor)  # no loop needed: select() only reads these
    r.cbs, r.busy, r.hot = {}, busy, True
    r.loop = StubLoop()
    sel.reactor = r
    sel._selector = CountingEpoll(sel._selector)
    return sel, r


def test_busy_poll_spins_then_sleeps_the_rest_of_the_wait_and_cools_down():
    sel, r = _busy_selector(0.002)
    try:
        t0 = time.perf_counter()
        assert sel.select(0.05) == []
        took = time.perf_counter() - t0
        spins, last = sel._selector.timeouts[:-1], sel._selector.timeouts[-1]
        assert spins and all(t == 0 for t in spins)  # polled without sleeping first
        # then slept what was left of the loop's own wait (how much is left depends on how long the 2 ms spin
        # really took: a busy machine preempts it, so only the bounds are certain)
        assert 0 < last < 0.05  # the spin's time came off the wait
        assert took >= 0.05  # never returns early: the loop's timers are not run ahead of time
        assert r.hot is False  # nothing came during the spin: the next wait sleeps straight away
        sel._selector.timeouts.clear()
        sel.select(0.01)
        assert sel._selector.timeouts == [0.01]
    finally:
        sel.close()


def test_busy_poll_returns_events_at_once_and_stays_hot():
    sel, r = _busy_selector(0.5)
    a, b = socket.socketpair()
    try:
        # The callback queues an asyncio handle (as a future's result would), so select returns.
        r.cbs[a.fileno()] = lambda ev: got.append(a.recv(10)) or r.loop._ready.append("h")
        sel._selector.register(a.fileno(), select.EPOLLIN)
        got = []
        b.send(b"x")
        t0 = time.perf_counter()
        sel.select(None)  # would sleep forever without the event
        assert got == [b"x"] and time.perf_counter() - t0 < 0.4
        assert sel._selector.timeouts == [0]
        assert r.hot is True
        r.hot = False
        b.send(b"y")
        sel.select(1)
        assert sel._selector.timeouts[-1] == 1  # not hot: one ordinary wait
    finally:
        a.close()
        b.close()
        sel.close()


class RecordingReactor(SpliceReactor):
    """A reactor that remembers every value its ``hot`` flag was given (the spin clears it again)."""

    def __init__(self, loop):
        self.heat: list[bool] = []
        super().__init__(loop)

    @property
    def hot(self) -> bool:
        return self._hot

    @hot.setter
    def hot(self, value: bool) -> None:
        self.heat.append(value)
        self._hot = value


@pytest.mark.parametrize("busy, size, hot", [(2e-5, 64 * 1024, True), (2e-5, 100, False), (0.0, 64 * 1024, False)])
def test_only_a_bulk_splice_makes_the_loop_spin(busy, size, hot):
    async def main():
        r = RecordingReactor(asyncio.get_running_loop())
        r.busy = busy
        async with _tunnel(reactor=r, small_buffers=False) as t:
            sent = b"z" * size
            t.server.sendall(sent)
            got, _ = await _recv_all(t.client, until=sent)
            assert got == sent
            assert (True in r.heat) is hot  # set by a splice of 16 KiB or more, and only with busy > 0
            if hot:
                assert r.hot is False  # and cleared by the first spin that found nothing

    run(main())


def test_reactor_only_events_wait_again_inside_one_select_until_asyncio_has_work():
    sel, r = _busy_selector(0.0)
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        seen = []

        def on_a(ev):
            seen.append(a.recv(10))
            if seen[-1] == b"work":
                r.loop._ready.append("a handle")  # what fut.set_result would queue

        r.cbs[a.fileno()] = on_a
        sel._selector.register(a.fileno(), select.EPOLLIN)
        b.send(b"x")
        t0 = time.perf_counter()
        assert sel.select(0.05) == []
        # The callback ran at once, then the same select waited out the loop's timeout.
        assert seen == [b"x"] and time.perf_counter() - t0 >= 0.05
        assert len(sel._selector.timeouts) >= 2 and all(t <= 0.05 for t in sel._selector.timeouts)
        b.send(b"work")
        t0 = time.perf_counter()
        sel.select(10)
        assert seen[-1] == b"work" and time.perf_counter() - t0 < 5  # asyncio has a handle: back to the loop
        r.loop._ready.clear()
        b.send(b"x")
        r.loop._scheduled.append("a timer")  # a callback that adds a timer also returns to the loop
        r.cbs[a.fileno()] = lambda ev: (on_a(ev), r.loop._scheduled.append("another"))
        t0 = time.perf_counter()
        sel.select(10)
        assert time.perf_counter() - t0 < 5
    finally:
        a.close()
        b.close()
        sel.close()


def _tcp_pair():
    """A connected TCP pair on loopback (the server's end of a tunnel is TCP in the proxy)."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    a = socket.create_connection(ls.getsockname())
    b, _ = ls.accept()
    ls.close()
    return a, b


@contextlib.asynccontextmanager
async def _tunnel(*, tcp: bool = False, small_buffers: bool = True, reactor: SpliceReactor | None = None):
    """client <-> (c_peer | tunnel | s_peer) <-> server on the running loop, every socket
    non-blocking, the tunnel started; ``ends`` collects its on_end calls.  ``tcp``: loopback TCP
    pairs (the proxy's sockets are TCP), else socketpairs, whose ``small_buffers`` the tunnel's
    writes fill so that they must wait.  Everything is closed afterwards, on a failure too."""
    r = reactor or SpliceReactor(asyncio.get_running_loop())
    (client, c_peer), (server, s_peer) = (_tcp_pair(), _tcp_pair()) if tcp else (socket.socketpair(), socket.socketpair())
    socks = (client, c_peer, server, s_peer)
    for sock in socks:
        sock.setblocking(False)
    if small_buffers and not tcp:
        for sock in (c_peer, s_peer):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    ends = []
    tunnel = Tunnel(r, c_peer, s_peer, lambda up, down: ends.append((up, down)))
    tunnel.start()
    try:
        yield SimpleNamespace(r=r, client=client, c_peer=c_peer, server=server, s_peer=s_peer, tunnel=tunnel, ends=ends)
    finally:
        tunnel.close()
        r.close()
        for sock in socks:
            sock.close()


async def _recv_all(sock, *, until: bytes | None = None, seconds: float = 2.0) -> tuple[bytes, bool]:
    """Read non-blocking ``sock`` as bytes come, until ``until`` has arrived, its EOF, or ``seconds``.
    Returns (the bytes, whether the EOF came)."""
    got = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            await asyncio.sleep(0.002)
            continue
        if not data:
            return got, True
        got += data
        if until is not None and got == until:
            break
    return got, False


async def _exchange(client, server, up: bytes, down: bytes, ends, slow: float):
    """Send ``up`` from the client and ``down`` from the server, each then shutting its write side;
    read both ends slowly (so the tunnel's destinations fill up) until EOF on both."""
    got = {client: b"", server: b""}
    todo = {client: up, server: down}
    eof = set()
    shut = set()
    for _ in range(5000):
        for s in (client, server):
            if todo[s]:
                try:
                    n = s.send(todo[s][:65536])
                    todo[s] = todo[s][n:]
                except BlockingIOError:
                    pass
            elif s not in shut:
                s.shutdown(socket.SHUT_WR)
                shut.add(s)
            if s not in eof:
                try:
                    data = s.recv(4096)
                    if data:
                        got[s] += data
                    else:
                        eof.add(s)
                except BlockingIOError:
                    pass
        if len(eof) == 2 and ends:
            break
        await asyncio.sleep(slow)
    return got[server], got[client]


def test_tunnel_moves_both_directions_through_full_buffers_and_passes_each_end_on():
    async def main():
        async with _tunnel() as t:
            up = os.urandom(3 * 1024 * 1024)
            down = os.urandom(2 * 1024 * 1024 + 17)
            at_server, at_client = await _exchange(t.client, t.server, up, down, t.ends, 0.0005)
            assert at_server == up and at_client == down  # every byte, in order, each way
            assert t.ends == [(len(up), len(down))]  # on_end once, with the bytes of each direction
            t.tunnel.close()
            assert t.r.cbs == {}  # the connection closes the sockets next: nothing left watched

    run(main())


def test_tunnel_half_close_keeps_the_other_direction_open():
    async def main():
        async with _tunnel() as t:
            t.client.send(b"request")
            t.client.shutdown(socket.SHUT_WR)  # the client is done sending; the answer must still come back
            assert await _recv_all(t.server) == (b"request", True)  # the bytes, then the client's end passed on
            # The client's socket no longer watched, the server's still read.
            assert t.tunnel.masks == [0, TUNNEL_IN] and not t.ends
            t.server.send(b"answer")
            t.server.close()
            assert await _recv_all(t.client) == (b"answer", True) and t.ends == [(7, 6)]

    run(main())


def test_tunnel_ends_both_directions_when_a_peer_is_gone():
    async def main():
        async with _tunnel() as t:
            t.client.close()  # gone for good: writing the server's bytes to it fails (EPIPE)
            t.server.send(b"x" * 4096)
            await _soon(lambda: t.ends)
            assert len(t.ends) == 1  # ended once, though the server never closed its side
            assert t.tunnel.error.startswith(("BrokenPipeError", "ConnectionResetError")), t.tunnel.error  # for the log
            with pytest.raises(OSError):
                t.s_peer.send(b"more")  # both directions are shut: the server's side too
            held = (t.tunnel.down.r, t.tunnel.down.w)  # the server's bytes are still in this pipe
            t.tunnel.close()
            assert held not in PIPES.free  # never handed to the next tunnel

    run(main())


def test_deadlines_fire_once_at_their_time_unless_cancelled_then_the_timer_stops():
    async def main():
        loop = asyncio.get_running_loop()
        r = SpliceReactor(loop)
        fired = []
        t0 = time.monotonic()
        r.at("a", t0 + 0.05, lambda: fired.append(("a", time.monotonic() - t0)))
        r.at("b", t0 + 0.05, lambda: fired.append(("b", 0)))
        r.at("c", t0 + 10, lambda: fired.append(("c-old", 0)))
        r.at("c", t0 + 0.25, lambda: fired.append(("c", time.monotonic() - t0)))  # replaces c's first one
        r.cancel("b")
        await asyncio.sleep(0.6)
        assert [k for k, _ in fired] == ["a", "c"]
        (_, ta), (_, tc) = fired
        assert 0.05 <= ta <= 0.05 + TICK + 0.1 and 0.25 <= tc <= 0.25 + TICK + 0.1  # never early, at most a tick late
        assert r.deadlines == {} and r._sweeper is None  # nothing left: no timer wakes the idle loop
        r.at("d", time.monotonic() + 5, lambda: None)
        r.close()  # its timer goes with it
        assert r._sweeper is None and r.deadlines == {}

    run(main())


def test_tunnel_takes_the_fin_behind_the_last_bytes_in_the_same_wake_up():
    async def main():
        async with _tunnel() as t:
            calls = []
            real = t.tunnel.up.on_event
            t.r.cbs[t.tunnel.up.sfd] = lambda ev: calls.append(ev) or real(ev)
            t.client.send(b"bye")
            t.client.shutdown(socket.SHUT_WR)  # both queued before the loop runs: one readiness, with RDHUP
            assert await _recv_all(t.server) == (b"bye", True)  # the bytes, then the end, passed on
            assert len(calls) == 1 and calls[0] & RDHUP  # in one callback
            assert t.tunnel.up.eof and t.tunnel.masks[0] == 0

    run(main())


def test_server_end_closes_the_tunnel_once_the_client_has_every_byte():
    async def main():
        async with _tunnel(tcp=True) as t:
            t.client.send(b"request")
            assert await _recv_all(t.server, until=b"request") == (b"request", False)
            t.server.sendall(b"answer")
            t.server.close()  # the origin is done (Connection: close)
            await _soon(lambda: t.ends)
            # RFC 9110 9.3.6: both closed at the server's end, without waiting for the client.
            assert t.ends == [(7, 6)]
            t.tunnel.close()
            for sock in (t.c_peer, t.s_peer):
                sock.close()  # what the connection does next
            assert await _recv_all(t.client) == (b"answer", True)  # a FIN after the answer, not a reset

    run(main())


def test_server_end_with_bytes_still_queued_for_the_client_is_a_half_close():
    async def main():
        async with _tunnel(tcp=True) as t:
            t.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # a slow client: the tail waits
            t.c_peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            for sock in (t.c_peer, t.s_peer):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the proxy's sockets
            body = os.urandom(1024 * 1024 + 4096)  # more than the client can take before it reads
            left = memoryview(body)
            t0 = time.monotonic()
            while left and time.monotonic() - t0 < 10:  # the origin writes it all (the pipe and buffers hold it)
                try:
                    left = left[t.server.send(left):]
                except BlockingIOError:
                    await asyncio.sleep(0.001)
            assert not left
            t.server.close()
            await asyncio.sleep(0.05)  # the tunnel sees the server's end with bytes still on their way
            assert not t.ends  # not closed under the client's feet
            got, eof = await _recv_all(t.client, seconds=10)
            assert eof and len(got) == len(body) and got == body  # every byte, then the FIN
            assert not t.ends  # the tunnel waits for the client's own end
            t.client.close()
            await _soon(lambda: t.ends)
            assert t.ends == [(0, len(body))]

    run(main())
