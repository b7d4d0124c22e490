"""The proxy's event loop: asyncio's epoll selector with a reactor of raw readiness callbacks beside it.

Why: a spliced connection wakes up about ten times, and through
``loop.add_reader`` each wake-up costs a Handle, a SelectorKey and a pass of
asyncio's ``_run_once``.  :class:`SpliceReactor` gives an fd one callback called
with the epoll mask straight from the loop's own ``epoll_wait``
(:class:`SpliceSelector`), and connection deadlines one sweep every ``TICK``
instead of a timer each (see docs/proxy.md "Speed").
"""

from __future__ import annotations

import asyncio
import logging
import math
import select
import selectors
import time

log = logging.getLogger("ztna.proxy")

TICK = 0.1  # seconds between checks of the connections' deadlines: each fires at most this late


def _epoll_seconds(timeout: float) -> float:
    """``timeout`` rounded up to epoll's resolution (whole milliseconds): wait at least that long."""
    return math.ceil(timeout * 1e3) * 1e-3


class SpliceSelector(selectors.EpollSelector):
    """asyncio's epoll selector that also runs a :class:`SpliceReactor`'s callbacks.

    The reactor's fds sit in this very epoll, so one ``epoll_wait`` per pass of the
    loop serves both: an event for a reactor fd calls its callback right there
    (callbacks only touch sockets, pipes, timers and futures); the others become
    asyncio's selector keys, as in ``selectors.EpollSelector.select`` of Python 3.11,
    which this follows.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reactor: "SpliceReactor | None" = None

    def select(self, timeout=None):
        reactor = self.reactor
        if reactor is None:
            return super().select(timeout)
        if timeout is None:
            timeout = -1
        elif timeout <= 0:
            timeout = 0
        else:
            timeout = _epoll_seconds(timeout)
        end = time.monotonic() + timeout if timeout > 0 else 0.0
        fd_to_key = self._fd_to_key
        cbs = reactor.cbs
        loop = reactor.loop
        while True:
            ready = []
            maxev = len(fd_to_key) + len(cbs) or 1
            try:
                if reactor.hot and timeout != 0:
                    fd_event_list = self._busy_poll(reactor, timeout, maxev)
                else:
                    fd_event_list = self._selector.poll(timeout, maxev)
            except InterruptedError:
                return ready
            timers = len(loop._scheduled)
            for fd, event in fd_event_list:
                cb = cbs.get(fd)  # looked up per event: an earlier callback may have changed it
                if cb is not None:
                    try:
                        cb(event)
                    except Exception:  # a bug costs its own connection at most, never the others
                        log.exception("reactor callback for fd %d failed", fd)
                    continue
                key = fd_to_key.get(fd)
                if key is None:
                    continue
                events = 0
                if event & ~select.EPOLLIN:
                    events |= selectors.EVENT_WRITE
                if event & ~select.EPOLLOUT:
                    events |= selectors.EVENT_READ
                ready.append((key, events & key.events))
            # Only the reactor's callbacks ran and they gave asyncio nothing to do (no handle
            # queued, no timer added): wait again here instead of a pass of the loop's
            # bookkeeping that would find nothing.  Timers already due keep their time:
            # the wait never goes past the one the loop asked for.
            if ready or not fd_event_list or timeout == 0 or loop._ready or len(loop._scheduled) != timers:
                return ready
            if timeout > 0:
                left = end - time.monotonic()
                if left <= 0:
                    return ready
                timeout = _epoll_seconds(left)

    def _busy_poll(self, reactor: "SpliceReactor", timeout: float, maxev: int) -> list:
        """Poll without sleeping for up to ``reactor.busy`` seconds, then wait as usual.

        Runs only while a bulk transfer is on (``reactor.hot``), when the loop would
        otherwise go to sleep.  Sleeping there costs a wake-up (a context switch, on a
        VM an inter-processor interrupt and a halt exit) for each TLS record the sender
        writes, which is why an idle proxy can forward fewer bytes per second than a
        busier one; the next record usually arrives within a few microseconds.  When the
        spin finds nothing the transfer has paused: ``hot`` is cleared and the loop sleeps
        until the next bulk splice sets it again, so an idle proxy never spins.
        """
        poll = self._selector.poll
        start = time.perf_counter()
        end = start + (reactor.busy if timeout < 0 else min(reactor.busy, timeout))
        while True:
            events = poll(0, maxev)
            if events:
                return events
            now = time.perf_counter()
            if now >= end:
                break
        reactor.hot = False
        if timeout > 0:  # what is left of the loop's own wait (its next timer)
            timeout = _epoll_seconds(max(0.0, timeout - (now - start)))
        return poll(timeout, maxev)


def new_loop() -> asyncio.AbstractEventLoop:
    """The proxy's event loop: asyncio's, with a :class:`SpliceSelector`."""
    return asyncio.SelectorEventLoop(SpliceSelector())


IN, OUT = select.EPOLLIN, select.EPOLLOUT
# What a callback's event mask means, as for the loop's own selector: an error or a
# hang-up (EPOLLERR, EPOLLHUP) counts as both readable and writable.
READABLE, WRITABLE = ~OUT, ~IN
RDHUP = select.EPOLLRDHUP
# A tunnel reads with RDHUP too: the peer's FIN queued behind its last bytes is then
# taken in the same callback instead of one more wake-up.
TUNNEL_IN = IN | RDHUP


class SpliceReactor:
    """Readiness callbacks on the loop's epoll without asyncio's per-event machinery.

    A spliced connection wakes up about ten times (its accept, the connect, handshake
    flights, request, answer, two FINs); through ``loop.add_reader`` each of those
    costs a Handle, a SelectorKey and a pass through ``_run_once`` in Python, and each
    change of interest another.  Here an fd has one callback, called with the epoll
    event mask straight from the loop's ``epoll_wait`` (see :class:`SpliceSelector`;
    test it against READABLE / WRITABLE), and a change of interest is one ``epoll_ctl``.
    Level-triggered, like the loop.  Callbacks run on the loop thread.  An fd must
    not be watched here and by the loop at the same time.
    """

    def __init__(self, loop):
        self.loop = loop
        self.cbs: dict = {}  # fd -> callback(events)
        sel = getattr(loop, "_selector", None)
        if not isinstance(sel, SpliceSelector) or sel.reactor is not None:
            raise ValueError("a SpliceReactor needs a loop of its own from new_loop()")
        self.selector = sel
        self.ep = sel._selector  # the loop's epoll: one epoll_wait per pass serves both
        sel.reactor = self
        self.closed = False
        self.busy = 0.0  # seconds to poll without sleeping while a bulk transfer runs (0: never)
        self.hot = False  # a splice just moved STREAMING bytes or more (set only when busy > 0)
        self.deadlines: dict = {}  # key -> (when, callback)
        self._sweeper: asyncio.TimerHandle | None = None

    def at(self, key, when: float, cb) -> None:
        """Call ``cb()`` once ``time.monotonic()`` reaches ``when`` (up to TICK later), unless cancelled.

        One deadline per key (a new one replaces it).  A connection sets and cancels one or
        two of these, seconds long, and nearly all are cancelled: a dict entry each, checked
        by one loop timer every TICK while any is set, costs less than an asyncio timer each
        (a Handle, a heap push, and the heap's clean-up of cancelled ones)."""
        self.deadlines[key] = (when, cb)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(TICK, self._sweep)

    def cancel(self, key) -> None:
        self.deadlines.pop(key, None)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        due = [(k, entry) for k, entry in self.deadlines.items() if entry[0] <= now]
        for k, entry in due:
            if self.deadlines.get(k) is entry:  # not cancelled or replaced by an earlier callback
                del self.deadlines[k]
                try:
                    entry[1]()
                except Exception:
                    log.exception("deadline callback failed")
        if self.deadlines and not self.closed:
            self._sweeper = self.loop.call_later(TICK, self._sweep)

    def watch(self, fd: int, mask: int, cb) -> None:
        """Call ``cb(events)`` while ``fd`` is ready for ``mask`` (IN, OUT or both; not 0: see unwatch)."""
        if fd in self.cbs:
            self.ep.modify(fd, mask)
        else:
            try:
                self.ep.register(fd, mask)
            except FileExistsError:
                if fd in self.selector._fd_to_key:
                    raise  # the loop watches it: taking it over would break the loop's own wait
                self.ep.modify(fd, mask)  # left over from a closed file whose number came back
        self.cbs[fd] = cb

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd`` (an epoll mask of 0 would still report hang-ups, again and again)."""
        if self.cbs.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass  # already gone (the fd, or the reactor at exit, was closed)

    def forget(self, fd: int) -> None:
        """Stop watching ``fd`` that is about to be closed: closing it leaves the epoll by itself."""
        self.cbs.pop(fd, None)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.deadlines.clear()
        for fd in list(self.cbs):
            self.unwatch(fd)
        self.selector.reactor = None
