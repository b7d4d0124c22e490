"""An in-memory twin of ztna.tun.Tun for unit tests (as wireguard-go's tun/tuntest).

``MemoryTun`` offers what the services use of a real TUN: a non-blocking
``fd`` on which each ``os.read`` returns one packet and each ``os.write``
sends one, a ``name`` and ``offload``.  Behind it is a datagram socket pair,
so packet boundaries hold exactly as on a TUN; the test stands on the far
side as the kernel would: ``inject`` routes a packet into the device (the
service reads it), ``written`` returns what the service wrote.  No root, no
device, no namespace.
"""

from __future__ import annotations

import os
import socket


class MemoryTun:
    """A TUN without a kernel device; packets carry their virtio-net header, as with IFF_VNET_HDR."""

    def __init__(self, name: str = "memtun0", *, offload: bool = True):
        self.name = name
        self.offload = offload
        self._dev, self._kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (self._dev, self._kernel):
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.fd = self._dev.fileno()

    def inject(self, packet: bytes) -> None:
        """The kernel hands the device a packet: the next read of ``fd`` returns it."""
        self._kernel.send(packet)

    def written(self) -> list[bytes]:
        """Every packet written to ``fd`` since the last call, in order."""
        out = []
        while True:
            try:
                out.append(self._kernel.recv(1 << 17))
            except BlockingIOError:
                return out

    def read_burst(self, limit: int = 128, size: int = 65536 + 128) -> list[bytes]:
        """What a service's reader gets from one readable event: up to ``limit`` packets."""
        out = []
        for _ in range(limit):
            try:
                out.append(os.read(self.fd, size))
            except BlockingIOError:
                break
        return out

    def close(self) -> None:
        self._dev.close()
        self._kernel.close()
