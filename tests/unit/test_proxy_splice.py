"""gateway.proxy.server: the splice reactor and the pipe pool (no root, socketpairs and pipes)."""

import asyncio
import os
import socket

import pytest

from gateway.proxy.server import PipePool, SpliceReactor, SpliceSelector, new_loop

# The proxy's own loop (fds share its epoll) and a plain asyncio loop (an epoll of the reactor's own).
LOOPS = pytest.mark.parametrize("factory", [new_loop, None], ids=["shared-epoll", "own-epoll"])


def run(factory, coro):
    with asyncio.Runner(loop_factory=factory) as r:
        return r.run(coro)


@LOOPS
def test_reactor_reads_writes_and_unregisters(factory):
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
        await asyncio.wait_for(r.ready(a.fileno()), 1)  # the unread bytes make it readable
        assert a.fileno() not in r.fds
        b.close()  # hang-up counts as readable, like the loop's own selector
        await asyncio.wait_for(r.ready(a.fileno(), write=True), 1)
        a.close()
        r.close()
        assert (r.selector is not None) == (factory is new_loop)

    run(factory, main())


@LOOPS
def test_reactor_wait_cancelled_unregisters(factory):
    async def main():
        r = SpliceReactor(asyncio.get_running_loop())
        a, b = socket.socketpair()
        try:
            await asyncio.wait_for(r.ready(a.fileno()), 0.05)
        except TimeoutError:
            pass
        assert r.fds == {}
        with pytest.raises(TimeoutError):  # its own timer, too
            await r.ready(a.fileno(), timeout=0.05)
        assert r.fds == {}
        b.send(b"x")
        await r.ready(a.fileno(), timeout=0)  # ready already: readiness wins over a timer due now
        assert r.fds == {}
        a.close()
        b.close()
        r.close()
        if factory is new_loop:
            assert isinstance(asyncio.get_running_loop()._selector, SpliceSelector)
            assert asyncio.get_running_loop()._selector.reactor is None  # a new reactor may take its place

    run(factory, main())


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

    run(new_loop, main())


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
