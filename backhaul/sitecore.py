"""A site router's tunnel to the PoP, sans-IO (the shell is backhaul/site.py).

The site sends ``HELLO {version, site}``; the PoP answers ``WELCOME`` when the
site's certificate is that site's (pop/sitehub.py).  Then the LAN's packets
read from the site's TUN go out as DATA frames, and DATA from the PoP is
written to the TUN.  Packets read before WELCOME, or while the connection
already holds more than ``queue_limit`` bytes unsent, are dropped and counted,
as a router drops: the LAN's TCP backs off, nothing queues without a bound.

A gateway site also tells the PoP which WAN port its backhauled flows leave by
(``port`` in HELLO, and a KEEPALIVE carrying ``port`` when it changes), so the
PoP's flow lines can name it.
"""

from __future__ import annotations

import logging
from collections import Counter

from ztna import wire
from ztna.tunnelcmds import Close, Log, Send, WriteTun


class SiteCore:
    def __init__(self, site: str, *, keepalive: float = 15.0, queue_limit: int = 4 * 1024 * 1024, now: float = 0.0,
                 port: str | None = None):
        self.site = site
        self.port = port  # a gateway site's WAN port in use (None: a branch site)
        self.keepalive = keepalive
        self.queue_limit = queue_limit
        self.decoder = wire.Decoder()
        self.up = False
        self.closed = False
        self.last_heard = self.last_sent = now
        self.counters: Counter = Counter()

    def hello(self) -> bytes:
        extra = {"port": self.port} if self.port else {}
        return wire.control(wire.HELLO, version=wire.VERSION, site=self.site, **extra)

    def report_port(self, port: str, now: float) -> list:
        """The gateway site's port changed: tell the PoP (once up; HELLO carries it otherwise)."""
        self.port = port
        if not self.up or self.closed:
            return []
        self.last_sent = now
        return [Send(wire.control(wire.KEEPALIVE, port=port))]

    def receive(self, data: bytes, now: float) -> list:
        if self.closed:
            return []
        self.last_heard = now
        try:
            frames = self.decoder.feed_untrusted(data)
            bad = None
        except wire.BadFrame as exc:
            frames, bad = exc.frames, str(exc)
        out: list = []
        tun: list = []
        for f in frames:
            if f.type == wire.DATA:
                if not self.up:
                    return self._close(out, "DATA before WELCOME")
                tun.append(f.payload)
                self.counters["packets_in"] += 1
            elif f.type == wire.WELCOME:
                if self.up:
                    return self._close(out, "a second WELCOME")
                self.up = True
                out.append(Log(logging.INFO, "the PoP says WELCOME"))
            elif f.type == wire.KEEPALIVE:
                pass
            elif f.type == wire.CLOSE:
                if tun:
                    out.append(WriteTun(tun))
                return self._close(out, f"the PoP said CLOSE: {f.fields.get('reason', '')}", tell=False)
            else:
                return self._close(out, f"{wire.NAMES.get(f.type, f.type)} has no place in a site tunnel")
        if tun:
            out.insert(0, WriteTun(tun))
        if bad is not None:
            self.counters["bad_frames"] += 1
            return self._close(out, f"bad frame from the PoP: {bad}")
        return out

    def tun_packets(self, bufs: list, now: float, queued: int = 0) -> list:
        """Packets read from the TUN (virtio-net header first); ``queued``: bytes the connection holds unsent."""
        if not self.up or self.closed:
            self.counters["packets_dropped_down"] += len(bufs)
            return []
        if queued > self.queue_limit:
            self.counters["packets_dropped_queue"] += len(bufs)
            return []
        frames = []
        for b in bufs:
            if len(b) < wire.VNET_HDR_LEN + 20 or len(b) > wire.MAX_DATA:
                self.counters["packets_dropped_size"] += 1
                continue
            frames.append(wire.data_header(len(b)))
            frames.append(bytes(b))
        if not frames:
            return []
        self.counters["packets_out"] += len(frames) // 2
        self.last_sent = now
        return [Send(b"".join(frames))]

    def tick(self, now: float) -> list:
        if self.closed:
            return []
        if now - self.last_heard > 3 * self.keepalive:
            return self._close([], f"no word from the PoP for {3 * self.keepalive:.0f}s")
        if now - self.last_sent >= self.keepalive:
            self.last_sent = now
            return [Send(wire.control(wire.KEEPALIVE))]
        return []

    def _close(self, out: list, reason: str, *, tell: bool = True) -> list:
        self.closed = True
        if tell:
            out.append(Send(wire.control(wire.CLOSE, reason=reason)))
        out.append(Close(reason))
        return out
