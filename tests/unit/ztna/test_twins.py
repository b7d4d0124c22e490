"""The in-memory twins themselves: a TUN keeps packet boundaries, a link moves bytes only when pumped."""

import os

from ztna import conntest, tuntest


def test_memory_tun_keeps_packet_boundaries_both_ways():
    tun = tuntest.MemoryTun()
    try:
        tun.inject(b"a" * 100)
        tun.inject(b"b" * 65000)
        assert [len(p) for p in tun.read_burst()] == [100, 65000]
        assert tun.read_burst() == []  # non-blocking, empty
        os.write(tun.fd, b"x")
        os.write(tun.fd, b"yy")
        assert tun.written() == [b"x", b"yy"] and tun.written() == []
    finally:
        tun.close()


def test_link_moves_bytes_only_when_pumped_and_in_chunks():
    a, b, ln = conntest.link(chunk=3)
    got = []
    b.on_data = got.append
    b.start_reading()
    a.send(b"hello")
    assert got == [] and a.queued == 5
    assert ln.pump() == 5
    assert got == [b"hel", b"lo"] and a.queued == 0 and b.bytes_in == 5


def test_link_holds_bytes_until_the_other_end_reads():
    a, b, ln = conntest.link()
    got = []
    b.on_data = got.append
    a.send(b"x")
    assert ln.pump() == 0 and a.queued == 1
    b.start_reading()
    ln.pump()
    assert got == [b"x"]


def test_closing_one_end_reaches_the_other_after_its_bytes():
    a, b, ln = conntest.link()
    events = []
    b.on_data = lambda d: events.append(("data", d))
    b.on_close = lambda r: events.append(("close", r))
    a.on_close = lambda r: events.append(("a closed", r))
    b.start_reading()
    a.send(b"last words")
    a.close("bye")
    ln.pump()
    assert events == [("a closed", "bye"), ("data", b"last words"), ("close", "peer closed the connection")]
    a.send(b"more")
    assert a.queued == 0  # a closed end sends nothing
