"""The OS side of DNS settings: the resolv.conf file, which interface a
server is reached by, and per-interface sources (systemd-resolved is
ztna/resolved.py and ztna/resolvectl.py).

Inside ``ip netns exec NS`` the file /etc/netns/NS/resolv.conf is bind-mounted
over /etc/resolv.conf, and rename() onto a mount point fails with EBUSY; so the
file path is a setting (the lab passes /etc/netns/NS/resolv.conf) and a write
that meets EBUSY falls back to rewriting the file in place.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from pathlib import Path

from ztna import files, resolvconf

log = logging.getLogger("ztna.roaming")


class BackendError(RuntimeError):
    """The OS refused a DNS-settings operation; the message says which and why."""


def read_text(path: Path) -> str | None:
    """The file's text, None if it does not exist; malformed content raises ResolvConfError."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackendError(f"cannot read {path}: {exc.strerror}") from None
    resolvconf.parse_untrusted(data)  # raises ResolvConfError with the line at fault
    return data.decode()


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """``ztna.files.write_atomic``, its failures as BackendError."""
    try:
        files.write_atomic(path, text, mode)
    except OSError as exc:
        raise BackendError(f"cannot write {path}: {exc.strerror}") from None


def machine_id(path: Path) -> str:
    """This machine's identity (systemd's machine-id), or one derived from the host name."""
    try:
        mid = Path(path).read_text().strip()
        if len(mid) >= 16 and all(c in "0123456789abcdef" for c in mid):
            return mid
        log.warning("%s does not hold a machine id; deriving one from the host name", path)
    except OSError:
        log.warning("%s is not readable; deriving the machine id from the host name", path)
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:32]


_netlink_pool = None


def _netlink(fn):
    """Run a pyroute2 call on a worker thread.

    pyroute2's synchronous IPRoute drives an asyncio loop of its own, which
    cannot run inside the daemon's running loop; a short blocking hop to a
    thread with no loop is simpler than rewriting every call for AsyncIPRoute.
    """
    global _netlink_pool
    from concurrent.futures import ThreadPoolExecutor

    if _netlink_pool is None:
        _netlink_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
    return _netlink_pool.submit(fn).result()


def route_iface(addr: str) -> str:
    """The interface the kernel would send a packet to ``addr`` by ('' when there is no route)."""
    return _netlink(lambda: _route_iface(addr))


def _route_iface(addr: str) -> str:
    from pyroute2 import IPRoute

    try:
        with IPRoute() as ipr:
            r = ipr.route("get", dst=addr)
            oif = r[0].get_attr("RTA_OIF")
            links = ipr.get_links(oif)
            return links[0].get_attr("IFLA_IFNAME") if links else ""
    except Exception as exc:  # NetlinkError for "network unreachable" and the like
        log.info("no route to %s: %s", addr, exc)
        return ""


def up_interfaces() -> set[str]:
    """Names of the interfaces that are administratively up, loopback excepted."""
    return _netlink(_up_interfaces)


def _up_interfaces() -> set[str]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {l.get_attr("IFLA_IFNAME") for l in ipr.get_links() if l["flags"] & 1 and l.get_attr("IFLA_IFNAME") != "lo"}


def interface_sources(directory: Path | None) -> dict[str, resolvconf.ResolvConf]:
    """Per-interface DNS settings in resolvconf(8) style: one file per interface.

    openresolv and Debian's resolvconf keep what each interface's DHCP client or
    VPN script handed in (``resolvconf -a tun0.openvpn``) as files named after
    the interface; the part of the name before the first dot is the interface.
    A malformed file is skipped with a warning: one bad source must not hide the others.
    """
    out: dict[str, resolvconf.ResolvConf] = {}
    if directory is None or not Path(directory).is_dir():
        return out
    for f in sorted(Path(directory).iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        iface = f.name.split(".")[0]
        try:
            out[iface] = resolvconf.parse_untrusted(f.read_bytes())
        except (resolvconf.ResolvConfError, OSError) as exc:
            log.warning("ignoring per-interface DNS file %s: %s", f, exc)
    return out
