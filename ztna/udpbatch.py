"""Batching the UDP data channel's datagrams: UDP GSO runs to send, GRO buffers to split (issue 17).

Theory of operation
-------------------
One ``sendto`` per 1,400-byte datagram costs more than sealing it.  Linux can
take a run of datagrams to one peer in one call (UDP GSO, ``UDP_SEGMENT``):
one buffer and a segment size; the kernel cuts the buffer into datagrams of
that size, the last one may be shorter.  On receive, ``UDP_GRO`` lets the
kernel hand over several datagrams of one flow as one buffer, with the
segment size in a control message.

This module is the pure part of both: :func:`gso_runs` groups datagrams into
runs the kernel accepts (equal sizes, a shorter one ends a run, at most
``MAX_SEGMENTS`` datagrams and ``MAX_BYTES`` bytes per run), :func:`split`
cuts a received buffer back into datagrams, and :func:`gro_size` reads the
segment size from ``recvmsg``'s control messages.  The socket calls, and the
fallback to one datagram per call when the kernel refuses, live in
ztna/udpsock.py.
"""

from __future__ import annotations

import socket
import sys

SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = 103
UDP_GRO = 104
MAX_SEGMENTS = 64      # the kernel's UDP_MAX_SEGMENTS is 64 on older kernels, 128 on newer
MAX_BYTES = 65000      # under 65,535 less the IP and UDP headers


def gso_runs(datagrams: list, max_segments: int = MAX_SEGMENTS, max_bytes: int = MAX_BYTES) -> list[tuple[bytes, int]]:
    """``datagrams`` (in order) as ``(buffer, segment size)`` runs; a segment size of 0 means the
    buffer is one datagram to send as it is.  Order is kept; no datagram is split or joined
    with a larger one after it."""
    runs: list[tuple[bytes, int]] = []
    i, n = 0, len(datagrams)
    while i < n:
        size = len(datagrams[i])
        j = i + 1
        total = size
        if 0 < size <= max_bytes:
            while j < n and j - i < max_segments:
                nxt = len(datagrams[j])
                if nxt > size or nxt == 0 or total + nxt > max_bytes:
                    break
                total += nxt
                j += 1
                if nxt < size:
                    break  # a shorter datagram is the run's last
        if j - i == 1:
            runs.append((bytes(datagrams[i]), 0))
        else:
            runs.append((b"".join(datagrams[i:j]), size))
        i = j
    return runs


def split(buf: bytes | memoryview, size: int) -> list[bytes]:
    """A GRO buffer cut back into its datagrams of ``size`` bytes (the last may be shorter);
    ``size`` 0 (no control message) means one datagram."""
    if size <= 0 or len(buf) <= size:
        return [bytes(buf)]
    view = memoryview(buf)
    return [bytes(view[k:k + size]) for k in range(0, len(buf), size)]


def gro_size(ancdata: list) -> int:
    """The segment size in ``recvmsg``'s control messages, or 0 when there is none."""
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) in (2, 4):
            return int.from_bytes(data, sys.byteorder)
    return 0
