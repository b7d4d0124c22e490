"""UDP GSO runs and GRO splitting (ztna/udpbatch.py), and the batched socket on loopback (ztna/udpsock.py)."""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import time
from collections import Counter

from hypothesis import given, strategies as st

from ztna.udpbatch import MAX_BYTES, SOL_UDP, UDP_GRO, gro_size, gso_runs, split
from ztna.udpsock import BatchSocket


def _unrun(runs):
    out = []
    for buf, size in runs:
        out += split(buf, size) if size else [buf]
    return out


def test_equal_datagrams_make_one_run_and_a_shorter_one_ends_it():
    dgs = [b"a" * 100, b"b" * 100, b"c" * 100, b"d" * 40, b"e" * 100, b"f" * 100]
    runs = gso_runs(dgs)
    assert runs == [(b"a" * 100 + b"b" * 100 + b"c" * 100 + b"d" * 40, 100), (b"e" * 100 + b"f" * 100, 100)]


def test_a_larger_datagram_starts_a_new_run_and_singles_go_alone():
    dgs = [b"a" * 50, b"b" * 80, b"c" * 80]
    assert gso_runs(dgs) == [(b"a" * 50, 0), (b"b" * 80 + b"c" * 80, 80)]
    assert gso_runs([b"x" * 10]) == [(b"x" * 10, 0)]
    assert gso_runs([]) == []


def test_runs_respect_the_segment_and_byte_limits():
    dgs = [bytes([i]) * 1431 for i in range(100)]
    runs = gso_runs(dgs)
    assert all(len(buf) <= MAX_BYTES for buf, _ in runs)
    assert all(len(buf) // 1431 <= 64 for buf, _ in runs)
    assert _unrun(runs) == dgs
    runs = gso_runs(dgs, max_segments=8)
    assert [len(b) // 1431 for b, _ in runs] == [8] * 12 + [4]


@given(st.lists(st.integers(min_value=1, max_value=3000), max_size=80))
def test_runs_give_back_every_datagram_in_order(sizes):
    dgs = [os.urandom(n) for n in sizes]
    runs = gso_runs(dgs)
    assert _unrun(runs) == dgs
    for buf, size in runs:
        if size:
            pieces = split(buf, size)
            assert len(pieces) > 1 and all(len(p) == size for p in pieces[:-1]) and 0 < len(pieces[-1]) <= size


def test_split_and_the_control_message():
    assert split(b"abcdefg", 3) == [b"abc", b"def", b"g"]
    assert split(b"abc", 0) == [b"abc"]
    assert split(b"abc", 3) == [b"abc"]
    native = (1445).to_bytes(4, sys.byteorder)
    assert gro_size([(SOL_UDP, UDP_GRO, native)]) == 1445
    assert gro_size([(SOL_UDP, UDP_GRO, (1445).to_bytes(2, sys.byteorder))]) == 1445
    assert gro_size([(socket.SOL_SOCKET, 1, native)]) == 0
    assert gro_size([]) == 0


def test_batch_socket_on_loopback_delivers_every_datagram_in_order():
    c = Counter()
    log = logging.getLogger("test")
    rx = BatchSocket(("127.0.0.1", 0), c, log)
    tx = BatchSocket(("127.0.0.1", 0), c, log)
    try:
        dgs = [struct.pack("!I", i) + os.urandom(1200) for i in range(40)] + [b"end"]
        tx.send(dgs, rx.sock.getsockname())
        got: list = []
        deadline = time.monotonic() + 5
        while len(got) < len(dgs) and time.monotonic() < deadline:
            got += [d for d, _ in rx.receive()]
        assert got == dgs
        assert c["udp_tx_gso_calls"] >= 1 or not tx.gso
        if rx.gro and tx.gso:
            assert c["udp_rx_gro_buffers"] >= 1
    finally:
        rx.close()
        tx.close()


def test_batch_socket_without_gso_sends_one_by_one():
    c = Counter()
    log = logging.getLogger("test")
    rx = BatchSocket(("127.0.0.1", 0), c, log, gro=False)
    tx = BatchSocket(("127.0.0.1", 0), c, log, gso=False)
    try:
        dgs = [bytes([i]) * 500 for i in range(10)]
        tx.send(dgs, rx.sock.getsockname())
        got: list = []
        deadline = time.monotonic() + 5
        while len(got) < len(dgs) and time.monotonic() < deadline:
            got += [d for d, _ in rx.receive()]
        assert got == dgs and c["udp_tx_gso_calls"] == 0 and c["udp_rx_gro_buffers"] == 0
    finally:
        rx.close()
        tx.close()
