"""The UDP data channel's socket, batched: GSO runs out, GRO buffers in (the shell of ztna/udpbatch.py).

The agent and the gateway each hold one.  ``send`` hands a burst of datagrams to
one peer to the kernel in as few calls as UDP GSO allows; ``receive`` returns what
the socket holds now, with GRO buffers already split.  When the kernel refuses
GSO (EINVAL, EIO: a device or route without the offload) or GRO, the socket says
so once at info and goes on one datagram per call.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct

from ztna.udpbatch import SOL_UDP, UDP_GRO, UDP_SEGMENT, gro_size, gso_runs, split

_CMSG_SPACE = socket.CMSG_SPACE(4)
_REFUSED = (errno.EINVAL, errno.EIO, errno.EMSGSIZE, errno.ENOPROTOOPT, errno.EOPNOTSUPP)


class BatchSocket:
    """A non-blocking UDP socket bound to ``bind``; ``counters`` gets udp_tx_* / udp_rx_* counts."""

    def __init__(self, bind: tuple, counters, log: logging.Logger, *, buffers: int = 8 << 20,
                 gso: bool = True, gro: bool = True):
        self.counters, self.log = counters, log
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
            self.sock.setblocking(False)
            self.sock.bind(bind)
        except OSError:
            self.sock.close()
            raise
        self.gso = gso
        self.gro = False
        if gro:
            try:
                self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError as exc:
                log.info("UDP GRO not available (%s): one datagram per receive call", exc)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    # ---- out -----------------------------------------------------------------
    def send(self, datagrams: list, to: tuple) -> None:
        """Send these datagrams, in order, to ``to``; a full socket buffer drops (and counts) them."""
        if not self.gso or len(datagrams) == 1:
            for d in datagrams:
                self._one(d, to)
            return
        for buf, size in gso_runs(datagrams):
            if size == 0:
                self._one(buf, to)
                continue
            try:
                self.sock.sendmsg([buf], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))], 0, to)
                self.counters["udp_tx_gso_calls"] += 1
            except BlockingIOError:
                self.counters["udp_tx_dropped_full"] += -(-len(buf) // size)
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    self.counters["udp_tx_errors"] += 1
                    self.log.debug("UDP send to %s: %s", to, exc)
                    continue
                self.gso = False
                self.log.info("UDP GSO refused by the kernel (%s): one datagram per send call from now on", exc)
                for d in split(buf, size):
                    self._one(d, to)

    def _one(self, data: bytes, to: tuple) -> None:
        try:
            self.sock.sendto(data, to)
        except BlockingIOError:
            self.counters["udp_tx_dropped_full"] += 1  # like a full queue: the inner TCP retransmits
        except OSError as exc:
            self.counters["udp_tx_errors"] += 1
            self.log.debug("UDP send to %s: %s", to, exc)

    # ---- in --------------------------------------------------------------------
    def receive(self, limit: int = 256) -> list[tuple[bytes, tuple]]:
        """(datagram, source) for what the socket holds now, about ``limit`` datagrams at most (a GRO
        buffer is taken whole): a bounded amount of work per wake-up, so that the TUN's turn comes soon."""
        items: list = []
        sock = self.sock
        while len(items) < limit:
            try:
                if self.gro:
                    data, anc, _flags, source = sock.recvmsg(65535, _CMSG_SPACE)
                    size = gro_size(anc) if anc else 0
                    if size and len(data) > size:
                        self.counters["udp_rx_gro_buffers"] += 1
                        items.extend((d, source) for d in split(data, size))
                        continue
                else:
                    data, source = sock.recvfrom(65535)
            except BlockingIOError:
                break
            except OSError as exc:  # an ICMP error queued on the socket
                self.counters["udp_rx_errors"] += 1
                self.log.debug("UDP receive: %s", exc)
                break
            items.append((data, source))
        return items
