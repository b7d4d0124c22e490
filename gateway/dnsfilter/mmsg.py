"""Batched UDP I/O: ``recvmmsg``/``sendmmsg`` (Linux) through ctypes, on the socket's fd.

Why: Python's socket module has one system call per datagram (``recvfrom``,
``sendto``), and each builds an address tuple and parses it back.  Under load
the resolver's own work per query is a few microseconds, so those calls are
a large share of its time.  Here one call moves up to :data:`BATCH` datagrams
in each direction, into and out of buffers allocated once; per datagram only
a slice copy and a couple of ``struct.pack_into`` calls remain.

Use :func:`available` first: where libc has no ``recvmmsg``/``sendmmsg``
(not Linux, or an old libc) the resolver keeps its ``recvfrom``/``sendto`` loop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
from itertools import accumulate, chain

BATCH = 64
SLOT = 65536          # a whole UDP datagram always fits: nothing is ever cut short
SEND_SLOT = 4608      # send buffer room per datagram of a batch: UDP answers are at most 4096 bytes (the largest EDNS buffer we honour)


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_HDR = ctypes.sizeof(_MMsgHdr)
_IOV = ctypes.sizeof(_IOVec)
_LEN_OFF = _MMsgHdr.msg_len.offset
_NAME_OFF = _MsgHdr.msg_name.offset
_PTR = "P"
MSG_DONTWAIT = 0x40

_libc = None


def _load():
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            for fn in (lib.recvmmsg, lib.sendmmsg):
                fn.restype = ctypes.c_int
            lib.recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
            lib.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc


def available() -> bool:
    """True when this libc has recvmmsg and sendmmsg (checked once)."""
    return bool(_load())


def _addr(buf) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


class BatchSocket:
    """One UDP socket's batch buffers: ``receive()`` returns datagrams, ``queue()`` + ``flush()`` answer them.

    The answer to datagram *i* of the last ``receive()`` goes back to its
    sender through ``queue(i, data)``, which points the outgoing header at
    the sender's address as received (no conversion to text and back).  Call
    ``flush()`` before the next ``receive()``.
    """

    def __init__(self, sock: socket.socket, batch: int = BATCH):
        if not available():
            raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg not available")
        self.sock = sock
        self.fd = sock.fileno()
        self.batch = batch
        self.v6 = sock.family == socket.AF_INET6
        self.namelen = 28 if self.v6 else 16
        # receive side
        self._rdata = bytearray(batch * SLOT)
        self._rnames = bytearray(batch * self.namelen)
        self._riov = (_IOVec * batch)()
        self._rhdr = (_MMsgHdr * batch)()
        rdata, rnames = _addr(self._rdata), _addr(self._rnames)
        for i in range(batch):
            self._riov[i].iov_base = rdata + i * SLOT
            self._riov[i].iov_len = SLOT
            h = self._rhdr[i].msg_hdr
            h.msg_name = rnames + i * self.namelen
            h.msg_namelen = self.namelen
            h.msg_iov = ctypes.addressof(self._riov[i])
            h.msg_iovlen = 1
        self._rnames_addr = rnames
        self._rnv = memoryview(self._rnames)
        self._rhv = memoryview(self._rhdr).cast("B")
        self._lens = [struct.Struct("=" + f"{_LEN_OFF}xI{_HDR - _LEN_OFF - 4}x" * n) for n in range(batch + 1)]
        # send side
        self._sdata = bytearray(batch * SEND_SLOT)
        self._siov = (_IOVec * batch)()
        self._shdr = (_MMsgHdr * batch)()
        self._sbase = _addr(self._sdata)
        for i in range(batch):
            h = self._shdr[i].msg_hdr
            h.msg_name = rnames + i * self.namelen  # answer i to datagram i, until answer() says otherwise
            h.msg_namelen = self.namelen
            h.msg_iov = ctypes.addressof(self._siov[i])
            h.msg_iovlen = 1
        self._wired = True    # header j's address is datagram j's sender
        self._used = 0        # bytes of the send buffer holding queued answers
        self._iov_fmts: dict[int, struct.Struct] = {}
        self._inorder = [list(range(n)) for n in range(batch + 1)]
        self._sdv = memoryview(self._sdata)
        self._siv = memoryview(self._siov).cast("B")
        self._shv = memoryview(self._shdr).cast("B")
        self._pending = 0
        self._hosts: dict[bytes, str] = {}
        self._fmts: dict[int, struct.Struct] = {}
        self.send_errors = 0

    def receive(self) -> tuple[list[bytes], list[str]]:
        """Up to ``batch`` waiting datagrams and their senders' addresses (as text); empty lists when none waits."""
        n = _libc.recvmmsg(self.fd, self._rhdr, self.batch, MSG_DONTWAIT, None)
        if n <= 0:
            if n < 0:
                err = ctypes.get_errno()
                if err not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    raise OSError(err, os.strerror(err))
            return [], []
        self._n = n
        lens = self._lens[n].unpack_from(self._rhv)
        nl = self.namelen
        names = bytes(self._rnv[:n * nl])
        a, b = (8, 24) if self.v6 else (4, 8)  # where the host address lies in a sockaddr_in(6)
        hosts, sources, rdata, fmts = [], self._hosts, self._rdata, self._fmts
        datas = []
        for i, ln in enumerate(lens):
            # A cached Struct per length copies straight into a new bytes (a memoryview slice costs 4x more).
            f = fmts.get(ln)
            if f is None:
                if len(fmts) >= 4096:
                    fmts.clear()
                f = fmts[ln] = struct.Struct(f"{ln}s")
            datas.append(f.unpack_from(rdata, i * SLOT)[0])
        for o in range(0, n * nl, nl):
            raw = names[o + a:o + b]
            host = sources.get(raw)
            if host is None:
                host = self._host(raw)
            hosts.append(host)
        return datas, hosts

    def _host(self, raw: bytes) -> str:
        host = socket.inet_ntop(socket.AF_INET6 if self.v6 else socket.AF_INET, raw)
        if len(self._hosts) >= 65_536:
            self._hosts.clear()
        self._hosts[raw] = host
        return host

    def address(self, i: int) -> tuple:
        """The sender of datagram ``i`` of the last ``receive()`` as a socket address tuple (for ``sendto``)."""
        raw = bytes(self._rnv[i * self.namelen:(i + 1) * self.namelen])
        port = int.from_bytes(raw[2:4], "big")
        if self.v6:
            return (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, 0, int.from_bytes(raw[24:28], "little"))
        return (socket.inet_ntoa(raw[4:8]), port)

    def answer(self, which: list[int], datas: list[bytes]) -> None:
        """Queue ``datas[k]`` as the answer to datagram ``which[k]`` of the last ``receive()``.

        Queued answers lie back to back in the send buffer: a call costs one copy
        of the joined answers and one pack for their iovecs, and the headers'
        addresses are left as wired when answer j goes to datagram j (a batch
        answered in order, the usual case), so nothing is done per answer in Python.
        """
        n, j = len(datas), self._pending
        if not n:
            return
        blob = b"".join(datas)
        used = self._used
        if j + n > self.batch or used + len(blob) > len(self._sdata):
            if n > 1:  # does not fit behind what is queued: one at a time, flushing as needed
                for i, data in zip(which, datas):
                    self.answer([i], [data])
            elif j:
                self.flush()
                self.answer(which, datas)
            else:  # one answer larger than the whole buffer: never for a UDP answer the engine built
                try:
                    self.sock.sendto(blob, self.address(which[0]))
                except OSError:  # lost, as a failed sendmmsg entry
                    self.send_errors += 1
            return
        self._sdv[used:used + len(blob)] = blob
        lens = list(map(len, datas))
        bases = map((self._sbase + used).__add__, accumulate(lens, initial=0))
        self._iov_fmt(n).pack_into(self._siv, j * _IOV, *chain.from_iterable(zip(bases, lens)))
        if j == 0 and which == self._inorder[n]:
            if not self._wired:
                for k in range(self.batch):
                    self._shdr[k].msg_hdr.msg_name = self._rnames_addr + k * self.namelen
                self._wired = True
        else:
            pack, shv, names, nl = struct.pack_into, self._shv, self._rnames_addr, self.namelen
            for k, i in enumerate(which, j):
                pack(_PTR, shv, k * _HDR + _NAME_OFF, names + i * nl)
            self._wired = False
        self._pending = j + n
        self._used = used + len(blob)

    def _iov_fmt(self, n: int) -> struct.Struct:
        f = self._iov_fmts.get(n)
        if f is None:
            f = self._iov_fmts[n] = struct.Struct("@" + "PN" * n)  # _IOVec is (void *, size_t)
        return f

    def flush(self) -> int:
        """Send every queued answer; returns how many could not be sent (each is lost, as a failed sendto)."""
        total, start, lost = self._pending, 0, 0
        self._pending = self._used = 0
        while start < total:
            hdrs = ctypes.byref(self._shdr, start * _HDR)
            n = _libc.sendmmsg(self.fd, hdrs, total - start, 0)
            if n < 0:
                err = ctypes.get_errno()
                if err == errno.EINTR:
                    continue
                # The first queued answer failed (unreachable client, full buffer): skip it.
                lost += 1
                n = 1
            start += n
        self.send_errors += lost
        return lost
