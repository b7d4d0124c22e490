"""A TUN device with virtio-net headers and TSO/GSO offloads.

With IFF_VNET_HDR and TUNSETOFFLOAD the kernel hands us TCP super-packets of up
to 64 KiB with a partial checksum instead of MTU-sized, fully checksummed ones,
so one read and one tunnel frame carry up to ~45 segments.  The device lives as
long as the file descriptor: when the process dies, the device and its routes go.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os

import pytun
from pyroute2 import IPRoute

TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
TXQUEUELEN = 4000


class TunError(RuntimeError):
    """The TUN device could not be created or configured; the message says why."""


class Tun:
    """An up TUN device with addresses and routes; ``fd`` is non-blocking."""

    def __init__(self, name: str, addresses: list[str], routes: list[str] = (), *, mtu: int = 1500, offload: bool = True):
        try:
            self.dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI | pytun.IFF_VNET_HDR)
        except pytun.Error as exc:
            raise TunError(f"cannot create TUN {name}: {exc} (needs root or CAP_NET_ADMIN, and /dev/net/tun)") from exc
        self.name = self.dev.name
        self.fd = self.dev.fileno()
        self.offload = offload
        if offload:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
        os.set_blocking(self.fd, False)
        try:
            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=self.name)[0]
                for a in addresses:
                    itf = ipaddress.ip_interface(a)
                    ipr.addr("add", index=idx, address=str(itf.ip), prefixlen=itf.network.prefixlen)
                ipr.link("set", index=idx, state="up", mtu=mtu, txqlen=TXQUEUELEN)
                for r in routes:
                    if not any(ipaddress.ip_interface(a).network == ipaddress.ip_network(r) for a in addresses):
                        ipr.route("add", dst=r, oif=idx)
        except Exception as exc:
            self.close()
            raise TunError(f"cannot configure {self.name}: {exc}") from exc
        try:
            with open(f"/proc/sys/net/ipv6/conf/{self.name}/disable_ipv6", "w") as f:
                f.write("1")  # the tunnel carries IPv4; keep router solicitations out of it
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.dev.close()
        except Exception:
            pass


READ_SIZE = 65536 + 128  # a super-packet of up to 64 KiB, its virtio-net header, slack


def read_batch(fd: int, limit: int = 128) -> list[bytes]:
    """What a non-blocking TUN holds now, up to ``limit`` packets (one wake-up's worth)."""
    bufs = []
    for _ in range(limit):
        try:
            bufs.append(os.read(fd, READ_SIZE))
        except BlockingIOError:
            break
    return bufs


def write_packets(fd: int, packets, counters, log) -> int:
    """Write each packet; a refused one (a bad header, the device going) is counted and logged at debug.
    Returns how many were written."""
    written = 0
    for pkt in packets:
        try:
            os.write(fd, pkt)
            written += 1
        except OSError as exc:
            counters["tun_write_errors"] += 1
            log.debug("TUN write failed: %s", exc)
    return written
