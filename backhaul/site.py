"""``ztna site run``: a branch router's LAN traffic to the internet through the PoP (docs/backhaul.md).

The shell of backhaul/sitecore.py: a TUN carries the internet half of the
routing table (0.0.0.0/1 and 128.0.0.0/1, so the router's own default route
stays), a host route keeps the PoP itself on the uplink, and one mTLS tunnel
to the PoP's ``site_name`` carries the packets, dialled again with backoff and
jitter (gateway.connector.Backoff) whenever it is lost.  The routes through the
TUN go with the TUN; the host route is removed at exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import time

from pyroute2 import IPRoute

from gateway.connector import Backoff
from ztna import wire
from ztna.tlsconn import FramedTLS, client_context, tune_tunnel_socket
from ztna.tun import Tun, read_batch, write_packets
from ztna.tunnelcmds import Close, Log, Send, WriteTun

from .config import SiteConfig
from .sitecore import SiteCore

log = logging.getLogger("ztna.site")
INTERNET = ["0.0.0.0/1", "128.0.0.0/1"]


class Site:
    def __init__(self, cfg: SiteConfig):
        self.cfg = cfg
        self.ctx: ssl.SSLContext = client_context(cfg.ca, cfg.cert, cfg.key)
        self.backoff = Backoff(cfg.backoff_base, cfg.backoff_cap)
        self.tun: Tun | None = None
        self.conn: FramedTLS | None = None
        self.core: SiteCore | None = None
        self.lost: asyncio.Event | None = None
        self.host_route: dict | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            # pyroute2 runs its own loop: routes and the TUN are set up off this one
            await loop.run_in_executor(None, self._pin_pop_route)
            self.tun = await loop.run_in_executor(None, lambda: Tun(self.cfg.tun, [self.cfg.tun_address], INTERNET))
            loop.add_reader(self.tun.fd, self._on_tun)
            log.info("site %s: TUN %s up (%s); the internet half of the table goes to the PoP %s as %s; LAN %s",
                     self.cfg.name, self.tun.name, self.cfg.tun_address, self.cfg.pop, self.cfg.pop_name,
                     ", ".join(self.cfg.lan))
            dialler = asyncio.ensure_future(self._dial_loop())
            ticker = asyncio.ensure_future(self._tick())
            await stop.wait()
            dialler.cancel()
            ticker.cancel()
        finally:
            if self.conn is not None and not self.conn.closed:
                self.conn.send(wire.control(wire.CLOSE, reason="site stopping"))
                self.conn.close("site stopping")
            if self.tun is not None:
                try:
                    loop.remove_reader(self.tun.fd)
                except (ValueError, OSError):
                    pass
                self.tun.close()
            self._unpin_pop_route()
            log.info("site %s stopped; counters: %s", self.cfg.name, dict(self.core.counters) if self.core else {})

    # ---- routes ---------------------------------------------------------------------------
    def _pin_pop_route(self) -> None:
        """The PoP stays reachable through today's route, whatever the TUN takes over."""
        with IPRoute() as ipr:
            r = ipr.route("get", dst=self.cfg.pop)[0]
            gw, oif = r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_OIF")
            spec = {"dst": f"{self.cfg.pop}/32", "oif": oif, **({"gateway": gw} if gw else {})}
            ipr.route("replace", **spec)
            self.host_route = spec
        log.info("site %s: route to the PoP %s pinned (%s)", self.cfg.name, self.cfg.pop,
                 f"via {gw}" if gw else "on-link")

    def _unpin_pop_route(self) -> None:
        if self.host_route is None:
            return
        try:
            with IPRoute() as ipr:
                ipr.route("del", **self.host_route)
        except Exception as exc:  # the route may have gone with its interface
            log.debug("removing the PoP's host route: %s", exc)

    # ---- the tunnel -----------------------------------------------------------------------
    async def _dial_loop(self) -> None:
        while True:
            if await self._dial():
                self.backoff.reset()
                await self.lost.wait()
            delay = self.backoff.next()
            log.info("site %s: dialling the PoP again in %.2fs (attempt %d)", self.cfg.name, delay,
                     self.backoff.failures)
            await asyncio.sleep(delay)

    async def _dial(self) -> bool:
        loop = asyncio.get_running_loop()
        self.lost = asyncio.Event()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            tune_tunnel_socket(sock)
            await asyncio.wait_for(loop.sock_connect(sock, (self.cfg.pop, self.cfg.port)), self.cfg.connect_timeout)
            ssock = self.ctx.wrap_socket(sock, server_hostname=self.cfg.pop_name, do_handshake_on_connect=False)
            sock = ssock
            conn = FramedTLS(ssock, name=f"PoP {self.cfg.pop}")
            await conn.handshake(self.cfg.connect_timeout)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            sock.close()
            log.warning("site %s: no tunnel to the PoP %s:%d: %s", self.cfg.name, self.cfg.pop, self.cfg.port,
                        str(exc) or type(exc).__name__)
            return False
        self.core = SiteCore(self.cfg.name, keepalive=self.cfg.keepalive, queue_limit=self.cfg.queue_limit,
                             now=time.monotonic())
        self.conn = conn
        conn.on_data = lambda data: self._perform(self.core.receive(data, time.monotonic()))
        conn.on_close = self._on_close
        conn.start_reading()
        conn.send(self.core.hello())
        log.info("site %s: TLS %s with the PoP %s:%d, HELLO sent", self.cfg.name, ssock.version(), self.cfg.pop,
                 self.cfg.port)
        return True

    def _on_close(self, reason: str) -> None:
        log.warning("site %s: tunnel to the PoP lost: %s", self.cfg.name, reason)
        self.conn = None
        if self.lost is not None:
            self.lost.set()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.core is not None and self.conn is not None:
                self._perform(self.core.tick(time.monotonic()))

    def _on_tun(self) -> None:
        bufs = read_batch(self.tun.fd)
        if bufs and self.core is not None and self.conn is not None:
            self._perform(self.core.tun_packets(bufs, time.monotonic(), self.conn.queued))

    def _perform(self, cmds: list) -> None:
        for c in cmds:
            t = type(c)
            if t is Send:
                if self.conn is not None:
                    self.conn.send(c.data)
            elif t is WriteTun:
                write_packets(self.tun.fd, c.packets, self.core.counters, log)
            elif t is Close:
                if self.conn is not None:
                    self.conn.close(c.reason)
            elif t is Log:
                log.log(c.level, "site %s: %s", self.cfg.name, c.message)
            else:
                raise TypeError(f"unknown site command {c!r}")
