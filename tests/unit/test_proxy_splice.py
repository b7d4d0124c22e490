"""gateway.proxy.server: the splice reactor and the pipe pool (no root, socketpairs and pipes)."""

import asyncio
import os
import select
import socket
import time

import pytest

from gateway.proxy.server import PipePool, SpliceReactor, SpliceSelector, _Tunnel, new_loop

def run(coro):
    with asyncio.Runner(loop_factory=new_loop) as r:
        return r.run(coro)


def test_reactor_reads_writes_and_unregisters():
    async def main():
        loop = asyncio.get_running_loop()
        r = SpliceReactor(loop)
        a, b = socket.socketpair()
        a.setblocking(False)
        got = []
        r.add_reader(a.fileno(), lambda: got.append(a.recv(100)))
        b.send(b"hello")
        for _ in range(50):
            await asyncio.sleep(0.01)
            if got:
                break
        assert got == [b"hello"]
        wrote = []
        r.add_writer(a.fileno(), lambda: wrote.append(1) or r.remove_writer(a.fileno()))
        await asyncio.sleep(0.05)
        assert wrote == [1]  # writable once, then unregistered by its own callback
        r.remove_reader(a.fileno())
        assert a.fileno() not in r.fds
        b.send(b"more")
        await asyncio.sleep(0.05)
        assert got == [b"hello"]  # nothing called after remove_reader
        woke = asyncio.Event()
        r.add_reader(a.fileno(), woke.set)  # the unread bytes make it readable at once
        await asyncio.wait_for(woke.wait(), 1)
        r.remove_reader(a.fileno())
        a.recv(100)
        hung = asyncio.Event()
        r.add_reader(a.fileno(), hung.set)
        b.close()  # hang-up counts as readable (and writable), like the loop's own selector
        await asyncio.wait_for(hung.wait(), 1)
        r.remove_reader(a.fileno())
        assert r.fds == {}
        a.close()
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
            r.add_reader(a.fileno(), lambda: None)
        assert r.fds == {}
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
    r.fds, r.busy, r.hot = {}, busy, True
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
        assert 0.047 <= last <= 0.05  # then slept what was left of the loop's own wait
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
        r.fds[a.fileno()] = [lambda: got.append(a.recv(10)) or r.loop._ready.append("h"), None]
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
        loop = asyncio.get_running_loop()
        r = RecordingReactor(loop)
        r.busy = busy
        client, c_peer = socket.socketpair()
        server, s_peer = socket.socketpair()
        for s in (c_peer, s_peer):
            s.setblocking(False)
        tunnel = _Tunnel(r, c_peer, s_peer, lambda up, down: None)
        tunnel.start()
        sent = b"z" * size
        server.sendall(sent)
        got = b""
        client.setblocking(False)
        for _ in range(200):
            await asyncio.sleep(0.005)
            try:
                got += client.recv(1 << 20)
            except BlockingIOError:
                pass
            if len(got) == size:
                break
        assert got == sent
        assert (True in r.heat) is hot  # set by a splice of 16 KiB or more, and only with busy > 0
        if hot:
            assert r.hot is False  # and cleared by the first spin that found nothing
        tunnel.close()
        r.close()
        for s in (client, c_peer, server, s_peer):
            s.close()

    run(main())


def test_reactor_only_events_wait_again_inside_one_select_until_asyncio_has_work():
    sel, r = _busy_selector(0.0)
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        seen = []

        def on_a():
            seen.append(a.recv(10))
            if seen[-1] == b"work":
                r.loop._ready.append("a handle")  # what fut.set_result would queue

        r.fds[a.fileno()] = [on_a, None]
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
        real = r.fds[a.fileno()][0]
        r.fds[a.fileno()][0] = lambda: (real(), r.loop._scheduled.append("another"))
        t0 = time.perf_counter()
        sel.select(10)
        assert time.perf_counter() - t0 < 5
    finally:
        a.close()
        b.close()
        sel.close()
