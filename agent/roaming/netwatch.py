"""Network-change events from the kernel (netlink link and address groups).

A thread blocks on the netlink socket and hands every burst of messages to
the event loop; the daemon then compares the set of interfaces that are up
(:class:`conflict.Interfaces`) to tell "an interface appeared or went" from
the link chatter the kernel also sends.
"""

from __future__ import annotations

import asyncio
import logging
import threading

log = logging.getLogger("ztna.roaming")

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10


class NetWatch:
    """Calls ``on_event()`` in the event loop after netlink link/address messages."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_event):
        self.loop, self.on_event = loop, on_event
        self._stop = threading.Event()
        self._ipr = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="netwatch", daemon=True)
        self._thread.start()
        ready.wait(5)

    def _run(self, ready: threading.Event) -> None:
        # pyroute2's IPRoute runs its own event loop, so it lives on this thread only.
        from pyroute2 import IPRoute

        try:
            self._ipr = IPRoute()
            self._ipr.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR)
        except Exception as exc:
            log.error("cannot watch interfaces over netlink (%s); network changes will not end a back-off", exc)
            return
        finally:
            ready.set()
        while not self._stop.is_set():
            try:
                msgs = self._ipr.get()
            except Exception as exc:  # socket closed at stop, or a netlink hiccup
                if not self._stop.is_set():
                    log.warning("netlink watch: %s", exc)
                return
            if msgs and not self._stop.is_set():
                self.loop.call_soon_threadsafe(self.on_event)

    def stop(self) -> None:
        self._stop.set()
        if self._ipr is not None:
            try:
                self._ipr.close()
            except Exception:
                pass
