"""gateway.proxy.server: the splice reactor and the pipe pool (no root, socketpairs and pipes)."""

import asyncio
import os
import socket

from gateway.proxy.server import PipePool, SpliceReactor


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
        await asyncio.wait_for(r.ready(a.fileno()), 1)  # the unread bytes make it readable
        assert a.fileno() not in r.fds
        b.close()  # hang-up counts as readable, like the loop's own selector
        await asyncio.wait_for(r.ready(a.fileno(), write=True), 1)
        a.close()
        r.close()

    asyncio.run(main())


def test_reactor_wait_cancelled_unregisters():
    async def main():
        r = SpliceReactor(asyncio.get_running_loop())
        a, b = socket.socketpair()
        try:
            await asyncio.wait_for(r.ready(a.fileno()), 0.05)
        except TimeoutError:
            pass
        assert r.fds == {}
        a.close()
        b.close()
        r.close()

    asyncio.run(main())


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
