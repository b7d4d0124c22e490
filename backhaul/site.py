"""``ztna site run``: a branch router's LAN traffic to the internet through the PoP (docs/backhaul.md).

The shell of backhaul/sitecore.py: a TUN carries the internet half of the
routing table (0.0.0.0/1 and 128.0.0.0/1, so the router's own default route
stays), a host route keeps the PoP itself on the uplink, and one mTLS tunnel
to the PoP's ``site_name`` carries the packets, dialled again with backoff and
jitter (gateway.connector.Backoff) whenever it is lost.  The routes through the
TUN go with the TUN; the host route is removed at exit.

A gateway site (``[backhaul] gateway = true``) also receives flows other sites
backhaul through it: backhaul/gateway.py routes them out of a WAN port (or to
the LAN's next hop) and their replies back into the TUN; backhaul/health.py
chooses the port from probes sent out of each WAN every ``[health] interval``.
Each port change is logged with its time and reason and reported to the PoP;
the tunnel to the PoP itself moves to the other port only when its own fails.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

from pyroute2 import IPRoute

from gateway.connector import Backoff
from ztna import wire
from ztna.nft import NftError
from ztna.tlsconn import FramedTLS, client_context, tune_tunnel_socket
from ztna.tun import Tun, read_batch, write_packets
from ztna.tunnelcmds import Close, Log, Send, WriteTun

from .config import SiteConfig
from .gateway import GatewayNet, probe
from .health import Ports, TunnelVia, UsePort
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
        b = cfg.backhaul
        self.ports = (Ports(list(cfg.wans), b.port, fail_after=cfg.health.fail_after,
                            recover_after=cfg.health.recover_after)
                      if b is not None and b.destination == "internet" else None)
        self.port: str | None = "local" if b is not None and b.destination == "local" else None
        self.net: GatewayNet | None = None
        self.probers: list[asyncio.Task] = []
        self.moved = asyncio.Event()  # the tunnel's port changed: no backoff wait before the next dial

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Until SIGTERM/SIGINT, or until ``stop`` is set when the caller owns the signals (the agent's
        full-tunnel mode runs a Site inside the agent)."""
        loop = asyncio.get_running_loop()
        if stop is None:
            stop = asyncio.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        try:
            if self.cfg.backhaul is not None and Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "1":
                raise OSError("a gateway site ([backhaul] gateway = true) forwards: sysctl -w net.ipv4.ip_forward=1")
            start = self.ports.start() if self.ports is not None else []
            tunnel_wan = next((self.cfg.wans[c.port] for c in start if isinstance(c, TunnelVia)), None)
            # pyroute2 runs its own loop: routes and the TUN are set up off this one
            await loop.run_in_executor(None, lambda: self._pin_pop_route(tunnel_wan))
            self.tun = await loop.run_in_executor(None, lambda: Tun(self.cfg.tun, [self.cfg.tun_address], INTERNET))
            loop.add_reader(self.tun.fd, self._on_tun)
            log.info("site %s: TUN %s up (%s); the internet half of the table goes to the PoP %s as %s; LAN %s",
                     self.cfg.name, self.tun.name, self.cfg.tun_address, self.cfg.pop, self.cfg.pop_name,
                     ", ".join(self.cfg.lan))
            if self.cfg.backhaul is not None:
                self._gateway_up(start)
            dialler = asyncio.ensure_future(self._dial_loop())
            ticker = asyncio.ensure_future(self._tick())
            await stop.wait()
            dialler.cancel()
            ticker.cancel()
        finally:
            for t in self.probers:
                t.cancel()
            if self.net is not None:
                try:
                    self.net.down()
                except (OSError, NftError, subprocess.TimeoutExpired) as exc:
                    log.error("site %s: removing its nft table and ip rules: %s", self.cfg.name, exc)
            if self.conn is not None and not self.conn.closed:
                self.conn.send(wire.control(wire.CLOSE, reason="site stopping"))
                self.conn.close("site stopping")
            if self.tun is not None:
                try:
                    loop.remove_reader(self.tun.fd)
                except (ValueError, OSError):
                    pass
                self.tun.close()
            # pyroute2's synchronous API will not run inside the running loop (it failed there, silently,
            # and left the host route behind): off the loop, like the pinning.
            await loop.run_in_executor(None, self._unpin_pop_route)
            log.info("site %s stopped; counters: %s", self.cfg.name, dict(self.core.counters) if self.core else {})

    # ---- routes ---------------------------------------------------------------------------
    def _pin_pop_route(self, wan=None) -> None:
        """The PoP stays reachable through today's route (a gateway site: through ``wan``), whatever the
        TUN takes over."""
        with IPRoute() as ipr:
            if wan is not None:
                gw, oif = wan.gateway, ipr.link_lookup(ifname=wan.interface)[0]
            else:
                r = ipr.route("get", dst=self.cfg.pop)[0]
                gw, oif = r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_OIF")
            spec = {"dst": f"{self.cfg.pop}/32", "oif": oif, **({"gateway": gw} if gw else {})}
            ipr.route("replace", **spec)
            self.host_route = spec
        log.info("site %s: route to the PoP %s pinned (%s)", self.cfg.name, self.cfg.pop,
                 (f"via {gw}" if gw else "on-link") + (f" on {wan.interface}" if wan is not None else ""))

    # ---- a gateway site -------------------------------------------------------------------
    def _gateway_up(self, start: list) -> None:
        b = self.cfg.backhaul
        first = next((c.port for c in start if isinstance(c, UsePort)), "local")
        self.net = GatewayNet(self.tun.name, self.cfg)
        self.net.up(first)
        self.port = first
        self._warn_rp_filter()
        if b.destination == "local":
            log.info("site %s: gateway site: backhauled flows go to the local gateway %s (no NAT); replies come "
                     "back into %s", self.cfg.name, b.local_gateway_ip, self.tun.name)
            return
        log.info("site %s: gateway site: backhauled flows leave by %s (port = %s) with its address; health: ping "
                 "%s every %gs, timeout %gs, fail after %d, recover after %d", self.cfg.name, first, b.port,
                 self.cfg.health.target, self.cfg.health.interval, self.cfg.health.timeout,
                 self.cfg.health.fail_after, self.cfg.health.recover_after)
        self._perform_ports([c for c in start if isinstance(c, UsePort)])
        self.probers = [asyncio.ensure_future(self._probe_loop(port)) for port in self.ports.ports]

    def _warn_rp_filter(self) -> None:
        ifs = [self.tun.name] + [w.interface for w in self.net.wans.values()]
        try:
            strict = [i for i in ifs if max(int(Path(f"/proc/sys/net/ipv4/conf/{n}/rp_filter").read_text())
                                            for n in ("all", i)) == 1]
        except (OSError, ValueError):
            return
        if strict:
            log.warning("site %s: strict rp_filter on %s drops replies that arrive by the other port and flows "
                        "from the TUN: set net.ipv4.conf.<if>.rp_filter=2 (loose) there", self.cfg.name,
                        ", ".join(strict))

    async def _probe_loop(self, port: str) -> None:
        h, w = self.cfg.health, self.cfg.wans[port]
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            try:
                ok, detail = await probe(w.address, h.target, h.timeout)
            except OSError as exc:
                ok, detail = False, f"ping: {exc}"
            self._perform_ports(self.ports.probe(port, ok, detail))
            await asyncio.sleep(max(0.0, h.interval - (loop.time() - t0)))

    async def _move_tunnel(self, c: TunnelVia) -> None:
        """The tunnel's port failed: pin the PoP's route to ``c.port`` and dial again over it."""
        wan = self.cfg.wans[c.port]
        try:
            await asyncio.get_running_loop().run_in_executor(None, lambda: self._pin_pop_route(wan))
        except Exception as exc:  # pyroute2's errors are its own: the old route stays, the dial loop goes on
            log.error("site %s: cannot move the tunnel to %s: %s", self.cfg.name, c.port, exc)
            return
        log.warning("site %s: the tunnel to the PoP moves to %s: %s", self.cfg.name, c.port, c.reason)
        self.backoff.reset()
        self.moved.set()
        if self.conn is not None:
            self.conn.close(f"the tunnel moves to {c.port}")

    def _perform_ports(self, cmds: list) -> None:
        for c in cmds:
            if isinstance(c, UsePort):
                was, self.port = self.port, c.port
                if was != c.port:
                    try:
                        self.net.use(c.port)
                    except (OSError, NftError) as exc:  # the flows keep the port they had
                        log.error("site %s: cannot move new flows to %s: %s", self.cfg.name, c.port, exc)
                        self.port = was
                        continue
                at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                log.warning("site %s: port %s at %s: new backhauled flows leave by %s (%s, address %s): %s",
                            self.cfg.name, c.port, at, c.port, self.cfg.wans[c.port].interface,
                            self.cfg.wans[c.port].address, c.reason)
                if self.core is not None and self.conn is not None:
                    self._perform(self.core.report_port(c.port, time.monotonic()))
            elif isinstance(c, TunnelVia):
                asyncio.ensure_future(self._move_tunnel(c))
            elif isinstance(c, Log):
                log.log(c.level, "site %s: %s", self.cfg.name, c.message)

    def _unpin_pop_route(self) -> None:
        if self.host_route is None:
            return
        try:
            with IPRoute() as ipr:
                ipr.route("del", **self.host_route)
        except Exception as exc:  # the route may have gone with its interface
            log.warning("site %s: removing the host route to the PoP %s: %s", self.cfg.name, self.cfg.pop, exc)
            return
        log.info("site %s: host route to the PoP %s removed", self.cfg.name, self.cfg.pop)

    # ---- the tunnel -----------------------------------------------------------------------
    async def _dial_loop(self) -> None:
        while True:
            self.moved.clear()
            if await self._dial_or_move():
                self.backoff.reset()
                await self.lost.wait()
            delay = self.backoff.next()
            if self.moved.is_set():
                log.info("site %s: dialling the PoP again now, over the tunnel's new port", self.cfg.name)
            else:
                log.info("site %s: dialling the PoP again in %.2fs (attempt %d)", self.cfg.name, delay,
                         self.backoff.failures)
            try:  # a gateway site whose tunnel moved to a working port dials at once
                await asyncio.wait_for(self.moved.wait(), delay)
            except asyncio.TimeoutError:
                pass
            self.moved.clear()

    async def _dial_or_move(self) -> bool:
        """One dial, given up if the tunnel's port moves meanwhile: a dial over a dead port would wait out
        connect_timeout before the next one could take the working port."""
        dial = asyncio.ensure_future(self._dial())
        moved = asyncio.ensure_future(self.moved.wait())
        try:
            await asyncio.wait({dial, moved}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            moved.cancel()
        if dial.done():
            ok = dial.result()
            if ok and self.moved.is_set() and self.conn is not None:  # up just as the route moved
                self.conn.close("the tunnel moved while it was dialled")
            return ok
        dial.cancel()
        await asyncio.gather(dial, return_exceptions=True)
        log.info("site %s: the dial over the old port given up: the tunnel moved", self.cfg.name)
        return False

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
        except asyncio.CancelledError:
            sock.close()
            raise
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            sock.close()
            log.warning("site %s: no tunnel to the PoP %s:%d: %s", self.cfg.name, self.cfg.pop, self.cfg.port,
                        str(exc) or type(exc).__name__)
            return False
        self.core = SiteCore(self.cfg.name, keepalive=self.cfg.keepalive, queue_limit=self.cfg.queue_limit,
                             now=time.monotonic(), port=self.port)
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
